//! The headers the policy reads and writes, as constants (a `&str` name is parsed and
//! validated on every use, a `HeaderName` constant never is), and which of a client's
//! headers never reach the app, under any spelling an app server reads alike.

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
pub const X_AUTH_SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
pub const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
pub const SUNSET: HeaderName = HeaderName::from_static("sunset");

/// When a client's header (in its exact spelling) may still reach the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Never: the sidecar sets it, read it beforehand, or the app may take it as an
    /// identity or as a rewrite of the request the policy did not see.
    Never,
    /// Only from a `--trusted-proxy` peer: where the request came from and how.
    FromTrustedProxy,
    /// Only when the matched rule forwards the credential (`forwardApiKey`).
    WhenForwardingKey,
}

/// Headers by name (lower case, `-` between words), and what may bring them to the app.
const NAMED: &[(&str, Reach)] = &[
    // Set by the sidecar, or read by it first and replaced.
    ("x-correlation-id", Reach::Never),
    ("x-forwarded-for", Reach::Never),
    ("x-forwarded-proto", Reach::Never),
    ("x-client-cert", Reach::Never),
    // Identities other auth proxies hand to apps (oauth2-proxy, Apache, Grafana's auth
    // proxy, Envoy, nginx): an app migrating to Portcullis may still trust them.
    ("x-forwarded-user", Reach::Never),
    ("x-forwarded-email", Reach::Never),
    ("x-forwarded-preferred-username", Reach::Never),
    ("x-forwarded-groups", Reach::Never),
    ("x-forwarded-access-token", Reach::Never),
    ("x-remote-user", Reach::Never),
    ("x-remote-group", Reach::Never),
    ("x-remote-groups", Reach::Never),
    ("x-remote-email", Reach::Never),
    ("x-remote-name", Reach::Never),
    ("remote-user", Reach::Never),
    ("x-webauth-user", Reach::Never),
    ("x-webauth-email", Reach::Never),
    ("x-forwarded-client-cert", Reach::Never),
    ("x-client-cert-chain", Reach::Never),
    ("x-client-verify", Reach::Never),
    ("x-client-dn", Reach::Never),
    ("x-ssl-cert", Reach::Never),
    ("ssl-client-cert", Reach::Never),
    ("ssl-client-verify", Reach::Never),
    // Rewrites of the method or the path behind the policy's back.
    ("x-http-method-override", Reach::Never),
    ("x-http-method", Reach::Never),
    ("x-method-override", Reach::Never),
    ("x-original-method", Reach::Never),
    ("x-original-url", Reach::Never),
    ("x-original-uri", Reach::Never),
    ("x-original-path", Reach::Never),
    ("x-rewrite-url", Reach::Never),
    ("x-envoy-original-path", Reach::Never),
    // Where the request came from and how: believed from a trusted proxy only.
    ("forwarded", Reach::FromTrustedProxy),
    ("x-forwarded-host", Reach::FromTrustedProxy),
    ("x-forwarded-port", Reach::FromTrustedProxy),
    ("x-forwarded-prefix", Reach::FromTrustedProxy),
    ("x-forwarded-server", Reach::FromTrustedProxy),
    ("x-forwarded-scheme", Reach::FromTrustedProxy),
    ("x-forwarded-ssl", Reach::FromTrustedProxy),
    ("x-original-forwarded-for", Reach::FromTrustedProxy),
    ("x-original-host", Reach::FromTrustedProxy),
    ("x-host", Reach::FromTrustedProxy),
    ("x-real-ip", Reach::FromTrustedProxy),
    ("true-client-ip", Reach::FromTrustedProxy),
    ("x-client-ip", Reach::FromTrustedProxy),
    ("x-cluster-client-ip", Reach::FromTrustedProxy),
    ("cf-connecting-ip", Reach::FromTrustedProxy),
    ("fastly-client-ip", Reach::FromTrustedProxy),
    ("front-end-https", Reach::FromTrustedProxy),
    ("x-url-scheme", Reach::FromTrustedProxy),
    // A credential the sidecar consumed.
    ("x-api-key", Reach::WhenForwardingKey),
];

/// Families of identity headers, by prefix: ours (`X-Auth-*`, every one of them, present
/// or future), and those of other proxies and clouds.
const PREFIXES: &[&str] = &[
    "x-auth-",
    "x-ssl-client-",
    "x-ms-client-principal",
    "x-goog-authenticated-user-",
    "cf-access-authenticated-user-",
    "x-amzn-oidc-",
];

/// Longest name in [`NAMED`], plus one: the table's size.
const BY_LEN: usize = 32;

