//! Fuzzes the API request path: arbitrary bytes go through the HTTP parser (as the
//! server feeds it: the whole buffer, then what follows each complete request, as
//! pipelined requests would) and every complete request through routing and JSON
//! decoding. Nothing may panic, and a complete request must consume at least one byte
//! and no more than the buffer holds.

#![no_main]

use hvlite::api::http::{self, Parsed};
use hvlite::api::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Parsed::Complete(req, used)) = http::parse(rest) {
        assert!(
            used > 0 && used <= rest.len(),
            "consumed {used} of {}",
            rest.len()
        );
        if let Err(e) = parse_request(&req) {
            let resp = e.to_response();
            assert!((400..500).contains(&resp.status), "{e}");
        }
        rest = &rest[used..];
    }
});
