//! An in-memory Kubernetes API server behind a real `kube::Client`: what local mode
//! and the reconciler tests run against instead of a cluster.
//!
//! It speaks the REST paths, verbs and patch types the operator uses, with the
//! semantics the reconcilers depend on: cluster- and namespace-scoped kinds, a status
//! subresource (spec writes keep status, status writes keep spec), `generation` bumped
//! by spec changes only, `resourceVersion` conflicts, finalizers (DELETE only marks an
//! object with finalizers; it goes when the last one is removed), owner-reference
//! garbage collection, `stringData` folded into `data`, and label selectors on lists.
//! Watches are not served: local mode drives the reconcilers itself. TokenReviews are
//! answered from the tokens a test registered ([`MemoryApi::register_token`]).

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// A kind the in-memory API serves.
struct Kind {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
}

const KINDS: &[Kind] = &[
    Kind {
        group: "portcullis.io",
        version: "v1alpha1",
        plural: "roles",
        kind: "Role",
        namespaced: false,
        status: true,
    },
    Kind {
        group: "portcullis.io",
        version: "v1alpha1",
        plural: "users",
        kind: "User",
        namespaced: false,
        status: true,
    },
    Kind {
        group: "portcullis.io",
        version: "v1alpha1",
        plural: "teams",
        kind: "Team",
        namespaced: false,
        status: true,
    },
    Kind {
        group: "portcullis.io",
        version: "v1alpha1",
        plural: "apikeys",
        kind: "APIKey",
        namespaced: true,
        status: true,
    },
    Kind {
        group: "portcullis.io",
        version: "v1alpha1",
        plural: "sources",
        kind: "Source",
        namespaced: true,
        status: true,
    },
    Kind {
        group: "portcullis.io",
        version: "v1alpha1",
        plural: "accesspolicies",
        kind: "AccessPolicy",
        namespaced: true,
        status: true,
    },
    Kind {
        group: "portcullis.io",
        version: "v1alpha1",
        plural: "issuers",
        kind: "Issuer",
        namespaced: false,
        status: true,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "secrets",
        kind: "Secret",
        namespaced: true,
        status: false,
    },
    Kind {
        group: "",
        version: "v1",
        plural: "namespaces",
        kind: "Namespace",
        namespaced: false,
        status: false,
    },
    Kind {
        group: "admissionregistration.k8s.io",
        version: "v1",
        plural: "mutatingwebhookconfigurations",
        kind: "MutatingWebhookConfiguration",
        namespaced: false,
        status: false,
    },
    Kind {
        group: "authentication.k8s.io",
        version: "v1",
        plural: "tokenreviews",
        kind: "TokenReview",
        namespaced: false,
        status: false,
    },
    Kind {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        status: false,
    },
];

/// (plural, namespace or "", name)
type Key = (String, String, String);

#[derive(Default)]
struct State {
    /// Every object, as JSON bytes.
    objects: BTreeMap<Key, Bytes>,
    /// Owner uid → the objects naming it in `ownerReferences` (for garbage collection).
    owned: BTreeMap<String, BTreeSet<Key>>,
    version: u64,
    /// Tokens TokenReview accepts: token → (username, audiences).
    tokens: BTreeMap<String, (String, Vec<String>)>,
    /// TokenReviews answered so far.
    token_reviews: u64,
}

/// The in-memory API. Cheap to clone; clones share the objects.
#[derive(Clone, Default)]
pub struct MemoryApi {
    state: Arc<Mutex<State>>,
}

impl MemoryApi {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes TokenReview accept `token` as `username`, for `audiences`.
    pub fn register_token(&self, token: &str, username: &str, audiences: &[&str]) {
        let mut state = self.lock();
        state.tokens.insert(
            token.to_string(),
            (username.to_string(), audiences.iter().map(|a| a.to_string()).collect()),
        );
    }

