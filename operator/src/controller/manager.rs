//! Wires the reconcilers into kube-runtime controllers, with the watches that make a
//! change to one object re-reconcile the objects that name it: a Role → the Users
//! holding it; a password Secret → its User; a User → the Teams and APIKeys naming it;
//! a Source → its APIKeys; a Team → its Sources; an owned Secret → its owner.
//!
//! Owned Secrets are watched once per watched scope (not once per kind), and only those
//! labelled `app.kubernetes.io/managed-by=portcullis-operator` (every Secret the operator
//! creates carries it): the operator never lists the cluster's other Secrets, and with
//! `WATCH_NAMESPACES` its RBAC on Secrets can be namespaced Roles. Password Secrets of
//! Users are read in the operator's namespace only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Config as WatchConfig;
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use super::{Context, MANAGER, error_policy, reconcile};
use crate::crd::{AccessPolicy, ApiKey, Issuer, Role, Source, Team, User};

/// Which namespaces the namespaced controllers (APIKey, Source, AccessPolicy) watch.
#[derive(Debug, Clone, Default)]
pub enum Namespaces {
    #[default]
    All,
    Only(Vec<String>),
}

/// Label of every Secret the operator creates (value [`MANAGER`]); the owned-Secret
/// watch selects on it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// The label selector of the Secrets the operator manages.
pub fn managed_secrets() -> String {
    format!("{MANAGED_BY}={MANAGER}")
}

impl Namespaces {
    /// The watched scopes: `None` for the whole cluster, else one namespace each.
    fn scopes(&self) -> Vec<Option<String>> {
        match self {
            Namespaces::All => vec![None],
            Namespaces::Only(list) => list.iter().cloned().map(Some).collect(),
        }
    }
}

/// The API of `K` in a scope.
fn api<K>(client: &Client, scope: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match scope {
        None => Api::all(client.clone()),
        Some(ns) => Api::namespaced(client.clone(), ns),
    }
}

/// One watch of the managed Secrets of `secrets`, fanned out to `outputs` streams (one
/// per owning controller); the watch ends with `shutdown` or when every output is gone.
fn managed_secret_streams(
    secrets: Api<Secret>,
    outputs: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    BoxFuture<'static, ()>,
    Vec<futures::stream::BoxStream<'static, Result<Secret, watcher::Error>>>,
) {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..outputs).map(|_| mpsc::channel::<Secret>(256)).unzip();
    let config = WatchConfig::default().any_semantic().labels(&managed_secrets());
    let fan_out = async move {
        let mut events = std::pin::pin!(watcher(secrets, config).default_backoff().touched_objects());
        while let Some(event) = events.next().await {
            match event {
                Ok(secret) => {
                    let mut delivered = false;
                    for sender in &senders {
                        delivered |= sender.send(secret.clone()).await.is_ok();
                    }
                    if !delivered {
                        break;
                    }
                }
                Err(err) => tracing::debug!(error = %err, "managed Secrets watch"),
            }
        }
    };
    let driver: BoxFuture<'static, ()> = Box::pin(async move {
        tokio::select! {
            () = fan_out => {}
            () = shutdown => {}
        }
    });
    let streams = receivers
        .into_iter()
        .map(|rx| {
            futures::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|secret| (Ok(secret), rx)) },
            )
            .boxed()
        })
        .collect();
    (driver, streams)
}

/// Set once every controller's cache has its first full list: what `/readyz` waits for.
#[derive(Debug, Default)]
pub struct Synced(AtomicBool);

