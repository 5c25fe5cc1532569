//! The example manifests are valid (as the API server would judge them) and coherent,
//! and the schema refuses what it promises to refuse.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is the failure report (clippy.toml allows these in #[test] functions only, not in helpers)"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use portcullis_operator::crd::{self, AccessPolicy, ApiKey, Role, Source, Team, User};
use serde_json::{Value, json};

fn examples() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "yaml")) {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in yaml_serde::Deserializer::from_str(&text) {
            let value: Value =
                serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if !value.is_null() {
                docs.push((file.file_name().unwrap().to_string_lossy().into_owned(), value));
            }
        }
    }
    docs
}

fn validate(object: &Value) -> Result<(), Vec<String>> {
    thread_local! {
        static VALIDATOR: crd::validate::Validator = crd::validate::Validator::new();
    }
    VALIDATOR.with(|v| v.validate(object))
}

#[test]
fn examples_are_valid_and_cover_every_kind() {
    let mut kinds = BTreeSet::new();
    for (file, doc) in examples() {
        if doc["apiVersion"] != "portcullis.io/v1alpha1" {
            continue;
        }
        let kind = doc["kind"].as_str().unwrap().to_string();
        if let Err(errors) = validate(&doc) {
            panic!("{file}: {kind} {}: {errors:?}", doc["metadata"]["name"]);
        }
        let typed = match kind.as_str() {
            "Role" => serde_json::from_value::<Role>(doc.clone()).map(drop),
            "User" => serde_json::from_value::<User>(doc.clone()).map(drop),
            "Team" => serde_json::from_value::<Team>(doc.clone()).map(drop),
            "APIKey" => serde_json::from_value::<ApiKey>(doc.clone()).map(drop),
            "Source" => serde_json::from_value::<Source>(doc.clone()).map(drop),
            "AccessPolicy" => serde_json::from_value::<AccessPolicy>(doc.clone()).map(drop),
            other => panic!("{file}: unexpected kind {other}"),
        };
        typed.unwrap_or_else(|e| panic!("{file}: {kind}: {e}"));
        kinds.insert(kind);
    }
    assert_eq!(
        kinds,
        ["APIKey", "AccessPolicy", "Role", "Source", "Team", "User"]
            .map(String::from)
            .into()
    );
}

#[test]
fn examples_reference_only_what_exists() {
    let docs = examples();
    let named = |kind: &str| -> BTreeSet<String> {
        docs.iter()
            .filter(|(_, d)| d["kind"] == kind)
            .map(|(_, d)| d["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let mut roles = named("Role");
    roles.extend(["admin", "maintainer", "viewer"].map(String::from)); // built in
    let users = named("User");
    let sources = named("Source");
    let secrets: BTreeMap<(String, String), Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "Secret")
        .map(|(_, d)| {
            let m = &d["metadata"];
            (
                (
                    m["namespace"].as_str().unwrap().into(),
                    m["name"].as_str().unwrap().into(),
                ),
                d["stringData"].clone(),
            )
        })
        .collect();
    for (file, doc) in &docs {
        let spec = &doc["spec"];
        match doc["kind"].as_str().unwrap() {
            "User" => {
                for role in spec["roles"].as_array().into_iter().flatten() {
                    assert!(
                        roles.contains(role.as_str().unwrap()),
                        "{file}: role {role} does not exist"
                    );
                }
                let r = &spec["passwordSecretRef"];
                let key = (
                    r["namespace"].as_str().unwrap().to_string(),
                    r["name"].as_str().unwrap().to_string(),
                );
                let data = secrets.get(&key).unwrap_or_else(|| panic!("{file}: no Secret {key:?}"));
                assert!(
                    data[r["key"].as_str().unwrap_or("password")].is_string(),
                    "{file}: Secret {key:?} lacks the key"
                );
            }
            "Team" => {
                for m in spec["members"].as_array().unwrap() {
                    assert!(
                        users.contains(m["user"].as_str().unwrap()),
                        "{file}: member {m} is not a User"
                    );
                }
            }
            "APIKey" => {
                if let Some(user) = spec["owner"]["user"].as_str() {
                    assert!(users.contains(user), "{file}: owner {user} is not a User");
                }
                if let Some(source) = spec["owner"]["source"].as_str() {
                    assert!(sources.contains(source), "{file}: owner {source} is not a Source");
                }
            }
            _ => {}
        }
    }
}

fn user(spec: Value) -> Value {
    json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "User", "metadata": {"name": "u"}, "spec": spec})
}

