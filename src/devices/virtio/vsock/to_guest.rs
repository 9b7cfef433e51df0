//! Filling the guest's RX buffers: queued header-only packets first, then data read from
//! the host streams that have some, straight into the buffer behind the header, as much
//! as the buffer and the guest's credit allow.
//!
//! A stream with data waits in the ready list, off the event loop's IN interest, until an
//! RX buffer takes it; read to its end it is watched again. So when the guest posts no RX
//! buffers nothing is read and nothing spins. A stream at zero credit asks the guest for
//! credit once (CREDIT_REQUEST) and is watched again when credit comes.

use std::io;

use event_manager::EventOps;
use vm_memory::GuestMemoryMmap;

use super::chain::{copy_in, range};
use super::config::MAX_PAYLOAD;
use super::connection::is_transient;
use super::counters::VsockCounters;
use super::muxer::{Control, Muxer};
use super::packet::{HDR_LEN, Header, Op};
use crate::devices::virtio::FrameIo;
use crate::devices::virtio::queue::MappedChain;

impl Muxer {
    /// Writes the next packet for the guest into `chain` (device-writable, at least
    /// [`HDR_LEN`] bytes); returns its length, or `None` when there is nothing to send
    /// (the chain is then unused).
    pub fn fill_rx(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &MappedChain,
        ops: &mut EventOps,
    ) -> Option<u32> {
        loop {
            if let Some(control) = self.control.pop_front() {
                let Some(hdr) = self.control_header(control) else {
                    continue;
                };
                if !write_header(mem, chain, &hdr) {
                    return Some(0);
                }
                if hdr.op == Op::Rst as u16 {
                    VsockCounters::inc(&self.counters.resets_sent);
                }
                VsockCounters::inc(&self.counters.packets_to_guest);
                return Some(HDR_LEN as u32);
            }
            let (key, id) = self.ready.pop_front()?;
            if let Some(len) = self.read_host(key, id, mem, chain, ops) {
                return Some(len);
            }
        }
    }

    fn control_header(&mut self, control: Control) -> Option<Header> {
        match control {
            Control::Orphan(hdr) => {
                self.orphans -= 1;
                Some(hdr)
            }
            Control::Conn { key, id, op, flags } => {
                let conn = self.conns.get_mut(&key).filter(|c| c.id == id)?;
                if op == Op::CreditUpdate {
                    conn.credit_update_queued = false;
                }
                Some(conn.header(self.guest_cid, op, flags, 0))
            }
        }
    }

    /// Reads from the host stream of a ready connection into `chain` after the header;
    /// `None` when this connection gave nothing.
    fn read_host(
        &mut self,
        key: super::connection::ConnKey,
        id: u64,
        mem: &GuestMemoryMmap,
        chain: &MappedChain,
        ops: &mut EventOps,
    ) -> Option<u32> {
        let guest_cid = self.guest_cid;
        let conn = self
            .conns
            .get_mut(&key)
            .filter(|c| c.id == id && c.in_ready)?;
        conn.in_ready = false;
        if !conn.sends_to_guest() {
            self.refresh(key, ops);
            return None;
        }
        let credit = conn.peer_credit() as usize;
        if credit == 0 {
            if !conn.credit_request_sent {
                conn.credit_request_sent = true;
                self.queue_control(key, Op::CreditRequest, 0);
            }
            self.refresh(key, ops);
            return None;
        }
        let cap = chain
            .len
            .saturating_sub(HDR_LEN)
            .min(credit)
            .min(MAX_PAYLOAD);
        if cap == 0 {
            // A header-only buffer cannot take data (the RX queue never offers one):
            // return it unused, the stream stays first in line.
            conn.in_ready = true;
            self.ready.push_front((key, id));
            return Some(0);
        }
        let Some(slices) = range(mem, &chain.pieces, HDR_LEN, cap) else {
            // Mapped when taken; guest memory does not change under a running device.
            self.refresh(key, ops);
            return None;
        };
        match conn.stream.read_frame(&slices) {
            Ok(0) => {
                conn.host_eof = true;
                self.update_local_shutdown(key);
                self.refresh(key, ops);
                None
            }
            Ok(n) => {
                // n <= cap <= MAX_PAYLOAD.
                let hdr = conn.header(guest_cid, Op::Rw, 0, n as u32);
                if n == cap {
                    // Maybe more: back in line behind the others.
                    conn.in_ready = true;
                    self.ready.push_back((key, id));
                }
                self.refresh(key, ops);
                if !write_header(mem, chain, &hdr) {
                    return Some(0);
                }
                VsockCounters::inc(&self.counters.packets_to_guest);
                VsockCounters::add(&self.counters.bytes_to_guest, n as u64);
                Some((HDR_LEN + n) as u32)
            }
            Err(e) if is_transient(&e) => {
                if e.kind() == io::ErrorKind::Interrupted {
                    conn.in_ready = true;
                    self.ready.push_back((key, id));
                }
                self.refresh(key, ops);
                None
            }
            Err(e) => {
                log::debug!("virtio-vsock: cannot read the host stream of {key:?}: {e}");
                self.reset(key, ops);
                None
            }
        }
    }
}

/// Writes `hdr` at the start of `chain`; false if guest memory refused it.
fn write_header(mem: &GuestMemoryMmap, chain: &MappedChain, hdr: &Header) -> bool {
    let ok = range(mem, &chain.pieces, 0, HDR_LEN)
        .is_some_and(|s| copy_in(&s, &hdr.to_bytes()) == HDR_LEN);
    if !ok {
        log::debug!(
            "virtio-vsock: cannot write a header into RX buffer {}",
            chain.head
        );
    }
    ok
}

#[cfg(test)]
#[path = "to_guest_tests.rs"]
mod tests;
