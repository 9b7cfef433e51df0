//! Helpers for the virtio-vsock unit tests: a driver-side view of a split ring that wraps
//! correctly (the mock queue's does not past its size), and a harness that plays the
//! guest driver against a [`VsockHandler`] on a real event manager.

use std::collections::HashMap;
use std::io::{self, Read};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::config::Timeouts;
use super::counters::VsockCounters;
use super::handler::{VsockHandler, VsockQueues};
use super::host::Backend;
use super::muxer::Muxer;
use super::packet::{HDR_LEN, Header, Op, TYPE_STREAM};
use super::ring::Ring;
use super::rx::VsockRxQueue;
use super::tx::VsockTxQueue;
use crate::devices::virtio::test_utils::{get_bytes, guest_memory, put_bytes, raw};
use crate::devices::virtio::{Subscriber, VirtioInterrupt};

/// Queue size used by the tests.
pub const QS: u16 = 64;
/// The guest's CID.
pub const GUEST_CID: u64 = 3;
/// Where the RX, TX and event rings go.
pub const RXQ: u64 = 0;
pub const TXQ: u64 = 0x8_0000;
pub const EVQ: u64 = 0xc_0000;
/// RX buffers: one slot per descriptor index.
pub const RX_BUF: u64 = 0x10_0000;
/// TX buffers: one slot per descriptor index.
pub const TX_BUF: u64 = 0x60_0000;
/// Bytes per buffer slot (a header and a 64 KiB payload fit).
pub const SLOT: u64 = 0x1_1000;
/// The guest's receive buffer per connection, as it advertises it.
pub const GUEST_BUF_ALLOC: u32 = 256 * 1024;

/// A descriptor: address, length, device-writable.
pub type Desc = (u64, u32, bool);

/// The driver's side of a split ring in guest memory.
#[derive(Debug)]
pub struct GuestRing {
    mem: GuestMemoryMmap,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    next_desc: u16,
    avail_idx: Wrapping<u16>,
    used_seen: Wrapping<u16>,
    outstanding: HashMap<u16, Vec<Desc>>,
}

impl GuestRing {
    /// A ring at `base` and the device's queue for it. (The mock queue's layout puts the
    /// used ring inside the available ring beyond half its size.)
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> (Self, Queue) {
        let n = u64::from(size);
        let desc = GuestAddress(base);
        let avail = desc.unchecked_add(16 * n);
        let used = avail.unchecked_add(6 + 2 * n).unchecked_align_up(4);
        let zeros = vec![0u8; (used.0 + 6 + 8 * n - base) as usize];
        put_bytes(mem, base, &zeros);
        let mut queue = Queue::new(size).expect("queue");
        queue.set_size(size);
        queue.set_ready(true);
        queue.set_desc_table_address(Some(desc.0 as u32), Some((desc.0 >> 32) as u32));
        queue.set_avail_ring_address(Some(avail.0 as u32), Some((avail.0 >> 32) as u32));
        queue.set_used_ring_address(Some(used.0 as u32), Some((used.0 >> 32) as u32));
        let ring = Self {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: Wrapping(0),
            used_seen: Wrapping(0),
            outstanding: HashMap::new(),
        };
        (ring, queue)
    }

    /// The descriptor index the next chain starts at.
    pub fn next_head(&self) -> u16 {
        self.next_desc
    }

