//! Fuzzes virtio-net's transmit and receive paths: a guest (two queues' geometry and guest
//! memory) and frames waiting on the host side. TX gathers every available chain into a
//! frame and writes it; RX scatters the waiting frames into the guest's chains, mergeable
//! or not. The backend is a SOCK_SEQPACKET socket pair, which keeps frame boundaries as a
//! TAP does. It must never panic.
//!
//! Input: byte 0 bit 0 VIRTIO_NET_F_MRG_RXBUF, bit 1 GUEST_CSUM; byte 1 the number of host
//! frames (mod 8) and bytes 2-3 their length (LE, mod 9000); a TX queue header and an RX
//! queue header (see common/guest.rs, 7 bytes each); the rest is guest memory.

#![no_main]

#[path = "../common/guest.rs"]
mod guest;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, OnceLock};

use hvlite::devices::virtio::FrameIo;
use hvlite::devices::virtio::net::config::rx_frame_capacity;
use hvlite::devices::virtio::net::{NetCounters, NetRxQueue, NetTxQueue, RxConfig};
use libfuzzer_sys::fuzz_target;

/// One end of a SOCK_SEQPACKET pair, as the device's TAP.
struct Wire(OwnedFd);

impl AsRawFd for Wire {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameIo for Wire {}

struct Pair {
    device: Wire,
    host: OwnedFd,
}

fn pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair returns.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "socketpair");
        // SAFETY: both descriptors were just created and are owned by nobody else.
        let (a, b) = unsafe {
            use std::os::fd::FromRawFd;
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        };
        Pair {
            device: Wire(a),
            host: b,
        }
    })
}

/// Reads and drops everything waiting on `fd`.
fn drain(fd: RawFd) {
    let mut buf = [0u8; 65536];
    // SAFETY: `buf` is writable for its whole length.
    while unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) } > 0 {}
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 + 2 * guest::QUEUE_HEADER {
        return;
    }
    let (head, rest) = data.split_at(4);
    let (tx_head, rest) = rest.split_at(guest::QUEUE_HEADER);
    let (rx_head, image) = rest.split_at(guest::QUEUE_HEADER);
    let p = pair();
    drain(p.host.as_raw_fd());
    drain(p.device.as_raw_fd());
    let mem = guest::guest_memory(image);
    let counters = Arc::new(NetCounters::default());
    if let Some(q) = guest::queue(tx_head, &mem) {
        let mut tx = NetTxQueue::new(mem.clone(), q, Arc::clone(&counters));
        let _ = tx.process(&p.device, &guest::NullSignal);
        let _ = tx.process(&p.device, &guest::NullSignal);
    }
    let host = UnixDatagram::from(p.host.try_clone().expect("dup"));
    let frames = head[1] % 8;
    let len = usize::from(u16::from_le_bytes([head[2], head[3]])) % 9000;
    let frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
    for _ in 0..frames {
        let _ = host.send(&frame);
    }
    if let Some(q) = guest::queue(rx_head, &mem) {
        let config = RxConfig {
            mergeable: head[0] & 1 != 0,
            guest_csum: head[0] & 2 != 0,
            frame_capacity: rx_frame_capacity(0, if head[0] & 4 != 0 { 9000 } else { 1500 }),
        };
        let mut rx = NetRxQueue::new(mem, q, counters, config);
        let _ = rx.process(&p.device, &guest::NullSignal, 16);
        let _ = rx.process(&p.device, &guest::NullSignal, 16);
    }
});
