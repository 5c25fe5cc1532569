//! Checks a manifest the way the API server would before admitting it: the structural
//! schema of its CRD (types, required fields, unknown fields, enums, patterns, bounds,
//! list uniqueness) and its CEL `x-kubernetes-validations` rules.
//!
//! In a cluster the API server does this; without one (local mode, tests of the
//! examples) this is what stands between a typo and the database.

use std::collections::{HashMap, HashSet};

use kube::core::cel::{CompiledSchema, compile_schema};
use serde_json::Value;

/// Validates manifests of our kinds. Building one compiles every CRD's schema and CEL
/// rules once; validating is then cheap (local mode checks thousands of objects).
pub struct Validator {
    kinds: Vec<(String, Value, CompiledSchema)>,
    /// Every `pattern` of every schema, compiled once.
    patterns: HashMap<String, regex::Regex>,
    cel: kube::core::cel::Validator,
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

impl Validator {
    pub fn new() -> Self {
        let kinds: Vec<(String, Value, CompiledSchema)> = super::all()
            .iter()
            .filter_map(|crd| {
                let schema = crd
                    .spec
                    .versions
                    .iter()
                    .find(|v| v.storage)?
                    .schema
                    .as_ref()?
                    .open_api_v3_schema
                    .as_ref()?;
                let schema = serde_json::to_value(schema).ok()?;
                let compiled = compile_schema(&schema);
                Some((crd.spec.names.kind.clone(), schema, compiled))
            })
            .collect();
        let mut patterns = HashMap::new();
        for (_, schema, _) in &kinds {
            collect_patterns(schema, &mut patterns);
        }
        Validator {
            kinds,
            patterns,
            cel: kube::core::cel::Validator::new(),
        }
    }

