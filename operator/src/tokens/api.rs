//! Request and response bodies of the token service (their schemas make the OpenAPI
//! document), the `{"status","data","meta"}` envelope, errors, and what every call
//! knows about its caller ([`Call`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::TokenService;

/// `POST /api/v1/auth/login`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    /// A session of `REMEMBER_ME_TTL` (30 days) instead of `REFRESH_TOKEN_TTL` (1 day).
    #[serde(default)]
    pub remember_me: bool,
}

/// `POST /api/v1/auth/refresh`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// `POST /api/v1/auth/logout` (body optional).
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct LogoutRequest {
    /// End every session of the user, not only this one (`?all=true` works too).
    #[serde(default)]
    pub all: bool,
    /// Log out with the refresh token when the access token has expired.
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// What login and refresh answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TokenPair {
    /// EdDSA JWT: `Authorization: Bearer …`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds the access token is valid.
    pub expires_in: i64,
    /// Single use: refreshing returns a new one; presenting a used one revokes the session.
    pub refresh_token: String,
    /// Unix seconds at which the session (and its refresh token) ends.
    pub refresh_expires_at: i64,
    /// The session id (the access token's `sid`).
    pub session_id: String,
}

/// `GET /api/v1/auth/user`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UserInfo {
    pub name: String,
    pub email: String,
    pub display_name: Option<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub teams: Vec<TeamInfo>,
    /// Effective preferences: the User's `preferences` overlaid with the user's own.
    pub preferences: BTreeMap<String, String>,
    /// The User resource's `preferences` (the defaults).
    pub preference_defaults: BTreeMap<String, String>,
    /// The keys the user set here (they win over the defaults).
    pub preference_overrides: BTreeMap<String, String>,
    /// The session of this access token.
    pub session_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TeamInfo {
    pub team: String,
    /// owner, admin, member or viewer.
    pub role: String,
}

/// `PUT /api/v1/auth/user/preferences`: a merge patch of the user's own preferences.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct PreferencesRequest {
    /// A string sets the key; `null` removes the user's value (the User's default applies again).
    pub preferences: BTreeMap<String, Option<String>>,
}

/// `PUT /api/v1/auth/user/preferences` answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PreferencesInfo {
    pub preferences: BTreeMap<String, String>,
    pub preference_defaults: BTreeMap<String, String>,
    pub preference_overrides: BTreeMap<String, String>,
}

/// One session in `GET /api/v1/auth/sessions`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionInfo {
    pub id: String,
    pub user: String,
    /// Browser and platform, read from the user agent.
    pub device: Option<String>,
    pub user_agent: Option<String>,
    pub client_address: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    pub last_used_at: i64,
    pub expires_at: i64,
    pub remember_me: bool,
    /// The session of the access token that asked.
    pub current: bool,
}

/// `GET /api/v1/auth/sessions`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SessionsQuery {
    /// Another user's sessions (admins only).
    pub user: Option<String>,
}

/// `POST /api/v1/auth/password`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
}

/// `POST /api/v1/auth/password/forgot`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ForgotPasswordRequest {
    pub email: String,
}

/// `POST /api/v1/auth/password/reset`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ResetPasswordRequest {
    /// The token from the mailed link.
    pub token: String,
    pub new_password: String,
}

/// Answers that only say what happened.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Done {
    pub message: String,
    /// Sessions revoked by this call, when it revokes any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions_revoked: Option<u64>,
}

/// `POST /api/v1/auth/keys/rotate`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RotatedKey {
    pub kid: String,
    /// Unix seconds from which the new key signs (it is published now).
    pub active_from: i64,
}

/// The envelope of every answer.
#[derive(Debug, Serialize)]
pub struct Envelope<T> {
    /// `ok` or `error`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    pub meta: Meta,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Meta {
    pub version: u32,
    /// RFC 3339.
    pub timestamp: String,
    pub correlation_id: String,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<i64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn too_many(retry_after: i64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after.max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many attempts; retry later",
            )
        }
    }

    /// Something failed inside: logged with its cause, answered without it.
    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "token service request failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the token service cannot answer now; retry later",
        )
    }
}

macro_rules! internal_from {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> ApiError {
                ApiError::internal(&e)
            }
        }
    )*};
}
internal_from!(
    super::Error,
    crate::store::StoreError,
    super::KeyError,
    crate::credentials::HashError,
    tokio::task::JoinError
);

/// What every call knows about its caller.
#[derive(Debug, Clone)]
pub struct Call {
    pub correlation_id: String,
    /// The client's address: the peer's, or the last `X-Forwarded-For` hop when the
    /// peer is a trusted proxy (a sidecar).
    pub client: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub bearer: Option<String>,
    pub query_all: bool,
}

impl FromRequestParts<TokenService> for Call {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &TokenService) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let client = match peer {
            Some(ip) if ip.is_loopback() || state.settings().trusted_proxies.iter().any(|n| n.contains(ip)) => {
                forwarded_for(headers).or(Some(ip))
            }
            other => other,
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(|t| t.trim().to_string());
        let query_all = parts
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "all=true" || kv == "all=1"));
        Ok(Call {
            correlation_id: correlation_id(headers),
            client,
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| ua.chars().take(512).collect()),
            bearer,
            query_all,
        })
    }
}

/// The last hop of `X-Forwarded-For` (the one our trusted peer appended).
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let value = headers.get_all("x-forwarded-for").iter().next_back()?.to_str().ok()?;
    value.rsplit(',').next()?.trim().parse().ok()
}

/// The caller's correlation id when it is a sane token, else a fresh one.
fn correlation_id(headers: &HeaderMap) -> String {
    for name in ["x-correlation-id", "x-request-id"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok())
            && !v.is_empty()
            && v.len() <= 128
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        {
            return v.to_string();
        }
    }
    super::handlers::random_id()
}

impl Call {
    fn meta(&self) -> Meta {
        let now = jiff::Timestamp::now().as_second();
        Meta {
            version: 1,
            timestamp: jiff::Timestamp::from_second(now).map_or_else(|_| String::new(), |t| t.to_string()),
            correlation_id: self.correlation_id.clone(),
        }
    }

    /// The enveloped answer.
    pub fn respond<T: Serialize>(&self, result: Result<(StatusCode, T), ApiError>) -> Response {
        let (status, body, retry_after) = match result {
            Ok((status, data)) => (
                status,
                serde_json::to_vec(&Envelope {
                    status: "ok",
                    data: Some(data),
                    error: None,
                    meta: self.meta(),
                }),
                None,
            ),
            Err(e) => (
                e.status,
                serde_json::to_vec(&Envelope::<()> {
                    status: "error",
                    data: None,
                    error: Some(ErrorBody {
                        code: e.code.to_string(),
                        message: e.message,
                    }),
                    meta: self.meta(),
                }),
                e.retry_after,
            ),
        };
        let body = body.unwrap_or_else(|_| br#"{"status":"error"}"#.to_vec());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // Tokens and personal data: never in a shared cache.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(&self.correlation_id) {
            headers.insert("x-correlation-id", v);
        }
        if let Some(secs) = retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Parses a JSON body into `T`, refusing it (400, enveloped) when it does not fit.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.len() > 64 * 1024 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "body over 64 KiB",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        // serde's message names the field and the problem, never the value of a string.
        ApiError::bad_request(format!(
            "body: {}",
            e.to_string().split(" at line").next().unwrap_or("invalid JSON")
        ))
    })
}
