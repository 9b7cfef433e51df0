//! Boots the project's own Linux kernel with the project's initramfs.

mod common;

use common::linux::{boot, bzimage, initrd, kernel};
use common::*;
use hvlite::initcmd::INIT_MARKER;

#[test]
fn vmlinux_boots_to_init_on_two_cpus_and_returns_the_status() {
    if !kvm_available("vmlinux_boots_to_init_on_two_cpus_and_returns_the_status") {
        return;
    }
    let (k, i) = (kernel(), initrd());
    let script = "echo CHECK-BEGIN; uname -s; grep -c ^processor /proc/cpuinfo; \
                  cat /proc/cmdline; echo CHECK-END; \
                  for i in 1 2 3 4 5 6; do cat /proc/cpuinfo | grep -c ^processor; done; \
                  echo PIPES-END; exit 7";
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
    let ctx = b.context();
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
    // Concurrent processes (pipelines) must not see each other's memory: on PVM hosts
    // this needs `nopcid` (see boot::cmdline::PVM_OPTIONS).
    let (_, pipes) = checks.split_once("CHECK-END").expect(&ctx);
    let (pipes, _) = pipes.split_once("PIPES-END").expect(&ctx);
    let counts: Vec<&str> = pipes
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        counts,
        vec!["2"; 6],
        "six pipelines, each seeing 2 CPUs; {ctx}"
    );
    assert!(!b.stdout.contains("segfault"), "{ctx}");
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
    let ctx = b.context();
    assert!(b.stdout.contains(INIT_MARKER), "{ctx}");
    assert!(b.stdout.contains("Linux version 6.1"), "{ctx}");
    assert_eq!(b.status, Some(0), "{ctx}");
}
