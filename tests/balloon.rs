//! virtio-balloon through a real guest, driven through the API as Firecracker documents
//! it: the guest touches 32 MiB and frees it; inflating the balloon gives pages back to
//! the host (hvlite's resident memory drops, read from /proc/PID/status); the guest's
//! statistics arrive every interval and the metrics count the pages; the errors and refusals (a PATCH before the start,
//! a target over the guest's memory, switching statistics off, a snapshot of a VM with
//! a balloon) are answered with 400 and the VM goes on.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::api::{fault, put, put_linux_machine, request, wait_for_socket};
use common::linux::{initrd, kernel, start};
use common::*;
use serde_json::{Value, json};

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Polls GET /balloon/statistics until `done` holds for it (or fails after `within`).
fn wait_stats(sock: &Path, within: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let r = request(sock, "GET", "/balloon/statistics", None);
        assert_eq!(r.0, 200, "{r:?}");
        if done(&r.1) {
            return r.1;
        }
        assert!(Instant::now() < deadline, "{what}: last statistics {}", r.1);
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn patch(sock: &Path, path: &str, body: Value) -> (u16, Value) {
    request(sock, "PATCH", path, Some(&body.to_string()))
}

#[test]
fn inflating_the_balloon_gives_guest_memory_back_to_the_host() {
    if !kvm_available("inflating_the_balloon_gives_guest_memory_back_to_the_host") {
        return;
    }
    let dir = scratch("balloon");
    let sock = dir.join("api.sock");
    let metrics = dir.join("metrics.json");
    let (k, i) = (kernel(), initrd());
    let script = "dd if=/dev/zero of=/dev/null bs=32M count=1 2>/dev/null; echo TOUCHED; \
                  while :; do sleep 1; done";
    let mut vm = start(&[
        "run",
        "--api-sock",
        sock.to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    wait_for_socket(&sock, &mut vm);
    put_linux_machine(&sock, 128, &k, &i);
    let balloon = json!({"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1});
    assert_eq!(put(&sock, "/balloon", balloon.clone()).0, 204);
    assert_eq!(request(&sock, "GET", "/balloon", None).1, balloon);
    // Before the start: no PATCH and no statistics.
    let r = patch(&sock, "/balloon", json!({"amount_mib": 8}));
    assert_eq!(r.0, 400, "{r:?}");
    let r = request(&sock, "GET", "/balloon/statistics", None);
    assert_eq!(r.0, 400, "{r:?}");
    let r = put(&sock, "/balloon", json!({"amount_mib": 1}));
    assert!(fault(&r).contains("deflate_on_oom"), "{r:?}");

    let r = put(&sock, "/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.0, 204, "{r:?}");
    vm.wait_for("TOUCHED");
    // The driver's first report (it sends one as it starts, then every second).
    let first = wait_stats(&sock, Duration::from_secs(120), "first report", |s| {
        s["total_memory"].as_u64().is_some()
    });
    assert!(
        first["total_memory"].as_u64().unwrap() > 64 << 20,
        "{first}"
    );
    assert!(first["free_memory"].as_u64().is_some(), "{first}");
    let before = rss_kib(vm.pid());

    let started = Instant::now();
    assert_eq!(patch(&sock, "/balloon", json!({"amount_mib": 24})).0, 204);
    let inflated = wait_stats(
        &sock,
        Duration::from_secs(240),
        "inflating to 24 MiB",
        |s| s["actual_mib"].as_u64() >= Some(24),
    );
    let took = started.elapsed();
    assert_eq!(inflated["target_mib"], 24, "{inflated}");
    assert_eq!(inflated["target_pages"], 24 * 256, "{inflated}");
    let after = rss_kib(vm.pid());
    eprintln!(
        "balloon: 24 MiB inflated in {:.1} s; hvlite VmRSS {before} KiB -> {after} KiB",
        took.as_secs_f64()
    );
    // The guest balloons free pages of its choice, and not all of them were backed on the
    // host (dd's 32 MiB buffer covered most but not all; CI saw 16380 KiB released once):
    // half of the 24 MiB must come back, which only MADV_DONTNEED on inflate can do.
    assert!(
        before.saturating_sub(after) >= 12 << 10,
        "VmRSS {before} KiB -> {after} KiB after inflating 24 MiB"
    );
    // Statistics keep coming, and the metrics count what the device did.
    let deadline = Instant::now() + Duration::from_secs(60);
    let counters = loop {
        assert_eq!(
            put(&sock, "/actions", json!({"action_type": "FlushMetrics"})).0,
            204
        );
        let text = std::fs::read_to_string(&metrics).unwrap_or_default();
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let c = last["hvlite"]["balloon"]["balloon"].clone();
        if c["stats_updates"].as_u64() >= Some(2) {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no second statistics report: {c}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        counters["inflated_pages"].as_u64() >= Some(24 * 256),
        "{counters}"
    );
    // Linux's driver sends only page frames of its RAM.
    assert_eq!(counters["refused_pfns"], 0, "{counters}");
    assert_eq!(counters["queue_errors"], 0, "{counters}");
    assert_eq!(request(&sock, "GET", "/balloon", None).1["amount_mib"], 24);

    // Refusals; the VM goes on.
    let r = patch(&sock, "/balloon", json!({"amount_mib": 129}));
    assert!(fault(&r).contains("more than"), "{r:?}");
    let r = patch(
        &sock,
        "/balloon/statistics",
        json!({"stats_polling_interval_s": 0}),
    );
    assert_eq!(r.0, 400, "{r:?}");
    let r = patch(
        &sock,
        "/balloon/statistics",
        json!({"stats_polling_interval_s": 2}),
    );
    assert_eq!(r.0, 204, "{r:?}");
    assert_eq!(patch(&sock, "/vm", json!({"state": "Paused"})).0, 204);
    let snap = dir.join("snap");
    let r = put(
        &sock,
        "/snapshot/create",
        json!({"snapshot_path": snap, "mem_file_path": dir.join("mem")}),
    );
    assert!(fault(&r).contains("balloon"), "{r:?}");
    assert_eq!(patch(&sock, "/vm", json!({"state": "Resumed"})).0, 204);

    // Deflating lets the guest have its memory back.
    assert_eq!(patch(&sock, "/balloon", json!({"amount_mib": 0})).0, 204);
    wait_stats(&sock, Duration::from_secs(240), "deflating", |s| {
        s["actual_mib"].as_u64() == Some(0)
    });
    assert_eq!(
        put(&sock, "/actions", json!({"action_type": "SendCtrlAltDel"})).0,
        204
    );
    let b = vm.finish();
    assert_eq!(b.status, Some(143), "{}", b.context());
    assert!(!b.stderr.contains("panicked"), "{}", b.context());
}
