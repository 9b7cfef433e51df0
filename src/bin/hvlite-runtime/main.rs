//! `hvlite-runtime`: an OCI runtime with runc's command line; each container runs in its
//! own hvlite microVM. See `hvlite::oci` and docs/oci-runtime.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use hvlite::container::exec::ExecError;
use hvlite::logging::{self, LevelSpec, LogDest};
use hvlite::oci::OciError;
use hvlite::oci::commands::{self, Globals};
use hvlite::oci::exec;
use hvlite::oci::monitor::{self, MonitorOptions};
use hvlite::oci::state::{self, StateRoot};
use hvlite::process_stats::PROCESS_START;

#[derive(Parser)]
#[command(
    name = "hvlite-runtime",
    version,
    about = "An OCI runtime (runc's command line) running each container in an hvlite microVM",
    after_help = "Example: podman --runtime /usr/local/bin/hvlite-runtime run --rm IMAGE echo hi"
)]
struct Cli {
    /// State directory.
    #[arg(long, value_name = "DIR", default_value = "/run/hvlite-runtime")]
    root: PathBuf,
    /// Write the runtime's log (and errors) to FILE.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Accepted for runc compatibility (the VMM process stays in the engine's cgroup).
    #[arg(long)]
    systemd_cgroup: bool,
    /// Debug logging.
    #[arg(long)]
    debug: bool,
    /// Guest kernel [default: $HVLITE_KERNEL, else the installed one].
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Guest agent [default: $HVLITE_AGENT, else the installed one].
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args)]
struct CreateArgs {
    /// The bundle directory (config.json and the root).
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    bundle: PathBuf,
    /// Write the container's host pid (the VMM) here.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,
    /// Where the pty master of a process with a terminal goes (SCM_RIGHTS).
    #[arg(long, value_name = "SOCKET")]
    console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility.
    #[arg(long)]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long)]
    no_new_keyring: bool,
    /// Accepted for runc compatibility (no extra fds reach the guest).
    #[arg(long, value_name = "N", default_value_t = 0)]
    preserve_fds: u32,
    /// The container id.
    id: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container: boot its VM, prepare the process, do not run it.
    Create(CreateArgs),
    /// Run a created container's process.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (name or number, default SIGTERM) to a container's process.
    Kill {
        /// Signal every process of the container, not only its process.
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container's state (--force: stop it first).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// List containers.
    #[command(alias = "ps")]
    List {
        /// Only the ids.
        #[arg(short, long)]
        quiet: bool,
        /// table or json.
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Create and start a container; without -d wait for it and delete it.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return once started.
        #[arg(short, long)]
        detach: bool,
    },
    /// Run another process in a running container: from an OCI process file, or inline.
    #[command(
        after_help = "Examples:\n  hvlite-runtime exec --process process.json ID\n  \
                            hvlite-runtime exec -e A=b --cwd /tmp ID sh -c 'echo $A'"
    )]
    Exec {
        /// An OCI `process` object (JSON); then no CMD.
        #[arg(long, value_name = "FILE")]
        process: Option<PathBuf>,
        /// Give the process a terminal (inline form; a process file says it itself).
        #[arg(short = 't', long)]
        tty: bool,
        /// Return once the process runs; a relay process keeps its stdio.
        #[arg(short, long)]
        detach: bool,
        /// Write the relay's pid (it exits with the process's status) here.
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
        /// Where the terminal's pty master goes (SCM_RIGHTS).
        #[arg(long, value_name = "SOCKET")]
        console_socket: Option<PathBuf>,
        /// Inline form: an environment variable KEY=VALUE (repeatable).
        #[arg(short, long, value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Inline form: UID[:GID].
        #[arg(short, long, value_name = "UID[:GID]")]
        user: Option<String>,
        /// Inline form: the working directory.
        #[arg(long, value_name = "DIR")]
        cwd: Option<String>,
        id: String,
        /// Inline form: the command and its arguments.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The container's VMM (started by create; not for direct use).
    #[command(hide = true)]
    Monitor {
        #[arg(long, value_name = "SOCKET")]
        console_socket: Option<PathBuf>,
        id: String,
    },
}

fn init_logging(cli: &Cli, monitor: bool) {
    let level = if cli.debug {
        LevelSpec::global(log::LevelFilter::Debug)
    } else {
        LevelSpec::from_env().unwrap_or_else(|_| LevelSpec::global(log::LevelFilter::Info))
    };
    let Some(path) = &cli.log else {
        // Without --log the monitor's stderr is the container's: only errors go there;
        // the other commands print their error once themselves.
        let level = if monitor { "error" } else { "off" };
        let _ = env_logger::Builder::new()
            .parse_filters(if cli.debug { "debug" } else { level })
            .format_target(false)
            .try_init();
        return;
    };
    if cli.log_format == "json" {
        let _ = logging::init_json(&LogDest::File(path.clone()), "hvlite-runtime", level);
        return;
    }
    let mut builder = env_logger::Builder::new();
    builder
        .parse_filters(&level.to_string())
        .format_target(false);
    if let Ok(file) = logging::open_append(path) {
        builder.target(env_logger::Target::Pipe(Box::new(file)));
    }
    let _ = builder.try_init();
}

