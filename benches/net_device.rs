//! virtio-net TX device-path benchmark, no guest kernel: a host-side driver puts frames
//! in a split TX virtqueue in guest memory, kicks the queue's eventfd, and a real event
//! loop (event-manager, same thread) runs the `NetHandler` → `NetTxQueue` → one writev per
//! chain straight from guest memory into a real TAP → used ring → interrupt eventfd. The
//! same frames are then written with a plain writev loop from the same guest buffers to
//! the same TAP fd, and the two are compared.
//!
//! The TAP (`hvbench0`, created and removed by the bench) is up but has no address, and
//! the frames are addressed to another MAC: the kernel drops them early, so this measures
//! the device path's CPU overhead over the bare syscall. The device-side timing includes
//! the driver's work (avail ring updates, reading the used ring).
//!
//! Cases: `tx_1500` (one 1514-byte frame + header per descriptor) and `tx_64k_tso` (a
//! 64 KiB TCP/IPv4 GSO frame as a Linux guest sends it: header and protocol headers in
//! one descriptor, then 16 page-sized (the last shorter) fragments).
//!
//! Run: `cargo bench --bench net_device` (as root). `HVLITE_BENCH_OUT=path` also writes
//! the JSON there; `HVLITE_BENCH_ONLY=device|raw` runs one side only (for profiling).

use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use hvlite::devices::virtio::net::{
    NetCounters, NetHandler, NetRxQueue, NetTxQueue, RxConfig, Tap,
};
use hvlite::devices::virtio::{Subscriber, VirtioInterrupt};
use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const TAP_NAME: &str = "hvbench0";
const QSIZE: u16 = 256;
const TX_DESC: u64 = 0x0;
const TX_AVAIL: u64 = 0x1000;
const TX_USED: u64 = 0x2000;
const RX_DESC: u64 = 0x4000;
const RX_AVAIL: u64 = 0x5000;
const RX_USED: u64 = 0x6000;
const DATA: u64 = 0x10_0000;
const MEM_SIZE: usize = 64 << 20;
const HDR: usize = 12;
const ROUNDS: usize = 5;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One benchmark case: `chains` chains of `segs` descriptors each, and the frame count.
struct Case {
    name: &'static str,
    /// Descriptor lengths of one chain (the first holds the vnet header).
    segs: Vec<usize>,
    /// Chains per kick.
    batch: usize,
    frames: usize,
}

impl Case {
    fn frame_bytes(&self) -> usize {
        self.segs.iter().sum::<usize>() - HDR
    }

    fn stride(&self) -> usize {
        self.segs.iter().map(|s| s.next_multiple_of(4096)).sum()
    }
}

