//! External issuers' keys: fetched over HTTPS (webpki-verified against the system's
//! roots, or a CA file given with `ISSUER_CA_FILE`), from the `jwksUri` or through OIDC
//! discovery, kept fresh as the JWKS answer's `Cache-Control: max-age` says, refetched
//! when a sidecar reports an unknown `kid` (at most once per [`KID_REFETCH_EVERY`] per
//! issuer). A failed fetch keeps the last good keys: a provider's outage must not lock
//! every user out.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_wire::JwtKey;
use portcullis_wire::api::UnknownKid;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

use crate::store::{IssuerKeys, IssuerRow, Store, StoreError};

/// Longest a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS or discovery document read.
const MAX_DOCUMENT: usize = 1 << 20;
/// Keys are refetched after this when the answer says nothing of caching.
const DEFAULT_MAX_AGE: u64 = 300;
/// Bounds of the `max-age` honoured: not more often than this…
const MIN_MAX_AGE: u64 = 5;
/// …and at least once a day.
const MAX_MAX_AGE: u64 = 86_400;
/// An unknown-`kid` report refetches an issuer at most this often.
pub const KID_REFETCH_EVERY: Duration = Duration::from_secs(30);
/// A failed fetch is retried after this.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Why keys could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("issuer CA file: {0}")]
    Ca(String),
    #[error("{0}: only https://, or http:// to a loopback address")]
    InsecureUrl(String),
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: not a {what} document: {reason}")]
    Document {
        url: String,
        what: &'static str,
        reason: String,
    },
    #[error("{url}: no key of an allowed algorithm ({allowed})")]
    NoKeys { url: String, allowed: String },
}

/// Fetches JWKS documents.
pub struct Fetcher {
    client: Result<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>, String>,
}

impl Fetcher {
    /// A fetcher trusting `ca_file` (PEM), or the system's roots without one. A CA file
    /// that cannot be read makes every fetch fail with the reason (fail closed, and the
    /// Issuer's status says why).
    pub fn new(ca_file: Option<&Path>) -> Fetcher {
        Fetcher {
            client: client(ca_file),
        }
    }

    /// The fetcher `ISSUER_CA_FILE` asks for.
    pub fn from_env() -> Fetcher {
        let ca = std::env::var_os("ISSUER_CA_FILE").filter(|v| !v.is_empty());
        Fetcher::new(ca.as_deref().map(Path::new))
    }

    /// Fetches `issuer`'s keys now.
    pub async fn fetch(&self, issuer: &IssuerRow) -> Result<IssuerKeys, FetchError> {
        let client = self.client.as_ref().map_err(|e| FetchError::Ca(e.clone()))?;
        let jwks_uri = match &issuer.jwks_uri {
            Some(uri) => uri.clone(),
            None => discover(client, &issuer.issuer).await?,
        };
        let (document, max_age) = get_json(client, &jwks_uri, "JWKS").await?;
        let keys = jwk_set(&document, &issuer.algorithms);
        if keys.is_empty() {
            return Err(FetchError::NoKeys {
                url: jwks_uri,
                allowed: issuer.algorithms.join(", "),
            });
        }
        let now = portcullis_wire::unix_now();
        let max_age = max_age.unwrap_or(DEFAULT_MAX_AGE).clamp(MIN_MAX_AGE, MAX_MAX_AGE);
        Ok(IssuerKeys {
            keys,
            fetched_at: Some(now),
            expires_at: Some(now.saturating_add(i64::try_from(max_age).unwrap_or(i64::MAX))),
        })
    }
}

fn client(ca_file: Option<&Path>) -> Result<Client<HttpsConnector<HttpConnector>, Empty<Bytes>>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))? {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| format!("system CA roots: {e}"))?,
    };
    // http:// is let through the connector for loopback only: `allowed` checks every URL first.
    let connector = builder.https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// `https://…`, or `http://` to a loopback address.
