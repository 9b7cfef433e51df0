//! virtio-blk through the real guest: booting from an ext4 root disk, data that the guest
//! writes and syncs reaching the host file (also when hvlite is killed), a read-only disk,
//! two disks at once, a root drive named in the config file.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::linux::{boot, kernel, rootfs, start};
use common::*;
use hvlite::initcmd::INIT_MARKER;

/// A private copy of the cached root image.
fn root_copy(dir: &Path) -> String {
    let p = dir.join("root.ext4");
    std::fs::copy(rootfs(), &p).expect("copy root image");
    p.to_string_lossy().into_owned()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn root_disk_writes_persist_and_a_read_only_disk_stays_untouched() {
    if !kvm_available("root_disk_writes_persist_and_a_read_only_disk_stays_untouched") {
        return;
    }
    let dir = scratch("disk-rw-ro");
    let root = root_copy(&dir);
    let data = dir.join("data.img");
    let pattern: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::write(&data, &pattern).unwrap();
    let data_hash = sha256(&data);
    let data_ro = format!("{},ro", data.display());
    let k = kernel();
    let script = "echo CHECK-BEGIN; \
        echo persisted > /hello.txt && sync && echo wrote; \
        echo ro=$(cat /sys/block/vdb/ro) size=$(cat /sys/block/vdb/size); \
        dd if=/dev/vdb bs=512 count=1 2>/dev/null | od -An -tu1 -N4; \
        if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null; \
        then echo ro-write-succeeded; else echo ro-write-failed; fi; \
        echo serial=$(cat /sys/block/vda/serial 2>/dev/null); \
        echo CHECK-END; exit 3";
    let b = boot(&[
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--disk",
        &root,
        "--disk",
        &data_ro,
        "--cmdline",
        "root=/dev/vda",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    let ctx = b.context();
    assert!(
        b.stdout.contains(INIT_MARKER),
        "booted from the disk; {ctx}"
    );
    assert!(b.stdout.contains("wrote"), "{ctx}");
    assert!(
        b.stdout.contains("ro=1 size=2048"),
        "vdb is read-only, 1 MiB; {ctx}"
    );
    assert!(
        b.stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["0", "1", "2", "3"])),
        "vdb data readable; {ctx}"
    );
    assert!(
        b.stdout.contains("serial=hvl-"),
        "get-id serves a serial; {ctx}"
    );
    assert!(b.stdout.contains("ro-write-failed"), "{ctx}");
    assert!(!b.stdout.contains("ro-write-succeeded"), "{ctx}");
    assert_eq!(b.status, Some(3), "{ctx}");
    assert_eq!(ext4_cat(&root, "/hello.txt"), "persisted\n", "{ctx}");
    assert_eq!(
        sha256(&data),
        data_hash,
        "read-only disk must stay byte for byte"
    );
}

#[test]
fn synced_data_survives_sigkill() {
    if !kvm_available("synced_data_survives_sigkill") {
        return;
    }
    let dir = scratch("disk-kill");
    let root = root_copy(&dir);
    let k = kernel();
    let mut vm = start(&[
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--disk",
        &root,
        "--cmdline",
        "root=/dev/vda",
        "--",
        "/bin/sh",
        "-c",
        "echo durable > /kill.txt; sync; echo SYNCED-NOW; sleep 600",
    ]);
    vm.wait_for("SYNCED-NOW");
    let b = vm.kill();
    assert_eq!(b.status, None, "killed by a signal; {}", b.context());
    assert_eq!(ext4_cat(&root, "/kill.txt"), "durable\n", "{}", b.context());
}

#[test]
fn a_root_drive_in_the_config_file_boots_as_dev_vda() {
    let test = "a_root_drive_in_the_config_file_boots_as_dev_vda";
    if !kvm_available(test) {
        return;
    }
    let dir = scratch("disk-root-drive");
    let root = root_copy(&dir);
    let data = dir.join("data.img");
    std::fs::write(&data, vec![0u8; 1024 * 1024]).unwrap();
    // The root drive is listed second and the command line has no root=: hvlite puts it
    // first and tells the kernel.
    let config = serde_json::json!({
        "drives": [
            {"drive_id": "data", "path_on_host": data},
            {"drive_id": "root", "path_on_host": root, "is_read_only": true, "is_root_device": true}
        ]
    });
    let file = dir.join("vm.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let k = kernel();
    let script = "echo CMDLINE $(cat /proc/cmdline); \
        echo vda-ro=$(cat /sys/block/vda/ro) vdb-size=$(cat /sys/block/vdb/size); exit 4";
    let b = boot(&[
        "run",
        "--config",
        file.to_str().unwrap(),
        "--kernel",
        k.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    let ctx = b.context();
    assert!(
        b.stdout.contains(INIT_MARKER),
        "booted from the disk; {ctx}"
    );
    let cmdline = (b.stdout.lines())
        .find_map(|l| l.strip_prefix("CMDLINE "))
        .unwrap_or_default();
    assert!(cmdline.contains("root=/dev/vda ro"), "{ctx}");
    assert!(b.stdout.contains("vda-ro=1 vdb-size=2048"), "{ctx}");
    assert_eq!(b.status, Some(4), "{ctx}");
}

/// CPU time (utime + stime, in clock ticks) of `pid`'s thread named `name`.
fn thread_ticks(pid: u32, name: &str) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        // Fields after the command name (which ends with ')'): utime and stime are the
        // 12th and 13th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    panic!("no thread {name} in hvlite {pid}");
}

/// A drive with a bandwidth rate limiter (Firecracker's shape, from the config file): the
/// guest reads it at the configured rate, within 10%, and while the drive is throttled
/// the device's event loop sleeps on the limiter's timer: its thread's CPU time over the
/// throttled seconds stays near zero.
#[test]
fn a_rate_limited_drive_reads_at_its_limit() {
    let test = "a_rate_limited_drive_reads_at_its_limit";
    if !kvm_available(test) {
        return;
    }
    let dir = scratch("disk-rate-limit");
    let root = root_copy(&dir);
    let data = dir.join("data.img");
    let mib: u64 = 4;
    std::fs::File::create(&data)
        .and_then(|f| f.set_len(mib << 20))
        .unwrap();
    // 1 MiB/s: a 128 KiB bucket refilled in 125 ms; at most 1000 requests per 100 ms
    // (not the bound here). Low enough that the guest's own cost per request (emulated
    // kernel code on PVM hosts) stays well below it.
    let (size, refill_ms) = (128u64 << 10, 125u64);
    let rate = size as f64 / (refill_ms as f64 / 1000.0);
    let config = serde_json::json!({
        "drives": [
            {"drive_id": "root", "path_on_host": root, "is_root_device": true},
            {"drive_id": "limited", "path_on_host": data, "is_read_only": true,
             "rate_limiter": {
                 "bandwidth": {"size": size, "refill_time": refill_ms},
                 "ops": {"size": 1000, "one_time_burst": 0, "refill_time": 100}
             }}
        ]
    });
    let file = dir.join("vm.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let k = kernel();
    let script = format!(
        "echo READ-START-$((6*7)); a=$(cut -d' ' -f1 /proc/uptime); \
         dd if=/dev/vdb of=/dev/null bs=1M count={mib} iflag=direct 2>/dev/null \
           || dd if=/dev/vdb of=/dev/null bs=1M count={mib} 2>/dev/null; \
         b=$(cut -d' ' -f1 /proc/uptime); echo READ-SECONDS $a $b; echo READ-DONE-$((6*7)); exit 0"
    );
    let mut vm = start(&[
        "run",
        "--config",
        file.to_str().unwrap(),
        "--kernel",
        k.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    // Markers the guest computes: the command line (on the console) holds the script.
    vm.wait_for("READ-START-42");
    let (ticks0, wall0) = (thread_ticks(vm.pid(), "vmm-events"), Instant::now());
    vm.wait_for("READ-DONE-42");
    let loop_ticks = thread_ticks(vm.pid(), "vmm-events") - ticks0;
    let throttled = wall0.elapsed();
    let b = vm.finish();
    let ctx = b.context();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let loop_cpu = loop_ticks as f64 / hz;
    eprintln!(
        "throttled drive: device loop used {loop_cpu:.2} s of CPU in {:.2} s",
        throttled.as_secs_f64()
    );
    assert!(
        loop_cpu <= 0.05 * throttled.as_secs_f64() + 0.02,
        "the device loop used {loop_cpu:.2} s of CPU in {:.2} s throttled; {ctx}",
        throttled.as_secs_f64()
    );
    let times: Vec<f64> = (b.stdout.lines())
        .find_map(|l| l.strip_prefix("READ-SECONDS "))
        .unwrap_or_else(|| panic!("no timing; {ctx}"))
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    let seconds = times[1] - times[0];
    // The bucket starts full: that much comes at once, the rest at the rate.
    let expected = ((mib << 20) - size) as f64 / rate;
    let got_rate = (mib << 20) as f64 / seconds;
    eprintln!(
        "rate-limited read: {mib} MiB in {seconds:.2} s = {:.3} MiB/s (limit {:.3} MiB/s, expected {expected:.2} s)",
        got_rate / (1 << 20) as f64,
        rate / (1 << 20) as f64
    );
    assert!(
        (seconds - expected).abs() <= expected * 0.10,
        "{seconds:.2} s, expected {expected:.2} s within 10%; {ctx}"
    );
    assert_eq!(b.status, Some(0), "{ctx}");
}
