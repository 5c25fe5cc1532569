//! The controllers: one reconciler per kind, each close to a pure function of (object,
//! what the store holds). This module holds what they share: the [`Context`], the one
//! [`Error`] type, and [`run`], which wraps every reconcile with the finalizer, the
//! `portcullis.io/paused` switch, the status write (server-side apply), events and
//! metrics, so that a kind's module only says what "applied" and "cleaned up" mean.

pub mod access_policy;
pub mod api_key;
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
use kube::api::{Api, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

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
        })
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
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("hashing the password failed: {0}")]
    Hash(String),
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
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.reason()
                }
                _ => "FinalizerError",
            },
            Error::Hash(_) => "PasswordHashFailed",
            Error::MissingMetadata(_) => "InvalidObject",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A kind the operator reconciles.
pub trait Reconciled:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static
{
    /// Controller name, used in metrics and logs.
    const CONTROLLER: &'static str;
    /// The object's current conditions (to keep transition times).
    fn conditions(&self) -> &[Condition];
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

/// Reconciles one object: finalizer first, then `apply` (object present) or `cleanup`
/// (object deleting; the finalizer stays until cleanup succeeds, so nothing is
/// orphaned while the database is down). Writes status and events, counts metrics.
pub async fn run<K, A, AF, C, CF>(api: Api<K>, obj: Arc<K>, ctx: Arc<Context>, apply: A, cleanup: C) -> Result<Action>
where
    K: Reconciled,
    A: FnOnce(Arc<K>, Arc<Context>) -> AF,
    AF: Future<Output = Result<Applied>>,
    C: FnOnce(Arc<K>, Arc<Context>) -> CF,
    CF: Future<Output = Result<()>>,
{
    let metrics = ctx.metrics.clone();
    let timer = metrics.reconcile_timer(K::CONTROLLER);
    let name = obj.name_any();
    let span = tracing::info_span!("reconcile", controller = K::CONTROLLER, object = %name, namespace = obj.namespace().unwrap_or_default());
    let result = reconcile_once(api, obj, ctx, apply, cleanup).instrument(span).await;
    match &result {
        Ok(_) => timer.finish(Ok(())),
        Err(err) => {
            tracing::warn!(controller = K::CONTROLLER, object = %name, reason = err.reason(), error = %err, "reconcile failed");
            timer.finish(Err(err.reason()));
        }
    }
    result
}

async fn reconcile_once<K, A, AF, C, CF>(
    api: Api<K>,
    obj: Arc<K>,
    ctx: Arc<Context>,
    apply: A,
    cleanup: C,
) -> Result<Action>
where
    K: Reconciled,
    A: FnOnce(Arc<K>, Arc<Context>) -> AF,
    AF: Future<Output = Result<Applied>>,
    C: FnOnce(Arc<K>, Arc<Context>) -> CF,
    CF: Future<Output = Result<()>>,
{
    let paused = obj.annotations().get(PAUSED_ANNOTATION).is_some_and(|v| v == "true");
    if paused && obj.meta().deletion_timestamp.is_none() {
        status::write(&api, &obj, &Verdict::paused(), serde_json::Map::new(), &ctx)
            .await
            .map(|()| Action::await_change())
    } else {
        let outcome = finalizer(&api, FINALIZER, obj.clone(), |event| async {
            match event {
                FinalizerEvent::Apply(obj) => match apply(obj.clone(), ctx.clone()).await {
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
                FinalizerEvent::Cleanup(obj) => match cleanup(obj.clone(), ctx.clone()).await {
                    Ok(()) => {
                        tracing::info!(controller = K::CONTROLLER, object = %obj.name_any(), "rows removed");
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
    match err.reason() {
        "DatabaseUnavailable" => Action::requeue(Duration::from_secs(5)),
        _ => Action::requeue(Duration::from_secs(30)),
    }
}

/// Patch parameters for everything the operator owns.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}
