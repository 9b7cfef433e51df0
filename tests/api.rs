//! The REST API over its real Unix socket: configure a VM from nothing, start it, query
//! it, pause and resume it, shut it down with Ctrl-Alt-Del; every error class on the way.
//! One Linux boot covers it all (boots are slow on PVM hosts).

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::api::{fault, put, put_linux_machine, read_response, request, wait_for_socket};
use common::linux::{initrd, kernel, start};
use common::*;
use serde_json::{Value, json};

/// The errors a client can make before the start; each is a 4xx with a fault message.
fn check_errors_before_start(sock: &Path) {
    let r = request(sock, "PUT", "/machine-config", Some("{\"vcpu_count\": "));
    assert_eq!(r.0, 400, "{r:?}");
    let r = put(
        sock,
        "/machine-config",
        json!({"vcpu_count": 0, "mem_size_mib": 64}),
    );
    assert!(fault(&r).contains("vcpu_count"), "{r:?}");
    let r = request(sock, "GET", "/nothing-here", None);
    assert_eq!(r.0, 404, "{r:?}");
    let r = request(sock, "DELETE", "/vm", None);
    assert_eq!(r.0, 405, "{r:?}");
    let r = request(sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(r.0, 409, "{r:?}");
    assert!(fault(&r).contains("Not started"), "{r:?}");
    let r = put(sock, "/actions", json!({"action_type": "SendCtrlAltDel"}));
    assert_eq!(r.0, 409, "{r:?}");
    let r = put(sock, "/actions", json!({"action_type": "InstanceStart"}));
    assert!(r.0 == 400 && fault(&r).contains("boot-source"), "{r:?}");
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(70_000));
    let r = request(sock, "PUT", "/boot-source", Some(&big));
    assert_eq!(r.0, 413, "{r:?}");
    let r = put(
        sock,
        "/drives/a",
        json!({"drive_id": "b", "path_on_host": "/x"}),
    );
    assert_eq!(r.0, 400, "{r:?}");
    // Still serving, still not started.
    let r = request(sock, "GET", "/", None);
    assert_eq!(r.0, 200, "{r:?}");
    assert_eq!(r.1["state"], "Not started");
    assert_eq!(r.1["id"], "api-test");
    assert_eq!(r.1["app_name"], "hvlite");
}

/// Sum of every vCPU exit counter in the last metrics line.
fn last_exit_total(metrics: &Path) -> u64 {
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    let line = text.lines().last().expect("a metrics line");
    let v: Value = serde_json::from_str(line).unwrap();
    v["hvlite"]["vcpu_exits"]
        .as_object()
        .expect("vcpu_exits")
        .values()
        .map(|n| n.as_u64().unwrap_or(0))
        .sum()
}

fn flush(sock: &Path) {
    let r = put(sock, "/actions", json!({"action_type": "FlushMetrics"}));
    assert_eq!(r.0, 204, "{r:?}");
}

