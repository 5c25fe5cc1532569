//! Our HTTP/1.1 request parser against hyper's, on the same bytes: generated requests,
//! valid, borderline and hostile. Every request our server would answer itself must be one
//! hyper accepts too, read as the same method, target, headers and body; whatever ours does
//! not take is hyper's to serve (or refuse) anyway, so the two can never disagree about a
//! request. The figures are printed (`-- --nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use portcullis_proxy::transport::h1_server::{Settings, parse_one};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a server made of a request.
#[derive(Debug, Clone, PartialEq)]
struct Read {
    method: String,
    target: String,
    headers: HeaderMap,
    body: Bytes,
}

fn settings() -> Settings {
    Settings {
        max_head_bytes: 16 * 1024,
        max_headers: 100,
        max_body_bytes: 10 * 1024 * 1024,
        header_timeout: Duration::from_secs(10),
    }
}

fn ours(bytes: &[u8]) -> Option<Read> {
    let (request, _close) = parse_one(bytes, &settings())?;
    let (parts, body) = request.into_parts();
    Some(Read {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        headers: parts.headers,
        body,
    })
}

/// The first request hyper's HTTP/1.1 server hands its service, if it hands one over
/// whole (body included).
async fn hypers(bytes: &[u8]) -> Option<Read> {
    let (client, server) = tokio::io::duplex(256 * 1024);
    let first: Arc<Mutex<Option<Read>>> = Arc::default();
    let record = first.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let record = record.clone();
        async move {
            let (parts, body) = request.into_parts();
            if let Ok(body) = body.collect().await {
                let mut first = record.lock().unwrap();
                if first.is_none() {
                    *first = Some(Read {
                        method: parts.method.to_string(),
                        target: parts.uri.to_string(),
                        headers: parts.headers,
                        body: body.to_bytes(),
                    });
                }
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    });
    // Half-close: the request is written whole and the write side shut before hyper reads.
    let connection = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    let (mut read, mut write) = tokio::io::split(client);
    write.write_all(bytes).await.unwrap();
    write.shutdown().await.unwrap();
    let drain = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = read.read_to_end(&mut sink).await;
    });
    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
    drain.abort();
    first.lock().unwrap().take()
}

