//! The `hvlite` command line: a thin front end that builds a [`VmConfig`] and runs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use hvlite::vcpu::PROCESS_START;
use hvlite::vmm::config::{DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DiskConfig, NetConfig, VmConfig};
use hvlite::vmm::exit::ExitReason;
use hvlite::vmm::{self, Console};

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
    /// Guest kernel: an uncompressed ELF vmlinux or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initramfs (uncompressed cpio recommended: decompression runs in the guest).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
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

impl RunArgs {
    fn into_config(self) -> VmConfig {
        VmConfig {
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            cpus: self.cpus,
            memory_mib: self.memory,
            command: (!self.command.is_empty()).then_some(self.command),
            disks: self.disks,
            nets: self.nets,
            guest_profile: std::env::var_os("HVLITE_GUEST_PROFILE").map(PathBuf::from),
        }
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
    match cli.command {
        Command::Run(args) => {
            let cfg = args.into_config();
            match vmm::run(&cfg, Console::default()) {
                Ok(reason) => exit_code(reason, cfg.command.is_some()),
                Err(e) => fail(&e),
            }
        }
    }
}
