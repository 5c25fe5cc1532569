//! AccessPolicy path globs: one parser, used by the operator (to refuse a policy the
//! sidecar could not enforce) and by the sidecar (to compile it).

use std::fmt;

/// One segment of a compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `*`: any one non-empty segment.
    Any,
    /// `{team}`: any one non-empty segment, captured as the team.
    Team,
    /// `**`, last only: any number of remaining segments, including none.
    Rest,
}

/// Why a glob was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobError {
    pub glob: String,
    pub reason: &'static str,
}

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.glob, self.reason)
    }
}

impl std::error::Error for GlobError {}

/// Parses a glob: segments are literals, `*`, `{team}`, or a final `**`. Literals
/// must be what a normalized request path can hold (no dot segments, no `%`, `\`, `;`),
/// or the rule could never match.
pub fn parse(glob: &str) -> Result<Vec<Segment>, GlobError> {
    let err = |reason| GlobError {
        glob: glob.to_string(),
        reason,
    };
    let rest = glob.strip_prefix('/').ok_or_else(|| err("does not start with /"))?;
    let raw: Vec<&str> = if rest.is_empty() {
        vec![""]
    } else {
        rest.split('/').collect()
    };
    let last = raw.len() - 1;
    let mut segments = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        segments.push(match *s {
            "**" if i == last => Segment::Rest,
            "**" => return Err(err("** is only allowed as the last segment")),
            "*" => Segment::Any,
            "{team}" => Segment::Team,
            "" if i != last => return Err(err("empty segment")),
            "." | ".." => return Err(err("dot segments never match a normalized path")),
            s if s.contains(['*', '{', '}']) => return Err(err("a wildcard or capture mixed with text")),
            s if s.contains(['%', '\\', ';']) || s.bytes().any(|b| b < 0x20 || b == 0x7f) => {
                return Err(err("a character the sidecar refuses in paths"));
            }
            s => Segment::Literal(s.to_string()),
        });
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_sidecar_can_match() {
        assert_eq!(
            parse("/api/v1/teams/{team}/**").unwrap(),
            vec![
                Segment::Literal("api".into()),
                Segment::Literal("v1".into()),
                Segment::Literal("teams".into()),
                Segment::Team,
                Segment::Rest
            ]
        );
        for ok in ["/healthz", "/api/*/items", "/api/v1/", "/"] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "api",
            "/a/**/b",
            "/a//b",
            "/a/../b",
            "/a/x*",
            "/a/{team}x",
            "/a/%2e",
            "/a\\b",
            "/a;b",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
