//! Container runs through the real guest: `hvlite run --rootfs DIR -- CMD` with the
//! project's kernel, hvlite's guest agent and the busybox root directory the scripts build.
//! Each boot takes tens of seconds on PVM hosts, so each one checks several things.

mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hvlite::container::console::CRASH_WARNING;

use common::linux::{Boot, Running, agent, kernel, rootfs_dir, start_full};
use common::*;

fn envs() -> Vec<(&'static str, PathBuf)> {
    vec![("HVLITE_AGENT", agent()), ("HVLITE_KERNEL", kernel())]
}

/// Starts `hvlite run --rootfs <busybox dir> OPTS -- CMD` (kernel and agent from the
/// environment, as a user who ran scripts/setup.sh would have them).
fn start_container(opts: &[&str], cmd: &[&str], stdin: Option<Vec<u8>>) -> Running {
    let root = rootfs_dir();
    start_container_on(root.to_str().expect("utf-8 path"), opts, cmd, stdin)
}

/// Like [`start_container`] with the root filesystem `root` (a directory or an image).
fn start_container_on(root: &str, opts: &[&str], cmd: &[&str], stdin: Option<Vec<u8>>) -> Running {
    let mut args = vec!["run", "--rootfs", root];
    args.extend_from_slice(opts);
    args.push("--");
    args.extend_from_slice(cmd);
    let envs = envs();
    let envs: Vec<(&str, &OsStr)> = envs.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    start_full(&[], &args, &envs, stdin)
}

/// Runs a container to its end. A run in which a guest process crashed on a PVM host is
/// repeated once: see [`hit_pvm_defect`].
fn run_container(opts: &[&str], cmd: &[&str], stdin: Option<Vec<u8>>) -> Boot {
    let b = start_container(opts, cmd, stdin.clone()).finish();
    if !hit_pvm_defect(&b) {
        return b;
    }
    known_defect_repeat(&b);
    start_container(opts, cmd, stdin).finish()
}

/// A static x86-64 Linux executable that runs `code`: the file from offset 0 is mapped at
/// 0x400000 (file offset and address agree modulo the page size, as Linux's ELF loader
/// wants), so the code after the 120 bytes of headers starts at 0x400078.
fn user_elf(code: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    elf64(code, 0, BASE, BASE + 64 + 56, 5)
}

/// Whether hvlite reported a crashed guest process on a PVM host. There, processes that
/// run at the same time sometimes read another address space's memory and crash at start
/// (a host defect: see the README); on hardware KVM they never do, and the commands run
/// through [`run_container`] never crash on purpose, so there a crash fails the test.
fn hit_pvm_defect(b: &Boot) -> bool {
    is_pvm() && b.stderr.contains(CRASH_WARNING)
}

fn known_defect_repeat(b: &Boot) {
    let line = b
        .stderr
        .lines()
        .find(|l| l.contains(CRASH_WARNING))
        .unwrap_or_default();
    eprintln!("KNOWN PVM HOST DEFECT (a guest process crashed), repeating the run once:\n{line}");
}

/// The log line of a container run that restored its template.
const RESTORED: &str = "snapshot restored in";

#[test]
fn stdio_env_workdir_user_and_exit_status() {
    if !kvm_available("stdio_env_workdir_user_and_exit_status") {
        return;
    }
    // The same checks from the template (the default) and from a cold boot.
    for cold in [false, true] {
        check_stdio_env_workdir_user(cold);
    }
}

