//! hvlite-jailer: as root, boot a test guest jailed as uid/gid 65534 and check the jail
//! from the host's /proc: ids, capabilities, no_new_privs, seccomp, namespaces (PID 1 in its
//! own PID namespace, its own mount namespace), what its root directory holds, its open
//! descriptors (an inherited one is closed), rlimits and the cgroup limits; SIGTERM ends it
//! with 143. Then a Linux
//! container guest (kernel, agent and root image given as --file bind mounts) runs a
//! command jailed: its output and exit status come back, and the guest kernel got the PVM
//! options on a PVM host (detected through KVM: the jail has no /sys).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn jailer() -> &'static str {
    env!("CARGO_BIN_EXE_hvlite-jailer")
}

fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_jailed_vm_runs_unprivileged_in_its_own_namespaces_and_cgroup() {
    let test = "a_jailed_vm_runs_unprivileged_in_its_own_namespaces_and_cgroup";
    if !kvm_available(test) {
        return;
    }
    if !is_root() {
        assert!(
            std::env::var_os("HVLITE_REQUIRE_KVM").is_none(),
            "the jailer test needs root"
        );
        eprintln!("SKIPPED {test}: not root");
        return;
    }
    let dir = scratch("jailer");
    let mut code = Vec::new();
    for b in b"jail ready\n" {
        code.extend(out_byte(0x3f8, *b));
    }
    code.extend(HALT_FOREVER);
    let guest = write_guest(&dir, "guest.elf", &code);
    let id = format!("jailtest-{}", std::process::id());
    let base = dir.join("jails");
    // A network namespace for the jail to join.
    let netns = Path::new("/var/run/netns").join(&id);
    let made = Command::new("ip").args(["netns", "add", &id]).status();
    assert!(made.is_ok_and(|s| s.success()), "ip netns add {id}");

    // A descriptor the jailer inherits without CLOEXEC: hvlite must not get it.
    let leak_path = dir.join("leaked-fd");
    std::fs::write(&leak_path, b"secret").unwrap();
    let c_leak = std::ffi::CString::new(leak_path.to_str().unwrap()).unwrap();
    // SAFETY: a plain open of a NUL-terminated path; the descriptor is closed below.
    let leaked = unsafe { libc::open(c_leak.as_ptr(), libc::O_RDONLY) };
    assert!(leaked >= 0);

    let mut child = Command::new(jailer())
        .args([
            "--id",
            &id,
            "--exec-file",
            hvlite().to_str().unwrap(),
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--chroot-base-dir",
            base.to_str().unwrap(),
            "--memory-limit-mib",
            "256",
            "--cpu-quota-us",
            "50000",
            "--nofile",
            "512",
            "--netns",
            netns.to_str().unwrap(),
            "--file",
            &format!("{}:/guest.elf", guest.display()),
            "--",
            "run",
            "--kernel",
            "/guest.elf",
            "--memory",
            "64",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hvlite-jailer");
    // SAFETY: our own descriptor, no longer needed.
    unsafe { libc::close(leaked) };
    let jailer_pid = child.id();
    let out = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stdout.take().unwrap();
    let o = Arc::clone(&out);
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            o.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !out.lock().unwrap().contains("jail ready") {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the jailer exited with {status}: {err}");
        }
        assert!(Instant::now() < deadline, "the jailed guest never printed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kids = children(jailer_pid);
    assert_eq!(kids.len(), 1, "jailer children: {kids:?}");
    let pid = kids[0];

    // Identity and privileges.
    assert_eq!(status_field(pid, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "Gid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "Groups"), "");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, cap), "0000000000000000", "{cap}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2");
    // PID 1 in its own PID namespace, its own mount namespace.
    assert_eq!(status_field(pid, "NSpid"), format!("{pid}\t1"));
    for ns in ["mnt", "pid"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace shared");
    }
    // The network namespace it was given.
    let their_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let given = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&netns).unwrap());
    assert_eq!(their_net.to_string_lossy(), format!("net:[{given}]"));
    // Its root holds only the binary, its libraries, the device nodes and the VM's file.
    let root = format!("/proc/{pid}/root");
    let mut entries: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    for e in &entries {
        assert!(
            ["dev", "guest.elf", "hvlite", "lib", "lib64", "usr"].contains(&e.as_str()),
            "unexpected {e} in the jail root: {entries:?}"
        );
    }
    let mut devs: Vec<String> = std::fs::read_dir(format!("{root}/dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    devs.sort();
    assert_eq!(devs, ["kvm", "net", "null", "urandom"]);
    assert!(!Path::new(&format!("{root}/etc")).exists());
    assert!(!Path::new(&format!("{root}/proc/self")).exists());
    // No inherited descriptor.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(
        !fds.iter().any(|f| f.contains("leaked-fd")),
        "inherited descriptor reached hvlite: {fds:?}"
    );
    // rlimits.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        nofile.split_whitespace().collect::<Vec<_>>()[3..5],
        ["512", "512"],
        "{nofile}"
    );
    // The cgroup and its limits.
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let name = format!("hvlite-{id}");
    let mut limited = Vec::new();
    let mut cgroup_dirs = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if !path.ends_with(&name) {
            continue;
        }
        let (dir, file, want) = match controllers {
            "" => ("/sys/fs/cgroup".to_string(), "memory.max", "268435456"),
            c if c.split(',').any(|x| x == "memory") => (
                "/sys/fs/cgroup/memory".to_string(),
                "memory.limit_in_bytes",
                "268435456",
            ),
            c if c.split(',').any(|x| x == "cpu") => {
                (format!("/sys/fs/cgroup/{c}"), "cpu.cfs_quota_us", "50000")
            }
            _ => continue,
        };
        let got = std::fs::read_to_string(format!("{dir}{path}/{file}")).unwrap();
        assert_eq!(got.trim(), want, "{dir}{path}/{file}");
        limited.push(file);
        cgroup_dirs.push(format!("{dir}{path}"));
    }
    assert!(
        limited.iter().any(|f| f.starts_with("memory")),
        "hvlite is in no limited memory cgroup: {cgroups}"
    );

    // SIGTERM ends hvlite (PID 1 in its namespace, where a signal's default action is
    // dropped) with 143; the jailer exits with that status and removes the cgroup.
    // SAFETY: a signal to the jailed hvlite, our grandchild.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    for d in &cgroup_dirs {
        assert!(!Path::new(d).exists(), "{d} left behind");
    }
    let _ = Command::new("ip").args(["netns", "delete", &id]).status();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_jailed_linux_container_runs_its_command() {
    let test = "a_jailed_linux_container_runs_its_command";
    if !kvm_available(test) || !root(test, "to jail hvlite") {
        return;
    }
    let dir = scratch("jailer-linux");
    // The container's root, written by the guest: a private copy owned by the jailed user.
    let image = dir.join("root.ext4");
    let copied = Command::new("cp")
        .args(["--sparse=always"])
        .arg(linux::rootfs())
        .arg(&image)
        .status();
    assert!(copied.is_ok_and(|s| s.success()), "copy the root image");
    std::os::unix::fs::chown(&image, Some(65534), Some(65534)).unwrap();
    // The jail cannot run mkfs.ext4: the agent disk is built here and put where the
    // jailed hvlite looks for it ($HVLITE_CACHE/agent/<key>.ext4).
    let agent = linux::agent();
    let agent_disk = hvlite::container::agent_disk::agent_disk(&agent).expect("agent disk");
    let disk_name = agent_disk.file_name().unwrap().to_string_lossy();
    let id = format!("jaillinux-{}", std::process::id());
    let base = dir.join("jails");
    let files = [
        format!("{}:/vmlinux", linux::kernel().display()),
        format!("{}:/hvlite-agent", agent.display()),
        format!("{}:/cache/agent/{disk_name}", agent_disk.display()),
        format!("{}:/root.ext4", image.display()),
    ];
    let mut prefix = vec![
        jailer(),
        "--id",
        &id,
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--chroot-base-dir",
        base.to_str().unwrap(),
        "--memory-limit-mib",
        "1024",
    ];
    for f in &files {
        prefix.extend(["--file", f.as_str()]);
    }
    prefix.push("--exec-file");
    let envs = [
        ("HVLITE_CACHE", std::ffi::OsStr::new("/cache")),
        ("HVLITE_AGENT", std::ffi::OsStr::new("/hvlite-agent")),
    ];
    let b = linux::start_full(
        &prefix,
        &[
            "--",
            "run",
            "--kernel",
            "/vmlinux",
            "--rootfs",
            "/root.ext4",
            "--",
            "/bin/sh",
            "-c",
            "echo jailed-linux: $(cat /proc/cmdline); echo kept > /kept.txt; exit 7",
        ],
        &envs,
        None,
    )
    .finish();
    assert_eq!(b.status, Some(7), "{}", b.context());
    let line = (b.stdout.lines())
        .find(|l| l.starts_with("jailed-linux:"))
        .unwrap_or_else(|| panic!("no output from the jailed guest; {}", b.context()));
    if is_pvm() {
        assert!(
            line.contains(hvlite::boot::cmdline::PVM_OPTIONS),
            "the jailed hvlite did not see the PVM host: {line}"
        );
    }
    assert_eq!(ext4_cat(&image, "/kept.txt"), "kept\n");
}

#[test]
fn the_jailer_refuses_bad_input_before_jailing() {
    let out = Command::new(jailer())
        .args([
            "--id",
            "bad/id",
            "--exec-file",
            "/bin/true",
            "--uid",
            "1",
            "--gid",
            "1",
            "--",
            "run",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let dir = scratch("jailer-bad");
    if is_root() {
        let out = Command::new(jailer())
            .args([
                "--id",
                "x",
                "--exec-file",
                hvlite().to_str().unwrap(),
                "--uid",
                "65534",
                "--gid",
                "65534",
                "--chroot-base-dir",
                dir.to_str().unwrap(),
                "--file",
                "/etc/hostname:relative/path",
                "--",
                "run",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert!(err.contains("jail path must be absolute"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
