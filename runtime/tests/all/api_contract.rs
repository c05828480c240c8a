//! The API contract: clients are generated from `/v1/openapi.json`, so it
//! must say what the server does.
//!
//! - Every answer of every route, in a realistic sequence and in the error
//!   cases (401, 403, 400, 404, 413, 422, and 503 with Redis down), has a
//!   status its route documents, a documented content type, and a JSON
//!   body that validates against the documented schema, with no property
//!   the schema does not list. Every request the server accepted
//!   validates against the documented request schema.
//! - `POST /v1/jobs` and `/v1/jobs/batch` answer random requests (numbers
//!   at and past their limits, odd strings, deep JSON, wrong types) with
//!   202 or a 4xx naming the field, never a 500 or a dropped connection;
//!   an accepted job reads back.
//! - The documented maxima are the server's constants and the documented
//!   name patterns accept exactly the names the server accepts.
//!
//! The schemas are checked by the small JSON Schema (2020-12) validator
//! below: the keywords utoipa emits, `$ref`s into the document, patterns in
//! the ECMA-262 dialect (fancy-regex, for the lookahead). A keyword it does
//! not know fails the check instead of being skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::api::{ADMIN, SUBMIT, TestApi, message, module_hash};
use crate::redis_support::RedisServer;
use crate::support::{guest_bytes, ok_component, task_error_component};

// ---------------------------------------------------------------------------
// The document and a validator for its schemas.

/// How strictly a value is held to a schema.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// A response: formats are checked, and an object may not carry a
    /// property its schema does not list (a client would drop it).
    Response,
    /// A request: plain JSON Schema (formats are annotations).
    Request,
}

pub(crate) struct Contract {
    doc: Value,
    regexes: Mutex<HashMap<String, fancy_regex::Regex>>,
}

impl Contract {
    pub(crate) async fn fetch(api: &TestApi) -> Contract {
        let (s, doc) = api
            .call(api.req(Method::GET, "/v1/openapi.json", None))
            .await;
        assert_eq!(s, 200, "{doc}");
        if let Some(path) = std::env::var_os("API_CONTRACT_DUMP") {
            std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        }
        Contract {
            doc,
            regexes: Mutex::new(HashMap::new()),
        }
    }

