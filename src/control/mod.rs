//! The VMM side of the API: a thread that takes the [`ApiRequest`]s the server hands
//! over and answers them, keeping the instance's state:
//!
//! ```text
//! Not started --InstanceStart--> Running <--PATCH /vm--> Paused
//!                                   \                      /
//!                                    +---> Stopped <------+   (the guest ended)
//! ```
//!
//! Before InstanceStart the PUT requests fill a [`PendingVm`]; InstanceStart sends the
//! resulting [`VmConfig`] to the thread that runs VMs (the main thread) and answers once
//! the vCPUs run or the boot failed (then the state stays Not started and the
//! configuration can be fixed). After the start, resources are fixed (409).

pub mod outputs;
pub mod pending;
pub mod service;

use std::sync::{Arc, Mutex, mpsc};

use crate::api::model::{
    BalloonStatsUpdate, BalloonUpdate, DrivePatch, NetworkInterfacePatch, SnapshotCreateParams,
    SnapshotLoadParams,
};
use crate::api::{
    ActionType, ApiRequest, ApiResponse, InstanceInfo, InstanceState, VersionInfo, VmInfo,
    VmStateRequest,
};
use crate::config::VmConfig;
use crate::devices::virtio::balloon::BalloonShared;
use crate::vmm::control::{ControlError, VmControl};
use crate::vmm::persist::RestoreSpec;
pub use outputs::{Outputs, OutputsError};
pub use pending::{PendingError, PendingVm};

/// What the thread that runs VMs is asked to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartRequest {
    /// Boot this VM.
    Boot(Box<VmConfig>),
    /// Restore this snapshot.
    Restore(RestoreSpec),
}

/// Status for a request the current state does not allow.
pub const CONFLICT: u16 = 409;

/// The instance's state, shared with the thread that runs the VM (which sets Stopped).
pub type SharedState = Arc<Mutex<InstanceState>>;

/// Answers API requests for one instance.
pub struct Controller {
    id: String,
    state: SharedState,
    pending: PendingVm,
    control: Arc<VmControl>,
    outputs: Arc<Mutex<Outputs>>,
    /// Where InstanceStart sends the VM to boot (and a snapshot load what to restore).
    start: mpsc::Sender<StartRequest>,
    /// A resource was configured through the API (a snapshot load needs a fresh instance).
    configured: bool,
}

impl Controller {
    /// A controller for instance `id` in `state` (Not started, or Running when the VM
    /// was booted from the command line).
    pub fn new(
        id: String,
        state: SharedState,
        pending: PendingVm,
        control: Arc<VmControl>,
        outputs: Arc<Mutex<Outputs>>,
        start: mpsc::Sender<StartRequest>,
    ) -> Self {
        Self {
            id,
            state,
            pending,
            control,
            outputs,
            start,
            configured: false,
        }
    }

    /// Serves requests until the server goes away.
    pub fn serve(mut self, requests: mpsc::Receiver<(ApiRequest, mpsc::Sender<ApiResponse>)>) {
        for (req, reply) in requests {
            let resp = self.handle(req);
            // The client may have gone; nothing to do about it.
            let _ = reply.send(resp);
        }
    }

