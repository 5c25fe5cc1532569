//! The binary as users run it: JSON logs without secrets, a clear error on bad flags,
//! a clean exit on SIGTERM.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use support::*;

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis-proxy"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn bad_configuration_is_one_clear_error() {
    let out = binary().args(["--upstream", "http://127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no policy source"), "{err}");
    let out = binary()
        .args(["--upstream", "https://127.0.0.1:1", "--snapshot-file", "x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http://"));
}

#[tokio::test]
async fn logs_are_json_and_never_hold_credentials() {
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let snapshot_file = dir.path().join("snapshot.json");
    write_snapshot(&snapshot_file, &snapshot(1));
    let (port, admin_port) = (free_port(), free_port());
    let mut child = binary()
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin_port}"),
        ])
        .args(["--upstream", &app.url(), "--namespace", "shop", "--snapshot-file"])
        .arg(&snapshot_file)
        .env("PORTCULLIS_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(admin_addr).await.is_ok()
            && get(admin_addr, "/readyz", &[]).await.status == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the binary became ready");

    let mut expired = claims("alice");
    expired["exp"] = serde_json::json!(now() - 3600);
    let expired = token(Algorithm::HS256, None, expired);
    let valid = token(Algorithm::HS256, None, claims("alice"));
    assert_eq!(
        get(
            addr,
            "/api/v1/items",
            &[("authorization", &format!("Bearer {expired}"))]
        )
        .await
        .status,
        401
    );
    assert_eq!(
        get(addr, "/api/v1/items", &[("authorization", &format!("Bearer {valid}"))])
            .await
            .status,
        200
    );
    assert_eq!(
        get(addr, "/api/v1/items", &[("x-api-key", REVOKED_KEY)]).await.status,
        401
    );
    assert_eq!(
        get(addr, "/api/v1/items", &[("x-api-key", ALICE_KEY)]).await.status,
        200
    );

    // The memory set-up ran before main: no transparent huge pages for this process
    // (kernels before 6.x do not report it; there is nothing to read then).
    let pid = child.id().to_string();
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
        && let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:"))
    {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }

    // SIGTERM: drain and exit 0.
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.expect("exited after SIGTERM");
    assert!(status.success(), "{status:?}");
    let mut logs = String::new();
    child.stdout.take().unwrap().read_to_string(&mut logs).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 4, "{logs}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    assert!(
        logs.contains("request refused") && logs.contains("invalid_credentials") || logs.contains("expired"),
        "{logs}"
    );
    for secret in [expired.as_str(), valid.as_str(), REVOKED_KEY, ALICE_KEY] {
        assert!(!logs.contains(secret), "a credential was logged");
    }
    assert!(!logs.contains(&valid[..40]), "not even a token's head");
}
