//! How an API key is recognised and hashed: the contract between the operator, which
//! issues keys and stores their hashes, and the sidecar, which hashes what it is shown.

use sha2::{Digest, Sha256};

/// Every Portcullis API key starts with this, so that secret scanners and people
/// recognise one (and the sidecar can refuse anything else without a lookup).
pub const PREFIX: &str = "pck_";

/// SHA-256 of the key. A fast hash is right here (unlike passwords): keys carry 256
/// bits of entropy, and the sidecar hashes on every request.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// [`digest`] as lowercase hex, the form stored in the database and in snapshots.
pub fn hash_hex(key: &str) -> String {
    to_hex(&digest(key))
}

/// Lowercase hex of bytes.
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(
            super::hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
