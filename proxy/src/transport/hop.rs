//! Hop-by-hop headers (RFC 9110 §7.6.1): what describes one connection and never crosses
//! the sidecar, and the one reading of a `Connection` header that every part uses.

use hyper::header::{HeaderMap, HeaderName};

/// Whether a header (name in any case, as read off the wire) describes one hop.
pub fn is_hop_by_hop(name: &[u8], value: &[u8]) -> bool {
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

/// The members of a list-valued header: split at commas, trimmed, empty ones skipped.
pub fn members(value: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|member| !member.is_empty())
}

/// What a `Connection` header value says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Connection {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// It names other headers as hop-by-hop (see [`named`]).
    pub names_headers: bool,
}

impl Connection {
    pub fn read(value: &[u8]) -> Connection {
        let mut read = Connection::default();
        for token in members(value) {
            if token.eq_ignore_ascii_case(b"close") {
                read.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                read.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                read.upgrade = true;
            } else {
                read.names_headers = true;
            }
        }
        read
    }
}

/// The headers a `Connection` value names as this hop's own. `close`, `keep-alive` and
/// `upgrade` name none: the first is no header, the other two are hop-by-hop anyway.
pub fn named(value: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    members(value).filter(|token| {
        !token.eq_ignore_ascii_case(b"close")
            && !token.eq_ignore_ascii_case(b"keep-alive")
            && !token.eq_ignore_ascii_case(b"upgrade")
    })
}

/// Removes the hop-by-hop headers, those `Connection` names, and in the same pass the
/// headers `also` picks.
pub fn strip(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    // One pass over what is there (usually none of these), rather than a hashed removal
    // of every name that could be.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        let hop = is_hop_by_hop(name.as_str().as_bytes(), value.as_bytes());
        if !hop && !also(name) {
            continue;
        }
        if !doomed.contains(name) {
            doomed.push(name.clone());
        }
        if hop && *name == hyper::header::CONNECTION {
            doomed.extend(named(value.as_bytes()).filter_map(|token| HeaderName::from_bytes(token).ok()));
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::{self, HeaderValue};

    use super::*;

    #[test]
    fn hop_by_hop_headers_do_not_cross() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip(&mut h, |_| false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-app"], "kept");
        let mut grpc = HeaderMap::new();
        grpc.insert(header::TE, HeaderValue::from_static("trailers"));
        strip(&mut grpc, |_| false);
        assert_eq!(grpc[header::TE], "trailers");
        // Named by Connection, even `te: trailers` is this hop's alone.
        let mut named = HeaderMap::new();
        named.insert(header::CONNECTION, HeaderValue::from_static("TE"));
        named.insert(header::TE, HeaderValue::from_static("trailers"));
        strip(&mut named, |_| false);
        assert!(named.is_empty(), "{named:?}");
        // What `also` picks goes in the same pass.
        let mut ours = HeaderMap::new();
        ours.insert("x-auth-user", HeaderValue::from_static("admin"));
        ours.insert("x-app", HeaderValue::from_static("kept"));
        strip(&mut ours, |name| name.as_str().starts_with("x-auth-"));
        assert_eq!(ours.len(), 1);
    }

    #[test]
    fn connection_values_are_read_one_way() {
        let read = Connection::read(b" Keep-Alive ,, close,Upgrade, x-a ");
        assert_eq!(
            read,
            Connection {
                close: true,
                keep_alive: true,
                upgrade: true,
                names_headers: true
            }
        );
        assert_eq!(
            named(b"close, x-a,keep-alive, X-B ,").collect::<Vec<_>>(),
            [&b"x-a"[..], b"X-B"]
        );
        assert_eq!(Connection::read(b""), Connection::default());
    }
}
