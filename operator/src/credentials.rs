//! Secrets the operator makes and the one-way forms it stores: API keys (SHA-256),
//! passwords (argon2id), and digests of Secret content.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use portcullis_wire::api_key::PREFIX as API_KEY_PREFIX;

/// Characters of the key shown in status, logs and UIs (prefix included).
const DISPLAY_LEN: usize = API_KEY_PREFIX.len() + 8;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated API key. `key` goes into a Secret once and nowhere else.
pub struct GeneratedKey {
    pub key: String,
    pub hash: String,
    pub prefix: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Random characters of an API key after its prefix: 43 base62 characters carry
/// 43 × log2(62) ≈ 256.03 bits.
pub const API_KEY_CHARS: usize = 43;

/// Characters of a generated password: 24 base62 characters, ~142.9 bits.
pub const PASSWORD_CHARS: usize = 24;

/// `pck_` + exactly [`API_KEY_CHARS`] random base62 characters (256 bits).
pub fn generate_api_key() -> GeneratedKey {
    let key = format!("{API_KEY_PREFIX}{}", random_base62(API_KEY_CHARS));
    GeneratedKey {
        hash: hash_api_key(&key),
        prefix: display_prefix(&key),
        key,
    }
}

/// What the database and snapshots hold for a key (see [`portcullis_wire::api_key`]).
pub fn hash_api_key(key: &str) -> String {
    portcullis_wire::api_key::hash_hex(key)
}

/// The part of a key that is safe to show.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(DISPLAY_LEN).collect()
}

/// Hex SHA-256, used to notice that a Secret's content changed without keeping it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    portcullis_wire::api_key::to_hex(&Sha256::digest(bytes))
}

/// A random password for the bootstrap admin: exactly [`PASSWORD_CHARS`] base62
/// characters (~143 bits).
pub fn random_password() -> String {
    random_base62(PASSWORD_CHARS)
}

/// argon2id with OWASP's recommended parameters (19 MiB, 2 iterations, 1 lane).
/// CPU-heavy on purpose: call it from `spawn_blocking`.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let salt = SaltString::encode_b64(&raw)?;
    Ok(hasher().hash_password(password.as_bytes(), &salt)?.to_string())
}

/// argon2id with the given parameters (the token service's settings).
pub fn hash_password_with(password: &str, params: &Params) -> Result<String, argon2::password_hash::Error> {
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let salt = SaltString::encode_b64(&raw)?;
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    Ok(hasher.hash_password(password.as_bytes(), &salt)?.to_string())
}

/// The parameters [`hash_password`] uses (OWASP's: 19 MiB, 2 iterations, 1 lane).
pub fn default_hash_params() -> Params {
    Params::new(19 * 1024, 2, 1, None).unwrap_or_default()
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error(transparent)]
    Argon2(#[from] argon2::password_hash::Error),
    /// The blocking thread panicked or the runtime is shutting down.
    #[error(transparent)]
    Thread(#[from] tokio::task::JoinError),
}

/// [`hash_password`] on a blocking thread, so that async callers never stall the
/// runtime for the tens of milliseconds argon2 takes on purpose.
pub async fn hash_password_blocking(password: String) -> Result<String, HashError> {
    Ok(tokio::task::spawn_blocking(move || hash_password(&password)).await??)
}

/// Checks a password against a stored argon2 hash (constant time inside argon2).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| hasher().verify_password(password.as_bytes(), &parsed).is_ok())
}

fn hasher() -> Argon2<'static> {
    // The parameters are constants known to be valid.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// `len` characters drawn uniformly and independently from the 62 of [`BASE62`].
///
/// Each character comes from one random byte, rejected when it is 248 or more (248 =
/// 4 × 62) so that every character is equally likely. Encoding a random number in base62
/// instead would make the length vary: a number with leading zero digits comes out short
/// (about one 32-byte key in 60 had fewer than 43 characters).
fn random_base62(len: usize) -> String {
    const LIMIT: u8 = 248;
    let mut rng = rand::rng();
    let mut out = String::with_capacity(len);
    let mut pool = [0u8; 64];
    while out.len() < len {
        rng.fill_bytes(&mut pool);
        for &byte in pool.iter().filter(|&&b| b < LIMIT) {
            if out.len() == len {
                break;
            }
            out.push(char::from(BASE62[usize::from(byte % 62)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_prefixed_long_random_and_hashed() {
        let a = generate_api_key();
        let b = generate_api_key();
        assert!(a.key.starts_with(API_KEY_PREFIX));
        assert!(a.key.len() >= API_KEY_PREFIX.len() + 40, "{}", a.key.len());
        assert!(a.key[API_KEY_PREFIX.len()..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.key, b.key);
        assert_eq!(a.hash, hash_api_key(&a.key));
        assert_eq!(a.hash.len(), 64);
        assert!(a.key.starts_with(&a.prefix) && a.prefix.len() == 12);
        assert!(!format!("{a:?}").contains(&a.key), "Debug never shows the key");
    }

    #[test]
    fn generated_secrets_have_exactly_the_promised_length_and_alphabet() {
        // 20,000 samples: a key short by a leading zero digit (about 1 in 60 before) or a
        // password of 23 characters (about 1 in 128) would show up many times over.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20_000 {
            let key = generate_api_key().key;
            assert_eq!(key.len(), API_KEY_PREFIX.len() + 43, "{key}");
            let body = &key[API_KEY_PREFIX.len()..];
            assert!(body.bytes().all(|b| BASE62.contains(&b)), "{key}");
            seen.extend(body.bytes());
            let password = random_password();
            assert_eq!(password.len(), 24, "{password}");
            assert!(password.bytes().all(|b| BASE62.contains(&b)), "{password}");
        }
        assert_eq!(seen.len(), 62, "every base62 character occurs");
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horsf", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_ne!(hash, hash_password("correct horse").unwrap(), "salted");
        let p = random_password();
        assert_eq!(p.len(), 24);
        assert_ne!(p, random_password());
    }
}