pub fn allowed(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    match parsed.scheme() {
        "https" => parsed.host().is_some(),
        "http" => match parsed.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

/// OIDC discovery: the `jwks_uri` of `{issuer}/.well-known/openid-configuration`,
/// whose `issuer` must be the one asked for (OpenID Connect Discovery §4.3).
async fn discover(
    client: &Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    issuer: &str,
) -> Result<String, FetchError> {
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let (document, _) = get_json(client, &url, "discovery").await?;
    let bad = |reason: &str| FetchError::Document {
        url: url.clone(),
        what: "discovery",
        reason: reason.to_string(),
    };
    if document.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(bad("its issuer is not the one asked for"));
    }
    let jwks_uri = document
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no jwks_uri"))?;
    Ok(jwks_uri.to_string())
}

/// GETs a JSON document; also returns the answer's `Cache-Control: max-age`.
async fn get_json(
    client: &Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    url: &str,
    what: &'static str,
) -> Result<(Value, Option<u64>), FetchError> {
    if !allowed(url) {
        return Err(FetchError::InsecureUrl(url.to_string()));
    }
    let http_error = |reason: String| FetchError::Http {
        url: url.to_string(),
        reason,
    };
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| http_error(e.to_string()))?;
    let request = hyper::Request::get(uri)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| http_error(e.to_string()))?;
    let response = tokio::time::timeout(FETCH_TIMEOUT, client.request(request))
        .await
        .map_err(|_| http_error("timed out".into()))?
        .map_err(|e| http_error(e.to_string()))?;
    if !response.status().is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: response.status().as_u16(),
        });
    }
    let max_age = response
        .headers()
        .get(hyper::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age);
    let body = tokio::time::timeout(
        FETCH_TIMEOUT,
        Limited::new(response.into_body(), MAX_DOCUMENT).collect(),
    )
    .await
    .map_err(|_| http_error("timed out reading".into()))?
    .map_err(|e| http_error(e.to_string()))?
    .to_bytes();
    let document = serde_json::from_slice(&body).map_err(|e| FetchError::Document {
        url: url.to_string(),
        what,
        reason: e.to_string(),
    })?;
    Ok((document, max_age))
}

/// `max-age` of a `Cache-Control` value; `no-store`/`no-cache` count as 0.
pub fn max_age(cache_control: &str) -> Option<u64> {
    let mut age = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(0);
        }
        if let Some(value) = lower.strip_prefix("max-age=") {
            age = value.trim_matches('"').parse().ok();
        }
    }
    age
}

/// The signing keys of a JWKS usable with `allowed` algorithms. Symmetric (`oct`) and
/// encryption keys are skipped. A key without `alg` gets the first allowed algorithm of
/// its type (RSA: RS*/PS*; EC: by curve; OKP Ed25519: EdDSA).
pub fn jwk_set(document: &Value, allowed: &[String]) -> Vec<JwtKey> {
    let Some(keys) = document.get("keys").and_then(Value::as_array) else {
        return Vec::new();
    };
    fn text(jwk: &Value, field: &str) -> Option<String> {
        jwk.get(field).and_then(Value::as_str).map(str::to_string)
    }
    keys.iter()
        .filter(|jwk| text(jwk, "use").is_none_or(|u| u == "sig"))
        .filter_map(|jwk| {
            let kty = text(jwk, "kty")?;
            let crv = text(jwk, "crv");
            let fits = |alg: &str| match kty.as_str() {
                "RSA" => alg.starts_with("RS") || alg.starts_with("PS"),
                "EC" => match crv.as_deref() {
                    Some("P-256") => alg == "ES256",
                    Some("P-384") => alg == "ES384",
                    _ => false,
                },
                "OKP" => crv.as_deref() == Some("Ed25519") && alg == "EdDSA",
                _ => false,
            };
            let alg = match text(jwk, "alg") {
                Some(alg) => (fits(&alg) && allowed.contains(&alg)).then_some(alg)?,
                None => allowed.iter().find(|a| fits(a))?.clone(),
            };
            Some(JwtKey {
                kid: text(jwk, "kid"),
                alg,
                pem: None,
                n: text(jwk, "n"),
                e: text(jwk, "e"),
                crv,
                x: text(jwk, "x"),
                y: text(jwk, "y"),
                k: None,
            })
        })
        .collect()
}