/// The names of one length, with what may bring each to the app.
type SameLength = Vec<(&'static [u8], Reach)>;

/// [`NAMED`] by name length, so that a header is compared with the two or three names of
/// its length rather than with all of them. Built once.
static TABLE: std::sync::LazyLock<[SameLength; BY_LEN]> = std::sync::LazyLock::new(|| {
    let mut table: [SameLength; BY_LEN] = std::array::from_fn(|_| Vec::new());
    for &(name, reach) in NAMED {
        if let Some(slot) = table.get_mut(name.len()) {
            slot.push((name.as_bytes(), reach));
        }
    }
    table
});

/// A header name as WSGI, Rack and CGI read it: case folded, `_` and `-` alike
/// (`X_Auth_User` and `x-auth-user` both become `HTTP_X_AUTH_USER`).
#[inline]
fn fold(b: u8) -> u8 {
    if b == b'_' { b'-' } else { b.to_ascii_lowercase() }
}

/// Whether `name` is `canonical` (lower case, `-`) once folded.
#[inline]
fn same(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len() && name.iter().zip(canonical).all(|(&n, &c)| fold(n) == c)
}

/// Whether `name` starts with `prefix` (lower case, `-`) once folded.
#[inline]
fn starts(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && same(&name[..prefix.len()], prefix)
}

/// What decides which of a client's headers reach the app, besides their names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientHeaders {
    /// The peer is a `--trusted-proxy`: its forwarding headers are believed.
    pub trusted_peer: bool,
    /// The matched rule passes the client's `X-API-Key` on (`forwardApiKey`).
    pub forward_api_key: bool,
}

impl ClientHeaders {
    /// Whether a client's header must not reach the app: it collides, once folded the way
    /// app servers fold names, with a header the sidecar sets or reserves, another
    /// proxy's identity header, or a rewrite of the request. Another spelling of such a
    /// header (`X_Forwarded_Host`) never reaches the app, whoever sent it. One table
    /// lookup by length, no allocation.
    pub fn drops(self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        if PREFIXES.iter().any(|p| starts(name, p.as_bytes())) {
            return true;
        }
        let Some(candidates) = TABLE.get(name.len()) else {
            return false;
        };
        for &(canonical, reach) in candidates {
            if !same(name, canonical) {
                continue;
            }
            let exact = name == canonical;
            return match reach {
                Reach::Never => true,
                Reach::FromTrustedProxy => !(exact && self.trusted_peer),
                Reach::WhenForwardingKey => !(exact && self.forward_api_key),
            };
        }
        false
    }
}

/// Whether a client's header is one the app must never get from the client, whatever the
/// peer and the rule (see [`ClientHeaders::drops`] for the rest).
pub fn is_reserved(name: &HeaderName) -> bool {
    ClientHeaders {
        trusted_peer: true,
        forward_api_key: true,
    }
    .drops(name)
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

    #[test]
    fn every_spelling_an_app_server_folds_together_is_dropped() {
        let plain = ClientHeaders::default();
        let trusted = ClientHeaders {
            trusted_peer: true,
            forward_api_key: true,
        };
        for name in [
            "x_auth_user",
            "x-auth_roles",
            "x_auth-subject",
            "x_forwarded_user",
            "x-forwarded_email",
            "remote_user",
            "x_remote_user",
            "x-ssl-client-s-dn",
            "x_ssl_client_verify",
            "x_http_method_override",
            "x-original_url",
            "x_client_cert",
            "x_correlation_id",
            "x_forwarded_for",
            "x_forwarded_host",
            "x_real_ip",
            "x_api_key",
            "x-ms-client-principal-name",
        ] {
            let header = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(plain.drops(&header), "{name}");
            assert!(
                trusted.drops(&header),
                "{name}: no other spelling, even from a trusted proxy"
            );
        }
        for name in ["forwarded", "x-forwarded-host", "x-real-ip", "true-client-ip"] {
            let header = HeaderName::from_static(name);
            assert!(plain.drops(&header), "{name} from anyone");
            assert!(!trusted.drops(&header), "{name} from a trusted proxy");
        }
        let key = HeaderName::from_static("x-api-key");
        assert!(plain.drops(&key));
        assert!(
            !ClientHeaders {
                trusted_peer: false,
                forward_api_key: true
            }
            .drops(&key)
        );
        for name in [
            "x-app",
            "x_app_thing",
            "accept",
            "x-request-id",
            "x-forwarded",
            "authorization",
        ] {
            let header = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(!plain.drops(&header), "{name}");
        }
        assert!(NAMED.iter().all(|(n, _)| n.len() < BY_LEN && !n.contains('_')));
    }
}
