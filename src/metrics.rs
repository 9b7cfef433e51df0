//! VM metrics: a registry of the VM's counters ([`Metrics`]), written as one JSON object
//! per line to a file ([`MetricsWriter`]), on demand or periodically
//! ([`PeriodicFlusher`]). Every counter is cumulative since the VMM started; fields are
//! documented in docs/logging-and-metrics.md.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::devices::virtio::block::BlockCounters;
use crate::devices::virtio::net::NetCounters;
use crate::devices::virtio::vsock::VsockCounters;
use crate::logging::{open_append, timestamp_now};
use crate::process_stats::{self, PROCESS_START};
use crate::vcpu::counters::VcpuExitCounters;

/// `event.dataset` of metrics lines.
pub const METRICS_DATASET: &str = "hvlite.metrics";
/// Default period of the [`PeriodicFlusher`] (Firecracker's too).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest period the [`PeriodicFlusher`] accepts; shorter ones are raised to it.
pub const MIN_FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// Errors writing metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot open metrics file {0}")]
    Open(PathBuf, #[source] io::Error),
    #[error("cannot write metrics file {0}")]
    Write(PathBuf, #[source] io::Error),
    #[error("cannot start the metrics flusher thread")]
    Spawn(#[source] io::Error),
}

/// Reads one device's counters as a JSON object.
type DeviceReader = Box<dyn Fn() -> Value + Send + Sync>;

/// One registered device: `hvlite.<group>.<id>` in the output.
struct Device {
    group: String,
    id: String,
    read: DeviceReader,
}

/// `boot_time_ms` before [`Metrics::set_boot_time_ms`].
const UNSET: u64 = u64::MAX;

/// The counters of one VM, shared by whoever updates them and the writers.
pub struct Metrics {
    vm_id: String,
    created: Instant,
    boot_time_ms: AtomicU64,
    vcpu_exits: Arc<VcpuExitCounters>,
    devices: Mutex<Vec<Device>>,
    /// Host addresses of the guest memory mappings, once known.
    guest_memory: Mutex<Option<Vec<u64>>>,
}

impl Metrics {
    /// An empty registry for VM `vm_id`.
    pub fn new(vm_id: &str) -> Self {
        Self {
            vm_id: vm_id.to_string(),
            created: Instant::now(),
            boot_time_ms: AtomicU64::new(UNSET),
            vcpu_exits: Arc::default(),
            devices: Mutex::new(Vec::new()),
            guest_memory: Mutex::new(None),
        }
    }

    /// The VM's id.
    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }

    /// The exit counters to hand every vCPU ([`crate::vcpu::Vcpu::set_exit_counters`]).
    pub fn vcpu_exits(&self) -> Arc<VcpuExitCounters> {
        Arc::clone(&self.vcpu_exits)
    }

    /// Records how long the VM took to boot (process start to the guest's ready marker).
    pub fn set_boot_time_ms(&self, ms: u64) {
        self.boot_time_ms
            .store(ms.min(UNSET - 1), Ordering::Relaxed);
    }

    /// The boot time, once set.
    pub fn boot_time_ms(&self) -> Option<u64> {
        Some(self.boot_time_ms.load(Ordering::Relaxed)).filter(|&ms| ms != UNSET)
    }

    /// Adds a device whose counters `read` returns as a JSON object, shown as
    /// `hvlite.<group>.<id>`; a second registration of the same group and id replaces
    /// the first.
    pub fn register(
        &self,
        group: &str,
        id: &str,
        read: impl Fn() -> Value + Send + Sync + 'static,
    ) {
        let mut devices = lock(&self.devices);
        devices.retain(|d| d.group != group || d.id != id);
        devices.push(Device {
            group: group.to_string(),
            id: id.to_string(),
            read: Box::new(read),
        });
    }

    /// Adds a virtio-blk device's counters as `hvlite.block.<id>`.
    pub fn register_block(&self, id: &str, counters: Arc<BlockCounters>) {
        self.register("block", id, move || to_json(&counters.snapshot()));
    }

    /// Adds a virtio-net device's counters as `hvlite.net.<id>`.
    pub fn register_net(&self, id: &str, counters: Arc<NetCounters>) {
        self.register("net", id, move || to_json(&counters.snapshot()));
    }

    /// Adds a virtio-vsock device's counters as `hvlite.vsock.<id>`.
    pub fn register_vsock(&self, id: &str, counters: Arc<VsockCounters>) {
        self.register("vsock", id, move || {
            let s = counters.snapshot();
            json!({
                "packets_to_guest": s.packets_to_guest,
                "bytes_to_guest": s.bytes_to_guest,
                "packets_from_guest": s.packets_from_guest,
                "bytes_from_guest": s.bytes_from_guest,
                "connections_opened": s.connections_opened,
                "resets_sent": s.resets_sent,
                "resets_received": s.resets_received,
                "malformed": s.malformed,
                "dropped": s.dropped,
                "host_rejected": s.host_rejected,
                "rx_dropped": s.rx_dropped,
                "queue_errors": s.queue_errors,
                "interrupts": s.interrupts,
            })
        });
    }

    /// Tells where guest memory is mapped (host addresses of the mappings' starts), so
    /// that the VMM's own memory can be told from the guest's.
    pub fn set_guest_memory(&self, host_starts: Vec<u64>) {
        *lock(&self.guest_memory) = Some(host_starts);
    }

    /// The current values, as one JSON object (see docs/logging-and-metrics.md).
    pub fn snapshot(&self) -> Value {
        let since = PROCESS_START.get().copied().unwrap_or(self.created);
        let mut hv = Map::new();
        hv.insert(
            "uptime_ms".into(),
            json!(since.elapsed().as_millis() as u64),
        );
        hv.insert("boot_time_ms".into(), json!(self.boot_time_ms()));
        let exits: Map<String, Value> = self
            .vcpu_exits
            .snapshot()
            .into_iter()
            .map(|(name, n)| (name.to_string(), json!(n)))
            .collect();
        hv.insert("vcpu_exits".into(), Value::Object(exits));
        hv.insert("memory".into(), self.memory());
        for d in lock(&self.devices).iter() {
            let group = hv
                .entry(d.group.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(group) = group {
                group.insert(d.id.clone(), (d.read)());
            }
        }
        json!({
            "@timestamp": timestamp_now(),
            "event.dataset": METRICS_DATASET,
            "vm.id": self.vm_id,
            "hvlite": hv,
        })
    }

    /// RSS, and its split into guest and VMM memory once the guest memory is known;
    /// null if /proc cannot be read.
    fn memory(&self) -> Value {
        let starts = lock(&self.guest_memory).clone();
        match process_stats::memory_usage(starts.as_deref().unwrap_or(&[])) {
            Ok(u) if starts.is_some() => json!({
                "rss_kib": u.rss_kib,
                "guest_kib": u.guest_kib,
                "vmm_kib": u.vmm_kib(),
            }),
            Ok(u) => json!({ "rss_kib": u.rss_kib, "guest_kib": null, "vmm_kib": null }),
            Err(e) => {
                log::debug!("metrics: cannot read memory usage: {e}");
                Value::Null
            }
        }
    }
}

fn to_json(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Locks `m`, going on after a panic elsewhere (the data is only counters).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Appends [`Metrics::snapshot`] lines to a file.
pub struct MetricsWriter {
    metrics: Arc<Metrics>,
    path: PathBuf,
    out: Mutex<File>,
}

impl MetricsWriter {
    /// Opens `path` for appending (created with mode [`crate::logging::FILE_MODE`]).
    pub fn open(path: &Path, metrics: Arc<Metrics>) -> Result<Self, MetricsError> {
        let out = open_append(path).map_err(|e| MetricsError::Open(path.to_path_buf(), e))?;
        Ok(Self {
            metrics,
            path: path.to_path_buf(),
            out: Mutex::new(out),
        })
    }

    /// The registry this writer reads.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Writes one snapshot line now (the API's FlushMetrics action).
    pub fn flush_now(&self) -> Result<(), MetricsError> {
        let mut line = self.metrics.snapshot().to_string();
        line.push('\n');
        // One write per line: with O_APPEND a reader never sees half a line from us.
        lock(&self.out)
            .write_all(line.as_bytes())
            .map_err(|e| MetricsError::Write(self.path.clone(), e))
    }
}

/// A thread calling [`MetricsWriter::flush_now`] every interval; stopping it (or
/// dropping it) writes a last line and joins the thread.
pub struct PeriodicFlusher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl PeriodicFlusher {
    /// Starts flushing `writer` every `interval` (at least [`MIN_FLUSH_INTERVAL`]).
    pub fn start(writer: Arc<MetricsWriter>, interval: Duration) -> Result<Self, MetricsError> {
        let interval = interval.max(MIN_FLUSH_INTERVAL);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Host);
                flush_loop(&writer, interval, &stopped)
            })
            .map_err(MetricsError::Spawn)?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread after a final flush.
    pub fn stop(self) {}
}

impl Drop for PeriodicFlusher {
    fn drop(&mut self) {
        // Closing the channel wakes the thread at once.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // A panic in the thread was already reported on stderr.
            let _ = t.join();
        }
    }
}

fn flush_loop(writer: &MetricsWriter, interval: Duration, stopped: &mpsc::Receiver<()>) {
    let mut failing = false;
    loop {
        let last = !matches!(
            stopped.recv_timeout(interval),
            Err(RecvTimeoutError::Timeout)
        );
        match writer.flush_now() {
            Ok(()) => failing = false,
            // Warn once per run of failures, not every interval.
            Err(e) if !failing => {
                failing = true;
                let cause = std::error::Error::source(&e).map(ToString::to_string);
                log::warn!("{e}: {}", cause.unwrap_or_default());
            }
            Err(_) => {}
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
