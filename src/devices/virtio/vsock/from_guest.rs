//! What the multiplexer does with each packet the guest sends.
//!
//! Packets not from the guest's CID are dropped; packets to another CID than the host's,
//! of another type than stream, with an unknown op, or for no connection are answered
//! with RST (unless they are RSTs themselves). Every refusal is counted.

use std::io::Write;
use std::time::Instant;

use event_manager::EventOps;

use super::config::HOST_CID;
use super::connection::{ConnKey, ConnState, Connection};
use super::counters::VsockCounters;
use super::muxer::Muxer;
use super::packet::{Op, Packet, SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM};

impl Muxer {
    /// Handles one well-formed packet from the guest.
    pub fn handle_guest_packet(&mut self, pkt: &Packet<'_>, ops: &mut EventOps) {
        let hdr = &pkt.hdr;
        VsockCounters::inc(&self.counters.packets_from_guest);
        if hdr.src_cid != self.guest_cid {
            self.refuse(pkt, false, format_args!("source CID {}", hdr.src_cid));
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.socket_type != TYPE_STREAM {
            let why = format_args!("CID {} type {}", hdr.dst_cid, hdr.socket_type);
            self.refuse(pkt, true, why);
            return;
        }
        let Some(op) = hdr.op() else {
            self.refuse(pkt, true, format_args!("unknown op {}", hdr.op));
            return;
        };
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if op == Op::Request {
            self.guest_request(key, pkt, ops);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if op == Op::Rst {
                VsockCounters::inc(&self.counters.resets_received);
            } else {
                self.refuse(pkt, true, format_args!("{op:?} for no connection"));
            }
            return;
        };
        conn.update_peer_credit(hdr);
        match (op, conn.state) {
            (Op::Rst, _) => {
                VsockCounters::inc(&self.counters.resets_received);
                self.remove(key, ops);
            }
            (Op::Response, ConnState::Connecting) => self.guest_accepted(key, ops),
            (Op::Rw, ConnState::Established) => self.guest_data(key, pkt, ops),
            (Op::Shutdown, ConnState::Established) => {
                conn.peer_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                self.after_host_write(key, ops);
            }
            (Op::CreditRequest, ConnState::Established) => {
                self.queue_control(key, Op::CreditUpdate, 0);
                self.refresh(key, ops);
            }
            (Op::CreditUpdate, _) => self.refresh(key, ops),
            (op, state) => {
                self.refuse(pkt, false, format_args!("{op:?} on a {state:?} connection"));
                self.reset(key, ops);
            }
        }
    }

    /// Counts and logs a refused packet; answers with RST if `answer` (and it is not an
    /// RST: those are never answered).
    fn refuse(&mut self, pkt: &Packet<'_>, answer: bool, why: std::fmt::Arguments<'_>) {
        let hdr = &pkt.hdr;
        VsockCounters::inc(&self.counters.dropped);
        self.warn.warn(format_args!(
            "dropped a packet from {}:{} to {}:{}: {why}",
            hdr.src_cid, hdr.src_port, hdr.dst_cid, hdr.dst_port
        ));
        if answer && hdr.op != Op::Rst as u16 {
            let mut rst = self.host_rst(hdr.dst_port, hdr.src_port, hdr.socket_type);
            rst.src_cid = hdr.dst_cid;
            self.queue_orphan(rst);
        }
    }

    /// REQUEST: connect to the host port (in-process, or `<uds_path>_<port>`); RESPONSE
    /// on success, RST on failure or when the connection table is full.
    fn guest_request(&mut self, key: ConnKey, pkt: &Packet<'_>, ops: &mut EventOps) {
        if self.conns.contains_key(&key) {
            self.refuse(pkt, false, format_args!("REQUEST for a live connection"));
            return;
        }
        if self.conns.len() >= self.max_connections {
            let max = self.max_connections;
            self.refuse(pkt, true, format_args!("{max} connections open"));
            return;
        }
        let stream = match self.backend.connect(key.local_port) {
            Ok(s) => s,
            Err(e) => {
                log::debug!(
                    "virtio-vsock: guest connection to host port {}: {e}",
                    key.local_port
                );
                let rst = self.host_rst(key.local_port, key.peer_port, TYPE_STREAM);
                self.queue_orphan(rst);
                return;
            }
        };
        let id = self.next_conn_id();
        let mut conn = Connection::new(id, key, stream, ConnState::Established);
        conn.update_peer_credit(&pkt.hdr);
        self.insert(conn, ops);
        VsockCounters::inc(&self.counters.connections_opened);
        self.queue_control(key, Op::Response, 0);
    }

    /// RESPONSE to a host-initiated REQUEST: tells the host peer its port and lets data
    /// flow.
    fn guest_accepted(&mut self, key: ConnKey, ops: &mut EventOps) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let line = format!("OK {}\n", key.local_port);
        // The stream is new and empty: a short line fits its buffer at once.
        match conn.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {
                conn.state = ConnState::Established;
                conn.deadline = None;
                VsockCounters::inc(&self.counters.connections_opened);
                self.refresh(key, ops);
            }
            result => {
                log::debug!("virtio-vsock: cannot answer a host peer: {result:?}");
                self.reset(key, ops);
            }
        }
    }

    /// RW: the payload goes to the host stream. Sending beyond the advertised credit, or
    /// after SHUTDOWN SEND, resets the connection.
    fn guest_data(&mut self, key: ConnKey, pkt: &Packet<'_>, ops: &mut EventOps) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let len = pkt.hdr.len as usize;
        if !conn.within_credit(len) || conn.peer_shutdown & SHUTDOWN_SEND != 0 {
            self.refuse(pkt, false, format_args!("{len} bytes beyond the credit"));
            self.reset(key, ops);
            return;
        }
        if let Err(e) = conn.write_from_guest(&pkt.payload) {
            log::debug!("virtio-vsock: host stream of {key:?} failed: {e}");
            self.reset(key, ops);
            return;
        }
        VsockCounters::add(&self.counters.bytes_from_guest, len as u64);
        self.after_host_write(key, ops);
    }

    /// Connections past their deadline are reset; returns the earliest deadline left.
    pub(super) fn expire_connections(
        &mut self,
        now: Instant,
        ops: &mut EventOps,
    ) -> Option<Instant> {
        let expired: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.deadline.is_some_and(|d| d <= now))
            .map(|c| c.key)
            .collect();
        for key in expired {
            if self
                .conns
                .get(&key)
                .is_some_and(|c| c.state == ConnState::Connecting)
            {
                VsockCounters::inc(&self.counters.host_rejected);
                log::debug!("virtio-vsock: the guest did not answer a REQUEST for {key:?}");
            }
            self.reset(key, ops);
        }
        self.conns.values().filter_map(|c| c.deadline).min()
    }
}

#[cfg(test)]
#[path = "from_guest_tests.rs"]
mod tests;
