//! The control plane under load (bench/controlplane.sh runs it):
//!
//! - `cp_load propagation --backend sqlite|postgres [--database-url URL] [--sidecars 1000]
//!   [--namespaces 100] [--revocations 100]`: the operator (local mode) as a process,
//!   N simulated sidecars long-polling it across the namespaces (sending back the view
//!   they hold, as the sidecar does), revocations written to the database one after the
//!   other; for each, how long until each sidecar it concerns holds the revision that
//!   carries it. Two kinds, one line each: `api_key` revokes a key of one namespace (its
//!   sidecars must get it; the others should not even be answered), `user` disables a
//!   user (every sidecar must get it). Prints
//!   `RESULT backend=… kind=… sidecars=… namespaces=… revocations=… p50_ms=… p99_ms=… peak_rss_mib=… cpu_s_per_revision=… answered_per_revision=…`.
//! - `cp_load snapshot [--users 10000] [--api-keys 100000]`: the time to read a snapshot of
//!   that size and the bytes one namespace's sidecars receive. Prints
//!   `RESULT snapshot users=… api_keys=… build_ms=… bytes_per_sidecar=… gzip_bytes_per_sidecar=…`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portcullis_e2e::{ControlPlane, HarnessError, free_port, http};
use portcullis_operator::store::{ApiKeyRow, DbConfig, RoleRow, Store, UserRow};

type Result<T> = std::result::Result<T, HarnessError>;

fn fail(message: impl std::fmt::Display) -> HarnessError {
    HarnessError(message.to_string())
}