    /// Every documented operation: (method, path template).
    fn operations(&self) -> Vec<(Method, String)> {
        let mut out = Vec::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if let Ok(m) = Method::from_bytes(method.to_uppercase().as_bytes())
                    && ["GET", "PUT", "POST", "DELETE", "PATCH"].contains(&m.as_str())
                {
                    out.push((m, path.clone()));
                }
            }
        }
        out
    }

    fn operation(&self, method: &Method, template: &str) -> &Value {
        let op = &self.doc["paths"][template][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not documented");
        op
    }

    fn schema(&self, name: &str) -> &Value {
        let s = &self.doc["components"]["schemas"][name];
        assert!(s.is_object(), "no schema {name}");
        s
    }

    /// A documented property of a component schema.
    fn property(&self, schema: &str, property: &str) -> &Value {
        let p = &self.schema(schema)["properties"][property];
        assert!(p.is_object(), "{schema} has no property {property}");
        p
    }

    /// The JSON schema of the request body of an operation, if it takes JSON.
    fn request_schema(&self, method: &Method, template: &str) -> Option<&Value> {
        let s = &self.operation(method, template)["requestBody"]["content"]["application/json"]["schema"];
        s.is_object().then_some(s)
    }

    /// Whether an answer is what the document says: its status is listed
    /// for the operation, its content type too, and a JSON body validates.
    fn check_response(
        &self,
        method: &Method,
        template: &str,
        status: u16,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(), String> {
        let op = self.operation(method, template);
        let responses = op["responses"].as_object().unwrap();
        let Some(res) = responses.get(&status.to_string()) else {
            return Err(format!(
                "answered {status}, which it does not document (it lists {:?}); body: {}",
                responses.keys().collect::<Vec<_>>(),
                String::from_utf8_lossy(body.unwrap_or_default())
            ));
        };
        let Some(content) = res["content"].as_object() else {
            return match body {
                Some(b) if !b.is_empty() => Err(format!(
                    "{status} is documented without a body, but one came: {}",
                    String::from_utf8_lossy(b)
                )),
                _ => Ok(()),
            };
        };
        let media = content_type
            .ok_or_else(|| format!("{status} came without a content type"))?
            .split(';')
            .next()
            .unwrap()
            .trim()
            .to_string();
        let Some(documented) = content.get(&media) else {
            return Err(format!(
                "{status} came as {media}; documented: {:?}",
                content.keys().collect::<Vec<_>>()
            ));
        };
        if media == "application/json" {
            let body = body.unwrap_or_default();
            let v: Value = serde_json::from_slice(body).map_err(|e| {
                format!(
                    "{status}: the body is not JSON ({e}): {}",
                    String::from_utf8_lossy(body)
                )
            })?;
            let errs = self.errors(&documented["schema"], &v, Mode::Response);
            if !errs.is_empty() {
                return Err(format!(
                    "{status}: the body does not match its schema:\n  {}\nbody: {v}",
                    errs.join("\n  ")
                ));
            }
        }
        Ok(())
    }

    /// Why `v` does not validate against `schema` (nothing: it does).
    fn errors(&self, schema: &Value, v: &Value, mode: Mode) -> Vec<String> {
        let mut errs = Vec::new();
        self.validate(schema, v, "$", mode, true, &mut errs);
        errs
    }

    fn resolve(&self, reference: &str) -> &Value {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unsupported $ref {reference}"));
        self.schema(name)
    }

    fn is_match(&self, pattern: &str, text: &str) -> bool {
        let mut cache = self.regexes.lock().unwrap();
        let re = cache.entry(pattern.to_string()).or_insert_with(|| {
            fancy_regex::Regex::new(pattern).unwrap_or_else(|e| {
                panic!("the document's pattern {pattern:?} does not compile: {e}")
            })
        });
        re.is_match(text)
            .unwrap_or_else(|e| panic!("matching {pattern:?}: {e}"))
    }

    /// The validator. `strict`: in [`Mode::Response`], an object whose
    /// schema lists properties may carry no others (off inside `allOf`,
    /// whose members each list only some).
    fn validate(
        &self,
        schema: &Value,
        v: &Value,
        at: &str,
        mode: Mode,
        strict: bool,
        errs: &mut Vec<String>,
    ) {
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => return errs.push(format!("{at}: nothing is allowed here")),
            Value::Object(o) => o,
            other => return errs.push(format!("{at}: a schema that is not one: {other}")),
        };
        let mut fail = |what: String| errs.push(format!("{at}: {what}"));
        let mut nested = Vec::new();
        for (keyword, s) in schema {
            match keyword.as_str() {
                "$ref" => {
                    let target = self.resolve(s.as_str().unwrap());
                    self.validate(target, v, at, mode, strict, &mut nested);
                }
                "type" => {
                    let types: Vec<&str> = match s {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                        _ => vec![],
                    };
                    if !types.iter().any(|t| is_type(t, v)) {
                        fail(format!("{} is not of type {s}", short(v)));
                    }
                }
                "enum" => {
                    if !s.as_array().unwrap().contains(v) {
                        fail(format!("{} is not one of {s}", short(v)));
                    }
                }
                "const" => {
                    if s != v {
                        fail(format!("{} is not {s}", short(v)));
                    }
                }
                "allOf" => {
                    let members = s.as_array().unwrap();
                    for m in members {
                        self.validate(m, v, at, mode, false, &mut nested);
                    }
                    if mode == Mode::Response
                        && strict
                        && let Some(obj) = v.as_object()
                    {
                        let mut listed = BTreeSet::new();
                        for m in members {
                            let m = match m.get("$ref") {
                                Some(r) => self.resolve(r.as_str().unwrap()),
                                None => m,
                            };
                            if let Some(p) = m["properties"].as_object() {
                                listed.extend(p.keys().cloned());
                            }
                        }
                        for k in obj.keys().filter(|k| !listed.contains(*k)) {
                            fail(format!("property {k:?} is not documented"));
                        }
                    }
                }
                "anyOf" | "oneOf" => {
                    let members = s.as_array().unwrap();
                    let mut why = Vec::new();
                    let valid = members
                        .iter()
                        .filter(|m| {
                            let mut e = Vec::new();
                            self.validate(m, v, at, mode, strict, &mut e);
                            why.extend(e.iter().cloned());
                            e.is_empty()
                        })
                        .count();
                    if valid == 0 {
                        fail(format!(
                            "{} matches none of {keyword}: {}",
                            short(v),
                            why.join("; ")
                        ));
                    } else if keyword == "oneOf" && valid > 1 {
                        fail(format!("{} matches {valid} members of oneOf", short(v)));
                    }
                }
                "not" => {
                    let mut e = Vec::new();
                    self.validate(s, v, at, mode, strict, &mut e);
                    if e.is_empty() {
                        fail(format!("{} matches a `not` schema", short(v)));
                    }
                }
                "properties" => {
                    if let Some(obj) = v.as_object() {
                        for (k, ps) in s.as_object().unwrap() {
                            if let Some(pv) = obj.get(k) {
                                self.validate(
                                    ps,
                                    pv,
                                    &format!("{at}.{k}"),
                                    mode,
                                    true,
                                    &mut nested,
                                );
                            }
                        }
                        if mode == Mode::Response
                            && strict
                            && !schema.contains_key("additionalProperties")
                        {
                            for k in obj
                                .keys()
                                .filter(|k| !s.as_object().unwrap().contains_key(*k))
                            {
                                fail(format!("property {k:?} is not documented"));
                            }
                        }
                    }
                }
                "required" => {
                    if let Some(obj) = v.as_object() {
                        for k in s.as_array().unwrap().iter().filter_map(Value::as_str) {
                            if !obj.contains_key(k) {
                                fail(format!("required property {k:?} is missing"));
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Some(obj) = v.as_object() {
                        let listed = schema.get("properties").and_then(Value::as_object);
                        for (k, pv) in obj {
                            if listed.is_some_and(|l| l.contains_key(k)) {
                                continue;
                            }
                            self.validate(s, pv, &format!("{at}.{k}"), mode, true, &mut nested);
                        }
                    }
                }
                "propertyNames" => {
                    if let Some(obj) = v.as_object() {
                        for k in obj.keys() {
                            let key = Value::String(k.clone());
                            self.validate(
                                s,
                                &key,
                                &format!("{at} key {k:?}"),
                                mode,
                                true,
                                &mut nested,
                            );
                        }
                    }
                }
                "items" => {
                    if let Some(items) = v.as_array() {
                        for (i, item) in items.iter().enumerate() {
                            self.validate(s, item, &format!("{at}[{i}]"), mode, true, &mut nested);
                        }
                    }
                }
                "minItems" | "maxItems" => {
                    if let Some(items) = v.as_array() {
                        let n = s.as_u64().unwrap() as usize;
                        let ok = if keyword == "minItems" {
                            items.len() >= n
                        } else {
                            items.len() <= n
                        };
                        if !ok {
                            fail(format!("{} items, {keyword} is {n}", items.len()));
                        }
                    }
                }
                "minLength" | "maxLength" => {
                    if let Some(text) = v.as_str() {
                        let n = s.as_u64().unwrap() as usize;
                        let len = text.chars().count();
                        let ok = if keyword == "minLength" {
                            len >= n
                        } else {
                            len <= n
                        };
                        if !ok {
                            fail(format!("{len} characters, {keyword} is {n}"));
                        }
                    }
                }
                "pattern" => {
                    if let Some(text) = v.as_str()
                        && !self.is_match(s.as_str().unwrap(), text)
                    {
                        fail(format!("{text:?} does not match {s}"));
                    }
                }
                "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" => {
                    if v.is_number() {
                        let ord = compare(v, s);
                        let ok = match keyword.as_str() {
                            "minimum" => ord.is_ge(),
                            "maximum" => ord.is_le(),
                            "exclusiveMinimum" => ord.is_gt(),
                            _ => ord.is_lt(),
                        };
                        if !ok {
                            fail(format!("{v} breaks {keyword} {s}"));
                        }
                    }
                }
                "format" => {
                    if mode == Mode::Response
                        && let Some(text) = v.as_str()
                    {
                        let ok = match s.as_str().unwrap() {
                            "date-time" => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
                            "uuid" => uuid::Uuid::parse_str(text).is_ok(),
                            "binary" => true,
                            other => {
                                fail(format!("unknown string format {other:?}"));
                                true
                            }
                        };
                        if !ok {
                            fail(format!("{text:?} is not a {s}"));
                        }
                    }
                    // Number formats (int32, int64, ...): the ranges are
                    // `minimum` and `maximum`, or the JSON number itself.
                }
                "description" | "title" | "example" | "examples" | "default" | "deprecated"
                | "readOnly" | "writeOnly" | "contentMediaType" | "contentEncoding" | "xml" => {}
                other => fail(format!(
                    "the contract test's validator does not know the keyword {other:?}; teach it"
                )),
            }
        }
        errs.extend(nested);
    }
}

fn is_type(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

/// `a` compared with `b`, exactly for integers.
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    let int = |v: &Value| {
        v.as_i64()
            .map(i128::from)
            .or_else(|| v.as_u64().map(i128::from))
    };
    match (int(a), int(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a
            .as_f64()
            .unwrap()
            .partial_cmp(&b.as_f64().unwrap())
            .unwrap_or(std::cmp::Ordering::Equal),
    }
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 120 {
        format!("{}...", &text[..text.floor_char_boundary(120)])
    } else {
        text
    }
}

// ---------------------------------------------------------------------------
// Every route, every answer.

enum Body {
    None,
    Json(Value),
    Raw(Vec<u8>, &'static str),
}

/// Sends requests, checks every answer against the document and remembers
/// which statuses each operation answered.
struct Driver<'a> {
    api: &'a TestApi,
    contract: &'a Contract,
    seen: BTreeSet<(String, String, u16)>,
    failures: Vec<String>,
}

impl<'a> Driver<'a> {
    fn new(api: &'a TestApi, contract: &'a Contract) -> Self {
        Driver {
            api,
            contract,
            seen: BTreeSet::new(),
            failures: Vec::new(),
        }
    }

    /// Sends `method path` (an instance of `template`) and checks the
    /// answer; returns its status and JSON body (`null` if none).
    async fn send(
        &mut self,
        method: Method,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Body,
    ) -> (u16, Value) {
        let answer = fetch(self.api, method.clone(), path, token, body).await;
        self.check(method, template, path, answer)
    }

    /// Checks an answer of `method path` (an instance of `template`).
    fn check(&mut self, method: Method, template: &str, path: &str, a: Answer) -> (u16, Value) {
        if let Err(e) = self.contract.check_response(
            &method,
            template,
            a.status,
            a.content_type.as_deref(),
            a.body.as_deref(),
        ) {
            self.failures.push(format!("{method} {path}: {e}"));
        }
        // What the server accepted, the document must accept.
        if let (Some(v), true) = (&a.sent, (200..300).contains(&a.status))
            && let Some(schema) = self.contract.request_schema(&method, template)
        {
            let errs = self.contract.errors(schema, v, Mode::Request);
            if !errs.is_empty() {
                self.failures.push(format!(
                    "{method} {path}: the server accepted a body its documented schema refuses: {} ({v})",
                    errs.join("; ")
                ));
            }
        }
        self.seen
            .insert((method.to_string(), template.to_string(), a.status));
        let v = a
            .body
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        (a.status, v)
    }

    /// [`send`](Self::send), asserting the status.
    async fn expect(
        &mut self,
        status: u16,
        method: Method,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Body,
    ) -> Value {
        let (s, v) = self.send(method.clone(), template, path, token, body).await;
        assert_eq!(s, status, "{method} {path}: {v}");
        v
    }

    fn finish(self) -> BTreeSet<(String, String, u16)> {
        assert!(
            self.failures.is_empty(),
            "answers that break the document:\n{}",
            self.failures.join("\n")
        );
        self.seen
    }
}

/// An answer as it came.
struct Answer {
    status: u16,
    content_type: Option<String>,
    /// `None` for an event stream (which does not end).
    body: Option<Vec<u8>>,
    /// The JSON body sent.
    sent: Option<Value>,
}

async fn fetch(
    api: &TestApi,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Body,
) -> Answer {
    let mut rb = api.req(method.clone(), path, token);
    let mut sent = None;
    rb = match body {
        Body::None => rb,
        Body::Json(v) => {
            let rb = rb.json(&v);
            sent = Some(v);
            rb
        }
        Body::Raw(bytes, ct) => rb.header(CONTENT_TYPE, ct).body(bytes),
    };
    let res = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"));
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string());
    // An event stream does not end: its status and type are the contract.
    let stream = content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let body = if stream {
        None
    } else {
        Some(res.bytes().await.unwrap().to_vec())
    };
    Answer {
        status,
        content_type,
        body,
        sent,
    }
}

/// A path of `template` with its parameters filled in.
fn fill(template: &str, hash: &str, name: &str, id: &str, queue: &str) -> String {
    template
        .replace("{hash}", hash)
        .replace("{name}", name)
        .replace("{id}", id)
        .replace("{queue}", queue)
}

/// [`Driver::expect`], one line a step: `step!(d, 200 GET template, path,
/// token, body)`.
macro_rules! step {
    ($d:ident, $status:literal $method:ident $template:expr, $path:expr, $token:expr, $body:expr) => {
        $d.expect($status, Method::$method, $template, &$path, $token, $body)
            .await
    };
}

/// The routes only an admin token may use.
const ADMIN_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/modules"),
    ("PUT", "/v1/modules/{hash}"),
    ("PUT", "/v1/tasks/{name}"),
    ("POST", "/v1/tasks/{name}/rollback"),
    ("POST", "/v1/jobs/{id}/revoke"),
    ("POST", "/v1/queues/{queue}/replay"),
    ("POST", "/v1/queues/{queue}/purge"),
    ("POST", "/v1/jobs/revoke"),
    ("PUT", "/v1/schedules/{name}"),
    ("DELETE", "/v1/schedules/{name}"),
    ("POST", "/v1/schedules/{name}/fire"),
    ("POST", "/v1/schedules/{name}/enable"),
    ("POST", "/v1/schedules/{name}/disable"),
    ("POST", "/v1/workflows/{id}/revoke"),
];

const UNKNOWN_ID: &str = "0190a0a0-0000-7000-8000-000000000000";

/// Every route answers what `/v1/openapi.json` says, in a realistic
/// sequence over every route and in every error case it documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_contract_every_answer_is_documented() {
    let api = TestApi::start_with(None, "1MiB", true, true).await;
    let contract = Contract::fetch(&api).await;
    let mut d = Driver::new(&api, &contract);
    use Method as M;

    // No token, a submit token on admin routes: 401 and 403 everywhere.
    let unknown_hash = module_hash(b"x");
    for (method, template) in contract.operations() {
        let op = contract.operation(&method, &template);
        if op.get("security").is_none() {
            continue;
        }
        let path = fill(&template, &unknown_hash, "t", UNKNOWN_ID, "default");
        let body = || Body::Raw(b"{}".to_vec(), "application/json");
        d.expect(401, method.clone(), &template, &path, None, body())
            .await;
        d.expect(401, method.clone(), &template, &path, Some("nope"), body())
            .await;
        if ADMIN_ROUTES.contains(&(method.as_str(), template.as_str())) {
            d.expect(403, method.clone(), &template, &path, Some(SUBMIT), body())
                .await;
        } else {
            d.send(method.clone(), &template, &path, Some(SUBMIT), body())
                .await;
        }
    }

    let j = Body::Json;
    let raw = |b: &[u8]| Body::Raw(b.to_vec(), "application/json");
    // One byte over the limit.
    let too_big = || Body::Raw(vec![b' '; (1 << 20) + 1], "application/json");

    // System.
    step!(d, 200 GET "/healthz", "/healthz", None, Body::None);
    step!(d, 200 GET "/readyz", "/readyz", None, Body::None);
    step!(d, 200 GET "/metrics", "/metrics", None, Body::None);

    // Modules.
    let hello = guest_bytes("hello");
    let hello_hash = module_hash(&hello);
    let wasm = |b: &[u8]| Body::Raw(b.to_vec(), "application/wasm");
    let (mods, modh) = ("/v1/modules", "/v1/modules/{hash}");
    let v = step!(d, 201 POST mods, mods, Some(ADMIN), wasm(&hello));
    assert_eq!(v["hash"], hello_hash.as_str());
    step!(d, 200 POST mods, mods, Some(ADMIN), wasm(&hello));
    let ok = ok_component();
    let ok_hash = module_hash(&ok);
    step!(d, 201 PUT modh, format!("/v1/modules/{ok_hash}"), Some(ADMIN), wasm(&ok));
    let failing = task_error_component(false, "boom");
    step!(d, 201 POST mods, mods, Some(ADMIN), wasm(&failing));
    step!(d, 400 POST mods, mods, Some(ADMIN), wasm(b""));
    step!(d, 422 POST mods, mods, Some(ADMIN), wasm(b"#!/bin/sh\n"));
    step!(d, 413 POST mods, mods, Some(ADMIN), wasm(&vec![0; (1 << 20) + 1]));
    let other = format!("/v1/modules/{}", module_hash(b"other"));
    step!(d, 400 PUT modh, other, Some(ADMIN), wasm(&hello));
    step!(d, 400 PUT modh, "/v1/modules/sha256:abc", Some(ADMIN), wasm(&hello));
    step!(d, 422 PUT modh, format!("/v1/modules/{}", module_hash(b"junk")), Some(ADMIN), wasm(b"junk"));
    step!(d, 413 PUT modh, other, Some(ADMIN), wasm(&vec![0; (1 << 20) + 1]));
    step!(d, 200 GET mods, mods, Some(SUBMIT), Body::None);
    step!(d, 200 GET modh, format!("/v1/modules/{hello_hash}"), Some(SUBMIT), Body::None);
    step!(d, 404 GET modh, format!("/v1/modules/{unknown_hash}"), Some(SUBMIT), Body::None);
    step!(d, 400 GET modh, "/v1/modules/nope", Some(SUBMIT), Body::None);

    // Tasks: one bound with every grant, one that fails, one to roll back.
    let task = "/v1/tasks/{name}";
    let grants = json!({
        "kv": { "max_keys": 10, "max_bytes": 4096 },
        "mail": { "allowed_senders": ["*@example.com"] },
        "http": { "allow": ["https://example.com"], "private_networks": ["10.0.0.0/8"] },
        "files": { "data": "read-write", "spool": "read-only" },
        "pdf": true,
        "jobs": { "tasks": ["greet"], "queues": ["mail"], "max_children": 10, "max_depth": 2 },
    });
    let every_field = json!({
        "module": hello_hash,
        "queue": "default",
        "rate_limit": "1000/s",
        "time_limit": "30s",
        "fuel": 1_000_000_000_u64,
        "memory": "64MiB",
        "retry": { "max_retries": 2, "backoff_base_ms": 1000, "backoff_cap_ms": 5000, "jitter": false, "retry_on": ["trap"] },
        "result_ttl": "1h",
        "grants": grants,
    });
    step!(d, 200 PUT task, "/v1/tasks/greet", Some(ADMIN), j(every_field));
    step!(d, 200 PUT task, "/v1/tasks/fails", Some(ADMIN), j(json!({"module": module_hash(&failing), "retry": {"max_retries": 0}})));
    step!(d, 200 PUT task, "/v1/tasks/flip", Some(ADMIN), j(json!({"module": ok_hash})));
    step!(d, 200 PUT task, "/v1/tasks/flip", Some(ADMIN), j(json!({"module": hello_hash})));
    step!(d, 200 PUT task, "/v1/tasks/builtin", Some(ADMIN), j(json!({"module": "builtin:hello"})));
    step!(d, 422 PUT task, "/v1/tasks/-bad", Some(ADMIN), j(json!({"module": hello_hash})));
    step!(d, 422 PUT task, "/v1/tasks/x", Some(ADMIN), j(json!({"module": hello_hash, "grants": {"jobs": {"tasks": []}}})));
    step!(d, 404 PUT task, "/v1/tasks/x", Some(ADMIN), j(json!({"module": unknown_hash})));
    step!(d, 400 PUT task, "/v1/tasks/x", Some(ADMIN), j(json!({"module": hello_hash, "fuel": "lots"})));
    step!(d, 400 PUT task, "/v1/tasks/x", Some(ADMIN), raw(b"{\"module\":"));
    step!(d, 413 PUT task, "/v1/tasks/x", Some(ADMIN), too_big());
    step!(d, 200 GET "/v1/tasks", "/v1/tasks", Some(SUBMIT), Body::None);
    let v = step!(d, 200 GET task, "/v1/tasks/greet", Some(SUBMIT), Body::None);
    assert_eq!(v["binding"]["grants"]["jobs"]["max_depth"], 2, "{v}");
    step!(d, 404 GET task, "/v1/tasks/nope", Some(SUBMIT), Body::None);
    step!(d, 400 GET task, "/v1/tasks/%FF", Some(SUBMIT), Body::None);
    let rollback = "/v1/tasks/{name}/rollback";
    let v = step!(d, 200 POST rollback, "/v1/tasks/flip/rollback", Some(ADMIN), j(json!({})));
    assert_eq!(v["binding"]["module"], ok_hash.as_str(), "{v}");
    step!(d, 200 POST rollback, "/v1/tasks/flip/rollback", Some(ADMIN), j(json!({"to": hello_hash})));
    step!(d, 404 POST rollback, "/v1/tasks/flip/rollback", Some(ADMIN), j(json!({"to": unknown_hash})));
    step!(d, 400 POST rollback, "/v1/tasks/flip/rollback", Some(ADMIN), j(json!({"to": "abc"})));
    step!(d, 404 POST rollback, "/v1/tasks/nope/rollback", Some(ADMIN), Body::None);
    step!(d, 413 POST rollback, "/v1/tasks/flip/rollback", Some(ADMIN), too_big());

    // Jobs.
    let (jobs, batch, job) = ("/v1/jobs", "/v1/jobs/batch", "/v1/jobs/{id}");
    let v = step!(d, 202 POST jobs, jobs, Some(SUBMIT), j(json!({"task": "greet", "input": {"name": "contract"}})));
    let done_id = v["id"].as_str().unwrap().to_string();
    // Every field, every number at its maximum.
    let at_the_limits = json!({
        "module": hello_hash,
        "input": [1, "two", null],
        "queue": "later",
        "countdown": 3600,
        "expires_in": 7200.5,
        "retry": {
            "max_retries": 1000,
            "backoff_base_ms": 3_155_760_000_000_u64,
            "backoff_cap_ms": 3_155_760_000_000_u64,
            "jitter": true,
            "retry_on": ["fail", "time_limit"],
        },
        "limits": {
            "time_limit_ms": 86_400_000,
            "fuel": 1_000_000_000_000_000_u64,
            "memory_bytes": 4_294_967_296_u64,
        },
        "rate_limit": "5/2s",
        "idempotency_key": "é".repeat(100),
        "result_ttl": 3_155_760_000_u64,
    });
    let v = step!(d, 202 POST jobs, jobs, Some(ADMIN), j(at_the_limits));
    let delayed_id = v["id"].as_str().unwrap().to_string();
    let again = json!({
        "task": "greet",
        "queue": "later",
        "eta": "2030-01-01T00:00:00Z",
        "expires": "2031-01-01T00:00:00+09:00",
        "idempotency_key": "é".repeat(100),
    });
    let v = step!(d, 202 POST jobs, jobs, Some(ADMIN), j(again));
    assert_eq!(
        v["created"], false,
        "the same key returns the first job: {v}"
    );
    step!(d, 403 POST jobs, jobs, Some(SUBMIT), j(json!({"task": "greet", "rate_limit": "1/s"})));
    step!(d, 404 POST jobs, jobs, Some(SUBMIT), j(json!({"task": "nope"})));
    step!(d, 400 POST jobs, jobs, Some(ADMIN), j(json!({"task": "greet", "limits": {"fuel": 1_000_000_000_000_001_u64}})));
    step!(d, 400 POST jobs, jobs, Some(ADMIN), j(json!({"task": "greet", "idempotency_key": "beat:x"})));
    step!(d, 400 POST jobs, jobs, Some(SUBMIT), raw(b"{\"task\":"));
    step!(d, 413 POST jobs, jobs, Some(SUBMIT), too_big());
    let v = step!(d, 202 POST batch, batch, Some(SUBMIT), j(json!({"jobs": [{"task": "greet"}, {"task": "fails"}]})));
    let failed_id = v["jobs"][1]["id"].as_str().unwrap().to_string();
    step!(d, 400 POST batch, batch, Some(SUBMIT), j(json!({"jobs": []})));
    step!(d, 400 POST batch, batch, Some(SUBMIT), j(json!({"jobs": [{"task": "greet"}, {"task": "greet", "countdown": -1}]})));
    step!(d, 403 POST batch, batch, Some(SUBMIT), j(json!({"jobs": [{"task": "greet", "queue": "elsewhere"}]})));
    step!(d, 404 POST batch, batch, Some(SUBMIT), j(json!({"jobs": [{"task": "greet"}, {"task": "nope"}]})));
    step!(d, 413 POST batch, batch, Some(SUBMIT), too_big());
    let v = step!(d, 200 GET job, format!("/v1/jobs/{done_id}?wait=30s"), Some(SUBMIT), Body::None);
    assert_eq!(v["state"], "SUCCESS", "{v}");
    let v =
        step!(d, 200 GET job, format!("/v1/jobs/{failed_id}?wait=30s"), Some(SUBMIT), Body::None);
    assert_eq!(v["state"], "FAILURE", "{v}");
    step!(d, 200 GET job, format!("/v1/jobs/{delayed_id}"), Some(SUBMIT), Body::None);
    step!(d, 404 GET job, format!("/v1/jobs/{UNKNOWN_ID}"), Some(SUBMIT), Body::None);
    step!(d, 400 GET job, "/v1/jobs/not-a-uuid", Some(SUBMIT), Body::None);
    step!(d, 400 GET job, format!("/v1/jobs/{done_id}?wait=soon"), Some(SUBMIT), Body::None);
    step!(d, 400 GET job, format!("/v1/jobs/{done_id}?wait=1s&wait=2s"), Some(SUBMIT), Body::None);
    let events = "/v1/jobs/{id}/events";
    step!(d, 200 GET events, format!("/v1/jobs/{done_id}/events"), Some(SUBMIT), Body::None);
    step!(d, 404 GET events, format!("/v1/jobs/{UNKNOWN_ID}/events"), Some(SUBMIT), Body::None);
    step!(d, 400 GET events, "/v1/jobs/x/events", Some(SUBMIT), Body::None);
    step!(d, 200 GET "/v1/events", "/v1/events?queue=default,later", Some(SUBMIT), Body::None);
    step!(d, 400 GET "/v1/events", "/v1/events?queue=,", Some(SUBMIT), Body::None);
    let revoke = "/v1/jobs/{id}/revoke";
    let path = format!("/v1/jobs/{delayed_id}/revoke");
    let v = step!(d, 200 POST revoke, path, Some(ADMIN), j(json!({"terminate": true})));
    assert_eq!(v["outcome"], "revoked", "{v}");
    let v = step!(d, 200 POST revoke, path, Some(ADMIN), Body::None);
    assert_eq!(v["outcome"], "already_final", "{v}");
    step!(d, 404 POST revoke, format!("/v1/jobs/{UNKNOWN_ID}/revoke"), Some(ADMIN), Body::None);
    step!(d, 400 POST revoke, "/v1/jobs/x/revoke", Some(ADMIN), Body::None);
    step!(d, 400 POST revoke, path, Some(ADMIN), j(json!({"terminate": "yes"})));
    step!(d, 413 POST revoke, path, Some(ADMIN), too_big());

    // Workflows.
    let (wfs, wf) = ("/v1/workflows", "/v1/workflows/{id}");
    let tree = json!({
        "chord": [
            {"task": "greet", "input": {"name": "a"}},
            {"chain": [{"task": "greet", "input": {"name": "b"}}, {"task": "greet", "input": {"name": "x"}, "previous": "before"}]},
        ],
        "callback": {"task": "greet", "input": {"name": "c"}},
        "on_error": {"task": "greet", "input": {"name": "e"}},
    });
    let v = step!(d, 202 POST wfs, wfs, Some(SUBMIT), j(json!({"workflow": tree, "ttl_secs": 3600, "idempotency_key": "contract"})));
    let wf_id = v["id"].as_str().unwrap().to_string();
    let v = step!(d, 202 POST wfs, wfs, Some(SUBMIT), j(json!({"workflow": {"task": "greet"}, "idempotency_key": "contract"})));
    assert_eq!(
        (v["id"].as_str(), v["created"].as_bool()),
        (Some(wf_id.as_str()), Some(false)),
        "{v}"
    );
    step!(d, 400 POST wfs, wfs, Some(SUBMIT), j(json!({"workflow": {"group": []}})));
    step!(d, 400 POST wfs, wfs, Some(SUBMIT), j(json!({"workflow": {"chain": [{"task": "nope"}]}})));
    step!(d, 400 POST wfs, wfs, Some(SUBMIT), j(json!({"workflow": {"task": "greet"}, "ttl_secs": 0})));
    step!(d, 403 POST wfs, wfs, Some(SUBMIT), j(json!({"workflow": {"task": "greet", "rate_limit": "1/s"}})));
    step!(d, 400 POST wfs, wfs, Some(SUBMIT), raw(b"{\"workflow\":"));
    step!(d, 413 POST wfs, wfs, Some(SUBMIT), too_big());
    let v =
        step!(d, 200 GET wf, format!("/v1/workflows/{wf_id}?wait=30s"), Some(SUBMIT), Body::None);
    assert_eq!(v["state"], "succeeded", "{v}");
    step!(d, 404 GET wf, format!("/v1/workflows/{UNKNOWN_ID}"), Some(SUBMIT), Body::None);
    step!(d, 400 GET wf, "/v1/workflows/x", Some(SUBMIT), Body::None);
    step!(d, 400 GET wf, format!("/v1/workflows/{wf_id}?wait=soon"), Some(SUBMIT), Body::None);
    let wev = "/v1/workflows/{id}/events";
    step!(d, 200 GET wev, format!("/v1/workflows/{wf_id}/events"), Some(SUBMIT), Body::None);
    step!(d, 404 GET wev, format!("/v1/workflows/{UNKNOWN_ID}/events"), Some(SUBMIT), Body::None);
    step!(d, 400 GET wev, "/v1/workflows/x/events", Some(SUBMIT), Body::None);
    let wrev = "/v1/workflows/{id}/revoke";
    let path = format!("/v1/workflows/{wf_id}/revoke");
    let v = step!(d, 200 POST wrev, path, Some(ADMIN), Body::None);
    assert_eq!(
        v["state"], "succeeded",
        "an ended workflow keeps its end: {v}"
    );
    step!(d, 404 POST wrev, format!("/v1/workflows/{UNKNOWN_ID}/revoke"), Some(ADMIN), Body::None);
    step!(d, 400 POST wrev, "/v1/workflows/x/revoke", Some(ADMIN), Body::None);
    step!(d, 400 POST wrev, path, Some(ADMIN), j(json!({"terminate": "yes"})));
    step!(d, 413 POST wrev, path, Some(ADMIN), too_big());

    // Queues, dead letters, workers.
    step!(d, 200 GET "/v1/queues", "/v1/queues", Some(SUBMIT), Body::None);
    let dead = "/v1/queues/{queue}/dead";
    let v = step!(d, 200 GET dead, "/v1/queues/default/dead?limit=10", Some(SUBMIT), Body::None);
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == failed_id.as_str()),
        "{v}"
    );
    step!(d, 400 GET dead, "/v1/queues/default/dead?limit=many", Some(SUBMIT), Body::None);
    step!(d, 400 GET dead, "/v1/queues/a%7Bb%7D/dead", Some(SUBMIT), Body::None);
    let replay = "/v1/queues/{queue}/replay";
    let v = step!(d, 200 POST replay, "/v1/queues/default/replay", Some(ADMIN), j(json!({"ids": [failed_id]})));
    assert_eq!(v["replayed"][0], failed_id.as_str(), "{v}");
    step!(d, 200 POST replay, "/v1/queues/default/replay", Some(ADMIN), Body::None);
    step!(d, 400 POST replay, "/v1/queues/default/replay", Some(ADMIN), j(json!({"ids": ["x"]})));
    step!(d, 400 POST replay, "/v1/queues/a%20b/replay", Some(ADMIN), Body::None);
    step!(d, 413 POST replay, "/v1/queues/default/replay", Some(ADMIN), too_big());
    let running = "/v1/queues/{queue}/running";
    step!(d, 200 GET running, "/v1/queues/default/running", Some(SUBMIT), Body::None);
    step!(d, 400 GET running, "/v1/queues/a%20b/running", Some(SUBMIT), Body::None);
    let scheduled = "/v1/queues/{queue}/scheduled";
    let v =
        step!(d, 200 GET scheduled, "/v1/queues/later/scheduled?limit=5", Some(SUBMIT), Body::None);
    assert!(v.as_array().is_some(), "{v}");
    step!(d, 400 GET scheduled, "/v1/queues/later/scheduled?limit=all", Some(SUBMIT), Body::None);
    step!(d, 400 GET scheduled, "/v1/queues/a%20b/scheduled", Some(SUBMIT), Body::None);
    let purge = "/v1/queues/{queue}/purge";
    let v = step!(d, 200 POST purge, "/v1/queues/default/purge", Some(ADMIN), j(json!({"task": "greet", "dry_run": true})));
    assert_eq!(v["dry_run"], true, "{v}");
    step!(d, 200 POST purge, "/v1/queues/nothing-here/purge", Some(ADMIN), Body::None);
    step!(d, 400 POST purge, "/v1/queues/a%20b/purge", Some(ADMIN), Body::None);
    step!(d, 400 POST purge, "/v1/queues/default/purge", Some(ADMIN), j(json!({"task": "a b"})));
    step!(d, 413 POST purge, "/v1/queues/default/purge", Some(ADMIN), too_big());
    let bulk = "/v1/jobs/revoke";
    let v = step!(d, 200 POST bulk, bulk, Some(ADMIN), j(json!({"task": "nothing-bound", "terminate": true})));
    assert_eq!(
        (
            v["purged"].as_array().map(Vec::len),
            v["running"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0)),
        "{v}"
    );
    step!(d, 400 POST bulk, bulk, Some(ADMIN), Body::None);
    step!(d, 400 POST bulk, bulk, Some(ADMIN), j(json!({"queue": "a b"})));
    step!(d, 413 POST bulk, bulk, Some(ADMIN), too_big());
    step!(d, 200 GET "/v1/workers", "/v1/workers", Some(SUBMIT), Body::None);
    let queue = "/v1/queues/{queue}";
    let v = step!(d, 200 GET queue, "/v1/queues/default", Some(SUBMIT), Body::None);
    assert_eq!(v["history"].as_array().map(Vec::len), Some(60), "{v}");
    step!(d, 404 GET queue, "/v1/queues/never-used", Some(SUBMIT), Body::None);
    step!(d, 400 GET queue, "/v1/queues/a%20b", Some(SUBMIT), Body::None);
    let v = step!(d, 200 GET "/v1/history", "/v1/history", Some(SUBMIT), Body::None);
    assert!(v["queues"].as_array().is_some_and(|q| !q.is_empty()), "{v}");

    // Schedules.
    let (scheds, sched) = ("/v1/schedules", "/v1/schedules/{name}");
    let beat = json!({
        "task": "greet",
        "input": {"name": "beat"},
        "cron": "0 3 * * *",
        "timezone": "Asia/Tokyo",
        "missed": "catch-up-once",
        "queue": "default",
        "retry": {"max_retries": 1},
        "limits": {"fuel": 1_000_000},
        "expires_in_secs": 600.5,
    });
    let v = step!(d, 200 PUT sched, "/v1/schedules/nightly", Some(ADMIN), j(beat.clone()));
    assert!(v["next_fire"]["local"].is_string(), "{v}");
    step!(d, 200 PUT sched, "/v1/schedules/often", Some(ADMIN), j(json!({"name": "often", "task": "greet", "every": "1h", "enabled": false})));
    step!(d, 400 PUT sched, "/v1/schedules/bad", Some(ADMIN), j(json!({"task": "greet", "cron": "61 * * * *"})));
    step!(d, 400 PUT sched, "/v1/schedules/bad", Some(ADMIN), j(json!({"task": "nope", "every": "1h"})));
    step!(d, 400 PUT sched, "/v1/schedules/bad", Some(ADMIN), j(json!({"task": "greet", "every": "1h", "limits": {"fuel": -1}})));
    step!(d, 400 PUT sched, "/v1/schedules/bad", Some(ADMIN), raw(b"[1]"));
    step!(d, 413 PUT sched, "/v1/schedules/bad", Some(ADMIN), too_big());
    step!(d, 200 GET scheds, scheds, Some(SUBMIT), Body::None);
    step!(d, 200 GET sched, "/v1/schedules/nightly", Some(SUBMIT), Body::None);
    step!(d, 404 GET sched, "/v1/schedules/nope", Some(SUBMIT), Body::None);
    let fire = "/v1/schedules/{name}/fire";
    let v = step!(d, 202 POST fire, "/v1/schedules/nightly/fire", Some(ADMIN), Body::None);
    assert_eq!(v["schedule"], "nightly", "{v}");
    let fired = v["id"].as_str().unwrap().to_string();
    step!(d, 404 POST fire, "/v1/schedules/nope/fire", Some(ADMIN), Body::None);
    for (action, to) in [("disable", false), ("enable", true)] {
        let template = format!("/v1/schedules/{{name}}/{action}");
        let v = step!(d, 200 POST &template, format!("/v1/schedules/nightly/{action}"), Some(ADMIN), Body::None);
        assert_eq!(v["enabled"], to, "{v}");
        step!(d, 404 POST &template, format!("/v1/schedules/nope/{action}"), Some(ADMIN), Body::None);
    }
    step!(d, 204 DELETE sched, "/v1/schedules/often", Some(ADMIN), Body::None);
    step!(d, 404 DELETE sched, "/v1/schedules/often", Some(ADMIN), Body::None);
    let v = step!(d, 200 GET job, format!("/v1/jobs/{fired}?wait=30s"), Some(SUBMIT), Body::None);
    assert_eq!(v["state"], "SUCCESS", "{v}");

    // Not routes: JSON errors too (not in the document, which lists routes).
    for (method, path, status) in [(M::GET, "/v1/nope", 404), (M::DELETE, "/v1/jobs", 405)] {
        let (s, v) = api.call(api.req(method.clone(), path, Some(ADMIN))).await;
        assert_eq!(s.as_u16(), status, "{method} {path}: {v}");
        assert!(!message(&v).is_empty(), "{method} {path}: {v}");
    }

    let seen = d.finish();
    api.stop().await;

    // Every documented operation was called and answered with success.
    for (method, template) in contract.operations() {
        assert!(
            seen.iter()
                .any(|(m, t, s)| m == method.as_str() && *t == template && (200..300).contains(s)),
            "{method} {template} was never answered with a success"
        );
    }
    for status in [400, 401, 403, 404, 413, 422] {
        assert!(
            seen.iter().any(|(_, _, s)| *s == status),
            "no route answered {status}"
        );
    }

    // Redis down: the routes that need it answer 503, as documented.
    let mut redis = RedisServer::start();
    let api = TestApi::start_with(Some(redis.url()), "1MiB", false, false).await;
    redis.stop();
    // Each call waits out the client's reconnection attempts: all at once.
    let calls: Vec<(Method, String, String, Body)> = contract
        .operations()
        .into_iter()
        .map(|(method, template)| {
            let path = fill(&template, &hello_hash, "greet", UNKNOWN_ID, "default");
            let body = match (method.as_str(), template.as_str()) {
                ("POST", "/v1/modules") | ("PUT", "/v1/modules/{hash}") => wasm(&hello),
                ("POST", "/v1/jobs") => j(json!({"task": "greet"})),
                ("POST", "/v1/jobs/batch") => j(json!({"jobs": [{"task": "greet"}]})),
                ("PUT", "/v1/tasks/{name}") => j(json!({"module": hello_hash})),
                ("PUT", "/v1/schedules/{name}") => j(json!({"task": "greet", "every": "1h"})),
                ("POST", "/v1/jobs/revoke") => j(json!({"task": "greet"})),
                ("POST", "/v1/workflows") => j(json!({"workflow": {"task": "greet"}})),
                _ => Body::None,
            };
            (method, template, path, body)
        })
        .collect();
    let answers =
        futures::future::join_all(calls.into_iter().map(|(method, template, path, body)| {
            let api = &api;
            async move {
                let a = fetch(api, method.clone(), &path, Some(ADMIN), body).await;
                (method, template, path, a)
            }
        }))
        .await;
    let mut d = Driver::new(&api, &contract);
    let mut not_503 = Vec::new();
    for (method, template, path, a) in answers {
        let (s, v) = d.check(method.clone(), &template, &path, a);
        if s != 503 {
            not_503.push(format!("{method} {template}: {s} {v}"));
        }
    }
    d.finish();
    api.stop().await;
    not_503.sort();
    assert_eq!(
        not_503,
        ["GET /healthz: 200 null", "GET /metrics: 200 null"],
        "with Redis down"
    );
}

