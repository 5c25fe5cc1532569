//! Wires the reconcilers into kube-runtime controllers, with the watches that make a
//! change to one object re-reconcile the objects that name it: a Role → the Users
//! holding it; a password Secret → its User; a User → the Teams and APIKeys naming it;
//! a Source → its APIKeys; a Team → its Sources; an owned Secret → its owner.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Config as WatchConfig;
use kube::{Client, ResourceExt};

use super::{Context, error_policy, reconcile};
use crate::crd::{AccessPolicy, ApiKey, Role, Source, Team, User};

/// Which namespaces the namespaced controllers (APIKey, Source, AccessPolicy) watch.
#[derive(Debug, Clone, Default)]
pub enum Namespaces {
    #[default]
    All,
    Only(Vec<String>),
}

impl Namespaces {
    /// The API of `K` per watched scope, with the Secrets API of the same scope.
    fn apis<K>(&self, client: &Client) -> Vec<(Api<K>, Api<Secret>)>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match self {
            Namespaces::All => vec![(Api::all(client.clone()), Api::all(client.clone()))],
            Namespaces::Only(list) => list
                .iter()
                .map(|ns| (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)))
                .collect(),
        }
    }
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

    for (api, secrets) in namespaces.apis::<Source>(&client) {
        // Source ← Team, owned key Secret
        let sources = Controller::new(api.clone(), wc.clone());
        let source_store = sources.store();
        stores.push(ready(source_store.clone()));
        let sources = sources
            .owns(secrets, wc.clone())
            .watches(Api::<Team>::all(client.clone()), wc.clone(), move |team: Team| {
                let name = team.name_any();
                refs(&source_store, |s: &Source| {
                    s.spec.team.as_deref() == Some(name.as_str())
                })
            })
            .graceful_shutdown_on(shutdown.clone());
        controllers.push(drive(sources.run(reconcile::<Source>, error_policy, ctx.clone())));
    }

    for (api, secrets) in namespaces.apis::<ApiKey>(&client) {
        // APIKey ← User, Source, Team (a key asking for its owner's role in it), owned key Secret
        let keys = Controller::new(api.clone(), wc.clone());
        let by_user = keys.store();
        let by_source = keys.store();
        let by_team = keys.store();
        stores.push(ready(keys.store()));
        let sources = Api::<Source>::all(client.clone());
        let keys = keys
            .owns(secrets, wc.clone())
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
    }

    for (api, _) in namespaces.apis::<AccessPolicy>(&client) {
        let policies = Controller::new(api, wc.clone()).graceful_shutdown_on(shutdown.clone());
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
