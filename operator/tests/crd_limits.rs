//! Would a real API server accept our CRDs? It refuses a CRD whose CEL rules' estimated
//! cost exceeds its budget ("estimated rule cost exceeds budget … try adding maxItems,
//! maxProperties, and maxLength"). This test walks every generated `crds/*.yaml`, fails on
//! any array, map or string of a schema left without a bound, and estimates the cost of
//! every `x-kubernetes-validations` rule the way the API server does, then holds each rule
//! and each CRD to the API server's limits, and prints the figures.
//!
//! The estimate is a port of the parts of cel-go's static cost estimator
//! (`checker/cost.go`) and of apiextensions-apiserver's use of it that our rules need:
//! - every identifier and field selection (also `has()`) costs 1, literals 0, a function
//!   call 1 plus its arguments, `&&`/`||`/`?:` nothing of their own;
//! - `startsWith`/`endsWith` cost 1 + ⌈0.1 × size(argument)⌉, `contains` 1 + ⌈0.1 ×
//!   size(string) × size(argument)⌉, `matches` 1 + ⌈0.25 × size(string)⌉ × ⌈0.25 ×
//!   size(regex)⌉, `==`/`!=` on strings 1 + ⌈0.1 × size⌉;
//! - a comprehension (`all`, `exists`) costs its range plus, for every element the range
//!   may hold (`maxItems`), its loop condition and step;
//! - sizes come from the schema: `maxLength` of a string (the longest value of an enum;
//!   fixed sizes for `date`/`date-time`), `maxItems`, `maxProperties`;
//! - a rule's cost is that estimate times the most times the rule can run in one object:
//!   the product of `maxItems`/`maxProperties` of the lists and maps around it
//!   (`CELSchemaContext.MaxCardinality`);
//! - limits (k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel): one rule at most
//!   `StaticEstimatedCostLimit` = 10,000,000, all rules of a CRD at most
//!   `StaticEstimatedCRDCostLimit` = 100,000,000. (`PerCallLimit` = 1,000,000 is the
//!   runtime limit of one evaluation, checked here too: a rule over it would fail at
//!   run time on a large object.)
//!
//! An expression the port does not know fails the test rather than being guessed.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

const STATIC_ESTIMATED_COST_LIMIT: u64 = 10_000_000;
const STATIC_ESTIMATED_CRD_COST_LIMIT: u64 = 100_000_000;
const PER_CALL_LIMIT: u64 = 1_000_000;
/// cel-go `common.StringTraversalCostFactor`.
const STRING_TRAVERSAL: f64 = 0.1;
/// cel-go `common.RegexStringLengthCostFactor`.
const REGEX_FACTOR: f64 = 0.25;
/// apiserver: sizes of formatted strings (`maxDatetimeSizeJSON`, `maxDateSizeJSON`, less the quotes).
const DATE_TIME_SIZE: u64 = 32;
const DATE_SIZE: u64 = 10;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

fn load_crds() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(crd_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let crd: Value = yaml_serde::from_str(&text).unwrap();
        out.push((path.file_name().unwrap().to_string_lossy().into_owned(), crd));
    }
    assert!(!out.is_empty(), "no CRDs in {}", crd_dir().display());
    out
}

// ---------------------------------------------------------------------------------------
// Bounds

/// The most characters a string of this schema can hold, when the schema says.
fn string_max(schema: &Value) -> Option<u64> {
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        return Some(max);
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .filter_map(Value::as_str)
            .map(|s| s.chars().count() as u64)
            .max();
    }
    match schema.get("format").and_then(Value::as_str) {
        Some("date-time") => Some(DATE_TIME_SIZE),
        Some("date") => Some(DATE_SIZE),
        _ => None,
    }
}

fn is_map(schema: &Value) -> bool {
    schema.get("additionalProperties").is_some_and(Value::is_object)
}

/// Every node of the schema with its path and cardinality (how many times it can occur
/// in one object: the product of the bounds of the lists and maps around it).
fn walk<'a>(schema: &'a Value, path: String, cardinality: u64, out: &mut Vec<(String, &'a Value, u64)>) {
    out.push((path.clone(), schema, cardinality));
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            walk(prop, format!("{path}.{name}"), cardinality, out);
        }
    }
    if let Some(items) = schema.get("items") {
        let max = schema.get("maxItems").and_then(Value::as_u64).unwrap_or(u64::MAX);
        walk(items, format!("{path}[]"), cardinality.saturating_mul(max), out);
    }
    if is_map(schema) {
        let max = schema.get("maxProperties").and_then(Value::as_u64).unwrap_or(u64::MAX);
        walk(
            &schema["additionalProperties"],
            format!("{path}{{}}"),
            cardinality.saturating_mul(max),
            out,
        );
    }
}