fn ticks(console: &str) -> Vec<(f64, u64)> {
    console
        .lines()
        .filter_map(|l| {
            let mut w = l.trim().strip_prefix("TICK ")?.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn api_boots_pauses_resumes_and_shuts_down_a_vm() {
    if !kvm_available("api_boots_pauses_resumes_and_shuts_down_a_vm") {
        return;
    }
    let (k, i) = (kernel(), initrd());
    let dir = scratch("api");
    let sock = dir.join("api.sock");
    let log = dir.join("hvlite.log");
    let metrics = dir.join("metrics.json");
    let disk = dir.join("scratch.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    // The command comes from the command line; everything else from the API.
    let script = "trap 'echo GOT-TERM; exit 143' TERM; \
                  while true; do echo TICK $(cut -d' ' -f1 /proc/uptime) $(date +%s); sleep 0.5; done";
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let (sock_s, log_s, metrics_s) = (path(&sock), path(&log), path(&metrics));
    let mut vm = start(&[
        "run",
        "--api-sock",
        &sock_s,
        "--id",
        "api-test",
        "--log",
        &log_s,
        "--metrics",
        &metrics_s,
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    wait_for_socket(&sock, &mut vm);
    check_errors_before_start(&sock);

    put_linux_machine(&sock, 96, &k, &i);
    let r = put(
        &sock,
        "/drives/scratch",
        json!({"drive_id": "scratch", "path_on_host": disk, "is_read_only": true}),
    );
    assert_eq!(r.0, 204, "{r:?}");
    let r = request(&sock, "GET", "/machine-config", None);
    assert_eq!(
        r.1,
        json!({"vcpu_count": 1, "mem_size_mib": 96, "smt": false,
               "track_dirty_pages": false, "huge_pages": "None"})
    );

    let started = Instant::now();
    let r = put(&sock, "/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.0, 204, "{r:?}");
    let r = put(&sock, "/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.0, 409, "{r:?}");
    let r = put(
        &sock,
        "/drives/late",
        json!({"drive_id": "late", "path_on_host": "/x"}),
    );
    assert_eq!(r.0, 409, "{r:?}");
    assert_eq!(
        request(&sock, "GET", "/vm", None).1,
        json!({"state": "Running"})
    );

    // A slow client holds a half-sent request; the VM and other clients go on.
    let mut slow = UnixStream::connect(&sock).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();

    vm.wait_for("TICK");
    eprintln!("InstanceStart to the first tick: {:?}", started.elapsed());
    while ticks(&vm.console()).len() < 3 {
        std::thread::sleep(Duration::from_millis(100));
    }

    // Pause: no ticks and no vCPU exits while paused.
    let r = request(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(r.0, 204, "{r:?}");
    let paused_at = Instant::now();
    assert_eq!(request(&sock, "GET", "/vm", None).1["state"], "Paused");
    let before = ticks(&vm.console());
    flush(&sock);
    let exits_before = last_exit_total(&metrics);
    std::thread::sleep(Duration::from_secs(3));
    flush(&sock);
    assert_eq!(
        last_exit_total(&metrics),
        exits_before,
        "vCPU exits while paused"
    );
    assert_eq!(
        ticks(&vm.console()),
        before,
        "the guest printed while paused"
    );
    assert!(last_exit_total(&metrics) > 0);
    let r = request(&sock, "PATCH", "/vm", Some(r#"{"state":"Resumed"}"#));
    assert_eq!(r.0, 204, "{r:?}");
    let paused_for = paused_at.elapsed().as_secs_f64();
    while ticks(&vm.console()).len() < before.len() + 2 {
        std::thread::sleep(Duration::from_millis(100));
    }
    // What the guest's clocks did across the pause (documented in the README).
    let after = ticks(&vm.console());
    let (last, next) = (before[before.len() - 1], after[before.len()]);
    eprintln!(
        "paused {paused_for:.2} s; guest uptime advanced {:.2} s, guest date {} s across it",
        next.0 - last.0,
        next.1 - last.1
    );
    assert!(
        next.0 - last.0 >= paused_for - 0.1,
        "uptime jumps over the pause"
    );

    // The slow client stalled nothing; the server gave up on it (request timeout, 5 s).
    let r = read_response(&mut slow);
    assert_eq!(r.0, 408, "{r:?}");
    drop(slow);

    // Ctrl-Alt-Del: the guest init stops the command (SIGTERM) and the VM.
    let r = put(&sock, "/actions", json!({"action_type": "SendCtrlAltDel"}));
    assert_eq!(r.0, 204, "{r:?}");
    let b = vm.finish();
    let ctx = b.context();
    assert!(b.stdout.contains("GOT-TERM"), "{ctx}");
    assert_eq!(b.status, Some(143), "the command's SIGTERM status; {ctx}");
    assert!(!sock.exists(), "the socket is removed at exit");

    check_log(&log);
    check_metrics(&metrics);
}

/// Every log line is JSON with the documented fields.
fn check_log(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
        .collect();
    assert!(lines.len() > 3, "{text}");
    for l in &lines {
        for field in [
            "@timestamp",
            "log.level",
            "log.logger",
            "message",
            "event.dataset",
        ] {
            assert!(l.get(field).is_some(), "no {field} in {l}");
        }
        assert_eq!(l["vm.id"], "api-test");
        assert_eq!(l["event.dataset"], "hvlite.log");
    }
    assert!(text.contains("guest init started"), "{text}");
    assert!(text.contains("API: VM Paused"), "{text}");
}

/// The metrics lines have vCPU exits, the drive's counters and the boot time.
fn check_metrics(metrics: &Path) {
    let text = std::fs::read_to_string(metrics).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["vm.id"], "api-test");
    assert_eq!(last["event.dataset"], "hvlite.metrics");
    let hv = &last["hvlite"];
    assert!(hv["vcpu_exits"]["io_out"].as_u64().unwrap() > 0, "{hv}");
    assert!(hv["block"]["scratch"]["requests"].is_u64(), "{hv}");
    // Linux's virtio driver is well-behaved: its transport refused nothing.
    assert_eq!(hv["virtio_mmio"]["scratch"]["refused"], 0, "{hv}");
    assert!(hv["boot_time_ms"].as_u64().unwrap() > 0, "{hv}");
    assert!(hv["memory"]["rss_kib"].as_u64().unwrap() > 0, "{hv}");
}

#[test]
fn a_failed_start_leaves_the_vm_configurable_and_bad_flags_are_refused() {
    let dir = scratch("api-fail");
    let sock = dir.join("api.sock");
    let mut child = std::process::Command::new(hvlite())
        .args(["run", "--api-sock", sock.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "no API socket");
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = put(
        &sock,
        "/boot-source",
        json!({"kernel_image_path": "/nonexistent/vmlinux"}),
    );
    assert_eq!(r.0, 204, "{r:?}");
    let r = put(&sock, "/actions", json!({"action_type": "InstanceStart"}));
    assert_eq!(r.0, 400, "{r:?}");
    assert!(fault(&r).contains("/nonexistent/vmlinux"), "{r:?}");
    let r = request(&sock, "GET", "/vm", None);
    assert_eq!(r.1["state"], "Not started", "{r:?}");
    // Still configurable.
    let r = put(
        &sock,
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    assert_eq!(r.0, 204, "{r:?}");
    // A second hvlite cannot take the socket of a live one.
    let out = run_hvlite(&["run", "--api-sock", sock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    let _ = child.kill();
    let _ = child.wait();

    for (args, needle) in [
        (
            &[
                "run",
                "--api-sock",
                "/tmp/x.sock",
                "--rootfs",
                "/tmp",
                "--",
                "true",
            ][..],
            "--api-sock",
        ),
        (&["run", "--id", "bad id", "--kernel", "/k"][..], "--id"),
        (
            &["run", "--log-format", "xml", "--kernel", "/k"][..],
            "--log-format",
        ),
    ] {
        let out = run_hvlite(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
