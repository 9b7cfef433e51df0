//! One connection between a guest port and a host stream: its state, the credit-based
//! flow control both ways (virtio 1.2, section 5.10.6.3), and the bytes that wait for the
//! host peer to read them.
//!
//! Guest to host: the device advertises [`CONN_BUF_ALLOC`] bytes of buffer. Payloads are
//! written to the host stream at once; what it does not take waits in `pending` (never
//! more than the advertised buffer: a guest that sends beyond its credit is reset).
//! `fwd_cnt` counts the bytes the host stream took.
//!
//! Host to guest: at most `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes may be in
//! flight, from the guest's latest header.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;
use vm_memory::VolatileSlice;

use super::chain::{append_from, total_len};
use super::config::{CONN_BUF_ALLOC, HOST_CID};
use super::packet::{Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use crate::devices::virtio::FrameIo;

/// A connection's identity: the host-side port and the guest-side port (the guest's CID
/// is fixed, the host's is [`HOST_CID`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Data may flow.
    Established,
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    /// Unique for the device's lifetime: tells a connection from an earlier one with the
    /// same key in queued work.
    pub id: u64,
    pub key: ConnKey,
    pub stream: UnixStream,
    pub state: ConnState,
    /// SHUTDOWN flags the guest sent (cumulative).
    pub peer_shutdown: u32,
    /// SHUTDOWN flags sent to the guest (cumulative).
    pub local_shutdown: u32,
    /// The host stream reached end of file.
    pub host_eof: bool,
    /// The host stream hung up (taken off the event loop; what it holds is still read).
    pub host_hup: bool,
    /// The host stream's write side was shut down (after the guest's SHUTDOWN SEND).
    pub host_write_shut: bool,
    /// Queued to have host data read into the guest's RX buffers.
    pub in_ready: bool,
    /// A CREDIT_UPDATE is queued.
    pub credit_update_queued: bool,
    /// A CREDIT_REQUEST was sent and no credit came since.
    pub credit_request_sent: bool,
    /// What the event loop watches on the host stream (`None`: not registered).
    pub registered: Option<EventSet>,
    /// When the connection is given up (a pending REQUEST or a close in progress).
    pub deadline: Option<Instant>,
    /// Payload bytes received from the guest.
    rx_cnt: Wrapping<u32>,
    /// Of those, bytes the host stream took.
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    last_fwd_sent: Wrapping<u32>,
    /// Bytes from the guest the host stream has not taken yet.
    pending: VecDeque<u8>,
    /// Payload bytes sent to the guest.
    tx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
}

impl Connection {
    pub fn new(id: u64, key: ConnKey, stream: UnixStream, state: ConnState) -> Self {
        Self {
            id,
            key,
            stream,
            state,
            peer_shutdown: 0,
            local_shutdown: 0,
            host_eof: false,
            host_hup: false,
            host_write_shut: false,
            in_ready: false,
            credit_update_queued: false,
            credit_request_sent: false,
            registered: None,
            deadline: None,
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_sent: Wrapping(0),
            pending: VecDeque::new(),
            tx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
        }
    }

    /// Takes the guest's buffer space from a header it sent.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_request_sent = false;
        }
    }

    /// Bytes the guest can take now. A guest that reports more consumed than it was sent
    /// gets nothing.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether host data should go to the guest: established, neither side said it was
    /// done, and the host stream has not ended.
    pub fn sends_to_guest(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.local_shutdown & SHUTDOWN_SEND == 0
    }

    /// Whether the host stream should be read now.
    pub fn wants_host_data(&self) -> bool {
        self.sends_to_guest() && self.peer_credit() > 0
    }

    /// Bytes waiting for the host peer.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// What to watch on the host stream; `None` once it hung up (HUP is reported whatever
    /// the interest, so a hung-up stream left on the loop would fire forever).
    pub fn wanted_events(&self) -> Option<EventSet> {
        if self.host_hup {
            return None;
        }
        let mut set = EventSet::empty();
        if self.wants_host_data() && !self.in_ready {
            set |= EventSet::IN;
        }
        if !self.pending.is_empty() {
            set |= EventSet::OUT;
        }
        Some(set)
    }

    /// Whether the guest may send `len` more bytes: what it sent beyond the consumption
    /// it was told about must fit in the advertised buffer.
    pub fn within_credit(&self, len: usize) -> bool {
        let unacknowledged = (self.rx_cnt - self.last_fwd_sent).0 as usize;
        unacknowledged + len <= CONN_BUF_ALLOC as usize
    }

    /// Writes a guest payload to the host stream; what it does not take now waits.
    pub fn write_from_guest(&mut self, payload: &[VolatileSlice<'_>]) -> io::Result<()> {
        let len = total_len(payload);
        self.rx_cnt += Wrapping(len as u32);
        let mut written = 0;
        if self.pending.is_empty() {
            match self.stream.write_frame(payload) {
                Ok(n) => written = n,
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.fwd_cnt += Wrapping(written as u32);
        if written < len {
            append_from(payload, written, &mut self.pending);
        }
        Ok(())
    }

    /// Writes waiting bytes to the host stream, as many as it takes.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let (a, b) = self.pending.as_slices();
            let n = match self
                .stream
                .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if is_transient(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            self.pending.drain(..n);
            self.fwd_cnt += Wrapping(n as u32);
        }
        Ok(())
    }

    /// Whether the guest should be told about consumed bytes: the free space it last
    /// heard of fell below half the buffer, and there is news.
    pub fn needs_credit_update(&self) -> bool {
        let unacknowledged = (self.rx_cnt - self.last_fwd_sent).0;
        self.fwd_cnt != self.last_fwd_sent && unacknowledged > CONN_BUF_ALLOC / 2
    }

    /// A header from the host side of this connection, with current credit fields (the
    /// guest now knows `fwd_cnt`). An RW header counts its `len` as sent.
    pub fn header(&mut self, guest_cid: u64, op: Op, flags: u32, len: u32) -> Header {
        self.last_fwd_sent = self.fwd_cnt;
        if op == Op::Rw {
            self.tx_cnt += Wrapping(len);
        }
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            socket_type: TYPE_STREAM,
            op: op as u16,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }
}

/// A non-blocking socket that cannot take or give more now.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