fn unbounded(path: &str, schema: &Value) -> Option<String> {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return Some(format!(
            "{path}: x-kubernetes-preserve-unknown-fields (no bound possible)"
        ));
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("string") if string_max(schema).is_none() => Some(format!("{path}: string without maxLength")),
        Some("array") if schema.get("maxItems").is_none() => Some(format!("{path}: array without maxItems")),
        Some("object") if is_map(schema) && schema.get("maxProperties").is_none() => {
            Some(format!("{path}: map without maxProperties"))
        }
        _ => None,
    }
}

fn root_schema(crd: &Value) -> Vec<(String, &Value)> {
    crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), &v["schema"]["openAPIV3Schema"]))
        .collect()
}

// ---------------------------------------------------------------------------------------
// CEL: a parser for the expressions rules are written in, and cel-go's cost estimate

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Ident(String),
    Str(String),
    /// Numbers and booleans: constants cost nothing, their values do not matter here.
    Int,
    Bool,
    Null,
    List(Vec<Expr>),
    Select(Box<Expr>, String),
    Has(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    /// A global function or operator (`_&&_`, `!_`, `size`), with its arguments.
    Call(String, Vec<Expr>),
    /// A receiver-style call `target.name(args)`.
    Method(Box<Expr>, String, Vec<Expr>),
    /// A macro over a list or map: `target.all(var, body)` and friends.
    Comprehension {
        kind: String,
        range: Box<Expr>,
        var: String,
        body: Box<Expr>,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int,
    Op(&'static str),
}

fn tokenize(src: &str) -> Result<Vec<Tok>, String> {
    const OPS: [&str; 22] = [
        "&&", "||", "==", "!=", "<=", ">=", "!", "<", ">", "(", ")", "[", "]", ",", ".", "?", ":", "+", "-", "*", "/",
        "%",
    ];
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let quote = c;
            let mut s = String::new();
            i += 1;
            while i < chars.len() && chars[i] != quote {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                s.push(chars[i]);
                i += 1;
            }
            if i >= chars.len() {
                return Err("unterminated string".into());
            }
            i += 1;
            out.push(Tok::Str(s));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            if chars[start..i].iter().collect::<String>().parse::<i64>().is_err() {
                return Err("integer out of range".into());
            }
            out.push(Tok::Int);
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let op = OPS
                .iter()
                .find(|op| rest.starts_with(**op))
                .ok_or_else(|| format!("unexpected character {c:?}"))?;
            out.push(Tok::Op(op));
            i += op.len();
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn parse(src: &str) -> Result<Expr, String> {
        let mut p = Parser {
            toks: tokenize(src)?,
            pos: 0,
        };
        let e = p.ternary()?;
        if p.pos != p.toks.len() {
            return Err(format!("unexpected {:?}", p.toks[p.pos]));
        }
        Ok(e)
    }

    fn peek_op(&self, op: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Op(o)) if *o == op)
    }

    fn eat(&mut self, op: &str) -> bool {
        if self.peek_op(op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(format!("expected {op} at token {}", self.pos))
        }
    }

    fn ternary(&mut self) -> Result<Expr, String> {
        let cond = self.or()?;
        if self.eat("?") {
            let a = self.ternary()?;
            self.expect(":")?;
            let b = self.ternary()?;
            return Ok(Expr::Call("_?_:_".into(), vec![cond, a, b]));
        }
        Ok(cond)
    }

    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.eat("||") {
            e = Expr::Call("_||_".into(), vec![e, self.and()?]);
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.relation()?;
        while self.eat("&&") {
            e = Expr::Call("_&&_".into(), vec![e, self.relation()?]);
        }
        Ok(e)
    }

    fn relation(&mut self) -> Result<Expr, String> {
        let mut e = self.additive()?;
        loop {
            let op = ["==", "!=", "<=", ">=", "<", ">"]
                .into_iter()
                .find(|op| self.peek_op(op));
            if let Some(op) = op {
                self.pos += 1;
                e = Expr::Call(format!("_{op}_"), vec![e, self.additive()?]);
            } else if matches!(self.toks.get(self.pos), Some(Tok::Ident(i)) if i == "in") {
                self.pos += 1;
                e = Expr::Call("@in".into(), vec![e, self.additive()?]);
            } else {
                return Ok(e);
            }
        }
    }

    fn additive(&mut self) -> Result<Expr, String> {
        let mut e = self.multiplicative()?;
        loop {
            let op = ["+", "-"].into_iter().find(|op| self.peek_op(op));
            let Some(op) = op else { return Ok(e) };
            self.pos += 1;
            e = Expr::Call(format!("_{op}_"), vec![e, self.multiplicative()?]);
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        loop {
            let op = ["*", "/", "%"].into_iter().find(|op| self.peek_op(op));
            let Some(op) = op else { return Ok(e) };
            self.pos += 1;
            e = Expr::Call(format!("_{op}_"), vec![e, self.unary()?]);
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("!") {
            return Ok(Expr::Call("!_".into(), vec![self.unary()?]));
        }
        if self.eat("-") {
            return Ok(Expr::Call("-_".into(), vec![self.unary()?]));
        }
        self.member()
    }

    fn args(&mut self) -> Result<Vec<Expr>, String> {
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        loop {
            args.push(self.ternary()?);
            if self.eat(")") {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }

    fn member(&mut self) -> Result<Expr, String> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let Some(Tok::Ident(name)) = self.toks.get(self.pos).cloned() else {
                    return Err("expected a name after .".into());
                };
                self.pos += 1;
                if self.eat("(") {
                    if ["all", "exists", "exists_one", "map", "filter"].contains(&name.as_str()) {
                        let Some(Tok::Ident(var)) = self.toks.get(self.pos).cloned() else {
                            return Err(format!("{name}: expected a variable"));
                        };
                        self.pos += 1;
                        self.expect(",")?;
                        let body = self.ternary()?;
                        self.expect(")")?;
                        e = Expr::Comprehension {
                            kind: name,
                            range: Box::new(e),
                            var,
                            body: Box::new(body),
                        };
                    } else {
                        let args = self.args()?;
                        e = Expr::Method(Box::new(e), name, args);
                    }
                } else {
                    e = Expr::Select(Box::new(e), name);
                }
            } else if self.eat("[") {
                let idx = self.ternary()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(idx));
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let tok = self.toks.get(self.pos).cloned().ok_or("unexpected end")?;
        self.pos += 1;
        match tok {
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::Int => Ok(Expr::Int),
            Tok::Op("(") => {
                let e = self.ternary()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.ternary()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Expr::List(items))
            }
            Tok::Ident(name) => match name.as_str() {
                "true" | "false" => Ok(Expr::Bool),
                "null" => Ok(Expr::Null),
                "has" if self.eat("(") => {
                    let arg = self.ternary()?;
                    self.expect(")")?;
                    match arg {
                        Expr::Select(target, field) => Ok(Expr::Has(target, field)),
                        _ => Err("has() takes a field selection".into()),
                    }
                }
                _ if self.eat("(") => Ok(Expr::Call(name, self.args()?)),
                _ => Ok(Expr::Ident(name)),
            },
            Tok::Op(op) => Err(format!("unexpected {op}")),
        }
    }
}

/// What the estimator knows of a value: its schema, or the size of a literal.
#[derive(Debug, Clone)]
enum Shape<'a> {
    Schema(&'a Value),
    Sized(u64),
    Unknown,
}

/// cel-go `CostEstimate`: min and max, saturating.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Cost {
    min: u64,
    max: u64,
}