/// xorshift64*: the same samples on every run, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn pick<'a, T: ?Sized>(&mut self, from: &[&'a T]) -> &'a T {
        from[(self.next() % from.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Each part of a request: what a client sends (`GOOD`), and what a broken or hostile one
/// might (`BAD`), picked now and then.
const METHODS_GOOD: &[&str] = &["GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS", "PURGE"];
const METHODS_BAD: &[&str] = &["get", "G{T", "CONNECT", "", "GET\t", "G\u{e9}T"];
const TARGETS_GOOD: &[&str] = &[
    "/",
    "/api/v1/items",
    "/api/v1/items?page=2&q=a%20b",
    "/a%2Fb",
    "/a/../b",
    "//x",
    "/a|b",
    "/{x}",
    "/a?x=\"y\"",
];
const TARGETS_BAD: &[&str] = &[
    "*",
    "http://example.com/a",
    "example.com:443",
    "/a b",
    "/a\x7f",
    "/caf\u{e9}",
    "/a#frag",
    "/%zz",
    "",
];
const VERSIONS_GOOD: &[&str] = &["HTTP/1.1"];
const VERSIONS_BAD: &[&str] = &["HTTP/1.0", "HTTP/1.2", "http/1.1", "HTTP/2.0", "HTTP/1.10", "HTTP/1"];
const HEADERS_GOOD: &[&str] = &[
    "Host: shop.test",
    "Accept: */*",
    "User-Agent: differential/1",
    "X-Custom: a, b ,c",
    "x-empty:",
    "X-Spaces:    padded   ",
    "Cookie: a=1; b=2",
    "Cookie: c=3",
    "Content-Type: application/json",
    "Connection: keep-alive",
    "Connection: close",
    "Content-Length: 0",
    "Content-Length: 4",
    "Content-Length: 04",
    "X_Underscore: y",
    "X-Tab: a\tb",
    "X-High: caf\u{e9}",
    "X-Long: 0123456789012345678901234567890123456789012345678901234567890123456789",
];
const HEADERS_BAD: &[&str] = &[
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Expect: 100-continue",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: gzip, chunked",
    "Content-Length: +4",
    "Content-Length: 4, 4",
    "Content-Length:  4 ",
    "Content-Length: -1",
    "Content-Length: 99999999999999999999",
    "Foo : bar",
    " Leading: space",
    "No-Colon",
    ": empty-name",
    "Bad\"Name: x",
    "X-Nul: a\0b",
    "X-Ctl: a\x01b",
    "X-Fold: a\r\n folded",
];
const BODIES: &[&str] = &[
    "",
    "",
    "",
    "body",
    "bod",
    "bodyX",
    "4\r\nbody\r\n0\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
];

/// One of `good`, or (`bad` percent of the time) one of `bad`.
fn either<'a>(rng: &mut Rng, good: &[&'a str], bad: &[&'a str], bad_percent: u64) -> &'a str {
    if rng.chance(bad_percent) {
        rng.pick(bad)
    } else {
        rng.pick(good)
    }
}

fn sample(rng: &mut Rng) -> Vec<u8> {
    let eol = if rng.chance(5) { "\n" } else { "\r\n" };
    let mut out = String::new();
    if rng.chance(2) {
        out.push_str(eol);
    }
    out.push_str(either(rng, METHODS_GOOD, METHODS_BAD, 5));
    out.push_str(if rng.chance(3) { "  " } else { " " });
    out.push_str(either(rng, TARGETS_GOOD, TARGETS_BAD, 8));
    out.push(' ');
    out.push_str(either(rng, VERSIONS_GOOD, VERSIONS_BAD, 5));
    out.push_str(eol);
    let count = rng.next() % 7;
    for _ in 0..count {
        out.push_str(either(rng, HEADERS_GOOD, HEADERS_BAD, 8));
        out.push_str(if rng.chance(3) { "\n" } else { eol });
    }
    out.push_str(eol);
    out.push_str(rng.pick(BODIES));
    out.into_bytes()
}

/// Requests written by hand: each known to be a trap for some parser.
const HAND_WRITTEN: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody",
    b"POST /x HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nbody!",
    b"POST /x HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n folded: x\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\nGET /second HTTP/1.1\r\n\r\n",
    b"GET http://a/x HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
    b"GET / HTTP/1.1\r\nX_Auth_User: root\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\n\r\n",
];

#[tokio::test]
async fn our_http1_parser_reads_every_request_as_hyper_does() {
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let mut inputs: Vec<Vec<u8>> = HAND_WRITTEN.iter().map(|b| b.to_vec()).collect();
    inputs.extend((0..6000).map(|_| sample(&mut rng)));
    let (mut ours_took, mut hyper_took, mut both, mut neither) = (0, 0, 0, 0);
    for bytes in &inputs {
        let mine = ours(bytes);
        let theirs = hypers(bytes).await;
        match (&mine, &theirs) {
            (Some(mine), Some(theirs)) => {
                assert_eq!(mine, theirs, "read differently: {:?}", String::from_utf8_lossy(bytes));
                both += 1;
            }
            (Some(mine), None) => panic!(
                "ours answers a request hyper refuses: {:?} read as {mine:?}",
                String::from_utf8_lossy(bytes)
            ),
            (None, Some(_)) => hyper_took += 1,
            (None, None) => neither += 1,
        }
        ours_took += usize::from(mine.is_some());
    }
    println!(
        "differential: {} requests; ours served {ours_took} (all read as hyper reads them), \
         {hyper_took} more handed to hyper and accepted there, {neither} refused by both",
        inputs.len()
    );
    assert!(both > 1500, "the samples exercise our parser: {both}");
    assert!(neither > 300, "and hostile ones: {neither}");
}
