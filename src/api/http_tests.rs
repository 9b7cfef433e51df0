use super::*;

const PUT: &[u8] = b"PUT /machine-config HTTP/1.1\r\nHost: localhost\r\n\
Content-Type: application/json\r\nContent-Length: 37\r\n\r\n\
{\"vcpu_count\": 2, \"mem_size_mib\": 64}";

fn complete(buf: &[u8]) -> (HttpRequest, usize) {
    match parse(buf) {
        Ok(Parsed::Complete(req, used)) => (req, used),
        other => panic!("expected a complete request, got {other:?}"),
    }
}

fn error(buf: &[u8]) -> HttpError {
    match parse(buf) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn request(head: &str) -> Vec<u8> {
    format!("{head}\r\n\r\n").into_bytes()
}

#[test]
fn get_without_body() {
    let (req, used) = complete(b"GET /vm HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(used, 29);
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/vm");
    assert_eq!(req.content_type, None);
    assert!(req.keep_alive);
    assert!(req.body.is_empty());
}

#[test]
fn put_with_body() {
    let (req, used) = complete(PUT);
    assert_eq!(used, PUT.len());
    assert_eq!(req.method, "PUT");
    assert_eq!(req.content_type.as_deref(), Some("application/json"));
    assert_eq!(req.body, br#"{"vcpu_count": 2, "mem_size_mib": 64}"#);
}

#[test]
fn query_string_is_dropped() {
    let (req, _) = complete(&request("GET /vm?verbose=1 HTTP/1.1"));
    assert_eq!(req.path, "/vm");
}

#[test]
fn keep_alive_by_version_and_header() {
    let cases = [
        ("GET / HTTP/1.1", true),
        ("GET / HTTP/1.1\r\nConnection: close", false),
        ("GET / HTTP/1.1\r\nconnection: Keep-Alive, Upgrade", true),
        ("GET / HTTP/1.0", false),
        ("GET / HTTP/1.0\r\nConnection: keep-alive", true),
    ];
    for (head, keep_alive) in cases {
        assert_eq!(complete(&request(head)).0.keep_alive, keep_alive, "{head}");
    }
}

#[test]
fn every_proper_prefix_needs_more() {
    for end in 0..PUT.len() {
        assert_eq!(
            parse(&PUT[..end]),
            Ok(Parsed::NeedMore),
            "prefix of {end} bytes"
        );
    }
}

#[test]
fn byte_at_a_time() {
    let mut buf = Vec::new();
    let mut result = None;
    for &b in PUT {
        assert!(result.is_none(), "complete before the last byte");
        buf.push(b);
        if let Parsed::Complete(req, used) = parse(&buf).unwrap() {
            result = Some((req, used));
        }
    }
    let (req, used) = result.expect("complete after the last byte");
    assert_eq!((req.path.as_str(), used), ("/machine-config", PUT.len()));
}

#[test]
fn pipelined_requests() {
    let mut buf = PUT.to_vec();
    buf.extend_from_slice(b"GET /vm HTTP/1.1\r\n\r\nGET / HT");
    let (first, used) = complete(&buf);
    assert_eq!(first.method, "PUT");
    let rest = &buf[used..];
    let (second, used2) = complete(rest);
    assert_eq!(
        (second.method.as_str(), second.path.as_str()),
        ("GET", "/vm")
    );
    assert_eq!(parse(&rest[used2..]), Ok(Parsed::NeedMore));
}

#[test]
fn oversized_headers() {
    let big = "a".repeat(MAX_HEADER_BYTES);
    // Whole and still arriving.
    let whole = request(&format!("GET / HTTP/1.1\r\nX-Big: {big}"));
    assert_eq!(error(&whole), HttpError::HeadersTooLarge);
    let partial = format!("GET / HTTP/1.1\r\nX-Big: {big}");
    assert_eq!(error(partial.as_bytes()), HttpError::HeadersTooLarge);
    assert_eq!(HttpError::HeadersTooLarge.status(), 431);
    // Just under the limit is fine.
    let fits = request(&format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(8150)));
    assert!(fits.len() <= MAX_HEADER_BYTES);
    complete(&fits);
}

#[test]
fn too_many_headers() {
    let mut head = String::from("GET / HTTP/1.1");
    for i in 0..=MAX_HEADERS {
        head.push_str(&format!("\r\nX-{i}: {i}"));
    }
    assert_eq!(error(&request(&head)), HttpError::TooManyHeaders);
}

#[test]
fn body_size_limit() {
    let head = format!("PUT /vm HTTP/1.1\r\nContent-Length: {}", MAX_BODY_BYTES + 1);
    let e = error(&request(&head));
    assert_eq!(e, HttpError::BodyTooLarge { len: 65537 });
    assert_eq!(e.status(), 413);
    let huge = request("PUT /vm HTTP/1.1\r\nContent-Length: 99999999999999999999");
    assert_eq!(error(&huge).status(), 400);
    // At the limit: waits for the body.
    let head = format!("PUT /vm HTTP/1.1\r\nContent-Length: {MAX_BODY_BYTES}");
    let mut buf = request(&head);
    assert_eq!(parse(&buf), Ok(Parsed::NeedMore));
    buf.resize(buf.len() + MAX_BODY_BYTES, b' ');
    assert_eq!(complete(&buf).0.body.len(), MAX_BODY_BYTES);
}

#[test]
fn bad_request_lines() {
    for line in [
        "GARBAGE",
        "GET",
        "GET /",
        "GET / HTTP/2.0",
        "GET / FTP/1.1",
        "G(T / HTTP/1.1",
        "GET /a b HTTP/1.1",
    ] {
        let e = error(&request(line));
        assert!(matches!(e, HttpError::Malformed(_)), "{line}: {e:?}");
        assert_eq!(e.status(), 400);
    }
    for line in ["GET http://host/vm HTTP/1.1", "OPTIONS * HTTP/1.1"] {
        assert!(
            matches!(error(&request(line)), HttpError::BadPath(_)),
            "{line}"
        );
    }
    assert!(matches!(
        error(b"\x00\x01\x02\r\n\r\n"),
        HttpError::Malformed(_)
    ));
}

#[test]
fn bad_headers() {
    let e = error(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n");
    assert_eq!(e, HttpError::Malformed(httparse::Error::HeaderName));
    let e = error(b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n");
    assert_eq!(e, HttpError::Malformed(httparse::Error::HeaderValue));
}

#[test]
fn content_length_required_for_bodies() {
    for method in ["PUT", "PATCH", "POST"] {
        let e = error(&request(&format!("{method} /vm HTTP/1.1")));
        assert_eq!(e, HttpError::LengthRequired(method.into()));
        assert_eq!(e.status(), 411);
    }
    let (req, _) = complete(&request("PUT /vm HTTP/1.1\r\nContent-Length: 0"));
    assert!(req.body.is_empty());
}

#[test]
fn invalid_content_length() {
    for value in ["abc", "-1", "+5", "1, 1", "0x10", "", "1 2"] {
        let e = error(&request(&format!(
            "PUT /vm HTTP/1.1\r\nContent-Length: {value}"
        )));
        assert!(
            matches!(e, HttpError::BadContentLength(_)),
            "{value:?}: {e:?}"
        );
        assert_eq!(e.status(), 400);
    }
    let two = request("PUT /vm HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2");
    assert!(matches!(error(&two), HttpError::BadContentLength(_)));
    let same = b"PUT /vm HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\nx";
    assert_eq!(complete(same).0.body, b"x");
}

#[test]
fn transfer_encoding_is_not_implemented() {
    let head = "PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked";
    let e = error(&request(head));
    assert_eq!(e, HttpError::TransferEncoding("chunked".into()));
    assert_eq!(e.status(), 501);
    let both = "PUT /vm HTTP/1.1\r\nContent-Length: 3\r\ntransfer-encoding: gzip, chunked";
    assert_eq!(error(&request(both)).status(), 501);
}

fn response(status: u16, body: Option<&str>, keep_alive: bool) -> String {
    let resp = HttpResponse {
        status,
        body: body.map(String::from),
        allow: None,
        keep_alive,
    };
    String::from_utf8(resp.to_bytes()).unwrap()
}

#[test]
fn response_no_content() {
    assert_eq!(
        response(204, None, true),
        "HTTP/1.1 204 No Content\r\nServer: hvlite\r\n\r\n"
    );
    // A 204 never carries a body.
    assert_eq!(response(204, Some("{}"), true), response(204, None, true));
}

#[test]
fn response_with_body() {
    assert_eq!(
        response(200, Some(r#"{"state":"Running"}"#), true),
        "HTTP/1.1 200 OK\r\nServer: hvlite\r\nContent-Type: application/json\r\n\
         Content-Length: 19\r\n\r\n{\"state\":\"Running\"}"
    );
    assert_eq!(
        response(404, None, false),
        "HTTP/1.1 404 Not Found\r\nServer: hvlite\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
}

#[test]
fn response_allow_and_bad_status() {
    let resp = HttpResponse {
        status: 405,
        body: None,
        allow: Some("GET, PATCH".into()),
        keep_alive: true,
    };
    let text = String::from_utf8(resp.to_bytes()).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nAllow: GET, PATCH\r\n"), "{text}");
    assert!(response(42, None, true).starts_with("HTTP/1.1 500 Internal Server Error\r\n"));
    assert!(response(1000, None, true).starts_with("HTTP/1.1 500 "));
    assert!(response(599, None, true).starts_with("HTTP/1.1 599 Unknown\r\n"));
}

#[test]
fn responses_parse_back() {
    let text = response(400, Some(r#"{"fault_message":"x"}"#), true);
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut resp = httparse::Response::new(&mut headers);
    let used = match resp.parse(text.as_bytes()) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("{other:?}"),
    };
    assert_eq!(resp.code, Some(400));
    assert_eq!(&text[used..], r#"{"fault_message":"x"}"#);
}