    /// Makes `descs` one available chain; returns its head index.
    pub fn add(&mut self, descs: &[Desc]) -> u16 {
        let busy: usize = self.outstanding.values().map(Vec::len).sum();
        assert!(busy + descs.len() <= usize::from(self.size), "ring full");
        let head = self.next_desc;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (idx + 1) % self.size;
            let next = (i + 1 < descs.len()).then_some(self.next_desc);
            let at = self.desc.unchecked_add(16 * u64::from(idx));
            self.mem
                .write_obj(raw(addr, len, write, next), at)
                .expect("descriptor");
        }
        self.publish(head);
        let old = self.outstanding.insert(head, descs.to_vec());
        assert!(old.is_none(), "chain {head} posted twice");
        head
    }

    /// Puts `head` in the available ring.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx.0 % self.size);
        let entry = self.avail.unchecked_add(4 + 2 * slot);
        self.mem
            .write_obj(head.to_le(), entry)
            .expect("avail entry");
        self.avail_idx += Wrapping(1);
        self.set_avail_idx(self.avail_idx.0);
    }

    /// Writes the available index (tests corrupt it this way).
    pub fn set_avail_idx(&self, idx: u16) {
        let at = self.avail.unchecked_add(2);
        self.mem.write_obj(idx.to_le(), at).expect("avail idx");
    }

    /// Chains the device used since the last call: (descriptors, used length).
    pub fn take_used(&mut self) -> Vec<(Vec<Desc>, u32)> {
        let idx: u16 = self
            .mem
            .read_obj(self.used.unchecked_add(2))
            .expect("used idx");
        let mut out = Vec::new();
        while self.used_seen.0 != u16::from_le(idx) {
            let slot = u64::from(self.used_seen.0 % self.size);
            let elem = self.used.unchecked_add(4 + 8 * slot);
            let id: u32 = self.mem.read_obj(elem).expect("used id");
            let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).expect("used len");
            let head = u16::try_from(u32::from_le(id)).expect("head");
            let descs = self
                .outstanding
                .remove(&head)
                .unwrap_or_else(|| panic!("the device used chain {head}, not outstanding"));
            out.push((descs, u32::from_le(len)));
            self.used_seen += Wrapping(1);
        }
        out
    }

    /// Chains posted and not used yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

/// A packet as the guest receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub hdr: Header,
    pub data: Vec<u8>,
}

impl Received {
    pub fn op(&self) -> Option<Op> {
        self.hdr.op()
    }
}

/// A header from the guest (CID [`GUEST_CID`]) to the host.
pub fn guest_hdr(op: Op, guest_port: u32, host_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: super::config::HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        socket_type: TYPE_STREAM,
        op: op as u16,
        buf_alloc: GUEST_BUF_ALLOC,
        ..Header::default()
    }
}

/// The guest driver, the device's queues and handler, and the event manager it runs on.
pub struct Harness {
    pub mem: GuestMemoryMmap,
    pub rx: GuestRing,
    pub tx: GuestRing,
    pub rx_kick: EventFd,
    pub tx_kick: EventFd,
    pub irq: Arc<VirtioInterrupt>,
    pub counters: Arc<VsockCounters>,
    pub handler: Arc<Mutex<VsockHandler>>,
    em: EventManager<Subscriber>,
}

impl Harness {
    /// A device over `backend` with default timeouts.
    pub fn new(backend: Backend) -> Self {
        Self::with(backend, Timeouts::default(), |_| {})
    }

    /// A device over `backend` with `timeouts`; `tune` adjusts the multiplexer first.
    pub fn with(backend: Backend, timeouts: Timeouts, tune: impl FnOnce(&mut Muxer)) -> Self {
        let mem = guest_memory();
        let (rx, rxq) = GuestRing::new(&mem, RXQ, QS);
        let (tx, txq) = GuestRing::new(&mem, TXQ, QS);
        let (_, evq) = GuestRing::new(&mem, EVQ, QS);
        let counters = Arc::new(VsockCounters::default());
        let rx_kick = EventFd::new(EFD_NONBLOCK).expect("kick");
        let tx_kick = EventFd::new(EFD_NONBLOCK).expect("kick");
        let irq = Arc::new(VirtioInterrupt::new(
            EventFd::new(EFD_NONBLOCK).expect("irq"),
        ));
        let queues = VsockQueues {
            rx: VsockRxQueue::new(Ring::new(mem.clone(), rxq, Arc::clone(&counters))),
            tx: VsockTxQueue::new(Ring::new(mem.clone(), txq, Arc::clone(&counters))),
            event: evq,
            rx_kick: rx_kick.try_clone().expect("clone"),
            tx_kick: tx_kick.try_clone().expect("clone"),
        };
        let mut muxer = Muxer::new(
            GUEST_CID,
            Arc::new(backend),
            Arc::clone(&counters),
            timeouts,
        )
        .expect("muxer");
        tune(&mut muxer);
        let handler = Arc::new(Mutex::new(VsockHandler::new(
            queues,
            muxer,
            Arc::clone(&irq),
        )));
        let mut em = EventManager::<Subscriber>::new().expect("event manager");
        let sub: Subscriber = handler.clone();
        em.add_subscriber(sub);
        Self {
            mem,
            rx,
            tx,
            rx_kick,
            tx_kick,
            irq,
            counters,
            handler,
            em,
        }
    }

