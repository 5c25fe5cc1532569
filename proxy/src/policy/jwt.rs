//! Bearer JWT verification: compact JWS only, against the keys of the issuers in the snapshot.
//!
//! A token's `alg` must equal its key's declared `alg` (never inferred from the key), so a
//! token cannot pick a weaker algorithm or turn a public key into an HMAC secret.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use portcullis_wire::api::UnknownKid;
use portcullis_wire::{ClaimNames, ClaimSource, JwtIssuer, JwtKey, TeamRole};

use super::identity::Principal;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// Longer tokens are refused unparsed: nothing legitimate is that large, and parsing is the cost.
const MAX_TOKEN_LEN: usize = 8 * 1024;
const SHARDS: usize = 16;

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub issuer: String,
    pub subject: String,
    /// The `sid` claim, checked by the caller against revoked sessions on every request.
    pub session: Option<String>,
    pub expires_at: i64,
    pub email: Option<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub source: ClaimSource,
    /// For an issuer whose tokens carry the identity (`claims: token`), the principal they
    /// describe: built once per verified token and shared by its requests.
    pub bearer: Option<Arc<Principal>>,
}

/// Why a token was refused. Values are metric labels, so the set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtRefusal {
    Malformed,
    UnsupportedAlgorithm,
    UnknownKey,
    BadSignature,
    MissingExp,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// A claim the app would receive in a header (an external token's `sub`, roles,
    /// scopes, e-mail) holds a list separator, whitespace, a control byte or non-ASCII.
    UnsafeClaim,
}

impl JwtRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::MissingExp => "missing_exp",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::UnsafeClaim => "unsafe_claim",
        }
    }
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    leeway: i64,
    source: ClaimSource,
    /// Which claims hold roles, scopes, teams and e-mail (shared by the issuer's keys).
    names: Arc<ClaimNames>,
}

struct Entry {
    claims: Arc<Claims>,
    /// Accepted while `from <= now < until` (`nbf` and `exp` with leeway).
    from: i64,
    until: i64,
}

/// Verifies bearer JWTs and caches successes.
///
/// The cache is keyed by the whole token and holds only what this verifier's keys accepted,
/// so it can never answer for another key set: the caller builds a new `Verifier` (with an
/// empty cache) whenever the snapshot's issuers change.
pub struct Verifier {
    keys: Vec<Key>,
    shards: Vec<Mutex<HashMap<String, Entry, TailHash>>>,
    shard_capacity: usize,
    hasher: TailHash,
}

/// Hashes a token by its last bytes only, keyed as the std hasher is. Those bytes are the
/// signature's, which no two cached tokens share (only verified tokens are cached, and a
/// signature covers the rest); hashing all of a 300-byte token was a tenth of a cache hit.
/// The map still compares whole tokens: a shared tail can only cost a lookup, never match.
#[derive(Clone, Default)]
struct TailHash(RandomState);

const HASHED_TAIL: usize = 32;

impl BuildHasher for TailHash {
    type Hasher = TailHasher;

    fn build_hasher(&self) -> TailHasher {
        TailHasher(self.0.build_hasher())
    }
}

struct TailHasher(std::hash::DefaultHasher);

impl std::hash::Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(&bytes[bytes.len().saturating_sub(HASHED_TAIL)..]);
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

