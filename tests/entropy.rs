//! virtio-rng through a real guest: with `--entropy` the guest's hw_random core picks
//! the virtio-rng device and /dev/hwrng yields bytes from the host's getrandom.

mod common;

use common::linux::{boot, initrd, kernel};
use common::*;
use hvlite::initcmd::INIT_MARKER;

#[test]
fn the_guest_reads_entropy_from_virtio_rng() {
    let test = "the_guest_reads_entropy_from_virtio_rng";
    if !kvm_available(test) {
        return;
    }
    let (k, i) = (kernel(), initrd());
    let script = "echo UPTIME-AT-INIT $(cut -d' ' -f1 /proc/uptime); \
                  echo RNG=$(cat /sys/class/misc/hw_random/rng_current); \
                  dd if=/dev/hwrng bs=64 count=4 2>/dev/null | od -An -tx1 | tr -d ' \\n' \
                    | sed 's/^/HWRNG=/'; echo; exit 0";
    let b = boot(&[
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        i.to_str().unwrap(),
        "--entropy",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    let ctx = b.context();
    assert!(b.stdout.contains(INIT_MARKER), "{ctx}");
    assert!(b.stdout.contains("RNG=virtio_rng.0"), "{ctx}");
    let hex = (b.stdout.lines())
        .find_map(|l| l.strip_prefix("HWRNG="))
        .unwrap_or_else(|| panic!("no bytes from /dev/hwrng; {ctx}"))
        .trim();
    assert_eq!(hex.len(), 512, "256 bytes read; {ctx}");
    // 256 random bytes are not all the same.
    assert!(
        hex.as_bytes().chunks(2).any(|c| c != &hex.as_bytes()[..2]),
        "{ctx}"
    );
    assert_eq!(b.status, Some(0), "{ctx}");
}
