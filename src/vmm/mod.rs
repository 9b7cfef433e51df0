//! VM construction and lifetime: turns a [`VmConfig`] into a running VM, waits
//! for its end and stops every vCPU.

pub mod boot_marker;
pub mod config_file;
pub mod control;
pub mod devices;
pub mod event_loop;
pub mod line_watch;
pub mod memory;
pub mod panic_watch;
pub mod persist;

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::loader::load_cmdline;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::boot::{cmdline, cpuid, gdt, layout, loader, mptable, paging, zeropage};
use crate::config::{self, ConfigError, VmConfig};
use crate::devices::bus::{BusError, Buses};
use crate::devices::exit_port::ExitPort;
use crate::devices::i8042::{I8042, I8042_BASE, I8042_LEN};
use crate::devices::serial::{
    COM1_BASE, COM1_LEN, ConsoleOut, SerialConsole, spawn_stdin_forwarder,
};
use crate::devices::virtio::EventLoopHandle;
use crate::devices::virtio::block::{Block, DiskError, DiskImage};
use crate::devices::virtio::fs::{self as virtio_fs, Daemon, DaemonError, Fs, FsError, FsHealth};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::{self, Net, Tap, TapError};
use crate::devices::virtio::rate_limiter::RateLimiter;
use crate::devices::virtio::vsock::{Vsock, VsockBackendConfig, VsockError};
use crate::exit::{ExitLatch, ExitReason};
use crate::host::HostKind;
use crate::initcmd::{EXIT_PORT, INIT_MARKER};
use crate::metrics::Metrics;
use crate::process_stats::{self, PROCESS_START};
use crate::snapshot;
use crate::vcpu::{self, Vcpu, VcpuError};
use boot_marker::MarkerWatch;
use control::VmControl;
use devices::VirtioMmioSlots;
use event_loop::EventLoop;
use line_watch::LineWatch;
use panic_watch::PanicRecord;

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("/dev/kvm does not exist: this host has no KVM (load kvm_intel, kvm_amd or kvm_pvm)")]
    NoKvm,
    #[error("no permission to open /dev/kvm (run as root or join the kvm group)")]
    KvmPermission,
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("--cpus {cpus} is more than KVM allows on this host ({max})")]
    TooManyCpusForKvm { cpus: u8, max: usize },
    #[error("KVM: {0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot allocate {0} MiB of guest memory")]
    Memory(u64, #[source] vm_memory::mmap::FromRangesError),
    #[error("cannot allocate {0} MiB of shared guest memory")]
    SharedMemory(u64, #[source] memory::MemoryError),
    #[error(transparent)]
    Virtiofsd(#[from] DaemonError),
    #[error("share {tag:?}: cannot connect to the vhost-user backend at {}", socket.display())]
    FsConnect {
        tag: String,
        socket: std::path::PathBuf,
        #[source]
        source: virtio_fs::LinkError,
    },
    #[error("share {tag:?}")]
    Fs {
        tag: String,
        #[source]
        source: FsError,
    },
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    #[error("cannot write the kernel command line into guest memory")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("cannot build the zero page")]
    ZeroPage(#[from] zeropage::ZeroPageError),
    #[error("cannot build the MP table")]
    Mptable(#[from] mptable::MptableError),
    #[error("cannot build the GDT")]
    Gdt(#[from] gdt::GdtError),
    #[error("cannot build the page tables")]
    Paging(#[from] paging::PagingError),
    #[error("cannot attach a device")]
    Bus(#[from] BusError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
    #[error("cannot start the stdin forwarder")]
    Stdin(#[source] io::Error),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Disk(DiskError),
    #[error(transparent)]
    RateLimiter(#[from] crate::devices::virtio::rate_limiter::RateLimiterError),
    #[error(transparent)]
    Tap(TapError),
    #[error(transparent)]
    Device(#[from] devices::DeviceError),
    #[error(transparent)]
    EventLoop(#[from] event_loop::EventLoopError),
    #[error(transparent)]
    Vsock(VsockError),
    #[error("cannot create the balloon's statistics timer")]
    Balloon(#[source] std::io::Error),
    #[error("in-process vsock services need a vsock device")]
    VsockNeeded,
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    #[error(transparent)]
    Snapshot(#[from] persist::SnapshotError),
    #[error("restoring virtio device {index}")]
    RestoreDevice {
        index: usize,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Sampling period of the guest profiler (HVLITE_GUEST_PROFILE).
const PROFILE_PERIOD: Duration = Duration::from_millis(2);

/// Opens /dev/kvm, telling a missing device from a permission problem.
fn open_kvm() -> Result<Kvm, VmmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => VmmError::NoKvm,
        libc::EACCES | libc::EPERM => VmmError::KvmPermission,
        _ => VmmError::OpenKvm(e),
    })
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |e| VmmError::Kvm(what, e)
}

/// Creates guest RAM and registers every region with KVM as a memory slot. RAM is a
/// shared memfd when `shared` (a vhost-user backend maps it), anonymous otherwise.
fn create_memory(
    vm: &VmFd,
    mem_mib: u64,
    track_dirty_pages: bool,
    shared: bool,
) -> Result<GuestMemoryMmap, VmmError> {
    let ranges = layout::ram_regions(mem_mib << 20);
    let mem = if shared {
        memory::shared_ranges(&ranges).map_err(|e| VmmError::SharedMemory(mem_mib, e))?
    } else {
        GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmmError::Memory(mem_mib, e))?
    };
    register_memory(vm, &mem, track_dirty_pages)?;
    Ok(mem)
}

/// Registers every region of `mem` with KVM as a memory slot, with KVM's dirty-page log
/// when `track_dirty_pages`.
fn register_memory(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    track_dirty_pages: bool,
) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = u32::try_from(slot).map_err(|_| VmmError::Kvm("memory slot", io_einval()))?;
        let desc = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: if track_dirty_pages {
                kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`,
        // which the caller keeps alive for as long as the VM runs.
        unsafe { vm.set_user_memory_region(desc) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

fn io_einval() -> kvm_ioctls::Error {
    kvm_ioctls::Error::new(libc::EINVAL)
}

/// Creates the in-kernel interrupt controllers and timer.
fn setup_irqchip(vm: &VmFd) -> Result<(), VmmError> {
    vm.set_tss_address(layout::KVM_TSS_ADDR as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))
}

/// What the boot vCPU needs from the loaded guest image.
struct BootImage {
    entry: u64,
    segments: gdt::BootSegments,
    cr3: u64,
}

/// Loads kernel and initrd, writes the command line, zero page, MP table, GDT and page
/// tables.
fn load_guest(
    cfg: &VmConfig,
    host: HostKind,
    mem: &GuestMemoryMmap,
    virtio_devices: &[cmdline::VirtioMmioEntry],
) -> Result<BootImage, VmmError> {
    let mem_size = cfg.mem_size();
    // Open the initrd first: a missing initrd is reported before the kernel is read.
    let initrd = cfg
        .initrd
        .as_deref()
        .map(loader::Initrd::open)
        .transpose()?;
    let kernel = loader::load_kernel(mem, mem_size, &cfg.kernel)?;
    let initrd_size = initrd.as_ref().map_or(0, |i| i.size);
    loader::check_fits(&kernel, initrd_size, mem_size, &cfg.kernel)?;
    let initrd = match initrd {
        Some(i) => Some((i.load(mem, mem_size)?, initrd_size)),
        None => None,
    };
    log::debug!(
        "kernel {:?} entry {:#x} end {:#x}, initrd {initrd:x?}",
        kernel.format,
        kernel.entry,
        kernel.end
    );

    let root = cfg.root_disk().map(|d| match d.read_only {
        true => cmdline::RootAccess::ReadOnly,
        false => cmdline::RootAccess::ReadWrite,
    });
    let cl = cmdline::build(&cmdline::CmdlineSpec {
        host,
        initrd: initrd.is_some(),
        root,
        user: cfg.cmdline.as_deref(),
        command: cfg.command.as_deref(),
        virtio_devices,
    })?;
    load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cl).map_err(VmmError::WriteCmdline)?;
    let cmdline_size = cl
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len())
        .unwrap_or(1);
    log::debug!("kernel command line: {:?}", cl.as_cstring());

    let params = zeropage::build_boot_params(&zeropage::ZeroPageConfig {
        mem_size,
        cmdline_addr: layout::CMDLINE_START,
        cmdline_size,
        initrd,
        setup_header: kernel.setup_header,
    })?;
    zeropage::write_zero_page(mem, &params)?;
    mptable::setup_mptable(mem, cfg.cpus)?;
    let segments = gdt::setup_gdt(mem)?;
    let cr3 = paging::setup_identity_page_tables(mem)?;
    Ok(BootImage {
        entry: kernel.entry,
        segments,
        cr3,
    })
}

/// The legacy devices on the port-I/O bus, and the keyboard for the VM's controllers.
struct LegacyDevices {
    buses: Buses,
    serial: Arc<Mutex<SerialConsole>>,
    keyboard: Arc<Mutex<I8042>>,
}

/// Creates the legacy devices on the port-I/O bus.
fn setup_devices(
    vm: &VmFd,
    latch: &Arc<ExitLatch>,
    console_out: ConsoleOut,
    forward_stdin: bool,
    restore: Option<&snapshot::VmState>,
) -> Result<LegacyDevices, VmmError> {
    let mut buses = Buses::default();
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    vm.register_irqfd(&irq, layout::SERIAL_IRQ)
        .map_err(kvm_err("KVM_IRQFD (serial)"))?;
    let serial = match restore {
        Some(s) => SerialConsole::from_state(irq, console_out, &s.serial)
            .map_err(|e| VmmError::Snapshot(persist::SnapshotError::Inconsistent(e)))?,
        None => SerialConsole::new(irq, console_out),
    };
    let serial = Arc::new(Mutex::new(serial));
    buses
        .pio
        .insert(serial.clone(), u64::from(COM1_BASE), u64::from(COM1_LEN))?;
    if forward_stdin {
        // The forwarder thread is detached: it blocks on stdin until EOF or exit.
        spawn_stdin_forwarder(io::stdin(), serial.clone()).map_err(VmmError::Stdin)?;
    }
    let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(VmmError::EventFd)?;
    vm.register_irqfd(&kbd_irq, layout::KEYBOARD_IRQ)
        .map_err(kvm_err("KVM_IRQFD (keyboard)"))?;
    let mut kbd = I8042::new(latch.clone(), Some(kbd_irq));
    if let Some(s) = restore {
        kbd.restore_state(&s.i8042);
    }
    let keyboard = Arc::new(Mutex::new(kbd));
    buses.pio.insert(
        keyboard.clone(),
        u64::from(I8042_BASE),
        u64::from(I8042_LEN),
    )?;
    buses.pio.insert(
        Arc::new(Mutex::new(ExitPort::new(latch.clone()))),
        u64::from(EXIT_PORT),
        1,
    )?;
    Ok(LegacyDevices {
        buses,
        serial,
        keyboard,
    })
}

/// Where the guest's console goes and whether host stdin is forwarded to it.
pub struct Console {
    /// Guest console output.
    pub out: ConsoleOut,
    /// Forward the host's stdin to the guest's console.
    pub forward_stdin: bool,
}

impl Default for Console {
    fn default() -> Self {
        Self {
            out: Box::new(io::stdout()),
            forward_stdin: true,
        }
    }
}

/// What a VM run gets from its caller besides the configuration.
pub struct RunEnv {
    /// The guest console.
    pub console: Console,
    /// Ends the VM when requested; the caller may keep a clone to end it from outside.
    pub latch: Arc<ExitLatch>,
    /// vsock host ports served in-process: each guest connection to such a port (on
    /// CID 2) arrives on the channel as one end of a socket pair.
    pub vsock_ports: Vec<(u32, mpsc::Sender<UnixStream>)>,
}

impl RunEnv {
    /// A run with this console, its own latch and no in-process vsock services.
    pub fn new(console: Console) -> Self {
        Self {
            console,
            latch: Arc::new(ExitLatch::new()),
            vsock_ports: Vec::new(),
        }
    }
}

/// Optional observers and controllers of a VM run.
#[derive(Default)]
pub struct RunHooks {
    /// Counters to fill: vCPU exits, devices (named by the config's ids), guest memory,
    /// boot time.
    pub metrics: Option<Arc<Metrics>>,
    /// A handle that other threads use to pause, resume or press keys on the VM.
    pub control: Option<Arc<VmControl>>,
}

/// Boots the VM described by `cfg` and runs it until it ends; returns why it ended.
pub fn run(cfg: &VmConfig, env: RunEnv) -> Result<ExitReason, VmmError> {
    run_with(cfg, env, RunHooks::default())
}

/// [`run`], with metrics and a control handle.
pub fn run_with(cfg: &VmConfig, env: RunEnv, hooks: RunHooks) -> Result<ExitReason, VmmError> {
    run_inner(cfg, env, hooks, None)
}

/// Restores the snapshot of `spec` and runs the VM until it ends; returns why it ended and
/// whether the guest reports a command's status.
pub fn restore_with(
    spec: &persist::RestoreSpec,
    env: RunEnv,
    hooks: RunHooks,
) -> Result<(ExitReason, bool), VmmError> {
    let start = Instant::now();
    let (restore, cfg) = persist::prepare_restore(spec, HostKind::detect())?;
    log::debug!(
        "snapshot {} read and checked in {:.2} ms",
        spec.state_path.display(),
        start.elapsed().as_secs_f64() * 1e3
    );
    let has_command = cfg.command.is_some();
    let reason = run_inner(&cfg, env, hooks, Some(&restore))?;
    Ok((reason, has_command))
}

/// Boots the VM of `cfg`, or restores `restore` (whose devices `cfg` describes).
fn run_inner(
    cfg: &VmConfig,
    env: RunEnv,
    hooks: RunHooks,
    restore: Option<&persist::Restore>,
) -> Result<ExitReason, VmmError> {
    let load_start = Instant::now();
    let RunEnv {
        console,
        latch,
        vsock_ports,
    } = env;
    if restore.is_none() {
        cfg.validate(config::host_ram_mib())?;
        // Bad input files are reported before anything touches KVM.
        loader::check_readable(&cfg.kernel)?;
        if let Some(initrd) = &cfg.initrd {
            loader::check_readable(initrd)?;
        }
    } else {
        let mut check = cfg.clone();
        check.command = None;
        check.validate(config::host_ram_mib())?;
    }
    let disks = open_disks(cfg)?;
    let disk_sizes: Vec<u64> = disks.iter().map(DiskImage::size).collect();
    let taps = open_taps(cfg)?;
    let vsock = open_vsock(cfg, vsock_ports)?;
    let mut daemons = start_virtiofsd(cfg)?;
    let kvm = open_kvm()?;
    let host = HostKind::detect();
    log::info!("host: {host}");
    let max = kvm.get_max_vcpus();
    if usize::from(cfg.cpus) > max {
        return Err(VmmError::TooManyCpusForKvm {
            cpus: cfg.cpus,
            max,
        });
    }
    let base_cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    if let Some(r) = restore {
        persist::check_cpu(base_cpuid.as_slice(), &r.state)?;
    }
    let vm = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
    setup_irqchip(&vm)?;
    let mem = match restore {
        Some(r) => {
            let mem = snapshot::memory::load(&r.mem_path, &r.state.memory)
                .map_err(persist::SnapshotError::from)?;
            register_memory(&vm, &mem, cfg.track_dirty_pages)?;
            persist::restore_vm_state(&vm, &r.state.vm)?;
            mem
        }
        None => create_memory(
            &vm,
            cfg.memory_mib,
            cfg.track_dirty_pages,
            !cfg.shares.is_empty(),
        )?,
    };
    let metrics = hooks.metrics.as_deref();
    if let Some(m) = metrics {
        m.set_guest_memory(mem.iter().map(|r| r.as_ptr() as u64).collect());
    }
    let start = PROCESS_START.get().copied().unwrap_or_else(Instant::now);
    let panic = PanicRecord::new();
    let console_out: ConsoleOut = Box::new(LineWatch::new(
        MarkerWatch::new(console.out, INIT_MARKER, start, hooks.metrics.clone()),
        panic.watcher(latch.clone()),
    ));

    let events = EventLoop::start(latch.clone())?;
    let mut healths: Vec<Arc<FsHealth>> = Vec::new();
    // Whatever happens from here on, the event loop thread is stopped before returning.
    let result = (|| {
        let state = restore.map(|r| &r.state);
        let legacy = setup_devices(&vm, &latch, console_out, console.forward_stdin, state)?;
        let mut buses = legacy.buses;
        let mut slots = VirtioMmioSlots::new();
        let mut counters = persist::VmCounters {
            devices: Vec::new(),
            vcpu_exits: hooks.metrics.as_ref().map(|m| m.vcpu_exits()),
        };
        for (i, disk) in disks.into_iter().enumerate() {
            // Every drive has a limiter (maybe limiting nothing), so that PATCH
            // /drives can set limits later.
            let limits = cfg.disks.get(i).and_then(|d| d.rate_limiter);
            let (bandwidth, ops) = limits.map(|l| l.buckets()).unwrap_or_default();
            let limiter = RateLimiter::new(bandwidth, ops)?;
            let device = Block::with_limiter(disk, Some(limiter), events.handle());
            if let Some(c) = &hooks.control {
                c.add_drive(&cfg.disk_id(i), device.live());
            }
            counters.devices.push(device.counters());
            if let Some(m) = metrics {
                m.register_block(&cfg.disk_id(i), device.counters());
            }
            slots.attach(&vm, &mem, &mut buses, Box::new(device))?;
            register_refusals(metrics, &cfg.disk_id(i), &slots);
        }
        if let Some(e) = &cfg.entropy {
            let (bandwidth, ops) = e.rate_limiter.map(|l| l.buckets()).unwrap_or_default();
            let limiter = (bandwidth.is_some() || ops.is_some())
                .then(|| RateLimiter::new(bandwidth, ops))
                .transpose()?;
            let device = crate::devices::virtio::rng::Rng::new(limiter, events.handle());
            slots.attach(&vm, &mem, &mut buses, Box::new(device))?;
        }
        if let Some(b) = &cfg.balloon {
            let ram_mib = u32::try_from(cfg.memory_mib).unwrap_or(u32::MAX);
            let device = crate::devices::virtio::balloon::Balloon::new(
                b.amount_mib,
                b.deflate_on_oom,
                b.stats_polling_interval_s,
                ram_mib,
                events.handle(),
            )
            .map_err(VmmError::Balloon)?;
            if let Some(c) = &hooks.control {
                c.set_balloon(Some(device.shared()));
            }
            if let Some(m) = metrics {
                let shared = device.shared();
                m.register("balloon", "balloon", move || shared.counters_json());
            }
            slots.attach(&vm, &mem, &mut buses, Box::new(device))?;
        }
        for (i, (tap, mac)) in taps.into_iter().enumerate() {
            log::info!(
                "net: {} (mac {}{})",
                tap.name(),
                net::format_mac(&mac),
                if tap.created() {
                    ", created by hvlite"
                } else {
                    ""
                }
            );
            // Every interface has TX and RX limiters (maybe limiting nothing), so that PATCH
            // /network-interfaces can set limits later.
            let limits = cfg.nets.get(i).and_then(|n| n.tx_rate_limiter);
            let (bandwidth, ops) = limits.map(|l| l.buckets()).unwrap_or_default();
            let rx_limits = cfg.nets.get(i).and_then(|n| n.rx_rate_limiter);
            let (rx_bandwidth, rx_ops) = rx_limits.map(|l| l.buckets()).unwrap_or_default();
            let device = Net::new(tap, mac, events.handle())
                .with_tx_rate_limiter(RateLimiter::new(bandwidth, ops)?)
                .with_rx_rate_limiter(RateLimiter::new(rx_bandwidth, rx_ops)?);
            if let (Some(c), Some(l)) = (&hooks.control, device.tx_rate_limiter()) {
                c.add_net_limiter(&cfg.net_id(i), l);
            }
            if let (Some(c), Some(l)) = (&hooks.control, device.rx_rate_limiter()) {
                c.add_net_rx_limiter(&cfg.net_id(i), l);
            }
            counters.devices.push(device.counters());
            if let Some(m) = metrics {
                m.register_net(&cfg.net_id(i), device.counters());
            }
            slots.attach(&vm, &mem, &mut buses, Box::new(device))?;
            register_refusals(metrics, &cfg.net_id(i), &slots);
        }
        if let Some(vsock) = vsock {
            let device = vsock.build(events.handle()).map_err(VmmError::Vsock)?;
            counters.devices.push(device.counters());
            if let Some(m) = metrics {
                m.register_vsock("vsock", device.counters());
            }
            slots.attach(&vm, &mem, &mut buses, Box::new(device))?;
            register_refusals(metrics, "vsock", &slots);
        }
        for (share, daemon) in cfg.shares.iter().zip(&daemons) {
            let socket = match daemon {
                Some(d) => d.socket().to_path_buf(),
                None => share.socket.clone().unwrap_or_default(),
            };
            let device = attach_share(share, &socket, events.handle())?;
            healths.push(device.health());
            slots.attach(&vm, &mem, &mut buses, Box::new(device))?;
        }
        let transports = slots.transports().to_vec();
        if let Some(r) = restore {
            check_devices(&transports, &r.state)?;
            counters.restore(&r.state.counters);
        }
        let buses = Arc::new(buses);
        let boot = match restore {
            Some(_) => None,
            None => Some(load_guest(cfg, host, &mem, slots.entries())?),
        };
        let saved_states = Arc::new(vcpu::persist::SavedStates::new(usize::from(cfg.cpus)));
        let snapshots = match &hooks.control {
            Some(control) => {
                let msrs = Arc::new(persist::msr_list(&kvm)?);
                control.set_snapshot_source(Arc::new(persist::SnapshotSource {
                    vm: vm.clone(),
                    host,
                    mem: mem.clone(),
                    serial: legacy.serial.clone(),
                    keyboard: legacy.keyboard.clone(),
                    transports: transports.clone(),
                    config: persist::saved_config(cfg, &disk_sizes),
                    events: events.handle(),
                    vcpus: saved_states.clone(),
                    counters: counters.clone(),
                    shares: cfg.shares.iter().map(|s| s.tag.clone()).collect(),
                }));
                Some((saved_states, msrs))
            }
            None => None,
        };
        let parts = VcpuParts {
            vm: &vm,
            host,
            base_cpuid: &base_cpuid,
            boot: boot.as_ref(),
            buses: &buses,
            mem: &mem,
            latch: &latch,
            keyboard: legacy.keyboard,
            snapshots,
        };
        let before_start = || -> Result<(), VmmError> {
            if let Some(r) = restore {
                restore_devices(&transports, &r.state, &disk_sizes)?;
                log::info!(
                    "snapshot restored in {:.2} ms",
                    load_start.elapsed().as_secs_f64() * 1e3
                );
            }
            Ok(())
        };
        let paused = restore.is_some_and(|r| !r.resume);
        run_vcpus(cfg, parts, &hooks, restore, before_start, paused)
    })();
    events.stop();
    if let Some(c) = &hooks.control {
        c.clear_snapshot_source();
        c.set_balloon(None);
    }
    report_shares(&healths, &mut daemons);
    let reason = panic.explain(result?);
    report_memory(&mem);
    Ok(reason)
}

/// Refuses a restore whose devices are not those of the snapshot.
fn check_devices(
    transports: &[Arc<Mutex<MmioTransport>>],
    state: &snapshot::VmState,
) -> Result<(), VmmError> {
    for (index, (t, s)) in transports.iter().zip(&state.virtio).enumerate() {
        let t = t.lock().unwrap_or_else(|p| p.into_inner());
        t.check_state(s).map_err(|e| VmmError::RestoreDevice {
            index,
            source: Box::new(e),
        })?;
    }
    Ok(())
}

/// Gives each virtio device its saved state (after the vCPUs got theirs: KVM_SET_LAPIC
/// would drop an interrupt a device raises before it), and announces a disk whose size
/// changed with a config-change interrupt.
fn restore_devices(
    transports: &[Arc<Mutex<MmioTransport>>],
    state: &snapshot::VmState,
    disk_sizes: &[u64],
) -> Result<(), VmmError> {
    for (index, (t, s)) in transports.iter().zip(&state.virtio).enumerate() {
        let mut t = t.lock().unwrap_or_else(|p| p.into_inner());
        t.restore_state(s).map_err(|e| VmmError::RestoreDevice {
            index,
            source: Box::new(e),
        })?;
        let resized = (state.config.disks.get(index))
            .zip(disk_sizes.get(index))
            .filter(|(d, size)| d.size != **size);
        if let Some((d, size)) = resized {
            log::info!(
                "drive {}: {} bytes instead of {}; telling the guest",
                d.id,
                size,
                d.size
            );
            t.signal_config_change();
        }
    }
    Ok(())
}

/// Starts a virtiofsd for every share of `cfg` that names no socket of its own (`None`
/// for those that do), before the guest starts.
fn start_virtiofsd(cfg: &VmConfig) -> Result<Vec<Option<Daemon>>, VmmError> {
    if cfg.shares.iter().all(|s| s.socket.is_some()) {
        return Ok(cfg.shares.iter().map(|_| None).collect());
    }
    let binary = virtio_fs::daemon::find_virtiofsd()?;
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let mut daemons = Vec::with_capacity(cfg.shares.len());
    for s in &cfg.shares {
        daemons.push(match &s.socket {
            Some(_) => None,
            None => Some(Daemon::start(
                &binary,
                &s.tag,
                &s.path,
                s.read_only,
                &runtime,
            )?),
        });
    }
    Ok(daemons)
}

/// Connects to a share's backend and makes its device (the vhost-user handshake).
fn attach_share(
    share: &config::FsConfig,
    socket: &std::path::Path,
    events: EventLoopHandle,
) -> Result<Fs, VmmError> {
    let link = virtio_fs::FrontendLink::connect(socket, virtio_fs::NUM_QUEUES as u64).map_err(
        |source| VmmError::FsConnect {
            tag: share.tag.clone(),
            socket: socket.to_path_buf(),
            source,
        },
    )?;
    Fs::new(&share.tag, Box::new(link), events).map_err(|source| VmmError::Fs {
        tag: share.tag.clone(),
        source,
    })
}

/// Stops the virtiofsd processes hvlite started, and reports shares whose backend went
/// away while the guest ran.
fn report_shares(healths: &[Arc<FsHealth>], daemons: &mut [Option<Daemon>]) {
    for (i, d) in daemons.iter_mut().enumerate() {
        let Some(d) = d else { continue };
        let early = d.stop();
        // Here, not only on drop: a killed virtiofsd's socket was seen left behind.
        d.remove_socket();
        let lost = healths.get(i).is_some_and(|h| h.is_gone());
        if let (true, Some(h)) = (lost, healths.get(i)) {
            log::error!(
                "virtio-fs {}: virtiofsd (pid {}) went away while the guest ran{}; {} guest \
                 request(s) were answered with EIO",
                h.tag(),
                d.pid(),
                early.map(|s| format!(" ({s})")).unwrap_or_default(),
                h.answered()
            );
        }
    }
}

/// Opens every disk of `cfg`, so that a bad disk is reported before the guest starts.
fn open_disks(cfg: &VmConfig) -> Result<Vec<DiskImage>, VmmError> {
    cfg.disks
        .iter()
        .map(|d| DiskImage::open(&d.path, d.read_only).map_err(VmmError::Disk))
        .collect()
}

/// Opens (or creates) every TAP device of `cfg`, so that a bad one is reported before the
/// guest starts; picks each interface's MAC address.
fn open_taps(cfg: &VmConfig) -> Result<Vec<(Tap, [u8; 6])>, VmmError> {
    cfg.nets
        .iter()
        .map(|n| {
            let tap = Tap::open(&n.tap).map_err(VmmError::Tap)?;
            Ok((tap, n.mac.unwrap_or_else(|| net::default_mac(&n.tap))))
        })
        .collect()
}

/// A vsock device checked before the guest starts, built once the event loop runs.
struct PendingVsock {
    cid: u64,
    uds: Option<std::path::PathBuf>,
    ports: Vec<(u32, mpsc::Sender<UnixStream>)>,
}

impl PendingVsock {
    fn build(self, events: EventLoopHandle) -> Result<Vsock, VsockError> {
        log::info!(
            "vsock: guest cid {}{}",
            self.cid,
            self.uds
                .as_ref()
                .map(|p| format!(", host socket {}", p.display()))
                .unwrap_or_default()
        );
        let mut device = Vsock::new(self.cid, VsockBackendConfig { uds_path: self.uds }, events)?;
        for (port, tx) in self.ports {
            device.register_host_port(port, tx);
        }
        Ok(device)
    }
}

/// The vsock device of `cfg`, if any (in-process ports need one).
fn open_vsock(
    cfg: &VmConfig,
    ports: Vec<(u32, mpsc::Sender<UnixStream>)>,
) -> Result<Option<PendingVsock>, VmmError> {
    match &cfg.vsock {
        Some(v) => Ok(Some(PendingVsock {
            cid: v.cid,
            uds: v.uds.clone(),
            ports,
        })),
        None if ports.is_empty() => Ok(None),
        None => Err(VmmError::VsockNeeded),
    }
}

/// What the vCPUs are made from.
struct VcpuParts<'a> {
    vm: &'a VmFd,
    host: HostKind,
    base_cpuid: &'a kvm_bindings::CpuId,
    /// The boot image (none when restoring).
    boot: Option<&'a BootImage>,
    buses: &'a Arc<Buses>,
    mem: &'a GuestMemoryMmap,
    latch: &'a Arc<ExitLatch>,
    keyboard: Arc<Mutex<I8042>>,
    /// Where the vCPUs save their states when paused, and the MSRs to save.
    snapshots: Option<(Arc<vcpu::persist::SavedStates>, Arc<Vec<u32>>)>,
}

/// Shows the refused-access counter of the transport attached last as
/// `hvlite.virtio_mmio.<id>.refused`.
fn register_refusals(metrics: Option<&Metrics>, id: &str, slots: &VirtioMmioSlots) {
    if let (Some(m), Some(counter)) = (metrics, slots.last_refusals()) {
        m.register("virtio_mmio", id, move || {
            serde_json::json!({ "refused": counter.load(std::sync::atomic::Ordering::Relaxed) })
        });
    }
}

/// Creates the vCPUs (booting, or restoring `restore`), calls `before_start`, runs them
/// (parked at first when `paused`) until the VM ends and stops them all.
fn run_vcpus(
    cfg: &VmConfig,
    p: VcpuParts,
    hooks: &RunHooks,
    restore: Option<&persist::Restore>,
    before_start: impl FnOnce() -> Result<(), VmmError>,
    paused: bool,
) -> Result<ExitReason, VmmError> {
    let latch = p.latch;
    let mut vcpus = Vec::with_capacity(usize::from(cfg.cpus));
    for index in 0..cfg.cpus {
        let saved = restore.and_then(|r| r.state.vcpus.get(usize::from(index)));
        let cpuid = match saved {
            Some(s) => kvm_bindings::CpuId::from_entries(&s.cpuid).map_err(|_| {
                persist::SnapshotError::Inconsistent(format!(
                    "vCPU {index} has too many CPUID entries"
                ))
            })?,
            None => {
                let mut cpuid = p.base_cpuid.clone();
                cpuid::customize_cpuid(&mut cpuid, index, cfg.cpus, p.host);
                cpuid
            }
        };
        let mut v = Vcpu::new(
            p.vm,
            index,
            &cpuid,
            p.host,
            p.buses.clone(),
            p.mem.clone(),
            latch.clone(),
        )?;
        if let Some(s) = saved {
            v.restore_state(s)?;
        } else if index == 0
            && let Some(boot) = p.boot
        {
            v.setup_boot(boot.entry, &boot.segments, boot.cr3)?;
        }
        if index == 0
            && let Some(path) = &cfg.guest_profile
        {
            v.enable_profile(path);
        }
        if let Some(m) = &hooks.metrics {
            v.set_exit_counters(m.vcpu_exits());
        }
        if let Some(c) = &hooks.control {
            v.set_pause_gate(c.pause_gate());
        }
        if let Some((states, msrs)) = &p.snapshots {
            v.set_snapshot_slot(states.clone(), msrs.clone());
        }
        vcpus.push(v);
    }
    before_start()?;
    if paused && let Some(c) = &hooks.control {
        c.pause_gate().request_pause();
    }
    vcpu::install_kick_handler().map_err(VmmError::Signal)?;
    let mut threads = Vec::with_capacity(vcpus.len());
    for v in vcpus {
        match v.spawn() {
            Ok(t) => threads.push(t),
            Err(e) => {
                latch.request(ExitReason::Fatal(e.to_string()));
                stop_vcpus(threads);
                return Err(e.into());
            }
        }
    }
    if let Some(c) = &hooks.control {
        c.attach(&threads, p.keyboard);
    }
    let sampler = match (&cfg.guest_profile, threads.first()) {
        (Some(_), Some(boot_cpu)) => {
            let s = vcpu::profile::spawn_sampler(
                boot_cpu,
                vcpu::kick_signal(),
                PROFILE_PERIOD,
                latch.clone(),
            );
            s.inspect_err(|e| log::warn!("guest profiler not started: {e}"))
                .ok()
        }
        _ => None,
    };
    // Every thread of this VM runs: the main thread is filtered from here on.
    if let Err(e) = crate::seccomp::install(crate::seccomp::main_kind()) {
        latch.request(ExitReason::Fatal(e.to_string()));
    }
    let reason = latch.wait();
    if let Some(c) = &hooks.control {
        c.detach();
    }
    if let Some(s) = sampler {
        let _ = s.join();
    }
    stop_vcpus(threads);
    Ok(reason)
}

/// Kicks every vCPU thread out of KVM_RUN until it has seen the exit latch and ended.
fn stop_vcpus(threads: Vec<JoinHandle<()>>) {
    for t in threads {
        while !t.is_finished() {
            // A failed kick means the thread is gone already.
            let _ = t.kill(vcpu::kick_signal());
            std::thread::sleep(Duration::from_millis(1));
        }
        // The thread has finished; a panic in it was already reported on stderr.
        let _ = t.join();
    }
}

fn report_memory(mem: &GuestMemoryMmap) {
    let starts: Vec<u64> = mem.iter().map(|r| r.as_ptr() as u64).collect();
    match process_stats::memory_usage(&starts) {
        Ok(u) => log::info!(
            "memory: RSS {} KiB, guest memory resident {} KiB, VMM own {} KiB",
            u.rss_kib,
            u.guest_kib,
            u.vmm_kib()
        ),
        Err(e) => log::debug!("cannot read memory usage: {e}"),
    }
}
