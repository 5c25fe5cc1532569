//! What the sidecar answers itself, without the app: JSON errors in one format, CORS
//! preflights, and the correlation id every answer carries.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::headers::{X_CORRELATION_ID, X_REQUEST_ID};

/// A response the sidecar makes itself: status, headers and a body, whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// An answer without a body.
    pub fn empty(status: StatusCode) -> Answer {
        Answer {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// The error body of DESIGN.md:
    /// `{"status":"error","error":{"code":…,"message":…},"meta":{"version":1,"timestamp":…,"correlation_id":…}}`.
    pub fn error(status: StatusCode, code: &str, message: &str, correlation_id: &HeaderValue) -> Answer {
        let body = serde_json::json!({
            "status": "error",
            "error": {"code": code, "message": message},
            "meta": {
                "version": 1,
                "timestamp": jiff::Timestamp::now().to_string(),
                "correlation_id": id_text(correlation_id),
            }
        });
        let mut headers = HeaderMap::with_capacity(4);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(X_CORRELATION_ID, correlation_id.clone());
        Answer {
            status,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }
}

/// What the sidecar changes in the app's response: our correlation id always, CORS and
/// deprecation headers when a policy asks for them. The transport applies them to the
/// response however it holds it.
#[derive(Debug)]
pub struct ResponseEdits {
    /// Replaces the app's: every answer carries the request's correlation id.
    pub correlation_id: HeaderValue,
    /// Each header, and whether it replaces the app's headers of that name (or is added
    /// beside them, as `Vary` and `Link` are). Usually none: no allocation then.
    edits: Vec<(HeaderName, HeaderValue, bool)>,
}

impl ResponseEdits {
    pub fn new(correlation_id: HeaderValue) -> ResponseEdits {
        ResponseEdits {
            correlation_id,
            edits: Vec::new(),
        }
    }

    /// `name` becomes `value`, whatever the app said.
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.edits.push((name, value, true));
    }

    /// `value` goes beside the app's values of `name`.
    pub fn append(&mut self, name: HeaderName, value: HeaderValue) {
        self.edits.push((name, value, false));
    }

    /// The edits in order: name, value, and whether it replaces the app's.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue, bool)> {
        self.edits.iter().map(|(name, value, replace)| (name, value, *replace))
    }

    /// The last value given to `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.edits
            .iter()
            .rev()
            .find(|(n, ..)| n == name)
            .map(|(_, value, _)| value)
    }
}

/// A correlation id from the client when it is a sane token, else a fresh one. As a
/// header value: it is sent to the app and back to the client, and only logged as text.
pub fn correlation_id(headers: &hyper::HeaderMap) -> HeaderValue {
    for name in [X_CORRELATION_ID, X_REQUEST_ID] {
        if let Some(v) = headers.get(name)
            && (1..=128).contains(&v.len())
            && v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return v.clone();
        }
    }
    fresh_id()
}

/// 128 bits in hex: a per-process random half (from the std hasher's OS-seeded keys) and
/// a counter.
fn fresh_id() -> HeaderValue {
    use std::hash::{BuildHasher, RandomState};
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| RandomState::new().hash_one(std::process::id()));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for (i, byte) in seed.to_be_bytes().into_iter().chain(n.to_be_bytes()).enumerate() {
        id[2 * i] = HEX[usize::from(byte >> 4)];
        id[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(&id)).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The text of a correlation id (always visible ASCII, as `correlation_id` made it).
pub fn id_text(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_sane() {
        let mut h = hyper::HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(correlation_id(&h), "abc-123");
        h.insert(X_CORRELATION_ID, HeaderValue::from_static("has space"));
        assert_eq!(
            correlation_id(&h),
            "abc-123",
            "a bad X-Correlation-ID falls back to X-Request-ID"
        );
        h.insert("x-request-id", HeaderValue::from_static("<script>"));
        let fresh = correlation_id(&h);
        assert_eq!(fresh.len(), 32);
        assert!(id_text(&fresh).bytes().all(|b| b.is_ascii_hexdigit()), "{fresh:?}");
        assert_ne!(fresh, correlation_id(&h), "fresh ids differ");
    }

    #[test]
    fn errors_have_the_documented_shape() {
        let r = Answer::error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "missing scope read",
            &HeaderValue::from_static("cid-1"),
        );
        assert_eq!(r.status, 403);
        assert_eq!(r.headers[X_CORRELATION_ID], "cid-1");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["status"], "error");
        assert_eq!(v["error"]["code"], "forbidden");
        assert_eq!(v["error"]["message"], "missing scope read");
        assert_eq!(v["meta"]["version"], 1);
        assert_eq!(v["meta"]["correlation_id"], "cid-1");
        assert!(v["meta"]["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