/// Fetches `name`'s keys and stores them; a failure leaves the held keys in place.
pub async fn refresh(store: &Store, fetcher: &Fetcher, name: &str) -> Result<Option<IssuerKeys>, RefreshError> {
    let Some(row) = store.get_issuer(name).await? else {
        return Ok(None);
    };
    let keys = fetcher.fetch(&row).await?;
    store.store_issuer_keys(name, &keys).await?;
    Ok(Some(keys))
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Keeps every issuer's keys fresh (each when its `max-age` runs out) and refetches an
/// issuer a sidecar reported an unknown `kid` of, rate limited. Runs beside the API
/// server on every replica: the writes compare before they write, so replicas doing the
/// same refresh bump the revision once at most.
pub async fn refresher(store: Store, fetcher: Arc<Fetcher>, mut reports: tokio::sync::mpsc::Receiver<UnknownKid>) {
    // Per issuer name: when a report may refetch next; when a failed one may retry.
    let mut kid_allowed_at: HashMap<String, Instant> = HashMap::new();
    let mut retry_at: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let names: Vec<String> = tokio::select! {
            report = reports.recv() => {
                let Some(report) = report else { return };
                let now = Instant::now();
                let matching = match store.issuer_names_for(&report.issuer).await {
                    Ok(names) => names,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot look up the reported issuer");
                        continue;
                    }
                };
                let mut due = Vec::new();
                for name in matching {
                    if kid_allowed_at.get(&name).is_none_or(|at| *at <= now) {
                        kid_allowed_at.insert(name.clone(), now + KID_REFETCH_EVERY);
                        tracing::info!(issuer = %report.issuer, kid = %report.kid, "unknown key id reported; refetching the issuer's keys");
                        due.push(name);
                    }
                }
                due
            }
            _ = tick.tick() => {
                let now = Instant::now();
                match store.issuers_due(portcullis_wire::unix_now()).await {
                    Ok(names) => names.into_iter().filter(|n| retry_at.get(n).is_none_or(|at| *at <= now)).collect(),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot list issuers due for a refresh");
                        continue;
                    }
                }
            }
        };
        for name in names {
            match refresh(&store, &fetcher, &name).await {
                Ok(_) => {
                    retry_at.remove(&name);
                }
                Err(e) => {
                    tracing::warn!(issuer = %name, error = %e, "cannot refresh the issuer's keys; keeping the last good ones");
                    retry_at.insert(name, Instant::now() + RETRY_AFTER_FAILURE);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cache_control_max_age_is_read() {
        assert_eq!(max_age("public, max-age=3600"), Some(3600));
        assert_eq!(max_age("no-store"), Some(0));
        assert_eq!(max_age("public"), None);
    }

    #[test]
    fn only_signing_keys_of_allowed_algorithms_are_kept() {
        let jwks = json!({"keys": [
            {"kty": "RSA", "kid": "r1", "alg": "RS256", "n": "abc", "e": "AQAB"},
            {"kty": "RSA", "kid": "r2", "n": "abc", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "abc", "e": "AQAB"},
            {"kty": "oct", "kid": "h", "alg": "HS256", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "e1", "crv": "P-256", "x": "x", "y": "y"},
            {"kty": "RSA", "kid": "r3", "alg": "RS512", "n": "abc", "e": "AQAB"}
        ]});
        let keys = jwk_set(&jwks, &["RS256".to_string(), "ES256".to_string()]);
        let got: Vec<(&str, &str)> = keys
            .iter()
            .map(|k| (k.kid.as_deref().unwrap(), k.alg.as_str()))
            .collect();
        assert_eq!(got, [("r1", "RS256"), ("r2", "RS256"), ("e1", "ES256")]);
        assert!(keys.iter().all(|k| k.k.is_none()));
    }

    #[test]
    fn clear_text_is_for_loopback_only() {
        assert!(allowed("https://idp.example.com/keys"));
        assert!(allowed("http://127.0.0.1:8080/jwks"));
        assert!(allowed("http://localhost/jwks"));
        assert!(!allowed("http://idp.example.com/jwks"));
        assert!(!allowed("ftp://idp.example.com/jwks"));
    }
}
