//! Snapshots end to end: a counting test guest is paused, snapshotted through the API and
//! restored in new hvlite processes (from the command line and through the API), where it
//! counts on from where it stopped; every kind of bad snapshot and API misuse is refused
//! with a clear error.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::api::{fault, put, request, wait_for_socket};
use common::linux::{Running, kernel, rootfs, start, start_with};
use common::netns::{GUEST_IP, HOST_IP, Netns, TAP, can_use_tap, run};
use common::*;
use serde_json::{Value, json};

/// A guest that prints `a`..`z` over and over, one letter after each busy wait; the
/// counter lives in a register, so a restore that loses registers shows.
fn counting_guest(delay: u32) -> Vec<u8> {
    let mut code = vec![0x31, 0xdb]; // xor ebx, ebx
    code.push(0xb9); // loop: mov ecx, delay
    code.extend_from_slice(&delay.to_le_bytes());
    code.extend_from_slice(&[
        0xff, 0xc9, // dec ecx
        0x75, 0xfc, // jnz dec
        0x89, 0xd8, // mov eax, ebx
        0x31, 0xd2, // xor edx, edx
        0xbe, 0x1a, 0x00, 0x00, 0x00, // mov esi, 26
        0xf7, 0xf6, // div esi
        0x8d, 0x42, 0x61, // lea eax, [rdx + 'a']
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xee, // out dx, al
        0xff, 0xc3, // inc ebx
        0xeb, 0xe0, // jmp loop
    ]);
    code
}

/// The letters the guest printed.
fn letters(console: &str) -> String {
    console.chars().filter(char::is_ascii_lowercase).collect()
}

fn successor(c: char) -> char {
    if c == 'z' { 'a' } else { (c as u8 + 1) as char }
}

