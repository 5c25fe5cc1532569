//! The OpenAPI 3.1 document of the token service, generated from the code: the route
//! table below (the same paths `router` serves; a test checks they agree) and the
//! schemars schemas of the request and response types, each answer wrapped in the
//! `{"status","data","meta"}` envelope.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::api::{
    ChangePasswordRequest, Done, ErrorBody, ForgotPasswordRequest, LoginRequest, LogoutRequest, Meta, PreferencesInfo,
    PreferencesRequest, RefreshRequest, ResetPasswordRequest, RotatedKey, SessionInfo, TokenPair, UserInfo,
};

type SchemaFn = fn(&mut SchemaGenerator) -> schemars::Schema;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

/// One documented operation.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// Needs `Authorization: Bearer <access token>`.
    pub bearer: bool,
    pub request: Option<SchemaFn>,
    /// The status of success and the schema of `data`.
    pub ok: (u16, SchemaFn),
    /// Error statuses it may answer, besides 503.
    pub errors: &'static [u16],
}

/// Every operation of `/api/v1/auth/`.
pub fn operations() -> Vec<Operation> {
    vec![
        Operation {
            method: "post",
            path: "/api/v1/auth/login",
            summary: "Log in with e-mail and password: an access token and a refresh token",
            bearer: false,
            request: Some(schema::<LoginRequest>),
            ok: (200, schema::<TokenPair>),
            errors: &[400, 401, 429],
        },
        Operation {
            method: "post",
            path: "/api/v1/auth/refresh",
            summary: "Exchange the refresh token for new tokens (rotating; a reused token revokes the session)",
            bearer: false,
            request: Some(schema::<RefreshRequest>),
            ok: (200, schema::<TokenPair>),
            errors: &[400, 401],
        },
        Operation {
            method: "post",
            path: "/api/v1/auth/logout",
            summary: "End this session, or every session of the user with all=true",
            bearer: true,
            request: Some(schema::<LogoutRequest>),
            ok: (200, schema::<Done>),
            errors: &[400, 401],
        },
        Operation {
            method: "get",
            path: "/api/v1/auth/user",
            summary: "Who am I: name, e-mail, roles, scopes, teams, preferences",
            bearer: true,
            request: None,
            ok: (200, schema::<UserInfo>),
            errors: &[401],
        },
        Operation {
            method: "put",
            path: "/api/v1/auth/user/preferences",
            summary: "Set or clear the user's own preferences (they win over the User's)",
            bearer: true,
            request: Some(schema::<PreferencesRequest>),
            ok: (200, schema::<PreferencesInfo>),
            errors: &[400, 401],
        },
        Operation {
            method: "get",
            path: "/api/v1/auth/sessions",
            summary: "Live sessions of the caller (admins: of ?user=NAME)",
            bearer: true,
            request: None,
            ok: (200, schema::<Vec<SessionInfo>>),
            errors: &[401, 403],
        },
        Operation {
            method: "delete",
            path: "/api/v1/auth/sessions/{id}",
            summary: "Revoke one of the caller's sessions (admins: anyone's)",
            bearer: true,
            request: None,
            ok: (200, schema::<Done>),
            errors: &[401, 404],
        },
        Operation {
            method: "post",
            path: "/api/v1/auth/password",
            summary: "Change the password (current one required); every other session ends",
            bearer: true,
            request: Some(schema::<ChangePasswordRequest>),
            ok: (200, schema::<Done>),
            errors: &[400, 401, 403, 429],
        },
        Operation {
            method: "post",
            path: "/api/v1/auth/password/forgot",
            summary: "Mail a single-use reset link valid one hour (same answer whether the e-mail is known or not)",
            bearer: false,
            request: Some(schema::<ForgotPasswordRequest>),
            ok: (202, schema::<Done>),
            errors: &[400],
        },
        Operation {
            method: "post",
            path: "/api/v1/auth/password/reset",
            summary: "Set a new password with the mailed token; every session ends",
            bearer: false,
            request: Some(schema::<ResetPasswordRequest>),
            ok: (200, schema::<Done>),
            errors: &[400],
        },
        Operation {
            method: "post",
            path: "/api/v1/auth/keys/rotate",
            summary: "Rotate the signing key now (admin scope); the old key stays published until its tokens expire",
            bearer: true,
            request: None,
            ok: (200, schema::<RotatedKey>),
            errors: &[401, 403],
        },
    ]
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad request (the error says which field)",
        401 => "No valid credential (WWW-Authenticate: Bearer)",
        403 => "Forbidden",
        404 => "Not found",
        429 => "Too many attempts (Retry-After says when to retry)",
        503 => "The token service cannot answer now",
        _ => "",
    }
}

/// The document.
pub fn document(issuer: &str) -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let meta = generator.subschema_for::<Meta>();
    let error = generator.subschema_for::<ErrorBody>();
    let mut paths = Map::new();
    for op in operations() {
        let data = (op.ok.1)(&mut generator);
        let envelope = json!({
            "type": "object",
            "required": ["status", "data", "meta"],
            "properties": {"status": {"const": "ok"}, "data": data, "meta": meta},
        });
        let mut responses = Map::new();
        responses.insert(
            op.ok.0.to_string(),
            json!({"description": reason(op.ok.0), "content": {"application/json": {"schema": envelope}}}),
        );
        for status in op.errors.iter().chain([&503]) {
            let mut response = json!({
                "description": reason(*status),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
            });
            if *status == 429 {
                response["headers"] = json!({"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}});
            }
            responses.insert(status.to_string(), response);
        }
        let mut operation = json!({
            "summary": op.summary,
            "operationId": format!("{}_{}", op.method, op.path.trim_start_matches("/api/v1/auth/").replace(['/', '{', '}'], "_")),
            "parameters": [{"name": "X-Correlation-ID", "in": "header", "required": false, "schema": {"type": "string"}}],
            "responses": responses,
        });
        if let Some(params) = operation["parameters"].as_array_mut() {
            if op.path.contains("{id}") {
                params.push(json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}));
            }
            if op.path.ends_with("/sessions") {
                params.push(json!({"name": "user", "in": "query", "required": false, "schema": {"type": "string"}}));
            }
            if op.path.ends_with("/logout") {
                params.push(json!({"name": "all", "in": "query", "required": false, "schema": {"type": "boolean"}}));
            }
        }
        if let Some(request) = op.request {
            operation["requestBody"] = json!({
                "required": op.path != "/api/v1/auth/logout",
                "content": {"application/json": {"schema": request(&mut generator)}},
            });
        }
        if op.bearer {
            operation["security"] = json!([{"bearer": []}]);
        }
        let entry = paths.entry(op.path.to_string()).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    let mut schemas = generator.take_definitions(true);
    schemas.insert(
        "ErrorEnvelope".into(),
        json!({
            "type": "object",
            "required": ["status", "error", "meta"],
            "properties": {"status": {"const": "error"}, "error": error, "meta": meta},
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Portcullis token service",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Login, rotating refresh tokens, logout, sessions, passwords. Every answer is {\"status\",\"data\"|\"error\",\"meta\"}. The JWKS (/.well-known/jwks.json) and discovery document (/.well-known/openid-configuration) follow their RFCs instead.",
        },
        "servers": [{"url": issuer}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    })
}
