//! A guest that fails is reported as such, in one line with status 125, in every mode:
//! a plain VM, a VM under the API, and a container. Each case boots Linux (about 25 s on
//! PVM hosts), so each boot checks one mode; the triple fault is in `test_guests`.

mod common;

use common::linux::{Boot, boot, kernel, rootfs_dir};
use common::*;

const VMM_ERROR: i32 = 125;

/// Checks that `b` ended with status 125 and exactly one error line, which starts with
/// `want`.
fn assert_one_error_line(b: &Boot, want: &str) {
    let ctx = b.context();
    assert_eq!(b.status, Some(VMM_ERROR), "{ctx}");
    let errors: Vec<&str> = b
        .stderr
        .lines()
        .filter(|l| l.starts_with("hvlite: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line; {ctx}");
    assert!(errors[0].starts_with(want), "want {want:?}; {ctx}");
    assert!(
        !b.stderr.contains("panicked at"),
        "hvlite itself panicked; {ctx}"
    );
}

#[test]
fn a_kernel_without_a_root_filesystem_is_a_reported_panic() {
    if !kvm_available("a_kernel_without_a_root_filesystem_is_a_reported_panic") {
        return;
    }
    // hvlite's default panic=-1: the kernel resets right after the panic line.
    let k = kernel();
    let b = boot(&["run", "--kernel", k.to_str().unwrap()]);
    assert_one_error_line(
        &b,
        "hvlite: error: guest kernel panicked: Kernel panic - not syncing: VFS: Unable to mount root fs",
    );
}

#[test]
fn a_panic_under_the_api_is_reported_even_with_panic_0() {
    if !kvm_available("a_panic_under_the_api_is_reported_even_with_panic_0") {
        return;
    }
    // panic=0 would leave the guest spinning: the end of the panic report ends the VM.
    let dir = scratch("panic-api");
    let sock = dir.join("api.sock");
    let k = kernel();
    let b = boot(&[
        "run",
        "--api-sock",
        sock.to_str().unwrap(),
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "panic=0",
    ]);
    assert!(
        b.stdout.contains("---[ end Kernel panic"),
        "{}",
        b.context()
    );
    assert_one_error_line(
        &b,
        "hvlite: error: guest kernel panicked: Kernel panic - not syncing: VFS: Unable to mount root fs",
    );
}

#[test]
fn a_container_whose_init_cannot_start_is_a_reported_panic() {
    if !kvm_available("a_container_whose_init_cannot_start_is_a_reported_panic") {
        return;
    }
    let root = rootfs_dir();
    let k = kernel();
    let b = boot(&[
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--rootfs",
        root.to_str().unwrap(),
        "--cmdline",
        "init=/nonexistent",
        "--",
        "/bin/true",
    ]);
    assert_one_error_line(
        &b,
        "hvlite: error: guest kernel panicked: Kernel panic - not syncing: Requested init /nonexistent failed",
    );
}
