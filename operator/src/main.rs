//! `portcullis-operator`: the Portcullis control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::FutureExt;
use portcullis_operator::admin::{self, AdminState};
use portcullis_operator::controller::manager::{self, Namespaces, Synced};
use portcullis_operator::controller::{Config, Context};
use portcullis_operator::leader::{self, LeaderArgs};
use portcullis_operator::metrics::Metrics;
use portcullis_operator::store::{DbConfig, Store};
use portcullis_operator::webhook::{self, WebhookArgs};
use portcullis_operator::{bootstrap, local};

#[derive(Parser)]
#[command(name = "portcullis-operator", version, about = "Portcullis control plane")]
struct Cli {
    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Namespace the operator runs in (bootstrap admin Secret, default for password Secrets).
    #[arg(long, env = "POD_NAMESPACE", default_value = "portcullis-system")]
    namespace: String,
    /// How long a rotated API key keeps working, in seconds.
    #[arg(long, env = "APIKEY_ROTATION_GRACE_SECONDS", default_value_t = 86_400)]
    rotation_grace_seconds: u64,
    /// Periodic re-reconcile that repairs drifted rows, in seconds.
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
}

impl Common {
    fn config(&self) -> Config {
        Config {
            namespace: self.namespace.clone(),
            rotation_grace: Duration::from_secs(self.rotation_grace_seconds),
            resync: Duration::from_secs(self.resync_seconds),
            events: true,
        }
    }
}

#[derive(Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start; boxing would only obscure clap's derive"
)]
enum Command {
    /// Run the controllers against the cluster (in-cluster config or KUBECONFIG).
    Run {
        #[command(flatten)]
        common: Common,
        /// Namespaces watched by the namespaced controllers (APIKey, Source, AccessPolicy); all when empty.
        #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
        watch_namespaces: Vec<String>,
        /// Address of the metrics and health port.
        #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:9090")]
        admin_addr: SocketAddr,
        /// Name of the coordination Lease for leader election.
        #[arg(long, env = "LEASE_NAME", default_value = "portcullis-operator")]
        lease_name: String,
        #[command(flatten)]
        leader: LeaderArgs,
        #[command(flatten)]
        webhook: WebhookArgs,
    },
    /// Apply a directory of manifests to a database without a cluster, report each
    /// object's status, and keep watching the directory (unless --once).
    Local {
        #[command(flatten)]
        common: Common,
        /// Directory of manifests (the YAML you would `kubectl apply`).
        #[arg(long, default_value = "examples")]
        manifests: PathBuf,
        /// Where local mode keeps Secrets it generated (API keys, the admin password).
        #[arg(long, default_value = ".portcullis")]
        state_dir: PathBuf,
        /// Apply once, print the report and exit (non-zero if a manifest was refused).
        #[arg(long)]
        once: bool,
    },
    /// Wait for the database, apply pending migrations and print the current revision.
    Migrate,
}