/// The documented request schemas list exactly the fields the server
/// reads, the documented maxima are the server's constants, and the
/// documented name patterns accept exactly the names the server accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_contract_fields_limits_and_patterns_are_the_servers() {
    use runner::queue::job::{MAX_FUEL, MAX_MEMORY_BYTES, MAX_RETRIES, MAX_TIME_LIMIT_MS};
    let api = TestApi::start(None, "1MiB", false).await;
    let c = Contract::fetch(&api).await;

    // A body with an unknown field is refused naming the fields the server
    // knows (serde's `deny_unknown_fields`): the schema lists those.
    let h = module_hash(b"x");
    let unknown = json!({"__unknown__": 1});
    let probes = [
        (
            "JobRequest",
            Method::POST,
            "/v1/jobs".to_string(),
            unknown.clone(),
        ),
        (
            "BatchRequest",
            Method::POST,
            "/v1/jobs/batch".into(),
            unknown.clone(),
        ),
        (
            "RevokeRequest",
            Method::POST,
            format!("/v1/jobs/{UNKNOWN_ID}/revoke"),
            unknown.clone(),
        ),
        (
            "ReplayRequest",
            Method::POST,
            "/v1/queues/default/replay".into(),
            unknown.clone(),
        ),
        (
            "PurgeFilter",
            Method::POST,
            "/v1/queues/default/purge".into(),
            unknown.clone(),
        ),
        (
            "RevokeManyRequest",
            Method::POST,
            "/v1/jobs/revoke".into(),
            unknown.clone(),
        ),
        (
            "RollbackRequest",
            Method::POST,
            "/v1/tasks/x/rollback".into(),
            unknown.clone(),
        ),
        (
            "Beat",
            Method::PUT,
            "/v1/schedules/x".into(),
            unknown.clone(),
        ),
        (
            "BindRequest",
            Method::PUT,
            "/v1/tasks/x".into(),
            json!({"module": h, "__unknown__": 1}),
        ),
        (
            "TaskGrants",
            Method::PUT,
            "/v1/tasks/x".into(),
            json!({"module": h, "grants": unknown}),
        ),
        (
            "KvGrant",
            Method::PUT,
            "/v1/tasks/x".into(),
            json!({"module": h, "grants": {"kv": unknown}}),
        ),
        (
            "JobsGrant",
            Method::PUT,
            "/v1/tasks/x".into(),
            json!({"module": h, "grants": {"jobs": {"tasks": ["a"], "__unknown__": 1}}}),
        ),
    ];
    for (schema, method, path, body) in probes {
        let (s, v) = api
            .call(api.req(method, &path, Some(ADMIN)).json(&body))
            .await;
        assert_eq!(s, 400, "{path}: {v}");
        let msg = message(&v);
        let expected = msg
            .split_once("expected ")
            .unwrap_or_else(|| panic!("{path}: {msg}"))
            .1;
        let known: BTreeSet<&str> = expected.split('`').skip(1).step_by(2).collect();
        let documented: BTreeSet<&str> = c.schema(schema)["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            documented, known,
            "{schema}: documented vs read by the server"
        );
    }
    api.stop().await;
    let max_delay_secs = runner::queue::job::MAX_DELAY.as_secs();
    let max_delay_ms = runner::queue::job::MAX_DELAY.as_millis() as u64;
    let grant = runner::registry::JobsGrant::MAX_CHILDREN;
    let depth = runner::registry::JobsGrant::MAX_DEPTH;
    for (schema, property, keyword, value) in [
        ("JobLimits", "time_limit_ms", "maximum", MAX_TIME_LIMIT_MS),
        (
            "JobLimits",
            "soft_time_limit_ms",
            "maximum",
            MAX_TIME_LIMIT_MS,
        ),
        ("JobLimits", "fuel", "maximum", MAX_FUEL),
        ("JobLimits", "memory_bytes", "maximum", MAX_MEMORY_BYTES),
        ("RetryPolicy", "max_retries", "maximum", MAX_RETRIES.into()),
        ("RetryPolicy", "backoff_base_ms", "maximum", max_delay_ms),
        ("RetryPolicy", "backoff_cap_ms", "maximum", max_delay_ms),
        ("JobRequest", "countdown", "maximum", max_delay_secs),
        ("JobRequest", "countdown", "minimum", 0),
        ("JobRequest", "expires_in", "maximum", max_delay_secs),
        ("JobRequest", "expires_in", "exclusiveMinimum", 0),
        ("JobRequest", "result_ttl", "maximum", max_delay_secs),
        ("JobRequest", "idempotency_key", "maxLength", 200),
        ("JobRequest", "idempotency_key", "minLength", 1),
        ("BindRequest", "fuel", "maximum", MAX_FUEL),
        ("JobsGrant", "max_children", "maximum", grant.into()),
        ("JobsGrant", "max_depth", "maximum", depth.into()),
        ("Beat", "expires_in_secs", "maximum", max_delay_secs),
        (
            "JobRequest",
            "priority",
            "maximum",
            runner::queue::job::MAX_PRIORITY.into(),
        ),
        (
            "BindRequest",
            "priority",
            "maximum",
            runner::queue::job::MAX_PRIORITY.into(),
        ),
        (
            "Beat",
            "priority",
            "maximum",
            runner::queue::job::MAX_PRIORITY.into(),
        ),
        (
            "TaskBinding",
            "priority",
            "maximum",
            runner::queue::job::MAX_PRIORITY.into(),
        ),
        (
            "Job",
            "priority",
            "maximum",
            runner::queue::job::MAX_PRIORITY.into(),
        ),
        ("BatchRequest", "jobs", "minItems", 1),
    ] {
        let documented = &c.property(schema, property)[keyword];
        assert_eq!(
            documented.as_f64(),
            Some(value as f64),
            "{schema}.{property}: {keyword} is {documented}, the server's is {value}"
        );
    }
    let key = c.property("JobRequest", "idempotency_key")["pattern"]
        .as_str()
        .unwrap();
    for (k, ok) in [
        ("beat:x", false),
        ("child:x", false),
        ("beat", true),
        ("x:beat:", true),
    ] {
        assert_eq!(c.is_match(key, k), ok, "{k}");
    }

    // Names: the patterns and the validators agree on every string.
    let task_pattern = c.schema("TaskName")["pattern"]
        .as_str()
        .unwrap()
        .to_string();
    let queue_pattern = c.schema("QueueName")["pattern"]
        .as_str()
        .unwrap()
        .to_string();
    let partition_pattern = c.schema("QueueOrPartition")["pattern"]
        .as_str()
        .unwrap()
        .to_string();
    let hash_pattern = c.schema("ModuleHash")["pattern"]
        .as_str()
        .unwrap()
        .to_string();
    let c = Arc::new(c);
    let strings = prop_oneof![
        proptest::string::string_regex("[A-Za-z0-9_.:{} /é-]{0,3}").unwrap(),
        proptest::string::string_regex("[A-Za-z0-9_.:-]{95,102}").unwrap(),
        proptest::string::string_regex("[-_.:a-z0-9][a-z0-9\\x00-\\x7f]{0,8}").unwrap(),
        proptest::string::string_regex("[a-z~]{0,3}~[0-9]{0,3}(~[0-9])?").unwrap(),
        any::<String>(),
    ];
    let mut runner = runner_of(500);
    runner
        .run(&strings, |s| {
            let task_ok = runner::names::TaskName::validate(&s).is_ok();
            prop_assert_eq!(c.is_match(&task_pattern, &s), task_ok, "task name {:?}", s);
            let queue_ok = runner::queue::job::validate_queue_name(&s).is_ok();
            prop_assert_eq!(
                c.is_match(&queue_pattern, &s),
                queue_ok,
                "queue name {:?}",
                s
            );
            let partition_ok = runner::queue::partition::validate_queue_or_partition(&s).is_ok();
            prop_assert_eq!(
                c.is_match(&partition_pattern, &s),
                partition_ok,
                "queue or partition name {:?}",
                s
            );
            Ok(())
        })
        .unwrap();
    let hashes = prop_oneof![
        proptest::string::string_regex("sha256:[0-9a-fA-F]{63,65}").unwrap(),
        proptest::string::string_regex("(sha256:)?[0-9a-f]{64}").unwrap(),
    ];
    runner
        .run(&hashes, |s| {
            let parsed = s.parse::<runner::names::ModuleHash>();
            // The documented form is the canonical one: every hash it
            // accepts parses back to itself.
            if c.is_match(&hash_pattern, &s) {
                prop_assert_eq!(parsed.map(|h| h.to_string()), Ok(s.clone()));
            } else if let Ok(h) = parsed {
                prop_assert_ne!(h.to_string(), s);
            }
            Ok(())
        })
        .unwrap();
}

