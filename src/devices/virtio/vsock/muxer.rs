//! The connection multiplexer: the table of connections between guest ports and host
//! streams, the header-only packets waiting for RX buffers, the host streams with data
//! for the guest, and the one timer behind every timeout. Knows nothing about queues:
//! [`from_guest`](super::from_guest) takes the guest's packets, [`to_guest`](super::to_guest)
//! fills RX buffers, [`host_events`](super::host_events) reacts to the host sockets.
//!
//! Host streams are registered on the event loop with the stream's fd as event data;
//! the fixed sources use data values no fd can have ([`LISTENER_EVENT`], ...).
//!
//! Nothing grows without bound: at most [`MAX_CONNECTIONS`] connections, each with at
//! most [`CONN_BUF_ALLOC`](super::config::CONN_BUF_ALLOC) buffered bytes and one queued
//! packet of each kind, at most [`MAX_PENDING_HOST`](super::config::MAX_PENDING_HOST)
//! half-open host peers and [`MAX_ORPHAN_CONTROL`] queued RSTs.

use std::collections::{HashMap, VecDeque};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use vmm_sys_util::timerfd::TimerFd;

use super::config::{FIRST_LOCAL_PORT, HOST_CID, MAX_CONNECTIONS, MAX_ORPHAN_CONTROL, Timeouts};
use super::connection::{ConnKey, Connection};
use super::counters::{VsockCounters, WarnLimiter};
use super::host::{Backend, PendingHost};
use super::packet::{Header, Op, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Event data of the listener.
pub const LISTENER_EVENT: u32 = u32::MAX - 8;
/// Event data of the timer.
pub const TIMER_EVENT: u32 = u32::MAX - 9;

/// Why the multiplexer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("cannot create the timer")]
    Timer(#[source] std::io::Error),
}

/// A header-only packet waiting for an RX buffer.
#[derive(Debug, Clone, Copy)]
pub(super) enum Control {
    /// About a live connection: built when sent, so its credit fields are fresh. Skipped
    /// if the connection is gone by then.
    Conn {
        key: ConnKey,
        id: u64,
        op: Op,
        flags: u32,
    },
    /// About no (more) connection: an RST.
    Orphan(Header),
}

/// The connections of one activated device.
#[derive(Debug)]
pub struct Muxer {
    pub(super) guest_cid: u64,
    pub(super) backend: Arc<Backend>,
    pub(super) counters: Arc<VsockCounters>,
    pub(super) timeouts: Timeouts,
    pub(super) conns: HashMap<ConnKey, Connection>,
    pub(super) by_fd: HashMap<RawFd, ConnKey>,
    pub(super) pending: HashMap<RawFd, PendingHost>,
    pub(super) control: VecDeque<Control>,
    pub(super) orphans: usize,
    /// Connections whose host stream has data for the guest (key, id).
    pub(super) ready: VecDeque<(ConnKey, u64)>,
    pub(super) next_id: u64,
    pub(super) next_local_port: u32,
    pub(super) timer: TimerFd,
    pub(super) timer_at: Option<Instant>,
    /// The listener is off the loop until then (accept failed, e.g. out of fds).
    pub(super) listener_paused: Option<Instant>,
    pub(super) warn: WarnLimiter,
    /// Most connections at once ([`MAX_CONNECTIONS`]; tests lower it).
    pub(super) max_connections: usize,
}

impl Muxer {
    /// A multiplexer for the guest with context ID `guest_cid`.
    pub fn new(
        guest_cid: u64,
        backend: Arc<Backend>,
        counters: Arc<VsockCounters>,
        timeouts: Timeouts,
    ) -> Result<Self, MuxerError> {
        let timer = TimerFd::new().map_err(|e| MuxerError::Timer(e.into()))?;
        set_nonblocking(timer.as_raw_fd()).map_err(MuxerError::Timer)?;
        Ok(Self {
            guest_cid,
            backend,
            counters,
            timeouts,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            pending: HashMap::new(),
            control: VecDeque::new(),
            orphans: 0,
            ready: VecDeque::new(),
            next_id: 0,
            next_local_port: FIRST_LOCAL_PORT,
            timer,
            timer_at: None,
            listener_paused: None,
            warn: WarnLimiter::new(),
            max_connections: MAX_CONNECTIONS,
        })
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Host peers that have not finished their `CONNECT` line.
    pub fn pending_host_count(&self) -> usize {
        self.pending.len()
    }

    /// A connection, for tests and diagnostics.
    pub fn connection(&self, key: &ConnKey) -> Option<&Connection> {
        self.conns.get(key)
    }

    /// Header-only packets waiting for RX buffers.
    pub fn queued_control(&self) -> usize {
        self.control.len()
    }

    /// Whether the timer is armed.
    pub fn timer_armed(&self) -> bool {
        self.timer_at.is_some()
    }

    /// Whether there is something to put into RX buffers.
    pub fn has_rx_work(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// Registers the listener and the timer.
    pub fn init(&mut self, ops: &mut EventOps) {
        self.watch_listener(ops, true);
        let timer = Events::with_data(&self.timer, TIMER_EVENT, EventSet::IN);
        if let Err(e) = ops.add(timer) {
            log::error!("virtio-vsock: cannot register the timer: {e}");
        }
    }

    pub(super) fn watch_listener(&self, ops: &mut EventOps, watch: bool) {
        let Some(listener) = self.backend.listener() else {
            return;
        };
        let events = Events::with_data(listener, LISTENER_EVENT, EventSet::IN);
        let result = if watch {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        if let Err(e) = result {
            log::error!("virtio-vsock: cannot (un)register the listener: {e}");
        }
    }

    pub(super) fn next_conn_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Adds a connection whose stream is not on the event loop yet (or is registered
    /// with `registered` under its fd).
    pub(super) fn insert(&mut self, conn: Connection, ops: &mut EventOps) {
        let key = conn.key;
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.refresh(key, ops);
    }

    /// Brings the event-loop registration of `key`'s stream in line with its state, and
    /// queues a hung-up stream that still has data for the guest (no event will come).
    pub(super) fn refresh(&mut self, key: ConnKey, ops: &mut EventOps) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.host_hup && conn.wants_host_data() && !conn.in_ready {
            conn.in_ready = true;
            self.ready.push_back((key, conn.id));
        }
        let want = conn.wanted_events();
        if want == conn.registered {
            return;
        }
        let fd = conn.stream.as_raw_fd();
        let result = match (conn.registered, want) {
            (None, Some(set)) => ops.add(Events::with_data_raw(fd, fd as u32, set)),
            (Some(_), Some(set)) => ops.modify(Events::with_data_raw(fd, fd as u32, set)),
            (Some(old), None) => ops.remove(Events::with_data_raw(fd, fd as u32, old)),
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => conn.registered = want,
            Err(e) => log::error!("virtio-vsock: cannot (un)register a host stream: {e}"),
        }
    }

    /// Drops a connection and closes its host stream (taken off the loop first). Work
    /// queued for it goes too, so a guest that opens and resets connections while it
    /// posts no RX buffers cannot make the queues grow.
    pub(super) fn remove(&mut self, key: ConnKey, ops: &mut EventOps) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        let id = conn.id;
        self.ready.retain(|&(_, i)| i != id);
        self.control
            .retain(|c| !matches!(c, Control::Conn { id: i, .. } if *i == id));
        let fd = conn.stream.as_raw_fd();
        self.by_fd.remove(&fd);
        if let Some(set) = conn.registered
            && let Err(e) = ops.remove(Events::with_data_raw(fd, fd as u32, set))
        {
            log::error!("virtio-vsock: cannot unregister a host stream: {e}");
        }
    }

    /// Resets a connection: RST to the guest, host stream closed.
    pub(super) fn reset(&mut self, key: ConnKey, ops: &mut EventOps) {
        if self.conns.contains_key(&key) {
            self.remove(key, ops);
            let rst = self.host_rst(key.local_port, key.peer_port, TYPE_STREAM);
            self.queue_orphan(rst);
        }
    }

    /// An RST from host port `local` to guest port `peer`.
    pub(super) fn host_rst(&self, local: u32, peer: u32, socket_type: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local,
            dst_port: peer,
            socket_type,
            op: Op::Rst as u16,
            ..Header::default()
        }
    }

    /// Queues an RST that belongs to no connection (dropped when too many wait).
    pub(super) fn queue_orphan(&mut self, hdr: Header) {
        if self.orphans >= MAX_ORPHAN_CONTROL {
            VsockCounters::inc(&self.counters.dropped);
            return;
        }
        self.orphans += 1;
        self.control.push_back(Control::Orphan(hdr));
    }

    /// Queues a header-only packet about a live connection.
    pub(super) fn queue_control(&mut self, key: ConnKey, op: Op, flags: u32) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if op == Op::CreditUpdate {
            if conn.credit_update_queued {
                return;
            }
            conn.credit_update_queued = true;
        }
        let id = conn.id;
        self.control.push_back(Control::Conn { key, id, op, flags });
    }

    /// Tells the guest what the host side is done with: SEND once the host stream
    /// ended, RCV as well once it hung up. With both, the connection waits for the
    /// guest's RST, for at most the close timeout.
    pub(super) fn update_local_shutdown(&mut self, key: ConnKey) {
        let close_at = Instant::now() + self.timeouts.close;
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let mut want = 0;
        if conn.host_eof {
            want |= SHUTDOWN_SEND;
            if conn.host_hup {
                want |= SHUTDOWN_RCV;
            }
        }
        if want & !conn.local_shutdown == 0 {
            return;
        }
        conn.local_shutdown |= want;
        let flags = conn.local_shutdown;
        if flags == SHUTDOWN_BOTH {
            conn.deadline = Some(close_at);
        }
        self.queue_control(key, Op::Shutdown, flags);
        if flags == SHUTDOWN_BOTH {
            self.schedule(close_at);
        }
    }

    /// After guest data was written or flushed: shuts the host stream's write side once
    /// the guest is done sending and everything went out; closes the connection cleanly
    /// (RST) once the guest is done both ways; asks for a credit update when due.
    pub(super) fn after_host_write(&mut self, key: ConnKey, ops: &mut EventOps) {
        let close_at = Instant::now() + self.timeouts.close;
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let flushed = conn.pending_len() == 0;
        if flushed && conn.peer_shutdown & SHUTDOWN_SEND != 0 && !conn.host_write_shut {
            conn.host_write_shut = true;
            if let Err(e) = conn.stream.shutdown(std::net::Shutdown::Write) {
                log::debug!("virtio-vsock: cannot shut down a host stream: {e}");
            }
        }
        if conn.peer_shutdown == SHUTDOWN_BOTH {
            if flushed {
                self.reset(key, ops);
                return;
            }
            if conn.deadline.is_none() {
                conn.deadline = Some(close_at);
                self.schedule(close_at);
            }
        }
        let update = self
            .conns
            .get(&key)
            .is_some_and(Connection::needs_credit_update);
        if update {
            self.queue_control(key, Op::CreditUpdate, 0);
        }
        self.refresh(key, ops);
    }

    /// A host port for a host-initiated connection: counts up from
    /// [`FIRST_LOCAL_PORT`], skipping ports in use.
    pub(super) fn alloc_local_port(&mut self) -> Option<u32> {
        for _ in 0..=self.max_connections {
            let port = self.next_local_port;
            self.next_local_port = match port.checked_add(1) {
                Some(p) if p != u32::MAX => p,
                _ => FIRST_LOCAL_PORT,
            };
            // Distinct from every connection's host port, so host peers never share one.
            if !self.conns.keys().any(|k| k.local_port == port) {
                return Some(port);
            }
        }
        None
    }

    /// Makes sure the timer fires at `at` or earlier.
    pub(super) fn schedule(&mut self, at: Instant) {
        if self.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        // A zero duration would disarm the timer.
        let after = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match self.timer.reset(after, None) {
            Ok(()) => self.timer_at = Some(at),
            Err(e) => log::error!("virtio-vsock: cannot arm the timer: {e}"),
        }
    }
}

/// Sets O_NONBLOCK on `fd` (the timer: a stale expiry must not block the loop).
fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL on a valid fd has no memory effects; the result is checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a valid fd has no memory effects; the result is checked.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