impl Verifier {
    /// Builds the decoding keys once. Unusable keys are left out and reported (by issuer and
    /// kid, never material); an issuer without audiences is left out entirely, fail closed.
    pub fn new(issuers: &[JwtIssuer], cache_capacity: usize) -> (Verifier, Vec<String>) {
        let mut problems = Vec::new();
        let mut keys = Vec::new();
        for cfg in issuers {
            if cfg.issuer.is_empty() || cfg.audiences.is_empty() || cfg.audiences.iter().any(String::is_empty) {
                problems.push(format!(
                    "JWT issuer {:?}: an issuer and non-empty audiences are required; its keys are ignored",
                    cfg.issuer
                ));
                continue;
            }
            let names = Arc::new(cfg.claim_names.clone());
            for (index, key) in cfg.keys.iter().enumerate() {
                match build_key(key, cfg, names.clone()) {
                    Ok(key) => keys.push(key),
                    Err(why) => {
                        let name = key
                            .kid
                            .as_ref()
                            .map_or_else(|| format!("#{index}"), |kid| format!("{kid:?}"));
                        problems.push(format!("JWT issuer {:?}, key {name}: {why}; key ignored", cfg.issuer));
                    }
                }
            }
        }
        // Fewer shards than SHARDS for tiny capacities keeps the total within `cache_capacity`.
        let shard_count = cache_capacity.clamp(1, SHARDS);
        let hasher = TailHash::default();
        let verifier = Verifier {
            keys,
            shards: (0..shard_count)
                .map(|_| Mutex::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            shard_capacity: cache_capacity / shard_count,
            hasher,
        };
        (verifier, problems)
    }

    /// No usable key: every token would be refused.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// For a token refused as [`JwtRefusal::UnknownKey`]: its issuer and `kid` when the
    /// issuer (read from the unverified payload) is one of ours and none of its keys has
    /// that `kid` — the sign that the issuer rotated keys the snapshot does not hold yet.
    /// `None` for a token without a `kid` or from an issuer we do not know (reporting
    /// those would let anyone make the control plane fetch keys).
    pub fn unknown_kid(&self, token: &str) -> Option<UnknownKid> {
        use base64::Engine;
        #[derive(Deserialize)]
        struct Issuer {
            iss: Option<String>,
        }
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        let payload = token.split('.').nth(1)?;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        let issuer = serde_json::from_slice::<Issuer>(&payload).ok()?.iss?;
        let mut of_issuer = self.keys.iter().filter(|k| k.issuer == issuer).peekable();
        of_issuer.peek()?;
        if of_issuer.any(|k| k.kid.as_deref() == Some(kid.as_str())) {
            return None;
        }
        Some(UnknownKid { issuer, kid })
    }

    /// Verifies a compact JWS at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<Claims>, JwtRefusal> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtRefusal::Malformed);
        }
        if let Some(claims) = self.cached(token, now) {
            return Ok(claims);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_refusal(token))?;
        // RFC 7515: extensions named in `crit` must be understood, and we understand none.
        if header.crit.is_some() {
            return Err(JwtRefusal::Malformed);
        }
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg && (header.kid.is_none() || k.kid == header.kid))
            .peekable();
        if candidates.peek().is_none() {
            return Err(JwtRefusal::UnknownKey);
        }
        let mut refusal = JwtRefusal::BadSignature;
        for key in candidates {
            match self.check(token, key, now) {
                Ok(entry) => {
                    let claims = entry.claims.clone();
                    self.remember(token, entry, now);
                    return Ok(claims);
                }
                Err(JwtRefusal::BadSignature) => {}
                // A key that verified the signature says more than one that did not.
                Err(other) => refusal = other,
            }
        }
        Err(refusal)
    }

    fn check(&self, token: &str, key: &Key, now: i64) -> Result<Entry, JwtRefusal> {
        let mut payload = jsonwebtoken::decode::<Payload>(token, &key.decoding, &key.validation)
            .map_err(refusal)?
            .claims;
        // jsonwebtoken also accepts an `iss` array holding ours; we want exactly ours.
        if payload.iss.as_deref() != Some(key.issuer.as_str()) {
            return Err(JwtRefusal::WrongIssuer);
        }
        // Times are checked here rather than by jsonwebtoken (which reads the wall clock itself)
        // so that verification and the cache follow the one clock the caller passes.
        let exp = payload.exp.ok_or(JwtRefusal::MissingExp)?.floor() as i64;
        let until = exp.saturating_add(key.leeway);
        if now >= until {
            return Err(JwtRefusal::Expired);
        }
        let from = payload
            .nbf
            .map_or(i64::MIN, |nbf| (nbf.ceil() as i64).saturating_sub(key.leeway));
        if now < from {
            return Err(JwtRefusal::NotYetValid);
        }
        let subject = payload.sub.filter(|s| !s.is_empty()).ok_or(JwtRefusal::Malformed)?;
        let names = &*key.names;
        let mut claim = |name: &str| payload.rest.remove(name);
        let scopes = match claim(&names.scopes) {
            Some(scope) => strings(scope, true),
            // OAuth's `scope`, or the `scp` some issuers use instead.
            None if names.scopes == "scope" => claim("scp").map_or_else(Vec::new, |scp| strings(scp, true)),
            None => Vec::new(),
        };
        let roles = claim(&names.roles).map_or_else(Vec::new, |roles| strings(roles, false));
        // An e-mail is only an identity once the issuer verified it.
        let email = match claim(&names.email) {
            Some(serde_json::Value::String(email))
                if payload.email_verified.as_ref().is_some_and(Verified::is_true) =>
            {
                Some(email)
            }
            _ => None,
        };
        let bearer = if key.source == ClaimSource::Token {
            let teams = claim(&names.teams).map_or_else(Vec::new, |teams| strings(teams, false));
            // What the token says reaches the app in headers, where a `,` would add a role
            // and a control byte could end the header: refused, not cleaned.
            let mut values = std::iter::once(&subject)
                .chain(&roles)
                .chain(&scopes)
                .chain(&email)
                .chain(&teams);
            if !values.all(|v| header_safe(v)) {
                return Err(JwtRefusal::UnsafeClaim);
            }
            let teams = teams
                .iter()
                .map(|t| team(t))
                .collect::<Option<Vec<_>>>()
                .ok_or(JwtRefusal::UnsafeClaim)?;
            Some(Arc::new(Principal {
                roles: roles.clone(),
                scopes: scopes.clone(),
                teams,
                ..Principal::named(format!("{}#{subject}", key.issuer), subject.clone(), email.clone())
            }))
        } else {
            None
        };
        let claims = Claims {
            issuer: key.issuer.clone(),
            subject,
            session: payload.sid,
            expires_at: exp,
            email,
            roles,
            scopes,
            source: key.source,
            bearer,
        };
        Ok(Entry {
            claims: Arc::new(claims),
            from,
            until,
        })
    }

    fn shard(&self, token: &str) -> Option<&Mutex<HashMap<String, Entry, TailHash>>> {
        if self.shard_capacity == 0 {
            return None;
        }
        // High bits pick the shard; the map inside buckets by the low ones.
        let index = (self.hasher.hash_one(token) >> 48) % self.shards.len() as u64;
        self.shards.get(index as usize)
    }

    fn cached(&self, token: &str, now: i64) -> Option<Arc<Claims>> {
        // A panic elsewhere cannot leave a map half-updated in a way that matters here.
        let mut shard = self.shard(token)?.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = shard.get(token)?;
        if entry.from <= now && now < entry.until {
            return Some(entry.claims.clone());
        }
        shard.remove(token);
        None
    }

    fn remember(&self, token: &str, entry: Entry, now: i64) {
        let Some(shard) = self.shard(token) else { return };
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= self.shard_capacity {
            shard.retain(|_, e| now < e.until);
            // Still full of live tokens: forgetting them all costs one re-verification each.
            if shard.len() >= self.shard_capacity {
                shard.clear();
            }
        }
        shard.insert(token.to_owned(), entry);
    }

    #[cfg(test)]
    fn cached_len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |m| m.len())).sum()
    }
}

