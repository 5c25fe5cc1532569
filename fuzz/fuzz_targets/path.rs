//! Path normalization and rule matching: no panic; a path that passes is canonical (it
//! normalizes to itself) and routes the same way whatever the app's declared routing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::policy::authz::Matcher;
use portcullis_proxy::policy::path::normalize;
use portcullis_wire::{HttpMethod, PathMatching, PolicyRule};

fn rule(name: &str, path: &str) -> PolicyRule {
    serde_json::from_value(serde_json::json!({"name": name, "paths": [path]})).unwrap_or_else(|_| unreachable!())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((path, _query)) = normalize(text) else {
        return;
    };
    let (again, query) = normalize(&path.canonical).unwrap_or_else(|e| panic!("{text:?} → {:?}: {e}", path.canonical));
    assert_eq!(again, path, "canonical paths are fixed points");
    assert_eq!(query, None);
    let rules = [
        rule("admin", "/api/v1/admin/**"),
        rule("team", "/api/v1/teams/{team}/**"),
        rule("one", "/api/v1/*/x"),
        rule("all", "/api/**"),
    ];
    for matching in [
        PathMatching::default(),
        PathMatching { case_insensitive: true, ignore_trailing_slash: true },
    ] {
        let Ok(matcher) = Matcher::compile_with(&rules, matching) else {
            return;
        };
        let _ = matcher.route(HttpMethod::Get, &path);
    }
});