/// A deterministic runner of `cases` cases (more with `PROPTEST_CASES`).
fn runner_of(cases: u32) -> TestRunner {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config.failure_persistence = None;
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

// ---------------------------------------------------------------------------
// Random job requests.

/// Picks one of `texts` (raw JSON).
fn pick(texts: &[&'static str]) -> BoxedStrategy<String> {
    proptest::sample::select(texts.to_vec())
        .prop_map(str::to_string)
        .boxed()
}

/// A string as JSON.
fn quoted(s: impl Strategy<Value = String> + 'static) -> BoxedStrategy<String> {
    s.prop_map(|s| Value::String(s).to_string()).boxed()
}

/// Numbers at and past every limit, and not-numbers, as raw JSON.
fn edge_number() -> BoxedStrategy<String> {
    prop_oneof![
        3 => pick(&[
            "0", "-0", "-0.0", "1", "-1", "0.5", "1e-320", "5e-324", "-5e-324", "1.5",
            "86400000", "86400001", "1000", "1001", "10000", "10001", "16", "17",
            "3155760000", "3155760000.0001", "3155760001", "3155760000000", "3155760000001",
            "1000000000000000", "1000000000000001", "4294967295", "4294967296", "4294967297",
            "9007199254740993", "18446744073709551615", "18446744073709551616",
            "-9223372036854775808", "-9223372036854775809", "1e300", "-1e300", "1e400",
            "1.7976931348623157e308", "1.8e308", "-1.8e308", "123456789012345678901234567890",
            "0.1e1", "1E3", "\"10\"", "\"\"", "null", "true", "[]", "{}", "[1]",
        ]),
        1 => any::<i64>().prop_map(|n| n.to_string()).boxed(),
        1 => any::<u64>().prop_map(|n| n.to_string()).boxed(),
        1 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}"))
            .boxed(),
    ]
    .boxed()
}

/// Odd strings: empty, too long, unicode, control characters, names.
fn edge_string() -> BoxedStrategy<String> {
    prop_oneof![
        2 => pick(&[
            "\"\"", "\" \"", "\"-x\"", "\"a b\"", "\"a{b}\"", "\"ü\"", "\"\\u0000\"",
            "\"\\ud800\"", "\"\\udc00\\ud800\"", "\"😀\"", "\"\\n\"", "\"x/y\"", "\"..\"",
            "\"default\"", "\"greet\"", "\"beat:x\"", "\"child:1\"", "\"sha256:abc\"",
            "5", "null", "false", "[\"greet\"]", "{}",
        ]),
        1 => quoted("[a-z]{101,120}"),
        1 => quoted(any::<String>()),
        1 => quoted(proptest::string::string_regex("[a-zA-Z0-9_.:-]{1,100}").unwrap()),
    ]
    .boxed()
}

/// A random JSON value (the `input`).
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// `depth` nested arrays around `core`.
fn nested(depth: usize, core: &str) -> String {
    format!("{}{core}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Deep or out-of-range `input`s, as raw JSON.
fn edge_input() -> BoxedStrategy<String> {
    prop_oneof![
        Just(nested(127, "1")),
        Just(nested(128, "1")),
        Just(nested(10_000, "")),
        Just(format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200))),
        Just("[1e400]".to_string()),
        Just("{\"x\":\"\\ud800\"}".to_string()),
        Just("\"".to_string() + &"x".repeat(100_000) + "\""),
    ]
    .boxed()
}

fn rfc3339(secs_from_now: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs_from_now)).to_rfc3339()
}