fn arg(args: &HashMap<String, String>, name: &str, default: usize) -> Result<usize> {
    args.get(name).map_or(Ok(default), |v| {
        v.parse().map_err(|_| fail(format!("--{name} {v}: not a number")))
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut argv = std::env::args().skip(1);
    let mode = argv.next().unwrap_or_default();
    let mut args = HashMap::new();
    while let Some(flag) = argv.next() {
        let value = argv.next().unwrap_or_default();
        args.insert(flag.trim_start_matches('-').to_string(), value);
    }
    let result = match mode.as_str() {
        "propagation" => propagation(&args).await,
        "snapshot" => snapshot(&args).await,
        _ => Err(fail("usage: cp_load propagation|snapshot [--flag value]…")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// One simulated sidecar's latest revision, when it arrived (ns since the start), and
/// how many snapshots it was sent.
struct Seen {
    namespace: usize,
    revision: AtomicI64,
    at_ns: AtomicU64,
    answers: AtomicU64,
}

async fn propagation(args: &HashMap<String, String>) -> Result<()> {
    let sidecars = arg(args, "sidecars", 1000)?;
    let namespaces = arg(args, "namespaces", 100)?.max(1);
    let revocations = arg(args, "revocations", 100)?;
    let backend = args.get("backend").cloned().unwrap_or_else(|| "sqlite".into());
    let dir = tempfile::tempdir().map_err(fail)?;
    let url = match (backend.as_str(), args.get("database-url")) {
        ("sqlite", _) => format!("sqlite://{}/load.db", dir.path().display()),
        (_, Some(url)) => portcullis_e2e::fresh_postgres(url, "cp_load").await?,
        _ => return Err(fail("--database-url is needed for postgres")),
    };
    // Seed: a user per revocation, and for each namespace as many keys as revocations need.
    let store = Store::open(&DbConfig::from_url(&url).map_err(fail)?)
        .await
        .map_err(fail)?;
    let mut role = RoleRow::new("viewer", ["read"]);
    role.builtin = true;
    store.upsert_role(&role).await.map_err(fail)?;
    store
        .upsert_user(&UserRow::new("load", "load@example.com").with_roles(["viewer"]))
        .await
        .map_err(fail)?;
    let users: Vec<UserRow> = (0..revocations)
        .map(|i| UserRow::new(format!("user-{i}"), format!("user-{i}@example.com")).with_roles(["viewer"]))
        .collect();
    for user in &users {
        store.upsert_user(user).await.map_err(fail)?;
    }
    let mut hashes = Vec::new();
    for i in 0..revocations.max(namespaces) {
        let key = ApiKeyRow::user_key(
            &format!("key-{i}"),
            format!("ns-{}", i % namespaces),
            format!("key-{i}"),
            "load",
            ["read"],
        );
        store.insert_api_key(&key).await.map_err(fail)?;
        let hash = key.key_hash;
        hashes.push(hash);
    }
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).map_err(fail)?;
    let plane = ControlPlane::start(&manifests, &dir.path().join("state"), Some(&url), free_port()?).await?;
    plane.ready("ns-0").await?;
    let pid = plane.process.id().ok_or_else(|| fail("no operator pid"))?;
    let mut tokens = Vec::new();
    for n in 0..namespaces {
        let namespace = format!("ns-{n}");
        tokens.push((namespace.clone(), plane.token(&namespace)?));
    }

    let started = Instant::now();
    let seen: Vec<Arc<Seen>> = (0..sidecars)
        .map(|i| {
            Arc::new(Seen {
                namespace: i % namespaces,
                revision: AtomicI64::new(-1),
                at_ns: AtomicU64::new(0),
                answers: AtomicU64::new(0),
            })
        })
        .collect();
    for slot in &seen {
        let (namespace, token) = tokens[slot.namespace].clone();
        tokio::spawn(sidecar(plane.api, namespace, token, slot.clone(), started));
    }
    // Every simulated sidecar holds the current revision before the first revocation.
    let current = store.revision().await.map_err(fail)?;
    wait_all(&seen, &|_| true, current, Duration::from_secs(120)).await?;

    for kind in ["api_key", "user"] {
        let cpu_before = portcullis_e2e::cpu_seconds(pid).unwrap_or(0.0);
        let answers_before: u64 = seen.iter().map(|s| s.answers.load(Ordering::Acquire)).sum();
        let mut latencies_ms = Vec::new();
        for i in 0..revocations {
            let t0 = started.elapsed();
            let now = portcullis_wire::unix_now();
            // Which sidecars the revocation concerns: the key's namespace's, or all.
            let (outcome, only) = if kind == "api_key" {
                let outcome = store.revoke_api_key(&hashes[i], now).await.map_err(fail)?;
                (outcome, Some(i % namespaces))
            } else {
                let disabled = UserRow {
                    disabled: true,
                    ..users[i].clone()
                };
                (store.upsert_user(&disabled).await.map_err(fail)?, None)
            };
            let concerned = |s: &Seen| only.is_none_or(|n| s.namespace == n);
            wait_all(&seen, &concerned, outcome.revision, Duration::from_secs(30)).await?;
            for slot in seen.iter().filter(|s| concerned(s)) {
                let at = Duration::from_nanos(slot.at_ns.load(Ordering::Acquire));
                latencies_ms.push(at.saturating_sub(t0).as_secs_f64() * 1000.0);
            }
        }
        // Answers still on their way to sidecars that did not need them would be missed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cpu = portcullis_e2e::cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
        let answers = seen.iter().map(|s| s.answers.load(Ordering::Acquire)).sum::<u64>() - answers_before;
        latencies_ms.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            let i = ((latencies_ms.len() as f64 - 1.0) * p).round() as usize;
            latencies_ms.get(i).copied().unwrap_or(f64::NAN)
        };
        println!(
            "RESULT backend={backend} kind={kind} sidecars={sidecars} namespaces={namespaces} revocations={revocations} p50_ms={:.1} p99_ms={:.1} peak_rss_mib={:.1} cpu_s_per_revision={:.4} answered_per_revision={:.1}",
            pct(0.50),
            pct(0.99),
            portcullis_e2e::peak_rss_mib(pid).unwrap_or(f64::NAN),
            cpu / revocations.max(1) as f64,
            answers as f64 / revocations.max(1) as f64,
        );
    }
    Ok(())
}

/// Waits until every sidecar `concerned` holds `revision` (or later).
async fn wait_all(
    seen: &[Arc<Seen>],
    concerned: &dyn Fn(&Seen) -> bool,
    revision: i64,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let behind = seen
            .iter()
            .filter(|s| concerned(s) && s.revision.load(Ordering::Acquire) < revision)
            .count();
        if behind == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(fail(format!("{behind} sidecar(s) never got revision {revision}")));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A simulated sidecar: long polls in a loop, recording each revision's arrival.
async fn sidecar(api: SocketAddr, namespace: String, token: String, seen: Arc<Seen>, started: Instant) {
    let auth = format!("Bearer {token}");
    let mut epoch = String::new();
    let mut view = String::new();
    loop {
        let revision = seen.revision.load(Ordering::Acquire);
        let path = format!("/api/v1/snapshots/{namespace}?revision={revision}&epoch={epoch}&view={view}&wait=30");
        match http(api, "GET", &path, &[("Authorization", auth.as_str())], "").await {
            Ok(answer) if answer.status == 200 => {
                let got: i64 = answer
                    .header("portcullis-revision")
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(revision);
                epoch = answer.header("portcullis-epoch").unwrap_or_default().to_string();
                view = answer.header("portcullis-view").unwrap_or_default().to_string();
                seen.answers.fetch_add(1, Ordering::AcqRel);
                seen.at_ns.store(
                    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
                    Ordering::Release,
                );
                seen.revision.store(got, Ordering::Release);
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn snapshot(args: &HashMap<String, String>) -> Result<()> {
    let users = arg(args, "users", 10_000)?;
    let keys = arg(args, "api-keys", 100_000)?;
    let namespaces = arg(args, "namespaces", 100)?.max(1);
    let dir = tempfile::tempdir().map_err(fail)?;
    let url = format!("sqlite://{}/snapshot.db", dir.path().display());
    let store = Store::open(&DbConfig::from_url(&url).map_err(fail)?)
        .await
        .map_err(fail)?;
    let mut role = RoleRow::new("viewer", ["read"]);
    role.builtin = true;
    store.upsert_role(&role).await.map_err(fail)?;
    seed_bulk(&url, users, keys, namespaces).await?;
    // What a replica does per revision: read the snapshot, index and digest it by
    // namespace; then, per namespace asked, serialize and gzip its view once.
    let started = Instant::now();
    let full = store.read_snapshot(portcullis_wire::unix_now()).await.map_err(fail)?;
    let read_ms = started.elapsed().as_secs_f64() * 1000.0;
    let built = portcullis_operator::api::snapshots::Built::new(full);
    let build_ms = started.elapsed().as_secs_f64() * 1000.0;
    let started = Instant::now();
    let plain = built.body("ns-0", false).await.len();
    let gzip = built.body("ns-0", true).await.len();
    let view_ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "RESULT snapshot users={users} api_keys={keys} namespaces={namespaces} build_ms={build_ms:.0} read_ms={read_ms:.0} view_ms={view_ms:.0} bytes_per_sidecar={plain} gzip_bytes_per_sidecar={gzip}"
    );
    Ok(())
}

/// Users and keys written in one SQLite transaction (the store's one-write-per-row
/// path would take minutes for 100,000 keys, and is not what is measured).
async fn seed_bulk(url: &str, users: usize, keys: usize, namespaces: usize) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(url).await.map_err(fail)?;
    let mut tx = conn.begin().await.map_err(fail)?;
    let now = portcullis_wire::unix_now();
    for u in 0..users {
        let name = format!("user-{u}");
        sqlx::query("INSERT INTO users (name, email, email_key, disabled, preferences, require_two_factor, created_at, updated_at) VALUES (?, ?, ?, 0, '{}', 0, ?, ?)")
            .bind(&name)
            .bind(format!("{name}@example.com"))
            .bind(format!("{name}@example.com"))
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        sqlx::query("INSERT INTO user_roles (user_name, role_name) VALUES (?, 'viewer')")
            .bind(&name)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
    }
    for k in 0..keys {
        sqlx::query("INSERT INTO api_keys (key_hash, namespace, name, prefix, owner_kind, owner_name, scopes, created_at) VALUES (?, ?, ?, 'pck_bulk', 'user', ?, '[\"read\"]', ?)")
            .bind(portcullis_operator::credentials::sha256_hex(format!("bulk-{k}").as_bytes()))
            .bind(format!("ns-{}", k % namespaces))
            .bind(format!("key-{k}"))
            .bind(format!("user-{}", k % users.max(1)))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)?;
    Ok(())
}
