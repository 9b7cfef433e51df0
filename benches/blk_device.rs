//! virtio-blk device-path benchmark, no guest kernel: a host-side driver puts requests in
//! a split virtqueue in guest memory, kicks the queue's eventfd, and a real event loop
//! (event-manager, same thread) runs the `BlockHandler` → `BlockQueue` → request parser →
//! `DiskImage` (preadv/pwritev straight into guest memory) → used ring → interrupt
//! eventfd. The same work is then done with a plain pread/pwrite
//! loop between the same file and the same guest buffers, and the two are compared.
//!
//! Both sides run on a warm page cache (the file is read once before measuring, and the
//! rounds alternate device/raw), so this measures the device path's CPU overhead, not the
//! disk. The device-side timing includes the driver's work (writing descriptors and the
//! avail ring, reading the used ring).
//!
//! Run: `cargo bench --bench blk_device`. Environment:
//! - `HVLITE_BENCH_OUT=path`: also write the JSON there;
//! - `HVLITE_BENCH_MIB=n`: file size in MiB (default 256);
//! - `HVLITE_BENCH_ONLY=rand`: only the random-read comparison (for profiling);
//! - `TMPDIR`: where the scratch file goes (default /tmp); it is removed afterwards.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use hvlite::devices::virtio::block::{BlockCounters, BlockHandler, BlockQueue, DiskImage};
use hvlite::devices::virtio::{Subscriber, VirtioInterrupt};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const QSIZE: u16 = 256;
// Ring layout (virtio-queue's MockSplitQueue overlaps its used ring with the second half
// of a 256-entry avail ring, so the bench lays the rings out itself).
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const MEM_SIZE: usize = 16 << 20;
const HDR_BASE: u64 = 0x1_0000;
const STATUS_BASE: u64 = 0x2_0000;
const DATA_BASE: u64 = 0x10_0000;
const SEQ_REQ: usize = 128 << 10;
const RAND_REQ: usize = 4096;
const RAND_OPS: usize = 200_000;
const ROUNDS: usize = 5;
/// 4 KiB requests per kick.
const RAND_BATCH: usize = 64;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The host-side "driver" and the device, wired through a real kick eventfd.
struct Rig<'m> {
    mem: &'m GuestMemoryMmap,
    em: EventManager<Subscriber>,
    kick: EventFd,
    irq: Arc<VirtioInterrupt>,
    counters: Arc<BlockCounters>,
    avail_idx: u16,
    /// The driver's copy of the avail ring entries.
    avail: [u8; 2 * QSIZE as usize],
}

impl<'m> Rig<'m> {
    fn new(mem: &'m GuestMemoryMmap, disk: Arc<DiskImage>) -> Result<Self> {
        let mut queue = Queue::new(QSIZE)?;
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_ready(true);
        let kick = EventFd::new(EFD_NONBLOCK)?;
        let irq = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK)?));
        let counters = Arc::new(BlockCounters::default());
        let queue = BlockQueue::new(mem.clone(), queue, disk, Arc::clone(&counters));
        let handler = BlockHandler::new(queue, kick.try_clone()?, Arc::clone(&irq));
        let mut em = EventManager::<Subscriber>::new()?;
        let sub: Subscriber = Arc::new(Mutex::new(handler));
        em.add_subscriber(sub);
        Ok(Self {
            mem,
            em,
            kick,
            irq,
            counters,
            avail_idx: 0,
            avail: [0; 2 * QSIZE as usize],
        })
    }

    /// Submits one batch of requests (type, sector) of `len` bytes in `seg`-byte
    /// segments, kicks, runs the event loop until they are used, and checks them. The
    /// driver builds the descriptors, headers and avail entries in local buffers and
    /// copies each into guest memory at once, as a guest writes its own memory.
    fn batch(&mut self, reqs: &[(u32, u64)], len: usize, seg: usize) -> Result<()> {
        let mut descs: Vec<u8> = Vec::with_capacity(16 * usize::from(QSIZE));
        let mut hdrs: Vec<u8> = Vec::with_capacity(16 * reqs.len());
        let mut heads: Vec<u16> = Vec::with_capacity(reqs.len());
        let mut push = |addr: u64, len: usize, flags: u32, next: bool| {
            let index = (descs.len() / 16) as u16;
            let flags = (flags | if next { VRING_DESC_F_NEXT } else { 0 }) as u16;
            let d = RawDescriptor::from(Descriptor::new(addr, len as u32, flags, index + 1));
            descs.extend_from_slice(d.as_slice());
            index
        };
        for (r, &(kind, sector)) in reqs.iter().enumerate() {
            hdrs.extend_from_slice(&kind.to_le_bytes());
            hdrs.extend_from_slice(&[0; 4]);
            hdrs.extend_from_slice(&sector.to_le_bytes());
            let flag = if kind == VIRTIO_BLK_T_IN {
                VRING_DESC_F_WRITE
            } else {
                0
            };
            heads.push(push(HDR_BASE + r as u64 * 16, 16, 0, true));
            let data = DATA_BASE + (r * len) as u64;
            for s in 0..len / seg {
                push(data + (s * seg) as u64, seg, flag, true);
            }
            push(STATUS_BASE + r as u64, 1, VRING_DESC_F_WRITE, false);
        }
        self.mem.write_slice(&descs, GuestAddress(DESC_TABLE))?;
        self.mem.write_slice(&hdrs, GuestAddress(HDR_BASE))?;
        for (r, head) in heads.iter().enumerate() {
            let slot = self.avail_idx.wrapping_add(r as u16) % QSIZE;
            let at = 2 * usize::from(slot);
            self.avail[at..at + 2].copy_from_slice(&head.to_le_bytes());
        }
        self.mem
            .write_slice(&self.avail, GuestAddress(AVAIL_RING + 4))?;
        self.avail_idx = self.avail_idx.wrapping_add(reqs.len() as u16);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(AVAIL_RING + 2))?;

        self.kick.write(1)?;
        self.em.run_with_timeout(5000)?;
        let used: u16 = self.mem.read_obj(GuestAddress(USED_RING + 2))?;
        if u16::from_le(used) != self.avail_idx {
            return Err("the device did not complete the batch".into());
        }
        self.irq.eventfd().read()?;
        let mut status = vec![0xffu8; reqs.len()];
        self.mem
            .read_slice(&mut status, GuestAddress(STATUS_BASE))?;
        if status.iter().any(|&s| s != 0) {
            return Err(format!("request failed: status {status:?}").into());
        }
        Ok(())
    }
}

