//! The `hvlite` command line: a thin front end that builds a [`VmConfig`] and runs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::{Args, CommandFactory, Parser, Subcommand};

use hvlite::config::{
    DiskConfig, FsConfig, HostPath, Logger, MetricsConfig, NetConfig, VmConfig, VsockConfig,
};
use hvlite::container::shares::{RootfsMode, Volume};
use hvlite::container::spec::{self, EnvVar, ProcessOptions, UserSpec};
use hvlite::container::{self, ContainerConfig, ContainerError, RunOutcome, paths};
use hvlite::control::Outputs;
use hvlite::control::service::{self, ApiRun, ServiceError};
use hvlite::exit::ExitReason;
use hvlite::logging::{self, LevelSpec, LogDest, LogFormat, LogHandle, LogSetup, LoggingError};
use hvlite::metrics::{Metrics, MetricsError, MetricsWriter, PeriodicFlusher};
use hvlite::process_stats::PROCESS_START;
use hvlite::seccomp::{self, SeccompError, SeccompLevel};
use hvlite::vmm::config_file::{self, CliOverrides, ConfigFileError, FileConfig};
use hvlite::vmm::persist::{self, RestoreSpec};
use hvlite::vmm::{self, Console, RunEnv, RunHooks, VmmError};

/// Exit status for hvlite's own failures (bad input, KVM errors), as `docker run` does;
/// a guest command's status is passed through unchanged.
const EXIT_VMM_ERROR: u8 = 125;

/// One example per subcommand, shown by `hvlite --help` (tests/cli_help.rs checks that
/// every subcommand has one).
const EXAMPLES: &str = "\
Examples:
  hvlite run --rootfs ~/.local/share/hvlite/rootfs -- /bin/sh -c 'echo hello'
  hvlite template build
  hvlite completions bash > ~/.local/share/bash-completion/completions/hvlite
  hvlite man ~/.local/share/man/man1";

#[derive(Parser)]
#[command(
    name = "hvlite",
    version,
    about = "A hypervisor-lite microVM monitor on KVM",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a microVM; with `-- COMMAND ARGS...` run the command in it and exit with its status.
    #[command(after_help = "\
Examples:
  hvlite run --rootfs ~/.local/share/hvlite/rootfs -- /bin/sh -c 'echo hello'
  hvlite run --kernel vmlinux --initrd initrd.cpio -- /bin/sh -c 'uname -a'
  hvlite run --api-sock /tmp/hvlite.sock")]
    Run(Box<RunArgs>),
    /// Build, list or remove the cached VM templates that container runs restore instead of
    /// booting (docs/snapshots.md, "Templates").
    #[command(after_help = "\
Examples:
  hvlite template build
  hvlite template build --cpus 1 --memory 256
  hvlite template list
  hvlite template rm --all")]
    Template {
        #[command(subcommand)]
        action: TemplateAction,
    },
    /// Print a shell completion script to stdout.
    #[command(after_help = "\
