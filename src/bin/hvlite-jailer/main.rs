//! `hvlite-jailer`: starts hvlite in a jail (docs/jailer.md). Run as root; the jailed
//! hvlite runs as the given uid/gid with no capabilities and no_new_privs, in a chroot that
//! holds only its binary, its libraries, the files named with --file and the device nodes
//! it needs, after pivot_root in new mount and PID namespaces (optionally inside a given
//! network namespace), in its own cgroup with CPU and memory limits, with rlimits set and
//! every inherited file descriptor above stderr closed. The jailer waits for hvlite and
//! exits with its status.

mod cgroup;
mod chroot;
mod isolate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// hvlite-jailer's own failures exit with this status, like hvlite's.
const EXIT_JAILER_ERROR: u8 = 125;

#[derive(Parser, Debug)]
#[command(
    name = "hvlite-jailer",
    version,
    about = "Run hvlite jailed: chroot + pivot_root, mount/PID namespaces, cgroup, unprivileged",
    after_help = "Example:\n  hvlite-jailer --id vm1 --exec-file $(which hvlite) --uid 65534 --gid 65534 \\\n    --file /srv/vmlinux:/vmlinux -- run --kernel /vmlinux"
)]
pub struct JailArgs {
    /// The VM's id: names the jail directory and the cgroup (letters, digits, '-', '_').
    #[arg(long, value_parser = parse_id)]
    pub id: String,
    /// The hvlite binary to copy into the jail (with the libraries it links).
    #[arg(long, value_name = "PATH")]
    pub exec_file: PathBuf,
    /// User id hvlite runs as.
    #[arg(long)]
    pub uid: u32,
    /// Group id hvlite runs as.
    #[arg(long)]
    pub gid: u32,
    /// Where jails are made: DIR/<exec name>/<id>/root.
    #[arg(long, value_name = "DIR", default_value = "/srv/hvlite-jailer")]
    pub chroot_base_dir: PathBuf,
    /// A host file the VM needs (kernel, initrd, disk, ...), bind-mounted at JAIL_PATH
    /// (default: /<file name>) inside the jail; repeatable.
    #[arg(long = "file", value_name = "HOST_PATH[:JAIL_PATH]")]
    pub files: Vec<String>,
    /// Join this network namespace (e.g. /var/run/netns/NAME) before jailing.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// cgroup version: auto (v2 when the host has a unified hierarchy, else v1), 1 or 2.
    #[arg(long, default_value = "auto", value_parser = ["auto", "1", "2"])]
    pub cgroup_version: String,
    /// CPU bandwidth: microseconds of CPU time per --cpu-period-us.
    #[arg(long, value_name = "US")]
    pub cpu_quota_us: Option<u64>,
    /// CPU bandwidth period in microseconds.
    #[arg(long, value_name = "US", default_value_t = 100_000)]
    pub cpu_period_us: u64,
    /// Memory limit of the jail's cgroup in MiB (guest memory included).
    #[arg(long, value_name = "MIB")]
    pub memory_limit_mib: Option<u64>,
    /// RLIMIT_NOFILE of hvlite.
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub nofile: u64,
    /// RLIMIT_FSIZE of hvlite in bytes (largest file it may write) [default: unlimited].
    #[arg(long, value_name = "BYTES")]
    pub fsize: Option<u64>,
    /// Arguments for hvlite (e.g. `run --kernel /vmlinux`).
    #[arg(last = true, required = true, value_name = "HVLITE_ARGS")]
    pub args: Vec<String>,
}

fn parse_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: 1-64 characters of letters, digits, '-' and '_'"
        ))
    }
}

/// Why jailing failed.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("hvlite-jailer must run as root")]
    NotRoot,
    #[error(transparent)]
    Chroot(#[from] chroot::ChrootError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Isolate(#[from] isolate::IsolateError),
}

fn main() -> ExitCode {
    let args = match JailArgs::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(EXIT_JAILER_ERROR)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&args) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            eprintln!("hvlite-jailer: error: {msg}");
            ExitCode::from(EXIT_JAILER_ERROR)
        }
    }
}

fn run(args: &JailArgs) -> Result<u8, JailError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(JailError::NotRoot);
    }
    let jail = chroot::Jail::create(args)?;
    let cgroup = cgroup::Cgroup::create(args)?;
    let status = isolate::enter_and_run(args, &jail, &cgroup);
    cgroup.remove();
    Ok(status?)
}
