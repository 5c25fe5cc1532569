//! Signing keys: Ed25519 (EdDSA) key pairs made with ring, their JWKs, sealing with the
//! key-encryption key, the in-memory key ring, and compact JWS signing and verification.
//!
//! The database holds every key (public JWK in clear, private key sealed with
//! AES-256-GCM under a key-encryption key, the kid as associated data), so that every
//! replica signs with the same key and a rotation is one transaction that also bumps
//! the snapshot revision. The key-encryption key lives in a Secret (a 0600 file in
//! local mode): a copy of the database alone cannot mint tokens.

use std::io::Write;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::SigningKeyRow;

/// The one algorithm our issuer signs with.
pub const ALG: &str = "EdDSA";
/// Data key of the Secret (and content of the file) holding the key-encryption key.
pub const KEK_SECRET_KEY: &str = "key-encryption-key";

/// What can go wrong with keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key-encryption key: {0}")]
    Kek(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// ring refused (randomness unavailable, a sealed key that does not open).
    #[error("{0}")]
    Crypto(&'static str),
    #[error("no signing key is active")]
    NoActiveKey,
}

/// Where the key-encryption key is kept.
#[derive(Clone)]
pub enum KekSource {
    /// A Secret (cluster mode): created on first start, read by every replica.
    Secret {
        client: kube::Client,
        namespace: String,
        name: String,
    },
    /// A file written with mode 0600 (local mode).
    File(PathBuf),
    /// Given directly (tests, benchmarks).
    Fixed([u8; 32]),
}

impl std::fmt::Debug for KekSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KekSource::Secret { namespace, name, .. } => write!(f, "Secret {namespace}/{name}"),
            KekSource::File(path) => write!(f, "file {}", path.display()),
            KekSource::Fixed(_) => f.write_str("fixed key"),
        }
    }
}

/// The key-encryption key (AES-256).
pub struct Kek(LessSafeKey);

impl Kek {
    /// Reads the key-encryption key, making it on first start (a concurrent first start
    /// of another replica is resolved by the API server: the second create fails with
    /// 409 and reads what the first wrote).
    pub async fn load(source: &KekSource) -> Result<Kek, KeyError> {
        let raw = match source {
            KekSource::Fixed(raw) => *raw,
            KekSource::Secret {
                client,
                namespace,
                name,
            } => {
                let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
                match secrets.get_opt(name).await? {
                    Some(secret) => kek_of_secret(&secret)?,
                    None => {
                        let fresh = random_kek()?;
                        match secrets
                            .create(&PostParams::default(), &kek_secret(namespace, name, &fresh))
                            .await
                        {
                            Ok(_) => {
                                tracing::info!(secret = %format!("{namespace}/{name}"), "created the signing keys' key-encryption key");
                                fresh
                            }
                            Err(kube::Error::Api(status)) if status.code == 409 => match secrets.get_opt(name).await? {
                                Some(secret) => kek_of_secret(&secret)?,
                                None => return Err(KeyError::Kek(format!("Secret {namespace}/{name} vanished"))),
                            },
                            Err(other) => return Err(other.into()),
                        }
                    }
                }
            }
            KekSource::File(path) => read_or_create_kek_file(path)?,
        };
        let key = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| KeyError::Crypto("AES-256-GCM key refused"))?;
        Ok(Kek(LessSafeKey::new(key)))
    }

    fn seal(&self, kid: &str, plain: &[u8]) -> Result<String, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KeyError::Crypto("no randomness"))?;
        let mut buf = plain.to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(kid.as_bytes()), &mut buf)
            .map_err(|_| KeyError::Crypto("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(STANDARD.encode(out))
    }

    fn open(&self, kid: &str, sealed: &str) -> Result<Vec<u8>, KeyError> {
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| KeyError::Crypto("sealed key is not base64"))?;
        if bytes.len() < NONCE_LEN {
            return Err(KeyError::Crypto("sealed key too short"));
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KeyError::Crypto("bad nonce"))?;
        let mut buf = rest.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut buf)
            .map_err(|_| KeyError::Crypto("a signing key does not open with this key-encryption key"))?;
        Ok(plain.to_vec())
    }
}

fn random_kek() -> Result<[u8; 32], KeyError> {
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| KeyError::Crypto("no randomness"))?;
    Ok(raw)
}

