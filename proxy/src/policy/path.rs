//! Request paths, normalized once: the same canonical path is matched against the
//! policy and forwarded to the app, so the two can never disagree about what was
//! asked. Anything a common framework could read as another path is refused (400)
//! rather than guessed, in the spirit of Spring Security's `StrictHttpFirewall` and
//! Envoy's path normalization: dot segments (plain or encoded), encoded slashes and
//! backslashes, backslashes, empty segments (`//`), `;` path parameters (plain or
//! `%3B`: Tomcat and Jetty strip them), an encoded `%` (`%25`: an app or a proxy that
//! decodes twice would read `%252e%252e` as `..`), NUL and control bytes, bad
//! percent-encoding, a segment with leading or trailing whitespace (trimmed by some
//! routers), and anything not ASCII once decoded (Unicode case folding and
//! compatibility forms, such as the Kelvin sign or fullwidth letters, and overlong
//! UTF-8 such as `%c0%ae`). The query string is split off first and never takes part in
//! matching. Case and a trailing slash are the matcher's business (see
//! [`super::authz::Matcher::route`]).

use std::fmt;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    DotSegment,
    EmptySegment,
    EncodedSlash,
    Backslash,
    PathParameter,
    EncodedPercent,
    ControlByte,
    BadPercentEncoding,
    Whitespace,
    NotAscii,
    /// The path meets another rule when read as an app that ignores case or a trailing
    /// slash would read it.
    AmbiguousRoute,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path must start with /",
            PathError::DotSegment => "the path holds a . or .. segment",
            PathError::EmptySegment => "the path holds an empty segment (//)",
            PathError::EncodedSlash => "the path holds an encoded / or \\",
            PathError::Backslash => "the path holds a backslash",
            PathError::PathParameter => "the path holds a ; parameter (plain or encoded)",
            PathError::EncodedPercent => "the path holds an encoded % (%25)",
            PathError::ControlByte => "the path holds a control byte",
            PathError::BadPercentEncoding => "the path holds a bad percent-encoding",
            PathError::Whitespace => "a path segment starts or ends with whitespace",
            PathError::NotAscii => "the path holds characters outside ASCII",
            PathError::AmbiguousRoute => {
                "the path meets another rule if case or a trailing slash is ignored; \
                 an AccessPolicy says how its app routes (caseInsensitive, ignoreTrailingSlash)"
            }
        })
    }
}

impl std::error::Error for PathError {}

/// A path that passed [`normalize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// Decoded segments, what the policy matches (`/a/b/` → `["a", "b", ""]`).
    pub segments: Vec<String>,
    /// The canonical form, what is forwarded: decoded, then re-encoded where needed.
    pub canonical: String,
}

/// Splits `path_and_query` at `?` and normalizes the path part. Returns the
/// normalized path and the query (untouched, never matched).
pub fn normalize(path_and_query: &str) -> Result<(NormalizedPath, Option<&str>), PathError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let raw_segments: Vec<&str> = if rest.is_empty() {
        vec![""]
    } else {
        rest.split('/').collect()
    };
    let last = raw_segments.len() - 1;
    let mut segments = Vec::with_capacity(raw_segments.len());
    let mut canonical = String::with_capacity(path.len());
    for (i, raw) in raw_segments.iter().enumerate() {
        if raw.is_empty() && i != last {
            return Err(PathError::EmptySegment);
        }
        let decoded = decode_segment(raw)?;
        if decoded == "." || decoded == ".." {
            return Err(PathError::DotSegment);
        }
        if decoded.starts_with(' ') || decoded.ends_with(' ') {
            return Err(PathError::Whitespace);
        }
        canonical.push('/');
        encode_segment(&decoded, &mut canonical);
        segments.push(decoded);
    }
    Ok((NormalizedPath { segments, canonical }, query))
}