    /// How many TokenReviews were answered.
    pub fn token_reviews(&self) -> u64 {
        self.lock().token_reviews
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A `kube::Client` whose requests this API answers.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(req).await) }
        });
        kube::Client::new(service, "default")
    }

    async fn handle(&self, req: Request<Body>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let bytes = match body.collect_bytes().await {
            Ok(b) => b,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &format!("unreadable body: {e}")),
        };
        let Some(route) = Route::parse(parts.uri.path()) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no such path {}", parts.uri.path()),
            );
        };
        let query: BTreeMap<String, String> = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        if query.get("watch").is_some_and(|w| w == "true" || w == "1") {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "the in-memory API does not serve watches",
            );
        }
        let body: Option<Value> = if bytes.is_empty() {
            None
        } else {
            match serde_json::from_slice(&bytes).or_else(|_| yaml_serde::from_slice(&bytes)) {
                Ok(v) => Some(v),
                Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &format!("body is not JSON: {e}")),
            }
        };
        let content_type = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if route.kind.plural == "tokenreviews" {
            return match (&parts.method, body) {
                (&Method::POST, Some(review)) => json_response(StatusCode::CREATED, &state.review(review)),
                _ => status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "TokenReviews are only created",
                ),
            };
        }
        let result = match (&parts.method, &route.name) {
            (&Method::GET, None) => return state.list(&route, &query),
            (&Method::GET, Some(name)) => match state.objects.get(&route.key(name)) {
                Some(bytes) => return bytes_response(StatusCode::OK, bytes.clone()),
                None => Err(Failure::not_found(&route, name)),
            },
            (&Method::POST, None) => state.create(&route, body),
            (&Method::PUT, Some(_)) => state.replace(&route, body),
            (&Method::PATCH, Some(_)) => state.patch(&route, body, content_type),
            (&Method::DELETE, Some(_)) => state.delete(&route),
            _ => Err(Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "verb not supported",
            )),
        };
        match result {
            Ok((code, value)) => json_response(code, &value),
            Err(f) => status(f.code, f.reason, &f.message),
        }
    }
}

/// A parsed resource path.
struct Route {
    kind: &'static Kind,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, plural, rest @ ..] => (Some(ns.to_string()), [&[*plural][..], rest].concat()),
            _ => (None, rest.to_vec()),
        };
        // `/api/v1/namespaces/<name>` is the Namespace object itself.
        let (plural, name, sub) = match (namespace.as_deref(), rest.as_slice()) {
            (Some(ns), []) if group.is_empty() => ("namespaces", Some(ns.to_string()), None),
            (_, [plural]) => (*plural, None, None),
            (_, [plural, name]) => (*plural, Some(name.to_string()), None),
            (_, [plural, name, sub]) => (*plural, Some(name.to_string()), Some(*sub)),
            _ => return None,
        };
        let namespace = if plural == "namespaces" { None } else { namespace };
        let kind = KINDS
            .iter()
            .find(|k| k.group == group && k.version == version && k.plural == plural)?;
        match sub {
            None => Some(Route {
                kind,
                namespace,
                name,
                status: false,
            }),
            Some("status") if kind.status => Some(Route {
                kind,
                namespace,
                name,
                status: true,
            }),
            Some(_) => None,
        }
    }

    fn key(&self, name: &str) -> Key {
        (
            self.kind.plural.to_string(),
            self.namespace.clone().unwrap_or_default(),
            name.to_string(),
        )
    }

    fn api_version(&self) -> String {
        if self.kind.group.is_empty() {
            self.kind.version.to_string()
        } else {
            format!("{}/{}", self.kind.group, self.kind.version)
        }
    }
}

struct Failure {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl Failure {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            code,
            reason,
            message: message.into(),
        }
    }
    fn not_found(route: &Route, name: &str) -> Self {
        Failure::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", route.kind.plural),
        )
    }
}

type Outcome = Result<(StatusCode, Value), Failure>;

