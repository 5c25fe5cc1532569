//! The per-request auth + authz path (`Gate::admit`: normalize, authenticate,
//! authorize, rate-limit check) against a snapshot of 200 rules and 100,000 API keys.
//! Target: ≤ 5 µs per request on a JWT cache hit.
//!
//!     cargo bench -p portcullis-proxy --bench auth_path

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hyper::Method;
use hyper::header::{HeaderMap, HeaderValue};
use portcullis_proxy::metrics::Metrics;
use portcullis_proxy::policy::client_ip::TrustedProxies;
use portcullis_proxy::policy::gate::{Conn, Gate, Trace};
use portcullis_proxy::policy::ratelimit::Limiter;
use portcullis_proxy::policy::snapshot::{Current, Pod};
use portcullis_wire::{
    ApiKeyEntry, JwtIssuer, JwtKey, OwnerKind, PolicyEntry, PolicyRule, RoleEntry, Snapshot, UserEntry,
};

const RULES: usize = 200;
const KEYS: usize = 100_000;
const SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret";

fn snapshot() -> Snapshot {
    let rules: Vec<PolicyRule> = (0..RULES)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "name": format!("svc-{i}"),
                "methods": ["GET", "HEAD"],
                "paths": [format!("/api/v1/svc{i}/items/*"), format!("/api/v1/svc{i}/teams/{{team}}/**")],
                "requireScopes": ["read"],
            }))
            .expect("rule")
        })
        .collect();
    let users = (0..1000)
        .map(|i| UserEntry {
            name: format!("user-{i}"),
            email: format!("user-{i}@example.com"),
            disabled: false,
            roles: vec!["viewer".into()],
            teams: vec![],
        })
        .collect();
    let api_keys = (0..KEYS)
        .map(|i| {
            let key = format!("pck_bench{i:040}");
            ApiKeyEntry {
                key_hash: portcullis_wire::api_key::hash_hex(&key),
                prefix: key[..8].to_string(),
                namespace: "bench".into(),
                owner_kind: OwnerKind::User,
                owner_name: format!("user-{}", i % 1000),
                scopes: vec!["read".into()],
                expires_at: None,
                revoked_at: None,
                roles: vec!["viewer".into()],
                teams: vec![],
                honoured_in: vec![],
            }
        })
        .collect();
    Snapshot {
        revision: 1,
        epoch: String::new(),
        generated_at: 0,
        roles: vec![RoleEntry {
            name: "viewer".into(),
            scopes: vec!["read".into()],
        }],
        users,
        api_keys,
        sources: vec![],
        revoked_sessions: (0..1000).map(|i| format!("revoked-{i}")).collect(),
        policies: vec![PolicyEntry {
            namespace: "bench".into(),
            name: "bench".into(),
            pod_selector: Default::default(),
            rules,
            cors: None,
            path_matching: Default::default(),
            api_versions: None,
            audit: None,
        }],
        jwt_issuers: vec![JwtIssuer {
            issuer: "https://auth.bench".into(),
            audiences: vec!["bench".into()],
            claims: Default::default(),
            claim_names: Default::default(),
            leeway_seconds: 30,
            keys: vec![JwtKey {
                alg: "HS256".into(),
                k: Some(base64_url(SECRET)),
                ..Default::default()
            }],
        }],
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn bench(c: &mut Criterion) {
    let current = Arc::new(Current::default());
    let pod = Pod {
        namespace: "bench".into(),
        labels: Default::default(),
    };
    current.install(&snapshot(), &pod, 65536).expect("snapshot compiles");
    let gate = Gate {
        current: current.clone(),
        pod,
        limiter: Limiter::new(100_000),
        metrics: Arc::new(Metrics::new()),
        trusted: TrustedProxies::default(),
        forwarded_certs: None,
        max_body_bytes: 1 << 20,
        max_staleness: None,
        audit: false,
    };
    let conn = Conn::new("127.0.0.1:40000".parse().expect("addr"), false, None);
    let claims = serde_json::json!({
        "iss": "https://auth.bench", "aud": "bench", "sub": "user-7", "sid": "live",
        "exp": portcullis_wire::unix_now() + 3600,
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .expect("token");
    let mut jwt_headers = HeaderMap::new();
    jwt_headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let mut key_headers = HeaderMap::new();
    key_headers.insert(
        "x-api-key",
        HeaderValue::from_str(&format!("pck_bench{:040}", 77_777)).expect("header"),
    );
    let snapshot = current.load().expect("installed");
    // The last rule: the matcher walks all 200 before it.
    let path = format!("/api/v1/svc{}/items/42?page=3", RULES - 1);
    let admit = |headers: &HeaderMap| {
        let mut trace = Trace::default();
        gate.admit(
            &snapshot,
            &conn,
            &Method::GET,
            black_box(&path),
            black_box(headers),
            &mut trace,
        )
        .expect("admitted")
    };
    admit(&jwt_headers); // warm the JWT cache

    let mut group = c.benchmark_group("auth_path");
    group.bench_function("jwt_hs256_cache_hit_200_rules", |b| b.iter(|| admit(&jwt_headers)));
    group.bench_function("api_key_100k_keys_200_rules", |b| b.iter(|| admit(&key_headers)));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
