//! Leader election with a coordination.k8s.io Lease: several operator replicas can run
//! for availability, one reconciles (two reconcilers would race on the same rows and
//! Secrets), every replica serves the admin port.

use std::sync::Arc;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    /// This replica's name (the pod name in a cluster).
    pub identity: String,
    pub duration_secs: u64,
    pub grace_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot set up the lease {lease}: {source}")]
    Lease {
        lease: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
}

/// This replica's view of the lease.
pub struct LeaderHandle {
    state: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    // Keeps the lease loop running; dropping the handle releases the lease.
    _task: tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>,
}

/// Starts competing for the lease.
pub async fn elect(client: Client, config: LeaderConfig, metrics: Arc<Metrics>) -> Result<LeaderHandle, LeaderError> {
    let manager = LeaseManagerBuilder::new(client, &config.lease_name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.duration_secs)
        .with_grace(config.grace_secs)
        .build()
        .await
        .map_err(|source| LeaderError::Lease {
            lease: config.lease_name.clone(),
            source,
        })?;
    let (state, task) = manager.watch().await;
    metrics.set_leader(*state.borrow());
    Ok(LeaderHandle {
        state,
        metrics,
        _task: task,
    })
}

impl LeaderHandle {
    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }

    /// Resolves once this replica holds the lease.
    pub async fn wait_until_leader(&mut self) {
        let metrics = self.metrics.clone();
        let _ = self
            .state
            .wait_for(|leading| {
                metrics.set_leader(*leading);
                *leading
            })
            .await;
        tracing::info!("acquired the leader lease");
    }

    /// Resolves when the lease, once held, is lost (or its loop ends).
    pub async fn lost(&mut self) {
        let metrics = self.metrics.clone();
        let _ = self
            .state
            .wait_for(|leading| {
                metrics.set_leader(*leading);
                !*leading
            })
            .await;
    }
}
