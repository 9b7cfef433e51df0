//! The agent's container root end to end on the host: `container.rs` builds it from real ext4
//! images on loop devices (overlay and read-write modes), then a session runs a busybox shell
//! chrooted in it. The mounts happen inside a private mount namespace: the outer test re-runs
//! this test binary under `unshare -m` for the inner one. Needs root, `unshare`, `losetup`,
//! `mkfs.ext4` and a static `/bin/busybox`; skipped without them (failed under
//! `HVLITE_REQUIRE_KVM=1`).

use std::path::Path;
use std::process::Command;

use hvlite_protocol::agent::protocol::{HostMessage, ProcessSpec};

use super::SessionOutcome;
use super::tests::{Seen, root, session_in};
use crate::cmdline::{AgentOptions, RootMode};
use crate::container::{self, NEWROOT};

/// Tells the inner test where the images are (and that it runs in its own namespace).
const BASE_VAR: &str = "HVLITE_ROOTFS_TEST_BASE";
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: [&str; 6] = ["sh", "cat", "pwd", "test", "readlink", "ls"];

/// What the process checks inside its root; each line it prints is asserted.
const SCRIPT: &str = "echo hi > /tmp/t && cat /tmp/t; pwd; test -c /dev/null && echo null; \
    readlink /dev/stdout; test -r /proc/self/status && echo proc; \
    test -d /sys/kernel && echo sys; echo x > /dev/shm/x && echo shm; \
    echo data > /new-file && echo wrote";
const EXPECTED: &str = "hi\n/work/dir\nnull\n/proc/self/fd/1\nproc\nsys\nshm\nwrote\n";

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tools_present(test: &str) -> bool {
    let found = ["unshare", "losetup", "mkfs.ext4"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }) && Path::new(BUSYBOX).exists()
        && Path::new("/dev/loop-control").exists();
    let missing = format!("needs unshare, losetup, mkfs.ext4, {BUSYBOX} and loop devices");
    hvlite_protocol::test_env::check(test, found, &missing)
}

/// A 16 MiB ext4 image holding busybox and a few applets.
fn make_image(base: &str, name: &str) -> Result<String, String> {
    let stage = format!("{base}/stage");
    if !Path::new(&stage).exists() {
        std::fs::create_dir_all(format!("{stage}/bin")).map_err(|e| e.to_string())?;
        std::fs::copy(BUSYBOX, format!("{stage}/bin/busybox")).map_err(|e| e.to_string())?;
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", format!("{stage}/bin/{applet}"))
                .map_err(|e| e.to_string())?;
        }
    }
    let image = format!("{base}/{name}.ext4");
    run(Command::new("mkfs.ext4").args(["-q", "-F", "-d", &stage, &image, "16M"]))?;
    Ok(image)
}

/// Detaches every loop device still attached to an image under `base`.
fn detach_all(base: &str) {
    for image in ["overlay", "rw"].map(|n| format!("{base}/{n}.ext4")) {
        let Ok(list) = run(Command::new("losetup").args(["-j", &image])) else {
            continue;
        };
        for dev in list.lines().filter_map(|l| l.split(':').next()) {
            let _ = run(Command::new("losetup").args(["-d", dev]));
        }
    }
}

#[test]
fn agent_root_on_loop_devices() {
    if !root("agent_root_on_loop_devices") || !tools_present("agent_root_on_loop_devices") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap().to_string();
    let images = make_image(&base, "overlay").and_then(|_| make_image(&base, "rw"));
    let result = images.and_then(|_| {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        run(Command::new("unshare")
            .args(["-m", "--propagation", "private"])
            .arg(exe)
            .args([
                "--exact",
                "session::rootfs_tests::inner",
                "--ignored",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(BASE_VAR, &base))
    });
    detach_all(&base);
    let out = result.unwrap();
    assert!(out.contains("1 passed"), "{out}");
}

/// Builds the root in `mode` under `base/dir` from `image` and runs [`SCRIPT`] in it.
fn run_in_root(base: &str, dir: &str, image: &str, mode: RootMode) -> (String, String) {
    let base = format!("{base}/{dir}");
    for d in hvlite_protocol::agent::AGENT_DISK_DIRS {
        std::fs::create_dir_all(format!("{base}{d}")).unwrap();
    }
    let dev = run(Command::new("losetup").args(["-f", "--show", image])).unwrap();
    let opts = AgentOptions {
        root: dev.trim().to_string(),
        mode,
    };
    let mut warnings = Vec::new();
    container::execute(&container::plan(&opts, &base), |w| {
        warnings.push(w.to_string())
    })
    .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut spec = ProcessSpec::new(["sh", "-c", SCRIPT]);
    spec.env = vec!["PATH=/bin".into()];
    spec.cwd = "/work/dir".into();
    let newroot = format!("{base}{NEWROOT}");
    let (outcome, seen): (SessionOutcome, Seen) =
        session_in(Some(&newroot), HostMessage::Start(spec), |_, _| {});
    assert_eq!(outcome, SessionOutcome::Reported { status: 0 }, "{seen:?}");
    (String::from_utf8(seen.stdout).unwrap(), base)
}

#[test]
#[ignore = "run by agent_root_on_loop_devices inside a private mount namespace"]
fn inner() {
    let Ok(base) = std::env::var(BASE_VAR) else {
        return;
    };
    let (out, dir) = run_in_root(
        &base,
        "overlay",
        &format!("{base}/overlay.ext4"),
        RootMode::Overlay,
    );
    assert_eq!(out, EXPECTED);
    // Changes land in the tmpfs upper layer, not in the image.
    assert!(Path::new(&format!("{dir}/run/upper/new-file")).exists());
    assert!(!Path::new(&format!("{dir}/lower/new-file")).exists());
    assert!(Path::new(&format!("{dir}/run/upper/work/dir")).is_dir());

    let (out, dir) = run_in_root(&base, "rw", &format!("{base}/rw.ext4"), RootMode::ReadWrite);
    assert_eq!(out, EXPECTED);
    // Changes land in the image itself.
    let written = std::fs::read_to_string(format!("{dir}{NEWROOT}/new-file")).unwrap();
    assert_eq!(written, "data\n");
}
