//! `hvlite run --config FILE`: the example validates, files round-trip, bad files are
//! refused with the field's path (status 125), and a file boots the project's kernel with
//! the command line overriding it.

mod common;

use std::path::{Path, PathBuf};

use common::linux::{boot, initrd, kernel};
use common::*;
use hvlite::vmm::config_file::{self, FileConfig};
use serde_json::{Value, json};

const VMM_ERROR: i32 = 125;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vm.json")
}

#[test]
fn the_example_round_trips() {
    let cfg = config_file::load(&example()).expect("examples/vm.json loads");
    let again = FileConfig::parse(&cfg.to_json_pretty(), "again").unwrap();
    assert_eq!(again, cfg);
}

#[test]
fn the_example_is_valid_for_hvlite() {
    // Its files do not exist here: hvlite gets past the config file and fails on what it
    // describes, not on the file's syntax. As a VM (without its container part) the first
    // thing missing is the kernel.
    let out = run_hvlite(&["run", "--config", example().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(VMM_ERROR), "{stderr}");
    assert!(!stderr.contains("vm.json:"), "{stderr}");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(example()).unwrap()).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("rootfs");
    obj.remove("logger");
    obj.remove("metrics");
    let dir = scratch("example");
    let path = dir.join("vm.json");
    std::fs::write(&path, v.to_string()).unwrap();
    let out = run_hvlite(&["run", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(VMM_ERROR), "{stderr}");
    assert!(stderr.contains("kernels/vmlinux"), "{stderr}");
}

#[test]
fn bad_files_name_the_field() {
    let dir = scratch("badcfg");
    let cases = [
        (
            r#"{"machine-config": {"vcpu_count": 0}}"#,
            "machine-config.vcpu_count: must be between 1 and 32, got 0",
        ),
        (
            r#"{"drives": [{"drive_id": "a", "path_on_host": "x", "is_root": true}]}"#,
            "drives[0].is_root: unknown field",
        ),
        (
            r#"{"vsock": {"guest_cid": "3"}}"#,
            "vsock.guest_cid: invalid type",
        ),
        (r#"{"boot-source": "#, "EOF while parsing"),
        (
            r#"{"network-interfaces": [{"iface_id": "e", "host_dev_name": "t", "guest_mac": "01:00:00:00:00:01"}]}"#,
            "network-interfaces[0].guest_mac",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.json"));
        std::fs::write(&path, text).unwrap();
        let out = run_hvlite(&["run", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(VMM_ERROR), "{text}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{text}: expected {needle:?} in {stderr}"
        );
        assert!(stderr.contains(&format!("bad{i}.json")), "{stderr}");
    }
    let out = run_hvlite(&["run", "--config", "/nonexistent/vm.json"]);
    assert_eq!(out.status.code(), Some(VMM_ERROR));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn a_config_file_boots_linux_and_the_command_line_wins() {
    if !kvm_available("a_config_file_boots_linux_and_the_command_line_wins") {
        return;
    }
    let dir = scratch("cfgboot");
    let log = dir.join("log.txt");
    let metrics = dir.join("metrics.json");
    let cfg = json!({
        "boot-source": {"kernel_image_path": kernel(), "initrd_path": initrd()},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 96},
        "process": {"args": ["/bin/sh", "-c", "echo CPUS $(grep -c ^processor /proc/cpuinfo); exit 3"]},
        "logger": {"log_path": log, "format": "json", "level": "info"},
        "metrics": {"metrics_path": metrics, "flush_interval_secs": 1},
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let b = boot(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--cpus",
        "1",
        "--id",
        "cfg-test",
    ]);
    let ctx = b.context();
    assert_eq!(b.status, Some(3), "{ctx}");
    assert!(
        b.stdout.contains("CPUS 1"),
        "--cpus overrides the file; {ctx}"
    );
    // The log went to the file, as JSON.
    let text = std::fs::read_to_string(&log).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["vm.id"], "cfg-test");
    assert!(!b.stderr.contains("first KVM_RUN"), "{ctx}");
    assert!(text.contains("first KVM_RUN"), "{text}");
    // Periodic lines plus the last one at exit.
    let lines: Vec<Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2, "{lines:?}");
    let last = &lines[lines.len() - 1]["hvlite"];
    assert!(last["boot_time_ms"].as_u64().unwrap() > 0, "{last}");
    assert!(last["vcpu_exits"]["io_out"].as_u64().unwrap() > 0, "{last}");
}
