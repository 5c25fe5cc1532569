//! A snapshot file, re-read when it changes: what the control plane's local mode writes,
//! and what tests and benchmarks use.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tracing::warn;

use super::Installer;

/// Watches a snapshot file: read at start, then again whenever its modification time
/// or size changes (checked every `interval`; writers should rename into place).
pub async fn watch(path: PathBuf, interval: Duration, installer: Installer) {
    let current = &installer.current;
    let origin = path.display().to_string();
    let mut seen: Option<(SystemTime, u64)> = None;
    // The caller may have loaded the file already (before listening): do not load it twice.
    if current.load().is_some()
        && let Ok(meta) = std::fs::metadata(&path)
    {
        seen = Some((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len()));
    }
    loop {
        match tokio::fs::metadata(&path).await {
            Ok(meta) => {
                let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
                if seen != Some(stamp) {
                    // Parsed as it is read, on a blocking thread: never held whole.
                    let (reading, from, installing) = (path.clone(), origin.clone(), installer.clone());
                    let read = tokio::task::spawn_blocking(move || {
                        std::fs::File::open(&reading).map(|file| installing.apply_reader(file, &from))
                    })
                    .await;
                    match read {
                        Ok(Ok(_)) => seen = Some(stamp),
                        Ok(Err(e)) => warn!(feed = %origin, error = %e, "cannot read snapshot file"),
                        Err(e) => warn!(feed = %origin, error = %e, "snapshot file reader failed"),
                    }
                } else if current.load().is_some() {
                    // The file is the source of truth and it has not changed: still current.
                    current.confirm();
                }
            }
            Err(e) => warn!(feed = %origin, error = %e, "cannot read snapshot file"),
        }
        tokio::time::sleep(interval).await;
    }
}
