//! Request parsing and execution, including every hostile-chain case.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::disk::DiskImage;
use super::super::test_utils::*;
use super::*;

const UNTOUCHED: u8 = 0xee;

fn run(mem: &GuestMemoryMmap, descs: &[RawDescriptor], disk: &DiskImage) -> Completion {
    fill(mem, STATUS, 1, UNTOUCHED);
    let vq = MockSplitQueue::new(mem, 256);
    let chain = vq.build_desc_chain(descs).expect("chain");
    process_request(mem, chain, disk)
}

fn status(mem: &GuestMemoryMmap) -> u32 {
    u32::from(get_u8(mem, STATUS))
}

/// Runs a request expected to fail with IOERR because of `check`.
fn expect_ioerr(
    mem: &GuestMemoryMmap,
    descs: &[RawDescriptor],
    disk: &DiskImage,
    check: impl Fn(&RequestError) -> bool,
) {
    let c = run(mem, descs, disk);
    match &c.outcome {
        RequestOutcome::Failed(e) => assert!(check(e), "unexpected error {e:?}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(status(mem), VIRTIO_BLK_S_IOERR);
    assert_eq!(c.used_len, 1);
    assert_eq!((c.bytes_read, c.bytes_written), (0, 0));
}

fn expect_dropped(
    mem: &GuestMemoryMmap,
    descs: &[RawDescriptor],
    disk: &DiskImage,
    check: impl Fn(&RequestError) -> bool,
) {
    let c = run(mem, descs, disk);
    match &c.outcome {
        RequestOutcome::Dropped(e) => assert!(check(e), "unexpected error {e:?}"),
        other => panic!("expected a drop, got {other:?}"),
    }
    assert_eq!(get_u8(mem, STATUS), UNTOUCHED);
    assert_eq!(c.used_len, 0);
}

#[test]
fn read() {
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    put_header(&mem, HDR, VIRTIO_BLK_T_IN, 2);
    let c = run(&mem, &[rd(HDR, 16), wr(BUF, 1024), wr(STATUS, 1)], &disk);
    assert!(matches!(c.outcome, RequestOutcome::Ok));
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    assert_eq!(c.used_len, 1025);
    assert_eq!(c.bytes_read, 1024);
    let want: Vec<u8> = (1024..2048).map(pattern).collect();
    assert_eq!(get_bytes(&mem, BUF, 1024), want);
}

#[test]
fn read_scattered_segments() {
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    put_header(&mem, HDR, VIRTIO_BLK_T_IN, 1);
    let descs = [
        rd(HDR, 16),
        wr(BUF + 0x3000, 512),
        wr(BUF, 1024),
        wr(BUF + 0x8000, 512),
        wr(STATUS, 1),
    ];
    let c = run(&mem, &descs, &disk);
    assert!(matches!(c.outcome, RequestOutcome::Ok));
    assert_eq!(c.used_len, 2049);
    let at = |start: u64, len: u64| (start..start + len).map(pattern).collect::<Vec<u8>>();
    assert_eq!(get_bytes(&mem, BUF + 0x3000, 512), at(512, 512));
    assert_eq!(get_bytes(&mem, BUF, 1024), at(1024, 1024));
    assert_eq!(get_bytes(&mem, BUF + 0x8000, 512), at(2048, 512));
}

#[test]
fn write() {
    let mem = guest_memory();
    let (f, disk) = temp_disk(DISK_SECTORS, false);
    let before = file_bytes(&f);
    put_header(&mem, HDR, VIRTIO_BLK_T_OUT, 3);
    fill(&mem, BUF, 512, 0xab);
    fill(&mem, BUF + 0x1000, 512, 0xcd);
    let descs = [
        rd(HDR, 16),
        rd(BUF, 512),
        rd(BUF + 0x1000, 512),
        wr(STATUS, 1),
    ];
    let c = run(&mem, &descs, &disk);
    assert!(matches!(c.outcome, RequestOutcome::Ok));
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    assert_eq!((c.used_len, c.bytes_written), (1, 1024));
    let after = file_bytes(&f);
    assert!(after[1536..2048].iter().all(|&b| b == 0xab));
    assert!(after[2048..2560].iter().all(|&b| b == 0xcd));
    assert_eq!(after[..1536], before[..1536]);
    assert_eq!(after[2560..], before[2560..]);
}

#[test]
fn flush() {
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    put_header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let c = run(&mem, &[rd(HDR, 16), wr(STATUS, 1)], &disk);
    assert!(matches!(c.outcome, RequestOutcome::Ok));
    assert_eq!((status(&mem), c.used_len), (VIRTIO_BLK_S_OK, 1));
}

#[test]
fn get_id() {
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    put_header(&mem, HDR, VIRTIO_BLK_T_GET_ID, 0);
    let c = run(&mem, &[rd(HDR, 16), wr(BUF, 20), wr(STATUS, 1)], &disk);
    assert!(matches!(c.outcome, RequestOutcome::Ok));
    assert_eq!(c.used_len, 21);
    assert_eq!(get_bytes(&mem, BUF, 20), disk.device_id());
    assert!(disk.device_id().starts_with(b"hvl-"));

    // Split over two buffers, and a buffer shorter than the ID.
    fill(&mem, BUF, 64, 0);
    let c = run(
        &mem,
        &[rd(HDR, 16), wr(BUF, 6), wr(BUF + 32, 30), wr(STATUS, 1)],
        &disk,
    );
    assert_eq!(c.used_len, 21);
    assert_eq!(get_bytes(&mem, BUF, 6), disk.device_id()[..6]);
    assert_eq!(get_bytes(&mem, BUF + 32, 14), disk.device_id()[6..]);
    let c = run(&mem, &[rd(HDR, 16), wr(BUF, 8), wr(STATUS, 1)], &disk);
    assert_eq!((c.used_len, status(&mem)), (9, VIRTIO_BLK_S_OK));

    // GET_ID with a device-readable buffer.
    expect_ioerr(
        &mem,
        &[rd(HDR, 16), rd(BUF, 20), wr(STATUS, 1)],
        &disk,
        |e| matches!(e, RequestError::DataDirection(_)),
    );
}

#[test]
fn unsupported_type() {
    let mem = guest_memory();
    let (f, disk) = temp_disk(DISK_SECTORS, false);
    let before = file_bytes(&f);
    for t in [2, 11, 13, 99, u32::MAX] {
        put_header(&mem, HDR, t, 0);
        let c = run(&mem, &[rd(HDR, 16), rd(BUF, 512), wr(STATUS, 1)], &disk);
        assert!(matches!(c.outcome, RequestOutcome::Unsupported(raw) if raw == t));
        assert_eq!((status(&mem), c.used_len), (VIRTIO_BLK_S_UNSUPP, 1));
    }
    assert_eq!(file_bytes(&f), before);
}

#[test]
fn chain_without_status_is_dropped() {
    let mem = guest_memory();
    let (f, disk) = temp_disk(DISK_SECTORS, false);
    let before = file_bytes(&f);
    put_header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    expect_dropped(&mem, &[rd(HDR, 16)], &disk, |e| {
        matches!(e, RequestError::NoStatusDescriptor)
    });
    // A write whose status descriptor is device-readable: not executed either.
    expect_dropped(
        &mem,
        &[rd(HDR, 16), rd(BUF, 512), rd(STATUS, 1)],
        &disk,
        |e| matches!(e, RequestError::StatusReadOnly),
    );
    expect_dropped(
        &mem,
        &[rd(HDR, 16), rd(BUF, 512), wr(STATUS, 0)],
        &disk,
        |e| matches!(e, RequestError::StatusEmpty),
    );
    expect_dropped(
        &mem,
        &[rd(HDR, 16), rd(BUF, 512), wr(MEM_SIZE as u64, 1)],
        &disk,
        |e| matches!(e, RequestError::StatusOutOfMemory(_)),
    );
    expect_dropped(&mem, &[rd(HDR, 16), wr(u64::MAX, 2)], &disk, |e| {
        matches!(e, RequestError::StatusOutOfMemory(_))
    });
    assert_eq!(file_bytes(&f), before);
}

#[test]
fn status_is_last_byte_of_last_descriptor() {
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    put_header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    fill(&mem, STATUS - 3, 4, UNTOUCHED);
    let vq = MockSplitQueue::new(&mem, 256);
    let chain = vq
        .build_desc_chain(&[rd(HDR, 16), wr(STATUS - 3, 4)])
        .expect("chain");
    let c = process_request(&mem, chain, &disk);
    assert!(matches!(c.outcome, RequestOutcome::Ok));
    assert_eq!(
        get_bytes(&mem, STATUS - 3, 4),
        [UNTOUCHED, UNTOUCHED, UNTOUCHED, 0]
    );
}

#[test]
fn bad_header() {
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    put_header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    expect_ioerr(
        &mem,
        &[rd(HDR, 8), wr(BUF, 512), wr(STATUS, 1)],
        &disk,
        |e| matches!(e, RequestError::HeaderTooShort(8)),
    );
    expect_ioerr(
        &mem,
        &[wr(HDR, 16), wr(BUF, 512), wr(STATUS, 1)],
        &disk,
        |e| matches!(e, RequestError::HeaderWriteOnly),
    );
    let outside = MEM_SIZE as u64 - 8;
    expect_ioerr(
        &mem,
        &[rd(outside, 16), wr(BUF, 512), wr(STATUS, 1)],
        &disk,
        |e| matches!(e, RequestError::HeaderRead(_)),
    );
    expect_ioerr(&mem, &[rd(u64::MAX - 4, 16), wr(STATUS, 1)], &disk, |e| {
        matches!(e, RequestError::HeaderRead(_))
    });
    // A longer header descriptor is fine: the header is its first 16 bytes.
    let c = run(&mem, &[rd(HDR, 4096), wr(BUF, 512), wr(STATUS, 1)], &disk);
    assert!(matches!(c.outcome, RequestOutcome::Ok));
}

#[test]
fn wrong_data_direction() {
    let mem = guest_memory();
    let (f, disk) = temp_disk(DISK_SECTORS, false);
    let before = file_bytes(&f);
    fill(&mem, BUF, 1024, 0x5a);
    put_header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    let descs = [rd(HDR, 16), wr(BUF, 512), rd(BUF + 512, 512), wr(STATUS, 1)];
    expect_ioerr(&mem, &descs, &disk, |e| {
        matches!(e, RequestError::DataDirection(_))
    });
    assert!(get_bytes(&mem, BUF, 1024).iter().all(|&b| b == 0x5a));
    put_header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    let descs = [rd(HDR, 16), rd(BUF, 512), wr(BUF + 512, 512), wr(STATUS, 1)];
    expect_ioerr(&mem, &descs, &disk, |e| {
        matches!(e, RequestError::DataDirection(_))
    });
    assert_eq!(file_bytes(&f), before);
}

#[test]
fn data_outside_guest_memory() {
    let mem = guest_memory();
    let (f, disk) = temp_disk(DISK_SECTORS, false);
    let before = file_bytes(&f);
    for (t, desc) in [
        (VIRTIO_BLK_T_IN, wr(MEM_SIZE as u64 - 256, 512)),
        (VIRTIO_BLK_T_IN, wr(u64::MAX - 100, 512)),
        (VIRTIO_BLK_T_OUT, rd(MEM_SIZE as u64, 512)),
        (VIRTIO_BLK_T_OUT, rd(u64::MAX - 511, 1024)),
        (VIRTIO_BLK_T_GET_ID, wr(u64::MAX, 20)),
    ] {
        put_header(&mem, HDR, t, 0);
        expect_ioerr(&mem, &[rd(HDR, 16), desc, wr(STATUS, 1)], &disk, |e| {
            matches!(e, RequestError::DataOutOfMemory { .. })
        });
    }
    assert_eq!(file_bytes(&f), before);
}

#[test]
fn out_of_range_and_unaligned() {
    let mem = guest_memory();
    let (f, disk) = temp_disk(DISK_SECTORS, false);
    let before = file_bytes(&f);
    for t in [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT] {
        let data = if t == VIRTIO_BLK_T_IN {
            wr(BUF, 1024)
        } else {
            rd(BUF, 1024)
        };
        for sector in [DISK_SECTORS, DISK_SECTORS - 1, u64::MAX / 256, u64::MAX] {
            put_header(&mem, HDR, t, sector);
            expect_ioerr(&mem, &[rd(HDR, 16), data, wr(STATUS, 1)], &disk, |e| {
                matches!(e, RequestError::OutOfRange { .. })
            });
        }
        let short = if t == VIRTIO_BLK_T_IN {
            wr(BUF, 100)
        } else {
            rd(BUF, 100)
        };
        put_header(&mem, HDR, t, 0);
        expect_ioerr(&mem, &[rd(HDR, 16), short, wr(STATUS, 1)], &disk, |e| {
            matches!(e, RequestError::DataUnaligned(100))
        });
    }
    // The last sectors are in range.
    put_header(&mem, HDR, VIRTIO_BLK_T_IN, DISK_SECTORS - 2);
    let c = run(&mem, &[rd(HDR, 16), wr(BUF, 1024), wr(STATUS, 1)], &disk);
    assert!(matches!(c.outcome, RequestOutcome::Ok));
    assert_eq!(file_bytes(&f), before);
}

#[test]
fn too_large() {
    let mem = guest_memory();
    let (f, disk) = temp_disk(DISK_SECTORS, false);
    let before = file_bytes(&f);
    put_header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    let big = 200 << 20;
    let descs = [rd(HDR, 16), rd(BUF, big), rd(BUF, big), wr(STATUS, 1)];
    expect_ioerr(&mem, &descs, &disk, |e| {
        matches!(e, RequestError::DataTooLarge(_))
    });
    assert_eq!(file_bytes(&f), before);
}

#[test]
fn segment_limit() {
    let mem = guest_memory();
    let (_f, disk) = temp_disk(256, false);
    put_header(&mem, HDR, VIRTIO_BLK_T_IN, 0);
    // The longest chain a 256-entry queue holds: 254 data segments, accepted.
    let mut descs = vec![rd(HDR, 16)];
    descs.extend((0..254u64).map(|i| wr(BUF + i * 512, 512)));
    descs.push(wr(STATUS, 1));
    let c = run(&mem, &descs, &disk);
    assert!(matches!(c.outcome, RequestOutcome::Ok), "{:?}", c.outcome);
    assert_eq!(c.used_len, 254 * 512 + 1);

    // 256 segments through an indirect table (not negotiated, but followed).
    let table = 0x30_0000u64;
    let n = 258u16;
    for i in 0..n {
        let desc = match i {
            0 => raw(HDR, 16, false, Some(1)),
            i if i == n - 1 => raw(STATUS, 1, true, None),
            i => raw(BUF + u64::from(i) * 512, 512, true, Some(i + 1)),
        };
        mem.write_obj(desc, GuestAddress(table + u64::from(i) * 16))
            .expect("indirect desc");
    }
    let indirect = RawDescriptor::from(SplitDescriptor::new(
        table,
        u32::from(n) * 16,
        VRING_DESC_F_INDIRECT as u16,
        0,
    ));
    expect_ioerr(&mem, &[indirect], &disk, |e| {
        matches!(e, RequestError::TooManySegments(256))
    });
}

#[test]
fn read_only_disk() {
    let mem = guest_memory();
    let (f, disk) = temp_disk(DISK_SECTORS, true);
    let before = file_bytes(&f);
    fill(&mem, BUF, 512, 0x77);
    put_header(&mem, HDR, VIRTIO_BLK_T_OUT, 0);
    expect_ioerr(
        &mem,
        &[rd(HDR, 16), rd(BUF, 512), wr(STATUS, 1)],
        &disk,
        |e| matches!(e, RequestError::ReadOnly),
    );
    assert_eq!(file_bytes(&f), before);
    // Reads and flushes still work.
    put_header(&mem, HDR, VIRTIO_BLK_T_IN, 1);
    let c = run(&mem, &[rd(HDR, 16), wr(BUF, 512), wr(STATUS, 1)], &disk);
    assert!(matches!(c.outcome, RequestOutcome::Ok));
    put_header(&mem, HDR, VIRTIO_BLK_T_FLUSH, 0);
    let c = run(&mem, &[rd(HDR, 16), wr(STATUS, 1)], &disk);
    assert!(matches!(c.outcome, RequestOutcome::Ok));
    assert_eq!(file_bytes(&f), before);
}

#[test]
fn flush_ignores_data_descriptors() {
    let mem = guest_memory();
    let (_f, disk) = temp_disk(DISK_SECTORS, false);
    put_header(&mem, HDR, VIRTIO_BLK_T_FLUSH, u64::MAX);
    let c = run(&mem, &[rd(HDR, 16), wr(u64::MAX, 7), wr(STATUS, 1)], &disk);
    assert!(matches!(c.outcome, RequestOutcome::Ok));
}