/// Errors that end the process, each as one line.
#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error(transparent)]
    Config(#[from] portcullis_operator::store::ConfigError),
    #[error(transparent)]
    Store(#[from] portcullis_operator::store::StoreError),
    #[error(transparent)]
    Reconcile(#[from] portcullis_operator::controller::Error),
    #[error(transparent)]
    Local(#[from] local::Error),
    #[error("webhook: {0}")]
    Webhook(#[from] webhook::WebhookError),
    #[error("leader election: {0}")]
    Leader(#[from] leader::TimingsError),
    #[error("{0}")]
    Other(String),
    #[error("some manifests were refused")]
    Refused,
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
            Command::Run {
                common,
                watch_namespaces,
                admin_addr,
                lease_name,
                leader,
                webhook,
            } => run(common, watch_namespaces, admin_addr, lease_name, leader, webhook).await,
            Command::Local {
                common,
                manifests,
                state_dir,
                once,
            } => run_local(common, manifests, state_dir, once).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, no backtrace: this is what a platform engineer sees in `kubectl logs`.
            eprintln!("error: {err}");
            match err {
                Fatal::Config(_)
                | Fatal::Store(portcullis_operator::store::StoreError::Config(_))
                | Fatal::Leader(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn migrate() -> Result<(), Fatal> {
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

async fn run(
    common: Common,
    watch_namespaces: Vec<String>,
    admin_addr: SocketAddr,
    lease_name: String,
    leader_args: LeaderArgs,
    webhook_args: WebhookArgs,
) -> Result<(), Fatal> {
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("portcullis-{}", std::process::id()));
    // Flags first: a bad timing or sidecar default stops the start before any connection.
    let leader_config = leader_args.config(&lease_name, &common.namespace, &identity)?;
    webhook_args.injector(&common.namespace)?;
    let db = DbConfig::from_env()?;
    let store = Store::open(&db).await?;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| Fatal::Other(format!("Kubernetes client: {e}")))?;
    let metrics = Arc::new(Metrics::new());
    let ctx = Context::new(client.clone(), store.clone(), common.config(), metrics.clone());
    let synced = Arc::new(Synced::default());

    // Every replica serves the admin port and the webhook, and is Ready when they serve
    // and the database answers, leader or not; only the leader reconciles.
    let listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|e| Fatal::Other(format!("bind {admin_addr}: {e}")))?;
    let mut checks: Vec<portcullis_operator::health::Check> = Vec::new();
    if webhook_args.enabled {
        let served = webhook::start(
            &webhook_args,
            &common.namespace,
            client.clone(),
            metrics.clone(),
            shutdown_signal(),
        )
        .await?;
        checks.push(Arc::new(served.check()));
    }
    let readiness = portcullis_operator::health::readiness(store.clone(), metrics.clone(), checks);
    // Database gauges, refreshed in the background so that a scrape never waits on SQL.
    tokio::spawn(portcullis_operator::health::watch(
        store.clone(),
        metrics.clone(),
        portcullis_operator::health::PROBE_PERIOD,
    ));
    let state = AdminState {
        metrics: metrics.clone(),
        ready: readiness,
    };
    tokio::spawn(admin::serve(listener, state, shutdown_signal().map(|_| ())));
    tracing::info!(%admin_addr, "admin port: /metrics /healthz /readyz");

    let mut handle = if leader_args.leader_election {
        let mut handle = leader::elect(client.clone(), leader_config, metrics.clone())
            .await
            .map_err(|e| Fatal::Other(format!("leader election: {e}")))?;
        tokio::select! {
            _ = handle.wait_until_leader() => {}
            _ = shutdown_signal() => return Ok(()),
        }
        Some(handle)
    } else {
        tracing::info!("leader election off: this replica reconciles");
        metrics.set_leader(true);
        None
    };
    let report = bootstrap::run(&store, &client, &common.namespace).await?;
    tracing::info!(?report, "bootstrap done");
    let namespaces = if watch_namespaces.is_empty() {
        Namespaces::All
    } else {
        Namespaces::Only(watch_namespaces)
    };
    let stop = async move {
        match handle.as_mut() {
            Some(handle) => tokio::select! {
                _ = handle.lost() => tracing::warn!("leadership lost; stopping the controllers"),
                _ = shutdown_signal() => tracing::info!("shutting down"),
            },
            None => {
                shutdown_signal().await;
                tracing::info!("shutting down");
            }
        }
    };
    manager::run(ctx, namespaces, synced, Box::pin(stop)).await;
    store.close().await;
    Ok(())
}

async fn run_local(common: Common, dir: PathBuf, state_dir: PathBuf, once: bool) -> Result<(), Fatal> {
    // Local mode's database defaults to a SQLite file next to its state.
    let db = match DbConfig::from_env() {
        Ok(db) => db,
        Err(portcullis_operator::store::ConfigError::Missing) => {
            std::fs::create_dir_all(&state_dir).map_err(|e| Fatal::Other(format!("{}: {e}", state_dir.display())))?;
            DbConfig::from_url(&format!("sqlite://{}/portcullis.db", state_dir.display()))?
        }
        Err(e) => return Err(e.into()),
    };
    let store = Store::open(&db).await?;
    let client = local::memory_api();
    let restored = local::restore_secrets(&client, &state_dir).await?;
    let metrics = Arc::new(Metrics::new());
    let config = Config {
        events: false,
        ..common.config()
    };
    let ctx = Context::new(client.clone(), store.clone(), config, metrics);
    let report = bootstrap::run(&store, &client, &common.namespace).await?;
    if report.secret_created {
        println!(
            "bootstrap: user {} created; its password is in Secret {} of {}/secrets/{}.yaml",
            bootstrap::ADMIN_EMAIL,
            bootstrap::ADMIN_SECRET,
            state_dir.display(),
            common.namespace
        );
    }
    tracing::info!(restored, database = %db.redacted_url(), manifests = %dir.display(), "local mode");

    let mut previous = std::collections::BTreeSet::new();
    let mut fingerprint = Vec::new();
    loop {
        let (manifests, problems) =
            local::load_dir(&dir).map_err(|e| Fatal::Other(format!("{}: {e}", dir.display())))?;
        for problem in &problems {
            eprintln!("refused: {problem}");
        }
        previous = local::sync_objects(&client, &manifests, &previous).await?;
        drop(manifests);
        let statuses = local::converge(&ctx).await?;
        let secrets = local::operator_secrets(&client).await?;
        local::save_secrets(&state_dir, &secrets).map_err(|e| Fatal::Other(format!("{}: {e}", state_dir.display())))?;
        println!("{:<13} {:<28} {:<6} {:<20} MESSAGE", "KIND", "NAME", "READY", "REASON");
        for status in &statuses {
            println!("{status}");
        }
        let snapshot = store.read_snapshot(jiff::Timestamp::now().as_second()).await?;
        local::save_snapshot(&state_dir, &snapshot)
            .map_err(|e| Fatal::Other(format!("{}: {e}", state_dir.display())))?;
        println!(
            "revision {} (snapshot in {}/snapshot.json)",
            snapshot.revision,
            state_dir.display()
        );
        if once {
            return if problems.is_empty() {
                Ok(())
            } else {
                Err(Fatal::Refused)
            };
        }
        if fingerprint.is_empty() {
            fingerprint = local::fingerprint(&dir);
        }
        println!("watching {} for changes (Ctrl-C to stop)", dir.display());
        loop {
            tokio::select! {
                _ = tokio::time::sleep(local::POLL) => {}
                _ = shutdown_signal() => return Ok(()),
            }
            let now = local::fingerprint(&dir);
            if now != fingerprint {
                fingerprint = now;
                break;
            }
        }
    }
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    portcullis_wire::process::shutdown_signal(
        |e| tracing::error!(error = %e, "cannot listen for SIGTERM; Ctrl-C only"),
    )
    .await;
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