fn api_key(owner: Value) -> Value {
    json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "APIKey", "metadata": {"name": "k", "namespace": "n"},
           "spec": {"owner": owner, "scopes": ["read"]}})
}

fn policy(rule: Value) -> Value {
    json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "AccessPolicy", "metadata": {"name": "p", "namespace": "n"},
           "spec": {"rules": [rule]}})
}

fn refused(object: Value, expect: &str) {
    let errors = validate(&object).expect_err(&format!("should be refused: {object}"));
    assert!(errors.iter().any(|e| e.contains(expect)), "{errors:?} lacks {expect:?}");
}

#[test]
fn schema_refuses_bad_fields() {
    assert!(validate(&user(json!({"email": "a@example.com"}))).is_ok());
    refused(user(json!({"email": "not-an-email"})), "spec.email");
    refused(user(json!({})), "spec.email: required");
    refused(
        user(json!({"email": "a@example.com", "rolez": ["admin"]})),
        "spec.rolez: unknown field",
    );
    refused(
        user(json!({"email": "a@example.com", "roles": ["Admin!"]})),
        "spec.roles[0]",
    );
    refused(
        user(json!({"email": "a@example.com", "roles": ["admin", "admin"]})),
        "duplicate entry",
    );
    refused(
        user(json!({"email": "a@example.com", "disabled": "yes"})),
        "expected boolean",
    );
    let team = json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Team", "metadata": {"name": "t"},
                      "spec": {"members": [{"user": "a", "role": "overlord"}]}});
    refused(team, "is not one of");
    let twice = json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Team", "metadata": {"name": "t"},
                       "spec": {"members": [{"user": "a", "role": "owner"}, {"user": "a", "role": "viewer"}]}});
    refused(twice, "duplicate entry for user");
    let role = json!({"apiVersion": "portcullis.io/v1alpha1", "kind": "Role", "metadata": {"name": "r"},
                      "spec": {"scopes": ["read", "sources:write", "sudo make me a sandwich"]}});
    refused(role, "spec.scopes[2]");
    let expiry = api_key(json!({"user": "bob"}));
    let mut expiry = expiry;
    expiry["spec"]["expiresAt"] = json!("next tuesday");
    refused(expiry, "RFC 3339");
}

#[test]
fn cel_rules_refuse_what_the_schema_cannot_say() {
    assert!(validate(&api_key(json!({"user": "bob"}))).is_ok());
    assert!(validate(&api_key(json!({"source": "edge-syslog"}))).is_ok());
    refused(
        api_key(json!({"user": "bob", "source": "edge-syslog"})),
        "exactly one owner",
    );
    refused(api_key(json!({})), "exactly one owner");

    assert!(validate(&policy(json!({"name": "ok", "paths": ["/api/**"]}))).is_ok());
    refused(
        policy(json!({"name": "rel", "paths": ["api/**"]})),
        "every path must start with /",
    );
    refused(
        policy(json!({"name": "pub", "paths": ["/x"], "public": true, "requireScopes": ["read"]})),
        "a public rule cannot also require",
    );
    assert!(validate(&policy(json!({"name": "pub", "paths": ["/x"], "public": true}))).is_ok());
    refused(
        policy(json!({"name": "team", "paths": ["/api/v1/teams/**"], "requireTeamRole": "member"})),
        "needs a {team} capture",
    );
    assert!(
        validate(&policy(
            json!({"name": "team", "paths": ["/t/{team}/**"], "requireTeamRole": "member"})
        ))
        .is_ok()
    );
    let mut any_origin = policy(json!({"name": "ok", "paths": ["/api/**"]}));
    any_origin["spec"]["cors"] = json!({"allowedOrigins": ["*"], "allowCredentials": true});
    refused(any_origin.clone(), "cannot be combined with allowCredentials");
    any_origin["spec"]["cors"]["allowCredentials"] = json!(false);
    assert!(validate(&any_origin).is_ok());
}
