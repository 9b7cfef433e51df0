//! Header encoding and reading TX chains, split in every way and malformed.

use virtio_queue::mock::MockSplitQueue;

use super::*;
use crate::devices::virtio::queue::ChainError;
use crate::devices::virtio::test_utils::{BUF, guest_memory, put_bytes, rd, wr};
use crate::devices::virtio::vsock::chain::copy_out;

fn sample() -> Header {
    Header {
        src_cid: 3,
        dst_cid: 2,
        src_port: 0x1234_5678,
        dst_port: 52,
        len: 5,
        socket_type: TYPE_STREAM,
        op: Op::Rw as u16,
        flags: 0,
        buf_alloc: 0x4_0000,
        fwd_cnt: 0xdead_beef,
    }
}

/// Header then payload at [`BUF`].
fn put_packet(mem: &vm_memory::GuestMemoryMmap, hdr: &Header, payload: &[u8]) {
    put_bytes(mem, BUF, &hdr.to_bytes());
    put_bytes(mem, BUF + HDR_LEN as u64, payload);
}

fn payload_bytes(pkt: &Packet<'_>) -> Vec<u8> {
    let mut v = vec![0u8; pkt.hdr.len as usize];
    assert_eq!(copy_out(&pkt.payload, &mut v), v.len());
    v
}

#[test]
fn header_round_trip_is_little_endian() {
    let h = sample();
    let b = h.to_bytes();
    assert_eq!(&b[0..8], &3u64.to_le_bytes());
    assert_eq!(&b[16..20], &[0x78, 0x56, 0x34, 0x12]);
    assert_eq!(&b[28..32], &[1, 0, 5, 0]);
    assert_eq!(&b[40..44], &[0xef, 0xbe, 0xad, 0xde]);
    assert_eq!(Header::from_bytes(&b), h);
    assert_eq!(h.op(), Some(Op::Rw));
    assert_eq!(Header { op: 0, ..h }.op(), None);
    assert_eq!(Header { op: 8, ..h }.op(), None);
    for op in 1..=7 {
        assert_eq!(Op::from_u16(op).map(|o| o as u16), Some(op));
    }
}

#[test]
fn header_and_payload_split_anywhere() {
    let mem = guest_memory();
    let q = MockSplitQueue::new(&mem, 16);
    let h = sample();
    put_packet(&mem, &h, b"hello");
    // One descriptor; header split 10/34 with payload after; every byte its own piece
    // around the header/payload boundary.
    let layouts: Vec<Vec<(u64, u32)>> = vec![
        vec![(0, 49)],
        vec![(0, 10), (10, 34), (44, 5)],
        vec![(0, 43), (43, 1), (44, 1), (45, 4)],
        vec![(0, 46), (46, 3)],
    ];
    for layout in layouts {
        let descs: Vec<_> = layout.iter().map(|&(o, l)| rd(BUF + o, l)).collect();
        let chain = q.build_desc_chain(&descs).expect("chain");
        let pkt = read_packet(&mem, chain, 16).expect("packet");
        assert_eq!(pkt.hdr, h, "{layout:?}");
        assert_eq!(payload_bytes(&pkt), b"hello", "{layout:?}");
    }
}

#[test]
fn bytes_after_len_are_ignored() {
    let mem = guest_memory();
    let q = MockSplitQueue::new(&mem, 16);
    let h = Header { len: 2, ..sample() };
    put_packet(&mem, &h, b"hello");
    let chain = q.build_desc_chain(&[rd(BUF, 49)]).expect("chain");
    let pkt = read_packet(&mem, chain, 16).expect("packet");
    assert_eq!(payload_bytes(&pkt), b"he");
}

#[test]
fn truncated_header_is_refused() {
    let mem = guest_memory();
    let q = MockSplitQueue::new(&mem, 16);
    put_packet(&mem, &Header { len: 0, ..sample() }, &[]);
    let chain = q
        .build_desc_chain(&[rd(BUF, 20), rd(BUF + 20, 23)])
        .expect("chain");
    assert_eq!(
        read_packet(&mem, chain, 16).err(),
        Some(PacketError::ShortHeader(43))
    );
}

#[test]
fn len_beyond_the_chain_is_refused() {
    let mem = guest_memory();
    let q = MockSplitQueue::new(&mem, 16);
    put_packet(
        &mem,
        &Header {
            len: 100,
            ..sample()
        },
        &[0; 100],
    );
    let chain = q
        .build_desc_chain(&[rd(BUF, 44), rd(BUF + 44, 99)])
        .expect("chain");
    assert_eq!(
        read_packet(&mem, chain, 16).err(),
        Some(PacketError::LenBeyondChain {
            len: 100,
            avail: 99
        })
    );
}

#[test]
fn oversized_len_and_chain_are_refused() {
    let mem = guest_memory();
    let q = MockSplitQueue::new(&mem, 16);
    let big = (MAX_PAYLOAD + 1) as u32;
    put_packet(
        &mem,
        &Header {
            len: big,
            ..sample()
        },
        &[],
    );
    let chain = q
        .build_desc_chain(&[rd(BUF, 44), rd(BUF + 44, 100)])
        .expect("chain");
    assert_eq!(
        read_packet(&mem, chain, 16).err(),
        Some(PacketError::Oversized(big))
    );
    put_packet(
        &mem,
        &Header {
            len: u32::MAX,
            ..sample()
        },
        &[],
    );
    let chain = q.build_desc_chain(&[rd(BUF, 44)]).expect("chain");
    assert_eq!(
        read_packet(&mem, chain, 16).err(),
        Some(PacketError::Oversized(u32::MAX))
    );
    // A chain longer than a header plus the largest payload.
    let chain = q
        .build_desc_chain(&[rd(BUF, 44), rd(BUF + 44, big)])
        .expect("chain");
    assert!(matches!(
        read_packet(&mem, chain, 16),
        Err(PacketError::Chain(ChainError::TooLong(_)))
    ));
}

#[test]
fn device_writable_descriptors_are_refused() {
    let mem = guest_memory();
    let q = MockSplitQueue::new(&mem, 16);
    put_packet(&mem, &sample(), b"hello");
    let chain = q
        .build_desc_chain(&[rd(BUF, 44), wr(BUF + 44, 5)])
        .expect("chain");
    assert!(matches!(
        read_packet(&mem, chain, 16),
        Err(PacketError::Chain(ChainError::WrongDirection { .. }))
    ));
}

#[test]
fn buffers_outside_memory_are_refused() {
    let mem = guest_memory();
    let q = MockSplitQueue::new(&mem, 16);
    let chain = q.build_desc_chain(&[rd(u64::MAX - 10, 44)]).expect("chain");
    assert!(matches!(
        read_packet(&mem, chain, 16),
        Err(PacketError::Chain(ChainError::OutOfMemory { .. }))
    ));
}
