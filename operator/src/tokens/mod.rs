//! The token service: login with e-mail and password, short-lived EdDSA access tokens,
//! rotating refresh tokens, logout, sessions, password change and reset by e-mail,
//! signing-key rotation, JWKS and the OpenAPI document of it all.
//!
//! - [`keys`]: signing keys, the key-encryption key, JWS signing and verification.
//! - [`handlers`]: what each endpoint does (the abuse rules live there).
//! - [`api`]: request and response bodies, the JSON envelope, errors.
//! - [`openapi`]: the OpenAPI 3.1 document, built from the route table and the bodies' schemas.
//! - [`mail`]: a small SMTP client (STARTTLS or implicit TLS) for reset mails.
//! - [`settings`]: flags and environment variables.
//!
//! [`router`] serves it; the operator's API server merges it (every replica serves it,
//! leader or not), and every sidecar routes `/api/v1/auth/*` here.

pub mod api;
pub mod handlers;
pub mod keys;
pub mod mail;
pub mod openapi;
pub mod settings;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::routing::{delete, get, post, put};

pub use keys::{KekSource, KeyError};
pub use settings::{Settings, SmtpSettings, SmtpTls, TokenArgs};

use crate::credentials::HashError;
use crate::store::{Store, StoreError, TOKEN_LEEWAY_SECS};
use keys::{Kek, KeyRing};

/// The service's clock: the system's, or one a test moves by hand (token expiry,
/// reset-token expiry, backoff and key rotation all follow it).
#[derive(Clone, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that stands at `start` until [`Clock::advance`] moves it.
    pub fn manual(start: i64) -> Clock {
        Clock(Some(Arc::new(AtomicI64::new(start))))
    }

    /// Unix seconds.
    pub fn now(&self) -> i64 {
        match &self.0 {
            Some(t) => t.load(Ordering::SeqCst),
            None => crate::store::unix_now(),
        }
    }

    /// Moves a manual clock forward (nothing on the system clock).
    pub fn advance(&self, seconds: i64) {
        if let Some(t) = &self.0 {
            t.fetch_add(seconds, Ordering::SeqCst);
        }
    }
}