impl State {
    /// Answers a TokenReview as the API server would: authenticated when the token is
    /// registered and valid for one of the audiences asked (any when none is asked);
    /// `status.audiences` the ones it is valid for.
    fn review(&mut self, mut review: Value) -> Value {
        self.token_reviews += 1;
        let token = review["spec"]["token"].as_str().unwrap_or("");
        let asked: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let status = match self.tokens.get(token) {
            Some((username, audiences)) => {
                let valid: Vec<&String> = if asked.is_empty() {
                    audiences.iter().collect()
                } else {
                    audiences.iter().filter(|a| asked.contains(a)).collect()
                };
                if valid.is_empty() {
                    json!({"authenticated": false, "error": "token audiences do not match"})
                } else {
                    json!({"authenticated": true, "user": {"username": username}, "audiences": valid})
                }
            }
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        review["status"] = status;
        review["metadata"] = json!({"creationTimestamp": null});
        review
    }

    fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    fn get(&self, route: &Route) -> Result<Value, Failure> {
        let name = route.name.as_deref().unwrap_or_default();
        let bytes = self
            .objects
            .get(&route.key(name))
            .ok_or_else(|| Failure::not_found(route, name))?;
        serde_json::from_slice(bytes)
            .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))
    }

    fn insert(&mut self, key: Key, obj: &Value) {
        for owner in obj["metadata"]["ownerReferences"].as_array().into_iter().flatten() {
            if let Some(uid) = owner["uid"].as_str() {
                self.owned.entry(uid.to_string()).or_default().insert(key.clone());
            }
        }
        self.objects
            .insert(key, Bytes::from(serde_json::to_vec(obj).unwrap_or_default()));
    }

    /// A list, built from the stored bytes; `limit` and `continue` page through it in
    /// key order (the continue token is the last key returned).
    fn list(&self, route: &Route, query: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
        let wanted = parse_selector(query.get("labelSelector").map_or("", String::as_str));
        let limit = query
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let after: Option<Key> = query.get("continue").and_then(|c| serde_json::from_str(c).ok());
        let mut items: Vec<&Bytes> = Vec::new();
        let mut last: Option<&Key> = None;
        let mut more = false;
        let matching = self.objects.iter().filter(|((plural, ns, _), _)| {
            plural == route.kind.plural && route.namespace.as_ref().is_none_or(|want| want == ns)
        });
        for (key, bytes) in matching.filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a)) {
            if !wanted.is_empty() {
                let obj: Value = serde_json::from_slice(bytes).unwrap_or_default();
                let selected = wanted.iter().all(|(k, v)| {
                    let label = obj["metadata"]["labels"].get(k).and_then(Value::as_str);
                    match v {
                        Some(v) => label == Some(v.as_str()),
                        None => label.is_some(),
                    }
                });
                if !selected {
                    continue;
                }
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(bytes);
            last = Some(key);
        }
        let mut metadata = json!({"resourceVersion": self.version.to_string()});
        if let (true, Some(last)) = (more, last) {
            metadata["continue"] = json!(serde_json::to_string(last).unwrap_or_default());
        }
        let head = json!({"apiVersion": route.api_version(), "kind": format!("{}List", route.kind.kind), "metadata": metadata});
        let mut body = serde_json::to_vec(&head).unwrap_or_default();
        body.pop(); // the closing brace: the items follow
        body.extend_from_slice(b",\"items\":[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(item);
        }
        body.extend_from_slice(b"]}");
        bytes_response(StatusCode::OK, Bytes::from(body))
    }

    fn create(&mut self, route: &Route, body: Option<Value>) -> Outcome {
        let mut obj = body.ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "BadRequest", "no body"))?;
        let name = obj["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name is required"))?
            .to_string();
        if route.kind.namespaced && route.namespace.is_none() {
            return Err(Failure::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "a namespace is required",
            ));
        }
        let key = route.key(&name);
        if self.objects.contains_key(&key) {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", route.kind.plural),
            ));
        }
        obj["apiVersion"] = json!(route.api_version());
        obj["kind"] = json!(route.kind.kind);
        let version = self.next_version();
        let meta = &mut obj["metadata"];
        if let Some(ns) = &route.namespace {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.version));
        meta["resourceVersion"] = json!(version);
        meta["generation"] = json!(1);
        meta["creationTimestamp"] = json!(now());
        if let Some(o) = meta.as_object_mut() {
            o.remove("deletionTimestamp");
        }
        fold_string_data(&mut obj);
        self.insert(key, &obj);
        Ok((StatusCode::CREATED, obj))
    }

    fn replace(&mut self, route: &Route, body: Option<Value>) -> Outcome {
        let new = body.ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "BadRequest", "no body"))?;
        let current = self.get(route)?;
        if let Some(rv) = new["metadata"]["resourceVersion"].as_str()
            && Some(rv) != current["metadata"]["resourceVersion"].as_str()
        {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        self.store(route, current, new)
    }

    fn patch(&mut self, route: &Route, body: Option<Value>, content_type: &str) -> Outcome {
        let patch = body.ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "BadRequest", "no body"))?;
        let current = match self.get(route) {
            Ok(c) => c,
            // Server-side apply creates what does not exist.
            Err(_) if content_type.contains("apply-patch") && !route.status => {
                return self.create(
                    &Route {
                        name: None,
                        ..route.clone_route()
                    },
                    Some(patch),
                );
            }
            Err(e) => return Err(e),
        };
        let mut new = current.clone();
        if content_type.contains("json-patch") {
            // Like the API server, a `test` for null passes on a missing path.
            let ops: Vec<Value> = match patch {
                Value::Array(ops) => ops
                    .into_iter()
                    .filter(|op| {
                        let missing = op["path"].as_str().is_some_and(|p| new.pointer(p).is_none());
                        !(op["op"] == "test" && op["value"].is_null() && missing)
                    })
                    .collect(),
                _ => {
                    return Err(Failure::new(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "a JSON patch is an array",
                    ));
                }
            };
            let ops: json_patch::Patch = serde_json::from_value(Value::Array(ops))
                .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "BadRequest", format!("bad JSON patch: {e}")))?;
            json_patch::patch(&mut new, &ops).map_err(|e| {
                Failure::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("JSON patch failed: {e}"),
                )
            })?;
        } else {
            // Merge patch, strategic merge and apply are all merges for our kinds: the
            // operator applies whole `status` objects and small metadata changes.
            json_patch::merge(&mut new, &patch);
        }
        self.store(route, current, new)
    }

    /// Writes `new` over `current`, with the rules of the status subresource,
    /// generation, resource version, finalizers and `stringData`.
    fn store(&mut self, route: &Route, current: Value, mut new: Value) -> Outcome {
        let name = route.name.clone().unwrap_or_default();
        if route.status {
            let mut merged = current.clone();
            merged["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            new = merged;
        } else if route.kind.status {
            match current.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        // What the server owns is the server's.
        for field in ["uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"] {
            match current["metadata"].get(field) {
                Some(v) => new["metadata"][field] = v.clone(),
                None => {
                    if let Some(o) = new["metadata"].as_object_mut() {
                        o.remove(field);
                    }
                }
            }
        }
        new["apiVersion"] = current["apiVersion"].clone();
        new["kind"] = current["kind"].clone();
        fold_string_data(&mut new);
        let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
        let spec_changed = new.get("spec") != current.get("spec");
        new["metadata"]["generation"] = json!(if spec_changed { generation + 1 } else { generation });
        if new == current {
            return Ok((StatusCode::OK, current));
        }
        new["metadata"]["resourceVersion"] = json!(self.next_version());
        let key = route.key(&name);
        let deleting = new["metadata"].get("deletionTimestamp").is_some();
        let finalizers_left = new["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if deleting && !finalizers_left {
            self.remove(&key);
        } else {
            self.insert(key, &new);
        }
        Ok((StatusCode::OK, new))
    }

    fn delete(&mut self, route: &Route) -> Outcome {
        let current = self.get(route)?;
        let key = route.key(route.name.as_deref().unwrap_or_default());
        let has_finalizers = current["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if current["metadata"].get("deletionTimestamp").is_some() {
                return Ok((StatusCode::OK, current));
            }
            let mut marked = current;
            marked["metadata"]["deletionTimestamp"] = json!(now());
            marked["metadata"]["resourceVersion"] = json!(self.next_version());
            self.insert(key, &marked);
            return Ok((StatusCode::OK, marked));
        }
        self.remove(&key);
        Ok((StatusCode::OK, current))
    }

    /// Removes an object and, like the garbage collector, what it owns.
    fn remove(&mut self, key: &Key) {
        let Some(bytes) = self.objects.remove(key) else { return };
        let obj: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let Some(uid) = obj["metadata"]["uid"].as_str() else {
            return;
        };
        for owned in self.owned.remove(uid).unwrap_or_default() {
            self.remove(&owned);
        }
    }
}

