//! What the multiplexer does when a host socket is ready: the listener (a host peer
//! connects), a host peer's `CONNECT` line, a connection's host stream, and the timer.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};

use super::config::MAX_PENDING_HOST;
use super::connection::{ConnKey, ConnState, Connection};
use super::counters::VsockCounters;
use super::host::PendingHost;
use super::muxer::{LISTENER_EVENT, Muxer, TIMER_EVENT};
use super::packet::Op;

/// Most host peers accepted per listener event.
const ACCEPT_BUDGET: usize = 32;
/// How long the listener rests after accept failed (for example out of fds), instead of
/// firing again at once.
const LISTENER_PAUSE: Duration = Duration::from_secs(1);

impl Muxer {
    /// Dispatches an event of a host-side source (the listener, the timer, a host
    /// stream); `data` is the event's data. Returns false for data it does not know.
    pub fn handle_host_event(&mut self, data: u32, set: EventSet, ops: &mut EventOps) -> bool {
        match data {
            LISTENER_EVENT => self.accept_host(ops),
            TIMER_EVENT => self.on_timer(ops),
            fd => {
                let fd = fd as RawFd;
                if self.pending.contains_key(&fd) {
                    self.pending_line(fd, set, ops);
                } else if let Some(&key) = self.by_fd.get(&fd) {
                    self.host_stream(key, set, ops);
                } else {
                    return false;
                }
            }
        }
        true
    }

    fn accept_host(&mut self, ops: &mut EventOps) {
        let backend = std::sync::Arc::clone(&self.backend);
        let Some(listener) = backend.listener() else {
            return;
        };
        for _ in 0..ACCEPT_BUDGET {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.warn
                        .warn(format_args!("cannot accept a host peer: {e}"));
                    self.watch_listener(ops, false);
                    let until = Instant::now() + LISTENER_PAUSE;
                    self.listener_paused = Some(until);
                    self.schedule(until);
                    return;
                }
            };
            if self.pending.len() >= MAX_PENDING_HOST {
                VsockCounters::inc(&self.counters.host_rejected);
                self.warn.warn(format_args!(
                    "{MAX_PENDING_HOST} host peers have not sent their CONNECT line: closing a new one"
                ));
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                log::debug!("virtio-vsock: cannot set a host peer non-blocking: {e}");
                continue;
            }
            let fd = stream.as_raw_fd();
            if let Err(e) = ops.add(Events::with_data_raw(fd, fd as u32, EventSet::IN)) {
                log::error!("virtio-vsock: cannot register a host peer: {e}");
                continue;
            }
            let deadline = Instant::now() + self.timeouts.connect_line;
            self.pending.insert(fd, PendingHost::new(stream, deadline));
            self.schedule(deadline);
        }
    }

    /// Reads a host peer's `CONNECT` line; once complete the connection is requested
    /// from the guest, if the line is bad the peer is closed.
    fn pending_line(&mut self, fd: RawFd, set: EventSet, ops: &mut EventOps) {
        let Some(peer) = self.pending.get_mut(&fd) else {
            return;
        };
        match peer.poll_line() {
            Ok(None) if !set.intersects(EventSet::HANG_UP | EventSet::ERROR) => {}
            Ok(None) => self.reject_pending(fd, format_args!("hung up"), ops),
            Ok(Some(port)) => {
                if let Some(peer) = self.pending.remove(&fd) {
                    self.host_connect(peer, port, ops);
                }
            }
            Err(e) => self.reject_pending(fd, format_args!("{e}"), ops),
        }
    }

    fn reject_pending(&mut self, fd: RawFd, why: std::fmt::Arguments<'_>, ops: &mut EventOps) {
        if self.pending.remove(&fd).is_none() {
            return;
        }
        VsockCounters::inc(&self.counters.host_rejected);
        self.warn.warn(format_args!("host peer refused: {why}"));
        if let Err(e) = ops.remove(Events::with_data_raw(fd, fd as u32, EventSet::IN)) {
            log::error!("virtio-vsock: cannot unregister a host peer: {e}");
        }
    }

    /// A host peer asked for guest port `port`: REQUEST to the guest from a fresh host
    /// port, answered within the response timeout.
    fn host_connect(&mut self, peer: PendingHost, port: u32, ops: &mut EventOps) {
        let fd = peer.stream.as_raw_fd();
        let local = if self.conns.len() < self.max_connections {
            self.alloc_local_port()
        } else {
            None
        };
        let Some(local_port) = local else {
            VsockCounters::inc(&self.counters.host_rejected);
            let max = self.max_connections;
            self.warn
                .warn(format_args!("{max} connections open: closing a host peer"));
            if let Err(e) = ops.remove(Events::with_data_raw(fd, fd as u32, EventSet::IN)) {
                log::error!("virtio-vsock: cannot unregister a host peer: {e}");
            }
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        let id = self.next_conn_id();
        let mut conn = Connection::new(id, key, peer.stream, ConnState::Connecting);
        // Still registered from the CONNECT line; `insert` adjusts the interest.
        conn.registered = Some(EventSet::IN);
        let deadline = Instant::now() + self.timeouts.guest_response;
        conn.deadline = Some(deadline);
        self.insert(conn, ops);
        self.queue_control(key, Op::Request, 0);
        self.schedule(deadline);
    }

    /// The host stream of a connection is readable, writable, hung up or failed.
    fn host_stream(&mut self, key: ConnKey, set: EventSet, ops: &mut EventOps) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::ERROR) {
            log::debug!("virtio-vsock: host stream of {key:?} failed");
            self.reset(key, ops);
            return;
        }
        if set.contains(EventSet::HANG_UP) {
            conn.host_hup = true;
            // Data the peer wrote before hanging up is still read (and then SHUTDOWN);
            // data for it can no longer be delivered.
            if conn.state != ConnState::Established || conn.pending_len() > 0 {
                self.reset(key, ops);
                return;
            }
            if conn.host_eof {
                self.update_local_shutdown(key);
            }
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            if set.contains(EventSet::IN) && !conn.in_ready {
                conn.in_ready = true;
                self.ready.push_back((key, conn.id));
            }
            if set.contains(EventSet::OUT) {
                if let Err(e) = conn.flush() {
                    log::debug!("virtio-vsock: cannot write the host stream of {key:?}: {e}");
                    self.reset(key, ops);
                    return;
                }
                self.after_host_write(key, ops);
            }
        }
        self.refresh(key, ops);
    }

    /// Gives up on what timed out (host peers without a line, unanswered REQUESTs, stuck
    /// closes), puts a rested listener back, and re-arms the timer for what is left.
    fn on_timer(&mut self, ops: &mut EventOps) {
        // Non-blocking: an expiry re-armed since the event was queued reads as EAGAIN.
        let _ = self.timer.wait();
        self.timer_at = None;
        let now = Instant::now();
        let expired: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in expired {
            self.reject_pending(fd, format_args!("no CONNECT line in time"), ops);
        }
        if self.listener_paused.is_some_and(|t| t <= now) {
            self.listener_paused = None;
            self.watch_listener(ops, true);
        }
        let next = [
            self.expire_connections(now, ops),
            self.pending.values().map(|p| p.deadline).min(),
            self.listener_paused,
        ];
        if let Some(at) = next.into_iter().flatten().min() {
            self.schedule(at);
        }
    }
}

#[cfg(test)]
#[path = "host_events_tests.rs"]
mod tests;