fn build_key(key: &JwtKey, cfg: &JwtIssuer, names: Arc<ClaimNames>) -> Result<Key, &'static str> {
    let alg: Algorithm = key.alg.parse().map_err(|_| "unsupported alg")?;
    let family = alg.family();
    let has_public = key.pem.is_some() || key.n.is_some() || key.e.is_some() || key.x.is_some() || key.y.is_some();
    // Material of the other kind means the alg is wrong, the classic confusion misconfiguration.
    if (family == AlgorithmFamily::Hmac && has_public) || (family != AlgorithmFamily::Hmac && key.k.is_some()) {
        return Err("key material does not match its alg");
    }
    let expected_crv = match alg {
        Algorithm::ES256 => Some("P-256"),
        Algorithm::ES384 => Some("P-384"),
        Algorithm::EdDSA => Some("Ed25519"),
        _ => None,
    };
    if key.crv.is_some() && key.crv.as_deref() != expected_crv {
        return Err("crv does not match its alg");
    }
    let jwk = (key.n.as_deref(), key.e.as_deref(), key.x.as_deref(), key.y.as_deref());
    let decoding = match (family, key.pem.as_deref().map(str::as_bytes), jwk) {
        (AlgorithmFamily::Hmac, ..) => match key.k.as_deref().and_then(b64url) {
            Some(secret) if !secret.is_empty() => Ok(DecodingKey::from_secret(&secret)),
            _ => return Err("k missing, empty or not base64url"),
        },
        (AlgorithmFamily::Rsa, Some(pem), _) => DecodingKey::from_rsa_pem(pem),
        (AlgorithmFamily::Ec, Some(pem), _) => DecodingKey::from_ec_pem(pem),
        (AlgorithmFamily::Ed, Some(pem), _) => DecodingKey::from_ed_pem(pem),
        (AlgorithmFamily::Rsa, None, (Some(n), Some(e), ..)) => DecodingKey::from_rsa_components(unpad(n), unpad(e)),
        (AlgorithmFamily::Ec, None, (.., Some(x), Some(y))) => DecodingKey::from_ec_components(unpad(x), unpad(y)),
        (AlgorithmFamily::Ed, None, (.., Some(x), _)) => DecodingKey::from_ed_components(unpad(x)),
        _ => return Err("key material missing (pem, n/e, x/y or x, as the alg needs)"),
    }
    .map_err(|_| "key material unreadable for its alg")?;
    // The Ed25519 verifier slices the first 32 bytes without checking, so check first.
    if family == AlgorithmFamily::Ed && decoding.try_get_as_bytes().map_or(true, |b| b.len() != 32) {
        return Err("not a 32-byte Ed25519 public key");
    }
    // Builds the verifier once now (curve points are parsed here) so a broken key is reported
    // at load, not discovered as bad signatures later. The empty signature itself never passes.
    jsonwebtoken::crypto::verify("", b"", &decoding, alg).map_err(|_| "key unusable for its alg")?;
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation.set_issuer(&[&cfg.issuer]);
    validation.set_audience(&cfg.audiences);
    Ok(Key {
        kid: key.kid.clone(),
        alg,
        decoding,
        validation,
        issuer: cfg.issuer.clone(),
        leeway: i64::from(cfg.leeway_seconds),
        source: cfg.claims,
        names,
    })
}

fn refusal(error: JwtError) -> JwtRefusal {
    match error.kind() {
        ErrorKind::ExpiredSignature => JwtRefusal::Expired,
        ErrorKind::ImmatureSignature => JwtRefusal::NotYetValid,
        ErrorKind::InvalidIssuer => JwtRefusal::WrongIssuer,
        ErrorKind::InvalidAudience => JwtRefusal::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) | ErrorKind::InvalidClaimFormat(claim) => match claim.as_str() {
            "exp" => JwtRefusal::MissingExp,
            "iss" => JwtRefusal::WrongIssuer,
            "aud" => JwtRefusal::WrongAudience,
            _ => JwtRefusal::Malformed,
        },
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => JwtRefusal::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm | ErrorKind::InvalidAlgorithmName => {
            JwtRefusal::UnsupportedAlgorithm
        }
        _ => JwtRefusal::Malformed,
    }
}

/// The header did not parse: tell an algorithm we do not know (`none` above all) from garbage.
fn header_refusal(token: &str) -> JwtRefusal {
    #[derive(Deserialize)]
    struct Alg {
        alg: Option<String>,
    }
    let alg = token
        .split('.')
        .next()
        .and_then(b64url)
        .and_then(|json| serde_json::from_slice::<Alg>(&json).ok())
        .and_then(|h| h.alg);
    match alg {
        Some(alg) if alg.parse::<Algorithm>().is_err() => JwtRefusal::UnsupportedAlgorithm,
        _ => JwtRefusal::Malformed,
    }
}

/// The claims we read (absent ones are `None`). `aud` is left to jsonwebtoken. Roles,
/// scopes, teams and e-mail are in `rest`, under the names the issuer's mapping gives.
#[derive(Deserialize)]
struct Payload {
    iss: Option<String>,
    sub: Option<String>,
    exp: Option<f64>,
    nbf: Option<f64>,
    /// Strict: a `sid` we could not read would silently escape session revocation.
    sid: Option<String>,
    /// OIDC's `email_verified`: a boolean, or (some issuers) the string `"true"`.
    email_verified: Option<Verified>,
    #[serde(flatten)]
    rest: HashMap<String, serde_json::Value>,
}

/// A team claim's item: `team` (a member) or `team:role`; `None` for another role.
fn team(item: &str) -> Option<(String, TeamRole)> {
    match item.split_once(':') {
        None => Some((item.to_owned(), TeamRole::Member)),
        Some((team, role)) if !team.is_empty() => Some((team.to_owned(), TeamRole::parse(role)?)),
        Some(_) => None,
    }
}

/// The `email_verified` claim, however the issuer spells it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Verified {
    Flag(bool),
    Text(String),
    Other(IgnoredAny),
}

impl Verified {
    fn is_true(&self) -> bool {
        match self {
            Verified::Flag(flag) => *flag,
            Verified::Text(text) => text == "true",
            Verified::Other(_) => false,
        }
    }
}

/// Whether a claim can go into an identity header as it is: 1 to 256 visible ASCII
/// characters, none of them a list separator (`,` `;`), a quote or a backslash.
fn header_safe(value: &str) -> bool {
    (1..=256).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b',' | b';' | b'"' | b'\\'))
}