fn check_stdio_env_workdir_user(cold: bool) {
    let script = "echo out-1; echo err-1 >&2; \
        echo \"env=$GREETING home=$HOME path=$PATH\"; \
        echo \"cwd=$(pwd) id=$(id -u):$(id -g)\"; \
        echo \"year=$(date +%Y)\"; \
        echo err-2 >&2; echo out-2; exit 3";
    let mut opts = vec![
        "-e",
        "GREETING=hi there",
        "--workdir",
        "/tmp",
        "--user",
        "1000:100",
    ];
    if cold {
        opts.push("--no-template");
    }
    let b = run_container(&opts, &["/bin/sh", "-c", script], None);
    assert_eq!(b.status, Some(3), "{}", b.context());
    // The guest's clock is the host's (a restored template's would be the template's).
    let year = std::process::Command::new("date")
        .arg("+%Y")
        .output()
        .expect("date");
    let year = String::from_utf8_lossy(&year.stdout).trim().to_string();
    let expected = format!(
        "out-1\n\
        env=hi there home=/ path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
        cwd=/tmp id=1000:100\n\
        year={year}\n\
        out-2\n"
    );
    assert_eq!(b.stdout, expected, "{}", b.context());
    // stderr has the command's lines (and nothing of its stdout); hvlite's own log lines
    // may be there too.
    assert!(b.stderr.contains("err-1\nerr-2\n"), "{}", b.context());
    assert!(!b.stderr.contains("out-1"), "{}", b.context());
    // The kernel console is quiet without --console.
    assert!(!b.stdout.contains("Linux version") && !b.stderr.contains("Linux version"));
    assert_eq!(b.stderr.contains(RESTORED), !cold, "{}", b.context());
}

/// Runs `hvlite run --rootfs <busybox dir> -- /bin/sh -c SCRIPT` without waiting for it.
fn spawn_container(script: &str) -> std::process::Child {
    let root = rootfs_dir();
    std::process::Command::new(hvlite())
        .args(["run", "--rootfs"])
        .arg(&root)
        .args(["--", "/bin/sh", "-c", script])
        .envs(envs())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn hvlite")
}

#[test]
fn three_containers_restore_one_template_at_once() {
    if !kvm_available("three_containers_restore_one_template_at_once") {
        return;
    }
    // The template exists (or is built) before the three start; they share its memory
    // file (MAP_PRIVATE) and each gets its own root overlay, agent connection and status.
    let first = run_container(&[], &["/bin/true"], None);
    assert_eq!(first.status, Some(0), "{}", first.context());
    for attempt in 1..=2 {
        let children: Vec<_> = (0..3)
            .map(|i| {
                spawn_container(&format!(
                    "echo container-{i} > /tmp/mine; cat /tmp/mine; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; exit {}",
                    10 + i
                ))
            })
            .collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().expect("wait for hvlite"))
            .collect();
        let crashed = outs
            .iter()
            .any(|o| is_pvm() && String::from_utf8_lossy(&o.stderr).contains(CRASH_WARNING));
        if crashed && attempt == 1 {
            eprintln!("KNOWN PVM HOST DEFECT (a guest process crashed), repeating the run once");
            continue;
        }
        let mut randoms = Vec::new();
        for (i, o) in outs.iter().enumerate() {
            let stdout = String::from_utf8_lossy(&o.stdout);
            let stderr = String::from_utf8_lossy(&o.stderr);
            let ctx = format!("container {i}: stdout:\n{stdout}\nstderr:\n{stderr}");
            assert_eq!(o.status.code(), Some(10 + i as i32), "{ctx}");
            let mut lines = stdout.lines();
            assert_eq!(
                lines.next(),
                Some(format!("container-{i}").as_str()),
                "{ctx}"
            );
            let random = lines.next().unwrap_or_default().to_string();
            assert_eq!(random.len(), 32, "{ctx}");
            assert!(stderr.contains(RESTORED), "{ctx}");
            randoms.push(random);
        }
        // Restored from one random state, reseeded from the host at Start: all differ.
        randoms.sort();
        randoms.dedup();
        assert_eq!(randoms.len(), 3, "{randoms:?}");
        return;
    }
}