/// One job object: each field present or not, mostly valid, sometimes at
/// or past its edge. Returned as (field, raw JSON value) pairs.
fn job_fields(hello_hash: String) -> BoxedStrategy<Vec<(&'static str, String)>> {
    let field =
        |name: &'static str, p: f64, valid: BoxedStrategy<String>, edge: BoxedStrategy<String>| {
            proptest::option::weighted(p, prop_oneof![2 => valid, 1 => edge])
                .prop_map(move |v| v.map(|v| (name, v)))
                .boxed()
        };
    let unknown = module_hash(b"not uploaded");
    let fields: Vec<BoxedStrategy<Option<(&'static str, String)>>> = vec![
        field(
            "task",
            0.9,
            pick(&["\"greet\""]),
            prop_oneof![pick(&["\"nope\"", "\"Greet\""]), edge_string()].boxed(),
        ),
        field(
            "module",
            0.08,
            Just(Value::String(hello_hash).to_string()).boxed(),
            prop_oneof![Just(Value::String(unknown).to_string()), edge_string()].boxed(),
        ),
        field(
            "input",
            0.6,
            json_value().prop_map(|v| v.to_string()).boxed(),
            prop_oneof![edge_input(), edge_number(), edge_string()].boxed(),
        ),
        field(
            "queue",
            0.2,
            pick(&["\"default\"", "\"mail\"", "\"elsewhere\""]),
            prop_oneof![pick(&["\"elsewhere\""]), edge_string()].boxed(),
        ),
        field(
            "countdown",
            0.2,
            (0u32..3600).prop_map(|n| n.to_string()).boxed(),
            edge_number(),
        ),
        field(
            "expires_in",
            0.2,
            (1u32..86_400).prop_map(|n| format!("{n}.5")).boxed(),
            edge_number(),
        ),
        field(
            "eta",
            0.1,
            (0i64..86_400)
                .prop_map(|s| Value::String(rfc3339(s)).to_string())
                .boxed(),
            date_edge(),
        ),
        field(
            "expires",
            0.1,
            (3600i64..86_400)
                .prop_map(|s| Value::String(rfc3339(s)).to_string())
                .boxed(),
            date_edge(),
        ),
        field("retry", 0.2, retry_valid(), retry_edge()),
        field("limits", 0.2, limits_valid(), limits_edge()),
        field(
            "rate_limit",
            0.1,
            pick(&["\"10/m\"", "\"5/2s\""]),
            prop_oneof![
                pick(&[
                    "\"0/m\"",
                    "\"5/2y\"",
                    "\"abc\"",
                    "\"1/18446744073709551615d\"",
                    "\"4294967296/s\"",
                    "\"1/0s\"",
                    "\" 1 / ms \"",
                ]),
                edge_string()
            ]
            .boxed(),
        ),
        field(
            "idempotency_key",
            0.15,
            any::<u64>().prop_map(|n| format!("\"k-{n}\"")).boxed(),
            prop_oneof![
                Just(format!("\"{}\"", "é".repeat(100))),
                Just(format!("\"{}\"", "é".repeat(101))),
                Just(format!("\"{}\"", "x".repeat(200))),
                Just(format!("\"{}\"", "x".repeat(201))),
                edge_string()
            ]
            .boxed(),
        ),
        field(
            "result_ttl",
            0.15,
            (1u32..86_400).prop_map(|n| n.to_string()).boxed(),
            edge_number(),
        ),
        field("bogus", 0.03, pick(&["1"]), pick(&["null"])),
    ];
    fields
        .prop_map(|fs| fs.into_iter().flatten().collect())
        .boxed()
}

