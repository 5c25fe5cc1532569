//! What both binaries need of the process around them: the clock as the wire writes it
//! (Unix seconds), and the signal that stops them (feature `shutdown`).

/// Seconds since the Unix epoch; 0 before it (a broken clock), never a panic.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C. If SIGTERM cannot be
/// listened for, Ctrl-C alone stops the process, and the reason is returned first, for
/// the caller's log.
#[cfg(feature = "shutdown")]
pub async fn shutdown_signal(cannot_listen: impl FnOnce(std::io::Error)) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = ctrl_c => {}
                }
            }
            Err(e) => {
                cannot_listen(e);
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = cannot_listen;
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_reads_unix_seconds() {
        let now = super::unix_now();
        // 2025-01-01 and 2200-01-01: a clock between them is a clock, not a unit error.
        assert!((1_735_689_600..7_258_118_400).contains(&now), "{now}");
    }
}
