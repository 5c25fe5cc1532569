//! The controllers: one reconciler per kind, each close to a pure function of (object,
//! what the store holds). This module holds what they share: the [`Context`], the one
//! [`Error`] type, the [`Reconciler`] trait and [`reconcile`], which wraps every
//! reconcile with the finalizer, the `portcullis.io/paused` switch, the status write
//! (server-side apply), events and metrics, so that a kind's module only says what
//! "applied" and "cleaned up" mean.
//!
//! # Adding a kind
//!
//! 1. The custom resource in `crd/` (its status holds a [`crd::Status`], directly or as
//!    `common`, and implements `AsRef<crd::Status>`), listed in `crd::all()`.
//! 2. A module here, `controller/<kind>.rs`, with `impl Reconciler for <Kind>`: `KIND`
//!    (the controller's name in metrics and logs), `apply` (make the database hold what
//!    the object asks for, and say whether it is Ready) and `cleanup` (remove its rows;
//!    the finalizer keeps the object until this succeeds).
//! 3. One line in [`manager::run`]: `Controller::new(...)` with the watches that make a
//!    change elsewhere re-reconcile it, run with `reconcile::<Kind>` and [`error_policy`].
//! 4. For local mode: its line in `local::converge` and `local::report` (dependency
//!    order: after the kinds it names), its arms in `local::apply` (apply and delete),
//!    and, when namespaced, its name in `local::manifests::parse_file`.
//!
//! Tests reconcile an object the way a controller does, with `reconcile::<Kind>`
//! against the in-memory API (`local::MemoryApi`); see `tests/controllers.rs`.

pub mod access_policy;
pub mod api_key;
pub mod issuer;
mod keys;
pub mod manager;
pub mod role;
pub mod source;
mod status;
pub mod team;
pub mod user;

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::api::{Api, PatchParams};
use kube::core::object::HasStatus;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::crd;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

pub use status::Verdict;

/// Finalizer that keeps an object until its rows are gone from the database.
pub const FINALIZER: &str = "portcullis.io/cleanup";
/// `portcullis.io/paused: "true"` stops reconciling one object.
pub const PAUSED_ANNOTATION: &str = "portcullis.io/paused";
/// Field manager of everything the operator writes.
pub const MANAGER: &str = "portcullis-operator";

/// Operator settings the reconcilers read.
#[derive(Debug, Clone)]
pub struct Config {
    /// Namespace the operator runs in: default for password Secrets of (cluster-scoped)
    /// Users, home of the bootstrap admin Secret.
    pub namespace: String,
    /// How long a rotated API key keeps working.
    pub rotation_grace: Duration,
    /// Periodic re-reconcile that repairs rows changed behind the operator's back.
    pub resync: Duration,
    /// Publish Kubernetes Events on `Ready` changes (off in local mode: nobody reads them).
    pub events: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "portcullis-system".into(),
            rotation_grace: Duration::from_secs(24 * 3600),
            resync: Duration::from_secs(300),
            events: true,
        }
    }
}

/// Shared state of all reconcilers.
pub struct Context {
    pub client: Client,
    pub store: Store,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// Publishes Events; `None` when [`Config::events`] is off.
    pub recorder: Option<Recorder>,
    /// Fetches Issuers' keys; made on first use (it reads the system's CA roots).
    issuer_fetcher: std::sync::OnceLock<Arc<crate::issuers::Fetcher>>,
}

impl Context {
    pub fn new(client: Client, store: Store, config: Config, metrics: Arc<Metrics>) -> Arc<Context> {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = config.events.then(|| Recorder::new(client.clone(), reporter));
        Arc::new(Context {
            client,
            store,
            config,
            metrics,
            recorder,
            issuer_fetcher: std::sync::OnceLock::new(),
        })
    }

    /// The fetcher of Issuers' keys (`ISSUER_CA_FILE`, else the system's roots).
    pub fn issuer_fetcher(&self) -> Arc<crate::issuers::Fetcher> {
        self.issuer_fetcher
            .get_or_init(|| Arc::new(crate::issuers::Fetcher::from_env()))
            .clone()
    }
}

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database did not answer or failed transiently: retried with backoff.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(#[source] StoreError),
    #[error("database refused the change: {0}")]
    Store(#[source] StoreError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("hashing the password failed: {0}")]
    Hash(#[from] crate::credentials::HashError),
    #[error("object has no {0}")]
    MissingMetadata(&'static str),
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        if err.is_unavailable() {
            Error::DatabaseUnavailable(err)
        } else {
            Error::Store(err)
        }
    }
}

impl Error {
    /// The condition reason (and metrics label) for this error: bounded, CamelCase.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::DatabaseUnavailable(_) => "DatabaseUnavailable",
            Error::Store(_) => "DatabaseError",
            Error::Kube(_) => "KubernetesError",
            Error::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "FinalizerError",
            },
            Error::Hash(_) => "PasswordHashFailed",
            Error::MissingMetadata(_) => "InvalidObject",
        }
    }

    /// When to reconcile again after this error (see [`error_policy`]).
    pub fn retry_after(&self) -> Duration {
        if self.is_database_unavailable() {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(30)
        }
    }

    /// Whether the database was unavailable, also when the finalizer wraps the error.
    pub fn is_database_unavailable(&self) -> bool {
        match self {
            Error::DatabaseUnavailable(_) => true,
            Error::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.is_database_unavailable(),
                _ => false,
            },
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A kind the operator reconciles: what "applied" and "cleaned up" mean for it. The
/// rest (finalizer, pause switch, status, events, metrics, requeue) is [`reconcile`]'s.
pub trait Reconciler:
    Resource<DynamicType = (), Scope: ApiScope>
    + HasStatus<Status: AsRef<crd::Status>>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    /// Controller name, used in metrics and logs (lower case: `user`, `apikey`).
    const KIND: &'static str;

    /// Makes the database hold what the object asks for, and says whether it is Ready.
    /// A problem the user must fix is an `Ok` not-ready [`Verdict`]; an `Err` is retried.
    fn apply(&self, ctx: &Context) -> impl Future<Output = Result<Applied>> + Send;

    /// Removes what [`Reconciler::apply`] wrote; the object is kept (by the finalizer)
    /// until this succeeds.
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = Result<()>> + Send;

    /// The object's current conditions (to keep transition times).
    fn conditions(&self) -> &[Condition] {
        self.status().map_or(&[], |s| &s.as_ref().conditions)
    }

    /// The API the object lives in: its namespace's, or the cluster's.
    fn api(&self, client: &Client) -> Api<Self> {
        <Self::Scope as ApiScope>::api(client, self.namespace().as_deref())
    }
}