    /// Runs the event loop until nothing is ready; panics if it never settles (a busy
    /// loop).
    pub fn run(&mut self) {
        for _ in 0..10_000 {
            if self.em.run_with_timeout(0).expect("run") == 0 {
                return;
            }
        }
        panic!("the event loop never went idle");
    }

    /// Runs the event loop for `ms` milliseconds at most; returns the events seen.
    pub fn run_for(&mut self, ms: i32) -> usize {
        self.em.run_with_timeout(ms).expect("run")
    }

    /// Whether nothing fires within 50 ms.
    pub fn quiet(&mut self) -> bool {
        self.run_for(50) == 0
    }

    /// The handler, locked.
    pub fn handler(&self) -> MutexGuard<'_, VsockHandler> {
        self.handler.lock().expect("handler")
    }

    /// Posts `n` RX buffers of `len` bytes each, kicks and runs.
    pub fn post_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            let slot = self.rx.next_head();
            self.rx.add(&[(RX_BUF + u64::from(slot) * SLOT, len, true)]);
        }
        self.rx_kick.write(1).expect("kick");
        self.run();
    }

    /// Sends one packet (header and payload in separate descriptors), kicks and runs.
    pub fn send(&mut self, mut hdr: Header, payload: &[u8]) {
        hdr.len = payload.len() as u32;
        let base = TX_BUF + u64::from(self.tx.next_head()) * SLOT;
        put_bytes(&self.mem, base, &hdr.to_bytes());
        put_bytes(&self.mem, base + HDR_LEN as u64, payload);
        let mut descs = vec![(base, HDR_LEN as u32, false)];
        if !payload.is_empty() {
            descs.push((base + HDR_LEN as u64, payload.len() as u32, false));
        }
        self.send_chain(&descs);
    }

    /// Makes `descs` a TX chain, kicks and runs.
    pub fn send_chain(&mut self, descs: &[Desc]) {
        self.tx.add(descs);
        self.tx_kick.write(1).expect("kick");
        self.run();
        self.tx.take_used();
    }

    /// The address of the TX slot the next chain starts at.
    pub fn next_tx_slot(&self) -> u64 {
        TX_BUF + u64::from(self.tx.next_head()) * SLOT
    }

    /// Packets the device put into RX buffers since the last call.
    pub fn recv(&mut self) -> Vec<Received> {
        let used = self.rx.take_used();
        used.into_iter()
            .filter(|(_, len)| *len as usize >= HDR_LEN)
            .map(|(descs, len)| {
                let addr = descs[0].0;
                let raw: [u8; HDR_LEN] = get_bytes(&self.mem, addr, HDR_LEN)
                    .try_into()
                    .expect("header");
                let hdr = Header::from_bytes(&raw);
                let data = get_bytes(&self.mem, addr + HDR_LEN as u64, len as usize - HDR_LEN);
                assert_eq!(
                    hdr.len as usize,
                    data.len(),
                    "used length matches the header"
                );
                Received { hdr, data }
            })
            .collect()
    }

    /// Opens a guest-initiated connection from guest port `guest` to host port `host`
    /// and checks the RESPONSE (needs an RX buffer).
    pub fn connect(&mut self, guest: u32, host: u32) {
        self.send(guest_hdr(Op::Request, guest, host), &[]);
        let got = self.recv();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].op(), Some(Op::Response));
        assert_eq!((got[0].hdr.src_port, got[0].hdr.dst_port), (host, guest));
    }
}

/// Reads what a non-blocking host stream holds now; `None` at end of file.
pub fn read_now(stream: &mut UnixStream) -> Option<Vec<u8>> {
    stream.set_nonblocking(true).expect("non-blocking");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return if out.is_empty() { None } else { Some(out) },
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(out),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// A recognisable byte pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 8) as u8)
        })
        .collect()
}

/// A harness whose host port `port` is served in-process, with 8 RX buffers posted.
pub fn with_port(port: u32) -> (Harness, Receiver<UnixStream>) {
    with_port_rx(port, 8)
}

/// A harness whose host port `port` is served in-process, with `rx` RX buffers posted.
pub fn with_port_rx(port: u32, rx: usize) -> (Harness, Receiver<UnixStream>) {
    let backend = Backend::bind(None).expect("backend");
    let (tx, streams) = channel();
    backend.register_port(port, tx);
    let mut h = Harness::new(backend);
    h.post_rx(rx, 4096);
    (h, streams)
}