#[test]
fn a_damaged_template_is_rebuilt() {
    if !kvm_available("a_damaged_template_is_rebuilt") {
        return;
    }
    let first = run_container(&[], &["/bin/true"], None);
    assert_eq!(first.status, Some(0), "{}", first.context());
    let dir = restored_template_dir(&first.stderr);
    // A truncated state file: refused by its check, rebuilt (a boot), used.
    let state = dir.join("state");
    let len = std::fs::metadata(&state).expect("template state").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    let b = run_container(&[], &["/bin/sh", "-c", "echo rebuilt"], None);
    assert_eq!(b.status, Some(0), "{}", b.context());
    assert_eq!(b.stdout, "rebuilt\n", "{}", b.context());
    assert!(
        b.stderr.contains("is unusable") && b.stderr.contains("rebuilding it"),
        "{}",
        b.context()
    );
    assert!(
        b.stderr.contains("building the container VM template"),
        "{}",
        b.context()
    );
    assert!(b.stderr.contains(RESTORED), "{}", b.context());
}

/// The template directory a run's log names (the state file it restored).
fn restored_template_dir(stderr: &str) -> PathBuf {
    let key = stderr
        .lines()
        .find_map(|l| l.split("template ").nth(1)?.strip_suffix(": restoring it"))
        .unwrap_or_else(|| panic!("no template key in:\n{stderr}"));
    let list = run_hvlite_env(&["template", "list"]);
    assert!(list.contains(key), "{list}");
    let cache = std::env::var_os("HVLITE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hvlite"));
    cache.join("templates").join(key)
}

fn run_hvlite_env(args: &[&str]) -> String {
    let out = std::process::Command::new(hvlite())
        .args(args)
        .envs(envs())
        .output()
        .expect("run hvlite");
    assert!(out.status.success(), "hvlite {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_template_needs_a_container_and_refuses_restore() {
    for args in [
        &["run", "--no-template", "--kernel", "/nonexistent"][..],
        &["run", "--restore", "/nonexistent", "--no-template"][..],
    ] {
        let out = run_hvlite(args);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--no-template") || err.contains("--rootfs"),
            "{err}"
        );
    }
}

#[test]
fn stdin_is_forwarded_and_changes_are_discarded() {
    if !kvm_available("stdin_is_forwarded_and_changes_are_discarded") {
        return;
    }
    let input: Vec<u8> = (0..200_000u32)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz\n"[(i % 27) as usize])
        .collect();
    let script = "if [ -e /etc/hvlite-marker ]; then echo LEAKED; fi; \
        echo changed > /etc/hvlite-marker; cat; echo; echo done";
    let b = run_container(&["-i"], &["/bin/sh", "-c", script], Some(input.clone()));
    assert_eq!(b.status, Some(0), "{}", b.context());
    let mut expected = input.clone();
    expected.extend_from_slice(b"\ndone\n");
    let got = &b.stdout_bytes;
    if got != &expected {
        let bad = differing(&expected, got);
        let known = is_pvm() && known_pvm_pipe_corruption(&expected, got);
        assert!(
            known,
            "stdout differs from stdin (+done): {} bytes vs {}, {} bytes differ from offset {:?}; stderr:\n{}",
            got.len(),
            expected.len(),
            bad.len(),
            bad.first(),
            b.stderr
        );
        eprintln!(
            "KNOWN PVM HOST DEFECT: 64 bytes at offset {:?} of the forwarded stdin were replaced \
             inside the guest (see known_pvm_pipe_corruption); everything else arrived intact",
            bad.first()
        );
    }
    // A second run of the same root directory does not see the first one's change.
    let b = run_container(
        &[],
        &[
            "/bin/sh",
            "-c",
            "cat /etc/hvlite-marker 2>/dev/null || echo clean",
        ],
        None,
    );
    assert_eq!(b.status, Some(0), "{}", b.context());
    assert_eq!(b.stdout, "clean\n", "{}", b.context());
}

/// The offsets, within the shorter of the two, at which `a` and `b` differ.
fn differing(a: &[u8], b: &[u8]) -> Vec<usize> {
    (0..a.len().min(b.len()))
        .filter(|&i| a[i] != b[i])
        .collect()
}

