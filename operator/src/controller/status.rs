//! The Ready condition and the status write (server-side apply on `/status`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::{Api, Patch};
use kube::runtime::events::{Event, EventType};
use serde_json::{Map, Value, json};

use super::{Context, MANAGER, Reconciler, Result, apply_params};

/// What a reconcile concluded about an object, shown as its `Ready` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    /// CamelCase, from a bounded set: it is what users and alerts match on.
    pub reason: &'static str,
    pub message: String,
    paused: bool,
}

impl Verdict {
    pub fn ready(message: impl Into<String>) -> Self {
        Verdict {
            ready: true,
            reason: "Reconciled",
            message: message.into(),
            paused: false,
        }
    }

    /// Not ready for a reason the user must act on (a missing reference, a scope too wide…).
    pub fn not_ready(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            ready: false,
            reason,
            message: message.into(),
            paused: false,
        }
    }

    pub(super) fn failed(reason: &'static str, message: String) -> Self {
        Verdict {
            ready: false,
            reason,
            message,
            paused: false,
        }
    }

    pub(super) fn paused() -> Self {
        Verdict {
            ready: false,
            reason: "Paused",
            message: format!("reconciling is paused by the {} annotation", super::PAUSED_ANNOTATION),
            paused: true,
        }
    }
}

/// The conditions after `verdict`: `Ready` (or `Paused`, which leaves `Ready` as it
/// was), keeping `lastTransitionTime` when the status did not change.
pub fn conditions(previous: &[Condition], verdict: &Verdict, generation: Option<i64>) -> Vec<Condition> {
    let now = Time(jiff::Timestamp::now());
    let make = |type_: &str, status: bool, reason: &str, message: &str| {
        let status = if status { "True" } else { "False" }.to_string();
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time,
        }
    };
    let mut out = Vec::new();
    if verdict.paused {
        out.extend(previous.iter().filter(|c| c.type_ == "Ready").cloned());
        out.push(make("Paused", true, verdict.reason, &verdict.message));
    } else {
        out.push(make("Ready", verdict.ready, verdict.reason, &verdict.message));
    }
    out
}

/// Writes the status of `obj` and publishes an event when `Ready` changes.
pub async fn write<K: Reconciler>(
    api: &Api<K>,
    obj: &K,
    verdict: &Verdict,
    extra: Map<String, Value>,
    ctx: &Context,
) -> Result<()> {
    let previous = obj.conditions();
    let generation = obj.meta().generation;
    let conditions = conditions(previous, verdict, generation);
    let mut status = extra;
    status.insert(
        "conditions".into(),
        serde_json::to_value(&conditions).unwrap_or_default(),
    );
    if !verdict.paused {
        status.insert("observedGeneration".into(), json!(generation));
    }
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(&obj.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await?;

    let before = previous.iter().find(|c| c.type_ == "Ready");
    let changed = before.is_none_or(|c| (c.status == "True") != verdict.ready || c.reason != verdict.reason);
    if let Some(recorder) = ctx.recorder.as_ref().filter(|_| changed && !verdict.paused) {
        let event = Event {
            type_: if verdict.ready {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: verdict.reason.into(),
            note: Some(verdict.message.chars().take(1024).collect()),
            action: if verdict.ready { "Reconciled" } else { "Reconciling" }.into(),
            secondary: None,
        };
        // Events are for people reading `kubectl describe`; losing one is not a failure.
        if let Err(err) = recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::debug!(error = %err, manager = MANAGER, "could not publish event");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let first = conditions(&[], &Verdict::not_ready("RoleNotFound", "role x"), Some(1));
        assert_eq!(
            (first[0].status.as_str(), first[0].reason.as_str()),
            ("False", "RoleNotFound")
        );
        let mut old = first.clone();
        old[0].last_transition_time = Time(jiff::Timestamp::UNIX_EPOCH);
        let still = conditions(&old, &Verdict::not_ready("SecretNotFound", "secret y"), Some(2));
        assert_eq!(still[0].last_transition_time, Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(still[0].observed_generation, Some(2));
        let ready = conditions(&old, &Verdict::ready("ok"), Some(2));
        assert_ne!(ready[0].last_transition_time, Time(jiff::Timestamp::UNIX_EPOCH));
        assert_eq!(ready[0].status, "True");
    }

    #[test]
    fn paused_keeps_ready_and_adds_paused() {
        let ready = conditions(&[], &Verdict::ready("ok"), Some(1));
        let paused = conditions(&ready, &Verdict::paused(), Some(2));
        assert_eq!(paused.len(), 2);
        assert_eq!(paused[0], ready[0]);
        assert_eq!(
            (paused[1].type_.as_str(), paused[1].status.as_str()),
            ("Paused", "True")
        );
    }
}