/// Waits until the guest printed at least `n` letters; returns them.
fn wait_letters(vm: &mut Running, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = letters(&vm.console());
        if l.len() >= n {
            return l;
        }
        assert!(vm.is_running(), "hvlite exited; console {l:?}");
        assert!(Instant::now() < deadline, "only {l:?} after 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks that `after` continues the count that `before` stopped at.
fn assert_continues(before: &str, after: &str) {
    let last = before.chars().last().expect("letters before");
    let first = after.chars().next().expect("letters after");
    assert_eq!(
        first,
        successor(last),
        "the count did not continue: before {before:?}, after {after:?}"
    );
    for (a, b) in after.chars().zip(after.chars().skip(1)) {
        assert_eq!(
            b,
            successor(a),
            "the count skipped after the restore: {after:?}"
        );
    }
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

/// The `io_out` vCPU exits in the last line of a metrics file.
fn io_out_exits(metrics: &Path) -> u64 {
    let text = std::fs::read_to_string(metrics).unwrap_or_default();
    let line = text.lines().last().expect("a metrics line");
    let v: Value = serde_json::from_str(line).expect("a JSON metrics line");
    v["hvlite"]["vcpu_exits"]["io_out"]
        .as_u64()
        .unwrap_or_else(|| panic!("no io_out count in {line}"))
}

fn create_body(dir: &Path) -> Value {
    json!({
        "snapshot_path": path_str(&dir.join("state")),
        "mem_file_path": path_str(&dir.join("memory")),
        "snapshot_type": "Full",
    })
}

fn load_body(dir: &Path, resume: bool) -> Value {
    json!({
        "snapshot_path": path_str(&dir.join("state")),
        "mem_backend": {"backend_type": "File", "backend_path": path_str(&dir.join("memory"))},
        "resume_vm": resume,
    })
}

fn patch_vm(sock: &Path, state: &str) -> (u16, Value) {
    request(
        sock,
        "PATCH",
        "/vm",
        Some(&json!({ "state": state }).to_string()),
    )
}

/// Boots the counting guest with an API socket, lets it count, pauses it and writes a
/// snapshot into `snap`; returns the letters printed before the snapshot and the port
/// writes (vCPU exits) the metrics counted until then.
fn snapshot_counting_guest(dir: &Path, snap: &Path) -> (String, u64) {
    let delay = if is_pvm() { 100_000 } else { 20_000_000 };
    let guest = write_guest(dir, "guest.elf", &counting_guest(delay));
    let sock = dir.join("api.sock");
    let metrics = dir.join("metrics1.json");
    let mut vm = start(&[
        "run",
        "--kernel",
        &path_str(&guest),
        "--memory",
        "64",
        "--api-sock",
        &path_str(&sock),
        "--metrics",
        &path_str(&metrics),
    ]);
    wait_for_socket(&sock, &mut vm);
    wait_letters(&mut vm, 5);
    let r = put(&sock, "/snapshot/create", create_body(snap));
    assert_eq!(r.0, 409, "create on a running VM: {r:?}");
    assert!(fault(&r).contains("paused"), "{r:?}");
    let r = put(&sock, "/snapshot/load", load_body(snap, true));
    assert_eq!(r.0, 409, "load on a running VM: {r:?}");
    let r = patch_vm(&sock, "Paused");
    assert_eq!(r.0, 204, "{r:?}");
    let before = letters(&vm.console());
    let r = put(&sock, "/snapshot/create", create_body(snap));
    assert_eq!(r.0, 204, "create: {r:?}");
    // Paused means paused: nothing more was printed.
    assert_eq!(letters(&vm.console()), before);
    let flushed = put(&sock, "/actions", json!({"action_type": "FlushMetrics"}));
    assert_eq!(flushed.0, 204, "{flushed:?}");
    // One port write per letter.
    let exits_before = io_out_exits(&metrics);
    assert!(exits_before >= before.len() as u64, "{exits_before} exits");
    let boot = vm.kill();
    assert!(
        boot.stderr.contains("snapshot created"),
        "stderr: {}",
        boot.stderr
    );
    (before, exits_before)
}

#[test]
fn a_counting_guest_continues_after_a_restore_in_a_new_process() {
    if !kvm_available("a_counting_guest_continues_after_a_restore_in_a_new_process") {
        return;
    }
    let dir = scratch("snapshot-count");
    let snap = dir.join("snap");
    std::fs::create_dir_all(&snap).unwrap();
    let (before, exits_before) = snapshot_counting_guest(&dir, &snap);
    let mem_len = std::fs::metadata(snap.join("memory")).unwrap().len();
    assert_eq!(mem_len, 64 << 20);

    // From the command line, running at once.
    let mut vm = start(&["run", "--restore", &path_str(&snap)]);
    let after = wait_letters(&mut vm, 3);
    let boot = vm.kill();
    assert_continues(&before, &after);
    assert!(
        boot.stderr.contains("snapshot restored in"),
        "{}",
        boot.stderr
    );

    // Through the API, paused, then resumed; then snapshotted again. The metrics counters
    // go on from the snapshot's.
    let sock = dir.join("api2.sock");
    let metrics2 = dir.join("metrics2.json");
    let mut vm = start(&[
        "run",
        "--api-sock",
        &path_str(&sock),
        "--metrics",
        &path_str(&metrics2),
    ]);
    wait_for_socket(&sock, &mut vm);
    let r = put(&sock, "/snapshot/load", load_body(&snap, false));
    assert_eq!(r.0, 204, "load: {r:?}");
    let r = request(&sock, "GET", "/", None);
    assert_eq!(r.1["state"], "Paused", "{r:?}");
    let r = put(&sock, "/snapshot/load", load_body(&snap, false));
    assert_eq!(r.0, 409, "second load: {r:?}");
    let r = put(
        &sock,
        "/machine-config",
        json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    assert_eq!(r.0, 409, "configure after a load: {r:?}");
    assert_eq!(patch_vm(&sock, "Resumed").0, 204);
    let after = wait_letters(&mut vm, 3);
    assert_continues(&before, &after);
    assert_eq!(patch_vm(&sock, "Paused").0, 204);
    let before2 = letters(&vm.console());
    let flushed = put(&sock, "/actions", json!({"action_type": "FlushMetrics"}));
    assert_eq!(flushed.0, 204, "{flushed:?}");
    let exits_after = io_out_exits(&metrics2);
    assert!(
        exits_after >= exits_before + before2.len() as u64,
        "{exits_after} exits: not the snapshot's {exits_before} plus {} new ones",
        before2.len()
    );
    let snap2 = dir.join("snap2");
    std::fs::create_dir_all(&snap2).unwrap();
    let r = put(&sock, "/snapshot/create", create_body(&snap2));
    assert_eq!(r.0, 204, "snapshot of a restored VM: {r:?}");
    vm.kill();
    let mut vm = start(&["run", "--restore", &path_str(&snap2)]);
    let after2 = wait_letters(&mut vm, 3);
    vm.kill();
    assert_continues(&before2, &after2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Copies the snapshot in `from` to a new directory `name` under `dir`, with the state
/// file's bytes passed through `edit`.
fn altered(dir: &Path, from: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    let mut state = std::fs::read(from.join("state")).unwrap();
    edit(&mut state);
    std::fs::write(to.join("state"), state).unwrap();
    std::fs::hard_link(from.join("memory"), to.join("memory")).unwrap();
    to
}

/// Re-encodes the state file in `from` after `edit` changed its header and state.
fn reencoded(
    dir: &Path,
    from: &Path,
    name: &str,
    edit: impl FnOnce(&mut hvlite::snapshot::Header, &mut hvlite::snapshot::VmState),
) -> PathBuf {
    altered(dir, from, name, |bytes| {
        let (mut h, mut s) = hvlite::snapshot::decode(bytes).expect("a good state file");
        edit(&mut h, &mut s);
        *bytes = hvlite::snapshot::encode(&h, &s).unwrap();
    })
}

/// `hvlite run --restore snap` must fail with hvlite's error status and `expect` in its
/// message.
fn assert_refused(snap: &Path, extra: &[&str], expect: &str) {
    let mut args = vec!["run", "--restore"];
    let snap = path_str(snap);
    args.push(&snap);
    args.extend_from_slice(extra);
    let out = run_hvlite(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{args:?}: stderr {stderr}");
    assert!(
        stderr.contains(expect),
        "{args:?}: expected {expect:?} in stderr {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_snapshots_and_overrides_are_refused() {
    if !kvm_available("bad_snapshots_and_overrides_are_refused") {
        return;
    }
    let dir = scratch("snapshot-bad");
    let snap = dir.join("snap");
    std::fs::create_dir_all(&snap).unwrap();
    snapshot_counting_guest(&dir, &snap);

    assert_refused(&dir.join("none"), &[], "cannot read the state file");
    let bad = altered(&dir, &snap, "magic", |b| b[0] = b'X');
    assert_refused(&bad, &[], "wrong magic");
    let bad = altered(&dir, &snap, "version", |b| b[8] = 9);
    assert_refused(&bad, &[], "format version 9 is not supported");
    let bad = altered(&dir, &snap, "crc", |b| {
        let mid = b.len() / 2;
        b[mid] ^= 1;
    });
    assert_refused(&bad, &[], "CRC-64");
    let bad = altered(&dir, &snap, "trailing", |b| b.push(0));
    assert_refused(&bad, &[], "after its CRC");
    let good = std::fs::read(snap.join("state")).unwrap();
    for (section, start) in hvlite::snapshot::section_offsets(&good) {
        let name = format!("cut-{start}");
        let bad = altered(&dir, &snap, &name, |b| b.truncate(start + 1));
        assert_refused(&bad, &[], &format!("truncated in its {section}"));
    }

    // A memory file of the wrong size.
    let short = dir.join("short");
    std::fs::create_dir_all(&short).unwrap();
    std::fs::copy(snap.join("state"), short.join("state")).unwrap();
    std::fs::write(short.join("memory"), vec![0u8; 4096]).unwrap();
    assert_refused(&short, &[], "has 4096 bytes");

    // Another host kind, missing CPU features, inconsistent parts.
    let bad = reencoded(&dir, &snap, "host", |h, _| {
        h.host = match h.host {
            hvlite::snapshot::HostTag::Pvm => hvlite::snapshot::HostTag::Hardware,
            hvlite::snapshot::HostTag::Hardware => hvlite::snapshot::HostTag::Pvm,
        }
    });
    assert_refused(&bad, &[], "the snapshot was taken on a");
    let bad = reencoded(&dir, &snap, "cpu", |_, s| {
        for e in &mut s.vcpus[0].cpuid {
            if e.function == 7 && e.index == 0 {
                e.ebx = u32::MAX;
            }
        }
    });
    assert_refused(&bad, &[], "lacks features");
    let bad = reencoded(&dir, &snap, "cpus", |_, s| s.config.cpus = 2);
    assert_refused(&bad, &[], "2 vCPUs configured, 1 saved");
    let bad = reencoded(&dir, &snap, "mem", |_, s| s.config.memory_mib = 128);
    assert_refused(&bad, &[], "128 MiB configured");

    // A config file that names a snapshot and resources too.
    let config = dir.join("both.json");
    let body = json!({
        "snapshot": load_body(&snap, true),
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
    });
    std::fs::write(&config, body.to_string()).unwrap();
    let out = run_hvlite(&["run", "--config", &path_str(&config)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("come from the snapshot"), "{stderr}");

    // Overrides of devices the snapshot does not have.
    assert_refused(&snap, &["--drive-override", "vdz=/x"], "drive vdz");
    assert_refused(
        &snap,
        &["--net-override", "eth3=tap9"],
        "network interface eth3",
    );
    assert_refused(&snap, &["--vsock-uds", "/tmp/x.sock"], "override vsock");

    // Through the API: a refused load leaves the instance fresh, and a good one works.
    let sock = dir.join("api3.sock");
    let mut vm = start(&["run", "--api-sock", &path_str(&sock)]);
    wait_for_socket(&sock, &mut vm);
    let crc = dir.join("crc");
    let r = put(&sock, "/snapshot/load", load_body(&crc, true));
    assert_eq!(r.0, 400, "{r:?}");
    assert!(fault(&r).contains("CRC"), "{r:?}");
    let r = put(&sock, "/snapshot/load", load_body(&short, true));
    assert_eq!(r.0, 400, "{r:?}");
    let r = put(&sock, "/snapshot/load", json!({"snapshot_path": "/x"}));
    assert_eq!(r.0, 400, "{r:?}");
    assert!(fault(&r).contains("mem_backend"), "{r:?}");
    let r = put(&sock, "/snapshot/load", load_body(&snap, true));
    assert_eq!(r.0, 204, "{r:?}");
    wait_letters(&mut vm, 2);
    vm.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Connects to guest port 5000 through hvlite's vsock socket `uds`, sends `data`, closes
/// the sending side and returns what came back.
fn echo_once(uds: &Path, data: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let s = std::os::unix::net::UnixStream::connect(uds)
        .map_err(|e| format!("connect {}: {e}", uds.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    w.write_all(b"CONNECT 5000\n")
        .map_err(|e| format!("CONNECT: {e}"))?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("CONNECT answer: {e}"))?;
    if !line.starts_with("OK ") {
        return Err(format!("CONNECT answered {line:?}"));
    }
    w.write_all(data).map_err(|e| format!("send: {e}"))?;
    w.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut back = Vec::new();
    r.read_to_end(&mut back)
        .map_err(|e| format!("receive: {e}"))?;
    Ok(back)
}

/// One Linux boot (in a network namespace): the guest writes a file to its root disk,
/// starts a vsock echo listener and waits for its disk to change size. It is snapshotted,
/// and restored with its disk copied to a larger file, another vsock socket and another
/// TAP: the guest sees the new size (a config-change interrupt), reads its file back from
/// the new disk, pings the host through the new TAP and is pinged back, the host reaches
/// the listener through the new socket, and the guest's exit status comes back.
#[test]
fn a_linux_guest_keeps_its_disk_network_and_vsock_across_a_restore() {
    let test = "a_linux_guest_keeps_its_disk_network_and_vsock_across_a_restore";
    if !kvm_available(test) || !can_use_tap(test) {
        return;
    }
    let ns = Netns::new();
    let dir = scratch("snapshot-linux");
    let root = dir.join("root.ext4");
    std::fs::copy(rootfs(), &root).expect("copy the root image");
    let snap = dir.join("snap");
    std::fs::create_dir_all(&snap).unwrap();
    let sock = dir.join("api.sock");
    let vsock = format!("cid=7,uds={}", path_str(&dir.join("v1.sock")));
    let script = "echo persisted-before > /snap.txt && sync && echo WROTE; \
        /init vsock listen 5000 echo & \
        s0=$(cat /sys/block/vda/size); echo READY-$s0; \
        while [ \"$(cat /sys/block/vda/size)\" = \"$s0\" ]; do sleep 1; done; \
        echo RESIZED-$(cat /sys/block/vda/size); \
        echo 3 > /proc/sys/vm/drop_caches; echo READBACK-$(cat /snap.txt); \
        ping -c 2 -W 10 172.16.0.1 >/dev/null && echo GUEST-PING-OK; \
        wait; echo GUEST-DONE; exit 7";
    assert!(script.contains(HOST_IP));
    let ip_cfg = format!("root=/dev/vda ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off");
    let net = format!("tap={TAP},mac=02:00:00:00:00:02");
    let in_ns = ["ip", "netns", "exec", ns.0.as_str()];
    let k = kernel();
    let mut vm = start_with(
        &in_ns,
        &[
            "run",
            "--kernel",
            &path_str(&k),
            "--disk",
            &path_str(&root),
            "--cmdline",
            &ip_cfg,
            "--net",
            &net,
            "--vsock",
            &vsock,
            "--api-sock",
            &path_str(&sock),
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
    );
    vm.wait_for("READY-");
    vm.wait_for("listening");
    assert_eq!(patch_vm(&sock, "Paused").0, 204);
    let r = put(&sock, "/snapshot/create", create_body(&snap));
    assert_eq!(r.0, 204, "create: {r:?}");
    let first = vm.kill();
    assert!(first.stdout.contains("WROTE"), "{}", first.context());

    let root2 = dir.join("root2.ext4");
    std::fs::copy(&root, &root2).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&root2)
        .unwrap();
    let size = f.metadata().unwrap().len();
    f.set_len(size + (4 << 20)).unwrap();
    drop(f);
    let uds2 = dir.join("v2.sock");
    ns.del_tap(TAP);
    ns.add_tap("hvsnap1");
    let mut vm = start_with(
        &in_ns,
        &[
            "run",
            "--restore",
            &path_str(&snap),
            "--net-override",
            "eth0=hvsnap1",
            "--drive-override",
            &format!("vda={}", path_str(&root2)),
            "--vsock-uds",
            &path_str(&uds2),
        ],
    );
    vm.wait_for("RESIZED-");
    vm.wait_for("READBACK-persisted-before");
    vm.wait_for("GUEST-PING-OK");
    let ping = run(&ns.exec(&["busybox", "ping", "-c", "2", "-W", "10", GUEST_IP]));
    let echoed = echo_once(&uds2, b"after the restore");
    let b = vm.finish();
    assert_eq!(
        echoed.as_deref(),
        Ok(&b"after the restore"[..]),
        "{}",
        b.context()
    );
    let new_sectors = (size + (4 << 20)) / 512;
    assert!(
        b.stdout.contains(&format!("RESIZED-{new_sectors}")),
        "{}",
        b.context()
    );
    assert!(b.stdout.contains("GUEST-DONE"), "{}", b.context());
    assert!(
        ping.status.success(),
        "host -> guest ping through the new TAP: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert_eq!(b.status, Some(7), "{}", b.context());
    assert!(b.stderr.contains("TRANSPORT_RESET sent"), "{}", b.context());
    let _ = std::fs::remove_dir_all(&dir);
}
