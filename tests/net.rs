//! virtio-net through the real guest, inside a network namespace made by the test (the
//! host's own network is never touched): host and guest ping each other, and a TCP echo of
//! 1 MiB goes both ways and comes back byte for byte.

mod common;

use std::process::Command;
use std::time::Instant;

use common::linux::{initrd, kernel, start_with};
use common::netns::{GUEST_IP, HOST_IP, Netns, TAP, can_use_tap, run};
use common::*;
use hvlite::initcmd::INIT_MARKER;

/// A one-connection TCP echo server (Python) for the guest to talk to.
const ECHO_SERVER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); s.settimeout(600)
c, _ = s.accept()
while True:
    d = c.recv(65536)
    if not d: break
    c.sendall(d)
c.shutdown(socket.SHUT_WR); c.close()
"#;

/// A TCP client that sends `payload` to the guest's echo server and returns the reply.
const ECHO_CLIENT: &str = r#"
import socket, sys, time
data = open(sys.argv[3], "rb").read()
deadline = time.time() + 120
while True:
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.5)
c.settimeout(300)
# Send from a thread while reading the echo here: an echo peer stops reading when its
# replies are not read, so sending everything first would deadlock on full buffers.
def send():
    c.sendall(data); c.shutdown(socket.SHUT_WR)
import threading
sender = threading.Thread(target=send); sender.start()
got = bytearray()
while True:
    d = c.recv(65536)
    if not d: break
    got += d
sender.join()
open(sys.argv[4], "wb").write(got)
"#;

#[test]
fn guest_and_host_talk_tcp_ip_over_a_tap() {
    if !kvm_available("guest_and_host_talk_tcp_ip_over_a_tap")
        || !can_use_tap("guest_and_host_talk_tcp_ip_over_a_tap")
    {
        return;
    }
    let dir = scratch("net");
    let ns = Netns::new();
    let server_py = dir.join("echo_server.py");
    let client_py = dir.join("echo_client.py");
    std::fs::write(&server_py, ECHO_SERVER).unwrap();
    std::fs::write(&client_py, ECHO_CLIENT).unwrap();
    let payload: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let payload_path = dir.join("payload.bin");
    std::fs::write(&payload_path, &payload).unwrap();

    // The host's echo server for the guest's client.
    let server = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3"])
        .arg(&server_py)
        .args([HOST_IP, "5001"])
        .spawn()
        .expect("start the host echo server");

    let (k, i) = (kernel(), initrd());
    let ip_cfg = format!("ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off");
    let script = format!(
        "ping -c 2 -W 10 {HOST_IP} >/dev/null && echo GUEST-PING-OK; \
         dd if=/dev/urandom of=/tmp/a bs=1024 count=1024 2>/dev/null; \
         nc {HOST_IP} 5001 < /tmp/a > /tmp/b; \
         cmp /tmp/a /tmp/b && echo GUEST-ECHO-OK $(wc -c < /tmp/b); \
         echo GUEST-LISTENING; nc -l -p 5000 -e cat; echo GUEST-SERVED"
    );
    let mut vm = start_with(
        &["ip", "netns", "exec", &ns.0],
        &[
            "run",
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            i.to_str().unwrap(),
            "--net",
            &format!("tap={TAP},mac=02:00:00:00:00:02"),
            "--cmdline",
            &ip_cfg,
            "--",
            "/bin/sh",
            "-c",
            &script,
        ],
    );
    vm.wait_for("GUEST-LISTENING");
    // Host → guest ping, then a 1 MiB echo through the guest's server.
    // busybox (a dependency of the guest build) provides ping on the host as well.
    let ping = run(&ns.exec(&["busybox", "ping", "-c", "2", "-W", "10", GUEST_IP]));
    let reply_path = dir.join("reply.bin");
    let start = Instant::now();
    let client = run(&ns.exec(&[
        "python3",
        client_py.to_str().unwrap(),
        GUEST_IP,
        "5000",
        payload_path.to_str().unwrap(),
        reply_path.to_str().unwrap(),
    ]));
    eprintln!(
        "host->guest 1 MiB echo took {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let b = vm.finish();
    let mut server = server;
    let _ = server.kill();
    let _ = server.wait();
    let ctx = b.context();
    assert!(b.stdout.contains(INIT_MARKER), "{ctx}");
    assert!(
        b.stdout.contains("GUEST-PING-OK"),
        "guest pings host; {ctx}"
    );
    assert!(
        b.stdout.contains("GUEST-ECHO-OK 1048576"),
        "guest's 1 MiB came back intact; {ctx}"
    );
    assert!(
        ping.status.success(),
        "host pings guest: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert!(
        client.status.success(),
        "echo client: {}",
        String::from_utf8_lossy(&client.stderr)
    );
    let reply = std::fs::read(&reply_path).unwrap_or_default();
    assert_eq!(reply.len(), payload.len(), "{ctx}");
    assert!(reply == payload, "host's 1 MiB came back byte for byte");
    assert!(b.stdout.contains("GUEST-SERVED"), "{ctx}");
    assert_eq!(b.status, Some(0), "{ctx}");
}