impl Cost {
    fn fixed(n: u64) -> Self {
        Cost { min: n, max: n }
    }
    fn add(self, o: Cost) -> Cost {
        Cost {
            min: self.min.saturating_add(o.min),
            max: self.max.saturating_add(o.max),
        }
    }
    /// cel-go `SizeEstimate.MultiplyByCost`.
    fn times(self, range: (u64, u64)) -> Cost {
        Cost {
            min: self.min.saturating_mul(range.0),
            max: self.max.saturating_mul(range.1),
        }
    }
}

/// cel-go `MultiplyByCostFactor`: ⌈size × factor⌉.
fn factor(size: u64, f: f64) -> u64 {
    if size == u64::MAX {
        return u64::MAX;
    }
    (size as f64 * f).ceil() as u64
}

struct Estimator<'a> {
    vars: Vec<(String, Shape<'a>)>,
}

impl<'a> Estimator<'a> {
    fn shape(&self, e: &Expr) -> Shape<'a> {
        match e {
            Expr::Ident(name) => self
                .vars
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map_or(Shape::Unknown, |(_, s)| s.clone()),
            Expr::Str(s) => Shape::Sized(s.chars().count() as u64),
            Expr::List(items) => Shape::Sized(items.len() as u64),
            Expr::Select(target, field) => match self.shape(target) {
                Shape::Schema(s) => s
                    .get("properties")
                    .and_then(|p| p.get(field))
                    .or_else(|| s.get("additionalProperties").filter(|v| v.is_object()))
                    .map_or(Shape::Unknown, Shape::Schema),
                _ => Shape::Unknown,
            },
            Expr::Index(target, _) => match self.shape(target) {
                Shape::Schema(s) => s
                    .get("items")
                    .or_else(|| s.get("additionalProperties").filter(|v| v.is_object()))
                    .map_or(Shape::Unknown, Shape::Schema),
                _ => Shape::Unknown,
            },
            _ => Shape::Unknown,
        }
    }

    /// Size (min, max) of a string, list or map, as cel-go's `sizeEstimate`.
    fn size(&self, e: &Expr) -> (u64, u64) {
        match self.shape(e) {
            Shape::Sized(n) => (n, n),
            Shape::Schema(s) => {
                let max = match s.get("type").and_then(Value::as_str) {
                    Some("string") => string_max(s),
                    Some("array") => s.get("maxItems").and_then(Value::as_u64),
                    Some("object") => s.get("maxProperties").and_then(Value::as_u64),
                    _ => None,
                };
                (0, max.unwrap_or(u64::MAX))
            }
            Shape::Unknown => (0, u64::MAX),
        }
    }

    fn cost(&mut self, e: &Expr) -> Result<Cost, String> {
        Ok(match e {
            Expr::Str(_) | Expr::Int | Expr::Bool | Expr::Null => Cost::default(),
            Expr::Ident(_) => Cost::fixed(1),
            Expr::List(items) => {
                let mut sum = Cost::fixed(1);
                for item in items {
                    sum = sum.add(self.cost(item)?);
                }
                sum
            }
            Expr::Select(target, _) | Expr::Has(target, _) => self.cost(target)?.add(Cost::fixed(1)),
            Expr::Index(target, idx) => self.cost(target)?.add(self.cost(idx)?).add(Cost::fixed(1)),
            Expr::Call(name, args) => {
                let mut sum = Cost::default();
                for a in args {
                    sum = sum.add(self.cost(a)?);
                }
                match name.as_str() {
                    "_&&_" | "_||_" => Cost {
                        min: self.cost(&args[0])?.min,
                        max: sum.max,
                    },
                    "_?_:_" => {
                        let cond = self.cost(&args[0])?;
                        let (a, b) = (self.cost(&args[1])?, self.cost(&args[2])?);
                        cond.add(Cost {
                            min: a.min.min(b.min),
                            max: a.max.max(b.max),
                        })
                    }
                    "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => {
                        // Strings and lists are compared element by element.
                        let size = self.size(&args[0]).1.min(self.size(&args[1]).1);
                        let traversal = if self.is_sized(&args[0]) || self.is_sized(&args[1]) {
                            factor(size, STRING_TRAVERSAL)
                        } else {
                            0
                        };
                        sum.add(Cost::fixed(1u64.saturating_add(traversal)))
                    }
                    "@in" => sum.add(Cost {
                        min: 1,
                        max: 1u64.saturating_add(self.size(&args[1]).1),
                    }),
                    "!_" | "-_" | "size" | "_+_" | "_-_" | "_*_" | "_/_" | "_%_" | "int" | "string" => {
                        sum.add(Cost::fixed(1))
                    }
                    other => return Err(format!("function {other}() is not in the estimator: add its cost")),
                }
            }
            Expr::Method(target, name, args) => {
                let mut sum = self.cost(target)?;
                for a in args {
                    sum = sum.add(self.cost(a)?);
                }
                let own = match (name.as_str(), args.as_slice()) {
                    ("startsWith" | "endsWith", [arg]) => {
                        1u64.saturating_add(factor(self.size(arg).1, STRING_TRAVERSAL))
                    }
                    ("contains", [arg]) => {
                        let product = self.size(target).1.saturating_mul(self.size(arg).1);
                        1u64.saturating_add(factor(product, STRING_TRAVERSAL))
                    }
                    ("matches", [arg]) => {
                        let s = factor(self.size(target).1, REGEX_FACTOR);
                        let r = factor(self.size(arg).1, REGEX_FACTOR);
                        1u64.saturating_add(s.saturating_mul(r))
                    }
                    ("size", []) => 1,
                    (other, _) => return Err(format!("method {other}() is not in the estimator: add its cost")),
                };
                sum.add(Cost::fixed(own))
            }
            Expr::Comprehension { kind, range, var, body } => {
                let range_cost = self.cost(range)?;
                let items = match self.shape(range) {
                    Shape::Schema(s) => s
                        .get("items")
                        .map(Shape::Schema)
                        // A map iterates over its keys: strings of unknown size.
                        .unwrap_or(Shape::Unknown),
                    _ => Shape::Unknown,
                };
                self.vars.push((var.clone(), items));
                let body_cost = self.cost(body);
                self.vars.pop();
                let body_cost = body_cost?;
                // The macro's expansion (cel-go parser/macro.go): accumulator init, loop
                // condition, loop step, result.
                let (cond, step, result) = match kind.as_str() {
                    // cond: @not_strictly_false(__result__); step: __result__ && body
                    "all" => (Cost::fixed(2), body_cost.add(Cost::fixed(1)), Cost::fixed(1)),
                    // cond: @not_strictly_false(!__result__); step: __result__ || body
                    "exists" => (Cost::fixed(3), body_cost.add(Cost::fixed(1)), Cost::fixed(1)),
                    other => return Err(format!("macro {other}() is not in the estimator: add its expansion")),
                };
                let per_item = step.add(cond);
                range_cost.add(result).add(per_item.times(self.size(range)))
            }
        })
    }

    fn is_sized(&self, e: &Expr) -> bool {
        match self.shape(e) {
            Shape::Sized(_) => matches!(e, Expr::Str(_) | Expr::List(_)),
            Shape::Schema(s) => matches!(s.get("type").and_then(Value::as_str), Some("string" | "array")),
            Shape::Unknown => false,
        }
    }
}

