//! containerd (Debian's 1.6, started by the test with its own root, state and socket)
//! runs containers in hvlite microVMs through `containerd-shim-hvlite-v2`. The image is
//! an OCI archive built here from the busybox root directory and `ctr image import`ed; no
//! registry is used. One containerd serves every check; six boots in all.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

const RUNTIME: &str = "io.containerd.hvlite.v2";
const SHIM: &str = "containerd-shim-hvlite-v2";
const IMAGE: &str = "docker.io/library/hvlite-busybox:latest";
const NS: &str = "hvlite-test";

/// The shim binary, next to the test's own target directory: always (re)built through
/// cargo (a no-op when it is fresh), since `cargo test` does not rebuild another
/// package's binary and a stale one would test old code.
fn shim_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let shim = dir.join(SHIM);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-p", "containerd-shim-hvlite", "--bin", SHIM])
        .status()
        .expect("run cargo build");
    assert!(st.success(), "cargo build of {SHIM}");
    assert!(shim.is_file(), "{} missing", shim.display());
    shim
}

/// A containerd of the test's own.
struct Containerd {
    dir: Scratch,
    sock: PathBuf,
    daemon: Child,
}

impl Containerd {
    fn start() -> Self {
        let dir = scratch("containerd");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(shim_binary(), bin.join(SHIM)).unwrap();
        let sock = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = sock.display()
            ),
        )
        .unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("HVLITE_KERNEL", linux::kernel())
            .env("HVLITE_AGENT", linux::agent())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd { dir, sock, daemon };
        c.wait_until("containerd to answer", || {
            c.ctr(&["version"]).status.success()
        });
        c
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.sock)
            .args(["--namespace", NS])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run ctr")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?}: {}\n{}\ncontainerd log:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\ncontainerd log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr task ls` as (id, pid, status) rows.
    fn tasks(&self) -> Vec<(String, String, String)> {
        task_rows(&self.ok(&["task", "ls"]))
    }

    fn status_of(&self, id: &str) -> Option<String> {
        self.tasks().into_iter().find(|t| t.0 == id).map(|t| t.2)
    }

    fn import_busybox(&self) {
        let archive = oci_archive(&self.dir, &linux::rootfs_dir());
        self.ok(&["image", "import", archive.to_str().unwrap()]);
        assert!(self.ok(&["image", "ls", "-q"]).contains(IMAGE));
    }

    /// `ctr run --rm --runtime hvlite IMAGE id args...` in the background.
    fn run_bg(&self, id: &str, args: &[&str], stdin: bool) -> Child {
        let mut full = vec!["run", "--rm", "--runtime", RUNTIME, IMAGE, id];
        full.extend_from_slice(args);
        let mut cmd = self.cmd(&full);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin {
            cmd.stdin(Stdio::piped());
        }
        cmd.spawn().expect("spawn ctr run")
    }

    /// The hvlite processes (shims and monitors) of this containerd still alive.
    fn hvlite_processes(&self) -> Vec<String> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let ours = cmd.contains(&self.sock.display().to_string())
                || cmd.contains(&self.dir.display().to_string());
            if cmd.contains(SHIM) && ours {
                found.push(cmd);
            }
        }
        found
    }

    /// Nothing of task `id` is left: no shim or monitor, no mounts, no bundle.
    fn assert_nothing_left(&self, id: &str) {
        self.wait_until("the hvlite processes to end", || {
            self.hvlite_processes().is_empty()
        });
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let here = self.dir.display().to_string();
        assert!(
            !mounts.lines().any(|l| l.contains(&here)),
            "mounts left under {here}:\n{mounts}"
        );
        let bundles = self
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(NS)
            .join(id);
        assert!(!bundles.exists(), "{} left", bundles.display());
        assert!(self.status_of(id).is_none(), "task {id} left");
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for (id, ..) in self.tasks_quiet() {
            let _ = self.ctr(&["task", "rm", "-f", &id]);
        }
        // SAFETY: kill(2) on the containerd this test started.
        unsafe { libc::kill(self.daemon.id() as i32, libc::SIGTERM) };
        let _ = self.daemon.wait();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let here = self.dir.display().to_string();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&here))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
    }
}

impl Containerd {
    /// [`Containerd::tasks`] without failing (for clean-up).
    fn tasks_quiet(&self) -> Vec<(String, String, String)> {
        task_rows(&String::from_utf8_lossy(&self.ctr(&["task", "ls"]).stdout))
    }
}