fn decode_segment(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let byte = match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadPercentEncoding)?;
                let value = hex_value(hex[0])
                    .zip(hex_value(hex[1]))
                    .map(|(h, l)| h << 4 | l)
                    .ok_or(PathError::BadPercentEncoding)?;
                i += 3;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    b';' => return Err(PathError::PathParameter),
                    b'%' => return Err(PathError::EncodedPercent),
                    _ => value,
                }
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::PathParameter),
            _ => {
                i += 1;
                b
            }
        };
        if byte < 0x20 || byte == 0x7f {
            return Err(PathError::ControlByte);
        }
        if !byte.is_ascii() {
            return Err(PathError::NotAscii);
        }
        out.push(byte);
    }
    // ASCII throughout, so always UTF-8.
    String::from_utf8(out).map_err(|_| PathError::NotAscii)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes what may not stand in a path segment (RFC 3986 `pchar`).
fn encode_segment(segment: &str, out: &mut String) {
    for &b in segment.as_bytes() {
        let plain = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b':'
                    | b'@'
            );
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> (Vec<String>, String) {
        let (p, _) = normalize(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        (p.segments, p.canonical)
    }

    #[test]
    fn plain_paths_pass_and_the_query_is_split_off() {
        assert_eq!(ok("/"), (vec![String::new()], "/".to_string()));
        assert_eq!(ok("/api/v1/items").1, "/api/v1/items");
        assert_eq!(ok("/api/v1/items/").0, ["api", "v1", "items", ""]);
        let (p, q) = normalize("/api/v1/items?x=/../admin&y=%2F").unwrap();
        assert_eq!((p.canonical.as_str(), q), ("/api/v1/items", Some("x=/../admin&y=%2F")));
    }

    #[test]
    fn encodings_are_decoded_once_and_forwarded_canonically() {
        // What is matched is what is forwarded: `%61dmin` is `admin` for both.
        assert_eq!(
            ok("/api/v1/%61dmin"),
            (vec!["api".into(), "v1".into(), "admin".into()], "/api/v1/admin".into())
        );
        assert_eq!(ok("/files/a%20b").1, "/files/a%20b");
        assert_eq!(ok("/users/alice@example.com").1, "/users/alice@example.com");
        assert_eq!(
            ok("/a/B/c%41").1,
            "/a/B/cA",
            "case is kept: the matcher decides about it"
        );
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (path, why) in [
            ("api/v1", PathError::NotAbsolute),
            ("/api/v1/../admin", PathError::DotSegment),
            ("/api/./v1", PathError::DotSegment),
            ("/api/v1/%2e%2e/admin", PathError::DotSegment),
            ("/api/v1/%2E%2e/admin", PathError::DotSegment),
            ("/api/v1/.%2e", PathError::DotSegment),
            ("/api/v1%2Fadmin", PathError::EncodedSlash),
            ("/api/v1%2fadmin", PathError::EncodedSlash),
            ("/api/v1%5cadmin", PathError::EncodedSlash),
            ("/api\\v1", PathError::Backslash),
            ("//api/v1", PathError::EmptySegment),
            ("/api//v1", PathError::EmptySegment),
            ("/api/v1;jsessionid=1/admin", PathError::PathParameter),
            ("/api/v1/%00", PathError::ControlByte),
            ("/api/v1/%0a", PathError::ControlByte),
            ("/api/v1/\u{7f}", PathError::ControlByte),
            ("/api/v1/%zz", PathError::BadPercentEncoding),
            ("/api/v1/%4", PathError::BadPercentEncoding),
            ("/api/%c0%ae%c0%ae/admin", PathError::NotAscii),
            ("/api/%ff", PathError::NotAscii),
            ("/caf%C3%A9", PathError::NotAscii),
            ("/caf\u{e9}", PathError::NotAscii),
            ("/api/v1/\u{212a}ey", PathError::NotAscii),
            ("/api/v1/%EF%BD%81dmin", PathError::NotAscii),
            ("/api/v1%3Badmin", PathError::PathParameter),
            ("/api/v1/admin%3bjsessionid=x", PathError::PathParameter),
            ("/api/v1/%252e%252e/admin", PathError::EncodedPercent),
            ("/api/v1/%2561dmin", PathError::EncodedPercent),
            ("/api/v1/admin%20", PathError::Whitespace),
            ("/api/v1/%20admin", PathError::Whitespace),
            ("/api/v1/admin%09", PathError::ControlByte),
        ] {
            assert_eq!(normalize(path).map(|_| ()), Err(why), "{path}");
        }
    }
}
