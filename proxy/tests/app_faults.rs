//! The app behind the sidecar misbehaving: too slow, closing mid-response, answering
//! garbage or an oversized head, closing or resetting connections, refusing them, going
//! away under load. Each gets its documented status (504 for the timeout, 502 for the
//! rest; a body the app breaks off reaches the client cut, never shorter), a metric by
//! cause, and the next request works. Alone in its test binary, so that the process's
//! open file descriptors say whether a connection leaked.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use support::*;

const KEY: (&str, &str) = ("x-api-key", ALICE_KEY);
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Reads one request head; its target, or `None` when the peer closed.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head).lines().next()?.to_string();
    line.split(' ').nth(1).map(str::to_string)
}

/// An app that misbehaves as the request's `case` query parameter says, and answers
/// `ok` (keep-alive) otherwise. While `down` is set it resets every new connection at
/// once. Its connections end with it.
async fn misbehaving_app(listener: TcpListener, down: Arc<AtomicBool>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        if down.load(Ordering::SeqCst) {
            let _ = stream.set_zero_linger();
            continue;
        }
        connections.spawn(async move {
            while let Some(target) = read_head(&mut stream).await {
                let case = target.split("case=").nth(1).unwrap_or("").to_string();
                match case.as_str() {
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        let _ = stream.write_all(OK).await;
                    }
                    "cut" => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part of it")
                            .await;
                        return;
                    }
                    "garbage" => {
                        let _ = stream.write_all(b"this is not HTTP at all\r\n\r\n").await;
                        return;
                    }
                    "huge" => {
                        let pad = "x".repeat(70 * 1024);
                        let head = format!("HTTP/1.1 200 OK\r\nx-pad: {pad}\r\ncontent-length: 2\r\n\r\nok");
                        let _ = stream.write_all(head.as_bytes()).await;
                        return;
                    }
                    "half" => {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-le").await;
                        return;
                    }
                    "close" => return,
                    "reset" => {
                        let _ = stream.set_zero_linger();
                        return;
                    }
                    _ => {
                        if stream.write_all(OK).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

async fn metric(sidecar: &Sidecar, line: &str) -> bool {
    let text = String::from_utf8(admin(sidecar, "/metrics").await.body.to_vec()).unwrap();
    text.lines().any(|l| l == line)
}

/// The count of upstream errors of `kind` (0 before the first).
async fn upstream_errors(sidecar: &Sidecar, kind: &str) -> u64 {
    let text = String::from_utf8(admin(sidecar, "/metrics").await.body.to_vec()).unwrap();
    let prefix = format!(r#"portcullis_proxy_upstream_errors_total{{kind="{kind}"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.parse().unwrap())
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 10 s");
}

#[tokio::test]
async fn each_misbehaviour_gets_its_status_and_cause_and_the_next_request_works() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let app_task = tokio::spawn(misbehaving_app(listener, down.clone()));
    let app = App {
        addr,
        seen: Default::default(),
    };
    let sidecar = sidecar(&app, &["--upstream-timeout", "1"], true).await;
    let proxy = sidecar.http();
    let ok = |r: &Reply| r.status == 200 && r.body == "ok";
    assert!(ok(&get(proxy, "/api/v1/items", &[KEY]).await));
    let baseline = open_fds();

    let cases = [
        ("slow", 504, "upstream_timeout", "timeout"),
        ("garbage", 502, "upstream_unavailable", "malformed"),
        ("huge", 502, "upstream_unavailable", "head_too_large"),
        ("half", 502, "upstream_unavailable", "closed"),
        ("close", 502, "upstream_unavailable", "closed"),
        ("reset", 502, "upstream_unavailable", "closed"),
    ];
    for (case, status, code, cause) in cases {
        let r = get(proxy, &format!("/api/v1/items?case={case}"), &[KEY]).await;
        assert_eq!((r.status.as_u16(), r.error_code().as_str()), (status, code), "{case}");
        let line = format!(r#"portcullis_proxy_upstream_errors_total{{kind="{cause}"}}"#);
        eventually(case, async || {
            let text = String::from_utf8(admin(&sidecar, "/metrics").await.body.to_vec()).unwrap();
            text.lines().any(|l| l.starts_with(&line))
        })
        .await;
        assert!(ok(&get(proxy, "/api/v1/items", &[KEY]).await), "after {case}");
    }

    // A body broken off after its head: the client sees the head, then the cut (a
    // response shorter than its length, on a closed connection), never a shorter success.
    let cut = raw(
        proxy,
        format!("GET /api/v1/items?case=cut HTTP/1.1\r\nhost: t\r\nx-api-key: {ALICE_KEY}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(cut.starts_with("HTTP/1.1 200 OK\r\n"), "{cut}");
    assert!(cut.contains("content-length: 100\r\n"), "{cut}");
    assert!(cut.ends_with("only part of it"), "{cut}");
    eventually("body_truncated", async || {
        metric(
            &sidecar,
            r#"portcullis_proxy_upstream_errors_total{kind="body_truncated"} 1"#,
        )
        .await
    })
    .await;
    assert!(ok(&get(proxy, "/api/v1/items", &[KEY]).await), "after cut");

    // Going away under load: every request in flight gets an answer (an error or a
    // success), none hangs; once the app is back, requests work again.
    let load: Vec<_> = (0..40)
        .map(|i| {
            tokio::spawn(async move {
                let path = if i % 4 == 0 {
                    "/api/v1/items?case=slow"
                } else {
                    "/api/v1/items"
                };
                get(proxy, path, &[KEY]).await.status.as_u16()
            })
        })
        .collect();
    down.store(true, Ordering::SeqCst);
    for answered in load {
        let status = tokio::time::timeout(Duration::from_secs(10), answered)
            .await
            .expect("no request hangs")
            .unwrap();
        assert!([200, 502, 504].contains(&status), "{status}");
    }
    let r = get(proxy, "/api/v1/items", &[KEY]).await;
    assert_eq!(r.status, 502, "the app is down");
    down.store(false, Ordering::SeqCst);
    eventually("the app is back", async || {
        ok(&get(proxy, "/api/v1/items", &[KEY]).await)
    })
    .await;

    // Nothing leaked: client connections closed, app connections closed or pooled.
    eventually("connections closed", async || {
        metric(&sidecar, "portcullis_proxy_connections_open 0").await
    })
    .await;
    eventually("descriptors back", async || open_fds() <= baseline + 4).await;

    // Refused connections: nothing listens on the app's port any more.
    app_task.abort();
    let _ = app_task.await;
    let refused_before = upstream_errors(&sidecar, "connect").await;
    let refused = get(proxy, "/api/v1/items", &[KEY]).await;
    assert_eq!(refused.status, 502);
    eventually("connect", async || {
        upstream_errors(&sidecar, "connect").await == refused_before + 1
    })
    .await;
    // ... and it comes back on the same port.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(64).unwrap();
    tokio::spawn(misbehaving_app(listener, Arc::new(AtomicBool::new(false))));
    eventually("the app listens again", async || {
        ok(&get(proxy, "/api/v1/items", &[KEY]).await)
    })
    .await;
    sidecar.running.shutdown().await;
}