/// The rows of `ctr task ls` output: (id, pid, status).
fn task_rows(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 3).then(|| (w[0].into(), w[1].into(), w[2].into()))
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An OCI image archive (layout + index) of `rootfs` as one uncompressed layer.
fn oci_archive(dir: &Path, rootfs: &Path) -> PathBuf {
    let layout = dir.join("oci");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let layer_tar = dir.join("layer.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["--numeric-owner", "-cf"])
        .arg(&layer_tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar of {}", rootfs.display());
    let layer = std::fs::read(&layer_tar).unwrap();
    let blob = |bytes: &[u8]| {
        let d = sha256_hex(bytes);
        std::fs::write(blobs.join(&d), bytes).unwrap();
        (format!("sha256:{d}"), bytes.len())
    };
    let (layer_digest, layer_size) = blob(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    })
    .to_string();
    let (config_digest, config_size) = blob(config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    })
    .to_string();
    let (manifest_digest, manifest_size) = blob(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "platform": {"architecture": "amd64", "os": "linux"},
                       "annotations": {"io.containerd.image.name": IMAGE,
                                       "org.opencontainers.image.ref.name": "latest"}}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::remove_file(&layer_tar).unwrap();
    let archive = dir.join("busybox-oci.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .args(["index.json", "oci-layout", "blobs"])
        .status()
        .unwrap();
    assert!(st.success(), "tar of the OCI layout");
    std::fs::remove_dir_all(&layout).unwrap();
    archive
}

fn containerd_available(test: &str) -> bool {
    let found = ["containerd", "ctr"]
        .iter()
        .all(|b| Command::new(b).arg("--version").output().is_ok());
    host_has(
        test,
        found,
        "needs containerd and ctr (apt-get install containerd)",
    ) && kvm_available(test)
        && root(test, "(containerd)")
}

/// Waits for `child` to exit (at most 120 s); returns its output.
fn finish(child: Child) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(o) => o.expect("wait for ctr"),
        Err(_) => {
            // SAFETY: kill(2) on the ctr process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("ctr run (pid {pid}) did not end within 120 s");
        }
    }
}

fn wait_running(c: &Containerd, id: &str) -> i32 {
    c.wait_until(&format!("task {id} to run"), || {
        c.status_of(id).as_deref() == Some("RUNNING")
    });
    let pid = c
        .tasks()
        .into_iter()
        .find(|t| t.0 == id)
        .and_then(|t| t.1.parse().ok())
        .expect("task pid");
    assert!(pid > 0);
    pid
}

