//! `portcullis-operator`: the Portcullis control plane.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis_operator::store::{DbConfig, Store, StoreError};

#[derive(Parser)]
#[command(name = "portcullis-operator", version, about = "Portcullis control plane")]
struct Cli {
    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Wait for the database (DATABASE_URL or DB_TYPE, DB_HOST, DB_PORT, DB_NAME, DB_USER,
    /// DB_PASS), apply pending migrations and print the current revision.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Migrate => migrate().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, no backtrace: this is what a platform engineer sees in `kubectl logs`.
            eprintln!("error: {err}");
            match err {
                StoreError::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn migrate() -> Result<(), StoreError> {
    let config = DbConfig::from_env()?;
    let store = Store::open(&config).await?;
    let revision = store.revision().await?;
    println!(
        "database {} is up to date at revision {revision}",
        config.redacted_url()
    );
    store.close().await;
    Ok(())
}

fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