    fn state(&self) -> InstanceState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_state(&self, s: InstanceState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn outputs(&self) -> std::sync::MutexGuard<'_, Outputs> {
        self.outputs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /vm/config`: the whole configuration, as a config file.
    fn vm_config(&self) -> ApiResponse {
        let mut file = match self.pending.to_file_config() {
            Ok(f) => f,
            Err(e) => return ApiResponse::fault(500, format!("cannot describe the VM: {e}")),
        };
        let outputs = self.outputs();
        file.logger = Some(outputs.logger().clone());
        file.metrics = outputs.metrics_config().cloned();
        ApiResponse::ok_json(&file)
    }

    /// Answers one request.
    pub fn handle(&mut self, req: ApiRequest) -> ApiResponse {
        let state = self.state();
        match req {
            ApiRequest::GetInstanceInfo => {
                ApiResponse::ok_json(&InstanceInfo::new(&self.id, state))
            }
            ApiRequest::GetVm => ApiResponse::ok_json(&VmInfo { state }),
            ApiRequest::GetVersion => ApiResponse::ok_json(&VersionInfo::default()),
            ApiRequest::GetVmConfig => self.vm_config(),
            ApiRequest::PutLogger(l) => match self.outputs().put_logger(&l) {
                Ok(()) => ApiResponse::no_content(),
                Err(e) => ApiResponse::fault(400, error_chain(&e)),
            },
            ApiRequest::PutMetrics(m) => match self.outputs().put_metrics(&m) {
                Ok(()) => ApiResponse::no_content(),
                Err(e) => ApiResponse::fault(400, error_chain(&e)),
            },
            ApiRequest::GetMachineConfig => ApiResponse::ok_json(&self.pending.machine_config()),
            ApiRequest::Action(action) => self.action(action, state),
            ApiRequest::PatchDrive(p) => self.patch_drive(&p, state),
            ApiRequest::PatchNetworkInterface(p) => self.patch_net(&p, state),
            ApiRequest::PatchBalloon(p) => self.patch_balloon(&p, state),
            ApiRequest::PatchBalloonStats(p) => self.patch_balloon_stats(&p, state),
            ApiRequest::GetBalloon => self.get_balloon(state),
            ApiRequest::GetBalloonStats => self.balloon_stats(state),
            ApiRequest::PatchVm(want) => self.patch_vm(want, state),
            ApiRequest::CreateSnapshot(p) => self.create_snapshot(&p, state),
            ApiRequest::LoadSnapshot(p) => self.load_snapshot(&p, state),
            other => self.configure(other, state),
        }
    }

    /// A PUT of a resource: allowed before the start only.
    fn configure(&mut self, req: ApiRequest, state: InstanceState) -> ApiResponse {
        if state != InstanceState::NotStarted {
            return ApiResponse::fault(
                CONFLICT,
                format!(
                    "the VM is {}: resources cannot be changed after InstanceStart",
                    state_name(state)
                ),
            );
        }
        let p = &mut self.pending;
        match req {
            ApiRequest::PutMachineConfig(m) => p.set_machine_config(&m),
            ApiRequest::PutBootSource(b) => p.set_boot_source(&b),
            ApiRequest::PutDrive(d) => {
                if let Err(e) = p.put_drive(&d) {
                    return ApiResponse::fault(400, e.to_string());
                }
            }
            ApiRequest::PutNetworkInterface(n) => p.put_net(&n),
            ApiRequest::PutVsock(v) => p.set_vsock(&v),
            ApiRequest::PutEntropy(e) => p.set_entropy(&e),
            ApiRequest::PutBalloon(b) => p.set_balloon(&b),
            ApiRequest::PutFs(f) => p.put_fs(&f),
            other => {
                return ApiResponse::fault(500, format!("unhandled request {other:?}"));
            }
        }
        self.configured = true;
        ApiResponse::no_content()
    }

    /// `PATCH /drives/{id}`: a new backing file and/or new rate limits for a running
    /// drive.
    fn patch_drive(&mut self, p: &DrivePatch, state: InstanceState) -> ApiResponse {
        if !matches!(state, InstanceState::Running | InstanceState::Paused) {
            return ApiResponse::fault(
                400,
                format!(
                    "PATCH /drives changes a started VM's drive; the VM is {} (PUT the drive instead)",
                    state_name(state)
                ),
            );
        }
        let id = p.drive_id.as_str();
        let Some(drive) = self.control.drive(id) else {
            return ApiResponse::fault(400, format!("the VM has no drive {id:?}"));
        };
        if let Some(r) = &p.rate_limiter {
            let (bandwidth, ops) = r.buckets();
            let bandwidth = r.bandwidth.map(|_| bandwidth);
            let ops = r.ops.map(|_| ops);
            if let Err(e) = drive.update_limiter(bandwidth, ops) {
                return ApiResponse::fault(400, e.to_string());
            }
        }
        if let Some(path) = &p.path_on_host {
            match drive.replace_disk(path.as_ref()) {
                Ok(sectors) => log::info!(
                    "API: drive {id} now backed by {} ({sectors} sectors)",
                    path.as_ref().display()
                ),
                Err(e) => return ApiResponse::fault(400, error_chain(&e)),
            }
        }
        self.pending.patch_drive(p);
        ApiResponse::no_content()
    }

    /// `PATCH /network-interfaces/{id}`: new TX and RX rate limits for a running interface.
    fn patch_net(&mut self, p: &NetworkInterfacePatch, state: InstanceState) -> ApiResponse {
        if !matches!(state, InstanceState::Running | InstanceState::Paused) {
            return ApiResponse::fault(
                400,
                format!(
                    "PATCH /network-interfaces changes a started VM's interface; the VM is {} (PUT the interface instead)",
                    state_name(state)
                ),
            );
        }
        let id = p.iface_id.as_str();
        let (Some(tx), Some(rx)) = (
            self.control.net_limiter(id),
            self.control.net_rx_limiter(id),
        ) else {
            return ApiResponse::fault(400, format!("the VM has no network interface {id:?}"));
        };
        for (patch, limiter) in [(&p.tx_rate_limiter, tx), (&p.rx_rate_limiter, rx)] {
            if let Some(r) = patch {
                let (bandwidth, ops) = r.buckets();
                limiter
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .update(r.bandwidth.map(|_| bandwidth), r.ops.map(|_| ops));
            }
        }
        self.pending.patch_net(p);
        ApiResponse::no_content()
    }

    /// The running VM's balloon, or the answer for a VM without one (or not started).
    fn running_balloon(
        &self,
        what: &str,
        state: InstanceState,
    ) -> Result<Arc<BalloonShared>, ApiResponse> {
        if !matches!(state, InstanceState::Running | InstanceState::Paused) {
            return Err(ApiResponse::fault(
                400,
                format!(
                    "{what} needs a started VM; the VM is {} (PUT /balloon configures it before the start)",
                    state_name(state)
                ),
            ));
        }
        self.control
            .balloon()
            .ok_or_else(|| ApiResponse::fault(400, "the VM has no balloon device"))
    }

    /// `PATCH /balloon`: a new target for the running balloon.
    fn patch_balloon(&mut self, p: &BalloonUpdate, state: InstanceState) -> ApiResponse {
        let balloon = match self.running_balloon("PATCH /balloon", state) {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        match balloon.set_target_mib(p.amount_mib) {
            Ok(()) => {
                self.pending.update_balloon(|b| b.amount_mib = p.amount_mib);
                ApiResponse::no_content()
            }
            Err(e) => ApiResponse::fault(400, e.to_string()),
        }
    }

    /// `PATCH /balloon/statistics`: a new statistics interval.
    fn patch_balloon_stats(&mut self, p: &BalloonStatsUpdate, state: InstanceState) -> ApiResponse {
        let balloon = match self.running_balloon("PATCH /balloon/statistics", state) {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let secs = p.stats_polling_interval_s;
        match balloon.set_stats_interval(secs) {
            Ok(()) => {
                self.pending
                    .update_balloon(|b| b.stats_polling_interval_s = secs);
                ApiResponse::no_content()
            }
            Err(e) => ApiResponse::fault(400, e.to_string()),
        }
    }

    /// `GET /balloon`: the balloon as configured, with the current target.
    fn get_balloon(&self, _state: InstanceState) -> ApiResponse {
        match self.pending.balloon() {
            Some(b) => ApiResponse::ok_json(&b),
            None => ApiResponse::fault(400, "no balloon device is configured"),
        }
    }

    /// `GET /balloon/statistics`: the target, the actual size and the guest's figures.
    fn balloon_stats(&self, state: InstanceState) -> ApiResponse {
        let balloon = match self.running_balloon("GET /balloon/statistics", state) {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        match balloon.statistics() {
            Ok(s) => ApiResponse::ok_json(&s),
            Err(e) => ApiResponse::fault(400, e.to_string()),
        }
    }

    /// `PUT /snapshot/create`: a paused VM only.
    fn create_snapshot(&mut self, p: &SnapshotCreateParams, state: InstanceState) -> ApiResponse {
        if state != InstanceState::Paused {
            return ApiResponse::fault(
                CONFLICT,
                format!(
                    "the VM is {}: only a paused VM can be snapshotted",
                    state_name(state)
                ),
            );
        }
        match self
            .control
            .create_snapshot(p.snapshot_path.as_path(), p.mem_file_path.as_path())
        {
            Ok(_) => ApiResponse::no_content(),
            Err(e @ (ControlError::NotPaused | ControlError::NotRunning)) => {
                ApiResponse::fault(CONFLICT, e.to_string())
            }
            Err(e) => ApiResponse::fault(400, e.to_string()),
        }
    }

    /// `PUT /snapshot/load`: a fresh instance only (nothing configured, not started).
    fn load_snapshot(&mut self, p: &SnapshotLoadParams, state: InstanceState) -> ApiResponse {
        if state != InstanceState::NotStarted || self.configured {
            let why = if state == InstanceState::NotStarted {
                "resources were configured already".to_string()
            } else {
                format!("the VM is {}", state_name(state))
            };
            return ApiResponse::fault(
                CONFLICT,
                format!("a snapshot can only be loaded into a fresh hvlite: {why}"),
            );
        }
        self.control.reset();
        if self.start.send(StartRequest::Restore(p.to_spec())).is_err() {
            return ApiResponse::fault(503, "the VMM no longer starts VMs");
        }
        match self.control.wait_started() {
            Ok(()) => {
                self.set_state(if p.resume_vm {
                    InstanceState::Running
                } else {
                    InstanceState::Paused
                });
                log::info!(
                    "API: snapshot {} loaded",
                    p.snapshot_path.as_path().display()
                );
                ApiResponse::no_content()
            }
            Err(msg) => ApiResponse::fault(400, format!("the snapshot was not loaded: {msg}")),
        }
    }

    fn action(&mut self, action: ActionType, state: InstanceState) -> ApiResponse {
        match action {
            ActionType::FlushMetrics => match self.outputs().flush_metrics() {
                Ok(()) => ApiResponse::no_content(),
                Err(e @ OutputsError::NoMetrics) => ApiResponse::fault(400, e.to_string()),
                Err(e) => ApiResponse::fault(500, error_chain(&e)),
            },
            ActionType::InstanceStart if state != InstanceState::NotStarted => {
                ApiResponse::fault(CONFLICT, format!("the VM is {} already", state_name(state)))
            }
            ActionType::InstanceStart => self.instance_start(),
            ActionType::SendCtrlAltDel => match state {
                InstanceState::Running | InstanceState::Paused => {
                    match self.control.ctrl_alt_del() {
                        Ok(()) => ApiResponse::no_content(),
                        Err(e) => ApiResponse::fault(CONFLICT, e.to_string()),
                    }
                }
                other => ApiResponse::fault(
                    CONFLICT,
                    format!(
                        "SendCtrlAltDel needs a running VM; the VM is {}",
                        state_name(other)
                    ),
                ),
            },
        }
    }

    fn instance_start(&mut self) -> ApiResponse {
        let cfg = match self.pending.to_vm_config() {
            Ok(c) => c,
            Err(e) => return ApiResponse::fault(400, e.to_string()),
        };
        self.control.reset();
        if self.start.send(StartRequest::Boot(Box::new(cfg))).is_err() {
            return ApiResponse::fault(503, "the VMM no longer starts VMs");
        }
        match self.control.wait_started() {
            Ok(()) => {
                self.set_state(InstanceState::Running);
                log::info!("API: the VM started");
                ApiResponse::no_content()
            }
            Err(msg) => ApiResponse::fault(400, format!("the VM did not start: {msg}")),
        }
    }

    fn patch_vm(&mut self, want: VmStateRequest, state: InstanceState) -> ApiResponse {
        let result = match (state, want) {
            (InstanceState::Running, VmStateRequest::Paused) => self
                .control
                .pause()
                .map(|()| self.set_state(InstanceState::Paused)),
            (InstanceState::Paused, VmStateRequest::Resumed) => self
                .control
                .resume()
                .map(|()| self.set_state(InstanceState::Running)),
            (InstanceState::Running, VmStateRequest::Resumed)
            | (InstanceState::Paused, VmStateRequest::Paused) => Ok(()),
            (other, _) => {
                return ApiResponse::fault(
                    CONFLICT,
                    format!(
                        "the VM is {}: only a started VM can be paused or resumed",
                        state_name(other)
                    ),
                );
            }
        };
        match result {
            Ok(()) => {
                log::info!("API: VM {want:?}");
                ApiResponse::no_content()
            }
            Err(e) => ApiResponse::fault(CONFLICT, e.to_string()),
        }
    }
}

/// The state as the API spells it ("Not started", "Running", ...).
pub fn state_name(s: InstanceState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}"))
}

/// An error and its causes, on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MachineConfig;

    fn controller() -> (Controller, mpsc::Receiver<StartRequest>, Arc<VmControl>) {
        let (tx, rx) = mpsc::channel();
        let control = Arc::new(VmControl::new());
        let state = Arc::new(Mutex::new(InstanceState::NotStarted));
        let pending = PendingVm::new(None, VmConfig::new(Default::default()));
        let metrics = Arc::new(crate::metrics::Metrics::new("vm1"));
        let outputs = Outputs::new(None, Default::default(), metrics, None);
        let outputs = Arc::new(Mutex::new(outputs));
        let c = Controller::new("vm1".into(), state, pending, control.clone(), outputs, tx);
        (c, rx, control)
    }

    #[test]
    fn requests_in_the_wrong_state_conflict() {
        let (mut c, _rx, _) = controller();
        let status = |c: &mut Controller, r| c.handle(r).status;
        assert_eq!(
            status(&mut c, ApiRequest::PatchVm(VmStateRequest::Paused)),
            409
        );
        assert_eq!(
            status(&mut c, ApiRequest::Action(ActionType::SendCtrlAltDel)),
            409
        );
        assert_eq!(
            status(&mut c, ApiRequest::Action(ActionType::FlushMetrics)),
            400
        );
        // No boot source yet.
        assert_eq!(
            status(&mut c, ApiRequest::Action(ActionType::InstanceStart)),
            400
        );
        let m = MachineConfig::new(2, 64).unwrap();
        assert_eq!(status(&mut c, ApiRequest::PutMachineConfig(m.clone())), 204);
        let got = c.handle(ApiRequest::GetMachineConfig).body.unwrap();
        assert_eq!(
            (got["vcpu_count"].clone(), got["mem_size_mib"].clone()),
            (2.into(), 64.into())
        );
        assert_eq!(got["smt"], false);
        assert_eq!(got["track_dirty_pages"], false);
        assert_eq!(got["huge_pages"], "None");
        let version = c.handle(ApiRequest::GetVersion).body.unwrap();
        assert_eq!(version["firecracker_version"], env!("CARGO_PKG_VERSION"));
        c.set_state(InstanceState::Running);
        assert_eq!(status(&mut c, ApiRequest::PutMachineConfig(m)), 409);
        assert_eq!(
            status(&mut c, ApiRequest::Action(ActionType::InstanceStart)),
            409
        );
        let info = c.handle(ApiRequest::GetInstanceInfo).body.unwrap();
        assert_eq!(info["state"], "Running");
        assert_eq!(info["id"], "vm1");
    }

    #[test]
    fn the_vm_config_loads_back_as_a_config_file() {
        let (mut c, _rx, _) = controller();
        let put = |c: &mut Controller, r| assert_eq!(c.handle(r).status, 204);
        fn body<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
            serde_json::from_value(v).unwrap()
        }
        put(
            &mut c,
            ApiRequest::PutBootSource(body(serde_json::json!({
                "kernel_image_path": "/k", "initrd_path": "/i", "boot_args": "quiet"
            }))),
        );
        put(
            &mut c,
            ApiRequest::PutMachineConfig(body(serde_json::json!({
                "vcpu_count": 2, "mem_size_mib": 96, "track_dirty_pages": true
            }))),
        );
        put(
            &mut c,
            ApiRequest::PutDrive(body(serde_json::json!({
                "drive_id": "data", "path_on_host": "/d.img", "is_read_only": true
            }))),
        );
        put(
            &mut c,
            ApiRequest::PutDrive(body(serde_json::json!({
                "drive_id": "rootfs", "path_on_host": "/r.img", "is_root_device": true
            }))),
        );
        put(
            &mut c,
            ApiRequest::PutNetworkInterface(body(serde_json::json!({
                "iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01"
            }))),
        );
        put(
            &mut c,
            ApiRequest::PutVsock(body(serde_json::json!({"guest_cid": 3, "uds_path": "/v"}))),
        );
        put(
            &mut c,
            ApiRequest::PutLogger(body(serde_json::json!({
                "level": "Warning", "show_level": false, "show_log_origin": true
            }))),
        );
        let got = c.handle(ApiRequest::GetVmConfig);
        assert_eq!(got.status, 200);
        let text = got.body.unwrap().to_string();
        let file = crate::vmm::config_file::FileConfig::parse(&text, "vm/config").unwrap();
        let loaded = file.to_vm_config(Default::default()).unwrap();
        assert_eq!(loaded, c.pending.to_vm_config().unwrap());
        assert!(loaded.track_dirty_pages);
        assert_eq!(loaded.disk_ids, ["rootfs", "data"]);
        let logger = file.logger.unwrap();
        assert_eq!(logger.show_log_origin, Some(true));
        assert_eq!(logger.level.unwrap().to_string(), "warn");
    }

    #[test]
    fn patches_need_a_started_vm_and_a_known_device() {
        use crate::devices::virtio::rate_limiter::RateLimiter;
        let (mut c, _rx, control) = controller();
        fn body<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
            serde_json::from_value(v).unwrap()
        }
        let drive = || ApiRequest::PatchDrive(body(serde_json::json!({"drive_id": "d"})));
        let limits = serde_json::json!({"bandwidth": {"size": 1000, "refill_time": 10}});
        let net = || {
            ApiRequest::PatchNetworkInterface(body(serde_json::json!(
                {"iface_id": "eth0", "tx_rate_limiter": limits, "rx_rate_limiter": limits}
            )))
        };
        assert_eq!(c.handle(drive()).status, 400);
        assert_eq!(c.handle(net()).status, 400);
        c.pending.put_net(&body(
            serde_json::json!({"iface_id": "eth0", "host_dev_name": "t"}),
        ));
        c.set_state(InstanceState::Running);
        let resp = c.handle(drive());
        assert_eq!(resp.status, 400);
        assert!(
            resp.body.unwrap()["fault_message"]
                .as_str()
                .unwrap()
                .contains("no drive")
        );
        assert_eq!(c.handle(net()).status, 400, "no such interface yet");
        let limiter = Arc::new(Mutex::new(RateLimiter::new(None, None).unwrap()));
        control.add_net_limiter("eth0", Arc::clone(&limiter));
        let rx = Arc::new(Mutex::new(RateLimiter::new(None, None).unwrap()));
        control.add_net_rx_limiter("eth0", Arc::clone(&rx));
        assert_eq!(c.handle(net()).status, 204);
        for l in [&limiter, &rx] {
            assert_eq!(l.lock().unwrap().buckets().0.map(|b| b.size()), Some(1000));
        }
        let cfg = c.handle(ApiRequest::GetVmConfig).body.unwrap();
        assert_eq!(cfg["network-interfaces"][0]["tx_rate_limiter"], limits);
        assert_eq!(cfg["network-interfaces"][0]["rx_rate_limiter"], limits);
    }

    #[test]
    fn a_failed_start_leaves_the_vm_configurable() {
        let (mut c, rx, control) = controller();
        let b = serde_json::from_str(r#"{"kernel_image_path": "/k"}"#).unwrap();
        assert_eq!(c.handle(ApiRequest::PutBootSource(b)).status, 204);
        let runner = std::thread::spawn(move || {
            let Ok(StartRequest::Boot(cfg)) = rx.recv() else {
                panic!("no boot request");
            };
            control.fail(format!("cannot open {}", cfg.kernel.display()));
        });
        let resp = c.handle(ApiRequest::Action(ActionType::InstanceStart));
        runner.join().unwrap();
        assert_eq!(resp.status, 400);
        assert!(
            resp.body.unwrap()["fault_message"]
                .as_str()
                .unwrap()
                .contains("cannot open /k")
        );
        assert_eq!(c.state(), InstanceState::NotStarted);
    }

    #[test]
    fn snapshot_requests_in_the_wrong_state_conflict() {
        use crate::api::model::{MemBackend, MemBackendType, SnapshotType};
        use crate::config::values::HostPath;
        let path = |p: &str| HostPath::try_from(std::path::PathBuf::from(p)).unwrap();
        let create = SnapshotCreateParams {
            snapshot_path: path("/s"),
            mem_file_path: path("/m"),
            snapshot_type: SnapshotType::Full,
        };
        let load = SnapshotLoadParams {
            snapshot_path: path("/s"),
            mem_backend: MemBackend {
                backend_type: MemBackendType::File,
                backend_path: path("/m"),
            },
            resume_vm: false,
            network_overrides: vec![],
            vsock_override: None,
            drive_overrides: vec![],
        };
        let (mut c, _rx, _) = controller();
        let r = c.handle(ApiRequest::CreateSnapshot(create.clone()));
        assert_eq!(r.status, 409, "{r:?}");
        c.set_state(InstanceState::Running);
        let r = c.handle(ApiRequest::CreateSnapshot(create.clone()));
        assert_eq!(r.status, 409, "{r:?}");
        assert_eq!(c.handle(ApiRequest::LoadSnapshot(load.clone())).status, 409);
        // Paused, but no VM behind the handle: still a conflict, never a panic.
        c.set_state(InstanceState::Paused);
        assert_eq!(c.handle(ApiRequest::CreateSnapshot(create)).status, 409);

        let (mut c, _rx, _) = controller();
        let m = MachineConfig::new(1, 64).unwrap();
        assert_eq!(c.handle(ApiRequest::PutMachineConfig(m)).status, 204);
        let r = c.handle(ApiRequest::LoadSnapshot(load));
        assert_eq!(r.status, 409);
        assert!(
            r.body.unwrap()["fault_message"]
                .as_str()
                .unwrap()
                .contains("fresh hvlite")
        );
    }
}
