//! `containerd-shim-hvlite-v2`: containerd's shim v2 for hvlite. containerd runs it for
//! `--runtime io.containerd.hvlite.v2`; each container gets its own shim and its own
//! microVM. docs/containerd.md describes it.
//!
//! The same binary is also the container's monitor (the VMM process the shim starts):
//! `containerd-shim-hvlite-v2 --hvlite-monitor STATE_ROOT [--kernel K] monitor ID`.

mod console;
mod error;
mod exec;
mod options;
mod rootfs;
mod service;
mod stats;
mod stdio;
mod tasks;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};
use hvlite::oci::commands;
use hvlite::oci::monitor::{self, MonitorOptions};
use hvlite::oci::state::StateRoot;

use service::TaskService;

/// containerd's name for this runtime.
pub const RUNTIME_ID: &str = "io.containerd.hvlite.v2";
/// The first argument of the monitor mode.
pub const MONITOR_FLAG: &str = "--hvlite-monitor";

/// The shim process.
struct Shim {
    namespace: String,
    id: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

impl containerd_shim::Shim for Shim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Shim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        // One shim (and one VM) per container: grouped by the container's own id.
        let grouping = opts.id.clone();
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        Ok(address)
    }

    /// containerd's clean-up after a shim is gone: kill a monitor still running, unmount
    /// the rootfs, remove the state.
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let root = service::state_root(&self.bundle);
        if let Err(e) = commands::delete(&root, &self.id, true) {
            log::warn!("delete {}: {e}", self.id);
        }
        let rootfs = self.bundle.join(rootfs::ROOTFS);
        let mounted = rootfs::is_mounted(&rootfs).then_some(rootfs.as_path());
        service::clean_bundle(&self.bundle, mounted);
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: containerd_shim::protos::protobuf::MessageField::some(
                containerd_shim::util::timestamp()?,
            ),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let service = TaskService {
            namespace: self.namespace.clone(),
            exit: Arc::clone(&self.exit),
            tasks: Arc::default(),
            publisher: Arc::new(publisher),
        };
        if let Err(e) = service.watch_exits() {
            log::error!("cannot watch the monitors' exits: {e}");
        }
        service
    }
}

/// The monitor mode: `--hvlite-monitor ROOT [--kernel K] monitor ID`.
fn run_monitor(args: &[String]) -> ExitCode {
    let usage = || {
        eprintln!(
            "usage: containerd-shim-hvlite-v2 {MONITOR_FLAG} ROOT [--kernel K] monitor \\
             [--console-socket S] ID"
        );
        ExitCode::from(125)
    };
    let (root, rest) = match args {
        [root, rest @ ..] => (root, rest),
        _ => return usage(),
    };
    let (kernel, rest) = match rest {
        [flag, k, rest @ ..] if flag == "--kernel" => (Some(PathBuf::from(k)), rest),
        _ => (None, rest),
    };
    let (console_socket, id) = match rest {
        [word, id] if word == "monitor" => (None, id.clone()),
        [word, flag, sock, id] if word == "monitor" && flag == "--console-socket" => {
            (Some(PathBuf::from(sock)), id.clone())
        }
        _ => return usage(),
    };
    // The monitor's stderr is the container's: only errors go there.
    let _ = env_logger::Builder::new()
        .parse_filters("error")
        .format_target(false)
        .try_init();
    let status = monitor::run(MonitorOptions {
        root: StateRoot::new(PathBuf::from(root)),
        id,
        kernel,
        console_socket,
        ready: commands::ready_socket(),
    });
    ExitCode::from(status)
}

fn main() -> ExitCode {
    let _ = hvlite::process_stats::PROCESS_START.set(std::time::Instant::now());
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(MONITOR_FLAG) {
        return run_monitor(&args[2..]);
    }
    containerd_shim::run::<Shim>(RUNTIME_ID, None);
    ExitCode::SUCCESS
}