impl Synced {
    pub fn is_synced(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Runs every controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, namespaces: Namespaces, synced: Arc<Synced>, shutdown: BoxFuture<'static, ()>) {
    let client = ctx.client.clone();
    let wc = WatchConfig::default().any_semantic();
    let shutdown = futures::future::FutureExt::shared(shutdown);
    let mut controllers: Vec<BoxFuture<'static, ()>> = Vec::new();
    let mut stores: Vec<BoxFuture<'static, bool>> = Vec::new();

    // Role
    let roles = Controller::new(Api::<Role>::all(client.clone()), wc.clone()).graceful_shutdown_on(shutdown.clone());
    stores.push(ready(roles.store()));
    controllers.push(drive(roles.run(reconcile::<Role>, error_policy, ctx.clone())));

    // Issuer (its keys are also refreshed by `issuers::refresher` on every replica)
    let issuers =
        Controller::new(Api::<Issuer>::all(client.clone()), wc.clone()).graceful_shutdown_on(shutdown.clone());
    stores.push(ready(issuers.store()));
    controllers.push(drive(issuers.run(reconcile::<Issuer>, error_policy, ctx.clone())));

    // User ← Role, password Secrets (in the operator's namespace; others are picked up by the resync)
    let users = Controller::new(Api::<User>::all(client.clone()), wc.clone());
    let user_store = users.store();
    stores.push(ready(user_store.clone()));
    let by_role = user_store.clone();
    let by_secret = user_store.clone();
    let operator_ns = ctx.config.namespace.clone();
    let users = users
        .watches(Api::<Role>::all(client.clone()), wc.clone(), move |role: Role| {
            let name = role.name_any();
            refs(&by_role, |u: &User| u.spec.roles.contains(&name))
        })
        .watches(
            Api::<Secret>::namespaced(client.clone(), &ctx.config.namespace),
            wc.clone(),
            move |secret: Secret| {
                let (ns, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
                let operator_ns = operator_ns.clone();
                refs(&by_secret, move |u: &User| {
                    u.spec
                        .password_secret_ref
                        .as_ref()
                        .is_some_and(|r| r.name == name && r.namespace.as_deref().unwrap_or(&operator_ns) == ns)
                })
            },
        )
        .graceful_shutdown_on(shutdown.clone());
    controllers.push(drive(users.run(reconcile::<User>, error_policy, ctx.clone())));

    // Team ← User
    let teams = Controller::new(Api::<Team>::all(client.clone()), wc.clone());
    let team_store = teams.store();
    stores.push(ready(team_store.clone()));
    let teams = teams
        .watches(Api::<User>::all(client.clone()), wc.clone(), move |user: User| {
            let name = user.name_any();
            refs(&team_store, |t: &Team| t.spec.members.iter().any(|m| m.user == name))
        })
        .graceful_shutdown_on(shutdown.clone());
    controllers.push(drive(teams.run(reconcile::<Team>, error_policy, ctx.clone())));

    for scope in namespaces.scopes() {
        let scope = scope.as_deref();
        // One watch of the managed Secrets of this scope, for both kinds that own some.
        let (driver, mut owned) = managed_secret_streams(api::<Secret>(&client, scope), 2, shutdown.clone());
        controllers.push(driver);
        let (Some(key_secrets), Some(source_secrets)) = (owned.pop(), owned.pop()) else {
            continue;
        };

        // Source ← Team, owned key Secret
        let sources = Controller::new(api::<Source>(&client, scope), wc.clone());
        let source_store = sources.store();
        stores.push(ready(source_store.clone()));
        let sources = sources
            .owns_stream(source_secrets)
            .watches(Api::<Team>::all(client.clone()), wc.clone(), move |team: Team| {
                let name = team.name_any();
                refs(&source_store, |s: &Source| {
                    s.spec.team.as_deref() == Some(name.as_str())
                })
            })
            .graceful_shutdown_on(shutdown.clone());
        controllers.push(drive(sources.run(reconcile::<Source>, error_policy, ctx.clone())));

        // APIKey ← User, Source, Team (a key asking for its owner's role in it), owned key Secret
        let keys = Controller::new(api::<ApiKey>(&client, scope), wc.clone());
        let by_user = keys.store();
        let by_source = keys.store();
        let by_team = keys.store();
        stores.push(ready(keys.store()));
        let sources = Api::<Source>::all(client.clone());
        let keys = keys
            .owns_stream(key_secrets)
            .watches(Api::<User>::all(client.clone()), wc.clone(), move |user: User| {
                let name = user.name_any();
                refs(&by_user, |k: &ApiKey| {
                    k.spec.owner.user.as_deref() == Some(name.as_str())
                })
            })
            .watches(sources, wc.clone(), move |source: Source| {
                let (ns, name) = (source.namespace(), source.name_any());
                refs(&by_source, |k: &ApiKey| {
                    k.namespace() == ns && k.spec.owner.source.as_deref() == Some(name.as_str())
                })
            })
            .watches(Api::<Team>::all(client.clone()), wc.clone(), move |team: Team| {
                let name = team.name_any();
                refs(&by_team, |k: &ApiKey| k.spec.teams.contains(&name))
            })
            .graceful_shutdown_on(shutdown.clone());
        controllers.push(drive(keys.run(reconcile::<ApiKey>, error_policy, ctx.clone())));

        let policies =
            Controller::new(api::<AccessPolicy>(&client, scope), wc.clone()).graceful_shutdown_on(shutdown.clone());
        stores.push(ready(policies.store()));
        controllers.push(drive(policies.run(
            reconcile::<AccessPolicy>,
            error_policy,
            ctx.clone(),
        )));
    }

    tokio::spawn(async move {
        if futures::future::join_all(stores).await.into_iter().all(|ok| ok) {
            synced.0.store(true, Ordering::Relaxed);
            tracing::info!("all controller caches synced");
        }
    });
    futures::future::join_all(controllers).await;
}

fn refs<K>(store: &Store<K>, pick: impl Fn(&K) -> bool) -> Vec<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .filter(|k| pick(k))
        .map(|k| ObjectRef::from_obj(k.as_ref()))
        .collect()
}

fn ready<K>(store: Store<K>) -> BoxFuture<'static, bool>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    Box::pin(async move { store.wait_until_ready().await.is_ok() })
}

fn drive<S, T, E>(stream: S) -> BoxFuture<'static, ()>
where
    S: futures::Stream<Item = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: std::fmt::Debug + Send + 'static,
{
    Box::pin(stream.for_each(|result| async move {
        if let Err(err) = result {
            tracing::debug!(error = ?err, "controller event");
        }
    }))
}