/// The one corruption seen on PVM hosts (never on hardware KVM): a single 64-byte,
/// 64-byte-aligned block of the stream, at the start of one of the agent's 32 KiB writes
/// into the process's stdin pipe, holds another process's freed heap (malloc free-list
/// pointers) instead of the data; the length and every other byte are right. The guest
/// kernel's pipe page kept its old contents there: the bytes travelled intact through
/// hvlite and vsock (the 4 MiB vsock echo test compares them) and the agent never had such
/// data. Anything else, or any corruption on hardware KVM, fails the test.
fn known_pvm_pipe_corruption(expected: &[u8], got: &[u8]) -> bool {
    if got.len() != expected.len() {
        return false;
    }
    let bad = differing(expected, got);
    match (bad.first(), bad.last()) {
        (Some(&first), Some(&last)) => {
            let block = first - first % 64;
            block % (32 * 1024) == 0 && last < block + 64
        }
        _ => false,
    }
}

#[test]
fn sigterm_is_forwarded_and_the_signal_status_returned() {
    if !kvm_available("sigterm_is_forwarded_and_the_signal_status_returned") {
        return;
    }
    let mut r = start_container(&[], &["/bin/sh", "-c", "echo ready; exec sleep 600"], None);
    // Once `ready` is out the process runs. No wait for the exec: before it (sh) and
    // after it (sleep) the process has SIGTERM's default action, so either way it ends
    // with that signal.
    r.wait_for("ready");
    r.signal(libc::SIGTERM);
    let b = r.finish();
    assert_eq!(b.status, Some(128 + libc::SIGTERM), "{}", b.context());
}

/// How long any one socket step of the vsock test may block before the test fails
/// (instead of hanging the suite).
const SOCKET_TIMEOUT: Duration = Duration::from_secs(240);