/// What stops the token service from starting or maintaining its keys.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("token service: {0}")]
    Store(#[from] StoreError),
    #[error("token service: {0}")]
    Key(#[from] KeyError),
    #[error("token service: password hashing: {0}")]
    Hash(#[from] HashError),
    #[error("token service: {0}")]
    Mail(#[from] mail::MailError),
    #[error("token service: {0}")]
    Settings(String),
}

/// The token service's state, shared by every request (cheap to clone).
#[derive(Clone)]
pub struct TokenService(Arc<Inner>);

struct Inner {
    store: Store,
    settings: Settings,
    clock: Clock,
    kek: Kek,
    ring: RwLock<Arc<KeyRing>>,
    /// Hashed at start with the production settings: unknown e-mails are checked
    /// against it, so that they cost the same time as known ones.
    dummy_hash: String,
    /// At most this many password hashes at once: a login flood queues instead of
    /// starving every other task of CPU.
    hashing: tokio::sync::Semaphore,
    mailer: Option<mail::Mailer>,
}

/// How often every replica reloads the keys, rotates when due and prunes.
pub const MAINTENANCE_PERIOD: Duration = Duration::from_secs(30);

impl TokenService {
    /// Loads (or, on first start, makes) the key-encryption key and the signing keys,
    /// hashes the dummy password, and makes sure a key signs for the configured issuer.
    pub async fn start(store: Store, settings: Settings, kek: &KekSource, clock: Clock) -> Result<TokenService, Error> {
        settings.check().map_err(Error::Settings)?;
        let kek = Kek::load(kek).await?;
        let params = settings.argon2.clone();
        let dummy_hash = tokio::task::spawn_blocking(move || {
            crate::credentials::hash_password_with("portcullis dummy password", &params)
        })
        .await
        .map_err(HashError::from)?
        .map_err(HashError::from)?;
        let mailer = match &settings.smtp {
            Some(smtp) => Some(mail::Mailer::new(smtp.clone())?),
            None => None,
        };
        let parallel = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let service = TokenService(Arc::new(Inner {
            store,
            settings,
            clock,
            kek,
            ring: RwLock::new(Arc::new(KeyRing::default())),
            dummy_hash,
            hashing: tokio::sync::Semaphore::new(parallel),
            mailer,
        }));
        service.maintain().await?;
        Ok(service)
    }

    /// Cluster mode: the key-encryption key in the Secret `args.signing_key_secret` of
    /// `namespace`.
    pub async fn start_in_cluster(
        store: Store,
        args: &TokenArgs,
        client: kube::Client,
        namespace: &str,
    ) -> Result<TokenService, Error> {
        let kek = KekSource::Secret {
            client,
            namespace: namespace.to_string(),
            name: args.signing_key_secret.clone(),
        };
        TokenService::start(store, args.settings().map_err(Error::Settings)?, &kek, Clock::system()).await
    }

    /// Local mode: the key-encryption key in `<state_dir>/signing-kek` (mode 0600).
    pub async fn start_local(
        store: Store,
        args: &TokenArgs,
        state_dir: &std::path::Path,
    ) -> Result<TokenService, Error> {
        let kek = KekSource::File(state_dir.join("signing-kek"));
        TokenService::start(store, args.settings().map_err(Error::Settings)?, &kek, Clock::system()).await
    }

    pub fn settings(&self) -> &Settings {
        &self.0.settings
    }

    pub fn clock(&self) -> &Clock {
        &self.0.clock
    }

    pub fn store(&self) -> &Store {
        &self.0.store
    }

    fn ring(&self) -> Arc<KeyRing> {
        self.0.ring.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Re-reads the keys from the store (another replica may have rotated).
    pub async fn reload_keys(&self) -> Result<(), Error> {
        let rows = self.0.store.signing_keys().await?;
        let ring = KeyRing::from_rows(&rows, &self.0.kek, self.0.clock.now())?;
        *self.0.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
        Ok(())
    }

    /// Reloads the keys; makes the first key (or one for a changed issuer) at once,
    /// rotates when the newest key is older than the rotation period, and deletes keys
    /// no valid token can carry any more. Every replica runs it; the store makes sure
    /// that two replicas due at once rotate once.
    pub async fn maintain(&self) -> Result<(), Error> {
        self.reload_keys().await?;
        let now = self.0.clock.now();
        let issuer = self.0.settings.issuer.clone();
        let ring = self.ring();
        if !ring.has_key_for(&issuer) {
            // Nothing signs for this issuer: a key is needed now, not after the publish delay.
            self.add_key(now, now, None).await?;
            tracing::info!(issuer = %issuer, "made a signing key (first start or new issuer)");
        } else if ring
            .newest_active_from()
            .is_some_and(|t| t + self.0.settings.key_rotation <= now)
        {
            let since = now - self.0.settings.key_rotation;
            if self
                .add_key(now, now + self.0.settings.publish_ahead, Some(since))
                .await?
            {
                tracing::info!("rotated the signing key on schedule");
            }
        }
        if self.0.store.prune_signing_keys(now).await?.changed {
            tracing::info!("retired signing keys whose tokens have all expired");
        }
        self.reload_keys().await
    }

    /// Rotates now (admin endpoint): the new key is published at once and signs after
    /// the publish delay, so that every sidecar knows it before it sees a token of it.
    pub async fn rotate_now(&self) -> Result<(String, i64), Error> {
        let now = self.0.clock.now();
        let active_from = now + self.0.settings.publish_ahead;
        let kid = self.add_key_kid(now, active_from, None).await?.unwrap_or_default();
        self.reload_keys().await?;
        Ok((kid, active_from))
    }

    async fn add_key(&self, now: i64, active_from: i64, unless_since: Option<i64>) -> Result<bool, Error> {
        Ok(self.add_key_kid(now, active_from, unless_since).await?.is_some())
    }

    async fn add_key_kid(
        &self,
        now: i64,
        active_from: i64,
        unless_since: Option<i64>,
    ) -> Result<Option<String>, Error> {
        let row = keys::generate(&self.0.kek, &self.0.settings.issuer, now, active_from)?;
        // Tokens the replaced keys sign until `active_from` live one access-token
        // lifetime more, and sidecars allow their leeway on top.
        let retire = active_from + self.0.settings.access_ttl + i64::from(TOKEN_LEEWAY_SECS);
        let outcome = self.0.store.add_signing_key(&row, retire, unless_since).await?;
        Ok(outcome.changed.then_some(row.kid))
    }

    /// Runs [`TokenService::maintain`] every [`MAINTENANCE_PERIOD`] until `stop`.
    pub async fn run_maintenance(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(MAINTENANCE_PERIOD) => {}
            }
            if let Err(e) = self.maintain().await {
                tracing::warn!(error = %e, "signing-key maintenance failed; retrying later");
            }
        }
    }
}

/// The token service's routes: `/api/v1/auth/…`, `/.well-known/jwks.json`,
/// `/.well-known/openid-configuration` and `/api/v1/openapi.json`. The API server merges
/// this router; serve it with `into_make_service_with_connect_info::<SocketAddr>()` so
/// that throttling knows the client's address.
pub fn router(state: TokenService) -> Router {
    Router::new()
        .route("/api/v1/auth/login", post(handlers::login))
        .route("/api/v1/auth/refresh", post(handlers::refresh))
        .route("/api/v1/auth/logout", post(handlers::logout))
        .route("/api/v1/auth/user", get(handlers::user))
        .route("/api/v1/auth/user/preferences", put(handlers::put_preferences))
        .route("/api/v1/auth/sessions", get(handlers::sessions))
        .route("/api/v1/auth/sessions/{id}", delete(handlers::delete_session))
        .route("/api/v1/auth/password", post(handlers::change_password))
        .route("/api/v1/auth/password/forgot", post(handlers::forgot_password))
        .route("/api/v1/auth/password/reset", post(handlers::reset_password))
        .route("/api/v1/auth/keys/rotate", post(handlers::rotate_keys))
        .route("/.well-known/jwks.json", get(handlers::jwks))
        .route("/.well-known/openid-configuration", get(handlers::openid_configuration))
        .route("/api/v1/openapi.json", get(handlers::openapi))
        .with_state(state)
}
