//! CORS from the policy (preflights answered here, never by the app) and the
//! `Deprecation` / `Sunset` headers of deprecated API versions.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use portcullis_wire::{ApiVersion, Cors, HttpMethod};

use crate::Body;

/// Whether the request is a CORS preflight (and not a plain OPTIONS call to the app).
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn allowed_origin<'h>(cors: &Cors, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    cors.allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(text))
        .then_some(origin)
}

fn method_name(m: HttpMethod) -> &'static str {
    match m {
        HttpMethod::Get => "GET",
        HttpMethod::Head => "HEAD",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Options => "OPTIONS",
    }
}

/// The answer to a preflight: 204 with the grant, or 403 without any CORS header
/// when the origin, method or a requested header is not allowed.
pub fn preflight(cors: &Cors, headers: &HeaderMap, body: impl FnOnce() -> Body) -> Result<Response<Body>, String> {
    let origin = allowed_origin(cors, headers).ok_or("origin not allowed")?;
    let requested = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let methods: Vec<&str> = if cors.allowed_methods.is_empty() {
        vec!["GET", "HEAD", "POST"]
    } else {
        cors.allowed_methods.iter().map(|m| method_name(*m)).collect()
    };
    if !methods.contains(&requested) {
        return Err(format!("method {requested} not allowed"));
    }
    let requested_headers = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    for h in requested_headers.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        if !cors
            .allowed_headers
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(h))
        {
            return Err(format!("header {h} not allowed"));
        }
    }
    let mut response = Response::new(body());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    out.insert(header::VARY, HeaderValue::from_static("Origin"));
    if let Ok(v) = HeaderValue::from_str(&methods.join(", ")) {
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if !requested_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(requested_headers)
    {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if cors.allow_credentials {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(age) = cors.max_age_seconds {
        out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age));
    }
    Ok(response)
}

/// CORS headers on an actual cross-origin response.
pub fn decorate(cors: &Cors, request: &HeaderMap, response: &mut HeaderMap) {
    let Some(origin) = allowed_origin(cors, request) else {
        return;
    };
    response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    response.append(header::VARY, HeaderValue::from_static("Origin"));
    if cors.allow_credentials {
        response.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(", "))
    {
        response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

/// `Deprecation` (RFC 9745, `@<unix seconds>`), `Sunset` (RFC 8594, HTTP date) and
/// `Link: <…>; rel="deprecation"` for a deprecated API version.
pub fn deprecation(version: &ApiVersion, response: &mut HeaderMap) {
    let date = |d: &str| {
        d.parse::<jiff::civil::Date>()
            .ok()?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
    };
    match version.deprecated.as_deref().and_then(date) {
        Some(when) => {
            if let Ok(v) = HeaderValue::from_str(&format!("@{}", when.timestamp().as_second())) {
                response.insert(crate::headers::DEPRECATION, v);
            }
        }
        None => {
            response.insert(crate::headers::DEPRECATION, HeaderValue::from_static("true"));
        }
    }
    if let Some(when) = version.sunset.as_deref().and_then(date) {
        let http_date = when.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string();
        if let Ok(v) = HeaderValue::from_str(&http_date) {
            response.insert(crate::headers::SUNSET, v);
        }
    }
    if let Some(link) = &version.link
        && let Ok(v) = HeaderValue::from_str(&format!("<{link}>; rel=\"deprecation\""))
    {
        response.append(header::LINK, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors {
            allowed_origins: vec!["https://app.example.com".into()],
            allowed_methods: vec![HttpMethod::Get, HttpMethod::Post],
            allowed_headers: vec!["Authorization".into(), "Content-Type".into()],
            expose_headers: vec!["X-Correlation-ID".into()],
            allow_credentials: true,
            max_age_seconds: Some(600),
        }
    }

    fn request(origin: &'static str, method: &'static str, headers: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static(origin));
        h.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static(method));
        if !headers.is_empty() {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_static(headers),
            );
        }
        h
    }

    #[test]
    fn preflights_grant_exactly_what_the_policy_allows() {
        let ok = preflight(
            &cors(),
            &request("https://app.example.com", "POST", "content-type"),
            crate::response::empty,
        )
        .unwrap();
        assert_eq!(ok.status(), 204);
        let h = ok.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "content-type");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(
            preflight(
                &cors(),
                &request("https://evil.example", "GET", ""),
                crate::response::empty
            )
            .is_err()
        );
        assert!(
            preflight(
                &cors(),
                &request("https://app.example.com", "DELETE", ""),
                crate::response::empty
            )
            .is_err()
        );
        assert!(
            preflight(
                &cors(),
                &request("https://app.example.com", "GET", "x-evil"),
                crate::response::empty
            )
            .is_err()
        );
    }

    #[test]
    fn responses_carry_cors_only_for_allowed_origins() {
        let mut out = HeaderMap::new();
        decorate(&cors(), &request("https://evil.example", "GET", ""), &mut out);
        assert!(out.is_empty());
        decorate(&cors(), &request("https://app.example.com", "GET", ""), &mut out);
        assert_eq!(out[header::ACCESS_CONTROL_EXPOSE_HEADERS], "X-Correlation-ID");
    }

    #[test]
    fn deprecation_headers_follow_the_rfcs() {
        let v = ApiVersion {
            prefix: "/api/v1".into(),
            deprecated: Some("2026-01-01".into()),
            sunset: Some("2027-06-30".into()),
            link: Some("https://example.com/migrate".into()),
        };
        let mut out = HeaderMap::new();
        deprecation(&v, &mut out);
        assert_eq!(out["deprecation"], "@1767225600");
        assert_eq!(out["sunset"], "Wed, 30 Jun 2027 00:00:00 GMT");
        assert_eq!(out[header::LINK], "<https://example.com/migrate>; rel=\"deprecation\"");
    }
}
