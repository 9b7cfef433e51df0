//! The HTTP/1.1 subset the API speaks: requests framed by `Content-Length` (no chunked
//! transfer), parsed incrementally from a byte buffer with `httparse`, and responses with
//! a JSON body or none.

use std::fmt::Write as _;

/// Most bytes the request line and headers may take.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most header lines a request may have.
pub const MAX_HEADERS: usize = 32;

/// A complete request, with only what the API needs from its headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method as sent (HTTP methods are case-sensitive): `GET`, `PUT`, ...
    pub method: String,
    /// The path, without any query string.
    pub path: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// Whether the connection stays open after the response: HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

/// What [`parse`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The buffer holds only the start of a request: read more and parse again.
    NeedMore,
    /// A whole request, which took this many bytes from the start of the buffer.
    Complete(HttpRequest, usize),
}

/// Requests that cannot be served; each maps to a response status. After one the
/// connection is closed, since where the next request would start is unknown.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(#[from] httparse::Error),
    #[error("the request line and headers exceed {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("the request has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("the request path {0:?} does not start with '/'")]
    BadPath(String),
    #[error("invalid Content-Length {0:?}")]
    BadContentLength(String),
    #[error("{0} requests need a Content-Length header")]
    LengthRequired(String),
    #[error("the body of {len} bytes exceeds the limit of {MAX_BODY_BYTES} bytes")]
    BodyTooLarge { len: u64 },
    #[error("Transfer-Encoding {0:?} is not supported: send the body with a Content-Length")]
    TransferEncoding(String),
}

impl HttpError {
    /// The response status for this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadersTooLarge | Self::TooManyHeaders => 431,
            Self::LengthRequired(_) => 411,
            Self::BodyTooLarge { .. } => 413,
            Self::TransferEncoding(_) => 501,
            Self::Malformed(_) | Self::BadPath(_) | Self::BadContentLength(_) => 400,
        }
    }
}

/// Methods whose requests carry a body, and so need a `Content-Length`.
const BODY_METHODS: [&str; 3] = ["PUT", "PATCH", "POST"];

/// Parses the request at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let header_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEADER_BYTES => {
            return Err(HttpError::HeadersTooLarge);
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEADER_BYTES => {
            return Err(HttpError::HeadersTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::NeedMore),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(e) => return Err(e.into()),
    };
    // A complete parse always has a method, a path and a version.
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    if !target.starts_with('/') {
        return Err(HttpError::BadPath(target.to_string()));
    }
    let path = target.split('?').next().unwrap_or_default().to_string();
    let head = Head::from_headers(req.headers, req.version == Some(1))?;
    let body_len = match head.content_length {
        Some(len) => usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_BODY_BYTES)
            .ok_or(HttpError::BodyTooLarge { len })?,
        None if BODY_METHODS.contains(&method.as_str()) => {
            return Err(HttpError::LengthRequired(method));
        }
        None => 0,
    };
    let Some(body) = buf.get(header_len..header_len + body_len) else {
        return Ok(Parsed::NeedMore);
    };
    let request = HttpRequest {
        method,
        path,
        content_type: head.content_type,
        keep_alive: head.keep_alive,
        body: body.to_vec(),
    };
    Ok(Parsed::Complete(request, header_len + body_len))
}

/// The headers the API looks at.
struct Head {
    content_length: Option<u64>,
    content_type: Option<String>,
    keep_alive: bool,
}

impl Head {
    fn from_headers(headers: &[httparse::Header], http11: bool) -> Result<Self, HttpError> {
        let mut head = Head {
            content_length: None,
            content_type: None,
            keep_alive: http11,
        };
        for h in headers {
            let value = String::from_utf8_lossy(h.value);
            let value = value.trim();
            if h.name.eq_ignore_ascii_case("content-length") {
                let len = parse_content_length(value)?;
                if head.content_length.is_some_and(|l| l != len) {
                    return Err(HttpError::BadContentLength(value.to_string()));
                }
                head.content_length = Some(len);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(HttpError::TransferEncoding(value.to_string()));
            } else if h.name.eq_ignore_ascii_case("content-type") {
                head.content_type = Some(value.to_string());
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        head.keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        head.keep_alive = true;
                    }
                }
            }
        }
        Ok(head)
    }
}

/// Digits only: no sign, no spaces, no list.
fn parse_content_length(value: &str) -> Result<u64, HttpError> {
    let bad = || HttpError::BadContentLength(value.to_string());
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// A response: a status, an optional JSON body and the headers that go with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code (100..=599; anything else is sent as 500).
    pub status: u16,
    /// The JSON body, if any.
    pub body: Option<String>,
    /// The `Allow` header of a 405 response.
    pub allow: Option<String>,
    /// Whether the server keeps the connection open after this response.
    pub keep_alive: bool,
}

impl HttpResponse {
    /// The status line, headers and body, ready to write.
    pub fn to_bytes(&self) -> Vec<u8> {
        let status = if (100..=599).contains(&self.status) {
            self.status
        } else {
            500
        };
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        head.push_str("Server: hvlite\r\n");
        if let Some(allow) = &self.allow {
            let _ = write!(head, "Allow: {allow}\r\n");
        }
        if !self.keep_alive {
            head.push_str("Connection: close\r\n");
        }
        // 1xx and 204 responses have no body, nor a Content-Length.
        let bodiless = status < 200 || status == 204;
        let body = self.body.as_deref().filter(|_| !bodiless);
        if body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        let body = body.unwrap_or_default();
        if !bodiless {
            let _ = write!(head, "Content-Length: {}\r\n", body.len());
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    }
}

/// The reason phrase for a status.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
