//! The layering the folder names promise, kept by reading the sources: the policy does no
//! I/O and knows nothing of the transport or the feed; the feed knows nothing of the
//! transport; `unsafe` lives in one transport file and the binary's allocator set-up.

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            found.push((path, text));
        }
    }
    found
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Lines of code (comments left out) that hold `needle`.
fn uses(text: &str, needle: &str) -> Vec<String> {
    text.lines()
        .map(str::trim_start)
        .filter(|line| !line.starts_with("//"))
        .filter(|line| line.contains(needle))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_policy_does_no_io_and_stands_alone() {
    let forbidden = [
        "tokio::",
        "std::fs",
        "std::net::Tcp",
        "std::net::Udp",
        "std::io::Read",
        "std::io::Write",
        "hyper_util",
        "crate::transport",
        "crate::feed",
        "crate::sidecar",
        "unsafe {",
        "unsafe fn",
        "unsafe impl",
        "unsafe(",
    ];
    let files = sources(&src().join("policy"));
    assert!(files.len() >= 10, "the policy's files are found");
    for (path, text) in files {
        // Tests may build what they need (certificates in a temp dir, say).
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for needle in forbidden {
            assert!(
                uses(code, needle).is_empty(),
                "{} uses {needle}: {:?}",
                path.display(),
                uses(code, needle)
            );
        }
    }
}

#[test]
fn the_feed_does_not_reach_into_the_transport() {
    for (path, text) in sources(&src().join("feed")) {
        assert!(uses(&text, "crate::transport").is_empty(), "{}", path.display());
        assert!(uses(&text, "unsafe {").is_empty(), "{}", path.display());
    }
}

#[test]
fn unsafe_code_lives_in_two_places() {
    let mut holders: Vec<String> = sources(&src())
        .into_iter()
        .filter(|(_, text)| !uses(text, "unsafe {").is_empty() || !uses(text, "unsafe(").is_empty())
        .map(|(path, _)| path.strip_prefix(src()).unwrap().display().to_string())
        .collect();
    holders.sort();
    assert_eq!(holders, ["main.rs", "transport/raw_headers.rs"]);
}
