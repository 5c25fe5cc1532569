//! Issuer → `issuers`, with its keys fetched (see [`crate::issuers`]). The status says
//! how many keys are held, when they were fetched, and whether the last fetch failed
//! (the last good keys stay in force when it did).

use kube::ResourceExt;
use serde_json::json;

use super::{Applied, Context, Reconciler, Result, Verdict};
use crate::crd::Issuer;
use crate::issuers;
use crate::store::IssuerRow;

impl Reconciler for Issuer {
    const KIND: &'static str = "issuer";

    async fn apply(&self, ctx: &Context) -> Result<Applied> {
        let name = self.name_any();
        let spec = &self.spec;
        // The schema refuses these; an object that slipped past it fetches nothing.
        if !issuers::allowed(&spec.issuer) || spec.jwks_uri.as_deref().is_some_and(|u| !issuers::allowed(u)) {
            return Ok(Verdict::not_ready("InsecureUrl", "use https://, or http:// to a loopback address only").into());
        }
        let mut audiences = spec.audiences.clone();
        audiences.sort();
        audiences.dedup();
        let mut algorithms: Vec<String> = spec.algorithms.iter().map(|a| a.as_str().to_string()).collect();
        algorithms.sort();
        algorithms.dedup();
        let claims = [
            ("email", &spec.claims.email),
            ("roles", &spec.claims.roles),
            ("scopes", &spec.claims.scopes),
            ("teams", &spec.claims.teams),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
        let row = IssuerRow {
            name: name.clone(),
            issuer: spec.issuer.clone(),
            jwks_uri: spec.jwks_uri.clone(),
            audiences,
            claims,
            algorithms,
        };
        ctx.store.upsert_issuer(&row).await?;

        let mut held = ctx.store.issuer_keys(&name).await?.unwrap_or_default();
        let due = held.expires_at.is_none_or(|at| at <= portcullis_wire::unix_now());
        let mut failure = None;
        if due {
            match issuers::refresh(&ctx.store, &ctx.issuer_fetcher(), &name).await {
                Ok(Some(fresh)) => held = fresh,
                Ok(None) => {}
                Err(issuers::RefreshError::Store(e)) => return Err(e.into()),
                Err(issuers::RefreshError::Fetch(e)) => failure = Some(e.to_string()),
            }
        }
        let count = held.keys.len();
        let mut applied: Applied = match (failure, count) {
            (None, n) => Verdict::ready(format!("{n} verification key(s)")),
            (Some(e), 0) => Verdict::not_ready("KeysUnavailable", format!("no keys yet: {e}")),
            (Some(e), n) => Verdict::not_ready(
                "RefreshFailed",
                format!("serving the {n} last good key(s); the last fetch failed: {e}"),
            ),
        }
        .into();
        applied.extra_status.insert("keyCount".into(), json!(count));
        if let Some(at) = held.fetched_at.and_then(|at| jiff::Timestamp::from_second(at).ok()) {
            applied.extra_status.insert("lastRefresh".into(), json!(at.to_string()));
        }
        Ok(applied)
    }

    async fn cleanup(&self, ctx: &Context) -> Result<()> {
        ctx.store.delete_issuer(&self.name_any()).await?;
        Ok(())
    }
}
