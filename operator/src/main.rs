//! `portcullis-operator`: the Portcullis control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::FutureExt;
use portcullis_operator::admin::{self, AdminState};
use portcullis_operator::api::{self, ApiState, audit::KidReports, auth::Authenticator, snapshots};
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
    /// The token service's settings (every replica serves it).
    #[command(flatten)]
    tokens: portcullis_operator::tokens::TokenArgs,
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

/// The control-plane API's settings, shared by both modes.
#[derive(clap::Args, Clone)]
struct ApiArgs {
    /// Address of the control-plane API (snapshots, audit, token service). Default:
    /// 0.0.0.0:8443 in a cluster, 127.0.0.1:7070 in local mode. Plain HTTP is served
    /// only on a loopback address; elsewhere give --api-tls-cert and --api-tls-key.
    #[arg(long, env = "API_ADDR")]
    api_addr: Option<SocketAddr>,
    /// PEM certificate chain of the API port (re-read when the file changes).
    #[arg(long, env = "API_TLS_CERT", requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// PEM private key of the API port (re-read when the file changes).
    #[arg(long, env = "API_TLS_KEY", requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
    /// How long sidecars' audit records are kept: `30d`, `12h`, `90m` or `3600s`.
    #[arg(long, env = "AUDIT_RETENTION", default_value = "30d", value_parser = parse_age)]
    audit_retention: Duration,
}