fn estimate(rule: &str, self_schema: &Value) -> Result<Cost, String> {
    let expr = Parser::parse(rule)?;
    let mut est = Estimator {
        vars: vec![("self".into(), Shape::Schema(self_schema))],
    };
    est.cost(&expr)
}

// ---------------------------------------------------------------------------------------
// The tests

#[test]
fn every_array_map_and_string_of_every_crd_is_bounded() {
    let mut problems = Vec::new();
    for (file, crd) in load_crds() {
        for (version, schema) in root_schema(&crd) {
            let mut nodes = Vec::new();
            walk(&schema["properties"]["spec"], ".spec".into(), 1, &mut nodes);
            if let Some(status) = schema["properties"].get("status") {
                walk(status, ".status".into(), 1, &mut nodes);
            }
            for (path, node, _) in nodes {
                if let Some(p) = unbounded(&path, node) {
                    problems.push(format!("{file} {version} {p}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "unbounded fields:\n{}", problems.join("\n"));
}

#[test]
fn every_cel_rule_fits_the_api_servers_cost_budgets() {
    let mut failures = Vec::new();
    let mut rules_seen = 0;
    println!(
        "{:<34} {:<44} {:>10} {:>6} {:>12}",
        "CRD", "rule at", "per call", "×", "estimated"
    );
    for (file, crd) in load_crds() {
        for (version, schema) in root_schema(&crd) {
            let mut nodes = Vec::new();
            walk(schema, String::new(), 1, &mut nodes);
            let mut total: u64 = 0;
            let mut largest = (0u64, String::new());
            for (path, node, cardinality) in nodes {
                let Some(rules) = node.get("x-kubernetes-validations").and_then(Value::as_array) else {
                    continue;
                };
                for rule in rules {
                    let text = rule["rule"].as_str().unwrap();
                    rules_seen += 1;
                    let cost = match estimate(text, node) {
                        Ok(c) => c,
                        Err(e) => {
                            failures.push(format!("{file} {path}: cannot estimate `{text}`: {e}"));
                            continue;
                        }
                    };
                    let expression_cost = cost.max.saturating_mul(cardinality);
                    total = total.saturating_add(expression_cost);
                    let at = if path.is_empty() { ".".to_string() } else { path.clone() };
                    println!(
                        "{:<34} {:<44} {:>10} {:>6} {:>12}",
                        file.trim_end_matches(".yaml"),
                        at,
                        cost.max,
                        cardinality,
                        expression_cost
                    );
                    if expression_cost > largest.0 {
                        largest = (expression_cost, format!("{at}: {text}"));
                    }
                    if expression_cost > STATIC_ESTIMATED_COST_LIMIT {
                        failures.push(format!(
                            "{file} {path}: estimated rule cost {expression_cost} exceeds budget {STATIC_ESTIMATED_COST_LIMIT} (`{text}`, {} per call × {cardinality})",
                            cost.max
                        ));
                    }
                    if cost.max > PER_CALL_LIMIT {
                        failures.push(format!(
                            "{file} {path}: one evaluation may cost {} > PerCallLimit {PER_CALL_LIMIT} (`{text}`)",
                            cost.max
                        ));
                    }
                }
            }
            println!(
                "RESULT crd={} version={version} total_estimated_cost={total} limit={STATIC_ESTIMATED_CRD_COST_LIMIT} largest_rule_cost={} largest_rule=\"{}\"",
                file.trim_end_matches(".yaml"),
                largest.0,
                largest.1
            );
            if total > STATIC_ESTIMATED_CRD_COST_LIMIT {
                failures.push(format!(
                    "{file}: total estimated cost {total} exceeds the CRD budget {STATIC_ESTIMATED_CRD_COST_LIMIT}"
                ));
            }
        }
    }
    assert!(rules_seen > 0, "no x-kubernetes-validations rule found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The estimator against figures worked out by hand from cel-go's rules, and against
/// what the API server refused before the bounds: 512 rules × unbounded paths.
#[test]
fn the_estimator_reproduces_cel_gos_figures() {
    let schema: Value = serde_json::json!({
        "type": "object",
        "properties": {
            "paths": {"type": "array", "maxItems": 32, "items": {"type": "string", "maxLength": 512}},
            "name": {"type": "string", "maxLength": 63},
            "public": {"type": "boolean"},
            "open": {"type": "array", "items": {"type": "string"}}
        }
    });
    let paths = &schema["properties"]["paths"];
    // all(): range `self` 1 + result 1 + 32 × (cond 2 + step (1 + body)); body
    // p.startsWith('/') = p 1 + call 1 + ⌈0.1 × 1⌉ = 3.
    assert_eq!(
        estimate("self.all(p, p.startsWith('/'))", paths).unwrap().max,
        1 + 1 + 32 * (2 + 1 + 3)
    );
    // contains: p 1 + ⌈0.1 × 512 × 6⌉ = 308, + call 1 → 309 + … per path; range `self.paths` 2.
    assert_eq!(
        estimate("self.paths.all(p, p.contains('{team}'))", &schema)
            .unwrap()
            .max,
        2 + 1 + 32 * (2 + 1 + 1 + 1 + 308)
    );
    // has(): self 1 + select 1; !: 1; ||: nothing.
    assert_eq!(
        estimate("!has(self.public) || !self.public", &schema).unwrap().max,
        3 + 3
    );
    // An unbounded list cannot be estimated to a finite cost.
    assert_eq!(
        estimate("self.open.all(p, p.startsWith('/'))", &schema).unwrap().max,
        u64::MAX
    );
    // Unknown functions are refused rather than guessed.
    assert!(estimate("self.name.lowerAscii() == 'x'", &schema).is_err());
    // The walker multiplies the bounds of enclosing lists and maps.
    let crd_like: Value = serde_json::json!({
        "type": "object",
        "properties": {"rules": {"type": "array", "maxItems": 512, "items": schema.clone()}}
    });
    let mut nodes = Vec::new();
    walk(&crd_like, String::new(), 1, &mut nodes);
    let cardinality: BTreeMap<String, u64> = nodes.into_iter().map(|(p, _, c)| (p, c)).collect();
    assert_eq!(cardinality[".rules[]"], 512);
    assert_eq!(cardinality[".rules[].paths[]"], 512 * 32);
    assert_eq!(cardinality[".rules[].open[]"], u64::MAX);
}
