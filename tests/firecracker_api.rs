//! Firecracker's getting-started sequence (docs/getting-started.md of
//! firecracker-microvm/firecracker), replayed with curl exactly as it is written there
//! (`curl -X PUT --unix-socket "${API_SOCKET}" --data "{...}" "http://localhost/..."`:
//! no Content-Type header, so curl labels the JSON as form data), plus its machine-config
//! call, against hvlite: logger, boot-source, drives, network-interfaces, machine-config,
//! InstanceStart. The guest boots from the root drive. The same boot checks the log the
//! logger call asked for, GET /version and GET /vm/config.

mod common;

use std::path::Path;
use std::process::Command;

use common::linux::{kernel, rootfs, start};
use common::*;
use hvlite::initcmd::INIT_MARKER;
use hvlite::vmm::config_file::FileConfig;
use serde_json::Value;

/// `curl -X METHOD --unix-socket SOCK [--data DATA] URL`, as the guide writes it, with
/// `-s -w` to learn the status; returns the status and the body.
fn curl(sock: &Path, method: &str, path: &str, data: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "-X", method, "--unix-socket"])
        .arg(sock);
    if let Some(d) = data {
        cmd.args(["--data", d]);
    }
    let out = cmd
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A TAP device for the test, deleted on drop.
struct Tap(String);