/// `30d`, `12h`, `90m`, `3600s` (or bare seconds).
fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected e.g. 30d, 12h, 90m, 3600s"))?;
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?}: use s, m, h or d")),
    };
    if number == 0 {
        return Err("a retention of zero would delete every record".into());
    }
    Ok(Duration::from_secs(number.saturating_mul(unit)))
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
        #[command(flatten)]
        api: ApiArgs,
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
        #[command(flatten)]
        api: ApiArgs,
        /// Also serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9090),
        /// as `run` does: for Prometheus on a machine without a cluster.
        #[arg(long)]
        admin_addr: Option<SocketAddr>,
    },
    /// Wait for the database, apply pending migrations and print the current revision.
    Migrate,
    /// Give the database a new epoch (after restoring it from a backup): every sidecar
    /// then installs the next snapshot whatever revision it holds.
    NewEpoch {
        /// Local mode's state directory, for its SQLite database when DATABASE_URL is not set.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
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
    #[error(transparent)]
    Api(#[from] api::Error),
    #[error(transparent)]
    Tokens(#[from] portcullis_operator::tokens::Error),
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
            Command::NewEpoch { state_dir } => new_epoch(state_dir).await,
            Command::Run {
                common,
                watch_namespaces,
                admin_addr,
                lease_name,
                leader,
                webhook,
                api,
            } => run(common, watch_namespaces, admin_addr, lease_name, leader, webhook, api).await,
            Command::Local {
                common,
                manifests,
                state_dir,
                once,
                api,
                admin_addr,
            } => run_local(common, manifests, state_dir, once, api, admin_addr).await,
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

async fn new_epoch(state_dir: Option<PathBuf>) -> Result<(), Fatal> {
    let config = match (DbConfig::from_env(), state_dir) {
        (Err(portcullis_operator::store::ConfigError::Missing), Some(dir)) => {
            local_database(&dir).map_err(Fatal::Other)?
        }
        (config, _) => config?,
    };
    let store = Store::open(&config).await?;
    let epoch = store.new_epoch().await?;
    println!("database {} has the new epoch {epoch}", config.redacted_url());
    store.close().await;
    Ok(())
}

/// Local mode's database: a SQLite file in the state directory.
fn local_database(state_dir: &std::path::Path) -> Result<DbConfig, String> {
    std::fs::create_dir_all(state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    DbConfig::from_url(&format!("sqlite://{}/portcullis.db", state_dir.display())).map_err(|e| e.to_string())
}

/// Starts the control-plane API in the background: the snapshot publisher, the audit
/// retention, the server itself. Independent of leadership: every replica serves.
async fn start_api(
    args: &ApiArgs,
    default_addr: &str,
    store: &Store,
    metrics: &Arc<Metrics>,
    auth: Authenticator,
    token_service: portcullis_operator::tokens::TokenService,
) -> Result<(), Fatal> {
    let addr = match args.api_addr {
        Some(addr) => addr,
        None => default_addr
            .parse()
            .map_err(|e| Fatal::Other(format!("default API address {default_addr}: {e}")))?,
    };
    let tls = match (&args.api_tls_cert, &args.api_tls_key) {
        (Some(cert), Some(key)) => {
            let files = api::tls::TlsFiles::load(cert, key)?;
            tokio::spawn(files.clone().watch());
            Some(files)
        }
        (None, None) => None,
        _ => return Err(api::Error::HalfTls.into()),
    };
    let listener = api::bind(addr, tls.as_deref()).await?;
    let (publisher, feed) = snapshots::channel();
    tokio::spawn(publisher.run(store.clone(), metrics.clone()));
    tokio::spawn(api::audit::retain(store.clone(), args.audit_retention));
    // Issuers' keys: refreshed when stale and when a sidecar reports an unknown kid.
    let (kid_reports, kid_rx) = KidReports::new(metrics.clone());
    let fetcher = Arc::new(portcullis_operator::issuers::Fetcher::from_env());
    tokio::spawn(portcullis_operator::issuers::refresher(store.clone(), fetcher, kid_rx));
    let state = Arc::new(ApiState {
        feed,
        auth,
        store: store.clone(),
        metrics: metrics.clone(),
        kid_reports,
    });
    let scheme = if tls.is_some() { "https" } else { "http" };
    let router = api::router(state).merge(portcullis_operator::tokens::router(token_service));
    tokio::spawn(api::serve(listener, tls, router, shutdown_signal()));
    tracing::info!(%addr, scheme, "control-plane API: /api/v1/snapshots/{{namespace}} /api/v1/audit /api/v1/auth/");
    Ok(())
}

async fn run(
    common: Common,
    watch_namespaces: Vec<String>,
    admin_addr: SocketAddr,
    lease_name: String,
    leader_args: LeaderArgs,
    webhook_args: WebhookArgs,
    api_args: ApiArgs,
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
    // Every replica: its signing keys (made on first start, the key-encryption key in a
    // Secret) and their rotation; the API server below serves the token service.
    let token_service = portcullis_operator::tokens::TokenService::start_in_cluster(
        store.clone(),
        &common.tokens,
        client.clone(),
        &common.namespace,
    )
    .await?;
    tokio::spawn(token_service.clone().run_maintenance(shutdown_signal()));

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
    let reviewer = api::auth::TokenReviewer::new(client.clone());
    start_api(
        &api_args,
        "0.0.0.0:8443",
        &store,
        &metrics,
        Authenticator::TokenReview(reviewer),
        token_service,
    )
    .await?;

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

async fn run_local(
    common: Common,
    dir: PathBuf,
    state_dir: PathBuf,
    once: bool,
    api_args: ApiArgs,
    admin_addr: Option<SocketAddr>,
) -> Result<(), Fatal> {
    // Local mode's database defaults to a SQLite file next to its state.
    let db = match DbConfig::from_env() {
        Ok(db) => db,
        Err(portcullis_operator::store::ConfigError::Missing) => local_database(&state_dir).map_err(Fatal::Other)?,
        Err(e) => return Err(e.into()),
    };
    let store = Store::open(&db).await?;
    let client = local::memory_api();
    let restored = local::restore_secrets(&client, &state_dir).await?;
    let metrics = Arc::new(Metrics::new());
    // Sidecars present `<state>/tokens/<namespace>` (made for every namespace the
    // manifests use) to the API; `--once` applies and exits, so serves nothing.
    let tokens = Arc::new(
        api::auth::FileTokens::open(&state_dir.join("tokens"))
            .map_err(|e| Fatal::Other(format!("{}/tokens: {e}", state_dir.display())))?,
    );
    // Signing keys (key-encryption key in `<state>/signing-kek`, mode 0600) and their
    // rotation; the API serves the token service beside the snapshots.
    let token_service =
        portcullis_operator::tokens::TokenService::start_local(store.clone(), &common.tokens, &state_dir).await?;
    if !once {
        tokio::spawn(token_service.clone().run_maintenance(shutdown_signal()));
        start_api(
            &api_args,
            "127.0.0.1:7070",
            &store,
            &metrics,
            Authenticator::Files(tokens.clone()),
            token_service,
        )
        .await?;
    }
    let config = Config {
        events: false,
        ..common.config()
    };
    if let Some(addr) = admin_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Fatal::Other(format!("bind {addr}: {e}")))?;
        tokio::spawn(portcullis_operator::health::watch(
            store.clone(),
            metrics.clone(),
            portcullis_operator::health::PROBE_PERIOD,
        ));
        let state = AdminState {
            metrics: metrics.clone(),
            ready: portcullis_operator::health::readiness(store.clone(), metrics.clone(), Vec::new()),
        };
        tokio::spawn(admin::serve(listener, state, shutdown_signal().map(|_| ())));
        tracing::info!(%addr, "admin port: /metrics /healthz /readyz");
    }
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
        let namespaces: std::collections::BTreeSet<&str> = snapshot
            .policies
            .iter()
            .map(|p| p.namespace.as_str())
            .chain(snapshot.sources.iter().map(|s| s.namespace.as_str()))
            .chain(snapshot.api_keys.iter().map(|k| k.namespace.as_str()))
            .collect();
        tokens
            .ensure(namespaces)
            .map_err(|e| Fatal::Other(format!("{}/tokens: {e}", state_dir.display())))?;
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
