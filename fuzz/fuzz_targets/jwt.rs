//! Bearer tokens: raw bytes as a token, and (after a 0xff byte) a header and claims of the
//! fuzzer's choosing signed with the issuer's real key, so that the claims handling behind
//! the signature check is reached too. No panic, and a token accepted from an external
//! issuer only yields header-safe values.
#![no_main]

use jsonwebtoken::{EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use portcullis_proxy::policy::jwt::Verifier;
use portcullis_wire::{ClaimSource, JwtIssuer, JwtKey};

const SECRET: &[u8] = b"fuzz-only-hmac-secret-of-32-bytes!!";
const NOW: i64 = 1_800_000_000;

fn verifier() -> Verifier {
    use base64::Engine;
    let issuer = JwtIssuer {
        issuer: "https://fuzz.test".into(),
        audiences: vec!["app".into()],
        claims: ClaimSource::Token,
        claim_names: Default::default(),
        leeway_seconds: 30,
        keys: vec![JwtKey {
            alg: "HS256".into(),
            k: Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET)),
            ..JwtKey::default()
        }],
    };
    Verifier::new(&[issuer], 0).0
}

fuzz_target!(|data: &[u8]| {
    let verifier = verifier();
    let (token, signed) = match data.iter().position(|&b| b == 0xff) {
        None => (String::from_utf8_lossy(data).into_owned(), false),
        Some(at) => {
            let claims: serde_json::Value = match serde_json::from_slice(&data[at + 1..]) {
                Ok(claims) => claims,
                Err(_) => return,
            };
            let header: Header = serde_json::from_slice(&data[..at]).unwrap_or_default();
            match jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET)) {
                Ok(token) => (token, true),
                Err(_) => return,
            }
        }
    };
    if let Ok(claims) = verifier.verify(&token, NOW)
        && let Some(bearer) = &claims.bearer
    {
        assert!(signed);
        for value in std::iter::once(&bearer.name).chain(&bearer.roles).chain(&bearer.scopes).chain(&bearer.email) {
            assert!(value.bytes().all(|b| b.is_ascii_graphic() && b != b','), "{value:?}");
        }
    }
});
