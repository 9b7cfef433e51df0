//! The server over a real Unix socket: `curl` for the well-behaved client, raw streams
//! for malformed, slow and greedy ones, and a small VMM stub on the other end.

use std::os::unix::net::UnixListener;
use std::process::Command;
use std::sync::mpsc::Receiver;

use serde_json::{Value, json};

use super::*;
use crate::api::model::{InstanceInfo, InstanceState, MachineConfig, VmInfo, VmStateRequest};
use crate::api::{ActionType, ApiRequest};

type Inbox = Receiver<(ApiRequest, mpsc::Sender<ApiResponse>)>;

/// A VMM stand-in with Firecracker's state rules: configure before InstanceStart, pause
/// and resume after. Returns every request it served once the server is gone.
fn vmm_stub(rx: Inbox) -> Vec<ApiRequest> {
    let mut state = InstanceState::NotStarted;
    let mut machine = MachineConfig::new(1, 128).unwrap();
    let mut log = Vec::new();
    for (req, reply) in rx {
        let conflict = |what: &str| ApiResponse::fault(409, format!("{what} in this state"));
        let resp = match (&req, state) {
            (ApiRequest::GetInstanceInfo, _) => {
                ApiResponse::ok_json(&InstanceInfo::new("test-vm", state))
            }
            (ApiRequest::GetVm, _) => ApiResponse::ok_json(&VmInfo { state }),
            (ApiRequest::GetMachineConfig, _) => ApiResponse::ok_json(&machine),
            (ApiRequest::PutMachineConfig(m), InstanceState::NotStarted) => {
                machine = m.clone();
                ApiResponse::no_content()
            }
            (ApiRequest::Action(ActionType::InstanceStart), InstanceState::NotStarted) => {
                state = InstanceState::Running;
                ApiResponse::no_content()
            }
            (ApiRequest::PatchVm(VmStateRequest::Paused), InstanceState::Running) => {
                state = InstanceState::Paused;
                ApiResponse::no_content()
            }
            (ApiRequest::PatchVm(VmStateRequest::Resumed), InstanceState::Paused) => {
                state = InstanceState::Running;
                ApiResponse::no_content()
            }
            (ApiRequest::PatchVm(_) | ApiRequest::Action(_), _) => conflict("not allowed"),
            (_, InstanceState::NotStarted) => ApiResponse::no_content(),
            (_, _) => conflict("cannot configure"),
        };
        log.push(req);
        let _ = reply.send(resp);
    }
    log
}

fn test_limits() -> Limits {
    Limits {
        max_connections: 4,
        idle_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_millis(500),
        write_timeout: Duration::from_secs(1),
    }
}

/// A server on a fresh socket with the stub VMM behind it.
struct Fixture {
    dir: tempfile::TempDir,
    server: Option<ApiServer>,
    vmm: Option<JoinHandle<Vec<ApiRequest>>>,
}

impl Fixture {
    fn new(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let vmm = thread::spawn(move || vmm_stub(rx));
        let server = ApiServer::start_with(&dir.path().join("api.sock"), tx, limits).unwrap();
        Self {
            dir,
            server: Some(server),
            vmm: Some(vmm),
        }
    }

    fn sock(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    fn client(&self) -> Client {
        Client::connect(&self.sock())
    }

    /// Stops the server and returns what the VMM was asked.
    fn stop(mut self) -> Vec<ApiRequest> {
        self.server.take().unwrap().shutdown();
        self.vmm.take().unwrap().join().unwrap()
    }
}

/// A server whose VMM end is left to the test.
struct Bare {
    _dir: tempfile::TempDir,
    path: PathBuf,
    server: ApiServer,
    inbox: Inbox,
}

fn bare_server() -> Bare {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let (tx, inbox) = mpsc::channel();
    let server = ApiServer::start_with(&path, tx, test_limits()).unwrap();
    Bare {
        _dir: dir,
        path,
        server,
        inbox,
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        let h = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name));
        h.map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    fn fault(&self) -> String {
        self.json()["fault_message"].as_str().unwrap().to_string()
    }
}