fn date_edge() -> BoxedStrategy<String> {
    prop_oneof![
        pick(&[
            "\"1970-01-01T00:00:00Z\"",
            "\"0001-01-01T00:00:00Z\"",
            "\"9999-12-31T23:59:59Z\"",
            "\"+262142-12-31T23:59:59Z\"",
            "\"-0001-01-01T00:00:00Z\"",
            "\"2024-02-30T00:00:00Z\"",
            "\"2024-01-01 00:00:00Z\"",
            "\"2024-01-01T00:00:00\"",
            "\"2024-01-01T24:00:00Z\"",
            "\"not a date\"",
            "\"\"",
            "0",
            "null",
        ]),
        (-3_000_000_000i64..6_000_000_000)
            .prop_map(|s| Value::String(rfc3339(s)).to_string())
            .boxed(),
    ]
    .boxed()
}

fn retry_valid() -> BoxedStrategy<String> {
    (0u32..=3, 60_000u64..120_000, any::<bool>())
        .prop_map(|(n, base, jitter)| {
            json!({"max_retries": n, "backoff_base_ms": base, "jitter": jitter}).to_string()
        })
        .boxed()
}

fn retry_edge() -> BoxedStrategy<String> {
    let key = proptest::sample::select(vec![
        "max_retries",
        "backoff_base_ms",
        "backoff_cap_ms",
        "jitter",
        "retry_on",
        "max_retry",
    ]);
    let value = prop_oneof![
        edge_number(),
        pick(&["[\"fail\"]", "[\"nope\"]", "[]", "\"fail\"", "true"]),
    ];
    prop_oneof![
        proptest::collection::vec((key, value), 1..3).prop_map(|kv| {
            let inner: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", inner.join(","))
        }),
        pick(&["null", "3", "[]", "[3]", "[0, 1000]", "\"3\""]),
    ]
    .boxed()
}