impl Tap {
    fn new() -> Self {
        let name = format!("hvfc{}", std::process::id() % 100_000);
        let ok = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let _ = ok(&["link", "del", &name]);
        assert!(ok(&["tuntap", "add", "dev", &name, "mode", "tap"]));
        assert!(ok(&["link", "set", "dev", &name, "up"]));
        Self(name)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[test]
fn firecrackers_getting_started_sequence_boots() {
    let test = "firecrackers_getting_started_sequence_boots";
    let tap_ok = Path::new("/dev/net/tun").exists()
        && Command::new("ip").arg("-V").output().is_ok()
        && root(test, "to create a TAP device");
    if !kvm_available(test) || !tap_ok {
        return;
    }
    let dir = scratch("fc-getting-started");
    let sock = dir.join("firecracker.socket");
    let logfile = dir.join("firecracker.log");
    let root_image = dir.join("rootfs.ext4");
    std::fs::copy(rootfs(), &root_image).unwrap();
    let tap = Tap::new();
    let script = "echo MAC=$(cat /sys/class/net/eth0/address); \
                  echo ROOT-RW=$(touch /rw-test && echo yes); \
                  echo CPUS=$(grep -c ^processor /proc/cpuinfo); exit 0";
    let mut vm = start(&[
        "run",
        "--api-sock",
        sock.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(vm.is_running() && std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }

    // touch $LOGFILE
    std::fs::write(&logfile, b"").unwrap();
    let put = |path: &str, data: String| {
        let r = curl(&sock, "PUT", path, Some(&data));
        assert_eq!(r.0, 204, "PUT {path} {data}: {r:?}");
    };
    put(
        "/logger",
        format!(
            "{{\n        \"log_path\": \"{}\",\n        \"level\": \"Debug\",\n        \
             \"show_level\": true,\n        \"show_log_origin\": true\n    }}",
            logfile.display()
        ),
    );
    let kernel_boot_args = "console=ttyS0 reboot=k panic=1 pci=off";
    put(
        "/boot-source",
        format!(
            "{{\n        \"kernel_image_path\": \"{}\",\n        \
             \"boot_args\": \"{kernel_boot_args}\"\n    }}",
            kernel().display()
        ),
    );
    put(
        "/drives/rootfs",
        format!(
            "{{\n        \"drive_id\": \"rootfs\",\n        \"path_on_host\": \"{}\",\n        \
             \"is_root_device\": true,\n        \"is_read_only\": false\n    }}",
            root_image.display()
        ),
    );
    let fc_mac = "06:00:AC:10:00:02";
    put(
        "/network-interfaces/net1",
        format!(
            "{{\n        \"iface_id\": \"net1\",\n        \"guest_mac\": \"{fc_mac}\",\n        \
             \"host_dev_name\": \"{}\"\n    }}",
            tap.0
        ),
    );
    // The guide's machine-config call (2 vCPUs, 1024 MiB there; less memory here, to
    // share the host).
    put(
        "/machine-config",
        "{\n        \"vcpu_count\": 2,\n        \"mem_size_mib\": 256\n    }".into(),
    );
    put(
        "/actions",
        "{\n        \"action_type\": \"InstanceStart\"\n    }".into(),
    );

    let (code, version) = curl(&sock, "GET", "/version", None);
    assert_eq!(code, 200, "{version}");
    let version: Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["firecracker_version"], env!("CARGO_PKG_VERSION"));
    let (code, config) = curl(&sock, "GET", "/vm/config", None);
    assert_eq!(code, 200, "{config}");
    let file = FileConfig::parse(&config, "GET /vm/config").unwrap();
    assert_eq!(file.drives[0].path_on_host.as_ref(), root_image.as_path());
    assert!(file.drives[0].is_root_device);
    assert_eq!(file.network_interfaces[0].host_dev_name.to_string(), tap.0);
    let boot = file.boot_source.as_ref().unwrap();
    assert_eq!(boot.boot_args.as_deref(), Some(kernel_boot_args));
    let logger = file.logger.as_ref().unwrap();
    assert_eq!(logger.show_log_origin, Some(true));

    let b = vm.finish();
    let ctx = b.context();
    assert!(b.stdout.contains(INIT_MARKER), "booted; {ctx}");
    assert!(b.stdout.contains("MAC=06:00:ac:10:00:02"), "{ctx}");
    assert!(b.stdout.contains("ROOT-RW=yes"), "{ctx}");
    assert!(b.stdout.contains("CPUS=2"), "{ctx}");
    assert_eq!(b.status, Some(0), "{ctx}");

    // The log went to the file, at debug level, with level and origin on each line.
    let log = std::fs::read_to_string(&logfile).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(lines.iter().any(|l| l["log.level"] == "DEBUG"), "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l["log.level"].is_string() && l["log.origin.file.name"].is_string()),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("the VM started"))),
        "{log}"
    );
}

/// PATCH /drives/{id} on a running VM: a bigger backing file (the guest sees the new
/// capacity through the configuration-change interrupt) and a bandwidth limit, after
/// which the guest reads the drive at the limit, within 10%.
#[test]
fn patching_a_running_drive_resizes_it_and_limits_its_rate() {
    let test = "patching_a_running_drive_resizes_it_and_limits_its_rate";
    if !kvm_available(test) {
        return;
    }
    let dir = scratch("fc-patch-drive");
    let sock = dir.join("api.sock");
    let small = dir.join("small.img");
    let big = dir.join("big.img");
    let mib: u64 = 4;
    std::fs::File::create(&small)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(mib << 20))
        .unwrap();
    // 1 MiB/s: a 128 KiB bucket refilled in 125 ms (well below what the guest reads
    // unlimited on a PVM host).
    let (size, refill_ms) = (128u64 << 10, 125u64);
    let rate = size as f64 / (refill_ms as f64 / 1000.0);
    let script = format!(
        "echo READY; while [ $(cat /sys/block/vda/size) = 2048 ]; do sleep 0.1; done; \
         echo SIZE=$(cat /sys/block/vda/size); \
         a=$(cut -d' ' -f1 /proc/uptime); \
         dd if=/dev/vda of=/dev/null bs=1M count={mib} iflag=direct 2>/dev/null \
           || dd if=/dev/vda of=/dev/null bs=1M count={mib} 2>/dev/null; \
         b=$(cut -d' ' -f1 /proc/uptime); echo READ-SECONDS $a $b; exit 0"
    );
    let mut vm = start(&[
        "run",
        "--api-sock",
        sock.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(vm.is_running() && std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let put = |path: &str, data: String| {
        let r = curl(&sock, "PUT", path, Some(&data));
        assert_eq!(r.0, 204, "PUT {path} {data}: {r:?}");
    };
    put(
        "/boot-source",
        format!(
            r#"{{"kernel_image_path": "{}", "initrd_path": "{}"}}"#,
            kernel().display(),
            common::linux::initrd().display()
        ),
    );
    put(
        "/drives/data",
        format!(
            r#"{{"drive_id": "data", "path_on_host": "{}", "is_read_only": true}}"#,
            small.display()
        ),
    );
    let patch = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}",
            "rate_limiter": {{"bandwidth": {{"size": {size}, "refill_time": {refill_ms}}}}}}}"#,
        big.display()
    );
    let r = curl(&sock, "PATCH", "/drives/data", Some(&patch));
    assert_eq!(r.0, 400, "before the start: {r:?}");
    put("/actions", r#"{"action_type": "InstanceStart"}"#.into());
    vm.wait_for("READY");
    let r = curl(
        &sock,
        "PATCH",
        "/drives/nope",
        Some(r#"{"drive_id": "nope"}"#),
    );
    assert_eq!(r.0, 400, "{r:?}");
    let r = curl(&sock, "PATCH", "/drives/data", Some(&patch));
    assert_eq!(r.0, 204, "{r:?}");
    let (_, config) = curl(&sock, "GET", "/vm/config", None);
    let file = FileConfig::parse(&config, "GET /vm/config").unwrap();
    assert_eq!(file.drives[0].path_on_host.as_ref(), big.as_path());
    assert!(file.drives[0].rate_limiter.is_some());

    let b = vm.finish();
    let ctx = b.context();
    assert!(
        b.stdout.contains(&format!("SIZE={}", (mib << 20) / 512)),
        "{ctx}"
    );
    let times: Vec<f64> = (b.stdout.lines())
        .find_map(|l| l.strip_prefix("READ-SECONDS "))
        .unwrap_or_else(|| panic!("no timing; {ctx}"))
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    let seconds = times[1] - times[0];
    let expected = ((mib << 20) - size) as f64 / rate;
    eprintln!(
        "PATCHed drive: {mib} MiB in {seconds:.2} s = {:.3} MiB/s (limit {:.3} MiB/s, expected {expected:.2} s)",
        (mib << 20) as f64 / seconds / (1 << 20) as f64,
        rate / (1 << 20) as f64
    );
    assert!(
        (seconds - expected).abs() <= expected * 0.10,
        "{seconds:.2} s, expected {expected:.2} s within 10%; {ctx}"
    );
    assert_eq!(b.status, Some(0), "{ctx}");
}
