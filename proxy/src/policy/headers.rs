//! The headers the policy reads and writes, as constants (a `&str` name is parsed and
//! validated on every use, a `HeaderName` constant never is), and which headers a client
//! may never hand to the app.

use hyper::header::HeaderName;

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

/// Identity headers the app trusts; a client never gets to set them.
const IDENTITY_PREFIX: &[u8] = b"x-auth-";

/// Whether a client's header is one the app must never get from the client: our identity
/// headers (any `X-Auth-*`), a forwarded client certificate (read beforehand, from trusted
/// peers only), and the client's correlation id and forwarding headers (read beforehand;
/// ours replace them).
pub fn is_reserved(name: &HeaderName) -> bool {
    name.as_str().as_bytes().starts_with(IDENTITY_PREFIX)
        || matches!(
            name.as_str(),
            "x-client-cert" | "x-correlation-id" | "x-forwarded-for" | "x-forwarded-proto"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_from_clients_are_reserved() {
        for name in [
            "x-auth-user",
            "x-auth-roles",
            "x-auth-anything",
            "x-client-cert",
            "x-forwarded-for",
        ] {
            assert!(is_reserved(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["x-authority", "authorization", "x-app"] {
            assert!(!is_reserved(&HeaderName::from_static(name)), "{name}");
        }
    }
}
