//! `hvlite-runtime`'s own lifecycle, as an engine drives it: refused bundles and commands
//! (no boot), then one boot for create / state / start / kill / state / delete, and one for
//! directory bind mounts (virtio-fs shares).

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// One boot at a time (2 cores).
static ONE_BOOT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn runtime() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hvlite-runtime"))
}

fn rt(root: &Path, args: &[&str]) -> Output {
    Command::new(runtime())
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run hvlite-runtime")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_refused(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "should fail: {err}");
    assert!(
        err.contains(needle),
        "stderr should mention {needle:?}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// A bundle whose root links to the busybox root directory.
fn bundle(dir: &Path, config: &str) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(&b).unwrap();
    let _ = symlink(linux::rootfs_dir(), b.join("rootfs"));
    std::fs::write(b.join("config.json"), config).unwrap();
    b
}

fn config(args: &str, extra: &str) -> String {
    format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"hostname":"box",
        "process":{{"args":{args},"cwd":"/","env":["PATH=/bin:/usr/bin"],"user":{{"uid":0,"gid":0}}}},
        "annotations":{{"io.hvlite.memory_mib":"256","org.example":"x"}}{extra}}}"#
    )
}

fn leftovers(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn bad_bundles_and_commands_are_refused_and_leave_nothing_behind() {
    let dir = scratch("oci-bad");
    let root = dir.join("state");
    let b = dir.join("bundle");
    std::fs::create_dir_all(&b).unwrap();
    let b_s = b.to_str().unwrap();
    let create = |root: &Path| rt(root, &["create", "--bundle", b_s, "c1"]);

    assert_refused(&create(&root), "config.json is missing");
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "not a valid OCI runtime spec"),
        (
            config(r#"["/bin/true"]"#, "").replace("1.0.2", "0.5.0"),
            "unsupported ociVersion",
        ),
        (
            config(r#"["/bin/true"]"#, "").replace("\"rootfs\"", "\"gone\""),
            "not a directory",
        ),
        (config(r#"[]"#, ""), "process.args is empty"),
        (
            config(r#"["/bin/true"]"#, "").replace("\"256\"", "\"9\""),
            "io.hvlite.memory_mib",
        ),
        (
            config(
                r#"["/bin/true"]"#,
                &format!(
                    r#","mounts":[{{"destination":"/my data","type":"bind","source":"{}"}}]"#,
                    dir.display()
                ),
            ),
            "mount at /my data",
        ),
        (
            config(r#"["/bin/true"]"#, "").replace("\"cwd\"", "\"terminal\":true,\"cwd\""),
            "no --console-socket",
        ),
        (
            config(
                r#"["/bin/true"]"#,
                r#","linux":{"namespaces":[{"type":"network","path":"/run/netns/hvlite-gone"}]}"#,
            ),
            "network namespace /run/netns/hvlite-gone: no such file",
        ),
        (
            config(
                r#"["/bin/true"]"#,
                r#","linux":{"namespaces":[{"type":"network","path":"/proc/self/ns/uts"}]}"#,
            ),
            "/proc/self/ns/uts is not a network namespace",
        ),
    ];
    for (cfg, needle) in cases {
        bundle(&dir, &cfg);
        assert_refused(&create(&root), needle);
        assert!(
            leftovers(&root).is_empty(),
            "{needle}: left {:?}",
            leftovers(&root)
        );
    }
    // Missing kernel: refused before anything is created.
    bundle(&dir, &config(r#"["/bin/true"]"#, ""));
    let o = rt(
        &root,
        &[
            "--kernel",
            "/nonexistent/vmlinux",
            "create",
            "--bundle",
            b_s,
            "c1",
        ],
    );
    assert_refused(&o, "/nonexistent/vmlinux");
    assert!(leftovers(&root).is_empty());
    assert_refused(
        &rt(&root, &["create", "--bundle", b_s, "../x"]),
        "invalid container id",
    );

    for cmd in [
        &["start", "nope"][..],
        &["state", "nope"],
        &["kill", "nope", "TERM"],
        &["delete", "nope"],
    ] {
        assert_refused(&rt(&root, cmd), "\"nope\" does not exist");
    }
    assert_refused(&rt(&root, &["frobnicate"]), "unrecognized subcommand");
    assert_refused(
        &rt(&root, &["--bogus", "list"]),
        "unexpected argument '--bogus'",
    );
    assert_refused(&rt(&root, &["--log-format", "xml", "list"]), "xml");
    assert_refused(&rt(&root, &["kill", "c1", "SIGNOPE"]), "unknown signal");
    assert_refused(
        &rt(&root, &["exec", "--process", "/p.json", "c1"]),
        "/p.json",
    );
    assert_refused(&rt(&root, &["exec", "c1"]), "nothing to run");
    assert_refused(&rt(&root, &["exec", "c1", "true"]), "\"c1\" does not exist");
    assert_refused(
        &rt(&root, &["exec", "-u", "bob", "c1", "true"]),
        "UID[:GID]",
    );
    let o = rt(&root, &["list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("ID"));
}

/// exec in the running container c1 (one boot shared): inline and from a process file,
/// stdout, stderr, stdin, exit status, a missing program, a detached process. Returns the
/// detached relay's pid.
fn exec_checks(root: &Path, dir: &Path) -> i32 {
    let o = rt(
        root,
        &[
            "exec",
            "-e",
            "V=vee",
            "--cwd",
            "/tmp",
            "c1",
            "sh",
            "-c",
            "echo out $V $(pwd); echo err >&2; exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out vee /tmp\n");
    assert_eq!(stderr(&o), "err\n");
    // The root is read-only; /run (the spec's tmpfs, mode 700) and /tmp are not.
    let o = rt(
        root,
        &[
            "exec",
            "c1",
            "sh",
            "-c",
            "touch /x; touch /run/y /tmp/z && stat -c %a /run && grep -c ' /run tmpfs' /proc/mounts",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "700\n1\n");

    let process = dir.join("process.json");
    std::fs::write(
        &process,
        r#"{"args":["sh","-c","tr a-z A-Z; id -u"],"cwd":"/","env":["PATH=/bin"],
           "user":{"uid":1234,"gid":5}}"#,
    )
    .unwrap();
    let mut child = Command::new(runtime())
        .arg("--root")
        .arg(root)
        .args(["exec", "--process", process.to_str().unwrap(), "c1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "PIPED IN\n1234\n");

    let o = rt(root, &["exec", "c1", "/no/such/program"]);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert!(stderr(&o).contains("/no/such/program"), "{}", stderr(&o));

    let pid_file = dir.join("exec.pid");
    // The relay keeps the stdio it was given (as conmon wants): files, not pipes to wait on.
    let o = Command::new(runtime())
        .arg("--root")
        .arg(root)
        .args(["exec", "--detach", "--pid-file", pid_file.to_str().unwrap()])
        .args(["c1", "sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("exec.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("exec.err")).unwrap())
        .status()
        .unwrap();
    let exec_err = std::fs::read_to_string(dir.join("exec.err")).unwrap();
    assert!(o.success(), "{exec_err}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The relay lives as long as the process.
    // SAFETY: kill with signal 0 only checks that the process exists.
    assert_eq!(unsafe { libc::kill(pid, 0) }, 0);
    pid
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn state_json(root: &Path, id: &str) -> serde_json::Value {
    let o = rt(root, &["state", id]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("state is JSON")
}

#[test]
fn create_start_state_kill_delete_with_one_boot() {
    if !kvm_available("create_start_state_kill_delete_with_one_boot") {
        return;
    }
    let _one = ONE_BOOT.lock().unwrap_or_else(|p| p.into_inner());
    // Like conmon: become the subreaper, so the detached monitor is reaped here and its
    // exit status (the container's) is seen.
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0);
    let dir = scratch("oci-life");
    // A state path longer than sockaddr_un's 108 bytes.
    let root = dir.join("s".repeat(90)).join("state");
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, "10.1.2.3 injected\n").unwrap();
    let script = "cat /etc/hosts; hostname; grep CapBnd /proc/self/status; \
                  trap 'echo got-term; exit 7' TERM; echo started; while :; do sleep 1; done";
    let cgroup = format!("/hvlite-test/c1-{}", std::process::id());
    let b = bundle(
        &dir,
        &config(
            &format!(r#"["/bin/sh","-c","{script}"]"#),
            &format!(
                r#","mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},
                {{"destination":"/dev/mqueue","type":"mqueue","source":"mqueue","options":["nosuid"]}},
                {{"destination":"/run","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=700"]}},
                {{"destination":"/etc/hosts","type":"bind","source":"{}","options":["rbind","ro"]}}],
                "linux":{{"cgroupsPath":"{cgroup}"}}"#,
                hosts.display()
            ),
        ),
    );
    // A read-only root, and the process's capabilities limited to two.
    let cfg = std::fs::read_to_string(b.join("config.json")).unwrap();
    let cfg = cfg
        .replace(r#""path":"rootfs""#, r#""path":"rootfs","readonly":true"#)
        .replace(
            r#""user":{"uid":0,"gid":0}"#,
            r#""user":{"uid":0,"gid":0},"capabilities":{"bounding":["CAP_KILL","CAP_CHOWN"],
               "effective":["CAP_KILL","CAP_CHOWN"],"permitted":["CAP_KILL","CAP_CHOWN"]}"#,
        );
    std::fs::write(b.join("config.json"), cfg).unwrap();
    let out_path = dir.join("stdout");
    // The monitor keeps create's stdio (the engine's): files, not pipes a test would wait on.
    let err_path = dir.join("stderr");
    let pid_file = dir.join("pid");
    let k = linux::kernel();
    let a = linux::agent();
    let log_path = dir.join("runtime.log");
    let create = Command::new(runtime())
        .arg("--root")
        .arg(&root)
        .arg("--log")
        .arg(&log_path)
        .args([
            "--kernel",
            k.to_str().unwrap(),
            "--agent",
            a.to_str().unwrap(),
        ])
        .args([
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "c1",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .unwrap();
    let errors = || std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(create.success(), "create: {}", errors());
    // create restored the container VM's template (built first if it was not cached).
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.contains("snapshot restored in"),
        "create restores a template; log:\n{log}"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let st = state_json(&root, "c1");
    assert_eq!(st["ociVersion"], "1.0.2");
    assert_eq!(st["id"], "c1");
    assert_eq!(st["status"], "created");
    assert_eq!(st["pid"], pid);
    assert_eq!(st["bundle"], b.to_str().unwrap());
    assert_eq!(st["annotations"]["org.example"], "x");
    assert!(st["created"].as_str().unwrap().ends_with('Z'));
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    assert_eq!(output(), "", "nothing runs before start");
    let list = String::from_utf8_lossy(&rt(&root, &["list", "-q"]).stdout).into_owned();
    assert_eq!(list, "c1\n");

    let o = rt(&root, &["start", "c1"]);
    assert!(o.status.success(), "start: {}", stderr(&o));
    assert_eq!(state_json(&root, "c1")["status"], "running");
    assert_refused(&rt(&root, &["start", "c1"]), "not created");
    wait_until("the process to start", Duration::from_secs(120), || {
        output().contains("started")
    });
    assert!(
        output().starts_with("10.1.2.3 injected\nbox\nCapBnd:\t0000000000000021\n"),
        "hostname and capabilities: {}",
        output()
    );
    // The VMM is in the cgroup the spec names, in every hierarchy (this host: v1 + unified).
    let memory = Path::new("/sys/fs/cgroup/memory").join(cgroup.trim_start_matches('/'));
    let procs = std::fs::read_to_string(memory.join("cgroup.procs")).unwrap_or_default();
    assert!(
        procs.lines().any(|l| l == pid.to_string()),
        "monitor {pid} in {}: {procs:?}",
        memory.display()
    );
    assert_refused(&rt(&root, &["delete", "c1"]), "delete --force");

    let exec_pid = exec_checks(&root, &dir);

    // --all: the container's process (its trap exits 7) and the exec'd one (killed).
    let o = rt(&root, &["kill", "--all", "c1", "15"]);
    assert!(o.status.success(), "kill: {}", stderr(&o));
    let mut status = 0;
    // SAFETY: waitpid on the detached exec relay, reparented to this (subreaper) process.
    let r = unsafe { libc::waitpid(exec_pid, &mut status, 0) };
    assert_eq!(r, exec_pid, "the exec relay is reaped here");
    assert_eq!(
        (libc::WIFEXITED(status), libc::WEXITSTATUS(status)),
        (true, 128 + 15),
        "the exec'd process died of SIGTERM"
    );
    let mut status = 0;
    // SAFETY: waitpid on the monitor, reparented to this (subreaper) process.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "the monitor is reaped here");
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        7,
        "exit status; stderr: {}",
        errors()
    );
    assert!(output().contains("got-term"), "{}", output());
    let st = state_json(&root, "c1");
    assert_eq!(st["status"], "stopped");
    assert_eq!(st["pid"], 0);
    assert_refused(&rt(&root, &["kill", "c1", "KILL"]), "stopped");

    let o = rt(&root, &["delete", "c1"]);
    assert!(o.status.success(), "delete: {}", stderr(&o));
    assert!(!memory.exists(), "delete removes the cgroup");
    let _ = std::fs::remove_dir(memory.parent().unwrap());
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
}

/// Directory bind mounts are virtio-fs shares: a container with a read-write and a
/// read-only one boots cold (a template cannot hold virtiofsd's state), sees the host's
/// file, writes one the host reads, and cannot write the read-only one.
#[test]
fn directory_bind_mounts_are_shared_through_virtio_fs_without_a_template() {
    let test = "directory_bind_mounts_are_shared_through_virtio_fs_without_a_template";
    if !kvm_available(test) {
        return;
    }
    let _one = ONE_BOOT.lock().unwrap_or_else(|p| p.into_inner());
    let dir = scratch("oci-vol");
    let root = dir.join("state");
    let (data, conf) = (dir.join("data"), dir.join("conf"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(data.join("in"), "from-host\n").unwrap();
    let script = "cat /data/in; echo from-guest > /data/out; \
                  { echo x > /conf/y; } 2>/dev/null || echo ro-refused; echo done";
    let b = bundle(
        &dir,
        &config(
            &format!(r#"["/bin/sh","-c","{script}"]"#),
            &format!(
                r#","mounts":[{{"destination":"/data","type":"bind","source":"{}","options":["rbind","rw"]}},
                {{"destination":"/conf","type":"bind","source":"{}","options":["rbind","ro"]}}]"#,
                data.display(),
                conf.display()
            ),
        ),
    );
    let (out_path, err_path, log_path) = (
        dir.join("stdout"),
        dir.join("stderr"),
        dir.join("runtime.log"),
    );
    let (k, a) = (linux::kernel(), linux::agent());
    let create = Command::new(runtime())
        .arg("--root")
        .arg(&root)
        .arg("--log")
        .arg(&log_path)
        .args([
            "--kernel",
            k.to_str().unwrap(),
            "--agent",
            a.to_str().unwrap(),
        ])
        .args(["create", "--bundle", b.to_str().unwrap(), "c2"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .unwrap();
    let errors = || std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(create.success(), "create: {}", errors());
    let o = rt(&root, &["start", "c2"]);
    assert!(o.status.success(), "start: {}", stderr(&o));
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    wait_until("the container to stop", Duration::from_secs(300), || {
        state_json(&root, "c2")["status"] == "stopped"
    });
    assert_eq!(
        output(),
        "from-host\nro-refused\ndone\n",
        "stderr: {}",
        errors()
    );
    assert_eq!(
        std::fs::read_to_string(data.join("out")).unwrap_or_default(),
        "from-guest\n"
    );
    assert!(!conf.join("y").exists(), "the read-only share was written");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        log.contains("template: not used with virtio-fs shares")
            && !log.contains("snapshot restored"),
        "a container with shares boots cold; log:\n{log}"
    );
    let o = rt(&root, &["delete", "c2"]);
    assert!(o.status.success(), "delete: {}", stderr(&o));
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
}
