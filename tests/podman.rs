//! A real engine: podman (Debian's, with conmon) runs containers through hvlite-runtime.
//! The image is imported from the busybox root directory; podman's storage lives in a
//! scratch directory, so the host's is never touched. Two boots.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

/// One podman boot at a time (2 cores).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const IMAGE: &str = "localhost/hvlite-test-busybox:latest";

/// podman with its own storage in `dir` and hvlite-runtime as the runtime.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Self {
        Self { dir: dir.into() }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let runtime = env!("CARGO_BIN_EXE_hvlite-runtime");
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file", "--runtime", runtime])
            .arg(format!(
                "--runtime-flag=kernel={}",
                linux::kernel().display()
            ))
            .arg(format!("--runtime-flag=agent={}", linux::agent().display()))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run podman")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "podman {args:?}: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

fn podman_available(test: &str) -> bool {
    let found = Command::new("podman").arg("--version").output().is_ok();
    host_has(test, found, "needs podman (apt-get install podman)")
        && kvm_available(test)
        && root(test, "(podman's storage and conmon)")
}

/// A podman set-up with the busybox image imported.
fn podman_with_image(name: &str) -> (Scratch, Podman) {
    let dir = scratch(name);
    let p = Podman::new(&dir);
    let tar = dir.join("busybox.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(linux::rootfs_dir())
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar of the busybox root");
    p.ok(&["import", tar.to_str().unwrap(), IMAGE]);
    (dir, p)
}

#[test]
fn podman_run_rm_gives_output_status_env_workdir_and_user() {
    if !podman_available("podman_run_rm_gives_output_status_env_workdir_and_user") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (dir, p) = podman_with_image("podman-run");
    // -v HOSTDIR:/data: a virtio-fs share, written by uid 1000 in the guest.
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(data.join("in"), "from-host\n").unwrap();
    let volume = format!("{}:/data", data.display());
    let script = "echo out; echo err >&2; echo FOO=$FOO; pwd; id -u; id -g; \
                  echo $(cat /etc/hostname); ulimit -n; \
                  grep NoNewPrivs /proc/self/status; cat /data/in; \
                  echo from-guest > /data/out; exit 3";
    let o = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--hostname",
        "hvbox",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "-u",
        "1000:100",
        "--security-opt",
        "no-new-privileges",
        "-v",
        &volume,
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    // podman's default nofile limit (1048576, above this host's hard limit, so runc needs
    // --ulimit here) is set in the guest by the agent before the user switch.
    assert_eq!(
        stdout, "out\nFOO=bar\n/tmp\n1000\n100\nhvbox\n1048576\nNoNewPrivs:\t1\nfrom-host\n",
        "stderr: {stderr}"
    );
    // The guest's write is in the host directory.
    assert_eq!(
        std::fs::read_to_string(data.join("out")).unwrap_or_default(),
        "from-guest\n"
    );
    assert!(stderr.contains("err"), "{stderr}");
    // --rm removed the container.
    assert_eq!(p.ok(&["ps", "-a", "-q"]).trim(), "");
}

/// `command` run by `script` on a new pty (as a person at a terminal), with `input` typed
/// into it; returns what the terminal showed and the exit status.
fn on_a_terminal(command: &str, input: &str) -> (String, Option<i32>) {
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    // The terminal keeps what is typed until the program reads it.
    stdin.write_all(input.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    // Open until the program is done: EOF would end `script` early.
    drop(stdin);
    (
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        o.status.code(),
    )
}

/// The shell line that runs podman `args` as [`Podman::cmd`] does.
fn shell_line(p: &Podman, args: &[&str]) -> String {
    let c = p.cmd(args);
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `podman exec` into the running container `id`: output, status, stdin, a terminal.
fn exec_checks(p: &Podman, id: &str) {
    let o = p.run(&[
        "exec",
        id,
        "sh",
        "-c",
        "echo exec-out; echo exec-err >&2; exit 4",
    ]);
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "exec-out\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("exec-err"));
    // --read-only: the root refuses writes, podman's tmpfs on /tmp does not.
    let o = p.run(&[
        "exec",
        id,
        "sh",
        "-c",
        "touch /x; touch /tmp/y && echo tmp-ok",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "tmp-ok\n");
    let mut c = p.cmd(&[
        "exec",
        "-i",
        "-u",
        "1000",
        id,
        "sh",
        "-c",
        "tr a-z A-Z; id -u",
    ]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"stdin\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "STDIN\n1000\n");
    // A terminal: the process sees a tty, its size, and what is typed.
    let line = shell_line(
        p,
        &[
            "exec",
            "-it",
            id,
            "sh",
            "-c",
            "tty; read x; echo got:$x; exit 5",
        ],
    );
    let (shown, status) = on_a_terminal(&line, "typed\n");
    assert!(shown.contains("/dev/pts/"), "{shown}");
    assert!(shown.contains("got:typed"), "{shown}");
    assert_eq!(status, Some(5), "{shown}");
}

#[test]
fn podman_run_detached_then_stop_then_rm() {
    if !podman_available("podman_run_detached_then_stop_then_rm") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_dir, p) = podman_with_image("podman-detached");
    let script = "trap 'echo stopping; exit 0' TERM; echo up $(hostname) \
                  $(grep CapEff /proc/self/status); while :; do sleep 1; done";
    let id = p.ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--read-only",
        "--hostname",
        "hvdet",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "CHOWN",
        "--cap-add",
        "KILL",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "a container id: {id:?}");
    // The VMM (the container's pid for podman) is in the cgroup podman named.
    let pid = p.ok(&["inspect", "-f", "{{.State.Pid}}", id]);
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim())).unwrap();
    assert!(
        cgroups
            .lines()
            .any(|l| l.contains(":memory:") && l.contains(id)),
        "{cgroups}"
    );
    let status = p.ok(&["inspect", "-f", "{{.State.Status}}", id]);
    assert_eq!(status.trim(), "running");
    // The trap must be set before the stop: wait for the script's first line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !p.ok(&["logs", id]).contains("up") {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never printed"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    exec_checks(&p, id);
    p.ok(&["stop", "-t", "60", id]);
    let status = p.ok(&["inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", id]);
    assert_eq!(status.trim(), "exited 0");
    let logs = p.ok(&["logs", id]);
    assert!(
        logs.contains("up hvdet CapEff: 0000000000000021") && logs.contains("stopping"),
        "hostname and capabilities: {logs}"
    );
    p.ok(&["rm", id]);
    assert_eq!(p.ok(&["ps", "-a", "-q"]).trim(), "");
    // Nothing of it is left in the runtime's state directory.
    assert!(!Path::new("/run/hvlite-runtime").join(id).exists());
}

#[test]
fn podman_run_it_is_interactive_through_the_console_socket() {
    if !podman_available("podman_run_it_is_interactive_through_the_console_socket") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_dir, p) = podman_with_image("podman-it");
    // Typed at once: the runtime keeps it until the process runs.
    let script = "tty; stty size; read x; echo got:$x; exit 6";
    let line = shell_line(
        &p,
        &[
            "run",
            "-it",
            "--rm",
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            script,
        ],
    );
    let (shown, status) = on_a_terminal(&line, "typed\n");
    assert!(
        shown.contains("/dev/pts/"),
        "a terminal in the guest: {shown}"
    );
    assert!(shown.contains("got:typed"), "{shown}");
    assert_eq!(status, Some(6), "{shown}");
    assert_eq!(p.ok(&["ps", "-a", "-q"]).trim(), "");
}

