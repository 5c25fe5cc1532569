//! `portcullis-proxy`: parses the configuration, sets up logs and the runtime, runs the
//! listeners until SIGTERM or Ctrl-C, then drains.

use std::process::ExitCode;

use clap::Parser;
use portcullis_proxy::config::Config;
use portcullis_proxy::server;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(why) = config.validate() {
        eprintln!("error: {why}");
        return ExitCode::from(2);
    }
    // JSON only: the sidecar's logs go to a pipeline, never to a person's terminal first.
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(EnvFilter::new(&config.log))
        .with_writer(std::io::stdout)
        .init();

    // One worker runs on the current-thread scheduler: no work stealing, no cross-thread
    // wake-ups, which is what a sidecar with one core of CPU limit should pay.
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut runtime = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let running = match server::start(&config).await {
            Ok(running) => running,
            Err(why) => {
                error!(error = %why, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        shutdown_signal().await;
        info!("shutting down: draining connections");
        running.shutdown().await;
        info!("stopped");
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
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
                error!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A sidecar's memory is charged to the app's pod. With transparent huge pages on
/// (`always` on many hosts), one touched byte of the allocator's arena can cost a 2 MiB
/// page, so a few megabytes of heap would show as tens. Off for this process only, and
/// before the first allocation: an ELF constructor that runs ahead of the allocator's own.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array.00100")]
static DISABLE_TRANSPARENT_HUGE_PAGES: extern "C" fn() = {
    extern "C" fn disable() {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
    disable
};
