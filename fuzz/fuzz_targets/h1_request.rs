//! The HTTP/1.1 server's request parser: whatever the bytes, no panic, and a request it
//! takes is one whose parts are what the bytes say (a target that starts with `/`, a
//! body no longer than what was sent).
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::transport::h1_server::{Settings, parse_one};

fuzz_target!(|data: &[u8]| {
    let settings = Settings {
        max_head_bytes: 16 * 1024,
        max_headers: 100,
        max_body_bytes: 10 * 1024 * 1024,
        header_timeout: Duration::from_secs(10),
    };
    if let Some((request, _close)) = parse_one(data, &settings) {
        assert!(request.uri().path().starts_with('/'));
        assert!(request.body().len() <= data.len());
    }
});