fn limits_valid() -> BoxedStrategy<String> {
    (1_000u64..30_000, 1_000u64..1_000_000, 1u64..64)
        .prop_map(|(t, f, m)| {
            json!({"time_limit_ms": t, "fuel": f, "memory_bytes": m << 20}).to_string()
        })
        .boxed()
}

fn limits_edge() -> BoxedStrategy<String> {
    let key = proptest::sample::select(vec!["time_limit_ms", "fuel", "memory_bytes", "fuels"]);
    prop_oneof![
        proptest::collection::vec((key, edge_number()), 1..3).prop_map(|kv| {
            let inner: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", inner.join(","))
        }),
        pick(&["null", "1", "[]", "[1000]", "[1000, 5]"]),
    ]
    .boxed()
}

/// One request of the property test.
#[derive(Clone)]
struct Case {
    admin: bool,
    batch: bool,
    /// The body as sent (lossy for display; `raw` holds the bytes).
    body: String,
    raw: Vec<u8>,
    /// The fields of each job, for the check that a refusal names one.
    fields: Vec<Vec<&'static str>>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = if self.admin { "admin" } else { "submit" };
        let route = if self.batch {
            "/v1/jobs/batch"
        } else {
            "/v1/jobs"
        };
        write!(
            f,
            "POST {route} ({token} token, {} bytes): {}",
            self.raw.len(),
            self.body
        )
    }
}

