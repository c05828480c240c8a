//! The workflow model: the request a caller sends (a tree of steps), its
//! checks (each error names the step's path in the request), and the
//! compiled tree the engine walks and the broker stores.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::producer::{Caller, EnqueueError, EnqueueRequest, Producer};
use crate::queue::Job;

/// The most member jobs one workflow may have (callbacks and error
/// callbacks included).
pub const MAX_MEMBERS: usize = 10_000;
/// The deepest nesting of steps (a chain of groups of chains... is 3).
pub const MAX_DEPTH: usize = 32;
/// How long an ended workflow's record is kept unless it says: a day.
pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;
/// The longest a workflow may ask its record to be kept: 30 days.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// Fields of a job step that are the workflow's own, not the job's.
const STEP_FIELDS: [&str; 4] = ["input", "previous", "collect", "on_error"];
/// Fields of a job request a workflow step may not set: the engine sets
/// them.
const ENGINE_FIELDS: [&str; 1] = ["idempotency_key"];

/// A job step's options: those of `POST /v1/jobs`, by the same names.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepOptions {
    pub task: Option<String>,
    pub module: Option<String>,
    pub queue: Option<String>,
    /// Seconds from the step's launch.
    pub countdown: Option<f64>,
    pub eta: Option<chrono::DateTime<chrono::Utc>>,
    /// Seconds from the step's launch.
    pub expires_in: Option<f64>,
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, deserialize_with = "crate::json_object::optional_object")]
    pub retry: Option<crate::queue::RetryPolicy>,
    #[serde(default, deserialize_with = "crate::json_object::optional_object")]
    pub limits: Option<crate::queue::JobLimits>,
    pub rate_limit: Option<String>,
    pub result_ttl: Option<u64>,
    pub ignore_result: Option<bool>,
    pub priority: Option<u64>,
}

impl StepOptions {
    fn into_request(self, input: String) -> EnqueueRequest {
        EnqueueRequest {
            task: self.task,
            module: self.module,
            input,
            queue: self.queue,
            countdown_secs: self.countdown,
            eta: self.eta,
            expires: self.expires,
            expires_in_secs: self.expires_in,
            retry: self.retry,
            limits: self.limits,
            rate_limit: self.rate_limit,
            result_ttl_secs: self.result_ttl,
            ignore_result: self.ignore_result,
            priority: self.priority,
            ..EnqueueRequest::default()
        }
    }
}

/// A bad workflow: what is wrong and at which step. Nothing was enqueued.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("{path}: {source}")]
    Step {
        path: String,
        #[source]
        source: Box<EnqueueError>,
    },
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
    #[error(transparent)]
    Broker(#[from] crate::queue::BrokerError),
}

impl WorkflowError {
    pub(super) fn at(path: &str, message: impl Into<String>) -> Self {
        WorkflowError::Invalid {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

/// A job step as compiled: the job it launches, minus what only the
/// launch knows (id, input from the step before, times).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobStep {
    /// The prepared job (task, queue, retry policy, limits...).
    pub template: Job,
    /// Its own input (JSON text), when it sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// With its own input (an object): the key under which the output of
    /// the step before is added to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// In a chain: the step before hands it the list of the outputs of
    /// every step before it in the chain, not only its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub collect: bool,
    /// A countdown, from the launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countdown_ms: Option<u64>,
    /// The queue the step names, if it names one (the template's queue
    /// may be its task's default): what a jobs grant checks.
    #[serde(skip)]
    pub asked_queue: Option<String>,
    /// An expiry, from the launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// The step names its module: it runs that one, not the module its
    /// task is bound to when it launches.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Job(Box<JobStep>),
    Chain(Vec<Node>),
    Group(Vec<Node>),
    Chord {
        members: Vec<Node>,
        callback: Box<Node>,
    },
}

/// A step of the compiled tree.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub path: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<Box<Node>>,
}

/// What the broker stores as `spec`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub root: Node,
    /// When the workflow was started (ms since 1970): the time of its
    /// members' ids.
    #[serde(default)]
    pub created_ms: i64,
    /// How long the record is kept once the workflow ended.
    pub ttl_ms: u64,
    /// Its steps that name no module run their task's module as bound
    /// when they launch, and `JobStep::pinned` says which name one. A
    /// tree stored before then has neither: its steps run the modules it
    /// was made with.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub modules_at_launch: bool,
}

