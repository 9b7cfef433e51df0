//! virtio-fs through a real guest: host directories shared with `--fs`, served by a
//! virtiofsd that hvlite starts. One boot checks both directions of a read-write share,
//! a read-only share next to it (two shares at once) and EROFS on it; another kills
//! virtiofsd mid-run and checks that the guest gets I/O errors and hvlite says why.
//! Refused paths need no boot.

mod common;

use common::api::{fault, put, request, wait_for_socket};
use serde_json::json;

use std::path::Path;
use std::time::{Duration, Instant};

use common::linux::{agent, initrd, kernel, rootfs_dir, start, start_full};
use common::*;
use hvlite::initcmd::INIT_MARKER;

/// Processes named virtiofsd that descend from `ancestor`.
fn virtiofsd_under(ancestor: u32) -> Vec<i32> {
    let parent_of = |pid: i32| -> Option<(i32, String)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, rest) = stat.split_once(") ")?;
        let comm = comm.split_once('(')?.1.to_string();
        let ppid = rest.split(' ').nth(1)?.parse().ok()?;
        Some((ppid, comm))
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Some((_, comm)) = parent_of(pid) else {
            continue;
        };
        if comm != "virtiofsd" {
            continue;
        }
        let mut p = pid;
        while let Some((ppid, _)) = parent_of(p) {
            if ppid as u32 == ancestor {
                found.push(pid);
                break;
            }
            if ppid <= 1 {
                break;
            }
            p = ppid;
        }
    }
    found
}

fn fs_arg(tag: &str, dir: &Path, extra: &str) -> String {
    format!("tag={tag},path={}{extra}", dir.display())
}