/// Accepts one connection on `listener` (giving up once `stop` is set) and reads it to the
/// end.
fn read_all_from(
    listener: UnixListener,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Vec<u8>, String>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut s = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if stop.load(Ordering::Relaxed) {
                        return Err("the guest never connected to host port 6000".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(SOCKET_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut v = Vec::new();
        match s.read_to_end(&mut v) {
            Ok(_) => Ok(v),
            Err(e) => Err(format!("after {} bytes from the guest: {e}", v.len())),
        }
    })
}

/// Connects to the guest's port 5000 through hvlite's vsock socket `uds`, sends `data`,
/// half-closes, and returns everything the guest sent back.
fn echo_through_guest(uds: &std::path::Path, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {}: {e}", uds.display()))?;
    s.set_read_timeout(Some(SOCKET_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(SOCKET_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"CONNECT 5000\n")
        .map_err(|e| format!("CONNECT: {e}"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        s.read_exact(&mut byte)
            .map_err(|e| format!("reading the OK line (got {line:?}): {e}"))?;
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    if !line.starts_with("OK ") {
        return Err(format!("CONNECT answered {line:?}"));
    }
    let mut writer = s.try_clone().map_err(|e| e.to_string())?;
    let sent = data.to_vec();
    let w = std::thread::spawn(move || {
        writer
            .write_all(&sent)
            .and_then(|()| writer.shutdown(std::net::Shutdown::Write))
    });
    let mut echoed = Vec::new();
    let read = s.read_to_end(&mut echoed);
    let wrote = w.join().map_err(|_| "writer thread panicked".to_string())?;
    read.map_err(|e| format!("after {} echoed bytes: {e}", echoed.len()))?;
    wrote.map_err(|e| format!("writing to the guest: {e}"))?;
    Ok(echoed)
}

#[test]
fn vsock_host_and_guest_connections_carry_4_mib_intact() {
    if !kvm_available("vsock_host_and_guest_connections_carry_4_mib_intact") {
        return;
    }
    for attempt in 1..=2 {
        match vsock_round_trips(attempt) {
            Ok(()) => return,
            Err((msg, b)) if attempt == 1 && hit_pvm_defect(&b) => {
                eprintln!("{msg}");
                known_defect_repeat(&b);
            }
            Err((msg, b)) => panic!("{msg}\n{}", b.context()),
        }
    }
}

/// One boot of the vsock test: a guest listener echoes 4 MiB from the host while a guest
/// client sends 4 MiB to a host listener. An error has what hvlite printed.
fn vsock_round_trips(attempt: u32) -> Result<(), (String, Boot)> {
    const SIZE: usize = 4 << 20;
    let dir = scratch(&format!("vsock-{attempt}"));
    let uds = dir.join("v.sock");
    // Guest-initiated connections to host port 6000 land here.
    let stop = Arc::new(AtomicBool::new(false));
    let listener = UnixListener::bind(dir.join("v.sock_6000")).expect("bind v.sock_6000");
    let from_guest = read_all_from(listener, Arc::clone(&stop));
    let vsock = format!("cid=7,uds={}", uds.display());
    let script = format!(
        "hvlite-vsock listen 5000 echo & \
         hvlite-vsock send 2 6000 {SIZE} || echo SEND-FAILED; wait; echo guest-done"
    );
    let mut r = start_container(&["--vsock", &vsock], &["/bin/sh", "-c", &script], None);
    let echoed = r.try_wait_for("listening").and_then(|()| {
        // Host-initiated: CONNECT to the guest's echo listener, 4 MiB each way. Every
        // step has a deadline.
        let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 253) as u8).collect();
        let echoed = echo_through_guest(&uds, &data)?;
        if echoed.len() != SIZE {
            return Err(format!("{} bytes echoed of {SIZE}", echoed.len()));
        }
        if echoed != data {
            return Err("echoed bytes differ".into());
        }
        Ok(())
    });
    if let Err(e) = echoed {
        stop.store(true, Ordering::Relaxed);
        return Err((format!("host-to-guest echo: {e}"), r.kill()));
    }
    let b = r.finish();
    stop.store(true, Ordering::Relaxed);
    let got = from_guest.join().expect("reader thread");
    let check = || -> Result<(), String> {
        if b.status != Some(0)
            || !b.stdout.contains("guest-done")
            || b.stdout.contains("SEND-FAILED")
        {
            return Err(format!("guest script failed (status {:?})", b.status));
        }
        let got = got?;
        if got.len() != SIZE {
            return Err(format!("guest-to-host: {} bytes of {SIZE}", got.len()));
        }
        if !got.iter().enumerate().all(|(i, &v)| v == i as u8) {
            return Err("guest-to-host bytes differ from the tool's pattern".into());
        }
        Ok(())
    };
    check().map_err(|e| (e, b))
}

#[test]
fn an_agent_that_dies_is_a_clear_error() {
    if !kvm_available("an_agent_that_dies_is_a_clear_error") {
        return;
    }
    // busybox-static as the "agent": run as /hvlite-init it finds no such applet and exits,
    // so the guest's PID 1 dies, the kernel panics and reboots.
    let root = rootfs_dir();
    let args = ["run", "--rootfs", root.to_str().unwrap(), "--", "/bin/true"];
    let kernel = kernel();
    let envs: [(&str, &OsStr); 2] = [
        ("HVLITE_AGENT", OsStr::new("/bin/busybox")),
        ("HVLITE_KERNEL", kernel.as_os_str()),
    ];
    let b = start_full(&[], &args, &envs, None).finish();
    assert_eq!(b.status, Some(125), "{}", b.context());
    assert!(
        b.stderr
            .contains("hvlite: error: guest kernel panicked: Kernel panic - not syncing: Attempted to kill init"),
        "{}",
        b.context()
    );
    assert!(
        b.stderr.contains("last guest console lines") && b.stderr.contains("Kernel panic"),
        "{}",
        b.context()
    );
}

#[test]
fn an_image_rootfs_is_used_read_write_and_a_crashed_agent_is_retried() {
    if !kvm_available("an_image_rootfs_is_used_read_write_and_a_crashed_agent_is_retried") {
        return;
    }
    let dir = scratch("rootfs-image");
    let image = dir.join("root.ext4");
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(rootfs_dir())
        .arg(&image)
        .arg("32M")
        .output()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(
        mkfs.status.success(),
        "{}",
        String::from_utf8_lossy(&mkfs.stderr)
    );
    // A program that dereferences NULL, to see hvlite report a crashed guest process.
    let crasher = dir.join("crasher");
    std::fs::write(&crasher, user_elf(&[0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0])).unwrap();
    let debugfs = std::process::Command::new("debugfs")
        .args(["-w", "-R"])
        .arg(format!("write {} /crasher", crasher.display()))
        .arg(&image)
        .output()
        .expect("debugfs");
    assert!(debugfs.status.success(), "{debugfs:?}");
    let chmod = std::process::Command::new("debugfs")
        .args(["-w", "-R", "sif /crasher mode 0100755"])
        .arg(&image)
        .output()
        .expect("debugfs");
    assert!(chmod.status.success(), "{chmod:?}");
    // The user's process itself crashes at the end (sh execs the crasher): hvlite exits
    // with 139 as the process did, with the kernel's report as a warning, and no error of
    // its own.
    let cmd = [
        "/bin/sh",
        "-c",
        "echo kept > /kept.txt; /crasher; echo crasher=$?; exec /crasher",
    ];
    // The test-only switch makes the agent crash (a real fault, like the PVM defect)
    // before it starts the process on the first attempt (a template of its own, restored:
    // the switch is on the template's command line); hvlite boots once more (cold), says
    // so, and the process runs exactly once.
    let envs = envs();
    let mut envs: Vec<(&str, &OsStr)> = envs.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    envs.push(("HVLITE_AGENT_TEST_CRASH", OsStr::new("before-start")));
    let args = ["run", "--rootfs", image.to_str().unwrap(), "--"];
    let args: Vec<&str> = args.iter().chain(cmd.iter()).copied().collect();
    let b = start_full(&[], &args, &envs, None).finish();
    assert_eq!(b.status, Some(139), "{}", b.context());
    assert_eq!(b.stdout, "crasher=139\n", "ran once; {}", b.context());
    assert!(
        b.stderr.contains(
            "the guest agent (PID 1) crashed in the restored template before the \
             container's process started (guest kernel panicked: Kernel panic - not syncing: Attempted to kill init! \
             exitcode=0x0000000b); booting the VM once more"
        ),
        "{}",
        b.context()
    );
    assert!(!b.stderr.contains("hvlite: error"), "{}", b.context());
    assert_eq!(b.stderr.matches(RESTORED).count(), 1, "{}", b.context());
    // The kernel's report reaches hvlite's log even though the console is quiet.
    let report = b
        .stderr
        .lines()
        .find(|l| l.contains(&format!("{CRASH_WARNING}: crasher[")))
        .unwrap_or_else(|| panic!("no crash report; {}", b.context()));
    assert!(report.contains("segfault at 0 ip "), "{report}");
    assert_eq!(
        b.stderr
            .matches(&format!("{CRASH_WARNING}: crasher["))
            .count(),
        2,
        "both crashes of the user's process are reported; {}",
        b.context()
    );
    // The agent synced before reporting: the change is in the image file.
    assert_eq!(ext4_cat(&image, "/kept.txt"), "kept\n");
}

#[test]
fn only_the_known_pvm_signature_is_tolerated() {
    let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let with = |start: usize, len: usize| {
        let mut v = data.clone();
        v[start..start + len].iter_mut().for_each(|b| *b ^= 0xff);
        v
    };
    assert!(known_pvm_pipe_corruption(&data, &with(163_840, 64)));
    assert!(known_pvm_pipe_corruption(&data, &with(0, 17)));
    assert!(
        !known_pvm_pipe_corruption(&data, &data),
        "no difference is not a corruption"
    );
    assert!(!known_pvm_pipe_corruption(&data, &with(163_840, 65)));
    assert!(!known_pvm_pipe_corruption(&data, &with(1000, 8)));
    assert!(!known_pvm_pipe_corruption(&data, &with(32_768 + 64, 8)));
    assert!(!known_pvm_pipe_corruption(&data, &data[1..]));
    let mut two = with(0, 8);
    two[65_536] ^= 1;
    assert!(!known_pvm_pipe_corruption(&data, &two));
}
