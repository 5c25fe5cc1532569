//! Header names the sidecar reads and writes, as constants: a `&str` name is parsed and
//! validated on every use, a `HeaderName` constant never is.

use hyper::header::HeaderName;

pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const X_CLIENT_CERT: HeaderName = HeaderName::from_static("x-client-cert");
pub const X_CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_AUTH_USER: HeaderName = HeaderName::from_static("x-auth-user");
pub const X_AUTH_EMAIL: HeaderName = HeaderName::from_static("x-auth-email");
pub const X_AUTH_ROLES: HeaderName = HeaderName::from_static("x-auth-roles");
pub const X_AUTH_SCOPES: HeaderName = HeaderName::from_static("x-auth-scopes");
pub const X_AUTH_TEAMS: HeaderName = HeaderName::from_static("x-auth-teams");
pub const X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");
pub const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
pub const SUNSET: HeaderName = HeaderName::from_static("sunset");