/// A raw HTTP client on a Unix stream.
struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Response {
        self.send(raw_request(method, path, body).as_bytes());
        self.response()
    }

    /// Reads the next response.
    fn response(&mut self) -> Response {
        loop {
            if let Some(resp) = self.parse_response() {
                return resp;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("a response");
            assert!(n > 0, "connection closed before a response");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn parse_response(&mut self) -> Option<Response> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = resp.parse(&self.buf).unwrap() else {
            return None;
        };
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let len = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let body = self.buf.get(head..head + len)?;
        let response = Response {
            status: resp.code.unwrap(),
            body: String::from_utf8(body.to_vec()).unwrap(),
            headers,
        };
        self.buf.drain(..head + len);
        Some(response)
    }

    /// Whether the server closed the connection (waiting up to the read timeout).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0))
    }
}

fn raw_request(method: &str, path: &str, body: Option<&str>) -> String {
    match body {
        Some(b) => format!(
            "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\n\r\n"),
    }
}

/// Runs curl on the socket; `None` when curl is not installed.
fn curl(sock: &Path, args: &[&str]) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "5", "-w", "\n%{http_code}"])
        .arg("--unix-socket")
        .arg(sock)
        .args(args)
        .output();
    let out = match out {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        other => other.unwrap(),
    };
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    Some((code.parse().unwrap(), body.to_string()))
}

