//! CORS from the policy (preflights answered here, never by the app) and the
//! `Deprecation` / `Sunset` headers of deprecated API versions.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use portcullis_wire::{ApiVersion, Cors, HttpMethod};

use super::answer::{Answer, ResponseEdits};
use super::headers::{DEPRECATION, SUNSET};

/// Why a preflight was refused (the message of the 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorsRefused {
    #[error("origin not allowed")]
    Origin,
    #[error("method {0} not allowed")]
    Method(String),
    #[error("header {0} not allowed")]
    Header(String),
}

/// Whether the request is a CORS preflight (and not a plain OPTIONS call to the app).
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The request's origin when the policy allows it. `*` allows any origin only without
/// credentials: with them, echoing any origin would let every site call the API as the
/// browser's user, so only origins listed by name are granted (the operator refuses such a
/// policy; this holds for a snapshot from anywhere else).
fn allowed_origin<'h>(cors: &Cors, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    let wildcard = !cors.allow_credentials;
    cors.allowed_origins
        .iter()
        .any(|o| (o == "*" && wildcard) || (o != "*" && o.eq_ignore_ascii_case(text)))
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
pub fn preflight(cors: &Cors, headers: &HeaderMap) -> Result<Answer, CorsRefused> {
    let origin = allowed_origin(cors, headers).ok_or(CorsRefused::Origin)?;
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
        return Err(CorsRefused::Method(requested.to_string()));
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
            return Err(CorsRefused::Header(h.to_string()));
        }
    }
    let mut answer = Answer::empty(StatusCode::NO_CONTENT);
    let out = &mut answer.headers;
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
    Ok(answer)
}

/// CORS headers on an actual cross-origin response.
pub fn decorate(cors: &Cors, request: &HeaderMap, response: &mut ResponseEdits) {
    let Some(origin) = allowed_origin(cors, request) else {
        return;
    };
    response.set(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    response.append(header::VARY, HeaderValue::from_static("Origin"));
    if cors.allow_credentials {
        response.set(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(", "))
    {
        response.set(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
}

/// `Deprecation` (RFC 9745, `@<unix seconds>`), `Sunset` (RFC 8594, HTTP date) and
/// `Link: <…>; rel="deprecation"` for a deprecated API version.
pub fn deprecation(version: &ApiVersion, response: &mut ResponseEdits) {
    let date = |d: &str| {
        d.parse::<jiff::civil::Date>()
            .ok()?
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
    };
    match version.deprecated.as_deref().and_then(date) {
        Some(when) => {
            if let Ok(v) = HeaderValue::from_str(&format!("@{}", when.timestamp().as_second())) {
                response.set(DEPRECATION, v);
            }
        }
        None => {
            response.set(DEPRECATION, HeaderValue::from_static("true"));
        }
    }
    if let Some(when) = version.sunset.as_deref().and_then(date) {
        let http_date = when.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string();
        if let Ok(v) = HeaderValue::from_str(&http_date) {
            response.set(SUNSET, v);
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
        let ok = preflight(&cors(), &request("https://app.example.com", "POST", "content-type")).unwrap();
        assert_eq!(ok.status, 204);
        let h = &ok.headers;
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "content-type");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(
            preflight(&cors(), &request("https://evil.example", "GET", "")).err(),
            Some(CorsRefused::Origin)
        );
        assert_eq!(
            preflight(&cors(), &request("https://app.example.com", "DELETE", "")).err(),
            Some(CorsRefused::Method("DELETE".into()))
        );
        assert_eq!(
            preflight(&cors(), &request("https://app.example.com", "GET", "x-evil")).err(),
            Some(CorsRefused::Header("x-evil".into()))
        );
    }

    #[test]
    fn responses_carry_cors_only_for_allowed_origins() {
        let mut out = ResponseEdits::new(HeaderValue::from_static("c"));
        decorate(&cors(), &request("https://evil.example", "GET", ""), &mut out);
        assert_eq!(out.iter().count(), 0);
        decorate(&cors(), &request("https://app.example.com", "GET", ""), &mut out);
        assert_eq!(
            out.get(&header::ACCESS_CONTROL_EXPOSE_HEADERS).unwrap(),
            "X-Correlation-ID"
        );
        assert_eq!(
            out.iter()
                .find(|(name, ..)| **name == header::VARY)
                .map(|(.., replace)| replace),
            Some(false),
            "Vary goes beside the app's"
        );
    }

    #[test]
    fn any_origin_never_gets_credentials() {
        let wildcard = Cors {
            allowed_origins: vec!["*".into()],
            ..cors()
        };
        assert!(wildcard.wildcard_with_credentials());
        assert_eq!(
            preflight(&wildcard, &request("https://evil.example", "GET", "")).err(),
            Some(CorsRefused::Origin),
            "no grant for a site the policy does not name"
        );
        let mut out = ResponseEdits::new(HeaderValue::from_static("c"));
        decorate(&wildcard, &request("https://evil.example", "GET", ""), &mut out);
        assert_eq!(out.iter().count(), 0, "no Access-Control-* header at all");
        // Named beside `*`, an origin keeps its credentialed grant.
        let named = Cors {
            allowed_origins: vec!["*".into(), "https://app.example.com".into()],
            ..cors()
        };
        let ok = preflight(&named, &request("https://app.example.com", "GET", "")).unwrap();
        assert_eq!(ok.headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        // Without credentials `*` still means any origin.
        let open = Cors {
            allow_credentials: false,
            ..wildcard
        };
        let ok = preflight(&open, &request("https://any.example", "GET", "")).unwrap();
        assert!(!ok.headers.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }

    #[test]
    fn deprecation_headers_follow_the_rfcs() {
        let v = ApiVersion {
            prefix: "/api/v1".into(),
            deprecated: Some("2026-01-01".into()),
            sunset: Some("2027-06-30".into()),
            link: Some("https://example.com/migrate".into()),
        };
        let mut out = ResponseEdits::new(HeaderValue::from_static("c"));
        deprecation(&v, &mut out);
        assert_eq!(out.get(&DEPRECATION).unwrap(), "@1767225600");
        assert_eq!(out.get(&SUNSET).unwrap(), "Wed, 30 Jun 2027 00:00:00 GMT");
        assert_eq!(
            out.get(&header::LINK).unwrap(),
            "<https://example.com/migrate>; rel=\"deprecation\""
        );
    }
}
