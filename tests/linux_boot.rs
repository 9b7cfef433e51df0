//! Boots the project's own Linux kernel with the project's initramfs. Linux boots are slow
//! on PVM hosts (guest kernel mode is emulated), so each boot checks several things and
//! the boots run one at a time.
//!
//! The guest artefacts come from `HVLITE_KERNEL`, `HVLITE_BZIMAGE` and `HVLITE_INITRD` (set
//! by `scripts/test.sh`), or are built (and cached) by the project's build scripts.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use hvlite::initcmd::INIT_MARKER;

/// One Linux boot at a time: the hosts have 2 cores.
static BOOT: Mutex<()> = Mutex::new(());
/// A boot that takes longer than this has hung.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

fn artefact(var: &str, script: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    let out = Command::new("bash")
        .arg(format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR")))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(out.status.success(), "{script} failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("script printed a path").trim())
}

fn kernel() -> PathBuf {
    artefact("HVLITE_KERNEL", "build-kernel.sh")
}

fn bzimage() -> PathBuf {
    std::env::var("HVLITE_BZIMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| kernel().with_file_name("bzImage"))
}

fn initrd() -> PathBuf {
    artefact("HVLITE_INITRD", "build-initramfs.sh")
}

struct Boot {
    status: Option<i32>,
    stdout: String,
    stderr: String,
    secs: f64,
}

/// Runs hvlite with `args`, killing it if it runs past [`BOOT_TIMEOUT`].
fn boot(args: &[&str]) -> Boot {
    let _one_at_a_time = BOOT.lock().unwrap_or_else(|p| p.into_inner());
    let start = Instant::now();
    let mut child = Command::new(hvlite())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hvlite");
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for hvlite") {
            break st;
        }
        if start.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned();
            panic!("hvlite did not finish within {BOOT_TIMEOUT:?}; console so far:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let b = Boot {
        status: status.code(),
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned(),
        secs: start.elapsed().as_secs_f64(),
    };
    eprintln!("boot of {args:?} took {:.1} s", b.secs);
    b
}

#[test]
fn vmlinux_boots_to_init_on_two_cpus_and_returns_the_status() {
    if !kvm_available("vmlinux_boots_to_init_on_two_cpus_and_returns_the_status") {
        return;
    }
    let (k, i) = (kernel(), initrd());
    let script = "echo CHECK-BEGIN; uname -s; grep -c ^processor /proc/cpuinfo; \
                  cat /proc/cmdline; echo CHECK-END; exit 7";
    let b = boot(&[
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        i.to_str().unwrap(),
        "--cpus",
        "2",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    let ctx = format!("stdout:\n{}\nstderr:\n{}", b.stdout, b.stderr);
    assert!(b.stdout.contains(INIT_MARKER), "no init marker; {ctx}");
    let (_, checks) = b.stdout.split_once("CHECK-BEGIN").expect(&ctx);
    let lines: Vec<&str> = checks
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.first(), Some(&"Linux"), "{ctx}");
    assert_eq!(
        lines.get(1),
        Some(&"2"),
        "the guest must see 2 vCPUs; {ctx}"
    );
    // The PVM measures are on the command line only where the host needs them.
    let cmdline = lines.get(2).copied().unwrap_or_default();
    assert_eq!(cmdline.contains("clearcpuid="), is_pvm(), "{ctx}");
    assert_eq!(
        b.status,
        Some(7),
        "hvlite must exit with the command's status; {ctx}"
    );
    assert!(b.stderr.contains("first KVM_RUN"), "{ctx}");
}

#[test]
fn bzimage_boots_too() {
    if !kvm_available("bzimage_boots_too") {
        return;
    }
    let (k, i) = (bzimage(), initrd());
    let b = boot(&[
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        i.to_str().unwrap(),
        "--",
        "cat",
        "/proc/version",
    ]);
    let ctx = format!("stdout:\n{}\nstderr:\n{}", b.stdout, b.stderr);
    assert!(b.stdout.contains(INIT_MARKER), "{ctx}");
    assert!(b.stdout.contains("Linux version 6.1"), "{ctx}");
    assert_eq!(b.status, Some(0), "{ctx}");
}