/// Cluster- or namespace-scoped: where a kind's API is.
pub trait ApiScope {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = Self>;
}

impl ApiScope for ClusterResourceScope {
    fn api<K>(client: &Client, _namespace: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = Self>,
    {
        Api::all(client.clone())
    }
}

impl ApiScope for NamespaceResourceScope {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = Self>,
    {
        Api::namespaced(client.clone(), namespace.unwrap_or_default())
    }
}

/// What an apply concluded: the Ready verdict and kind-specific status fields.
pub struct Applied {
    pub verdict: Verdict,
    pub extra_status: serde_json::Map<String, serde_json::Value>,
}

impl From<Verdict> for Applied {
    fn from(verdict: Verdict) -> Self {
        Applied {
            verdict,
            extra_status: serde_json::Map::new(),
        }
    }
}

/// Reconciles one object: finalizer first, then [`Reconciler::apply`] (object present)
/// or [`Reconciler::cleanup`] (object deleting; the finalizer stays until cleanup
/// succeeds, so nothing is orphaned while the database is down). Writes status and
/// events, counts metrics. This is the function every controller runs.
pub async fn reconcile<K: Reconciler>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let metrics = ctx.metrics.clone();
    let timer = metrics.reconcile_timer(K::KIND);
    let name = obj.name_any();
    let span = tracing::info_span!("reconcile", controller = K::KIND, object = %name, namespace = obj.namespace().unwrap_or_default());
    let result = reconcile_once(obj, ctx).instrument(span).await;
    match &result {
        Ok(_) => timer.finish(Ok(())),
        Err(err) => {
            tracing::warn!(controller = K::KIND, object = %name, reason = err.reason(), error = %err, "reconcile failed");
            timer.finish(Err(err.reason()));
        }
    }
    result
}

async fn reconcile_once<K: Reconciler>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let api = obj.api(&ctx.client);
    let paused = obj.annotations().get(PAUSED_ANNOTATION).is_some_and(|v| v == "true");
    if paused && obj.meta().deletion_timestamp.is_none() {
        status::write(&api, &obj, &Verdict::paused(), serde_json::Map::new(), &ctx)
            .await
            .map(|()| Action::await_change())
    } else {
        let outcome = finalizer(&api, FINALIZER, obj.clone(), |event| async {
            match event {
                FinalizerEvent::Apply(obj) => match obj.apply(&ctx).await {
                    Ok(applied) => {
                        status::write(&api, &obj, &applied.verdict, applied.extra_status, &ctx).await?;
                        Ok(Action::requeue(ctx.config.resync))
                    }
                    Err(err) => {
                        let verdict = Verdict::failed(err.reason(), err.to_string());
                        if let Err(status_err) = status::write(&api, &obj, &verdict, serde_json::Map::new(), &ctx).await
                        {
                            tracing::warn!(error = %status_err, "could not write status");
                        }
                        Err(err)
                    }
                },
                FinalizerEvent::Cleanup(obj) => match obj.cleanup(&ctx).await {
                    Ok(()) => {
                        tracing::info!(controller = K::KIND, object = %obj.name_any(), "rows removed");
                        Ok(Action::await_change())
                    }
                    Err(err) => {
                        let verdict = Verdict::failed(err.reason(), format!("cleanup pending: {err}"));
                        let _ = status::write(&api, &obj, &verdict, serde_json::Map::new(), &ctx).await;
                        Err(err)
                    }
                },
            }
        })
        .await;
        outcome.map_err(|e| Error::Finalizer(Box::new(e)))
    }
}

/// Requeue policy on errors: soon for a database outage (it is usually short), later
/// for everything else.
pub fn error_policy<K>(_obj: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(err.retry_after())
}

/// Patch parameters for everything the operator owns.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unavailable() -> Error {
        Error::from(StoreError::Database(sqlx::Error::PoolTimedOut))
    }

    fn refused() -> Error {
        Error::from(StoreError::NotFound {
            kind: "user",
            name: "x".into(),
        })
    }

    #[test]
    fn an_outage_is_retried_soon_also_through_the_finalizer() {
        let soon = Duration::from_secs(5);
        let later = Duration::from_secs(30);
        let policy = Error::retry_after;
        assert_eq!(policy(&unavailable()), soon);
        for wrap in [finalizer::Error::ApplyFailed, finalizer::Error::CleanupFailed] {
            assert_eq!(policy(&Error::Finalizer(Box::new(wrap(unavailable())))), soon);
            assert_eq!(policy(&Error::Finalizer(Box::new(wrap(refused())))), later);
        }
        assert_eq!(policy(&refused()), later);
        assert_eq!(
            policy(&Error::Finalizer(Box::new(finalizer::Error::UnnamedObject))),
            later
        );
    }
}
