//! Bad input gets one clear error line on stderr and hvlite's error status (125), never
//! a panic. None of these cases boots Linux.

mod common;

use std::process::{Command, Output, Stdio};

use common::*;

const VMM_ERROR: i32 = 125;

fn assert_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(VMM_ERROR), "stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "stderr should mention {needle:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

/// A tiny valid guest kernel, so that only the case under test is wrong.
fn good_kernel(dir: &std::path::Path) -> String {
    let mut code = out_byte(EXIT_PORT, 0);
    code.extend(HALT_FOREVER);
    write_guest(dir, "k.elf", &code)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn missing_kernel() {
    let out = run_hvlite(&["run", "--kernel", "/nonexistent/vmlinux"]);
    assert_error(&out, "cannot open /nonexistent/vmlinux");
}

#[test]
fn kernel_is_a_directory() {
    let dir = scratch("kdir");
    let out = run_hvlite(&["run", "--kernel", dir.to_str().unwrap()]);
    assert_error(&out, "is not a regular file");
}

#[test]
fn missing_initrd() {
    let dir = scratch("noinitrd");
    let k = good_kernel(&dir);
    let out = run_hvlite(&["run", "--kernel", &k, "--initrd", "/nonexistent/initrd"]);
    assert_error(&out, "cannot open /nonexistent/initrd");
}

#[test]
fn not_a_kernel() {
    let dir = scratch("notkernel");
    let path = dir.join("README");
    std::fs::write(&path, "this is not a kernel\n").unwrap();
    if !kvm_available("not_a_kernel") {
        return;
    }
    let out = run_hvlite(&["run", "--kernel", path.to_str().unwrap()]);
    assert_error(&out, "is not a Linux kernel");
}

#[test]
fn bad_cpu_counts() {
    for n in ["0", "33", "-1", "many"] {
        let flag = format!("--cpus={n}");
        let out = run_hvlite(&["run", "--kernel", "/k", &flag]);
        assert_error(&out, "--cpus");
    }
}

#[test]
fn bad_flags() {
    let out = run_hvlite(&["run", "--kernel", "/k", "--no-such-flag"]);
    assert_error(&out, "--no-such-flag");
    let out = run_hvlite(&["run", "--kernel", "/k", "--memory", "0"]);
    assert_error(&out, "--memory");
}

#[test]
fn nothing_to_run_is_an_error_with_a_hint_and_no_boot() {
    // With and without an installed kernel: `hvlite run` alone never boots.
    let dir = scratch("nothing-to-run");
    for kernel in [None, Some(good_kernel(&dir))] {
        let mut cmd = Command::new(hvlite());
        cmd.arg("run")
            .env_remove("HVLITE_KERNEL")
            .env("HVLITE_HOME", dir.join("empty-home"))
            .env("HVLITE_LOG", "info")
            .stdin(Stdio::null());
        if let Some(k) = &kernel {
            cmd.env("HVLITE_KERNEL", k);
        }
        let out = cmd.output().unwrap();
        assert_error(
            &out,
            "hvlite: error: nothing to run: give --rootfs DIR -- CMD (a container), \
             --kernel PATH (a VM), --config FILE or --api-sock PATH",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(out.stdout.is_empty(), "no guest output: {out:?}");
    }
}

#[test]
fn memory_larger_than_host() {
    let dir = scratch("bigmem");
    let k = good_kernel(&dir);
    let out = run_hvlite(&["run", "--kernel", &k, "--memory", "100000000"]);
    assert_error(&out, "more than this host's");
}

#[test]
fn memory_too_small_for_kernel() {
    if !kvm_available("memory_too_small_for_kernel") {
        return;
    }
    let dir = scratch("smallmem");
    let k = good_kernel(&dir);
    // The guest loads at 16 MiB; 8 MiB cannot hold it.
    let out = run_hvlite(&["run", "--kernel", &k, "--memory", "8"]);
    assert_error(&out, "too small for kernel");
    let out = run_hvlite(&["run", "--kernel", &k, "--memory", "20"]);
    assert_error(&out, "too small for kernel");
}

fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(hvlite())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn setpriv")
}

#[test]
fn unreadable_kernel_and_no_kvm_permission() {
    if !root("unreadable_kernel_and_no_kvm_permission", "to switch user") {
        return;
    }
    let dir = scratch("perm");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let k = good_kernel(&dir);
    std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = as_nobody(&["run", "--kernel", &k]);
    assert_error(&out, "Permission denied");
    // A readable kernel, but /dev/kvm (mode 0600, root) is not open to nobody.
    std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let kvm_mode = std::fs::metadata("/dev/kvm")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    if kvm_mode.is_ok_and(|m| m & 0o006 == 0) {
        let out = as_nobody(&["run", "--kernel", &k]);
        assert_error(&out, "no permission to open /dev/kvm");
    } else {
        eprintln!("SKIPPED kvm permission half: /dev/kvm is open to everyone here");
    }
}

#[test]
fn no_kvm_device() {
    if !root("no_kvm_device", "for a private mount namespace") {
        return;
    }
    let dir = scratch("nokvm");
    let k = good_kernel(&dir);
    // Hide /dev behind an empty tmpfs in a private mount namespace.
    let script = format!(
        "mount -t tmpfs none /dev && exec {} run --kernel {k}",
        hvlite().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("spawn unshare");
    assert_error(&out, "/dev/kvm does not exist");
}

#[test]
fn bad_disks_fail_before_the_guest_starts() {
    let dir = scratch("disks");
    let k = good_kernel(&dir);
    let out = run_hvlite(&["run", "--kernel", &k, "--disk", "/nonexistent/disk.img"]);
    assert_error(&out, "/nonexistent/disk.img");
    let out = run_hvlite(&["run", "--kernel", &k, "--disk", dir.to_str().unwrap()]);
    assert_error(&out, dir.to_str().unwrap());
    let odd = dir.join("odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let out = run_hvlite(&["run", "--kernel", &k, "--disk", odd.to_str().unwrap()]);
    assert_error(&out, "512");
    let out = run_hvlite(&["run", "--kernel", &k, "--disk", "x.img,fast"]);
    assert_error(&out, "unknown disk option");
}

#[test]
fn disk_without_permission() {
    if !root("disk_without_permission", "to switch user") {
        return;
    }
    let dir = scratch("diskperm");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let k = good_kernel(&dir);
    let disk = dir.join("root-only.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    std::fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // Readable by others but not writable: a read-write disk is refused, read-only is fine
    // as far as the disk goes (nobody then fails on /dev/kvm instead).
    let out = as_nobody(&["run", "--kernel", &k, "--disk", disk.to_str().unwrap()]);
    assert_error(&out, "permission denied (add ',ro'");
    let ro = format!("{},ro", disk.display());
    let out = as_nobody(&["run", "--kernel", &k, "--disk", &ro]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("root-only.img"), "stderr: {stderr}");
}

#[test]
fn bad_network_options() {
    let dir = scratch("netopts");
    let k = good_kernel(&dir);
    let out = run_hvlite(&[
        "run",
        "--kernel",
        &k,
        "--net",
        "tap=t0,mac=01:00:00:00:00:01",
    ]);
    assert_error(&out, "multicast");
    let out = run_hvlite(&["run", "--kernel", &k, "--net", "tap=t0,mac=zz"]);
    assert_error(&out, "not six hexadecimal bytes");
    let out = run_hvlite(&["run", "--kernel", &k, "--net", "mac=02:00:00:00:00:01"]);
    assert_error(&out, "tap=NAME");
    let out = run_hvlite(&[
        "run",
        "--kernel",
        &k,
        "--net",
        "tap=this-name-is-far-too-long",
    ]);
    assert_error(&out, "this-name-is-far-too-long");
}

#[test]
fn tap_that_cannot_be_created() {
    let test = "tap_that_cannot_be_created";
    let tun = std::path::Path::new("/dev/net/tun").exists();
    if !root(test, "to switch user") || !host_has(test, tun, "needs /dev/net/tun") {
        return;
    }
    let dir = scratch("tapperm");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let k = good_kernel(&dir);
    // nobody may neither open an existing TAP it does not own nor create one.
    let out = as_nobody(&["run", "--kernel", &k, "--net", "tap=hvl-nope0"]);
    assert_error(&out, "hvl-nope0");
}

#[test]
fn bad_container_options() {
    let dir = scratch("container-opts");
    let k = good_kernel(&dir);
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let r = root.to_str().unwrap();
    let cases: [(&[&str], &str); 9] = [
        (
            &["--rootfs", "/nonexistent/root", "--", "true"],
            "--rootfs /nonexistent/root: no such file",
        ),
        (
            &["--rootfs", "/dev/null", "--", "true"],
            "not a directory, an ext4 image file",
        ),
        (&["--rootfs", r], "--rootfs needs the command"),
        (&["--env", "A=1", "--", "true"], "--rootfs"),
        (
            &["--rootfs", r, "--user", "root", "--", "true"],
            "must be a number",
        ),
        (
            &["--rootfs", r, "--workdir", "tmp", "--", "true"],
            "not an absolute path",
        ),
        (
            &["--rootfs", r, "--env", "=x", "--", "true"],
            "variable name is empty",
        ),
        (
            &["--rootfs", r, "--initrd", "/x", "--", "true"],
            "cannot be used with",
        ),
        (&["--vsock", "cid=2", "--", "true"], "cid"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["run", "--kernel", &k];
        all.extend_from_slice(args);
        let out = run_hvlite(&all);
        assert_error(&out, needle);
    }
}

#[test]
fn container_without_agent_or_kernel() {
    let dir = scratch("container-noagent");
    let k = good_kernel(&dir);
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let r = root.to_str().unwrap();
    let out = Command::new(hvlite())
        .args(["run", "--kernel", &k, "--rootfs", r, "--", "true"])
        .env("HVLITE_AGENT", "/nonexistent/agent")
        .env("HVLITE_CACHE", dir.join("cache"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let mkfs = !String::from_utf8_lossy(&out.stderr).contains("mkfs.ext4 not found");
    if !host_has("container_without_agent_or_kernel", mkfs, "no mkfs.ext4") {
        return;
    }
    assert_error(&out, "cannot read the guest agent /nonexistent/agent");
    // No --kernel, no HVLITE_KERNEL and nothing installed: the error says what to do.
    let out = Command::new(hvlite())
        .args(["run", "--rootfs", r, "--", "true"])
        .env_remove("HVLITE_KERNEL")
        .env("HVLITE_HOME", dir.join("empty-home"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_error(&out, "no kernel given and none installed");
}
