//! What the sidecar itself answers: JSON errors in one format, and correlation ids.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::Body;
use crate::headers::{X_CORRELATION_ID, X_REQUEST_ID};

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

/// The error body of DESIGN.md:
/// `{"status":"error","error":{"code":…,"message":…},"meta":{"version":1,"timestamp":…,"correlation_id":…}}`.
pub fn error(status: StatusCode, code: &str, message: &str, correlation_id: &HeaderValue) -> Response<Body> {
    let body = serde_json::json!({
        "status": "error",
        "error": {"code": code, "message": message},
        "meta": {
            "version": 1,
            "timestamp": jiff::Timestamp::now().to_string(),
            "correlation_id": id_text(correlation_id),
        }
    });
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CORRELATION_ID, correlation_id.clone());
    response
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
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

    #[tokio::test]
    async fn errors_have_the_documented_shape() {
        let r = error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "missing scope read",
            &HeaderValue::from_static("cid-1"),
        );
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()[X_CORRELATION_ID], "cid-1");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "error");
        assert_eq!(v["error"]["code"], "forbidden");
        assert_eq!(v["error"]["message"], "missing scope read");
        assert_eq!(v["meta"]["version"], 1);
        assert_eq!(v["meta"]["correlation_id"], "cid-1");
        assert!(v["meta"]["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