/// `POST /v1/workflows`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRequest {
    /// The root step: `{"task": ...}`, `{"chain": [...]}`, `{"group":
    /// [...]}` or `{"chord": [...], "callback": {...}}`; any of them may add
    /// `"on_error": {"task": ...}`.
    pub workflow: Value,
    /// Seconds the workflow's record is kept after it ended (default a
    /// day, at most 30 days).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// A retried request with the same key returns the first workflow
    /// instead of starting another.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A step as parsed, before its jobs are prepared.
struct Raw {
    path: String,
    kind: RawKind,
    on_error: Option<Box<Raw>>,
}

enum RawKind {
    Job(Box<RawJob>),
    Chain(Vec<Raw>),
    Group(Vec<Raw>),
    Chord {
        members: Vec<Raw>,
        callback: Box<Raw>,
    },
}

struct RawJob {
    req: EnqueueRequest,
    input: Option<String>,
    previous: Option<String>,
    collect: bool,
}

struct Parser {
    jobs: usize,
}

impl Parser {
    fn step(&mut self, v: &Value, path: &str, depth: usize) -> Result<Raw, WorkflowError> {
        if depth > MAX_DEPTH {
            return Err(WorkflowError::at(
                path,
                format!("steps nest deeper than the maximum of {MAX_DEPTH}"),
            ));
        }
        let Some(obj) = v.as_object() else {
            return Err(WorkflowError::at(
                path,
                "a step is an object: {\"task\": ...}, {\"chain\": [...]}, {\"group\": [...]} or {\"chord\": [...], \"callback\": {...}}",
            ));
        };
        let on_error = match obj.get("on_error") {
            Some(e) => {
                let p = format!("{path}.on_error");
                let raw = self.step(e, &p, depth + 1)?;
                no_collect(&raw)?;
                if !matches!(raw.kind, RawKind::Job(_)) {
                    return Err(WorkflowError::at(&p, "an error callback is one job step"));
                }
                // Its own failure ends nothing more: such a step would
                // never run.
                if raw.on_error.is_some() {
                    return Err(WorkflowError::at(
                        &format!("{p}.on_error"),
                        "an error callback has no error callback of its own",
                    ));
                }
                Some(Box::new(raw))
            }
            None => None,
        };
        let kinds: Vec<&str> = ["task", "module", "chain", "group", "chord"]
            .into_iter()
            .filter(|k| obj.contains_key(*k))
            .collect();
        let kind = match kinds.as_slice() {
            ["chain"] | ["group"] | ["chord"] => {
                let k = kinds[0];
                let allowed: &[&str] = if k == "chord" {
                    &["chord", "callback", "on_error"]
                } else {
                    &[k, "on_error"]
                };
                if let Some(extra) = obj.keys().find(|f| !allowed.contains(&f.as_str())) {
                    return Err(WorkflowError::at(
                        path,
                        format!("unknown field {extra:?} in a {k} step"),
                    ));
                }
                let list_path = format!("{path}.{k}");
                let Some(items) = obj[k].as_array() else {
                    return Err(WorkflowError::at(&list_path, "must be a list of steps"));
                };
                if items.is_empty() {
                    return Err(WorkflowError::at(&list_path, format!("an empty {k}")));
                }
                let mut steps = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    steps.push(self.step(item, &format!("{list_path}[{i}]"), depth + 1)?);
                }
                for (i, st) in steps.iter().enumerate() {
                    if let RawKind::Job(j) = &st.kind
                        && j.collect
                        && (k != "chain" || i == 0)
                    {
                        return Err(WorkflowError::at(
                            &format!("{}.collect", st.path),
                            "only a step of a chain after its first collects the outputs before it",
                        ));
                    }
                }
                match k {
                    "chain" => RawKind::Chain(steps),
                    "group" => RawKind::Group(steps),
                    _ => {
                        let cb_path = format!("{path}.callback");
                        let Some(cb) = obj.get("callback") else {
                            return Err(WorkflowError::at(
                                &cb_path,
                                "a chord needs a callback step",
                            ));
                        };
                        let callback = Box::new(self.step(cb, &cb_path, depth + 1)?);
                        no_collect(&callback)?;
                        RawKind::Chord {
                            members: steps,
                            callback,
                        }
                    }
                }
            }
            ["task"] | ["module"] | ["task", "module"] => {
                RawKind::Job(Box::new(self.job(obj, path)?))
            }
            [] => {
                return Err(WorkflowError::at(
                    path,
                    "a step needs one of \"task\", \"chain\", \"group\" or \"chord\"",
                ));
            }
            many => {
                return Err(WorkflowError::at(
                    path,
                    format!(
                        "a step is one of task, chain, group or chord, not {}",
                        many.join(" and ")
                    ),
                ));
            }
        };
        Ok(Raw {
            path: path.to_string(),
            kind,
            on_error,
        })
    }

    fn job(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        path: &str,
    ) -> Result<RawJob, WorkflowError> {
        self.jobs += 1;
        if self.jobs > MAX_MEMBERS {
            return Err(WorkflowError::at(
                path,
                format!("more than the maximum of {MAX_MEMBERS} jobs in one workflow"),
            ));
        }
        if let Some(f) = ENGINE_FIELDS.iter().find(|f| obj.contains_key(**f)) {
            return Err(WorkflowError::at(
                path,
                format!("{f:?} is set by the workflow for its steps"),
            ));
        }
        let input = obj.get("input").map(|v| v.to_string());
        let previous = match obj.get("previous") {
            None => None,
            Some(Value::String(k)) if !k.is_empty() => Some(k.clone()),
            Some(_) => {
                return Err(WorkflowError::at(
                    &format!("{path}.previous"),
                    "must be a key name: the step's input gets the previous output under it",
                ));
            }
        };
        if previous.is_some() && obj.get("input").is_some_and(|i| !i.is_object()) {
            return Err(WorkflowError::at(
                &format!("{path}.input"),
                "with \"previous\", the input must be an object (the previous output is added to it)",
            ));
        }
        let rest: serde_json::Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| !STEP_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let collect = match obj.get("collect") {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(_) => {
                return Err(WorkflowError::at(
                    &format!("{path}.collect"),
                    "must be true or false",
                ));
            }
        };
        let options: StepOptions = serde_json::from_value(Value::Object(rest))
            .map_err(|e| WorkflowError::at(path, e.to_string()))?;
        let req = options.into_request(input.clone().unwrap_or_else(|| "null".into()));
        Ok(RawJob {
            req,
            input,
            previous,
            collect,
        })
    }
}