fn globals(cli: &Cli) -> Globals {
    let mut args = vec!["--root".to_string(), cli.root.display().to_string()];
    if let Some(l) = &cli.log {
        args.extend(["--log".into(), l.display().to_string()]);
    }
    args.extend(["--log-format".into(), cli.log_format.clone()]);
    if cli.debug {
        args.push("--debug".into());
    }
    if let Some(k) = &cli.kernel {
        args.extend(["--kernel".into(), k.display().to_string()]);
    }
    Globals {
        monitor_args: args,
        kernel: cli.kernel.clone(),
        agent: cli.agent.clone(),
    }
}

fn run(cli: Cli) -> Result<ExitCode, OciError> {
    let root = StateRoot::new(cli.root.clone());
    let g = globals(&cli);
    match cli.command {
        Cmd::Create(a) => {
            commands::create(
                &root,
                &g,
                &a.id,
                &a.bundle,
                a.pid_file.as_deref(),
                a.console_socket.as_deref(),
            )?;
        }
        Cmd::Start { id } => commands::start(&root, &id)?,
        Cmd::State { id } => {
            let st = commands::load(&root, &id)?;
            let text = serde_json::to_string_pretty(&state::to_spec_json(&st))
                .map_err(|e| OciError::Refused(e.to_string()))?;
            print_out(&format!("{text}\n"));
        }
        Cmd::Kill { all, id, signal } => {
            let sig = commands::parse_signal(&signal)?;
            commands::kill(&root, &id, sig, all)?;
        }
        Cmd::Delete { force, id } => commands::delete(&root, &id, force)?,
        Cmd::List { quiet, format } => {
            print!("{}", commands::list(&root, quiet, format == "json")?)
        }
        Cmd::Run { create: a, detach } => {
            let mut child = commands::create(
                &root,
                &g,
                &a.id,
                &a.bundle,
                a.pid_file.as_deref(),
                a.console_socket.as_deref(),
            )?;
            if let Err(e) = commands::start(&root, &a.id) {
                let _ = commands::delete(&root, &a.id, true);
                let _ = child.wait();
                return Err(e);
            }
            if detach {
                return Ok(ExitCode::SUCCESS);
            }
            let status = child
                .wait()
                .map_err(|e| OciError::Io("monitor".into(), e))?;
            let _ = commands::delete(&root, &a.id, true);
            let code = status.code().unwrap_or_else(|| {
                use std::os::unix::process::ExitStatusExt;
                128 + status.signal().unwrap_or(0)
            });
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)));
        }
        Cmd::Exec {
            process,
            tty,
            detach,
            pid_file,
            console_socket,
            env,
            user,
            cwd,
            id,
            args,
        } => {
            let spec = match (process, args.is_empty()) {
                (Some(p), true) => exec::read_process(&p)?,
                (Some(_), false) => {
                    return Err(OciError::Refused(
                        "exec: give either --process FILE or a command, not both".into(),
                    ));
                }
                (None, true) => {
                    return Err(OciError::Refused(
                        "exec: nothing to run: give --process FILE or a command".into(),
                    ));
                }
                (None, false) => exec::inline_process(args, env, user.as_deref(), cwd, tty)?,
            };
            let opts = exec::ExecOptions {
                detach,
                pid_file,
                console_socket,
            };
            return match exec::run(&root, &id, &spec, &opts) {
                Ok(status) => Ok(ExitCode::from(status)),
                // Not found (127), not executable (126): the status a shell would give.
                Err(OciError::Exec(ExecError::Start { status, message })) => {
                    eprintln!("hvlite-runtime: error: {message}");
                    Ok(ExitCode::from(status))
                }
                Err(e) => Err(e),
            };
        }
        Cmd::Monitor { console_socket, id } => {
            let status = monitor::run(MonitorOptions {
                root,
                id,
                kernel: cli.kernel,
                ready: commands::ready_socket(),
                console_socket,
            });
            return Ok(ExitCode::from(status));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints to stdout; a closed stdout is the reader's business, not a crash.
fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn main() -> ExitCode {
    let _ = PROCESS_START.set(Instant::now());
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let monitor = matches!(cli.command, Cmd::Monitor { .. });
    init_logging(&cli, monitor);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            eprintln!("hvlite-runtime: error: {e}");
            ExitCode::from(1)
        }
    }
}