/// Writes chain `c`'s frame into guest memory: vnet header, Ethernet, IPv4, TCP, payload.
fn write_frame(mem: &GuestMemoryMmap, case: &Case, c: usize, tso: bool) -> Result<()> {
    let len = case.frame_bytes();
    let mut bytes = vec![0u8; HDR + len];
    if tso {
        // NEEDS_CSUM, GSO TCPV4, hdr_len 54, gso_size 1448, csum_start 34, csum_offset 16.
        bytes[0] = 1;
        bytes[1] = 1;
        bytes[2..4].copy_from_slice(&54u16.to_le_bytes());
        bytes[4..6].copy_from_slice(&1448u16.to_le_bytes());
        bytes[6..8].copy_from_slice(&34u16.to_le_bytes());
        bytes[8..10].copy_from_slice(&16u16.to_le_bytes());
    }
    let f = &mut bytes[HDR..];
    f[..6].copy_from_slice(&[0x02, 0xbe, 0xef, 0, 0, 0x01]); // not the TAP's MAC
    f[6..12].copy_from_slice(&[0x02, 0xbe, 0xef, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[46] = 0x50; // TCP data offset 5
    let mut at = 0usize;
    for (s, &seg) in case.segs.iter().enumerate() {
        let addr = seg_addr(case, c, s);
        mem.write_slice(&bytes[at..at + seg], GuestAddress(addr))?;
        at += seg;
    }
    Ok(())
}

fn seg_addr(case: &Case, c: usize, s: usize) -> u64 {
    let before: usize = case.segs[..s]
        .iter()
        .map(|x| x.next_multiple_of(4096))
        .sum();
    DATA + (c * case.stride() + before) as u64
}

/// The host-side driver and the device, wired through a real kick eventfd.
struct Rig<'m> {
    mem: &'m GuestMemoryMmap,
    em: EventManager<Subscriber>,
    kick: EventFd,
    irq: Arc<VirtioInterrupt>,
    counters: Arc<NetCounters>,
    avail_idx: u16,
}

fn queue(desc: u64, avail: u64, used: u64) -> Result<Queue> {
    let mut q = Queue::new(QSIZE)?;
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    Ok(q)
}

impl<'m> Rig<'m> {
    fn new(mem: &'m GuestMemoryMmap, tap: Arc<Tap>) -> Result<Self> {
        let counters = Arc::new(NetCounters::default());
        let config = RxConfig {
            mergeable: true,
            guest_csum: true,
            frame_capacity: 65566,
        };
        let rx = NetRxQueue::new(
            mem.clone(),
            queue(RX_DESC, RX_AVAIL, RX_USED)?,
            Arc::clone(&counters),
            config,
        );
        let tx = NetTxQueue::new(
            mem.clone(),
            queue(TX_DESC, TX_AVAIL, TX_USED)?,
            Arc::clone(&counters),
        );
        let kick = EventFd::new(EFD_NONBLOCK)?;
        let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK)?));
        let handler = NetHandler::new(
            tap,
            rx,
            tx,
            EventFd::new(EFD_NONBLOCK)?,
            kick.try_clone()?,
            Arc::clone(&irq),
        );
        let mut em = EventManager::<Subscriber>::new()?;
        em.add_subscriber(Arc::new(Mutex::new(handler)));
        Ok(Self {
            mem,
            em,
            kick,
            irq,
            counters,
            avail_idx: 0,
        })
    }

    /// Lays out the descriptor table (chains of `case`) and the whole avail ring once:
    /// slot `s` offers chain `s % batch`, so each batch only moves the avail index.
    fn prepare(&mut self, case: &Case) -> Result<()> {
        let per = case.segs.len();
        let mut descs = Vec::new();
        for c in 0..case.batch {
            for (s, &seg) in case.segs.iter().enumerate() {
                let next = s + 1 < per;
                let flags = if next { VRING_DESC_F_NEXT as u16 } else { 0 };
                let index = (c * per + s + 1) as u16;
                let d = Descriptor::new(seg_addr(case, c, s), seg as u32, flags, index);
                descs.extend_from_slice(RawDescriptor::from(d).as_slice());
            }
        }
        self.mem.write_slice(&descs, GuestAddress(TX_DESC))?;
        let mut ring = Vec::new();
        for slot in 0..usize::from(QSIZE) {
            ring.extend_from_slice(&(((slot % case.batch) * per) as u16).to_le_bytes());
        }
        self.mem.write_slice(&ring, GuestAddress(TX_AVAIL + 4))?;
        Ok(())
    }

    fn batch(&mut self, n: usize) -> Result<()> {
        self.avail_idx = self.avail_idx.wrapping_add(n as u16);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(TX_AVAIL + 2))?;
        self.kick.write(1)?;
        self.em.run_with_timeout(5000)?;
        let used: u16 = self.mem.read_obj(GuestAddress(TX_USED + 2))?;
        if u16::from_le(used) != self.avail_idx {
            return Err("the device did not complete the batch".into());
        }
        self.irq.eventfd().read()?;
        Ok(())
    }
}