fn decode_kek(text: &[u8]) -> Result<[u8; 32], KeyError> {
    let text = std::str::from_utf8(text).map_err(|_| KeyError::Kek("not UTF-8".into()))?;
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| KeyError::Kek("not base64".into()))?;
    bytes.try_into().map_err(|_| KeyError::Kek("not 32 bytes".into()))
}

fn kek_of_secret(secret: &Secret) -> Result<[u8; 32], KeyError> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEK_SECRET_KEY))
        .ok_or_else(|| KeyError::Kek(format!("Secret has no key {KEK_SECRET_KEY:?}")))?;
    decode_kek(&bytes.0)
}

fn kek_secret(namespace: &str, name: &str, raw: &[u8; 32]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    crate::controller::MANAGER.to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        // Base64 text inside the (base64 on the wire) Secret, as in the local file.
        data: Some(
            [(
                KEK_SECRET_KEY.to_string(),
                ByteString(STANDARD.encode(raw).into_bytes()),
            )]
            .into(),
        ),
        ..Secret::default()
    }
}

fn read_or_create_kek_file(path: &PathBuf) -> Result<[u8; 32], KeyError> {
    let file_error = |source| KeyError::File {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => return decode_kek(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_error(e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(file_error)?;
    }
    let fresh = random_kek()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(STANDARD.encode(fresh).as_bytes()).map_err(file_error)?;
            file.sync_all().map_err(file_error)?;
            tracing::info!(path = %path.display(), "created the signing keys' key-encryption key (mode 0600)");
            Ok(fresh)
        }
        // Another process made it between our read and our create.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            decode_kek(&std::fs::read(path).map_err(file_error)?)
        }
        Err(e) => Err(file_error(e)),
    }
}

/// The public half of a key, as JWKS and snapshots publish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PublicJwk {
    pub kty: String,
    pub crv: String,
    /// The 32-byte public key, base64url.
    pub x: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

/// A freshly generated key, ready for the store.
pub fn generate(kek: &Kek, issuer: &str, now: i64, active_from: i64) -> Result<SigningKeyRow, KeyError> {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Crypto("key generation failed"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Crypto("generated key unreadable"))?;
    let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    let kid = thumbprint(&x);
    let jwk = PublicJwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x,
        kid: kid.clone(),
        alg: ALG.into(),
        use_: "sig".into(),
    };
    let public_jwk = serde_json::to_string(&jwk).map_err(|_| KeyError::Crypto("JWK encoding failed"))?;
    Ok(SigningKeyRow {
        private_key: kek.seal(&kid, pkcs8.as_ref())?,
        kid,
        issuer: issuer.to_string(),
        alg: ALG.into(),
        public_jwk,
        created_at: now,
        active_from,
        retire_after: None,
    })
}

/// RFC 7638 JWK thumbprint of an Ed25519 key: the key id, stable and derived from the key.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// One key of the ring.
struct RingKey {
    kid: String,
    issuer: String,
    active_from: i64,
    retire_after: Option<i64>,
    public: Vec<u8>,
    jwk: PublicJwk,
    /// Only for keys that can still sign (the others are never opened).
    pair: Option<Ed25519KeyPair>,
}

/// The keys as last read from the store.
#[derive(Default)]
pub struct KeyRing {
    keys: Vec<RingKey>,
}

