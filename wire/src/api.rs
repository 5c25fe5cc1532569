//! The control plane's HTTP API as both ends speak it: paths, query, headers, bodies.
//!
//! One definition, so the operator's server and the sidecar's client cannot drift.
//!
//! **Snapshots.** `GET /api/v1/snapshots/{namespace}?revision={r}&epoch={e}&wait={s}`
//! with `Authorization: Bearer <service-account token>` (a shared token file in local
//! mode). The control plane answers `200` with the namespace's [`Snapshot`] as soon as
//! its `(epoch, revision)` differs from the caller's (the latest, never a backlog), or
//! `304 Not Modified` when nothing changed within `wait` seconds (at most
//! [`MAX_WAIT_SECONDS`]). `Content-Encoding: gzip` when the caller sent
//! `Accept-Encoding: gzip`. Headers [`EPOCH_HEADER`] and [`REVISION_HEADER`] repeat the
//! body's epoch and revision on both answers. `401` without a valid token, `403` when the
//! token belongs to another namespace.
//!
//! **Views.** Every write bumps the one revision, but most writes change what only a few
//! namespaces receive (an API key goes to the namespaces that honour it). Each answer
//! carries [`VIEW_HEADER`], a digest of the namespace's view without its revision; a
//! caller that sends it back (`&view={v}`) is answered only when the revision is higher
//! *and* the view differs, so a write wakes the sidecars it concerns and no others. The
//! digest is of the content, the same on every replica: a sidecar that moves to another
//! replica is compared with what it really holds. A caller that sends no view is answered
//! at every higher revision.
//!
//! **Epoch.** A random id of the control plane's database, stored in it and renewed when
//! the database is restored or replaced. A sidecar installs a snapshot whose epoch equals
//! the one it holds only if its revision is higher; a snapshot of another epoch is
//! installed whatever its revision, so a legitimate control plane can always reset a
//! sidecar stuck on a bogus high revision. Only a peer that passed the sidecar's TLS
//! verification can present one, so an attacker cannot.
//!
//! **Audit.** `POST /api/v1/audit` with an [`AuditBatch`] (JSON, at most
//! [`MAX_AUDIT_BATCH`] records): `202 Accepted`; `413` when larger. Same authentication;
//! records must name the token's namespace.
//!
//! **Unknown key ids.** `POST /api/v1/issuers/unknown-kid` with an [`UnknownKid`]: a
//! sidecar saw a token whose `kid` no key of that issuer has. `202`; the control plane
//! refetches that issuer's JWKS, rate limited.
//!
//! [`Snapshot`]: crate::Snapshot

use serde::{Deserialize, Serialize};

/// Prefix of the snapshot path; the namespace follows.
pub const SNAPSHOTS_PATH: &str = "/api/v1/snapshots/";
/// Where sidecars post audit batches.
pub const AUDIT_PATH: &str = "/api/v1/audit";
/// Where sidecars report a `kid` they could not find.
pub const UNKNOWN_KID_PATH: &str = "/api/v1/issuers/unknown-kid";
/// Default prefix of the token service, routed by every sidecar to the control plane.
pub const AUTH_PREFIX: &str = "/api/v1/auth/";
/// Longest long poll the control plane holds, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 60;
/// Most records in one audit batch.
pub const MAX_AUDIT_BATCH: usize = 1000;
/// Response header: the epoch of the control plane's database.
pub const EPOCH_HEADER: &str = "portcullis-epoch";
/// Response header: the revision the answer is at.
pub const REVISION_HEADER: &str = "portcullis-revision";
/// Response header: the digest of the namespace's view (see "Views" above).
pub const VIEW_HEADER: &str = "portcullis-view";
/// Longest view digest a caller may send back.
pub const MAX_VIEW_LEN: usize = 64;

/// The long poll's query string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotQuery {
    /// The revision the caller holds; `-1` for none.
    pub revision: i64,
    /// The epoch the caller holds; empty for none.
    #[serde(default)]
    pub epoch: String,
    /// Seconds to wait for a change; clamped to [`MAX_WAIT_SECONDS`].
    #[serde(default)]
    pub wait: u64,
    /// The [`VIEW_HEADER`] of the snapshot the caller holds; empty for none.
    #[serde(default)]
    pub view: String,
}

/// What a sidecar decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unix milliseconds at which the sidecar decided.
    pub at_ms: i64,
    pub correlation_id: String,
    /// The sidecar's namespace and pod.
    pub namespace: String,
    #[serde(default)]
    pub pod: String,
    /// The authenticated caller (`user:alice`, `source:ns/name`, `issuer#sub`), if any.
    #[serde(default)]
    pub actor: Option<String>,
    pub method: String,
    pub path: String,
    /// The AccessPolicy rule that decided (`policy/index`), if one matched.
    #[serde(default)]
    pub rule: Option<String>,
    pub decision: Decision,
    /// Why (`allowed`, `missing_credentials`, `forbidden`, `rate_limited`, …).
    pub reason: String,
    /// The status the client got.
    pub status: u16,
    /// The client's address as the sidecar established it.
    #[serde(default)]
    pub client: Option<String>,
}

/// Records a sidecar posts at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBatch {
    pub records: Vec<AuditRecord>,
}

/// A `kid` a sidecar met that none of the issuer's keys carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownKid {
    pub issuer: String,
    pub kid: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_records_round_trip_and_tolerate_missing_optionals() {
        let json = r#"{"records":[{"at_ms":1,"correlation_id":"c","namespace":"shop",
            "method":"GET","path":"/a","decision":"deny","reason":"forbidden","status":403}]}"#;
        let batch: AuditBatch = serde_json::from_str(json).unwrap_or_default();
        assert_eq!(batch.records.len(), 1);
        assert_eq!(batch.records[0].decision, Decision::Deny);
        assert_eq!(batch.records[0].actor, None);
        let again: AuditBatch =
            serde_json::from_str(&serde_json::to_string(&batch).unwrap_or_default()).unwrap_or_default();
        assert_eq!(again, batch);
    }
}
