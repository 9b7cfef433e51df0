//! Disk image opening and positional I/O.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};

use super::super::test_utils::*;
use super::*;

fn slice(mem: &GuestMemoryMmap, addr: u64, len: usize) -> VolatileSlice<'_> {
    mem.get_slice(GuestAddress(addr), len).expect("slice")
}

#[test]
fn open_errors_name_the_path() {
    let err = DiskImage::open("/nonexistent/hvlite.img", false).expect_err("missing");
    assert!(matches!(err, DiskError::NotFound { .. }));
    assert!(err.to_string().contains("/nonexistent/hvlite.img"));

    let dir = std::env::temp_dir();
    let err = DiskImage::open(&dir, true).expect_err("directory");
    assert!(matches!(err, DiskError::NotAFile { .. }));
    assert!(err.to_string().contains(&*dir.to_string_lossy()));

    let err = DiskImage::open("/dev/null", true).expect_err("char device");
    assert!(matches!(err, DiskError::NotAFile { .. }));

    let (f, _) = temp_disk(1, false);
    std::fs::write(f.path(), [0u8; 700]).expect("resize");
    let err = DiskImage::open(f.path(), false).expect_err("unaligned");
    assert!(matches!(err, DiskError::UnalignedSize { size: 700, .. }));
    assert!(err.to_string().contains(&*f.path().to_string_lossy()));
}

#[test]
fn permission_denied() {
    use std::os::unix::fs::PermissionsExt;
    let (f, _) = temp_disk(1, false);
    std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o400)).expect("chmod");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // root bypasses file permissions; check the message wording only.
        let err = DiskError::PermissionDenied {
            path: f.path().into(),
            read_only: false,
        };
        assert!(err.to_string().contains(",ro"));
        return;
    }
    let err = DiskImage::open(f.path(), false).expect_err("read-only file");
    assert!(matches!(err, DiskError::PermissionDenied { .. }));
    assert!(DiskImage::open(f.path(), true).is_ok());
}

#[test]
fn geometry_and_id() {
    let (f, disk) = temp_disk(8, false);
    assert_eq!(disk.size(), 4096);
    assert_eq!(disk.capacity_sectors(), 8);
    assert!(!disk.read_only());
    assert_eq!(disk.path(), f.path());
    let again = DiskImage::open(f.path(), true).expect("reopen");
    assert!(again.read_only());
    assert_eq!(again.device_id(), disk.device_id());
    let (_g, other) = temp_disk(8, false);
    assert_ne!(other.device_id(), disk.device_id());
    assert!(disk.device_id().iter().all(u8::is_ascii_graphic));
}

#[test]
fn vectored_round_trip() {
    let mem = guest_memory();
    let (f, disk) = temp_disk(16, false);
    fill(&mem, BUF, 512, 1);
    fill(&mem, BUF + 0x1000, 1024, 2);
    let bufs = [
        slice(&mem, BUF, 512),
        slice(&mem, BUF + 0x5000, 0),
        slice(&mem, BUF + 0x1000, 1024),
    ];
    disk.write_from(512, &bufs).expect("write");
    disk.flush().expect("flush");
    let bytes = file_bytes(&f);
    assert!(bytes[512..1024].iter().all(|&b| b == 1));
    assert!(bytes[1024..2048].iter().all(|&b| b == 2));
    assert_eq!(bytes[2048], pattern(2048));

    disk.read_into(1024, &[slice(&mem, BUF + 0x9000, 2048)])
        .expect("read");
    let got = get_bytes(&mem, BUF + 0x9000, 2048);
    assert!(got[..1024].iter().all(|&b| b == 2));
    let want: Vec<u8> = (2048..3072).map(pattern).collect();
    assert_eq!(got[1024..], want);
    disk.read_into(0, &[]).expect("empty read");
}

#[test]
fn more_buffers_than_iov_max() {
    let mem = guest_memory();
    let n = IOV_MAX + 76;
    let (_f, disk) = temp_disk(n as u64, false);
    let bufs: Vec<_> = (0..n as u64)
        .map(|i| slice(&mem, 0x10_0000 + i * 512, 512))
        .collect();
    disk.read_into(0, &bufs).expect("read");
    let want: Vec<u8> = (0..n as u64 * 512).map(pattern).collect();
    assert_eq!(get_bytes(&mem, 0x10_0000, n * 512), want);
}

#[test]
fn read_past_eof_gives_zeros() {
    let mem = guest_memory();
    let (f, disk) = temp_disk(8, false);
    // The file shrinks behind the device's back.
    f.as_file().set_len(1024).expect("truncate");
    fill(&mem, BUF, 2048, 0xff);
    disk.read_into(
        512,
        &[slice(&mem, BUF, 1024), slice(&mem, BUF + 1024, 1024)],
    )
    .expect("read");
    let got = get_bytes(&mem, BUF, 2048);
    let want: Vec<u8> = (512..1024).map(pattern).collect();
    assert_eq!(got[..512], want);
    assert!(got[512..].iter().all(|&b| b == 0));
}

#[test]
fn read_only_image_refuses_writes() {
    let mem = guest_memory();
    let (f, disk) = temp_disk(4, true);
    let before = file_bytes(&f);
    let err = disk
        .write_from(0, &[slice(&mem, BUF, 512)])
        .expect_err("read-only");
    assert!(matches!(err, DiskError::Io { op: "write", .. }));
    disk.flush().expect("flush");
    assert_eq!(file_bytes(&f), before);
}

#[test]
fn offsets_beyond_off_t_fail_cleanly() {
    let mem = guest_memory();
    let (_f, disk) = temp_disk(4, false);
    let err = disk
        .read_into(u64::MAX - 511, &[slice(&mem, BUF, 512)])
        .expect_err("huge offset");
    assert!(matches!(err, DiskError::Io { .. }));
}
