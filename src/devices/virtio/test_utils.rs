//! Helpers shared by the device unit tests: guest memory and descriptors, a signal
//! recorder, a device event loop on its own thread (what the VMM runs), and waiting for a
//! condition.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::EventManager;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{EventLoopHandle, QueueSignal, Subscriber};

/// An event manager run on a thread until dropped.
pub struct EventLoop {
    pub handle: EventLoopHandle,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    pub fn start() -> Self {
        let mut em = EventManager::<Subscriber>::new().expect("event manager");
        let handle = em.remote_endpoint();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                em.run_with_timeout(20).expect("event loop");
            }
        });
        Self {
            handle,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("event loop thread");
        }
    }
}

/// Polls `cond` every 2 ms for up to 3 s; panics naming `what` if it never holds.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Guest memory: queues below 0x10_0000, buffers above.
pub const MEM_SIZE: usize = 0x100_0000;
/// Where buffers go.
pub const BUF: u64 = 0x10_0000;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory")
}

/// A descriptor with explicit flags and next index.
pub fn raw(addr: u64, len: u32, write: bool, next: Option<u16>) -> RawDescriptor {
    let mut flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
    if next.is_some() {
        flags |= VRING_DESC_F_NEXT as u16;
    }
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next.unwrap_or(0)))
}

/// A one-descriptor device-writable chain.
pub fn wr(addr: u64, len: u32) -> RawDescriptor {
    raw(addr, len, true, None)
}

/// A one-descriptor device-readable chain.
pub fn rd(addr: u64, len: u32) -> RawDescriptor {
    raw(addr, len, false, None)
}

pub fn get_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).expect("read");
    v
}

pub fn put_bytes(mem: &GuestMemoryMmap, addr: u64, data: &[u8]) {
    mem.write_slice(data, GuestAddress(addr)).expect("write");
}

/// Counts the signals the queues raise.
#[derive(Debug, Default)]
pub struct Signals {
    pub used: AtomicUsize,
    pub reset: AtomicUsize,
}

impl Signals {
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    pub fn reset(&self) -> usize {
        self.reset.load(Ordering::SeqCst)
    }
}

impl QueueSignal for Signals {
    fn signal_used_queue(&self) -> io::Result<()> {
        self.used.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn signal_needs_reset(&self) -> io::Result<()> {
        self.reset.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
