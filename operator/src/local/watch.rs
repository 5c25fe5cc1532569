//! Directory watch: notices edits to the manifests by polling a fingerprint (names,
//! modification times and sizes of the YAML files), which works on every filesystem
//! and needs no extra crate.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often watch mode looks at the directory.
pub const POLL: Duration = Duration::from_millis(500);

/// A fingerprint of the directory's YAML files, to notice edits.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<std::time::SystemTime>, u64)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .map(|p| {
                    let meta = std::fs::metadata(&p).ok();
                    let modified = meta.as_ref().and_then(|m| m.modified().ok());
                    let len = meta.map_or(0, |m| m.len());
                    (p, modified, len)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