fn object(fields: &[(&'static str, String)]) -> String {
    let inner: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", Value::String(k.to_string())))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Whole bodies that are not a job: malformed, deep, not objects.
fn odd_body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        pick(&[
            "",
            "   ",
            "{",
            "[",
            "}",
            "null",
            "5",
            "\"x\"",
            "[]",
            "{\"jobs\":[]}",
            "{\"jobs\":{}}",
            "{\"jobs\":null}",
            "{\"task\":\"greet\",\"task\":\"greet\"}",
            "\u{feff}{\"task\":\"greet\"}",
            "{\"task\":\"greet\"} {}",
            "{\"task\":\"greet\"}garbage",
            "{\"task\":\"greet\",}",
            "{'task':'greet'}",
            "{\"task\":\"gr\\u0000eet\"}",
            "[\"greet\"]",
            "{\"jobs\":[[\"greet\"]]}",
            "{\"jobs\":[\"greet\"]}",
        ])
        .prop_map(String::into_bytes)
        .boxed(),
        Just(nested(10_000, "").into_bytes()).boxed(),
        Just(format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)).into_bytes()).boxed(),
        Just(format!("{{\"jobs\":{}}}", nested(10_000, "")).into_bytes()).boxed(),
        Just(format!("{{\"task\":\"greet\",\"input\":{}}}", nested(10_000, "")).into_bytes())
            .boxed(),
        Just(b"{\"task\":\"\xff\xfe\"}".to_vec()).boxed(),
        proptest::collection::vec(any::<u8>(), 0..64).boxed(),
    ]
    .boxed()
}

fn case(hello_hash: String) -> impl Strategy<Value = Case> {
    let single = job_fields(hello_hash.clone()).prop_map(|f| {
        let body = object(&f);
        (false, body, vec![f.iter().map(|(k, _)| *k).collect()])
    });
    let batch = proptest::collection::vec(job_fields(hello_hash), 1..4).prop_map(|jobs| {
        let bodies: Vec<String> = jobs.iter().map(|f| object(f)).collect();
        let fields = jobs
            .iter()
            .map(|f| f.iter().map(|(k, _)| *k).collect())
            .collect();
        (true, format!("{{\"jobs\":[{}]}}", bodies.join(",")), fields)
    });
    let structured = prop_oneof![3 => single, 1 => batch]
        .prop_map(|(batch, body, fields)| (batch, body.into_bytes(), fields));
    let odd = (any::<bool>(), odd_body()).prop_map(|(batch, raw)| (batch, raw, Vec::new()));
    (any::<bool>(), prop_oneof![9 => structured, 1 => odd]).prop_map(
        |(admin, (batch, raw, fields))| Case {
            admin,
            batch,
            body: String::from_utf8_lossy(&raw[..raw.len().min(2_000)]).into_owned(),
            raw,
            fields,
        },
    )
}

/// Whether `message` names one of `fields` (`rate_limit` may be written
/// `rate limit`; `expires` and `expires_in` are named `expiry` when the
/// time is past).
fn names_a_field(message: &str, fields: &[&str]) -> bool {
    let m = message.to_lowercase().replace('_', " ");
    fields.iter().any(|f| {
        let f = f.replace('_', " ");
        m.contains(&f) || (f.starts_with("expires") && m.contains("expir"))
    })
}

/// Checks one case against a running server.
async fn check_case(api: &TestApi, contract: &Contract, c: &Case) -> Result<u16, TestCaseError> {
    let template = if c.batch {
        "/v1/jobs/batch"
    } else {
        "/v1/jobs"
    };
    let token = if c.admin { ADMIN } else { SUBMIT };
    let res = api
        .req(Method::POST, template, Some(token))
        .header(CONTENT_TYPE, "application/json")
        .body(c.raw.clone())
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer (dropped connection?): {e}")))?;
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let bytes = res
        .bytes()
        .await
        .map_err(|e| TestCaseError::fail(format!("the answer broke off: {e}")))?;
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    prop_assert!(
        status == 202 || (400..500).contains(&status),
        "answered {} {}",
        status,
        answer
    );
    contract
        .check_response(&Method::POST, template, status, ct.as_deref(), Some(&bytes))
        .map_err(TestCaseError::fail)?;
    let sent: Option<Value> = serde_json::from_slice(&c.raw).ok();
    let schema = contract
        .request_schema(&Method::POST, template)
        .expect("a JSON request body");
    if status == 202 {
        // Accepted: the document accepts it too (when serde_json can hold
        // it: `1e400` in a field the server ignores is valid JSON it
        // cannot), and every job reads back.
        if let Some(sent) = &sent {
            let errs = contract.errors(schema, sent, Mode::Request);
            prop_assert!(
                errs.is_empty(),
                "accepted, but the schema refuses it: {:?}",
                errs
            );
        }
        let ids: Vec<String> = if c.batch {
            answer["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string())
                .collect()
        } else {
            vec![answer["id"].as_str().unwrap().to_string()]
        };
        for id in ids {
            let path = format!("/v1/jobs/{id}");
            let res = api
                .req(Method::GET, &path, Some(SUBMIT))
                .send()
                .await
                .map_err(|e| TestCaseError::fail(format!("GET {path}: {e}")))?;
            let status = res.status().as_u16();
            let ct = res
                .headers()
                .get(CONTENT_TYPE)
                .map(|v| v.to_str().unwrap_or_default().to_string());
            let bytes = res.bytes().await.unwrap_or_default();
            prop_assert_eq!(
                status,
                200,
                "GET {}: {}",
                path,
                String::from_utf8_lossy(&bytes)
            );
            contract
                .check_response(
                    &Method::GET,
                    "/v1/jobs/{id}",
                    status,
                    ct.as_deref(),
                    Some(&bytes),
                )
                .map_err(|e| TestCaseError::fail(format!("GET {path}: {e}")))?;
        }
        return Ok(202);
    }
    let msg = message(&answer);
    prop_assert!(
        !msg.is_empty(),
        "a {} without a message: {}",
        status,
        answer
    );
    if c.fields.is_empty() {
        // Not a job at all: the message says what is wrong with the body.
        return Ok(status);
    }
    let mut fields: Vec<&str> = c.fields.iter().flatten().copied().collect();
    if c.batch {
        fields.push("jobs");
    }
    if c.fields
        .iter()
        .any(|f| !f.contains(&"task") && !f.contains(&"module"))
    {
        // "a job needs a task name or a module hash"
        fields.push("task");
    }
    prop_assert!(
        names_a_field(&msg, &fields),
        "{} names none of the fields {:?}: {}",
        status,
        fields,
        msg
    );
    // A number refused for its range: the document gives that range too.
    if status == 400
        && (msg.contains("above its maximum")
            || msg.contains("must be a number of seconds")
            || msg.contains("must not be negative"))
        && let Some(sent) = &sent
    {
        prop_assert!(
            !contract.errors(schema, sent, Mode::Request).is_empty(),
            "refused for its range ({}), but the schema accepts it",
            msg
        );
    }
    Ok(status)
}

/// Random job requests, with a submit and an admin token: 202 (and the job
/// reads back) or a 4xx whose message names the field; never a 5xx, a
/// panic or a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_contract_random_job_requests_get_202_or_a_4xx_naming_the_field() {
    let api = TestApi::start(None, "1MiB", false).await;
    let hello = guest_bytes("hello");
    let hello_hash = module_hash(&hello);
    let (s, v) = api.upload(&hello).await;
    assert!(s.is_success(), "{v}");
    let (s, v) = api
        .bind("greet", json!({ "module": hello_hash, "queue": "mail" }))
        .await;
    assert_eq!(s, 200, "{v}");
    let contract = Arc::new(Contract::fetch(&api).await);
    let api = Arc::new(api);
    let handle = tokio::runtime::Handle::current();
    let (a, c) = (api.clone(), contract.clone());
    let (result, statuses) = tokio::task::spawn_blocking(move || {
        let statuses = Mutex::new(BTreeMap::<u16, u32>::new());
        let mut runner = runner_of(200);
        let result = runner.run(&case(hello_hash), |case| {
            let status = handle
                .block_on(tokio::time::timeout(
                    Duration::from_secs(10),
                    check_case(&a, &c, &case),
                ))
                .map_err(|_| TestCaseError::fail("no answer within 10 s"))??;
            *statuses.lock().unwrap().entry(status).or_default() += 1;
            Ok(())
        });
        (result, statuses.into_inner().unwrap())
    })
    .await
    .unwrap();
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("random job requests, answers by status: {statuses:?}");
    // The generator reaches both sides: accepted jobs and every refusal.
    for status in [202, 400, 403, 404] {
        assert!(
            statuses.get(&status).copied().unwrap_or(0) >= 5,
            "too few {status} answers: {statuses:?}"
        );
    }
    Arc::try_unwrap(api)
        .unwrap_or_else(|_| panic!("the API is still shared"))
        .stop()
        .await;
}
