//! A client of hvlite's REST API over its Unix socket, for the integration tests.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::linux::Running;

/// One request on a fresh connection; returns the status and the parsed body (Null when
/// empty).
pub fn request(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) and close before taking the whole body.
    let _ = s.write_all(body.as_bytes());
    read_response(&mut s)
}

pub fn read_response(s: &mut UnixStream) -> (u16, Value) {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("body {body:?}: {e}"))
    };
    (status, value)
}

pub fn put(sock: &Path, path: &str, body: Value) -> (u16, Value) {
    request(sock, "PUT", path, Some(&body.to_string()))
}

pub fn fault(resp: &(u16, Value)) -> String {
    resp.1["fault_message"]
        .as_str()
        .unwrap_or_else(|| panic!("no fault_message in {resp:?}"))
        .to_string()
}

pub fn wait_for_socket(sock: &Path, vm: &mut Running) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(sock).is_err() {
        assert!(
            vm.is_running(),
            "hvlite exited before its API socket was up"
        );
        assert!(
            Instant::now() < deadline,
            "no API socket at {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// PUTs a one-vCPU machine of `mem_mib` and the boot source `kernel` + `initrd`, each
/// answered 204.
pub fn put_linux_machine(sock: &Path, mem_mib: u32, kernel: &Path, initrd: &Path) {
    for (path, body) in [
        (
            "/machine-config",
            serde_json::json!({"vcpu_count": 1, "mem_size_mib": mem_mib}),
        ),
        (
            "/boot-source",
            serde_json::json!({"kernel_image_path": kernel, "initrd_path": initrd}),
        ),
    ] {
        let r = put(sock, path, body);
        assert_eq!(r.0, 204, "PUT {path}: {r:?}");
    }
}
