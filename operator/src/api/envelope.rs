//! The JSON envelope of every API answer (DESIGN.md):
//! `{"status":"ok"|"error","data":…,"error":{"code","message"},"meta":{"version":1,"timestamp":…,"correlation_id":…}}`.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use rand::RngCore;
use serde_json::{Value, json};

/// Header carrying the request's correlation id, echoed on every answer.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// The caller's correlation id (`X-Correlation-ID`, else `X-Request-ID`) when it is a
/// short printable token, else a fresh random one: an id from outside ends up in logs
/// and audit rows, so it must not smuggle anything into them.
pub fn correlation_id(headers: &HeaderMap) -> String {
    let given = [CORRELATION_HEADER, "x-request-id"]
        .iter()
        .filter_map(|name| headers.get(*name))
        .filter_map(|v| v.to_str().ok())
        .find(|v| {
            !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    match given {
        Some(id) => id.to_string(),
        None => {
            let mut bytes = [0u8; 16];
            rand::rng().fill_bytes(&mut bytes);
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
    }
}

fn meta(correlation_id: &str) -> Value {
    json!({
        "version": 1,
        "timestamp": jiff::Timestamp::now().to_string(),
        "correlation_id": correlation_id,
    })
}

/// An error answer: `status`, a stable machine `code` and a message for people.
pub fn error(status: StatusCode, code: &str, message: &str, correlation_id: &str) -> Response {
    let body = json!({
        "status": "error",
        "error": {"code": code, "message": message},
        "meta": meta(correlation_id),
    });
    respond(status, &body, correlation_id)
}

/// A successful answer carrying `data`.
pub fn ok(status: StatusCode, data: Value, correlation_id: &str) -> Response {
    let body = json!({"status": "ok", "data": data, "meta": meta(correlation_id)});
    respond(status, &body, correlation_id)
}

fn respond(status: StatusCode, body: &Value, correlation_id: &str) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(value) = HeaderValue::from_str(correlation_id) {
        headers.insert(CORRELATION_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_correlation_id_is_kept_and_a_dirty_one_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("req-42"));
        assert_eq!(correlation_id(&headers), "req-42");
        headers.insert(CORRELATION_HEADER, HeaderValue::from_static("a b\"c"));
        let fresh = correlation_id(&headers);
        assert_eq!(fresh, "req-42", "the dirty one is skipped, the next is used");
        let mut only_dirty = HeaderMap::new();
        only_dirty.insert(CORRELATION_HEADER, HeaderValue::from_static("<script>"));
        let fresh = correlation_id(&only_dirty);
        assert_eq!(fresh.len(), 32);
        assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