fn device_run(rig: &mut Rig, case: &Case) -> Result<Duration> {
    rig.prepare(case)?;
    let start = Instant::now();
    let mut left = case.frames;
    while left > 0 {
        let n = left.min(case.batch);
        rig.batch(n)?;
        left -= n;
    }
    Ok(start.elapsed())
}

fn raw_run(mem: &GuestMemoryMmap, tap: &Tap, case: &Case) -> Result<Duration> {
    let mut chains: Vec<Vec<libc::iovec>> = Vec::new();
    for c in 0..case.batch {
        let mut iovs = Vec::new();
        for (s, &seg) in case.segs.iter().enumerate() {
            let slice = mem.get_slice(GuestAddress(seg_addr(case, c, s)), seg)?;
            iovs.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: seg,
            });
        }
        chains.push(iovs);
    }
    let fd = tap.as_raw_fd();
    let start = Instant::now();
    for i in 0..case.frames {
        let iovs = &chains[i % case.batch];
        // SAFETY: the iovecs point into the mapped guest memory, which outlives the loop.
        let n = unsafe { libc::writev(fd, iovs.as_ptr(), iovs.len() as i32) };
        if n < 0 {
            return Err(format!("writev: {}", std::io::Error::last_os_error()).into());
        }
    }
    Ok(start.elapsed())
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    env_logger::init();
    let tap = Arc::new(Tap::open(TAP_NAME)?);
    let up = std::process::Command::new("ip")
        .args(["link", "set", TAP_NAME, "up"])
        .status()?;
    if !up.success() {
        return Err(format!("cannot bring {TAP_NAME} up").into());
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])?;
    let mut rig = Rig::new(&mem, Arc::clone(&tap))?;
    let mut seg64k = vec![HDR + 54];
    // A 64 KiB frame: 54 bytes of headers, 15 pages and the rest in a 16th fragment.
    seg64k.extend([4096; 15]);
    seg64k.push(65536 - 54 - 15 * 4096);
    let cases = [
        Case {
            name: "tx_1500",
            segs: vec![HDR + 1514],
            batch: 128,
            frames: 200_000,
        },
        Case {
            name: "tx_64k_tso",
            segs: seg64k,
            batch: 14,
            frames: 20_000,
        },
    ];
    let only = std::env::var("HVLITE_BENCH_ONLY").ok();
    let only = only.as_deref();
    let mut parts = Vec::new();
    for case in &cases {
        let tso = case.frame_bytes() > 1514;
        for c in 0..case.batch {
            write_frame(&mem, case, c, tso)?;
        }
        let (mut dev, mut raw) = (Duration::MAX, Duration::MAX);
        for _ in 0..ROUNDS {
            if only != Some("raw") {
                dev = dev.min(device_run(&mut rig, case)?);
            }
            if only != Some("device") {
                raw = raw.min(raw_run(&mem, &tap, case)?);
            }
        }
        let frames = case.frames as f64;
        let bits = frames * (case.frame_bytes() * 8) as f64;
        let (d, r) = (dev.as_secs_f64(), raw.as_secs_f64());
        parts.push(format!(
            "\"{}\": {{\"frame_bytes\": {}, \"device_mpps\": {:.3}, \"device_gbit_s\": {:.2}, \
             \"raw_mpps\": {:.3}, \"raw_gbit_s\": {:.2}, \"ratio\": {:.3}}}",
            case.name,
            case.frame_bytes(),
            frames / d / 1e6,
            bits / d / 1e9,
            frames / r / 1e6,
            bits / r / 1e9,
            r / d,
        ));
    }
    let stats = rig.counters.snapshot();
    if stats.tx_dropped + stats.tx_errors + stats.queue_errors != 0 {
        return Err(format!("device errors: {stats:?}").into());
    }
    let json = format!("{{ {} }}", parts.join(", "));
    println!("{json}");
    if let Ok(out) = std::env::var("HVLITE_BENCH_OUT") {
        std::fs::write(out, format!("{json}\n"))?;
    }
    Ok(())
}
