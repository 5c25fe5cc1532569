//! Token-service benchmark (run by `bench/tokens.sh`): the real router on a loopback
//! listener over SQLite, production argon2id settings, and a raw HTTP/1.1 client.
//! Prints one `RESULT` line: logins per second, argon2id time per login (verification
//! alone, on one core), refreshes per second, each with `CONCURRENCY` clients.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark: a panic is the failure report"
)]

use std::net::SocketAddr;
use std::time::Instant;

use portcullis_operator::credentials;
use portcullis_operator::store::{DbConfig, Store, UserRow, builtin_roles};
use portcullis_operator::tokens::{self, Clock, KekSource, Settings, TokenService};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PASSWORD: &str = "benchmark-password-1";

async fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::main]
async fn main() {
    let logins: usize = std::env::var("LOGINS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let refreshes: usize = std::env::var("REFRESHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let concurrency: usize = std::env::var("CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&DbConfig::from_url(&format!("sqlite://{}/bench.db", dir.path().display())).unwrap())
        .await
        .unwrap();
    for role in builtin_roles() {
        store.upsert_role(&role).await.unwrap();
    }
    let settings = Settings::new("http://127.0.0.1:7070");
    let params = settings.argon2.clone();
    let users = concurrency.max(1);
    for i in 0..users {
        let name = format!("user-{i}");
        store
            .upsert_user(&UserRow::new(&name, format!("{name}@bench.example.com")).with_roles(["viewer"]))
            .await
            .unwrap();
        let hash = credentials::hash_password_with(PASSWORD, &params).unwrap();
        store.set_password(&name, &hash, None).await.unwrap();
    }
    // argon2id alone, production parameters, one core.
    let hash = credentials::hash_password_with(PASSWORD, &params).unwrap();
    let started = Instant::now();
    for _ in 0..10 {
        assert!(credentials::verify_password(PASSWORD, &hash));
    }
    let hash_ms = started.elapsed().as_secs_f64() * 1000.0 / 10.0;

    let service = TokenService::start(store.clone(), settings, &KekSource::Fixed([9; 32]), Clock::system())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tokens::router(service);
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap();
    });

    // Logins: `concurrency` clients, each its own user (a failure-free run: no throttling).
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let mut refresh_tokens = Vec::new();
            for _ in 0..logins / concurrency {
                let (status, body) = post(
                    addr,
                    "/api/v1/auth/login",
                    &json!({"email": format!("user-{}@bench.example.com", c % users), "password": PASSWORD}),
                )
                .await;
                assert_eq!(status, 200, "{body}");
                refresh_tokens.push(body["data"]["refresh_token"].as_str().unwrap().to_string());
            }
            refresh_tokens
        }));
    }
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.unwrap());
    }
    let login_secs = started.elapsed().as_secs_f64();
    let done_logins = tokens.iter().map(Vec::len).sum::<usize>();

    // Refreshes: each client rotates its last session's token again and again.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for list in tokens {
        let mut token = list.last().unwrap().clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..refreshes / concurrency {
                let (status, body) = post(addr, "/api/v1/auth/refresh", &json!({"refresh_token": token})).await;
                assert_eq!(status, 200, "{body}");
                token = body["data"]["refresh_token"].as_str().unwrap().to_string();
            }
            refreshes / concurrency
        }));
    }
    let mut done_refreshes = 0;
    for t in tasks {
        done_refreshes += t.await.unwrap();
    }
    let refresh_secs = started.elapsed().as_secs_f64();
    println!(
        "RESULT logins_per_s={:.1} argon2id_ms_per_login={hash_ms:.1} refreshes_per_s={:.0} logins={done_logins} refreshes={done_refreshes} concurrency={concurrency} argon2=m{}k,t{},p{} backend=sqlite",
        done_logins as f64 / login_secs,
        done_refreshes as f64 / refresh_secs,
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
    );
}