impl KeyRing {
    /// Builds the ring from the store's rows. Keys already retired at `now` are left
    /// out; the private halves of those that could sign are opened.
    pub fn from_rows(rows: &[SigningKeyRow], kek: &Kek, now: i64) -> Result<KeyRing, KeyError> {
        let mut keys = Vec::new();
        for row in rows.iter().filter(|r| r.retire_after.is_none_or(|t| t > now)) {
            let jwk: PublicJwk =
                serde_json::from_str(&row.public_jwk).map_err(|_| KeyError::Crypto("stored JWK unreadable"))?;
            let public = URL_SAFE_NO_PAD
                .decode(&jwk.x)
                .map_err(|_| KeyError::Crypto("stored JWK x unreadable"))?;
            let pair = if row.alg == ALG {
                let pkcs8 = kek.open(&row.kid, &row.private_key)?;
                Some(Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| KeyError::Crypto("stored key unreadable"))?)
            } else {
                None
            };
            keys.push(RingKey {
                kid: row.kid.clone(),
                issuer: row.issuer.clone(),
                active_from: row.active_from,
                retire_after: row.retire_after,
                public,
                jwk,
                pair,
            });
        }
        keys.sort_by_key(|k| k.active_from);
        Ok(KeyRing { keys })
    }

    /// The key that signs for `issuer` at `now`: the latest already active.
    fn signer(&self, issuer: &str, now: i64) -> Option<&RingKey> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.issuer == issuer && k.active_from <= now && k.pair.is_some())
    }

    /// Whether a key for `issuer` signs at `now` or will (a rotation already published).
    pub fn has_key_for(&self, issuer: &str) -> bool {
        self.keys.iter().any(|k| k.issuer == issuer && k.retire_after.is_none())
    }

    /// When the newest key was made active (for the rotation schedule).
    pub fn newest_active_from(&self) -> Option<i64> {
        self.keys.iter().map(|k| k.active_from).max()
    }

    /// The published keys at `now` (JWKS).
    pub fn jwks(&self, now: i64) -> Vec<PublicJwk> {
        self.keys
            .iter()
            .filter(|k| k.retire_after.is_none_or(|t| t > now))
            .map(|k| k.jwk.clone())
            .collect()
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid == kid)
    }

    /// Signs `claims` as a compact JWS with the active key for `issuer`.
    pub fn sign<C: Serialize>(&self, issuer: &str, now: i64, claims: &C) -> Result<(String, String), KeyError> {
        let key = self.signer(issuer, now).ok_or(KeyError::NoActiveKey)?;
        let pair = key.pair.as_ref().ok_or(KeyError::NoActiveKey)?;
        let header = serde_json::json!({"alg": ALG, "typ": "JWT", "kid": key.kid});
        let header = URL_SAFE_NO_PAD.encode(header.to_string());
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).map_err(|_| KeyError::Crypto("claims encoding"))?);
        let signing_input = format!("{header}.{payload}");
        let signature = URL_SAFE_NO_PAD.encode(pair.sign(signing_input.as_bytes()).as_ref());
        Ok((format!("{signing_input}.{signature}"), key.kid.clone()))
    }

    /// Verifies a compact JWS made by one of our published keys at `now`; returns the
    /// payload bytes and the key's issuer. Claims are the caller's to check.
    pub fn verify(&self, token: &str, now: i64) -> Option<(Vec<u8>, String)> {
        let mut parts = token.split('.');
        let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || token.len() > 8 * 1024 {
            return None;
        }
        #[derive(Deserialize)]
        struct Header {
            alg: String,
            kid: Option<String>,
            crit: Option<serde_json::Value>,
        }
        let h: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if h.alg != ALG || h.crit.is_some() {
            return None;
        }
        let kid = h.kid?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid && k.retire_after.is_none_or(|t| t > now))?;
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let signing_input = &token[..header.len() + 1 + payload.len()];
        UnparsedPublicKey::new(&ED25519, &key.public)
            .verify(signing_input.as_bytes(), &signature)
            .ok()?;
        Some((URL_SAFE_NO_PAD.decode(payload).ok()?, key.issuer.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_seal_sign_verify_and_refuse_tampering() {
        let kek = Kek::load(&KekSource::Fixed([7; 32])).await.unwrap();
        let row = generate(&kek, "https://iss", 100, 100).unwrap();
        assert!(!row.private_key.contains("PRIVATE"), "sealed, not PEM");
        assert!(
            !format!("{row:?}").contains(&row.private_key),
            "Debug hides the sealed key"
        );
        let ring = KeyRing::from_rows(std::slice::from_ref(&row), &kek, 100).unwrap();
        let (token, kid) = ring
            .sign("https://iss", 100, &serde_json::json!({"sub": "alice"}))
            .unwrap();
        assert_eq!(kid, row.kid);
        let (payload, issuer) = ring.verify(&token, 100).unwrap();
        assert_eq!(issuer, "https://iss");
        assert_eq!(payload, br#"{"sub":"alice"}"#);
        let mut forged = token.clone();
        forged.replace_range(forged.len() - 3.., "AAA");
        assert!(ring.verify(&forged, 100).is_none());
        // A key sealed under another key-encryption key does not open.
        let other = Kek::load(&KekSource::Fixed([8; 32])).await.unwrap();
        assert!(KeyRing::from_rows(&[row], &other, 100).is_err());
    }

    #[tokio::test]
    async fn the_kek_file_is_made_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/kek");
        let a = read_or_create_kek_file(&path).unwrap();
        let b = read_or_create_kek_file(&path).unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