/// A claim that should hold strings: one string (split at whitespace when `split_one`, as
/// OAuth's `scope` is) or an array, whose strings are taken; anything else contributes nothing.
fn strings(claim: serde_json::Value, split_one: bool) -> Vec<String> {
    use serde_json::Value;
    match claim {
        Value::String(s) if split_one => s.split_whitespace().map(str::to_owned).collect(),
        Value::String(s) if s.is_empty() => Vec::new(),
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// jsonwebtoken wants unpadded base64url; JWKs in the wild sometimes carry padding.
fn unpad(s: &str) -> &str {
    s.trim_end_matches('=')
}

/// base64url, padding optional.
fn b64url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(unpad(s)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    const ISS: &str = "https://auth.example";
    const NOW: i64 = 1_700_000_000;
    const SECRET: &[u8] = b"a-test-secret-of-thirty-two-byte";

    const RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC0YRyfAolDcm5M\n\
H8Ed6u6gLllFMXbi9irD69rhsQukacbXviZkmgM25NGI89yWZG2icAqMy9UJAagh\n\
VsYLtx0ziV1as0tlrrPiCmjapDI65k1v6oBWj/K/FWYQFpBGIlMRaLf/P1aJoPfG\n\
5GT7klYppzdIgA24oRGCj0uIAvfx0XFVpalrjKbbLPMKZTVAZe0SiA88NsX73N4t\n\
cZ1q7bOOROb9yqKEoKz0tZ/FYIei+qLuk9LoxRKePJHN4xuotU0Y0GF1j4Z/Rccz\n\
yOeQe8+9KOn5OgSckgikx3A89Nl8JeDZq8oP3Cl4AW6knKCJOCvKjNYrVYH1sw4v\n\
k47UUAx1AgMBAAECggEAGSBB5WBsEGobNR1jQDCehs+N/dZzEhBqSppLBg8saP2X\n\
BixlmrPdaMMc8O/PNV/N6cejoJMwHK4PZn143t7mAWzMBTtecE6SnhUHIBWpLY0x\n\
EjrfH6+zh6yKaAlMlYhoe89Tegmvm0JB4YGlE2oB+JFjYQT9ZE+DaeVeBxcqxJNF\n\
HhnPgTUv0u55886/vt6BPNUVTnUidNQgxnZivJ1c0+cNdXG8kC0zH6zGkE+3MvXv\n\
iZm8BBgZAVyuhtnbEy1pRbKcxNLNGWHtSAo1X05xzej0rmSEoLPIO0yPisIKxk98\n\
69s2cpWK83t+Ywn/yyrV6wowOgjqaiab1R5RDB9LjQKBgQDpMVam8Wzjc53NVQm3\n\
hCqWnqfHgFbQrxNI3Q+mmQAjCLpnsygnkLZrFFG2Rucgn8shdoSKPEgBgPsYpoyd\n\
PF+a78XMRqNvbix061Gz0ForEgJSIBIS60toD9iywf96C9/u6lSN1TK7RCaXvOz/\n\
u5v4QyxJVDkqxOILDW78GLEL7wKBgQDGBW+T/TQQr7RAM1xYTyrfruWFMBlAXuof\n\
qL12E69TaNtclsrq2EWVVaOIqSzVARQfTiDnw4IcmUvoftkIpMx4q43rtdGXlJbn\n\
uPVaky82c5rz9UbuNYNI+YbgDDr1mKWlyjVvfx0lmY1yIiTSi7+sMv6IvWRI+KWL\n\
/QnYEdeZ2wKBgE34cknFpavzp4rVaTdUWM0d5Wmebui98UvGpooE1HfiXjl4PO/l\n\
wijRlXTGBlfxNgFNWInEGCtwjgSzA4c7fZgXneJsqA8FHpZFbH8cJloKXn5JPOHY\n\
jNERo1o55YtQVyLSdU0rQRg+dEz+HZxwhXkgNLmcELVNOWuKpVZjhyc/AoGBAKNN\n\
DE0AvJUeMQnY0UjKUNMSipkhp1FcdLsTDtt3NFkW2gArIsA1Bn02mJw015H5R7zh\n\
U2WN55jqGp1rLlRgg3boEyvVTzkwApqp/zxosMC46YpSNeJwIwplLQNLUrwC3Ggy\n\
r4p5S3IchXcgDTnMoY7CpwHhHfjHhM5DKIEVhbWNAoGAUW/iUz47YjJq8tkihiri\n\
VA7DOc9TwAY6aYpKBAG1zHj08cBhvS5vEIdr8cMisu0F0TyApTSuEg0rqZSdQG2a\n\
7CH/9mPxVOrlNagezTJNqefuPthWmLSqyff2hP9DT/nKnuAP5rSdojUoStB12u3/\n\
zCKTiiAPCGI5yz04vgIUjnc=\n\
-----END PRIVATE KEY-----\n\
";
    const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtGEcnwKJQ3JuTB/BHeru\n\
oC5ZRTF24vYqw+va4bELpGnG174mZJoDNuTRiPPclmRtonAKjMvVCQGoIVbGC7cd\n\
M4ldWrNLZa6z4gpo2qQyOuZNb+qAVo/yvxVmEBaQRiJTEWi3/z9WiaD3xuRk+5JW\n\
Kac3SIANuKERgo9LiAL38dFxVaWpa4ym2yzzCmU1QGXtEogPPDbF+9zeLXGdau2z\n\
jkTm/cqihKCs9LWfxWCHovqi7pPS6MUSnjyRzeMbqLVNGNBhdY+Gf0XHM8jnkHvP\n\
vSjp+ToEnJIIpMdwPPTZfCXg2avKD9wpeAFupJygiTgryozWK1WB9bMOL5OO1FAM\n\
dQIDAQAB\n\
-----END PUBLIC KEY-----\n\
";
    const RSA_N: &str = "tGEcnwKJQ3JuTB_BHeruoC5ZRTF24vYqw-va4bELpGnG174mZJoDNuTRiPPclmRtonAKjMvVCQGoIVbGC7cdM4ldWrNLZa6z4gpo2qQyOuZNb-qAVo_yvxVmEBaQRiJTEWi3_z9WiaD3xuRk-5JWKac3SIANuKERgo9LiAL38dFxVaWpa4ym2yzzCmU1QGXtEogPPDbF-9zeLXGdau2zjkTm_cqihKCs9LWfxWCHovqi7pPS6MUSnjyRzeMbqLVNGNBhdY-Gf0XHM8jnkHvPvSjp-ToEnJIIpMdwPPTZfCXg2avKD9wpeAFupJygiTgryozWK1WB9bMOL5OO1FAMdQ";

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn key(alg: &str) -> JwtKey {
        JwtKey {
            alg: alg.into(),
            ..Default::default()
        }
    }

    fn hmac(alg: &str, kid: Option<&str>, secret: &[u8]) -> JwtKey {
        JwtKey {
            kid: kid.map(Into::into),
            k: Some(b64(secret)),
            ..key(alg)
        }
    }

    fn pem(alg: &str, pem: &str) -> JwtKey {
        JwtKey {
            pem: Some(pem.into()),
            ..key(alg)
        }
    }

    fn issuer(keys: Vec<JwtKey>) -> JwtIssuer {
        JwtIssuer {
            issuer: ISS.into(),
            audiences: vec!["app".into(), "other-app".into()],
            claims: ClaimSource::Token,
            claim_names: Default::default(),
            leeway_seconds: 30,
            keys,
        }
    }

    fn verifier(keys: Vec<JwtKey>) -> Verifier {
        let (verifier, problems) = Verifier::new(&[issuer(keys)], 64);
        assert!(problems.is_empty(), "{problems:?}");
        verifier
    }

    fn payload() -> Value {
        json!({"iss": ISS, "aud": "app", "sub": "alice", "exp": NOW + 600})
    }

    fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(Into::into);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn hs256(claims: &Value) -> String {
        sign(Algorithm::HS256, None, claims, &EncodingKey::from_secret(SECRET))
    }

    fn hs_verifier() -> Verifier {
        verifier(vec![hmac("HS256", None, SECRET)])
    }

    fn with(changes: Value) -> Value {
        let mut claims = payload();
        for (name, value) in changes.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    }

    fn generated(alg: &'static rcgen::SignatureAlgorithm) -> (EncodingKey, String, rcgen::KeyPair) {
        let pair = rcgen::KeyPair::generate_for(alg).unwrap();
        let private = pair.serialize_pem();
        let encoding = if alg == &rcgen::PKCS_ED25519 {
            EncodingKey::from_ed_pem(private.as_bytes()).unwrap()
        } else {
            EncodingKey::from_ec_pem(private.as_bytes()).unwrap()
        };
        (encoding, pair.public_key_pem(), pair)
    }

    fn assert_accepted(verifier: &Verifier, token: &str) {
        let claims = verifier.verify(token, NOW).unwrap();
        assert_eq!((claims.issuer.as_str(), claims.subject.as_str()), (ISS, "alice"));
        assert_eq!(claims.expires_at, NOW + 600);
    }

    #[test]
    fn accepts_every_hmac_algorithm() {
        for (alg, name) in [
            (Algorithm::HS256, "HS256"),
            (Algorithm::HS384, "HS384"),
            (Algorithm::HS512, "HS512"),
        ] {
            let v = verifier(vec![hmac(name, None, SECRET)]);
            assert_accepted(&v, &sign(alg, None, &payload(), &EncodingKey::from_secret(SECRET)));
        }
    }

    #[test]
    fn padded_hmac_secret_is_accepted() {
        let padded = JwtKey {
            k: Some(format!("{}=", b64(b"seventeen bytes!!"))),
            ..key("HS256")
        };
        assert!(padded.k.as_deref().unwrap().ends_with('='));
        let v = verifier(vec![padded]);
        assert_accepted(
            &v,
            &sign(
                Algorithm::HS256,
                None,
                &payload(),
                &EncodingKey::from_secret(b"seventeen bytes!!"),
            ),
        );
    }

    #[test]
    fn accepts_rsa_pem_and_components() {
        let private = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        for (alg, name) in [(Algorithm::RS256, "RS256"), (Algorithm::PS256, "PS256")] {
            let v = verifier(vec![pem(name, RSA_PUBLIC)]);
            assert_accepted(&v, &sign(alg, None, &payload(), &private));
        }
        let components = JwtKey {
            n: Some(RSA_N.into()),
            e: Some("AQAB".into()),
            ..key("RS256")
        };
        let v = verifier(vec![components]);
        assert_accepted(&v, &sign(Algorithm::RS256, None, &payload(), &private));
    }

    #[test]
    fn accepts_ec_and_ed_pem_and_components() {
        for (rc, alg, name) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256, "ES256"),
            (&rcgen::PKCS_ECDSA_P384_SHA384, Algorithm::ES384, "ES384"),
            (&rcgen::PKCS_ED25519, Algorithm::EdDSA, "EdDSA"),
        ] {
            let (private, public, pair) = generated(rc);
            let token = sign(alg, None, &payload(), &private);
            assert_accepted(&verifier(vec![pem(name, &public)]), &token);
            let raw = pair.public_key_raw();
            let components = if alg == Algorithm::EdDSA {
                JwtKey {
                    crv: Some("Ed25519".into()),
                    x: Some(b64(raw)),
                    ..key(name)
                }
            } else {
                // SEC1 uncompressed point: 0x04 || x || y.
                let (x, y) = raw[1..].split_at((raw.len() - 1) / 2);
                JwtKey {
                    x: Some(b64(x)),
                    y: Some(b64(y)),
                    ..key(name)
                }
            };
            assert_accepted(&verifier(vec![components]), &token);
        }
    }

    #[test]
    fn kid_selects_the_key() {
        let other = b"another-secret-of-thirty-two-byt";
        let v = verifier(vec![hmac("HS256", Some("a"), SECRET), hmac("HS256", Some("b"), other)]);
        let b = EncodingKey::from_secret(other);
        assert_accepted(&v, &sign(Algorithm::HS256, Some("b"), &payload(), &b));
        assert_eq!(
            v.verify(&sign(Algorithm::HS256, Some("a"), &payload(), &b), NOW),
            Err(JwtRefusal::BadSignature)
        );
        let unknown = sign(Algorithm::HS256, Some("c"), &payload(), &b);
        assert_eq!(v.verify(&unknown, NOW), Err(JwtRefusal::UnknownKey));
        // Without a kid every key of the alg is tried.
        assert_accepted(&v, &sign(Algorithm::HS256, None, &payload(), &b));
        let hs384 = sign(Algorithm::HS384, None, &payload(), &b);
        assert_eq!(v.verify(&hs384, NOW), Err(JwtRefusal::UnknownKey));
    }

    #[test]
    fn an_unknown_kid_is_named_only_for_an_issuer_we_know() {
        let v = verifier(vec![hmac("HS256", Some("a"), SECRET)]);
        let key = EncodingKey::from_secret(SECRET);
        let rotated = sign(Algorithm::HS256, Some("new"), &payload(), &key);
        assert_eq!(v.verify(&rotated, NOW), Err(JwtRefusal::UnknownKey));
        let issuer = payload()["iss"].as_str().unwrap().to_string();
        assert_eq!(
            v.unknown_kid(&rotated),
            Some(UnknownKid {
                issuer,
                kid: "new".into()
            })
        );
        // A kid the issuer has (under another alg), no kid, or an issuer we do not know.
        assert_eq!(
            v.unknown_kid(&sign(Algorithm::HS384, Some("a"), &payload(), &key)),
            None
        );
        assert_eq!(v.unknown_kid(&sign(Algorithm::HS256, None, &payload(), &key)), None);
        let mut stranger = payload();
        stranger["iss"] = "https://elsewhere.test".into();
        assert_eq!(
            v.unknown_kid(&sign(Algorithm::HS256, Some("new"), &stranger, &key)),
            None
        );
        assert_eq!(v.unknown_kid("not.a.token"), None);
    }

    #[test]
    fn refuses_garbage_and_oversized_tokens() {
        let v = hs_verifier();
        for garbage in ["", "abc", "a.b.c", "a.b", "..", "x.y.z.w.v"] {
            assert_eq!(v.verify(garbage, NOW), Err(JwtRefusal::Malformed), "{garbage:?}");
        }
        // The signature is checked before the payload is read at all.
        assert_eq!(
            v.verify("eyJhbGciOiJIUzI1NiJ9.%%%.abc", NOW),
            Err(JwtRefusal::BadSignature)
        );
        let big = hs256(&with(json!({"pad": "x".repeat(9000)})));
        assert!(big.len() > MAX_TOKEN_LEN);
        assert_eq!(v.verify(&big, NOW), Err(JwtRefusal::Malformed));
    }

    #[test]
    fn refuses_a_missing_or_non_numeric_exp() {
        let v = hs_verifier();
        assert_eq!(
            v.verify(&hs256(&with(json!({"exp": null}))), NOW),
            Err(JwtRefusal::MissingExp)
        );
        let as_string = hs256(&with(json!({"exp": "9999999999"})));
        assert_eq!(v.verify(&as_string, NOW), Err(JwtRefusal::Malformed));
        assert_eq!(
            v.verify(&hs256(&with(json!({"exp": -5}))), NOW),
            Err(JwtRefusal::MissingExp)
        );
    }

    #[test]
    fn exp_is_checked_with_leeway() {
        let v = hs_verifier();
        let token = hs256(&with(json!({"exp": NOW - 10})));
        assert!(v.verify(&token, NOW).is_ok(), "10 s past exp is within the 30 s leeway");
        let v = hs_verifier();
        assert_eq!(v.verify(&token, NOW + 20), Err(JwtRefusal::Expired));
        assert_eq!(
            v.verify(&hs256(&with(json!({"exp": NOW - 31}))), NOW),
            Err(JwtRefusal::Expired)
        );
    }

    #[test]
    fn nbf_in_the_future_is_refused() {
        let v = hs_verifier();
        let token = hs256(&with(json!({"nbf": NOW + 120})));
        assert_eq!(v.verify(&token, NOW), Err(JwtRefusal::NotYetValid));
        assert!(v.verify(&token, NOW + 100).is_ok(), "within leeway of nbf");
        assert!(v.verify(&hs256(&with(json!({"nbf": NOW - 5}))), NOW).is_ok());
    }

    #[test]
    fn issuer_and_audience_must_match() {
        let v = hs_verifier();
        let refused = |changes: Value| v.verify(&hs256(&with(changes)), NOW);
        assert_eq!(
            refused(json!({"iss": "https://evil.example"})),
            Err(JwtRefusal::WrongIssuer)
        );
        assert_eq!(refused(json!({"iss": null})), Err(JwtRefusal::WrongIssuer));
        assert_eq!(refused(json!({"iss": [ISS, "x"]})), Err(JwtRefusal::Malformed));
        assert_eq!(refused(json!({"aud": "someone-else"})), Err(JwtRefusal::WrongAudience));
        assert_eq!(refused(json!({"aud": ["a", "b"]})), Err(JwtRefusal::WrongAudience));
        assert_eq!(refused(json!({"aud": null})), Err(JwtRefusal::WrongAudience));
        assert!(refused(json!({"aud": ["someone-else", "other-app"]})).is_ok());
    }

    #[test]
    fn refuses_a_signature_by_another_secret() {
        let token = sign(
            Algorithm::HS256,
            None,
            &payload(),
            &EncodingKey::from_secret(b"not-the-configured-secret-at-all"),
        );
        assert_eq!(hs_verifier().verify(&token, NOW), Err(JwtRefusal::BadSignature));
    }

    #[test]
    fn tampered_payload_never_hits_the_cache() {
        let v = hs_verifier();
        let token = hs256(&payload());
        assert!(v.verify(&token, NOW).is_ok());
        assert_eq!(v.cached_len(), 1);
        let parts: Vec<&str> = token.split('.').collect();
        let forged = b64(&serde_json::to_vec(&with(json!({"sub": "root"}))).unwrap());
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        // Same signature, so the same hashed tail as the cached token: only a whole-token
        // match may answer from the cache.
        assert_eq!(v.verify(&tampered, NOW), Err(JwtRefusal::BadSignature));
        assert_eq!(v.cached_len(), 1);
    }

    #[test]
    fn alg_none_and_unknown_algs_are_refused() {
        let v = hs_verifier();
        let body = b64(&serde_json::to_vec(&payload()).unwrap());
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"HS1024"}"#,
        ] {
            let token = format!("{}.{body}.", b64(header.as_bytes()));
            assert_eq!(v.verify(&token, NOW), Err(JwtRefusal::UnsupportedAlgorithm), "{header}");
            let signed = format!("{}.{body}.{}", b64(header.as_bytes()), b64(b"sig"));
            assert_eq!(
                v.verify(&signed, NOW),
                Err(JwtRefusal::UnsupportedAlgorithm),
                "{header}"
            );
        }
        let no_alg = format!("{}.{body}.", b64(br#"{"typ":"JWT"}"#));
        assert_eq!(v.verify(&no_alg, NOW), Err(JwtRefusal::Malformed));
    }

    #[test]
    fn a_public_key_is_never_an_hmac_secret() {
        let v = verifier(vec![pem("RS256", RSA_PUBLIC)]);
        let forged = sign(
            Algorithm::HS256,
            None,
            &payload(),
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        );
        assert_eq!(v.verify(&forged, NOW), Err(JwtRefusal::UnknownKey));
        let with_kid = verifier(vec![JwtKey {
            kid: Some("k1".into()),
            ..pem("RS256", RSA_PUBLIC)
        }]);
        let forged = sign(
            Algorithm::HS256,
            Some("k1"),
            &payload(),
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        );
        assert_eq!(with_kid.verify(&forged, NOW), Err(JwtRefusal::UnknownKey));
    }

    #[test]
    fn crit_header_is_refused() {
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp".into()]);
        let token = jsonwebtoken::encode(&header, &payload(), &EncodingKey::from_secret(SECRET)).unwrap();
        assert_eq!(hs_verifier().verify(&token, NOW), Err(JwtRefusal::Malformed));
    }

    #[test]
    fn issuer_without_audiences_is_refused() {
        let mut cfg = issuer(vec![hmac("HS256", None, SECRET)]);
        cfg.audiences.clear();
        let (v, problems) = Verifier::new(&[cfg], 16);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains(ISS), "{problems:?}");
        assert!(v.is_empty());
        assert_eq!(v.verify(&hs256(&payload()), NOW), Err(JwtRefusal::UnknownKey));
    }

    #[test]
    fn unusable_keys_are_reported_without_material() {
        let (_, p384_public, _) = generated(&rcgen::PKCS_ECDSA_P384_SHA384);
        let keys = vec![
            hmac("XS256", Some("unknown-alg"), SECRET),
            JwtKey {
                kid: Some("hmac-with-pem".into()),
                pem: Some(RSA_PUBLIC.into()),
                ..key("HS256")
            },
            JwtKey {
                kid: Some("rsa-with-k".into()),
                ..hmac("RS256", None, SECRET)
            },
            JwtKey {
                kid: Some("no-material".into()),
                ..key("RS256")
            },
            JwtKey {
                kid: Some("bad-k".into()),
                k: Some("not base64!".into()),
                ..key("HS256")
            },
            JwtKey {
                kid: Some("empty-k".into()),
                k: Some(String::new()),
                ..key("HS256")
            },
            JwtKey {
                kid: Some("curve".into()),
                ..pem("ES256", &p384_public)
            },
            JwtKey {
                kid: Some("crv".into()),
                crv: Some("P-384".into()),
                ..pem("ES256", &p384_public)
            },
            JwtKey {
                kid: Some("short-ed".into()),
                x: Some(b64(&[7; 16])),
                ..key("EdDSA")
            },
            JwtKey {
                kid: Some("ec-as-rsa".into()),
                ..pem("RS256", &p384_public)
            },
            hmac("HS256", Some("good"), SECRET),
        ];
        let (v, problems) = Verifier::new(&[issuer(keys)], 16);
        assert_eq!(problems.len(), 10, "{problems:#?}");
        assert!(!v.is_empty());
        let secret = b64(SECRET);
        for problem in &problems {
            assert!(problem.contains(ISS) && !problem.contains("good"), "{problem}");
            assert!(!problem.contains(&secret) && !problem.contains("BEGIN"), "{problem}");
        }
        assert_accepted(
            &v,
            &sign(
                Algorithm::HS256,
                Some("good"),
                &payload(),
                &EncodingKey::from_secret(SECRET),
            ),
        );
    }

    #[test]
    fn claims_come_from_the_token() {
        let v = hs_verifier();
        let token = hs256(&with(json!({
            "sid": "s-1", "email": "a@example.com", "email_verified": true, "roles": ["admin", 7, {"x": 1}, "dev"],
            "scope": "read  write", "scp": ["ignored"], "unknown": {"deep": [1, 2]}
        })));
        let claims = v.verify(&token, NOW).unwrap();
        assert_eq!(claims.session.as_deref(), Some("s-1"));
        assert_eq!(claims.email.as_deref(), Some("a@example.com"));
        assert_eq!(claims.roles, ["admin", "dev"]);
        assert_eq!(claims.scopes, ["read", "write"]);
        assert_eq!(claims.source, ClaimSource::Token);
        let scp = v
            .verify(&hs256(&with(json!({"scp": ["a", "b"], "roles": "solo"}))), NOW)
            .unwrap();
        assert_eq!(scp.scopes, ["a", "b"]);
        assert_eq!(scp.roles, ["solo"]);
        assert_eq!(scp.session, None);
        assert_eq!(
            v.verify(&hs256(&with(json!({"sub": null}))), NOW),
            Err(JwtRefusal::Malformed)
        );
        assert_eq!(
            v.verify(&hs256(&with(json!({"sub": ""}))), NOW),
            Err(JwtRefusal::Malformed)
        );
        assert_eq!(
            v.verify(&hs256(&with(json!({"sid": 42}))), NOW),
            Err(JwtRefusal::Malformed)
        );
    }

    #[test]
    fn an_issuers_claim_mapping_says_where_roles_scopes_teams_and_email_are() {
        let mut cfg = issuer(vec![hmac("HS256", None, SECRET)]);
        cfg.claim_names = ClaimNames {
            roles: "groups".into(),
            scopes: "permissions".into(),
            teams: "org_teams".into(),
            email: "mail".into(),
        };
        let (v, problems) = Verifier::new(&[cfg], 16);
        assert!(problems.is_empty(), "{problems:?}");
        let token = hs256(&with(json!({
            "groups": ["admin"], "roles": ["ignored"], "permissions": "read write", "scope": "ignored",
            "org_teams": ["payments", "search:owner"], "teams": ["ignored"],
            "mail": "a@example.com", "email": "ignored@example.com", "email_verified": true
        })));
        let claims = v.verify(&token, NOW).unwrap();
        assert_eq!(claims.roles, ["admin"]);
        assert_eq!(claims.scopes, ["read", "write"]);
        assert_eq!(claims.email.as_deref(), Some("a@example.com"));
        let bearer = claims.bearer.as_deref().unwrap();
        assert_eq!(
            bearer.teams,
            [
                ("payments".to_string(), TeamRole::Member),
                ("search".to_string(), TeamRole::Owner)
            ]
        );
        // Another name for scopes: no fallback to `scp`.
        let scp_only = v.verify(&hs256(&with(json!({"scp": ["a"]}))), NOW).unwrap();
        assert!(scp_only.scopes.is_empty());
        // A team with a role we do not know, or an unsafe one, refuses the token.
        for bad in [
            json!({"org_teams": ["payments:root"]}),
            json!({"org_teams": ["a,b"]}),
            json!({"org_teams": [":owner"]}),
        ] {
            assert_eq!(
                v.verify(&hs256(&with(bad.clone())), NOW),
                Err(JwtRefusal::UnsafeClaim),
                "{bad}"
            );
        }
        // The default mapping reads `teams`.
        let default = hs_verifier()
            .verify(&hs256(&with(json!({"teams": "ops:admin"}))), NOW)
            .unwrap();
        assert_eq!(
            default.bearer.as_deref().unwrap().teams,
            [("ops".to_string(), TeamRole::Admin)]
        );
    }

    #[test]
    fn external_claims_that_an_app_could_misread_are_refused() {
        let v = hs_verifier();
        for bad in [
            json!({"sub": "alice,admin"}),
            json!({"sub": "alice\r\nx-auth-roles: admin"}),
            json!({"sub": "alice bob"}),
            json!({"sub": "al\u{e9}"}),
            json!({"roles": ["viewer,admin"]}),
            json!({"roles": ["viewer;admin"]}),
            json!({"scope": "read write\u{0}admin"}),
            json!({"email": "a@example.com,b@example.com", "email_verified": true}),
        ] {
            assert_eq!(
                v.verify(&hs256(&with(bad.clone())), NOW),
                Err(JwtRefusal::UnsafeClaim),
                "{bad}"
            );
        }
        let claims = v.verify(&hs256(&with(json!({"sub": "user-1"}))), NOW).unwrap();
        let bearer = claims.bearer.as_deref().unwrap();
        assert_eq!(bearer.subject, format!("{ISS}#user-1"), "typed by its issuer");
    }

    #[test]
    fn an_external_email_counts_only_when_verified() {
        let v = hs_verifier();
        for (verified, kept) in [
            (json!(true), true),
            (json!("true"), true),
            (json!(false), false),
            (json!("false"), false),
            (json!(1), false),
            (json!(null), false),
        ] {
            let token = hs256(&with(json!({"email": "a@example.com", "email_verified": verified})));
            let claims = v.verify(&token, NOW).unwrap();
            assert_eq!(claims.email.is_some(), kept, "{verified}");
            assert_eq!(claims.bearer.as_deref().unwrap().email.is_some(), kept, "{verified}");
        }
        let unsaid = v.verify(&hs256(&with(json!({"email": "a@example.com"}))), NOW).unwrap();
        assert_eq!(unsaid.email, None);
    }

    #[test]
    fn directory_source_is_reported() {
        let mut cfg = issuer(vec![hmac("HS256", None, SECRET)]);
        cfg.claims = ClaimSource::Directory;
        let (v, _) = Verifier::new(&[cfg], 16);
        assert_eq!(
            v.verify(&hs256(&payload()), NOW).unwrap().source,
            ClaimSource::Directory
        );
    }

    #[test]
    fn cache_returns_the_same_claims_until_exp() {
        let v = hs_verifier();
        let token = hs256(&payload());
        let first = v.verify(&token, NOW).unwrap();
        let second = v.verify(&token, NOW + 1).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(v.verify(&token, NOW + 600 + 30), Err(JwtRefusal::Expired));
        assert_eq!(v.cached_len(), 0, "the expired entry is dropped");
    }

    #[test]
    fn cache_is_bounded() {
        let (v, _) = Verifier::new(&[issuer(vec![hmac("HS256", None, SECRET)])], 16);
        for i in 0..100 {
            let token = hs256(&with(json!({ "sub": format!("user-{i}") })));
            assert_eq!(v.verify(&token, NOW).unwrap().subject, format!("user-{i}"));
            assert!(v.cached_len() <= 16);
        }
        let (none, _) = Verifier::new(&[issuer(vec![hmac("HS256", None, SECRET)])], 0);
        let token = hs256(&payload());
        assert!(none.verify(&token, NOW).is_ok() && none.verify(&token, NOW).is_ok());
        assert_eq!(none.cached_len(), 0);
    }

    #[test]
    fn refusal_labels_are_distinct_snake_case() {
        use JwtRefusal::*;
        let all = [
            Malformed,
            UnsupportedAlgorithm,
            UnknownKey,
            BadSignature,
            MissingExp,
            Expired,
            NotYetValid,
            WrongIssuer,
            WrongAudience,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), all.len());
        assert!(
            labels
                .iter()
                .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
        assert_eq!(BadSignature.as_str(), "bad_signature");
    }

    #[test]
    fn b64url_matches_the_base64_crate() {
        for len in 0..40u8 {
            let bytes: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37).wrapping_add(200)).collect();
            let encoded = b64(&bytes);
            assert_eq!(b64url(&encoded).as_deref(), Some(&bytes[..]));
            let padded = base64::engine::general_purpose::URL_SAFE.encode(&bytes);
            assert_eq!(b64url(&padded).as_deref(), Some(&bytes[..]));
        }
        for bad in ["a", "ab+c", "ab/c", "ab c", "abcde"] {
            assert_eq!(b64url(bad), None, "{bad}");
        }
    }

    #[test]
    fn verifier_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Verifier>();
    }
}
