//! `hvlite run --api-sock PATH`: serves the API and runs the VM it starts (or the one the
//! command line gave, at once), until the guest ends.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};

use super::{Controller, Outputs, PendingVm, StartRequest, error_chain};
use crate::api::{ApiServer, ApiServerError, InstanceState};
use crate::config::VmConfig;
use crate::exit::ExitReason;
use crate::vmm::control::VmControl;
use crate::vmm::persist::RestoreSpec;
use crate::vmm::{self, Console, RunEnv, RunHooks, VmmError};

/// Errors of an API-driven run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Server(#[from] ApiServerError),
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error("cannot start the API controller thread")]
    Thread(#[source] std::io::Error),
    #[error("the API controller stopped before the VM started")]
    ControllerGone,
}

/// What an API-driven run needs.
pub struct ApiRun {
    /// The instance id (`GET /`).
    pub id: String,
    /// The API socket.
    pub socket: PathBuf,
    /// The kernel from the command line or config file: boot at once.
    pub kernel: Option<PathBuf>,
    /// Everything else the command line and config file gave.
    pub base: VmConfig,
    /// The log and metrics.
    pub outputs: Arc<Mutex<Outputs>>,
    /// A snapshot to restore at once (instead of booting).
    pub restore: Option<RestoreSpec>,
}

/// Logs how long the API socket took to listen, in wall and CPU time (the benchmark
/// reads this line).
fn report_socket_ready() {
    let Some(start) = crate::process_stats::PROCESS_START.get() else {
        return;
    };
    let wall = start.elapsed().as_secs_f64() * 1e3;
    match crate::process_stats::process_cpu_time() {
        Ok(cpu) => log::info!(
            "API socket ready {wall:.2} ms after process start ({:.2} ms CPU)",
            cpu.as_secs_f64() * 1e3
        ),
        Err(e) => log::info!("API socket ready {wall:.2} ms after process start ({e})"),
    }
}

/// Serves the API and runs the VM until it ends; returns why, and whether the guest
/// reports a command's status.
pub fn run_api(run: ApiRun) -> Result<(ExitReason, bool), ServiceError> {
    let control = Arc::new(VmControl::new());
    let boot_now = run.kernel.is_some() || run.restore.is_some();
    let initial = match &run.restore {
        Some(r) if !r.resume => InstanceState::Paused,
        _ if boot_now => InstanceState::Running,
        _ => InstanceState::NotStarted,
    };
    let state = Arc::new(Mutex::new(initial));
    let pending = PendingVm::new(run.kernel, run.base);
    let first = match run.restore {
        Some(spec) => Some(StartRequest::Restore(spec)),
        None => (pending.to_vm_config().ok()).map(|c| StartRequest::Boot(Box::new(c))),
    };
    let (api_tx, api_rx) = mpsc::channel();
    let (start_tx, start_rx) = mpsc::channel();
    let controller = Controller::new(
        run.id,
        Arc::clone(&state),
        pending,
        Arc::clone(&control),
        Arc::clone(&run.outputs),
        start_tx,
    );
    let server = ApiServer::start(&run.socket, api_tx)?;
    report_socket_ready();
    std::thread::Builder::new()
        .name("hvlite-ctl".into())
        .spawn(move || {
            crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::ApiControl);
            controller.serve(api_rx)
        })
        .map_err(ServiceError::Thread)?;
    if !boot_now {
        log::info!(
            "waiting for the VM's configuration and InstanceStart (or a snapshot load) on the API"
        );
    }
    let registry = lock(&run.outputs).registry();
    let hooks = || RunHooks {
        metrics: Some(Arc::clone(&registry)),
        control: Some(Arc::clone(&control)),
    };
    let mut job = match first {
        Some(job) if boot_now => job,
        _ => start_rx.recv().map_err(|_| ServiceError::ControllerGone)?,
    };
    loop {
        let env = || RunEnv::new(Console::default());
        let result = match &job {
            StartRequest::Boot(cfg) => {
                vmm::run_with(cfg, env(), hooks()).map(|r| (r, cfg.command.is_some()))
            }
            StartRequest::Restore(spec) => vmm::restore_with(spec, env(), hooks()),
        };
        match result {
            Ok(done) => {
                *state.lock().unwrap_or_else(|p| p.into_inner()) = InstanceState::Stopped;
                drop(server);
                // Stopping the flusher writes the last metrics line.
                lock(&run.outputs).finish();
                return Ok(done);
            }
            Err(e) if !boot_now => {
                let msg = error_chain(&e);
                log::error!("starting the VM failed: {msg}");
                control.fail(msg);
                job = start_rx.recv().map_err(|_| ServiceError::ControllerGone)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