#[test]
fn curl_configures_boots_and_pauses() {
    let fx = Fixture::new(test_limits());
    let sock = fx.sock();
    let put = |path: &str, body: &str| {
        let url = format!("http://localhost{path}");
        let args = [
            "-X",
            "PUT",
            &url,
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ];
        curl(&sock, &args)
    };
    let Some(first) = put(
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
    ) else {
        eprintln!("curl is not installed: skipping");
        return;
    };
    assert_eq!(first, (204, String::new()));
    let (code, body) = curl(&sock, &["http://localhost/machine-config"]).unwrap();
    assert_eq!(code, 200);
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got, json!({"vcpu_count": 2, "mem_size_mib": 256}));
    for (path, body) in [
        (
            "/boot-source",
            r#"{"kernel_image_path": "/k", "boot_args": "quiet"}"#,
        ),
        (
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/r.img"}"#,
        ),
        (
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#,
        ),
        ("/vsock", r#"{"guest_cid": 3, "uds_path": "/v.sock"}"#),
        ("/actions", r#"{"action_type": "InstanceStart"}"#),
    ] {
        assert_eq!(put(path, body).unwrap().0, 204, "{path}");
    }
    let (code, body) = curl(&sock, &["http://localhost/"]).unwrap();
    assert_eq!(code, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&info["state"], &info["app_name"]),
        (&json!("Running"), &json!("hvlite"))
    );
    let patch = [
        "-X",
        "PATCH",
        "http://localhost/vm",
        "-d",
        r#"{"state": "Paused"}"#,
    ];
    let patch = [&patch[..], &["-H", "Content-Type: application/json"]].concat();
    assert_eq!(curl(&sock, &patch).unwrap().0, 204);
    // Two transfers in one curl run share its connection.
    let (code, body) = curl(&sock, &["http://localhost/vm", "http://localhost/vm"]).unwrap();
    assert_eq!(code, 200);
    assert_eq!(body, "{\"state\":\"Paused\"}\n200{\"state\":\"Paused\"}");
    // The VMM's refusal is passed on.
    let (code, body) = curl(&sock, &patch).unwrap();
    assert_eq!(code, 409);
    assert!(body.contains("fault_message"), "{body}");
    // The API layer's own errors.
    let (code, body) = put("/machine-config", r#"{"vcpu_count": 0, "mem_size_mib": 1}"#).unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("vcpu_count"), "{body}");
    assert_eq!(curl(&sock, &["http://localhost/nope"]).unwrap().0, 404);
    let (code, head) = curl(&sock, &["-i", "-X", "DELETE", "http://localhost/vm"]).unwrap();
    assert_eq!(code, 405);
    assert!(head.contains("Allow: GET, PATCH\r\n"), "{head}");
    let text = [
        "-X",
        "PUT",
        "http://localhost/actions",
        "-H",
        "Content-Type: text/plain",
        "-d",
        r#"{"action_type": "FlushMetrics"}"#,
    ];
    let (code, body) = curl(&sock, &text).unwrap();
    assert_eq!(code, 400);
    assert!(body.contains("Content-Type"), "{body}");

    let log = fx.stop();
    assert_eq!(
        log.first(),
        Some(&ApiRequest::PutMachineConfig(
            MachineConfig::new(2, 256).unwrap()
        ))
    );
    assert!(log.contains(&ApiRequest::Action(ActionType::InstanceStart)));
    // Requests the API layer refused never reached the VMM.
    assert!(
        !log.iter()
            .any(|r| matches!(r, ApiRequest::Action(ActionType::FlushMetrics)))
    );
}

#[test]
fn keep_alive_and_pipelining() {
    let fx = Fixture::new(test_limits());
    let mut c = fx.client();
    let r = c.request(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 3, "mem_size_mib": 64}"#),
    );
    assert_eq!((r.status, r.header("Content-Length")), (204, None));
    let r = c.request("GET", "/machine-config", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.json()["vcpu_count"], 3);
    // An API error keeps the connection.
    assert_eq!(c.request("GET", "/nope", None).status, 404);
    // Three requests in one write, answered in order.
    let mut pipelined = raw_request(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    pipelined.push_str(&raw_request("GET", "/vm", None));
    pipelined.push_str("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    c.send(pipelined.as_bytes());
    assert_eq!(c.response().status, 204);
    assert_eq!(c.response().json(), json!({"state": "Running"}));
    let last = c.response();
    assert_eq!(
        (last.status, last.header("Connection")),
        (200, Some("close"))
    );
    assert!(c.closed());
    fx.stop();
}

#[test]
fn byte_at_a_time_client() {
    let fx = Fixture::new(test_limits());
    let mut c = fx.client();
    for b in raw_request("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).bytes() {
        c.send(&[b]);
    }
    // Not started yet: the stub refuses.
    assert_eq!(c.response().status, 409);
    fx.stop();
}

#[test]
fn bad_http_is_answered_and_closed() {
    let fx = Fixture::new(test_limits());
    let big_header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    let cases: [(&[u8], u16, &str); 6] = [
        (b"GARBAGE\r\n\r\n", 400, "malformed"),
        (
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            400,
            "Content-Length",
        ),
        (b"PUT /vm HTTP/1.1\r\n\r\n", 411, "Content-Length"),
        (
            b"PUT /vm HTTP/1.1\r\nContent-Length: 70000\r\n\r\n",
            413,
            "65536",
        ),
        (
            b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            501,
            "chunked",
        ),
        (big_header.as_bytes(), 431, "8192"),
    ];
    for (raw, status, words) in cases {
        let mut c = fx.client();
        c.send(raw);
        let r = c.response();
        assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(raw));
        assert!(r.fault().contains(words), "{}", r.fault());
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(c.closed());
    }
    // Nothing reached the VMM.
    assert!(fx.stop().is_empty());
}

#[test]
fn stalled_client_does_not_block_others() {
    let fx = Fixture::new(Limits {
        request_timeout: Duration::from_millis(1500),
        ..test_limits()
    });
    let mut stalled = fx.client();
    stalled.send(b"PUT /machine-config HTTP/1.1\r\nContent-Le");
    let t0 = Instant::now();
    let mut other = fx.client();
    assert_eq!(other.request("GET", "/vm", None).status, 200);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // The stalled one is told off once its request timeout passes, then dropped.
    let r = stalled.response();
    assert_eq!(r.status, 408);
    assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
    assert!(stalled.closed());
    // A body that never comes whole counts the same.
    let mut short_body = fx.client();
    short_body.send(b"PUT /vm HTTP/1.1\r\nContent-Length: 20\r\n\r\n{\"state\"");
    assert_eq!(short_body.response().status, 408);
    fx.stop();
}

#[test]
fn idle_connections_are_closed() {
    let fx = Fixture::new(Limits {
        idle_timeout: Duration::from_millis(200),
        ..test_limits()
    });
    let mut c = fx.client();
    assert_eq!(c.request("GET", "/", None).status, 200);
    let t0 = Instant::now();
    assert!(c.closed());
    assert!(t0.elapsed() < Duration::from_secs(3));
    fx.stop();
}

#[test]
fn connection_limit() {
    let fx = Fixture::new(Limits {
        max_connections: 2,
        ..test_limits()
    });
    let mut a = fx.client();
    let mut b = fx.client();
    assert_eq!(a.request("GET", "/vm", None).status, 200);
    assert_eq!(b.request("GET", "/vm", None).status, 200);
    let mut c = fx.client();
    let r = c.response();
    assert_eq!(r.status, 503);
    assert!(r.fault().contains("too many"), "{}", r.fault());
    assert!(c.closed());
    // A freed slot is reused once its thread has ended.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Until then the server may answer 503 and close before the request is written.
        let mut d = fx.client();
        let sent = d
            .stream
            .write_all(raw_request("GET", "/vm", None).as_bytes());
        if sent.is_ok() && d.response().status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(b.request("GET", "/vm", None).status, 200);
    fx.stop();
}

#[test]
fn socket_file_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    // A stale socket (bound, nobody listening any more) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let (tx, rx) = mpsc::channel();
    let vmm = thread::spawn(move || vmm_stub(rx));
    let server = ApiServer::start(&path, tx.clone()).unwrap();
    assert_eq!(server.path(), path);
    // Ready on return: no retry needed.
    assert_eq!(Client::connect(&path).request("GET", "/", None).status, 200);
    // A live socket is refused, and the live server goes on.
    let err = ApiServer::start(&path, tx.clone()).err().unwrap();
    assert!(matches!(err, ApiServerError::InUse(_)), "{err}");
    assert_eq!(Client::connect(&path).request("GET", "/", None).status, 200);
    server.shutdown();
    assert!(!path.exists());
    // Any other file is left alone.
    std::fs::write(&path, "data").unwrap();
    let err = ApiServer::start(&path, tx.clone()).err().unwrap();
    assert!(matches!(err, ApiServerError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    // A missing directory fails to bind.
    let err = ApiServer::start(&dir.path().join("no/api.sock"), tx)
        .err()
        .unwrap();
    assert!(matches!(err, ApiServerError::Bind(..)), "{err}");
    assert_eq!(vmm.join().unwrap().len(), 2);
}

#[test]
fn shutdown_does_not_remove_a_replaced_socket() {
    let mut fx = Fixture::new(test_limits());
    let sock = fx.sock();
    // Replaced by another file (renamed over it, so it cannot reuse the inode).
    let other = fx.dir.path().join("other");
    std::fs::write(&other, "someone else's").unwrap();
    std::fs::rename(&other, &sock).unwrap();
    fx.server.take().unwrap().shutdown();
    assert!(sock.exists());
}

#[test]
fn shutdown_answers_requests_waiting_for_the_vmm() {
    let Bare {
        _dir,
        path,
        server,
        inbox,
    } = bare_server();
    let mut c = Client::connect(&path);
    c.send(raw_request("GET", "/vm", None).as_bytes());
    // A VMM that takes the request and never answers.
    let (_held, _reply) = inbox.recv_timeout(Duration::from_secs(5)).unwrap();
    let t0 = Instant::now();
    server.shutdown();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let r = c.response();
    assert_eq!(r.status, 503);
    assert!(r.fault().contains("shutting down"), "{}", r.fault());
    assert!(c.closed());
    assert!(!path.exists());
}

#[test]
fn vmm_gone_is_503() {
    let bare = bare_server();
    drop(bare.inbox);
    let mut c = Client::connect(&bare.path);
    let r = c.request("GET", "/vm", None);
    assert_eq!(r.status, 503);
    // Routing errors need no VMM.
    assert_eq!(c.request("GET", "/nope", None).status, 404);
    bare.server.shutdown();
}

#[test]
fn vmm_dropping_the_reply_is_503() {
    let Bare {
        _dir,
        path,
        server,
        inbox,
    } = bare_server();
    let vmm = thread::spawn(move || inbox.into_iter().count());
    let r = Client::connect(&path).request("GET", "/", None);
    assert_eq!(r.status, 503);
    assert!(r.fault().contains("unanswered"), "{}", r.fault());
    server.shutdown();
    assert_eq!(vmm.join().unwrap(), 1);
}