#[test]
fn guest_and_host_see_each_others_files_and_read_only_shares_refuse_writes() {
    let test = "guest_and_host_see_each_others_files_and_read_only_shares_refuse_writes";
    if !kvm_available(test) || !root(test, "(virtiofsd's namespace sandbox)") {
        return;
    }
    let (rw, ro) = (scratch("vfs-rw"), scratch("vfs-ro"));
    std::fs::write(rw.join("from-host.txt"), "written by the host\n").unwrap();
    std::fs::write(ro.join("kept.txt"), "read-only content\n").unwrap();
    let (k, i) = (kernel(), initrd());
    let script = "mkdir -p /rw /ro && mount -t virtiofs data /rw && mount -t virtiofs docs /ro \
                  && echo HOST-FILE=$(cat /rw/from-host.txt) \
                  && echo RO-FILE=$(cat /ro/kept.txt) \
                  && echo 'written by the guest' > /rw/from-guest.txt \
                  && echo GUEST-WROTE; \
                  { echo nope > /ro/new.txt; } 2>/tmp/err || echo RO-WRITE=$(cat /tmp/err); \
                  while [ ! -f /rw/go ]; do sleep 0.1; done; echo GO=$(cat /rw/go); exit 0";
    let mut vm = start(&[
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        i.to_str().unwrap(),
        "--fs",
        &fs_arg("data", &rw, ""),
        "--fs",
        &fs_arg("docs", &ro, ",ro"),
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    vm.wait_for("GUEST-WROTE");
    let daemons = virtiofsd_under(vm.pid());
    assert!(!daemons.is_empty(), "hvlite started virtiofsd");
    // While the guest runs: the host reads what it wrote, and writes it an answer.
    let written = std::fs::read_to_string(rw.join("from-guest.txt")).unwrap();
    assert_eq!(written, "written by the guest\n");
    std::fs::write(rw.join("go.tmp"), "from the host, live\n").unwrap();
    std::fs::rename(rw.join("go.tmp"), rw.join("go")).unwrap();
    let b = vm.finish();
    let ctx = b.context();
    assert!(b.stdout.contains(INIT_MARKER), "{ctx}");
    assert!(b.stdout.contains("HOST-FILE=written by the host"), "{ctx}");
    assert!(b.stdout.contains("RO-FILE=read-only content"), "{ctx}");
    assert!(
        b.stdout.contains("Read-only file system"),
        "EROFS expected; {ctx}"
    );
    assert!(b.stdout.contains("GO=from the host, live"), "{ctx}");
    assert!(!ro.join("new.txt").exists(), "{ctx}");
    assert_eq!(b.status, Some(0), "{ctx}");
    // hvlite stopped (and reaped) the virtiofsd processes it started.
    for pid in daemons {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "virtiofsd {pid} left running"
        );
    }
}

#[test]
fn a_virtiofsd_that_dies_gives_the_guest_io_errors_and_hvlite_says_so() {
    let test = "a_virtiofsd_that_dies_gives_the_guest_io_errors_and_hvlite_says_so";
    if !kvm_available(test) || !root(test, "(virtiofsd's namespace sandbox)") {
        return;
    }
    let dir = scratch("vfs-dies");
    std::fs::write(dir.join("f"), "before\n").unwrap();
    let (k, i) = (kernel(), initrd());
    let script = "mkdir -p /s && mount -t virtiofs s /s && echo READ=$(cat /s/f) && \
                  echo SHARE-READY; n=0; \
                  while { echo x > /s/new-$n; } 2>/tmp/err; do n=$((n+1)); sleep 0.2; done; \
                  echo WRITE-FAILED=$(cat /tmp/err); cat /s/f >/tmp/r 2>&1; echo READ-AFTER=$(cat /tmp/r); \
                  exit 3";
    let mut vm = start(&[
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--initrd",
        i.to_str().unwrap(),
        "--fs",
        &fs_arg("s", &dir, ""),
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    vm.wait_for("SHARE-READY");
    let hv = vm.pid();
    let daemons = virtiofsd_under(hv);
    assert!(!daemons.is_empty(), "no virtiofsd under hvlite {hv}");
    for pid in &daemons {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let b = vm.finish();
    let ctx = b.context();
    assert!(b.stdout.contains("READ=before"), "{ctx}");
    assert!(b.stdout.contains("WRITE-FAILED="), "{ctx}");
    assert!(b.stdout.contains("Input/output error"), "{ctx}");
    assert!(b.stdout.contains("READ-AFTER="), "{ctx}");
    assert!(
        b.stderr
            .contains("virtio-fs s: the vhost-user backend (virtiofsd) hung up"),
        "{ctx}"
    );
    assert!(b.stderr.contains("went away while the guest ran"), "{ctx}");
    assert_eq!(b.status, Some(3), "the guest's own status; {ctx}");
}

#[test]
fn a_container_runs_on_a_virtiofs_root_with_volumes() {
    let test = "a_container_runs_on_a_virtiofs_root_with_volumes";
    if !kvm_available(test) || !root(test, "(virtiofsd's namespace sandbox)") {
        return;
    }
    let (data, conf) = (scratch("vfs-vol"), scratch("vfs-conf"));
    std::fs::write(data.join("in.txt"), "volume input\n").unwrap();
    std::fs::write(conf.join("app.conf"), "setting=1\n").unwrap();
    let (root, k, a) = (rootfs_dir(), kernel(), agent());
    let vol = format!("{}:/data", data.display());
    let ro = format!("{}:/etc/app:ro", conf.display());
    let script = "echo IN=$(cat /data/in.txt); echo CONF=$(cat /etc/app/app.conf); \
                  echo out > /data/out.txt && echo WROTE; \
                  echo x > /etc/app/new 2>/dev/null || echo RO-REFUSED; \
                  echo changed > /bin/new-in-root && echo ROOT-WRITABLE";
    let envs = [
        ("HVLITE_AGENT", a.as_os_str()),
        ("HVLITE_KERNEL", k.as_os_str()),
        ("HVLITE_LOG", std::ffi::OsStr::new("info")),
    ];
    let args = [
        "run",
        "--rootfs",
        root.to_str().unwrap(),
        "--rootfs-mode",
        "virtiofs",
        "-v",
        &vol,
        "--volume",
        &ro,
        "--",
        "/bin/sh",
        "-c",
        script,
    ];
    let b = start_full(&[], &args, &envs, None).finish();
    let ctx = b.context();
    assert!(b.stderr.contains("through virtio-fs"), "{ctx}");
    // A template cannot hold virtiofsd's state: a run with shares boots.
    assert!(
        b.stderr
            .contains("template: not used with virtio-fs shares"),
        "{ctx}"
    );
    assert!(b.stdout.contains("IN=volume input"), "{ctx}");
    assert!(b.stdout.contains("CONF=setting=1"), "{ctx}");
    assert!(
        b.stdout.contains("WROTE") && b.stdout.contains("RO-REFUSED"),
        "{ctx}"
    );
    // The root is read-only on the host and writable (an overlay) in the container.
    assert!(b.stdout.contains("ROOT-WRITABLE"), "{ctx}");
    assert!(!root.join("bin/new-in-root").exists(), "{ctx}");
    assert_eq!(
        std::fs::read_to_string(data.join("out.txt")).unwrap(),
        "out\n"
    );
    assert!(!conf.join("new").exists());
    assert_eq!(b.status, Some(0), "{ctx}");
}

#[test]
fn a_share_put_through_the_api_makes_snapshots_refused() {
    let test = "a_share_put_through_the_api_makes_snapshots_refused";
    if !kvm_available(test) || !root(test, "(virtiofsd's namespace sandbox)") {
        return;
    }
    let dir = scratch("vfs-api");
    let shared = scratch("vfs-api-share");
    let sock = dir.join("api.sock");
    let (k, i) = (kernel(), initrd());
    let mut vm = start(&["run", "--api-sock", sock.to_str().unwrap()]);
    wait_for_socket(&sock, &mut vm);
    let boot = json!({"kernel_image_path": k, "initrd_path": i});
    assert_eq!(put(&sock, "/boot-source", boot).0, 204);
    let share = json!({"fs_id": "s", "tag": "s", "path_on_host": shared.to_str().unwrap()});
    assert_eq!(put(&sock, "/fs/s", share).0, 204);
    let wrong_id = json!({"fs_id": "t", "tag": "s", "path_on_host": "/"});
    assert_eq!(put(&sock, "/fs/s", wrong_id).0, 400);
    let cfg = request(&sock, "GET", "/vm/config", None);
    assert_eq!(cfg.1["fs"][0]["tag"], "s", "{cfg:?}");
    let start = json!({"action_type": "InstanceStart"});
    assert_eq!(put(&sock, "/actions", start).0, 204);
    let paused = request(&sock, "PATCH", "/vm", Some(r#"{"state":"Paused"}"#));
    assert_eq!(paused.0, 204, "{paused:?}");
    let snap = json!({
        "snapshot_path": dir.join("state"),
        "mem_file_path": dir.join("memory"),
    });
    let r = put(&sock, "/snapshot/create", snap);
    assert_eq!(r.0, 400, "{r:?}");
    assert!(fault(&r).contains("virtio-fs shares (s)"), "{r:?}");
    assert!(!dir.join("state").exists() && !dir.join("memory").exists());
    let b = vm.kill();
    assert!(!b.stderr.contains("panicked"), "{}", b.context());
}

#[test]
fn missing_or_non_directory_paths_are_refused_before_the_guest_starts() {
    let test = "missing_or_non_directory_paths_are_refused_before_the_guest_starts";
    if !kvm_available(test) {
        return;
    }
    let dir = scratch("vfs-bad");
    let file = dir.join("file");
    std::fs::write(&file, "x").unwrap();
    let k = kernel();
    for (path, msg) in [
        (dir.join("missing"), "does not exist"),
        (file.clone(), "is not a directory"),
    ] {
        let started = Instant::now();
        let out = run_hvlite(&[
            "run",
            "--kernel",
            k.to_str().unwrap(),
            "--fs",
            &fs_arg("t", &path, ""),
            "--",
            "/bin/true",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        assert!(
            stderr.contains(&format!("share \"t\": {} {msg}", path.display())),
            "{stderr}"
        );
        assert!(!stdout.contains(INIT_MARKER), "{stdout}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }
    let out = run_hvlite(&[
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--fs",
        "tag=a b,path=/",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("--fs") && stderr.contains("whitespace"),
        "{stderr}"
    );
}
