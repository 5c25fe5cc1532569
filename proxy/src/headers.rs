//! Header names the sidecar reads and writes, as constants: a `&str` name is parsed and
//! validated on every use, a `HeaderName` constant never is.

use hyper::header::{HeaderName, HeaderValue};

pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const X_CLIENT_CERT: HeaderName = HeaderName::from_static("x-client-cert");
pub const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_AUTH_USER: HeaderName = HeaderName::from_static("x-auth-user");
pub const X_AUTH_EMAIL: HeaderName = HeaderName::from_static("x-auth-email");
pub const X_AUTH_ROLES: HeaderName = HeaderName::from_static("x-auth-roles");
pub const X_AUTH_SCOPES: HeaderName = HeaderName::from_static("x-auth-scopes");
pub const X_AUTH_TEAMS: HeaderName = HeaderName::from_static("x-auth-teams");
pub const X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");
pub const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
pub const SUNSET: HeaderName = HeaderName::from_static("sunset");

/// Whether a header describes one hop and must not be forwarded (RFC 9110 §7.6.1).
pub fn is_hop_by_hop(name: &HeaderName, value: &HeaderValue) -> bool {
    is_hop_by_hop_raw(name.as_str().as_bytes(), value.as_bytes())
}

/// [`is_hop_by_hop`] for a name in any case, as read off the wire.
pub fn is_hop_by_hop_raw(name: &[u8], value: &[u8]) -> bool {
    const HOP: [&[u8]; 8] = [
        b"connection",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"trailer",
        b"keep-alive",
        b"proxy-connection",
    ];
    if name.eq_ignore_ascii_case(b"te") {
        // `te: trailers` is how gRPC says it understands trailers; anything else is hop-by-hop.
        return !value.eq_ignore_ascii_case(b"trailers");
    }
    HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop))
}

/// The headers a `Connection` value names as hop-by-hop. `close`, `keep-alive` and
/// `upgrade`, by far the most common values, are skipped before any name is built: the
/// first names no header, the other two are hop-by-hop whatever their value.
pub fn connection_options(value: &HeaderValue) -> impl Iterator<Item = HeaderName> + '_ {
    connection_tokens(value.as_bytes()).filter_map(|token| HeaderName::from_bytes(token).ok())
}

/// [`connection_options`] as the bytes of each name.
pub fn connection_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|token| {
        !token.is_empty()
            && !token.eq_ignore_ascii_case(b"close")
            && !token.eq_ignore_ascii_case(b"keep-alive")
            && !token.eq_ignore_ascii_case(b"upgrade")
    })
}
