//! Snapshots of a whole VM: creating one from a paused VM ([`create_snapshot`]) and
//! preparing a restore ([`prepare_restore`]); the restore itself runs in [`super::run_inner`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_cpuid_entry2,
    kvm_irqchip,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use super::config::{DiskConfig, NetConfig, VmConfig, VsockConfig};
use crate::devices::i8042::I8042;
use crate::devices::serial::SerialConsole;
use crate::devices::virtio::EventLoopHandle;
use crate::devices::virtio::block::BlockCounters;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::NetCounters;
use crate::devices::virtio::vsock::VsockCounters;
use crate::host::HostKind;
use crate::snapshot::memory::{self, MemoryFileError};
use crate::snapshot::state::{
    KvmVmState, SavedConfig, SavedCounters, SavedDisk, SavedNet, SavedVsock,
};
use crate::snapshot::{self, FormatError, Header, HostTag, VmState, cpu_check};
use crate::vcpu::counters::VcpuExitCounters;
use crate::vcpu::persist::SavedStates;

/// The state file's name in a snapshot directory (`hvlite run --restore DIR`).
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Errors creating or loading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("KVM: {0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot save the vCPUs: {0}")]
    Vcpus(String),
    #[error("cannot read the state file {0}")]
    ReadState(PathBuf, #[source] std::io::Error),
    #[error("the state file {0} is larger than {max} bytes", max = snapshot::MAX_STATE_FILE)]
    StateTooLarge(PathBuf),
    #[error("cannot write the state file {0}")]
    WriteState(PathBuf, #[source] std::io::Error),
    #[error("snapshot {0}")]
    Format(PathBuf, #[source] FormatError),
    #[error(transparent)]
    Memory(#[from] MemoryFileError),
    #[error("the snapshot was taken on a {saved} host; this host is {here}")]
    HostKind { saved: HostTag, here: HostTag },
    #[error("this CPU lacks features the snapshot's vCPUs were promised: {0}")]
    CpuFeatures(String),
    #[error("the snapshot is inconsistent: {0}")]
    Inconsistent(String),
    #[error("override {0}: the snapshot has no such device")]
    UnknownOverride(String),
    #[error("the device event loop is gone: {0}")]
    EventLoop(String),
    #[error(
        "cannot snapshot a VM with virtio-fs shares ({0}): their queues and open files live in \
         virtiofsd, whose state hvlite cannot save; boot without --fs to take snapshots"
    )]
    VhostUserShares(String),
}

impl From<event_manager::Error> for SnapshotError {
    fn from(e: event_manager::Error) -> Self {
        SnapshotError::EventLoop(e.to_string())
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |e| SnapshotError::Kvm(what, e)
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Reads the in-kernel PICs, IOAPIC, PIT and clock.
pub fn save_vm_state(vm: &VmFd) -> Result<KvmVmState, SnapshotError> {
    Ok(KvmVmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
    })
}

/// Writes the state of [`save_vm_state`] into a new VM with an irqchip and a PIT.
pub fn restore_vm_state(vm: &VmFd, s: &KvmVmState) -> Result<(), SnapshotError> {
    vm.set_pit2(&s.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
    let mut clock = s.clock;
    // Only the clock value is set; the flags describe the host it was read on.
    clock.flags = 0;
    vm.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    for (chip, id) in [
        (&s.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&s.ioapic, KVM_IRQCHIP_IOAPIC),
    ] {
        let mut chip = *chip;
        chip.chip_id = id;
        vm.set_irqchip(&chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

/// The MSRs KVM reports as saveable.
pub fn msr_list(kvm: &Kvm) -> Result<Vec<u32>, SnapshotError> {
    Ok(kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec())
}

/// The resources of `cfg` as a snapshot records them; `disk_sizes` in the order of its
/// disks.
pub fn saved_config(cfg: &VmConfig, disk_sizes: &[u64]) -> SavedConfig {
    SavedConfig {
        cpus: cfg.cpus,
        memory_mib: cfg.memory_mib,
        has_command: cfg.command.is_some(),
        disks: (cfg.disks.iter().enumerate())
            .map(|(i, d)| SavedDisk {
                id: cfg.disk_id(i),
                path: d.path.to_string_lossy().into_owned(),
                read_only: d.read_only,
                size: disk_sizes.get(i).copied().unwrap_or(0),
            })
            .collect(),
        nets: (cfg.nets.iter().enumerate())
            .map(|(i, n)| SavedNet {
                id: cfg.net_id(i),
                tap: n.tap.clone(),
                mac: n
                    .mac
                    .unwrap_or_else(|| crate::devices::virtio::net::default_mac(&n.tap)),
            })
            .collect(),
        vsock: cfg.vsock.as_ref().map(|v| SavedVsock {
            cid: v.cid,
            uds: v.uds.as_ref().map(|p| p.to_string_lossy().into_owned()),
        }),
    }
}

/// A device's metrics counters, as a snapshot saves and restores them.
pub trait CounterSet: Send + Sync {
    /// The values, in a fixed order.
    fn values(&self) -> Vec<u64>;
    /// Adds saved values.
    fn preload(&self, values: &[u64]);
}

macro_rules! counter_set {
    ($($t:ty),*) => {$(
        impl CounterSet for $t {
            fn values(&self) -> Vec<u64> {
                <$t>::values(self)
            }
            fn preload(&self, values: &[u64]) {
                <$t>::preload(self, values)
            }
        }
    )*};
}
counter_set!(BlockCounters, NetCounters, VsockCounters);

/// The counters of a VM's devices (slot order) and vCPUs.
#[derive(Clone, Default)]
pub struct VmCounters {
    pub devices: Vec<Arc<dyn CounterSet>>,
    pub vcpu_exits: Option<Arc<VcpuExitCounters>>,
}

impl VmCounters {
    /// The values for a snapshot.
    pub fn save(&self) -> SavedCounters {
        SavedCounters {
            devices: self.devices.iter().map(|c| c.values()).collect(),
            vcpu_exits: (self.vcpu_exits.iter())
                .flat_map(|v| v.snapshot())
                .map(|(name, n)| (name.to_string(), n))
                .collect(),
        }
    }

    /// Adds a snapshot's values.
    pub fn restore(&self, saved: &SavedCounters) {
        for (c, values) in self.devices.iter().zip(&saved.devices) {
            c.preload(values);
        }
        if let Some(v) = &self.vcpu_exits {
            v.preload(&saved.vcpu_exits);
        }
    }
}

/// What a running VM hands its controller so that it can be snapshotted while paused.
pub struct SnapshotSource {
    pub vm: Arc<VmFd>,
    pub host: HostKind,
    pub mem: GuestMemoryMmap,
    pub serial: Arc<Mutex<SerialConsole>>,
    pub keyboard: Arc<Mutex<I8042>>,
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub config: SavedConfig,
    pub events: EventLoopHandle,
    pub vcpus: Arc<SavedStates>,
    pub counters: VmCounters,
    /// Tags of the virtio-fs shares: a VM with any cannot be snapshotted.
    pub shares: Vec<String>,
}

/// What [`create_snapshot`] wrote and how long it took.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateStats {
    /// Size of the state file.
    pub state_bytes: u64,
    /// Bytes of the memory file that are not holes.
    pub memory_written: u64,
    /// Wall time of the whole creation, in milliseconds.
    pub millis: f64,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes the snapshot of a paused VM: its state to `state_path`, its memory to
/// `mem_path`. Devices and memory are read on the device event loop's thread, so no
/// device works on guest memory meanwhile.
pub fn create_snapshot(
    src: &Arc<SnapshotSource>,
    state_path: &Path,
    mem_path: &Path,
) -> Result<CreateStats, SnapshotError> {
    if !src.shares.is_empty() {
        return Err(SnapshotError::VhostUserShares(src.shares.join(", ")));
    }
    let start = Instant::now();
    let vcpus = src.vcpus.all().map_err(SnapshotError::Vcpus)?;
    let vm = save_vm_state(&src.vm)?;
    let on_loop = Arc::clone(src);
    let mem_file = mem_path.to_path_buf();
    let (serial, i8042, virtio, memory_written) = src.events.call_blocking(move |_| {
        let s = &on_loop;
        let serial = lock(&s.serial).save_state();
        let i8042 = lock(&s.keyboard).save_state();
        let virtio = s.transports.iter().map(|t| lock(t).save_state()).collect();
        let written = memory::write(&s.mem, &mem_file)?;
        Ok::<_, SnapshotError>((serial, i8042, virtio, written))
    })?;
    let counters = src.counters.save();
    let state = VmState {
        memory: memory::layout(&src.mem),
        config: src.config.clone(),
        vm,
        vcpus,
        serial,
        i8042,
        virtio,
        counters,
    };
    let bytes = snapshot::encode(&Header::current(src.host), &state)
        .map_err(|e| SnapshotError::Format(state_path.into(), e))?;
    write_atomically(state_path, &bytes)
        .map_err(|e| SnapshotError::WriteState(state_path.into(), e))?;
    let stats = CreateStats {
        state_bytes: bytes.len() as u64,
        memory_written,
        millis: start.elapsed().as_secs_f64() * 1e3,
    };
    log::info!(
        "snapshot created in {:.1} ms: state {} ({} bytes), memory {} ({} bytes not holes)",
        stats.millis,
        state_path.display(),
        stats.state_bytes,
        mem_path.display(),
        stats.memory_written
    );
    Ok(stats)
}

/// Writes `bytes` to a temporary file next to `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// What to restore, and what to change on the way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreSpec {
    /// The state file.
    pub state_path: PathBuf,
    /// The memory file.
    pub mem_path: PathBuf,
    /// Disks to open from another file: (drive id, path).
    pub drive_overrides: Vec<(String, PathBuf)>,
    /// Network interfaces to attach to another TAP: (iface id, TAP name).
    pub net_overrides: Vec<(String, String)>,
    /// The vsock device's new host socket.
    pub vsock_uds: Option<PathBuf>,
    /// Let the vCPUs run at once (else the VM stays paused).
    pub resume: bool,
}

/// A checked snapshot, ready to restore.
pub struct Restore {
    /// The snapshot's state.
    pub state: VmState,
    /// The memory file.
    pub mem_path: PathBuf,
    /// Let the vCPUs run at once.
    pub resume: bool,
}

/// Reads, checks and decodes the state file of `spec`; returns the restore and the VM's
/// configuration with the overrides applied.
pub fn prepare_restore(
    spec: &RestoreSpec,
    host: HostKind,
) -> Result<(Restore, VmConfig), SnapshotError> {
    let path = &spec.state_path;
    let bytes = read_state_file(path)?;
    let (header, state) =
        snapshot::decode(&bytes).map_err(|e| SnapshotError::Format(path.clone(), e))?;
    let here = HostTag::from(host);
    if header.host != here {
        return Err(SnapshotError::HostKind {
            saved: header.host,
            here,
        });
    }
    if header.hvlite_version != env!("CARGO_PKG_VERSION") {
        log::info!(
            "snapshot written by hvlite {} (this is {})",
            header.hvlite_version,
            env!("CARGO_PKG_VERSION")
        );
    }
    check_consistent(&state)?;
    let cfg = restored_config(&state.config, spec)?;
    Ok((
        Restore {
            state,
            mem_path: spec.mem_path.clone(),
            resume: spec.resume,
        },
        cfg,
    ))
}

fn read_state_file(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| SnapshotError::ReadState(path.into(), e))?;
    let mut bytes = Vec::new();
    file.take(snapshot::MAX_STATE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SnapshotError::ReadState(path.into(), e))?;
    if bytes.len() as u64 > snapshot::MAX_STATE_FILE {
        return Err(SnapshotError::StateTooLarge(path.into()));
    }
    Ok(bytes)
}

/// The parts of a state that must agree with each other.
fn check_consistent(s: &VmState) -> Result<(), SnapshotError> {
    let bad = |m: String| Err(SnapshotError::Inconsistent(m));
    let c = &s.config;
    if c.cpus == 0 || usize::from(c.cpus) != s.vcpus.len() {
        return bad(format!(
            "{} vCPUs configured, {} saved",
            c.cpus,
            s.vcpus.len()
        ));
    }
    let total = memory::check_layout(&s.memory)?;
    if Some(total) != c.memory_mib.checked_mul(1 << 20) {
        return bad(format!(
            "{} MiB configured, {total} bytes of memory saved",
            c.memory_mib
        ));
    }
    let want = crate::boot::layout::ram_regions(total);
    let layout_ok = want.len() == s.memory.len()
        && want
            .iter()
            .zip(&s.memory)
            .all(|((a, l), r)| a.0 == r.guest_addr && *l as u64 == r.len);
    if !layout_ok {
        return bad("the memory regions are not where this hvlite puts them".into());
    }
    let devices = c.disks.len() + c.nets.len() + usize::from(c.vsock.is_some());
    if devices != s.virtio.len() {
        return bad(format!(
            "{devices} virtio devices configured, {} saved",
            s.virtio.len()
        ));
    }
    Ok(())
}

/// The VM configuration of a snapshot, with `spec`'s overrides.
fn restored_config(c: &SavedConfig, spec: &RestoreSpec) -> Result<VmConfig, SnapshotError> {
    for (id, _) in &spec.drive_overrides {
        if !c.disks.iter().any(|d| &d.id == id) {
            return Err(SnapshotError::UnknownOverride(format!("drive {id}")));
        }
    }
    for (id, _) in &spec.net_overrides {
        if !c.nets.iter().any(|n| &n.id == id) {
            return Err(SnapshotError::UnknownOverride(format!(
                "network interface {id}"
            )));
        }
    }
    if spec.vsock_uds.is_some() && c.vsock.is_none() {
        return Err(SnapshotError::UnknownOverride("vsock".into()));
    }
    let mut cfg = VmConfig::new(PathBuf::new());
    cfg.cpus = c.cpus;
    cfg.memory_mib = c.memory_mib;
    cfg.command = c.has_command.then(Vec::new);
    for d in &c.disks {
        let path = (spec.drive_overrides.iter())
            .find(|(id, _)| *id == d.id)
            .map_or_else(|| PathBuf::from(&d.path), |(_, p)| p.clone());
        cfg.disks.push(DiskConfig {
            path,
            read_only: d.read_only,
            // The guest's command line is in the snapshot's memory already.
            root: false,
            // Rate limits are not part of a snapshot (yet): a restored drive is unlimited
            // until PATCH /drives sets its limits again.
            rate_limiter: None,
        });
        cfg.disk_ids.push(d.id.clone());
    }
    for n in &c.nets {
        let tap = (spec.net_overrides.iter())
            .find(|(id, _)| *id == n.id)
            .map_or_else(|| n.tap.clone(), |(_, t)| t.clone());
        cfg.nets.push(NetConfig {
            tap,
            mac: Some(n.mac),
            // As for drives: PATCH /network-interfaces sets the limits again.
            tx_rate_limiter: None,
            rx_rate_limiter: None,
        });
        cfg.net_ids.push(n.id.clone());
    }
    cfg.vsock = c.vsock.as_ref().map(|v| VsockConfig {
        cid: v.cid,
        uds: spec
            .vsock_uds
            .clone()
            .or_else(|| v.uds.as_ref().map(PathBuf::from)),
    });
    Ok(cfg)
}

/// Refuses a restore whose vCPUs were promised CPU features this host's KVM lacks.
pub fn check_cpu(supported: &[kvm_cpuid_entry2], state: &VmState) -> Result<(), SnapshotError> {
    for (i, v) in state.vcpus.iter().enumerate() {
        let missing = cpu_check::missing_features(&v.cpuid, supported);
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
            return Err(SnapshotError::CpuFeatures(format!(
                "vCPU {i}: {}",
                list.join(", ")
            )));
        }
    }
    Ok(())
}
