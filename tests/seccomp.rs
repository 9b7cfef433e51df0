//! hvlite's seccomp filters: a forbidden system call in any kind of hvlite thread ends
//! hvlite with a line naming the call and the thread kind, status 159. The forbidden call
//! comes from the documented test-only trigger `HVLITE_SECCOMP_TEST_TRIGGER=<kind>`
//! (src/seccomp/mod.rs), which makes a thread of that kind call reboot(2) with no valid
//! magic right after its filter is installed.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// reboot(2) on x86_64.
const TRIGGER_SYSCALL: i64 = 169;

fn hvlite_with_trigger(kind: &str, args: &[&str]) -> Output {
    let mut child = Command::new(hvlite())
        .args(args)
        .env("HVLITE_SECCOMP_TEST_TRIGGER", kind)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hvlite");
    // A trigger that did not fire would leave hvlite running: give up after 60 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn assert_violation(out: &Output, kind: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = format!("hvlite: seccomp violation: syscall {TRIGGER_SYSCALL} in thread {kind}");
    assert!(stderr.contains(&line), "no {line:?} in stderr: {stderr}");
    assert_eq!(out.status.code(), Some(159), "stderr: {stderr}");
}

/// A test guest that runs until killed.
fn idle_guest(dir: &std::path::Path) -> String {
    let guest = write_guest(dir, "idle.elf", &HALT_FOREVER);
    guest.to_str().unwrap().to_string()
}

#[test]
fn a_forbidden_call_in_a_vm_thread_ends_hvlite_with_a_clear_line() {
    if !kvm_available("a_forbidden_call_in_a_vm_thread_ends_hvlite_with_a_clear_line") {
        return;
    }
    let dir = scratch("seccomp-vm");
    let guest = idle_guest(&dir);
    let metrics = dir.join("metrics.json");
    let args = [
        "run",
        "--kernel",
        &guest,
        "--memory",
        "64",
        "--metrics",
        metrics.to_str().unwrap(),
    ];
    for kind in ["vcpu", "device-loop", "vmm", "host"] {
        let out = hvlite_with_trigger(kind, &args);
        assert_violation(&out, kind);
    }
}

#[test]
fn a_forbidden_call_in_an_api_thread_ends_hvlite_with_a_clear_line() {
    // No kernel: hvlite only serves the API, no VM is started.
    let dir = scratch("seccomp-api");
    for kind in ["api", "api-control"] {
        let sock = dir.join(format!("{kind}.sock"));
        let out = hvlite_with_trigger(kind, &["run", "--api-sock", sock.to_str().unwrap()]);
        assert_violation(&out, kind);
    }
}

#[test]
fn level_0_switches_the_filters_off_from_the_cli_and_the_config_file() {
    if !kvm_available("level_0_switches_the_filters_off_from_the_cli_and_the_config_file") {
        return;
    }
    let dir = scratch("seccomp-off");
    let mut code = out_byte(EXIT_PORT, 42);
    code.extend(HALT_FOREVER);
    let guest = write_guest(&dir, "exit.elf", &code);
    let guest = guest.to_str().unwrap();
    // Unfiltered, the trigger's reboot(2) just fails and the guest reports its status.
    let out = hvlite_with_trigger(
        "vcpu",
        &[
            "run",
            "--kernel",
            guest,
            "--memory",
            "64",
            "--seccomp-level",
            "0",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(42), "stderr: {stderr}");
    assert!(
        stderr.contains("seccomp filters are off"),
        "stderr: {stderr}"
    );
    let config = dir.join("vm.json");
    let body = format!(
        r#"{{"boot-source": {{"kernel_image_path": "{guest}"}},
            "machine-config": {{"mem_size_mib": 64}}, "seccomp-level": 0}}"#
    );
    std::fs::write(&config, body).unwrap();
    let out = hvlite_with_trigger("vcpu", &["run", "--config", config.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(42),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The default is on: the same run without the level is stopped.
    let out = hvlite_with_trigger("vcpu", &["run", "--kernel", guest, "--memory", "64"]);
    assert_violation(&out, "vcpu");
}

#[test]
fn an_unknown_level_is_refused() {
    let out = run_hvlite(&["run", "--kernel", "/nonexistent", "--seccomp-level", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    assert!(stderr.contains("0 (off) or 2 (on)"), "stderr: {stderr}");
}

/// The hvlite-runtime monitor (an OCI container's VMM) runs filtered too: a forbidden call
/// in its ready notifier (a `monitor` thread, started before the VM boots) ends it with
/// the line, on the stderr it shares with `create`, and `create` fails.
#[test]
fn a_forbidden_call_in_the_oci_monitor_ends_it_with_a_clear_line() {
    if !kvm_available("a_forbidden_call_in_the_oci_monitor_ends_it_with_a_clear_line") {
        return;
    }
    let dir = scratch("seccomp-monitor");
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::os::unix::fs::symlink(linux::rootfs_dir(), bundle.join("rootfs")).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "process":{"args":["/bin/true"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
    )
    .unwrap();
    let err_path = dir.join("stderr");
    let k = linux::kernel();
    let a = linux::agent();
    let create = Command::new(env!("CARGO_BIN_EXE_hvlite-runtime"))
        .arg("--root")
        .arg(dir.join("state"))
        .args([
            "--kernel",
            k.to_str().unwrap(),
            "--agent",
            a.to_str().unwrap(),
        ])
        .args(["create", "--bundle", bundle.to_str().unwrap(), "c1"])
        .env("HVLITE_SECCOMP_TEST_TRIGGER", "monitor")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(!create.success(), "create should fail: {stderr}");
    let line = format!("hvlite: seccomp violation: syscall {TRIGGER_SYSCALL} in thread monitor");
    assert!(stderr.contains(&line), "no {line:?} in stderr: {stderr}");
}