Example:
  hvlite completions bash > ~/.local/share/bash-completion/completions/hvlite")]
    Completions {
        /// The shell: bash, elvish, fish, powershell or zsh.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write hvlite's man pages (hvlite.1, hvlite-run.1, ...) into a directory.
    #[command(after_help = "\
Example:
  hvlite man ~/.local/share/man/man1")]
    Man {
        /// The directory to write into (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum TemplateAction {
    /// Build the template `hvlite run --rootfs` with the same options restores (a boot;
    /// nothing to do when it is cached and sound).
    #[command(after_help = "\
Example:
  hvlite template build --cpus 2 --memory 128")]
    Build {
        /// Guest kernel [default: as hvlite run].
        #[arg(long, value_name = "PATH")]
        kernel: Option<PathBuf>,
        /// vCPUs [default: as hvlite run: 1; 2 on PVM hosts].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=32))]
        cpus: Option<u8>,
        /// Guest memory in MiB [default: 128].
        #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
        memory: Option<u64>,
        /// Extra kernel command-line options, as hvlite run's --cmdline.
        #[arg(long, value_name = "STR")]
        cmdline: Option<String>,
        /// The template for --rootfs IMAGE runs (a read-write root) rather than directories.
        #[arg(long)]
        image_root: bool,
        /// The template for --console runs.
        #[arg(long)]
        console: bool,
        /// Rebuild it even if the cached one is sound.
        #[arg(long)]
        force: bool,
    },
    /// List the cached templates.
    #[command(after_help = "\
Example:
  hvlite template list")]
    List,
    /// Remove cached templates (the next container run builds what it needs again).
    #[command(after_help = "\
Example:
  hvlite template rm 65bf81fa")]
    Rm {
        /// The template's key, or its first characters (at least 4).
        #[arg(
            value_name = "KEY",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        key: Option<String>,
        /// Remove every template.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// A JSON config file (docs/config-file.md); options given here override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The VM's id in logs, metrics and the API [default: hvlite-<pid>].
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    id: Option<String>,
    /// Write hvlite's log to PATH, as JSON lines unless --log-format text.
    #[arg(long, value_name = "PATH")]
    log: Option<PathBuf>,
    /// Log format: text or json [default: json with --log, else text on stderr].
    #[arg(long, value_name = "FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
    /// Append metrics to PATH as JSON lines: periodically, at exit and on FlushMetrics.
    #[arg(long, value_name = "PATH")]
    metrics: Option<PathBuf>,
    /// Serve the REST API on this Unix socket. Without a kernel (from --kernel or the
    /// config file) hvlite waits for the VM's configuration and InstanceStart.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Guest kernel: an uncompressed ELF vmlinux or a bzImage [default: $HVLITE_KERNEL, else
    /// the kernel scripts/setup.sh installed].
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs (uncompressed cpio recommended: decompression runs in the guest).
    #[arg(long, value_name = "PATH", conflicts_with = "rootfs")]
    initrd: Option<PathBuf>,
    /// Run the command as a container: DIR is its root filesystem (changes are discarded at
    /// exit), or an ext4 image file used read-write (changes persist). hvlite's guest agent
    /// runs the command with its own stdout, stderr and exit status.
    #[arg(long, value_name = "DIR|IMAGE")]
    rootfs: Option<PathBuf>,
    /// Environment variable for the container's process, KEY=VALUE (or KEY to pass the
    /// host's value); repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<EnvVar>,
    /// Working directory of the container's process [default: /].
    #[arg(short = 'w', long, value_name = "DIR", value_parser = spec::parse_workdir)]
    workdir: Option<String>,
    /// User of the container's process, UID[:GID] [default: 0:0].
    #[arg(short = 'u', long, value_name = "UID[:GID]")]
    user: Option<UserSpec>,
    /// Forward hvlite's stdin to the container's process (otherwise it reads /dev/null).
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Mount a host directory in the container, HOST:GUEST[:ro] (virtio-fs); repeatable.
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]")]
    volumes: Vec<Volume>,
    /// How --rootfs DIR reaches the guest: image (an ext4 image of DIR, built once and
    /// cached) or virtiofs (DIR itself, shared) [default: image; docs/virtio-fs.md].
    #[arg(long, value_name = "image|virtiofs")]
    rootfs_mode: Option<RootfsMode>,
    /// Show the guest kernel's console on stderr (container runs keep it quiet).
    #[arg(long)]
    console: bool,
    /// A virtio-vsock device, cid=N[,uds=PATH]: host programs connect to PATH and send
    /// `CONNECT <port>` to reach a guest listener; guest connections to the host (CID 2)
    /// port P go to PATH_P.
    #[arg(long, value_name = "cid=N[,uds=PATH]")]
    vsock: Option<VsockConfig>,
    /// A virtio-rng device: the guest's entropy (/dev/hwrng) from the host's getrandom
    /// (the config file's `entropy` also sets its rate limits).
    #[arg(long)]
    entropy: bool,
    /// Extra kernel command-line options, appended to hvlite's defaults.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs (1-32) [default: 1; 2 for container runs on PVM hosts, see docs/pvm-host.md].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=32))]
    cpus: Option<u8>,
    /// Guest memory in MiB [default: 128].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    memory: Option<u64>,
    /// A disk image for the guest, PATH[,ro][,bw=BYTES][,ops=N] (bw/ops: rate limits a
    /// second, K/M/G allowed); repeatable: /dev/vda, /dev/vdb, ...
    #[arg(long = "disk", value_name = "PATH[,ro][,bw=B][,ops=N]")]
    disks: Vec<DiskConfig>,
    /// Share a host directory with the guest (virtio-fs; the guest runs
    /// `mount -t virtiofs NAME DIR`), tag=NAME,path=DIR[,ro][,socket=PATH]; repeatable.
    /// hvlite starts virtiofsd unless socket= names a running one (docs/virtio-fs.md).
    #[arg(long = "fs", value_name = "tag=NAME,path=DIR[,ro][,socket=PATH]")]
    shares: Vec<FsConfig>,
    /// A network interface on a host TAP device, tap=NAME[,mac=MAC][,tx-bw=B][,tx-ops=N]
    /// [,rx-bw=B][,rx-ops=N] (limits a second on what the guest sends and receives);
    /// repeatable: eth0, eth1, ...
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC][,tx-bw=B][,tx-ops=N]")]
    nets: Vec<NetConfig>,
    /// Seccomp filtering of hvlite's own threads: 0 off, 2 a per-thread allow-list
    /// (docs/security.md) [default: 2].
    #[arg(long, value_name = "0|2")]
    seccomp_level: Option<SeccompLevel>,
    /// Restore the snapshot in DIR (files `state` and `memory`, written by
    /// PUT /snapshot/create) instead of booting; see docs/snapshots.md.
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "kernel", "initrd", "rootfs", "cmdline", "cpus", "memory", "disks", "nets", "vsock", "shares",
        "command", "no_template",
    ])]
    restore: Option<PathBuf>,
    /// With --restore: open drive ID from PATH instead of the snapshot's file; repeatable.
    #[arg(long, value_name = "ID=PATH", requires = "restore", value_parser = parse_override)]
    drive_override: Vec<(String, String)>,
    /// With --restore: attach interface ID to TAP instead of the snapshot's; repeatable.
    #[arg(long, value_name = "ID=TAP", requires = "restore", value_parser = parse_override)]
    net_override: Vec<(String, String)>,
    /// With --restore: the vsock device's host socket.
    #[arg(long, value_name = "PATH", requires = "restore")]
    vsock_uds: Option<PathBuf>,
    /// With --restore and --api-sock: keep the restored VM paused (resume it with
    /// PATCH /vm).
    #[arg(long, requires_all = ["restore", "api_sock"])]
    paused: bool,
    /// Boot the container's VM instead of restoring the cached template (docs/snapshots.md,
    /// "Templates"); the config file's `"template": false` does the same.
    #[arg(long, requires = "rootfs")]
    no_template: bool,
    /// Command for the guest init to run.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn parse_override(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((id, value)) if !id.is_empty() && !value.is_empty() => {
            Ok((id.to_string(), value.to_string()))
        }
        _ => Err(format!("{s:?}: expected ID=VALUE")),
    }
}

