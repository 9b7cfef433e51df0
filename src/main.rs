//! The `hvlite` command line: a thin front end that builds a [`VmConfig`] and runs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use hvlite::container::spec::{self, EnvVar, ProcessOptions, UserSpec};
use hvlite::container::{self, ContainerConfig, Outcome, paths};
use hvlite::vcpu::PROCESS_START;
use hvlite::vmm::config::{
    DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DiskConfig, NetConfig, VmConfig, VsockConfig,
};
use hvlite::vmm::exit::ExitReason;
use hvlite::vmm::{self, Console, RunEnv};

/// Exit status for hvlite's own failures (bad input, KVM errors), as `docker run` does;
/// a guest command's status is passed through unchanged.
const EXIT_VMM_ERROR: u8 = 125;

#[derive(Parser)]
#[command(
    name = "hvlite",
    version,
    about = "A hypervisor-lite microVM monitor on KVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a microVM; with `-- COMMAND ARGS...` run the command in it and exit with its status.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
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
    #[arg(
        short = 'e',
        long = "env",
        value_name = "KEY=VALUE",
        requires = "rootfs"
    )]
    env: Vec<EnvVar>,
    /// Working directory of the container's process [default: /].
    #[arg(short = 'w', long, value_name = "DIR", requires = "rootfs",
          value_parser = spec::parse_workdir)]
    workdir: Option<String>,
    /// User of the container's process, UID[:GID] [default: 0:0].
    #[arg(short = 'u', long, value_name = "UID[:GID]", requires = "rootfs")]
    user: Option<UserSpec>,
    /// Forward hvlite's stdin to the container's process (otherwise it reads /dev/null).
    #[arg(short = 'i', long, requires = "rootfs")]
    interactive: bool,
    /// Show the guest kernel's console on stderr (container runs keep it quiet).
    #[arg(long, requires = "rootfs")]
    console: bool,
    /// A virtio-vsock device, cid=N[,uds=PATH]: host programs connect to PATH and send
    /// `CONNECT <port>` to reach a guest listener; guest connections to the host (CID 2)
    /// port P go to PATH_P.
    #[arg(long, value_name = "cid=N[,uds=PATH]")]
    vsock: Option<VsockConfig>,
    /// Extra kernel command-line options, appended to hvlite's defaults.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs (1-32).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CPUS,
          value_parser = clap::value_parser!(u8).range(1..=32))]
    cpus: u8,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEMORY_MIB,
          value_parser = clap::value_parser!(u64).range(1..))]
    memory: u64,
    /// A disk image for the guest, PATH[,ro]; repeatable: /dev/vda, /dev/vdb, ...
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    disks: Vec<DiskConfig>,
    /// A network interface on a host TAP device, tap=NAME[,mac=MAC]; repeatable: eth0, eth1, ...
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    nets: Vec<NetConfig>,
    /// Command for the guest init to run.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// What `hvlite run` was asked to do.
enum Job {
    /// Boot a VM (with the command for hvlite-init, if any).
    Vm(VmConfig),
    /// Run a container's process in a VM.
    Container(ContainerConfig),
}

impl RunArgs {
    fn into_job(self) -> Result<Job, Box<dyn std::error::Error>> {
        let kernel = match self.kernel {
            Some(k) => k,
            None => paths::default_kernel()?,
        };
        let vm = VmConfig {
            kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            cpus: self.cpus,
            memory_mib: self.memory,
            command: None,
            disks: self.disks,
            nets: self.nets,
            vsock: self.vsock,
            guest_profile: std::env::var_os("HVLITE_GUEST_PROFILE").map(PathBuf::from),
        };
        let Some(rootfs) = self.rootfs else {
            return Ok(Job::Vm(VmConfig {
                command: (!self.command.is_empty()).then_some(self.command),
                ..vm
            }));
        };
        if self.command.is_empty() {
            return Err("--rootfs needs the command to run after `--`".into());
        }
        Ok(Job::Container(ContainerConfig {
            vm,
            rootfs,
            process: ProcessOptions {
                args: self.command,
                env: self.env,
                workdir: self.workdir,
                user: self.user,
                stdin: self.interactive,
            },
            console: self.console,
        }))
    }
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
        ExitReason::Fatal(msg) => {
            eprintln!("hvlite: error: {msg}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}

/// Maps how a container run ended to hvlite's exit status; a failure shows the tail of
/// the (otherwise hidden) guest console.
fn container_exit_code(outcome: Outcome) -> ExitCode {
    let msg = match outcome.reason {
        ExitReason::GuestStatus(status) => return ExitCode::from(status),
        ExitReason::Reset | ExitReason::Shutdown => {
            "the guest stopped before its agent reported the command's exit status".to_string()
        }
        ExitReason::Fatal(msg) => msg,
    };
    eprintln!("hvlite: error: {msg}");
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
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("HVLITE_LOG", "info"))
        .format_target(false)
        .init();
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
    let Command::Run(args) = cli.command;
    match args.into_job() {
        Ok(Job::Vm(cfg)) => match vmm::run(&cfg, RunEnv::new(Console::default())) {
            Ok(reason) => exit_code(reason, cfg.command.is_some()),
            Err(e) => fail(&e),
        },
        Ok(Job::Container(cfg)) => match container::run(cfg) {
            Ok(outcome) => container_exit_code(outcome),
            Err(e) => fail(&e),
        },
        Err(e) => fail(e.as_ref()),
    }
}