    /// Validates `object` (a whole manifest of one of our kinds). Returns every problem
    /// found, each as `path: message`.
    pub fn validate(&self, object: &Value) -> Result<(), Vec<String>> {
        let kind = object["kind"].as_str().unwrap_or_default();
        let Some((_, schema, compiled)) = self.kinds.iter().find(|(k, _, _)| k == kind) else {
            return Err(vec![format!("kind: {kind:?} is not a Portcullis kind")]);
        };
        let mut errors = Vec::new();
        // apiVersion, kind and metadata are the API machinery's; check the rest.
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            let fields = object.as_object();
            for (name, sub) in props.iter().filter(|(n, _)| !is_machinery(n)) {
                if let Some(value) = fields.and_then(|f| f.get(name)) {
                    self.check(sub, value, name, &mut errors);
                }
            }
            for field in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if fields.is_none_or(|f| !f.contains_key(field)) {
                    errors.push(format!("{field}: required"));
                }
            }
            for name in fields.into_iter().flat_map(|f| f.keys()) {
                if !is_machinery(name) && !props.contains_key(name) {
                    errors.push(format!("{name}: unknown field"));
                }
            }
        }
        if errors.is_empty() {
            // CEL rules assume a structurally valid object; run them only then.
            if let Err(cel) = self.cel.validate_compiled(compiled, object, None) {
                errors.extend(cel.into_vec().into_iter().map(|e| e.to_string()));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

fn collect_patterns(schema: &Value, out: &mut HashMap<String, regex::Regex>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(p)) = map.get("pattern")
                && let Ok(re) = regex::Regex::new(p)
            {
                out.insert(p.clone(), re);
            }
            map.values().for_each(|v| collect_patterns(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_patterns(v, out)),
        _ => {}
    }
}

fn is_machinery(field: &str) -> bool {
    matches!(field, "apiVersion" | "kind" | "metadata")
}

impl Validator {
    fn check(&self, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
        if value.is_null() {
            if !schema.get("nullable").and_then(Value::as_bool).unwrap_or(false) {
                errors.push(format!("{path}: must not be null"));
            }
            return;
        }
        if schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
            return;
        }
        let expected = schema.get("type").and_then(Value::as_str);
        let type_ok = match expected {
            Some("object") => value.is_object(),
            Some("array") => value.is_array(),
            Some("string") => value.is_string(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("number") => value.is_number(),
            Some("boolean") => value.is_boolean(),
            _ => true,
        };
        if !type_ok {
            errors.push(format!(
                "{path}: expected {}, got {}",
                expected.unwrap_or("?"),
                type_name(value)
            ));
            return;
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            errors.push(format!("{path}: {value} is not one of {}", list.join(", ")));
        }
        match value {
            Value::String(s) => self.check_string(schema, s, path, errors),
            Value::Number(n) => {
                let n = n.as_f64().unwrap_or(f64::NAN);
                if let Some(min) = schema.get("minimum").and_then(Value::as_f64).filter(|m| n < *m) {
                    errors.push(format!("{path}: {n} is below the minimum {min}"));
                }
                if let Some(max) = schema.get("maximum").and_then(Value::as_f64).filter(|m| n > *m) {
                    errors.push(format!("{path}: {n} is above the maximum {max}"));
                }
            }
            Value::Array(items) => self.check_array(schema, items, path, errors),
            Value::Object(fields) => {
                let props = schema.get("properties").and_then(Value::as_object);
                let extra = schema.get("additionalProperties");
                for (name, sub) in fields {
                    let here = format!("{path}.{name}");
                    match (props.and_then(|p| p.get(name)), extra) {
                        (Some(sub_schema), _) => self.check(sub_schema, sub, &here, errors),
                        (None, Some(extra)) if extra.is_object() => self.check(extra, sub, &here, errors),
                        (None, Some(Value::Bool(true))) => {}
                        (None, _) if schema.get("x-kubernetes-preserve-unknown-fields").is_some() => {}
                        (None, _) => errors.push(format!("{here}: unknown field")),
                    }
                }
                for field in schema
                    .get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if !fields.contains_key(field) {
                        errors.push(format!("{path}.{field}: required"));
                    }
                }
                if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                    && fields.len() as u64 > max
                {
                    errors.push(format!("{path}: more than {max} entries"));
                }
            }
            _ => {}
        }
    }

    fn check_string(&self, schema: &Value, s: &str, path: &str, errors: &mut Vec<String>) {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64).filter(|m| len < *m) {
            errors.push(format!("{path}: shorter than {min} characters"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64).filter(|m| len > *m) {
            errors.push(format!("{path}: longer than {max} characters"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            match self.patterns.get(pattern) {
                Some(re) if !re.is_match(s) => errors.push(format!("{path}: {s:?} does not match {pattern}")),
                Some(_) => {}
                None => errors.push(format!("{path}: the CRD's pattern {pattern} does not compile")),
            }
        }
        if schema.get("format").and_then(Value::as_str) == Some("date-time") && s.parse::<jiff::Timestamp>().is_err() {
            errors.push(format!("{path}: {s:?} is not an RFC 3339 date-time"));
        }
    }

    fn check_array(&self, schema: &Value, items: &[Value], path: &str, errors: &mut Vec<String>) {
        let len = items.len() as u64;
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64).filter(|m| len < *m) {
            errors.push(format!("{path}: needs at least {min} item(s)"));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64).filter(|m| len > *m) {
            errors.push(format!("{path}: at most {max} item(s)"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.check(item_schema, item, &format!("{path}[{i}]"), errors);
            }
        }
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => {
                let mut seen = HashSet::new();
                for item in items {
                    if !seen.insert(item.to_string()) {
                        errors.push(format!("{path}: duplicate entry {item}"));
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut seen = HashSet::new();
                for item in items {
                    let key: Vec<String> = keys
                        .iter()
                        .map(|k| item.get(k).map(Value::to_string).unwrap_or_default())
                        .collect();
                    if !seen.insert(key.clone()) {
                        errors.push(format!(
                            "{path}: duplicate entry for {} = {}",
                            keys.join(","),
                            key.join(",")
                        ));
                    }
                }
            }
            _ => {}
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