/// A disk image of `bytes` in a temporary file (removed when the guard drops).
fn scratch_file(bytes: u64) -> Result<(tempfile::TempPath, File)> {
    let (mut file, path) = tempfile::Builder::new()
        .prefix("hvlite-blk-bench-")
        .suffix(".img")
        .tempfile()?
        .into_parts();
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
    for _ in 0..bytes >> 20 {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    Ok((path, file))
}

fn warm(file: &File, bytes: u64) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for off in (0..bytes).step_by(buf.len()) {
        file.read_exact_at(&mut buf, off)?;
    }
    Ok(())
}

/// Random 4 KiB-aligned sectors (xorshift, fixed seed: the same for both sides).
fn random_sectors(bytes: u64) -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let blocks = bytes / RAND_REQ as u64;
    (0..RAND_OPS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % blocks) * (RAND_REQ as u64 / 512)
        })
        .collect()
}

fn device_seq(rig: &mut Rig, kind: u32, bytes: u64, seg: usize) -> Result<Duration> {
    let per_batch = usize::from(QSIZE) / (2 + SEQ_REQ / seg);
    let sectors: Vec<u64> = (0..bytes / SEQ_REQ as u64)
        .map(|i| i * (SEQ_REQ as u64 / 512))
        .collect();
    let start = Instant::now();
    for chunk in sectors.chunks(per_batch) {
        let reqs: Vec<_> = chunk.iter().map(|&s| (kind, s)).collect();
        rig.batch(&reqs, SEQ_REQ, seg)?;
    }
    Ok(start.elapsed())
}

fn device_rand(rig: &mut Rig, sectors: &[u64]) -> Result<Duration> {
    let start = Instant::now();
    for chunk in sectors.chunks(RAND_BATCH) {
        let reqs: Vec<_> = chunk.iter().map(|&s| (VIRTIO_BLK_T_IN, s)).collect();
        rig.batch(&reqs, RAND_REQ, RAND_REQ)?;
    }
    Ok(start.elapsed())
}

/// The raw side moves data between the file and the same guest buffers the device uses
/// (request `r` of a batch at `DATA_BASE + r * len`), so both sides touch the same memory.
fn raw_buffer(mem: &GuestMemoryMmap, r: usize, len: usize) -> Result<*mut libc::c_void> {
    let slice = mem.get_slice(GuestAddress(DATA_BASE + (r * len) as u64), len)?;
    Ok(slice.ptr_guard_mut().as_ptr().cast())
}