#[test]
fn containerd_runs_tasks_in_hvlite_microvms() {
    if !containerd_available("containerd_runs_tasks_in_hvlite_microvms") {
        return;
    }
    let c = Containerd::start();
    c.import_busybox();

    // 1. Output, stderr, stdin, ps, metrics, pause/resume, exit status.
    let mut run = c.run_bg(
        "c1",
        &[
            "sh",
            "-c",
            "echo out; echo err >&2; read x; echo in=$x; exit 3",
        ],
        true,
    );
    let pid = wait_running(&c, "c1");
    let ps = c.ok(&["task", "ps", "c1"]);
    assert!(
        ps.lines()
            .any(|l| l.split_whitespace().next() == Some(&pid.to_string())),
        "{ps}"
    );
    let metrics = c.ok(&["task", "metrics", "c1"]);
    assert!(metrics.contains("memory.usage_in_bytes"), "{metrics}");
    c.ok(&["task", "pause", "c1"]);
    assert_eq!(c.status_of("c1").as_deref(), Some("PAUSED"));
    c.ok(&["task", "resume", "c1"]);
    assert_eq!(c.status_of("c1").as_deref(), Some("RUNNING"));
    run.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let o = finish(run);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(stdout, "out\nin=hello\n", "stderr: {stderr}");
    assert!(stderr.contains("err"), "{stderr}");
    c.assert_nothing_left("c1");

    // 2. ctr task kill: SIGTERM reaches the process (143).
    let run = c.run_bg("c2", &["sleep", "1000"], false);
    wait_running(&c, "c2");
    c.ok(&["task", "kill", "-s", "SIGTERM", "c2"]);
    let o = finish(run);
    assert_exit(&o, 143);
    c.assert_nothing_left("c2");

    // 3. A running task deleted (ctr task rm -f), and a second container with its id.
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "c3",
        "sleep",
        "1000",
    ]);
    let vmm = wait_running(&c, "c3");
    let again = c.ctr(&["run", "-d", "--runtime", RUNTIME, IMAGE, "c3", "true"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(c.status_of("c3").as_deref(), Some("RUNNING"));
    c.ok(&["task", "rm", "-f", "c3"]);
    assert!(!Path::new(&format!("/proc/{vmm}")).exists() || is_zombie(vmm));
    c.ok(&["container", "rm", "c3"]);
    c.assert_nothing_left("c3");

    // 4. The VMM dies: the task exits with 137 and the shim reports it.
    let run = c.run_bg("c4", &["sleep", "1000"], false);
    let vmm = wait_running(&c, "c4");
    // SAFETY: kill(2) on the task's VMM, whose pid containerd just reported.
    assert_eq!(unsafe { libc::kill(vmm, libc::SIGKILL) }, 0);
    let o = finish(run);
    assert_exit(&o, 137);
    c.assert_nothing_left("c4");

    // 5. A terminal: ctr run -t (under script(1), which gives ctr a tty); the process has
    // a terminal in the guest, the shim relays the pty master the monitor hands over.
    let line = format!(
        "ctr --address {} --namespace {NS} run --rm -t --runtime {RUNTIME} {IMAGE} c5 \
         sh -c 'test -t 0 && test -t 1 && echo tty-ok; exit 2'",
        c.sock.display()
    );
    let o = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("tty-ok"),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_exit(&o, 2);
    c.assert_nothing_left("c5");

    // 6. Exec: further processes in a running task's VM, through the agent's exec port.
    c.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "c6",
        "sleep",
        "1000",
    ]);
    wait_running(&c, "c6");
    let exec = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "c6",
        "sh",
        "-c",
        "echo exec-out; echo exec-err >&2; exit 5",
    ]);
    assert_exit(&exec, 5);
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "exec-out\n");
    assert!(String::from_utf8_lossy(&exec.stderr).contains("exec-err"));
    let unknown = c.ctr(&["task", "exec", "--exec-id", "e2", "c6", "/nonexistent"]);
    assert!(!unknown.status.success());
    c.ok(&["task", "rm", "-f", "c6"]);
    c.ok(&["container", "rm", "c6"]);
    c.assert_nothing_left("c6");
}

fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

#[test]
fn containerd_gets_clear_errors_and_nothing_leaks() {
    if !containerd_available("containerd_gets_clear_errors_and_nothing_leaks") {
        return;
    }
    let c = Containerd::start();
    c.import_busybox();
    let refused = |id: &str, args: &[&str], want: &str| {
        let mut full = vec!["run", "--rm", "--runtime", RUNTIME];
        full.extend_from_slice(args);
        let o = c.ctr(&full);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(want),
            "{args:?}: want {want:?} in:\n{stderr}"
        );
        let _ = c.ctr(&["container", "rm", id]);
        c.assert_nothing_left(id);
    };
    // A bundle the runtime refuses: a bind mount of a missing host path.
    let host_dir = c.dir.join("missing");
    let mount = format!(
        "type=bind,src={},dst=/shared,options=rbind:rw",
        host_dir.display()
    );
    refused(
        "b1",
        &["--mount", &mount, IMAGE, "b1", "true"],
        "mount at /shared",
    );
    // A malformed spec: no process args.
    let spec = c.dir.join("bad-spec.json");
    std::fs::write(
        &spec,
        r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":[]},"root":{"path":"rootfs"}}"#,
    )
    .unwrap();
    refused(
        "b2",
        &["--config", spec.to_str().unwrap(), "b2"],
        "process.args is empty",
    );
    // An unknown runtime option.
    let opts = c.dir.join("hvlite-options.toml");
    std::fs::write(&opts, "bogus = 1\n").unwrap();
    refused(
        "b3",
        &[
            "--runtime-config-path",
            opts.to_str().unwrap(),
            IMAGE,
            "b3",
            "true",
        ],
        "unknown runtime option \"bogus\"",
    );
    // Tasks that do not exist.
    for args in [
        &["task", "kill", "nope"][..],
        &["task", "start", "nope"],
        &["task", "pause", "nope"],
        &["task", "rm", "nope"],
    ] {
        let o = c.ctr(args);
        assert!(!o.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("not found"), "{args:?}: {stderr}");
    }
    assert!(c.hvlite_processes().is_empty());
}