/// One HTTP GET of `/` from `addr`; the body, or why not.
fn http_get(addr: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(20);
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    match reply.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(format!("not a 200 reply: {reply:?}")),
    }
}

/// `podman rm -f` of a container when a test ends, even by a failed assertion (a VM left
/// running would hold the CPUs and the container's network).
struct RemovedOnDrop<'a>(&'a Podman, &'a str);

impl Drop for RemovedOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["rm", "-f", "-t", "0", self.1]);
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn podman_publishes_a_port_of_a_container_in_a_vm() {
    if !podman_available("podman_publishes_a_port_of_a_container_in_a_vm") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_dir, p) = podman_with_image("podman-net");
    let port = free_port();
    let publish = format!("{port}:80");
    let script = "mkdir -p /www && echo hello-from-the-vm > /www/index.html && \
                  exec httpd -f -p 80 -h /www";
    // NET_RAW for ping: podman's default sysctl net.ipv4.ping_group_range is not applied in
    // the guest, and podman's default capabilities leave NET_RAW out.
    let id = p.ok(&[
        "run",
        "-d",
        "--cap-add",
        "NET_RAW",
        "-p",
        &publish,
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    let id = id.trim();
    let _gone = RemovedOnDrop(&p, id);
    let inspect = p.ok(&[
        "inspect",
        "-f",
        "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.IPPrefixLen}} \
         {{.NetworkSettings.Gateway}} {{.NetworkSettings.MacAddress}} \
         {{.NetworkSettings.SandboxKey}}",
        id,
    ]);
    let [ip, prefix, gateway, mac, netns] = inspect.split_whitespace().collect::<Vec<_>>()[..]
    else {
        panic!("podman inspect: {inspect:?}");
    };
    // The runtime's TAP sits next to podman's veth in the container's namespace.
    let tap = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "link", "show", "dev", "tap0_hvlite"])
        .output()
        .unwrap();
    assert!(
        tap.status.success(),
        "{}",
        String::from_utf8_lossy(&tap.stderr)
    );

    // The host reaches the guest's httpd through the published port (podman's DNAT).
    let addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let first = loop {
        match http_get(&addr) {
            Ok(body) => break body,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no answer on {addr}: {e}\nlogs: {}",
                    p.ok(&["logs", id])
                );
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
    };
    assert_eq!(first, "hello-from-the-vm\n");
    // And directly at the container's address; a few timed requests.
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        assert_eq!(
            http_get(&format!("{ip}:80")).unwrap(),
            "hello-from-the-vm\n"
        );
        times.push(t.elapsed());
    }
    times.sort();
    eprintln!(
        "HTTP GET host -> container (hvlite-runtime): median {:.1} ms of {}",
        times[times.len() / 2].as_secs_f64() * 1000.0,
        times.len()
    );

    // The guest has the veth's MAC and address and reaches the host's side (the gateway).
    let check = format!(
        "cat /sys/class/net/eth0/address; ip -4 addr show dev eth0 | grep -o 'inet [0-9./]*'; \
         ping -c 1 -W 20 {gateway} >/dev/null && echo gateway-ok"
    );
    let out = p.ok(&["exec", id, "sh", "-c", &check]);
    assert_eq!(
        out,
        format!("{mac}\ninet {ip}/{prefix}\ngateway-ok\n"),
        "MAC, address and gateway in the guest"
    );

    p.ok(&["rm", "-f", "-t", "2", id]);
    assert_eq!(p.ok(&["ps", "-a", "-q"]).trim(), "");
    assert!(!Path::new("/run/hvlite-runtime").join(id).exists());
    assert!(!Path::new(netns).exists(), "podman removed the namespace");
    assert!(http_get(&addr).is_err(), "the port is closed again");
}