fn parse_id(s: &str) -> Result<String, String> {
    hvlite::config::DeviceId::try_from(s.to_string()).map(|id| id.as_str().to_string())
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?}: expected text or json")),
    }
}

/// hvlite's own failures; each exits with [`EXIT_VMM_ERROR`].
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    #[error(transparent)]
    Logging(#[from] LoggingError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Paths(#[from] paths::PathsError),
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write the man pages into {0}")]
    Man(PathBuf, #[source] std::io::Error),
    #[error("cannot handle termination signals")]
    Signals(#[source] std::io::Error),
}

/// The error for `hvlite run` without anything to run.
const NOTHING_TO_RUN: &str = "nothing to run: give --rootfs DIR -- CMD (a container), \
                              --kernel PATH (a VM), --config FILE or --api-sock PATH";

/// What `hvlite run` was asked to do.
enum Job {
    /// Boot a VM (with the command for hvlite-init, if any).
    Vm(VmConfig),
    /// Run a container's process in a VM.
    Container(ContainerConfig),
    /// Serve the API (booting `kernel` at once when given, or restoring `restore`).
    Api {
        socket: PathBuf,
        kernel: Option<PathBuf>,
        base: VmConfig,
        restore: Option<RestoreSpec>,
    },
    /// Restore a snapshot and run it.
    Restore(RestoreSpec),
}

impl RunArgs {
    fn overrides(&self) -> CliOverrides {
        CliOverrides {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            cpus: self.cpus,
            memory_mib: self.memory,
            disks: self.disks.clone(),
            nets: self.nets.clone(),
            vsock: self.vsock.clone(),
            entropy: self.entropy,
            shares: self.shares.clone(),
            command: self.command.clone(),
        }
    }

    /// Whether the options name nothing to boot or run: no container root, kernel, config
    /// file, API socket, initrd, disk or command. `hvlite run` alone would boot the default
    /// kernel into a panic (it has no root filesystem), so it is refused up front.
    fn nothing_to_run(&self) -> bool {
        self.rootfs.is_none()
            && self.kernel.is_none()
            && self.config.is_none()
            && self.api_sock.is_none()
            && self.initrd.is_none()
            && self.disks.is_empty()
            && self.command.is_empty()
            && self.restore.is_none()
    }

    /// The restore `--restore` and its overrides ask for, else the config file's
    /// `snapshot` (which must then be the file's only VM resource).
    fn restore_spec(&self, file: &FileConfig) -> Result<Option<RestoreSpec>, MainError> {
        let Some(dir) = self.restore.as_ref() else {
            let Some(load) = &file.snapshot else {
                return Ok(None);
            };
            let others = file.boot_source.is_some()
                || file.machine_config.is_some()
                || !file.drives.is_empty()
                || !file.network_interfaces.is_empty()
                || file.vsock.is_some()
                || file.process.is_some()
                || file.rootfs.is_some();
            let cli = self.overrides();
            let cli_resources = cli.kernel.is_some()
                || cli.initrd.is_some()
                || cli.cmdline.is_some()
                || cli.cpus.is_some()
                || cli.memory_mib.is_some()
                || !cli.disks.is_empty()
                || !cli.nets.is_empty()
                || cli.vsock.is_some()
                || !cli.command.is_empty()
                || self.rootfs.is_some();
            if others || cli_resources {
                return Err(usage(
                    "a config file with a snapshot cannot also give the VM's resources (they come from the snapshot)",
                ));
            }
            if !load.resume_vm && self.api_sock.is_none() {
                return Err(usage(
                    "the config file's snapshot has resume_vm false: that needs --api-sock to resume it",
                ));
            }
            return Ok(Some(load.to_spec()));
        };
        Ok(Some(RestoreSpec {
            state_path: dir.join(persist::STATE_FILE),
            mem_path: dir.join(persist::MEMORY_FILE),
            drive_overrides: (self.drive_override.iter())
                .map(|(id, p)| (id.clone(), PathBuf::from(p)))
                .collect(),
            net_overrides: self.net_override.clone(),
            vsock_uds: self.vsock_uds.clone(),
            resume: !self.paused,
        }))
    }

    fn into_job(self, file: &FileConfig) -> Result<Job, MainError> {
        let restore = self.restore_spec(file)?;
        let (kernel, mut vm) = file.to_partial_vm_config(self.overrides());
        if let Some(spec) = restore {
            return Ok(match self.api_sock {
                Some(socket) => Job::Api {
                    socket,
                    kernel: None,
                    base: vm,
                    restore: Some(spec),
                },
                None => Job::Restore(spec),
            });
        }
        vm.guest_profile = std::env::var_os("HVLITE_GUEST_PROFILE").map(PathBuf::from);
        let rootfs = (self.rootfs.clone()).or(file.rootfs.clone().map(PathBuf::from));
        if let Some(socket) = self.api_sock.clone() {
            if rootfs.is_some() {
                return Err(usage("--api-sock cannot run containers (--rootfs) yet"));
            }
            return Ok(Job::Api {
                socket,
                kernel,
                base: vm,
                restore: None,
            });
        }
        vm.kernel = match kernel {
            Some(k) => k,
            None => paths::default_kernel()?,
        };
        let file_stdin = file.process.as_ref().is_some_and(|p| p.stdin);
        let Some(rootfs) = rootfs else {
            let container_only = [
                (!self.env.is_empty(), "--env"),
                (self.workdir.is_some(), "--workdir"),
                (self.user.is_some(), "--user"),
                (
                    self.interactive || file_stdin,
                    "--interactive (process.stdin)",
                ),
                (self.console || file.console, "--console"),
                (!self.volumes.is_empty(), "--volume"),
                (self.rootfs_mode.is_some(), "--rootfs-mode"),
            ];
            if let Some((_, flag)) = container_only.iter().find(|(given, _)| *given) {
                return Err(usage(&format!("{flag} needs --rootfs")));
            }
            return Ok(Job::Vm(vm));
        };
        if vm.initrd.is_some() {
            return Err(usage("a container run (rootfs) cannot have an initrd"));
        }
        let cpus_given = self.cpus.is_some()
            || (file.machine_config.as_ref()).is_some_and(|m| m.vcpu_count.is_some());
        if !cpus_given {
            let host_cpus = std::thread::available_parallelism().map_or(1, usize::from);
            if let Some(cpus) = hvlite::host::HostKind::detect().container_cpus(host_cpus) {
                vm.cpus = cpus;
            }
        }
        let Some(args) = vm.command.take() else {
            return Err(usage("--rootfs needs the command to run after `--`"));
        };
        let file_process = file.process.clone().unwrap_or_default();
        let env = if self.env.is_empty() {
            (file_process.env.iter())
                .map(|e| e.as_str().parse::<EnvVar>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| usage(&format!("process.env: {e}")))?
        } else {
            self.env
        };
        let workdir = self
            .workdir
            .or_else(|| file_process.cwd.map(|c| c.to_string_lossy().into_owned()));
        let user = self.user.or(file_process.user.map(|u| UserSpec {
            uid: u.uid,
            gid: u.gid,
        }));
        Ok(Job::Container(ContainerConfig {
            vm,
            rootfs,
            process: ProcessOptions {
                args,
                env,
                workdir,
                user,
                stdin: self.interactive || file_stdin,
            },
            console: self.console || file.console,
            volumes: self.volumes,
            rootfs_mode: self.rootfs_mode.unwrap_or_default(),
            template: !self.no_template && file.template.unwrap_or(true),
        }))
    }
}

fn usage(msg: &str) -> MainError {
    MainError::Usage(msg.to_string())
}

/// Installs the logger: JSON lines with `--log`, `--log-format json` or the config
/// file's `logger`, env_logger's text otherwise. `HVLITE_LOG` beats the file's level.
/// Returns the handle that replaces it (`PUT /logger`) and the logger as configured.
fn init_logging(
    args: &RunArgs,
    file: &FileConfig,
    vm_id: &str,
) -> Result<(LogHandle, Logger), MainError> {
    let mut logger = file.logger.clone().unwrap_or_default();
    if let Some(path) = &args.log {
        logger.log_path = Some(HostPath::try_from(path.clone()).map_err(usage)?);
    }
    let dest = logger.dest();
    let default_format = if dest == LogDest::Stderr {
        LogFormat::Text
    } else {
        LogFormat::Json
    };
    let format = args.log_format.or(logger.format).unwrap_or(default_format);
    logger.format = Some(format);
    let env_set = std::env::var(logging::LOG_ENV).is_ok_and(|v| !v.trim().is_empty());
    let spec = match logger.level.clone() {
        Some(level) if !env_set => level,
        _ => LevelSpec::from_env()?,
    };
    logger.level = Some(spec.clone());
    let setup = LogSetup {
        dest,
        format,
        spec,
        show: logger.line_options(),
    };
    Ok((logging::install_switchable(&setup, vm_id)?, logger))
}

/// The metrics file as configured, its writer and its periodic flusher, when a metrics
/// file is configured.
type MetricsFile = (MetricsConfig, Arc<MetricsWriter>, PeriodicFlusher);

/// Starts writing `metrics` to the file the command line or config file names, if any.
fn start_metrics(
    args: &RunArgs,
    file: &FileConfig,
    metrics: &Arc<Metrics>,
) -> Result<Option<MetricsFile>, MainError> {
    let mut config = file.metrics.clone();
    if let Some(path) = &args.metrics {
        let metrics_path = HostPath::try_from(path.clone()).map_err(usage)?;
        config = Some(MetricsConfig {
            metrics_path,
            flush_interval_secs: config.and_then(|c| c.flush_interval_secs),
        });
    }
    let Some(config) = config else {
        return Ok(None);
    };
    let writer = Arc::new(MetricsWriter::open(
        config.metrics_path.as_ref(),
        Arc::clone(metrics),
    )?);
    let flusher = PeriodicFlusher::start(Arc::clone(&writer), config.flush_interval())?;
    Ok(Some((config, writer, flusher)))
}

/// Prints one error line, with its causes, and returns hvlite's error status.
fn fail(err: &dyn std::error::Error) -> ExitCode {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    eprintln!("hvlite: error: {msg}");
    ExitCode::from(EXIT_VMM_ERROR)
}

/// Maps how the VM ended to hvlite's exit status.
fn exit_code(reason: ExitReason, has_command: bool) -> ExitCode {
    match reason {
        ExitReason::GuestStatus(status) => ExitCode::from(status),
        ExitReason::Reset | ExitReason::Shutdown if !has_command => ExitCode::SUCCESS,
        ExitReason::Reset | ExitReason::Shutdown => {
            eprintln!(
                "hvlite: error: the guest stopped ({}) without reporting the command's exit status",
                if reason == ExitReason::Reset {
                    "reset"
                } else {
                    "shutdown"
                }
            );
            ExitCode::from(EXIT_VMM_ERROR)
        }
        other => {
            let msg = other.failure().unwrap_or_else(|| format!("{other:?}"));
            eprintln!("hvlite: error: {msg}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}

/// Maps how a container run ended to hvlite's exit status; a failure shows the tail of
/// the (otherwise hidden) guest console.
fn container_exit_code(outcome: RunOutcome) -> ExitCode {
    let msg = match &outcome.reason {
        ExitReason::GuestStatus(status) => return ExitCode::from(*status),
        ExitReason::Reset | ExitReason::Shutdown => {
            "the guest stopped before its agent reported the command's exit status".to_string()
        }
        other => other.failure().unwrap_or_else(|| format!("{other:?}")),
    };
    eprintln!("hvlite: error: {msg}");
    if let Some(sig) = container::retry::init_killed_by(&outcome.reason) {
        eprintln!(
            "hvlite: the guest agent (PID 1) was killed by signal {sig}{}",
            if hvlite::host::HostKind::detect().is_pvm() {
                "; on PVM hosts that is the host's stale-memory defect (docs/pvm-defect.md)"
            } else {
                ""
            }
        );
    }
    let tail = outcome.console_tail.trim_end();
    if !tail.is_empty() {
        let lines: Vec<&str> = tail.lines().collect();
        let start = lines.len().saturating_sub(20);
        eprintln!("hvlite: last guest console lines:");
        for line in &lines[start..] {
            eprintln!("  {line}");
        }
    }
    ExitCode::from(EXIT_VMM_ERROR)
}

fn main() -> ExitCode {
    let _ = PROCESS_START.set(Instant::now());
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage_error = e.use_stderr();
            let _ = e.print();
            return if usage_error {
                ExitCode::from(EXIT_VMM_ERROR)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Run(args) => match run(*args) {
            Ok(code) => code,
            Err(e) => fail(&e),
        },
        Command::Template { action } => match template_command(action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "hvlite", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => match write_man_pages(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        },
    }
}

/// `hvlite template ...`.
fn template_command(action: TemplateAction) -> Result<(), MainError> {
    use hvlite::container::template::{self, Origin};
    use hvlite::container::template_cmd;
    let setup = LogSetup {
        dest: LogDest::Stderr,
        format: LogFormat::Text,
        spec: LevelSpec::from_env()?,
        show: Default::default(),
    };
    let _log = logging::install_switchable(&setup, "hvlite-template")?;
    let root = template::templates_dir();
    match action {
        TemplateAction::Build {
            kernel,
            cpus,
            memory,
            cmdline,
            image_root,
            console,
            force,
        } => {
            let (t, origin) = template_cmd::build(&template_cmd::BuildOptions {
                kernel,
                cpus,
                memory_mib: memory,
                cmdline,
                image_root,
                console,
                force,
            })?;
            let what = match origin {
                Origin::Built => "built",
                Origin::Cached => "already cached",
            };
            println!("{} ({what})", t.dir.display());
        }
        TemplateAction::List => {
            for line in template_cmd::list_lines(&root) {
                println!("{line}");
            }
        }
        TemplateAction::Rm { key, all: _ } => {
            let removed = template::remove(&root, key.as_deref()).map_err(ContainerError::from)?;
            for k in removed {
                println!("removed {k}");
            }
        }
    }
    Ok(())
}

/// Writes the man pages of hvlite and each of its subcommands into `dir`.
fn write_man_pages(dir: &std::path::Path) -> Result<(), MainError> {
    let err = |e| MainError::Man(dir.to_path_buf(), e);
    std::fs::create_dir_all(dir).map_err(err)?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(err)
}

fn run(args: RunArgs) -> Result<ExitCode, MainError> {
    if args.nothing_to_run() {
        return Err(usage(NOTHING_TO_RUN));
    }
    let file = match &args.config {
        Some(path) => config_file::load(path)?,
        None => FileConfig::default(),
    };
    let vm_id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("hvlite-{}", std::process::id()));
    let (log, logger) = init_logging(&args, &file, &vm_id)?;
    let level = args
        .seccomp_level
        .or(file.seccomp_level)
        .unwrap_or_default();
    seccomp::configure(level)?;
    if level == SeccompLevel::Off {
        log::warn!("seccomp filters are off (--seccomp-level 0)");
    }
    let registry = Arc::new(Metrics::new(&vm_id));
    let mut metrics = start_metrics(&args, &file, &registry)?;
    let hooks = RunHooks {
        metrics: metrics.as_ref().map(|_| Arc::clone(&registry)),
        control: None,
    };
    if container::signals::exit_on_termination_as_init().map_err(MainError::Signals)? {
        log::debug!("PID 1 of its namespace: SIGINT, SIGTERM and SIGHUP end hvlite");
    }
    let code = match args.into_job(&file)? {
        Job::Vm(cfg) => {
            let reason = vmm::run_with(&cfg, RunEnv::new(Console::default()), hooks)?;
            exit_code(reason, cfg.command.is_some())
        }
        Job::Container(cfg) => {
            if metrics.is_some() {
                return Err(usage("metrics are not supported for container runs yet"));
            }
            container_exit_code(container::run(cfg)?)
        }
        Job::Api {
            socket,
            kernel,
            base,
            restore,
        } => {
            let outputs = Outputs::new(Some(log), logger, registry, metrics.take());
            let (reason, has_command) = service::run_api(ApiRun {
                id: vm_id,
                socket,
                kernel,
                base,
                outputs: Arc::new(Mutex::new(outputs)),
                restore,
            })?;
            exit_code(reason, has_command)
        }
        Job::Restore(spec) => {
            let (reason, has_command) =
                vmm::restore_with(&spec, RunEnv::new(Console::default()), hooks)?;
            exit_code(reason, has_command)
        }
    };
    // Stopping the flusher writes the last metrics line.
    drop(metrics);
    Ok(code)
}
