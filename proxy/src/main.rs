//! `portcullis-proxy`: parses the configuration, sets up logs and the runtime, runs the
//! listeners until SIGTERM or Ctrl-C, then drains.

use std::process::ExitCode;

use clap::Parser;
use portcullis_proxy::config::Config;
use portcullis_proxy::sidecar;
use portcullis_wire::process::shutdown_signal;
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
    portcullis_proxy::feed::release_memory_with(release_memory);
    runtime.block_on(async {
        let running = match sidecar::start(&config).await {
            Ok(running) => running,
            Err(why) => {
                error!(error = %why, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        shutdown_signal(|e| error!(error = %e, "cannot listen for SIGTERM; Ctrl-C only")).await;
        info!("shutting down: draining connections");
        running.shutdown().await;
        info!("stopped");
        ExitCode::SUCCESS
    })
}

/// A sidecar's memory is charged to the app's pod, so the allocator is set up for a small
/// footprint before the first allocation (an ELF constructor, which runs ahead of the
/// allocator's own): transparent huge pages off for this process (`always` on many hosts,
/// where one touched byte of an arena can cost a 2 MiB page), arenas committed as they are
/// used rather than up front, and freed pages handed back after 100 ms unused.
// With `release_memory` below, the binary's `unsafe` (the transport holds the only
// other): FFI to the allocator and the kernel, before anything else runs.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array.00100")]
static SET_UP_MEMORY: extern "C" fn() = {
    extern "C" fn set_up() {
        // mimalloc.h's `mi_option_e`, the same in mimalloc 2 and 3.
        const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        /// Freed pages go back to the system after this long unused. At 0 (at once) every
        /// other request paid a page fault for memory it needed again (measured: 0.6 minor
        /// faults per request, 0.035 at 100 ms, the same peak RSS).
        const PURGE_DELAY_MS: std::ffi::c_long = 100;
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours;
        // getenv reads a NUL-terminated literal; mi_option_set only stores a number in
        // mimalloc's option table.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
            // mimalloc's own variables (MIMALLOC_PURGE_DELAY=…) win over our defaults.
            if libc::getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
                libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
            }
            if libc::getenv(c"MIMALLOC_PURGE_DELAY".as_ptr()).is_null() {
                libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS);
            }
        }
    }
    set_up
};

/// After a snapshot install: mimalloc purges the pages freed on the installing thread (the
/// old snapshot, the parse's buffers) now, and its arenas' delayed purges with them.
/// Measured with 10,000 users and 100,000 keys (bench/sidecar_memory.sh): 1.8 MiB less
/// resident after an install (the pages freed by it no longer wait for the next one).
fn release_memory() {
    // SAFETY: mi_collect takes a plain flag and works on mimalloc's own state only.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