impl Route {
    fn clone_route(&self) -> Route {
        Route {
            kind: self.kind,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            status: self.status,
        }
    }
}

/// `stringData` is write-only: the API server folds it into `data` (base64).
fn fold_string_data(obj: &mut Value) {
    if obj["kind"] != "Secret" {
        return;
    }
    let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    if !obj["data"].is_object() {
        obj["data"] = json!({});
    }
    for (k, v) in string_data {
        let text = v.as_str().unwrap_or_default();
        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
}

/// `a=b,c` → [("a", Some("b")), ("c", None)].
fn parse_selector(selector: &str) -> Vec<(String, Option<String>)> {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|term| match term.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), Some(v.trim_start_matches('=').trim().to_string())),
            None => (term.trim().to_string(), None),
        })
        .collect()
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn json_response(code: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    bytes_response(code, Bytes::from(serde_json::to_vec(value).unwrap_or_default()))
}

fn bytes_response(code: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = code;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

    use super::*;
    use crate::crd::{Role, RoleSpec, User};

    fn role(name: &str) -> Role {
        Role::new(
            name,
            RoleSpec {
                scopes: vec!["read".into()],
                description: None,
            },
        )
    }

    #[tokio::test]
    async fn cluster_scoped_crud_with_generation_and_conflicts() {
        let client = MemoryApi::new().client();
        let roles: Api<Role> = Api::all(client);
        let created = roles.create(&PostParams::default(), &role("r")).await.unwrap();
        assert_eq!(created.metadata.generation, Some(1));
        assert!(created.metadata.uid.is_some());
        assert!(
            roles.create(&PostParams::default(), &role("r")).await.is_err(),
            "409 on a second create"
        );

        let mut changed = created.clone();
        changed.spec.scopes.push("write".into());
        let updated = roles.replace("r", &PostParams::default(), &changed).await.unwrap();
        assert_eq!(updated.metadata.generation, Some(2));
        // A stale resourceVersion is a conflict.
        let err = roles.replace("r", &PostParams::default(), &changed).await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409), "{err}");

        // Status writes keep the spec and do not bump the generation.
        let status = serde_json::json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Role", "status": {"observedGeneration": 2}});
        let after = roles
            .patch_status("r", &PatchParams::apply("t"), &Patch::Apply(&status))
            .await
            .unwrap();
        assert_eq!(after.metadata.generation, Some(2));
        assert_eq!(after.spec.scopes, ["read", "write"]);
        assert_eq!(after.status.unwrap().observed_generation, Some(2));
        assert_eq!(roles.list(&Default::default()).await.unwrap().items.len(), 1);
        assert!(roles.get_opt("nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn finalizers_hold_deletion_and_owners_collect_what_they_own() {
        let client = MemoryApi::new().client();
        let users: Api<User> = Api::all(client.clone());
        let mut user: User = serde_json::from_value(serde_json::json!({
            "apiVersion": "portcullis.io/v1alpha1", "kind": "User",
            "metadata": {"name": "u", "finalizers": ["portcullis.io/cleanup"]}, "spec": {"email": "u@example.com"}
        }))
        .unwrap();
        user = users.create(&PostParams::default(), &user).await.unwrap();
        let secrets: Api<Secret> = Api::namespaced(client, "ns");
        let owned: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s", "ownerReferences": [{"apiVersion": "portcullis.io/v1alpha1", "kind": "User", "name": "u", "uid": user.metadata.uid}]},
            "stringData": {"password": "pw"}
        }))
        .unwrap();
        let owned = secrets.create(&PostParams::default(), &owned).await.unwrap();
        assert_eq!(owned.data.unwrap()["password"].0, b"pw", "stringData folded into data");

        users.delete("u", &DeleteParams::default()).await.unwrap();
        let marked = users.get("u").await.unwrap();
        assert!(
            marked.metadata.deletion_timestamp.is_some(),
            "finalizer holds the object"
        );
        let remove = serde_json::json!([{"op": "remove", "path": "/metadata/finalizers/0"}]);
        users
            .patch(
                "u",
                &PatchParams::default(),
                &Patch::<()>::Json(serde_json::from_value(remove).unwrap()),
            )
            .await
            .unwrap();
        assert!(
            users.get_opt("u").await.unwrap().is_none(),
            "gone with its last finalizer"
        );
        assert!(secrets.get_opt("s").await.unwrap().is_none(), "owned Secret collected");
    }

    #[tokio::test]
    async fn lists_page_with_limit_and_continue_and_select_labels() {
        let client = MemoryApi::new().client();
        let roles: Api<Role> = Api::all(client.clone());
        for i in 0..5 {
            roles
                .create(&PostParams::default(), &role(&format!("r{i}")))
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut params = kube::api::ListParams::default().limit(2);
        loop {
            let page = roles.list(&params).await.unwrap();
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|r| r.metadata.name.clone().unwrap()));
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        assert_eq!(seen, ["r0", "r1", "r2", "r3", "r4"]);

        let secrets: Api<Secret> = Api::namespaced(client, "ns");
        for (name, label) in [("a", "yes"), ("b", "no")] {
            let s: Secret =
                serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": {"mine": label}}}))
                    .unwrap();
            secrets.create(&PostParams::default(), &s).await.unwrap();
        }
        let mine = secrets
            .list(&kube::api::ListParams::default().labels("mine=yes"))
            .await
            .unwrap();
        assert_eq!(mine.items.len(), 1);
        assert_eq!(mine.items[0].metadata.name.as_deref(), Some("a"));
    }

    #[test]
    fn routes_parse_core_group_cluster_and_namespaced_paths() {
        let r = Route::parse("/api/v1/namespaces/shop/secrets/key").unwrap();
        assert_eq!(
            (r.kind.plural, r.namespace.as_deref(), r.name.as_deref()),
            ("secrets", Some("shop"), Some("key"))
        );
        let r = Route::parse("/api/v1/namespaces/shop").unwrap();
        assert_eq!((r.kind.plural, r.name.as_deref()), ("namespaces", Some("shop")));
        let r = Route::parse("/apis/portcullis.io/v1alpha1/users/alice/status").unwrap();
        assert!(r.status && r.namespace.is_none());
        assert!(
            Route::parse("/apis/portcullis.io/v1alpha1/namespaces/ns/apikeys")
                .unwrap()
                .name
                .is_none()
        );
        assert!(Route::parse("/apis/apps/v1/deployments").is_none());
        assert!(Route::parse("/apis/portcullis.io/v1alpha1/users/alice/scale").is_none());
    }
}
