//! Leader election with a coordination.k8s.io Lease: several operator replicas can run
//! for availability, one reconciles (two reconcilers would race on the same rows and
//! Secrets), every replica serves the admin port, the webhook and the API, and is Ready
//! whether it leads or not. Election is a flag: a single replica turns it off.

use std::sync::Arc;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Leader election flags (each also an environment variable).
#[derive(clap::Args, Debug, Clone)]
pub struct LeaderArgs {
    /// Compete for the Lease before reconciling; `false` for a single replica, which
    /// reconciles at once.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Seconds a Lease is held without renewal before another replica may take it.
    #[arg(long, env = "LEADER_ELECTION_LEASE_DURATION", default_value_t = 15)]
    pub leader_election_lease_duration: u64,
    /// Seconds after its last renewal within which the holder renews (less than the
    /// lease duration; the rest is its margin).
    #[arg(long, env = "LEADER_ELECTION_RENEW_DEADLINE", default_value_t = 10)]
    pub leader_election_renew_deadline: u64,
}

impl LeaderArgs {
    /// The election's settings, or why the timings cannot work.
    pub fn config(&self, lease_name: &str, namespace: &str, identity: &str) -> Result<LeaderConfig, TimingsError> {
        let (duration, renew) = (self.leader_election_lease_duration, self.leader_election_renew_deadline);
        if duration < 2 || renew == 0 || renew >= duration {
            return Err(TimingsError { duration, renew });
        }
        Ok(LeaderConfig {
            lease_name: lease_name.to_string(),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            duration_secs: duration,
            // The holder renews `grace` seconds before the lease would run out.
            grace_secs: duration - renew,
        })
    }
}

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub lease_name: String,
    pub namespace: String,
    /// This replica's name (the pod name in a cluster).
    pub identity: String,
    pub duration_secs: u64,
    pub grace_secs: u64,
}

/// Lease timings that cannot work.
#[derive(Debug, thiserror::Error)]
#[error(
    "LEADER_ELECTION_LEASE_DURATION={duration} and LEADER_ELECTION_RENEW_DEADLINE={renew}: the renew deadline must be at least 1 and below the lease duration"
)]
pub struct TimingsError {
    pub duration: u64,
    pub renew: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot set up the lease {lease}: {source}")]
    Lease {
        lease: String,
        // Boxed: the lease manager's error is large, and every `Result` would carry it.
        #[source]
        source: Box<kube_lease_manager::LeaseManagerError>,
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
            source: Box::new(source),
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        leader: LeaderArgs,
    }

    #[test]
    fn timings_become_duration_and_grace_and_bad_ones_are_refused() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert!(cli.leader.leader_election, "on by default");
        let config = cli.leader.config("lease", "ns", "pod-1").unwrap();
        assert_eq!((config.duration_secs, config.grace_secs), (15, 5));
        let off = Cli::try_parse_from(["x", "--leader-election", "false"]).unwrap();
        assert!(!off.leader.leader_election);
        for (duration, renew) in [("10", "10"), ("10", "0"), ("1", "1"), ("5", "9")] {
            let cli = Cli::try_parse_from([
                "x",
                "--leader-election-lease-duration",
                duration,
                "--leader-election-renew-deadline",
                renew,
            ])
            .unwrap();
            let err = cli.leader.config("l", "n", "i").unwrap_err().to_string();
            assert!(err.contains("LEADER_ELECTION_RENEW_DEADLINE"), "{err}");
        }
    }
}
