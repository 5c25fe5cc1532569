//! Who is calling: a bearer token → the namespace it belongs to.
//!
//! - In a cluster, a projected service-account token (audience `portcullis`) checked
//!   with a TokenReview; the username `system:serviceaccount:<ns>:<sa>` names the
//!   namespace. Answers are cached by the token's SHA-256 until the token expires (at
//!   most [`MAX_CACHE_TTL`]), in a bounded map, so a long poll every 30 s from every pod
//!   costs the API server one review per token and not one per poll.
//! - In local mode, one random token per namespace in `<state>/tokens/<namespace>`
//!   (mode 0600), compared in constant time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The audience sidecars' projected tokens are minted for.
pub const AUDIENCE: &str = "portcullis";
/// Longest a TokenReview answer is trusted without asking again: a bound token dies
/// with its pod, which only a new review notices.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(300);
/// Cached reviews at most; past it expired entries go, then everything.
const CACHE_CAPACITY: usize = 20_000;
/// Longest bearer token read.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a caller was refused; `reason()` labels the auth-failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A header that is not a usable bearer token.
    Malformed,
    /// The token is not valid (unknown, expired, wrong audience).
    Rejected,
    /// Valid, but not a service account's.
    NotServiceAccount,
    /// The token could not be checked (the Kubernetes API did not answer).
    Unavailable,
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Rejected => "rejected",
            AuthFailure::NotServiceAccount => "not_service_account",
            AuthFailure::Unavailable => "review_unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            AuthFailure::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => "a bearer token is required",
            AuthFailure::Malformed => "the Authorization header is not a bearer token",
            AuthFailure::Rejected => "the token is not valid for this control plane",
            AuthFailure::NotServiceAccount => "the token does not belong to a service account",
            AuthFailure::Unavailable => "the token cannot be checked right now",
        }
    }
}

/// How callers are authenticated.
pub enum Authenticator {
    TokenReview(TokenReviewer),
    Files(std::sync::Arc<FileTokens>),
}

impl Authenticator {
    /// The namespace the request's bearer token belongs to.
    pub async fn namespace(&self, headers: &HeaderMap) -> Result<String, AuthFailure> {
        let token = bearer(headers)?;
        match self {
            Authenticator::TokenReview(reviewer) => reviewer.namespace(token).await,
            Authenticator::Files(files) => files.namespace(token),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, AuthFailure> {
    let value = headers.get(header::AUTHORIZATION).ok_or(AuthFailure::Missing)?;
    let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(AuthFailure::Malformed);
    }
    Ok(token)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// TokenReview with a cache.
pub struct TokenReviewer {
    client: kube::Client,
    cache: Mutex<HashMap<[u8; 32], (String, Instant)>>,
}

impl TokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        TokenReviewer {
            client,
            cache: Mutex::default(),
        }
    }

    async fn namespace(&self, token: &str) -> Result<String, AuthFailure> {
        let key = digest(token);
        let now = Instant::now();
        if let Some((namespace, until)) = self.lock().get(&key)
            && *until > now
        {
            return Ok(namespace.clone());
        }
        let review = TokenReview {
            metadata: Default::default(),
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            status: None,
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &review).await.map_err(|e| {
            tracing::warn!(error = %e, "TokenReview failed");
            AuthFailure::Unavailable
        })?;
        let status = answer.status.ok_or(AuthFailure::Unavailable)?;
        if status.authenticated != Some(true) {
            return Err(AuthFailure::Rejected);
        }
        // The API server answers with the audiences the token is valid for among those
        // asked; an answer without ours is a token for something else.
        if let Some(audiences) = &status.audiences
            && !audiences.iter().any(|a| a == AUDIENCE)
        {
            return Err(AuthFailure::Rejected);
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        let namespace = service_account_namespace(&username).ok_or(AuthFailure::NotServiceAccount)?;
        let ttl = token_lifetime(token).map_or(Duration::from_secs(60), |left| left.min(MAX_CACHE_TTL));
        let mut cache = self.lock();
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(key, (namespace.to_string(), now + ttl));
        Ok(namespace.to_string())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (String, Instant)>> {
        match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// `system:serviceaccount:<namespace>:<name>` → namespace.
pub fn service_account_namespace(username: &str) -> Option<&str> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (is_namespace_name(namespace) && !name.is_empty()).then_some(namespace)
}

/// How long until the JWT's `exp`, read without verifying (the TokenReview did): only
/// used to bound how long the review's answer is cached.
fn token_lifetime(token: &str) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_i64()?;
    let left = exp.checked_sub(portcullis_wire::unix_now())?;
    u64::try_from(left).ok().map(Duration::from_secs)
}

/// A Kubernetes namespace name (DNS label): what may name a token file.
pub fn is_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Local mode's per-namespace token files.
pub struct FileTokens {
    dir: PathBuf,
    /// (namespace, SHA-256 of its token), as last read from the directory.
    known: RwLock<Vec<(String, [u8; 32])>>,
    /// When the directory was last re-read after a miss (at most once a second).
    last_miss_reload: Mutex<Option<Instant>>,
}

impl FileTokens {
    /// Tokens of `dir` (created if missing).
    pub fn open(dir: &Path) -> std::io::Result<FileTokens> {
        std::fs::create_dir_all(dir)?;
        let tokens = FileTokens {
            dir: dir.to_path_buf(),
            known: RwLock::default(),
            last_miss_reload: Mutex::default(),
        };
        tokens.reload();
        Ok(tokens)
    }

    /// Where the token of `namespace` is.
    pub fn path(&self, namespace: &str) -> PathBuf {
        self.dir.join(namespace)
    }

    /// Makes a token file (random, mode 0600) for each namespace that has none.
    pub fn ensure<'a>(&self, namespaces: impl IntoIterator<Item = &'a str>) -> std::io::Result<()> {
        let mut created = false;
        for namespace in namespaces {
            if !is_namespace_name(namespace) || self.path(namespace).exists() {
                continue;
            }
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            write_new_private(&self.path(namespace), token.as_bytes())?;
            created = true;
        }
        if created {
            self.reload();
        }
        Ok(())
    }

    fn reload(&self) {
        let mut known = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.filter_map(Result::ok) {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !is_namespace_name(&name) {
                    continue;
                }
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    let token = text.trim();
                    if !token.is_empty() {
                        known.push((name, digest(token)));
                    }
                }
            }
        }
        match self.known.write() {
            Ok(mut k) => *k = known,
            Err(poisoned) => *poisoned.into_inner() = known,
        }
    }