fn raw_io(file: &File, buf: *mut libc::c_void, len: usize, off: u64, write: bool) -> Result<()> {
    let ret = if write {
        // SAFETY: `buf` points at `len` bytes of the mapped guest memory (`raw_buffer`),
        // which outlives the call.
        unsafe { libc::pwrite(file.as_raw_fd(), buf, len, off as libc::off_t) }
    } else {
        // SAFETY: as above; the kernel writes only within those `len` bytes.
        unsafe { libc::pread(file.as_raw_fd(), buf, len, off as libc::off_t) }
    };
    if ret != len as isize {
        return Err(format!(
            "raw I/O at {off}: {ret}: {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    Ok(())
}

fn raw_seq(
    mem: &GuestMemoryMmap,
    file: &File,
    write: bool,
    bytes: u64,
    seg: usize,
) -> Result<Duration> {
    let per_batch = usize::from(QSIZE) / (2 + SEQ_REQ / seg);
    let bufs: Vec<_> = (0..per_batch)
        .map(|r| raw_buffer(mem, r, SEQ_REQ))
        .collect::<Result<_>>()?;
    let start = Instant::now();
    for (i, off) in (0..bytes).step_by(SEQ_REQ).enumerate() {
        raw_io(file, bufs[i % per_batch], SEQ_REQ, off, write)?;
    }
    Ok(start.elapsed())
}

fn raw_rand(mem: &GuestMemoryMmap, file: &File, sectors: &[u64]) -> Result<Duration> {
    let bufs: Vec<_> = (0..RAND_BATCH)
        .map(|r| raw_buffer(mem, r, RAND_REQ))
        .collect::<Result<_>>()?;
    let start = Instant::now();
    for (i, &s) in sectors.iter().enumerate() {
        raw_io(file, bufs[i % RAND_BATCH], RAND_REQ, s * 512, false)?;
    }
    Ok(start.elapsed())
}

/// Best of `ROUNDS` alternating runs of each side.
fn compare(
    mut device: impl FnMut() -> Result<Duration>,
    mut raw: impl FnMut() -> Result<Duration>,
) -> Result<(Duration, Duration)> {
    let (mut best_dev, mut best_raw) = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        best_dev = best_dev.min(device()?);
        best_raw = best_raw.min(raw()?);
    }
    Ok((best_dev, best_raw))
}

fn throughput(name: &str, bytes: u64, (dev, raw): (Duration, Duration)) -> String {
    let mib = bytes as f64 / (1u64 << 20) as f64;
    let (d, r) = (mib / dev.as_secs_f64(), mib / raw.as_secs_f64());
    format!(
        "\"{name}\": {{\"device_mib_s\": {d:.1}, \"raw_mib_s\": {r:.1}, \"ratio\": {:.3}}}",
        d / r
    )
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    env_logger::init();
    let mib: u64 = std::env::var("HVLITE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let bytes = mib << 20;
    let (path, file) = scratch_file(bytes)?;
    let json = run(&path, &file, bytes)?;
    println!("{json}");
    if let Ok(out) = std::env::var("HVLITE_BENCH_OUT") {
        std::fs::write(out, format!("{json}\n"))?;
    }
    Ok(())
}

fn run(path: &std::path::Path, file: &File, bytes: u64) -> Result<String> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)])?;
    let disk = Arc::new(DiskImage::open(path, false)?);
    let mut rig = Rig::new(&mem, disk)?;
    warm(file, bytes)?;

    // Sequential: 128 KiB requests, first with the data in one guest buffer (what a
    // guest with contiguous memory sends), then split into 32 page-sized segments (the
    // worst case for a fragmented guest; raw side: the same 128 KiB per pread).
    let only_rand = std::env::var("HVLITE_BENCH_ONLY").is_ok_and(|v| v == "rand");
    let mut seq = Vec::new();
    for (name, kind, seg) in [
        ("seq_read", VIRTIO_BLK_T_IN, SEQ_REQ),
        ("seq_write", VIRTIO_BLK_T_OUT, SEQ_REQ),
        ("seq_read_4k_segments", VIRTIO_BLK_T_IN, 4096),
        ("seq_write_4k_segments", VIRTIO_BLK_T_OUT, 4096),
    ] {
        if only_rand {
            break;
        }
        let write = kind == VIRTIO_BLK_T_OUT;
        let times = compare(
            || device_seq(&mut rig, kind, bytes, seg),
            || raw_seq(&mem, file, write, bytes, seg),
        )?;
        seq.push(throughput(name, bytes, times));
    }
    let sectors = random_sectors(bytes);
    let rand = compare(
        || device_rand(&mut rig, &sectors),
        || raw_rand(&mem, file, &sectors),
    )?;
    let stats = rig.counters.snapshot();
    if stats.errors + stats.dropped + stats.queue_errors != 0 {
        return Err(format!("device errors: {stats:?}").into());
    }

    let ops = RAND_OPS as f64;
    let (di, ri) = (ops / rand.0.as_secs_f64(), ops / rand.1.as_secs_f64());
    Ok(format!(
        "{{ {}\"rand_read_4k\": {{\"device_iops\": {di:.0}, \"raw_iops\": {ri:.0}, \"ratio\": {:.3}}}, \"file_mib\": {}, \"cache\": \"warm\" }}",
        seq.iter().map(|s| format!("{s}, ")).collect::<String>(),
        di / ri,
        bytes >> 20,
    ))
}