/// Parses and checks `req` and prepares every job of it through
/// `producer` as `caller` would enqueue it (task names resolved, options
/// checked); one bad step refuses the whole tree.
pub async fn compile(
    producer: &Producer,
    caller: Caller,
    req: &WorkflowRequest,
    parent: Option<(crate::queue::JobId, u32)>,
) -> Result<Spec, WorkflowError> {
    let ttl_secs = req.ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
    if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
        return Err(WorkflowError::at(
            "ttl_secs",
            format!("must be 1 to {MAX_TTL_SECS} seconds (got {ttl_secs})"),
        ));
    }
    if let Some(k) = &req.idempotency_key {
        if k.is_empty() || k.len() > 200 {
            return Err(WorkflowError::at(
                "idempotency_key",
                "must be 1 to 200 bytes",
            ));
        }
        // A task's workflow key is checked (or derived) by `ChildJobs`.
        if !matches!(caller, Caller::Runner | Caller::Task) {
            crate::producer::check_caller_key(k)
                .map_err(|e| WorkflowError::at("idempotency_key", e.to_string()))?;
        }
    }
    let raw = Parser { jobs: 0 }.step(&req.workflow, "workflow", 1)?;
    no_collect(&raw)?;
    let mut reqs = Vec::new();
    let mut paths = Vec::new();
    collect_jobs(&raw, &mut reqs, &mut paths);
    if let Some((id, depth)) = parent {
        for r in &mut reqs {
            r.parent = Some(id);
            r.depth = depth + 1;
        }
    }
    let jobs = match producer.prepare_batch_as(caller, reqs).await {
        Ok(jobs) => jobs,
        Err(EnqueueError::InBatch { index, source }) => {
            return Err(WorkflowError::Step {
                path: paths[index].clone(),
                source,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let mut by_path: HashMap<String, Job> = paths.into_iter().zip(jobs).collect();
    let root = build(raw, &mut by_path);
    Ok(Spec {
        root,
        created_ms: chrono::Utc::now().timestamp_millis(),
        ttl_ms: ttl_secs * 1000,
        modules_at_launch: true,
    })
}

/// Refuses `collect` on a step that is not in a chain's list (the root,
/// a callback, an error callback).
fn no_collect(raw: &Raw) -> Result<(), WorkflowError> {
    if let RawKind::Job(j) = &raw.kind
        && j.collect
    {
        return Err(WorkflowError::at(
            &format!("{}.collect", raw.path),
            "only a step of a chain after its first collects the outputs before it",
        ));
    }
    Ok(())
}

fn collect_jobs(raw: &Raw, reqs: &mut Vec<EnqueueRequest>, paths: &mut Vec<String>) {
    match &raw.kind {
        RawKind::Job(j) => {
            reqs.push(j.req.clone());
            paths.push(raw.path.clone());
        }
        RawKind::Chain(s) | RawKind::Group(s) => {
            for c in s {
                collect_jobs(c, reqs, paths);
            }
        }
        RawKind::Chord { members, callback } => {
            for c in members {
                collect_jobs(c, reqs, paths);
            }
            collect_jobs(callback, reqs, paths);
        }
    }
    if let Some(e) = &raw.on_error {
        collect_jobs(e, reqs, paths);
    }
}

fn build(raw: Raw, jobs: &mut HashMap<String, Job>) -> Node {
    let kind = match raw.kind {
        RawKind::Job(j) => {
            let mut template = jobs.remove(&raw.path).expect("every job step was prepared");
            let min_ttl = crate::queue::workflow::MEMBER_MIN_RESULT_TTL.as_millis() as u64;
            template.result_ttl_ms = template.result_ttl_ms.max(min_ttl);
            let ms = |s: Option<f64>| s.filter(|s| *s > 0.0).map(|s| (s * 1000.0) as u64);
            Kind::Job(Box::new(JobStep {
                asked_queue: j.req.queue.clone(),
                countdown_ms: ms(j.req.countdown_secs),
                expires_in_ms: ms(j.req.expires_in_secs),
                pinned: j.req.module.is_some(),
                template,
                input: j.input,
                previous: j.previous,
                collect: j.collect,
            }))
        }
        RawKind::Chain(s) => Kind::Chain(s.into_iter().map(|c| build(c, jobs)).collect()),
        RawKind::Group(s) => Kind::Group(s.into_iter().map(|c| build(c, jobs)).collect()),
        RawKind::Chord { members, callback } => Kind::Chord {
            members: members.into_iter().map(|c| build(c, jobs)).collect(),
            callback: Box::new(build(*callback, jobs)),
        },
    };
    Node {
        path: raw.path,
        kind,
        on_error: raw.on_error.map(|e| Box::new(build(*e, jobs))),
    }
}

/// Every job step under `root` (itself included), error callbacks too,
/// each with its job.
pub fn job_steps(root: &Node) -> Vec<(&Node, &JobStep)> {
    fn walk<'a>(n: &'a Node, out: &mut Vec<(&'a Node, &'a JobStep)>) {
        match &n.kind {
            Kind::Job(j) => out.push((n, j)),
            Kind::Chain(s) | Kind::Group(s) => s.iter().for_each(|c| walk(c, out)),
            Kind::Chord { members, callback } => {
                members.iter().for_each(|c| walk(c, out));
                walk(callback, out);
            }
        }
        if let Some(e) = &n.on_error {
            walk(e, out);
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

/// The compiled tree, indexed for the engine: every step by its path,
/// with the way to it from the root and its parent's path.
pub struct Tree {
    pub spec: Spec,
    index: HashMap<String, (Vec<Sel>, Option<String>)>,
}

/// One step down the tree.
#[derive(Clone, Copy)]
enum Sel {
    Child(usize),
    Callback,
    OnError,
}

impl Tree {
    pub fn new(spec: Spec) -> Tree {
        fn walk(
            n: &Node,
            route: &mut Vec<Sel>,
            parent: Option<&str>,
            index: &mut HashMap<String, (Vec<Sel>, Option<String>)>,
        ) {
            index.insert(n.path.clone(), (route.clone(), parent.map(String::from)));
            let mut down = |c: &Node, sel: Sel, parent: Option<&str>, index: &mut _| {
                route.push(sel);
                walk(c, route, parent, index);
                route.pop();
            };
            match &n.kind {
                Kind::Job(_) => {}
                Kind::Chain(s) | Kind::Group(s) => {
                    for (i, c) in s.iter().enumerate() {
                        down(c, Sel::Child(i), Some(&n.path), index);
                    }
                }
                Kind::Chord { members, callback } => {
                    for (i, c) in members.iter().enumerate() {
                        down(c, Sel::Child(i), Some(&n.path), index);
                    }
                    down(callback, Sel::Callback, Some(&n.path), index);
                }
            }
            if let Some(e) = &n.on_error {
                // An error callback has no parent: it ends nothing.
                down(e, Sel::OnError, None, index);
            }
        }
        let mut index = HashMap::new();
        walk(&spec.root, &mut Vec::new(), None, &mut index);
        Tree { spec, index }
    }

    pub fn node(&self, path: &str) -> Option<&Node> {
        let (route, _) = self.index.get(path)?;
        let mut at = &self.spec.root;
        for sel in route {
            at = match (sel, &at.kind) {
                (Sel::OnError, _) => at.on_error.as_deref()?,
                (Sel::Callback, Kind::Chord { callback, .. }) => callback,
                (Sel::Child(i), Kind::Chain(s) | Kind::Group(s)) => s.get(*i)?,
                (Sel::Child(i), Kind::Chord { members, .. }) => members.get(*i)?,
                _ => return None,
            };
        }
        Some(at)
    }

    pub fn parent(&self, path: &str) -> Option<&Node> {
        let (_, p) = self.index.get(path)?;
        self.node(p.as_deref()?)
    }

    /// Whether `path` is an error callback.
    pub fn is_error_callback(&self, path: &str) -> bool {
        path.ends_with(".on_error")
    }

    /// The member jobs of the workflow's success path (error callbacks
    /// left out): what `done / total` counts.
    pub fn total(&self) -> u64 {
        fn count(n: &Node) -> u64 {
            match &n.kind {
                Kind::Job(_) => 1,
                Kind::Chain(s) | Kind::Group(s) => s.iter().map(count).sum(),
                Kind::Chord { members, callback } => {
                    members.iter().map(count).sum::<u64>() + count(callback)
                }
            }
        }
        count(&self.spec.root)
    }

    /// The error callback that answers a failure at `path`: the nearest
    /// one on the way up to the root.
    pub fn on_error_for(&self, path: &str) -> Option<&Node> {
        let mut at = self.node(path)?;
        loop {
            if let Some(e) = &at.on_error {
                return Some(e);
            }
            at = self.parent(&at.path)?;
        }
    }

    /// Whether starting `node` needs the output of the step before it:
    /// one of the jobs it starts does ([`JobStep::takes_previous`]).
    pub fn takes_previous(&self, node: &Node) -> bool {
        let mut entry = Vec::new();
        self.entry_jobs(node, &mut entry);
        entry
            .iter()
            .any(|n| matches!(&n.kind, Kind::Job(j) if j.takes_previous()))
    }

    /// The job steps a launch of `node` starts, each with the input
    /// handed to it (`input` for all of them).
    pub fn entry_jobs<'a>(&'a self, node: &'a Node, out: &mut Vec<&'a Node>) {
        match &node.kind {
            Kind::Job(_) => out.push(node),
            Kind::Chain(s) => self.entry_jobs(&s[0], out),
            Kind::Group(s) => {
                for c in s {
                    self.entry_jobs(c, out);
                }
            }
            Kind::Chord { members, .. } => {
                for c in members {
                    self.entry_jobs(c, out);
                }
            }
        }
    }

    /// The job steps whose results make `node`'s output, in order.
    pub fn output_jobs<'a>(&'a self, node: &'a Node, out: &mut Vec<&'a Node>) {
        match &node.kind {
            Kind::Job(_) => out.push(node),
            Kind::Chain(s) => self.output_jobs(s.last().expect("chains are not empty"), out),
            Kind::Group(s) => {
                for c in s {
                    self.output_jobs(c, out);
                }
            }
            Kind::Chord { callback, .. } => self.output_jobs(callback, out),
        }
    }
}

/// `node`'s output from its jobs' results (`results` in the order of
/// [`Tree::output_jobs`]): a job's result, a chain's last step's, a
/// group's list of its steps' outputs, a chord's callback's.
pub fn assemble(node: &Node, results: &mut impl Iterator<Item = Value>) -> Value {
    match &node.kind {
        Kind::Job(_) => results.next().unwrap_or(Value::Null),
        Kind::Chain(s) => assemble(s.last().expect("chains are not empty"), results),
        Kind::Group(s) => Value::Array(s.iter().map(|c| assemble(c, results)).collect()),
        Kind::Chord { callback, .. } => assemble(callback, results),
    }
}

impl JobStep {
    /// Whether its input uses the output of the step before it (see
    /// [`input_for`]): it has no input of its own, or adds that output to
    /// it (`previous`), or collects the chain's outputs.
    pub fn takes_previous(&self) -> bool {
        self.input.is_none() || self.previous.is_some() || self.collect
    }
}

/// The input of job step `step` launched after a step whose output was
/// `previous` (JSON text; `None` for a first step): its own input if it
/// has one (with `previous` added under its key when it asks), else the
/// previous output, else `null`.
pub fn input_for(step: &JobStep, previous: Option<&str>) -> String {
    match (&step.input, &step.previous) {
        (Some(own), Some(key)) => {
            let mut obj: serde_json::Map<String, Value> =
                serde_json::from_str(own).unwrap_or_default();
            let prev = previous
                .and_then(|p| serde_json::from_str(p).ok())
                .unwrap_or(Value::Null);
            obj.insert(key.clone(), prev);
            Value::Object(obj).to_string()
        }
        (Some(own), None) => own.clone(),
        (None, Some(key)) => {
            let prev = previous
                .and_then(|p| serde_json::from_str(p).ok())
                .unwrap_or(Value::Null);
            serde_json::json!({ key.as_str(): prev }).to_string()
        }
        (None, None) => previous.unwrap_or("null").to_string(),
    }
}