    fn namespace(&self, token: &str) -> Result<String, AuthFailure> {
        if let Some(namespace) = self.lookup(token) {
            return Ok(namespace);
        }
        // A file written by hand since: re-read, at most once a second.
        let due = {
            let mut last = match self.last_miss_reload.lock() {
                Ok(l) => l,
                Err(poisoned) => poisoned.into_inner(),
            };
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            self.reload();
            if let Some(namespace) = self.lookup(token) {
                return Ok(namespace);
            }
        }
        Err(AuthFailure::Rejected)
    }

    /// Compares the token's digest with every namespace's, in constant time, without
    /// stopping at the first match (timing says nothing about which matched, or how much).
    fn lookup(&self, token: &str) -> Option<String> {
        let wanted = digest(token);
        let known = match self.known.read() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut found = None;
        for (namespace, digest) in known.iter() {
            if bool::from(digest.ct_eq(&wanted)) {
                found = Some(namespace.clone());
            }
        }
        found
    }
}

/// Creates `path` (never overwriting), readable by its owner only.
fn write_new_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn service_account_usernames_name_their_namespace() {
        assert_eq!(
            service_account_namespace("system:serviceaccount:shop:default"),
            Some("shop")
        );
        assert_eq!(service_account_namespace("system:serviceaccount:shop:"), None);
        assert_eq!(service_account_namespace("system:serviceaccount:../x:sa"), None);
        assert_eq!(service_account_namespace("alice"), None);
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), Err(AuthFailure::Missing));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), Err(AuthFailure::Malformed));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer  "));
        assert_eq!(bearer(&headers), Err(AuthFailure::Malformed));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer tok"));
        assert_eq!(bearer(&headers), Ok("tok"));
    }

    #[test]
    fn token_files_are_private_random_and_map_to_their_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = FileTokens::open(dir.path()).unwrap();
        tokens.ensure(["shop", "billing", "../etc"]).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no file for a name that is no namespace"
        );
        let shop = std::fs::read_to_string(tokens.path("shop")).unwrap();
        let billing = std::fs::read_to_string(tokens.path("billing")).unwrap();
        assert_ne!(shop, billing);
        assert!(shop.len() >= 43);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(tokens.path("shop")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(tokens.namespace(&shop).unwrap(), "shop");
        assert_eq!(tokens.namespace(&billing).unwrap(), "billing");
        assert_eq!(tokens.namespace("guess"), Err(AuthFailure::Rejected));
        // Existing files are kept across restarts.
        tokens.ensure(["shop"]).unwrap();
        assert_eq!(std::fs::read_to_string(tokens.path("shop")).unwrap(), shop);
    }
}
