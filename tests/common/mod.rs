//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Path of the hvlite binary under test.
pub fn hvlite() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hvlite"))
}

pub use hvlite_protocol::test_env::check as host_has;

/// Whether /dev/kvm can be opened. When not: a loud skip notice, or a failure under
/// `HVLITE_REQUIRE_KVM=1` (see [`hvlite_protocol::test_env`]).
pub fn kvm_available(test: &str) -> bool {
    let open = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    let missing = open
        .as_ref()
        .err()
        .map(|e| format!("/dev/kvm cannot be opened here ({e})"));
    host_has(test, open.is_ok(), missing.as_deref().unwrap_or_default())
}

/// Whether this process runs as root (see [`kvm_available`] for what happens when a test
/// needs it and it does not).
pub fn root(test: &str, why: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    host_has(test, root, &format!("needs root {why}"))
}

/// A fresh scratch directory for one test (from `tempfile`), removed when dropped. It
/// derefs to its path.
#[derive(Debug)]
pub struct Scratch(tempfile::TempDir);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.path().as_os_str()
    }
}

/// A fresh scratch directory for one test, named after `name`; mode 0755 like a
/// directory made by hand (tempfile's are 0700).
pub fn scratch(name: &str) -> Scratch {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix(&format!("hvlite-test-{name}-"))
        .tempdir()
        .expect("create scratch dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod scratch dir");
    Scratch(dir)
}

/// Reads a file from an ext4 image on the host, without mounting it. The guest never
/// unmounted the image, so what it synced may still be in the journal only: replay it
/// first (as a mount would), since debugfs reads the file system without the journal.
pub fn ext4_cat(image: impl AsRef<Path>, path: &str) -> String {
    let image = image.as_ref();
    let fsck = Command::new("e2fsck")
        .arg("-f")
        .arg("-p")
        .arg(image)
        .output()
        .expect("run e2fsck (e2fsprogs)");
    // 0: clean, 1: errors corrected (the journal replayed).
    assert!(
        matches!(fsck.status.code(), Some(0 | 1)),
        "e2fsck {}: {}",
        image.display(),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .expect("run debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs hvlite with `args`, stdin closed, and returns its output.
pub fn run_hvlite(args: &[&str]) -> Output {
    Command::new(hvlite())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn hvlite")
}

/// Guest physical address where test guests are loaded and entered.
pub const GUEST_BASE: u64 = 0x100_0000;

/// Wraps `image` (loaded at [`GUEST_BASE`], entered at its first byte in 64-bit mode)
/// in a minimal ELF64 executable with one PT_LOAD segment.
pub fn elf_guest(image: &[u8]) -> Vec<u8> {
    const HEADERS: u64 = 64 + 56;
    elf64(image, HEADERS, GUEST_BASE, GUEST_BASE, 7)
}

/// A minimal x86-64 ELF64 executable: the ELF and program headers, then `image`. Its one
/// PT_LOAD segment (flags `flags`: 4 R, 2 W, 1 X) maps the file from `offset` to its end at
/// address `addr` (virtual and physical); execution starts at `entry`.
pub fn elf64(image: &[u8], offset: u64, addr: u64, entry: u64, flags: u32) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let size = (EHDR + PHDR + image.len()) as u64 - offset;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    f.extend_from_slice(&[0u8; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.to_le_bytes());
    f.extend_from_slice(&(EHDR as u64).to_le_bytes()); // phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    f.extend_from_slice(&(EHDR as u16).to_le_bytes());
    f.extend_from_slice(&(PHDR as u16).to_le_bytes());
    f.extend_from_slice(&1u16.to_le_bytes()); // phnum
    f.extend_from_slice(&64u16.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    assert_eq!(f.len(), EHDR);
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&flags.to_le_bytes());
    f.extend_from_slice(&offset.to_le_bytes());
    f.extend_from_slice(&addr.to_le_bytes()); // vaddr
    f.extend_from_slice(&addr.to_le_bytes()); // paddr
    f.extend_from_slice(&size.to_le_bytes());
    f.extend_from_slice(&size.to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    assert_eq!(f.len(), EHDR + PHDR);
    f.extend_from_slice(image);
    f
}

/// Writes a test guest ELF into `dir` and returns its path.
pub fn write_guest(dir: &Path, name: &str, image: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, elf_guest(image)).expect("write test guest");
    path
}

/// Machine code: `mov dx, port; mov al, value; out dx, al`.
pub fn out_byte(port: u16, value: u8) -> Vec<u8> {
    let p = port.to_le_bytes();
    vec![0x66, 0xba, p[0], p[1], 0xb0, value, 0xee]
}

/// Machine code: `hlt; jmp hlt`.
pub const HALT_FOREVER: [u8; 3] = [0xf4, 0xeb, 0xfd];

/// The exit port hvlite's guests report their status on.
pub const EXIT_PORT: u16 = hvlite::initcmd::EXIT_PORT;

/// Whether this host is PVM (guest kernel mode emulated).
pub fn is_pvm() -> bool {
    hvlite::host::HostKind::detect().is_pvm()
}
pub mod api;
pub mod linux;
pub mod netns;
