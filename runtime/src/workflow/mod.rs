//! Workflows: chain, group and chord, built on the queue (see
//! `docs/workflows.md`).
//!
//! A workflow is a tree of steps submitted at once and checked whole
//! ([`model`]). Its record lives apart from its members' queues
//! (`queue::workflow`); its member jobs carry a [`WorkflowRef`]. The engine
//! here advances it when members end:
//!
//! 1. A member's final record and an outbox entry are written together,
//!    by the script (or under the lock) that ends it.
//! 2. Whoever ended it (the worker that settled it, the API that revoked
//!    it) applies the end at once with [`Workflows::apply`]: a
//!    set-if-absent mark of the member's outcome and a count of its group
//!    in one atomic call on the workflow's record. Only the call whose
//!    mark completes a group sees it complete the first time; a repeat
//!    sees the same count and launches the same next step again.
//! 3. A step's job has an id derived from the workflow and the step's
//!    path, and the broker stores a step's job once by its id; launched
//!    steps are recorded (`l:<path>`) and not launched again. So a launch
//!    repeated (by a redelivered member, a stale outbox entry applied
//!    again, two members ending at once) enqueues once.
//! 4. Then the outbox entry is removed. If the applier died before, the
//!    entry goes stale and the queue's next due check hands it to a worker
//!    to apply again ([`queue::workflow::OUTBOX_STALE`]).

pub mod model;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use model::{
    DEFAULT_TTL_SECS, Kind, MAX_DEPTH, MAX_MEMBERS, MAX_TTL_SECS, Node, Spec, Tree, WorkflowError,
    WorkflowRequest,
};

use crate::producer::{Caller, Producer};
use crate::queue::job::WorkflowRef;
use crate::queue::{
    Broker, BrokerError, BrokerResult, Job, JobId, JobState, MarkKind, WfMark, WfState, WfStored,
};

use crate::queue::workflow::OUTBOX_RETRY;
pub use crate::queue::workflow::{EVENT_QUEUE, event};

/// Trees read from records, by workflow id (a tree never changes).
const CACHE_MAX: usize = 256;

/// Starts, advances, shows and revokes workflows. Cheap to clone.
#[derive(Clone)]
pub struct Workflows {
    producer: Producer,
    trees: Arc<Mutex<HashMap<JobId, Arc<Tree>>>>,
    /// Ends handed to [`Workflows::apply_soon`] not applied yet.
    soon: Arc<Mutex<Soon>>,
}

/// Ends waiting for the background applier, with their queues.
#[derive(Default)]
struct Soon {
    /// An applier task is under way: it takes what is added.
    running: bool,
    ended: Vec<(String, Job)>,
    /// Stale outbox entries (found by due checks) to apply from their records.
    stale: Vec<(String, Vec<JobId>)>,
}

/// Clears [`Soon::running`] when the applier task panics, so that the
/// next end starts a new one (it clears it itself when it runs out of work).
struct SoonRunning(Arc<Mutex<Soon>>);

impl Drop for SoonRunning {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(mut s) = self.0.lock()
        {
            s.running = false;
        }
    }
}

/// A workflow that failed to advance from the ends of `members`.
struct Unapplied {
    workflow: JobId,
    members: Vec<JobId>,
    error: BrokerError,
}

/// The error of the first workflow of `failed`, if any failed.
fn first_error(failed: Vec<Unapplied>) -> BrokerResult<()> {
    failed.into_iter().next().map_or(Ok(()), |f| Err(f.error))
}

/// A workflow as `GET /v1/workflows/{id}` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowStatus {
    pub id: JobId,
    pub state: WfState,
    /// Member jobs ended (error callbacks not counted).
    pub done: u64,
    pub total: u64,
    /// The member whose failure failed the workflow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    pub created_at: chrono::DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<chrono::DateTime<Utc>>,
    /// The root step's output, once the workflow succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub result: Option<Value>,
    /// The tree, each step with its state.
    pub tree: StepStatus,
}

/// A step of a workflow and how far it got.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct StepStatus {
    pub path: String,
    /// `job`, `chain`, `group` or `chord`.
    pub kind: &'static str,
    /// `waiting` (not launched), `launched` (its job is queued or running),
    /// `succeeded`, `failed` (or expired), `revoked`; for a chain, group or
    /// chord: `waiting`, `running`, `succeeded`, `failed`, `revoked`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// A failed job's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Value)]
    pub error: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub steps: Vec<StepStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(no_recursion)]
    pub on_error: Option<Box<StepStatus>>,
}

/// What [`Workflows::submit`] did.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Submitted {
    pub id: JobId,
    /// False when an earlier request with the same idempotency key had
    /// started it.
    pub created: bool,
    pub total: u64,
}

impl Workflows {
    pub fn new(producer: Producer) -> Self {
        Workflows {
            producer,
            trees: Arc::new(Mutex::new(HashMap::new())),
            soon: Arc::default(),
        }
    }

    fn broker(&self) -> &Arc<dyn Broker> {
        self.producer.broker()
    }

    /// Checks `req` whole, stores the workflow and launches its first
    /// steps. Nothing is enqueued when a step is wrong.
    pub async fn submit(
        &self,
        caller: Caller,
        req: &WorkflowRequest,
    ) -> Result<Submitted, WorkflowError> {
        let spec = model::compile(&self.producer, caller, req, None).await?;
        let text = stored_form(&spec)?;
        self.start(spec, &text, req.idempotency_key.as_deref())
            .await
    }

    /// Stores the compiled workflow `spec` (`text`, its [`stored_form`])
    /// and launches its first steps.
    async fn start(
        &self,
        spec: Spec,
        text: &str,
        key: Option<&str>,
    ) -> Result<Submitted, WorkflowError> {
        let id = match key {
            Some(k) => keyed_id(k),
            None => JobId::new(),
        };
        let tree = Tree::new(spec);
        let total = tree.total();
        let created = self
            .broker()
            .wf_create(id, text, total, tree.spec.created_ms)
            .await?;
        let tree = if created {
            let tree = Arc::new(tree);
            self.remember(id, tree.clone());
            tree
        } else {
            // The key's workflow exists: its own tree, not this request's
            // (read again: a cached one may be an earlier workflow's).
            self.forget(id);
            self.tree(id)
                .await?
                .ok_or_else(|| BrokerError::Protocol(format!("workflow {id} vanished")))?
        };
        self.index_members(id, &tree).await?;
        // Launched even when it existed: a request retried after a crash
        // between the two finishes the launch (launched steps are skipped).
        self.launch(id, &tree, &tree.spec.root, None, false).await?;
        Ok(Submitted {
            id,
            created,
            total: tree.total(),
        })
    }

    /// Makes every step's job of workflow `id` findable by id before any
    /// is launched (again when a retried request comes: a crash may have
    /// come between the record and this). An entry lasts as long as the
    /// workflow may still launch its job, plus the job's wait and result.
    async fn index_members(&self, id: JobId, tree: &Tree) -> BrokerResult<()> {
        let mut longest = 0u64;
        let members: Vec<(JobId, String)> = model::job_steps(&tree.spec.root)
            .into_iter()
            .map(|(n, step)| {
                let ms = [
                    step.countdown_ms.unwrap_or(0),
                    step.expires_in_ms.unwrap_or(0),
                    step.template.result_ttl_ms,
                ]
                .iter()
                .fold(0u64, |a, b| a.saturating_add(*b));
                longest = longest.max(ms);
                (
                    member_id(id, tree.spec.created_ms, &n.path),
                    step.template.queue.clone(),
                )
            })
            .collect();
        let ttl =
            crate::queue::workflow::RUNNING_TTL.saturating_add(Duration::from_millis(longest));
        self.broker().wf_index(&members, ttl).await
    }

    fn remember(&self, id: JobId, tree: Arc<Tree>) {
        if let Ok(mut trees) = self.trees.lock() {
            if trees.len() >= CACHE_MAX {
                trees.clear();
            }
            trees.insert(id, tree);
        }
    }

    fn forget(&self, id: JobId) {
        if let Ok(mut trees) = self.trees.lock() {
            trees.remove(&id);
        }
    }

    /// The tree of workflow `id` (cached); `None` when the record is gone.
    /// A cached tree can be an earlier workflow's: a key's workflow made
    /// again after its record expired has the same id (`keyed_id`) and
    /// maybe another tree. So what must see the workflow as it is now
    /// either checks the tree against its members' ids
    /// ([`is_member`]) or reads it with the record ([`Self::read`]).
    async fn tree(&self, id: JobId) -> BrokerResult<Option<Arc<Tree>>> {
        if let Some(t) = self.trees.lock().ok().and_then(|t| t.get(&id).cloned()) {
            return Ok(Some(t));
        }
        let Some(text) = self.broker().wf_spec(id).await? else {
            return Ok(None);
        };
        let tree = Arc::new(parse_tree(id, &text)?);
        self.remember(id, tree.clone());
        Ok(Some(tree))
    }

    /// Workflow `id`'s record and its tree, both read now; `None` when
    /// the record is gone.
    async fn read(&self, id: JobId) -> BrokerResult<Option<(WfStored, Tree)>> {
        let Some(stored) = self.broker().wf_read(id).await? else {
            return Ok(None);
        };
        let tree = parse_tree(id, &stored.spec)?;
        Ok(Some((stored, tree)))
    }

    /// Applies the ends of workflow members `ended` (final records of
    /// jobs of their queues; other jobs are skipped), then removes them from
    /// their queues' outboxes. A workflow that fails to advance does not
    /// hold back the others: its ends stay in the outbox (to be applied
    /// again once stale) and the first such error is returned.
    pub async fn apply_ended(&self, ended: &[(String, Job)]) -> BrokerResult<()> {
        let failed = self.apply_each(ended.iter().map(|(_, j)| j)).await;
        let mut by_queue: Vec<(&str, Vec<JobId>)> = Vec::new();
        for (q, j) in ended {
            if failed.iter().any(|f| f.members.contains(&j.id)) {
                continue;
            }
            match by_queue.iter_mut().find(|(bq, _)| bq == q) {
                Some((_, ids)) => ids.push(j.id),
                None => by_queue.push((q, vec![j.id])),
            }
        }
        for (q, ids) in by_queue {
            self.broker().outbox_done(q, &ids).await?;
        }
        first_error(failed)
    }

    /// Applies the ends `ended` of `queue`'s members and its stale outbox
    /// entries `stale` in the background, one applier at a time: ends
    /// handed over while an apply is under way wait for it and are applied
    /// together next (one mark per workflow for all of them, one outbox
    /// removal per queue). A failure leaves them in the outbox, whose due
    /// check hands them out again.
    pub fn apply_soon(&self, queue: &str, ended: Vec<Job>, stale: Vec<JobId>) {
        if ended.is_empty() && stale.is_empty() {
            return;
        }
        {
            let Ok(mut soon) = self.soon.lock() else {
                return;
            };
            soon.ended
                .extend(ended.into_iter().map(|j| (queue.to_string(), j)));
            if !stale.is_empty() {
                soon.stale.push((queue.to_string(), stale));
            }
            if soon.running {
                return;
            }
            soon.running = true;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _running = SoonRunning(this.soon.clone());
            loop {
                let (ended, stale) = {
                    let Ok(mut soon) = this.soon.lock() else {
                        return;
                    };
                    if soon.ended.is_empty() && soon.stale.is_empty() {
                        // Under the lock that found nothing: an end added
                        // after this starts a new applier.
                        soon.running = false;
                        return;
                    }
                    (
                        std::mem::take(&mut soon.ended),
                        std::mem::take(&mut soon.stale),
                    )
                };
                if !ended.is_empty()
                    && let Err(e) = this.apply_ended(&ended).await
                {
                    tracing::warn!(error = %e, "advancing workflows; the outbox keeps their ends");
                }
                for (queue, ids) in stale {
                    if let Err(e) = this.drain(&queue, &ids).await {
                        tracing::warn!(queue = %queue, error = %e, "applying stale workflow ends");
                    }
                }
            }
        });
    }

    /// Applies the outbox entries `ids` of `queue` (ends nobody applied),
    /// read from their records, and removes them. An entry that fails
    /// (its record or its workflow's cannot be read, a launch fails) is
    /// logged and put behind the others, handed out again after
    /// [`OUTBOX_RETRY`]: one that always fails cannot hold back the rest
    /// of the queue's outbox.
    pub async fn drain(&self, queue: &str, ids: &[JobId]) -> BrokerResult<()> {
        let mut ended = Vec::with_capacity(ids.len());
        let mut done = Vec::with_capacity(ids.len());
        let mut later = Vec::new();
        for id in ids {
            match self.broker().get(*id).await {
                Ok(Some(job)) if job.state.is_final() => {
                    done.push(job.id);
                    ended.push(job);
                }
                // Waiting or running again (a dead letter replayed before
                // its end was applied): its next end writes the entry anew.
                // Put behind, not left among the oldest entries that every
                // due check hands out. (Not removed: its next end may have
                // written the entry since it was read.)
                Ok(Some(_)) => later.push(*id),
                // Its record is gone (kept at least `MEMBER_MIN_RESULT_TTL`,
                // so nobody applied it for that long): nothing left to apply.
                Ok(None) => {
                    tracing::warn!(queue, job = %id, "a workflow member's end was never applied and its record is gone: its workflow does not advance from it");
                    done.push(*id);
                }
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => {
                    tracing::warn!(queue, job = %id, error = %e, retry_in_s = OUTBOX_RETRY.as_secs(), "reading a workflow member's end failed");
                    later.push(*id);
                }
            }
        }
        for f in self.apply_each(&ended).await {
            if f.error.is_unavailable() {
                return Err(f.error);
            }
            tracing::warn!(queue, workflow = %f.workflow, error = %f.error, retry_in_s = OUTBOX_RETRY.as_secs(), "advancing a workflow from ends nobody applied failed");
            done.retain(|id| !f.members.contains(id));
            later.extend(f.members);
        }
        self.broker().outbox_done(queue, &done).await?;
        if !later.is_empty() {
            self.broker()
                .outbox_later(queue, &later, OUTBOX_RETRY)
                .await?;
        }
        Ok(())
    }

    /// Applies all of `queue`'s outbox now (after a revoke or a purge that
    /// ended members from outside a worker).
    pub async fn drain_queue(&self, queue: &str) -> BrokerResult<()> {
        loop {
            let ids = self
                .broker()
                .outbox(queue, Duration::ZERO, crate::queue::workflow::OUTBOX_BATCH)
                .await?;
            if ids.is_empty() {
                return Ok(());
            }
            let n = ids.len();
            self.drain(queue, &ids).await?;
            if n < crate::queue::workflow::OUTBOX_BATCH {
                return Ok(());
            }
        }
    }

    /// Advances the workflows of `ended` (final records of their members).
    /// Each workflow on its own: one that fails does not stop the others;
    /// the first failure is returned.
    pub async fn apply<'a>(&self, ended: impl IntoIterator<Item = &'a Job>) -> BrokerResult<()> {
        first_error(self.apply_each(ended).await)
    }

    /// Advances the workflows of `ended`, each on its own, and says which
    /// failed to.
    async fn apply_each<'a>(&self, ended: impl IntoIterator<Item = &'a Job>) -> Vec<Unapplied> {
        let mut by_wf: Vec<(JobId, Vec<&Job>)> = Vec::new();
        for job in ended {
            let Some(w) = &job.workflow else { continue };
            if !job.state.is_final() {
                continue;
            }
            match by_wf.iter_mut().find(|(id, _)| *id == w.id) {
                Some((_, v)) => v.push(job),
                None => by_wf.push((w.id, vec![job])),
            }
        }
        let mut failed = Vec::new();
        for (id, jobs) in by_wf {
            if let Err(error) = self.apply_one(id, &jobs).await {
                failed.push(Unapplied {
                    workflow: id,
                    members: jobs.iter().map(|j| j.id).collect(),
                    error,
                });
            }
        }
        failed
    }

    async fn apply_one(&self, id: JobId, jobs: &[&Job]) -> BrokerResult<()> {
        let Some(mut tree) = self.tree(id).await? else {
            return Ok(());
        };
        if !jobs.iter().all(|j| is_member(&tree, id, j)) {
            // Cached from an earlier workflow with this id, or the ends
            // are that one's: the stored tree says which.
            self.forget(id);
            let Some(now) = self.tree(id).await? else {
                return Ok(());
            };
            tree = now;
        }
        let ttl = Duration::from_millis(tree.spec.ttl_ms);
        let mut marks = Vec::with_capacity(jobs.len());
        let mut nodes = Vec::with_capacity(jobs.len());
        for job in jobs {
            let path = &job.workflow.as_ref().expect("filtered").path;
            if !is_member(&tree, id, job) {
                // Its end must not advance a workflow it is not part of.
                tracing::warn!(workflow = %id, job = %job.id, path, "the end of a job of an earlier workflow with this id (its idempotency key's); skipped");
                continue;
            }
            let Some(node) = tree.node(path) else {
                tracing::warn!(workflow = %id, job = %job.id, path, "a member of a step the workflow does not have");
                continue;
            };
            // A success counts in its group (a chord's members are one).
            let group = tree
                .parent(path)
                .filter(|p| match &p.kind {
                    Kind::Group(_) => true,
                    Kind::Chord { callback, .. } => callback.path != *path,
                    Kind::Chain(_) | Kind::Job(_) => false,
                })
                .map(|p| format!("n:{}", p.path));
            let (kind, counter) = if tree.is_error_callback(path) {
                // An error callback's end counts for nothing.
                (MarkKind::Complete, None)
            } else if job.state == JobState::Success {
                (MarkKind::Success, group)
            } else {
                (MarkKind::Failure, None)
            };
            marks.push(WfMark {
                kind,
                field: format!("r:{path}"),
                value: outcome(job),
                counter,
            });
            nodes.push(node);
        }
        let Some(marked) = self
            .broker()
            .wf_mark(id, tree.spec.created_ms, &marks, ttl)
            .await?
        else {
            return Ok(());
        };
        if marked.state == WfState::Failed
            && let Some(failed) = &marked.failed
            && marks
                .iter()
                .any(|m| m.kind == MarkKind::Failure && m.field == format!("r:{failed}"))
        {
            self.launch_on_error(id, &tree, failed, jobs).await?;
        }
        if marked.state != WfState::Running {
            return Ok(());
        }
        // Marks of one group share its count: the group is looked at once.
        let mut seen: Vec<&str> = Vec::new();
        let per_mark = marked.counts.iter().zip(&marked.fresh);
        for ((mark, node), (count, &fresh)) in marks.iter().zip(&nodes).zip(per_mark) {
            if mark.kind != MarkKind::Success {
                continue;
            }
            if let Some(c) = &mark.counter {
                if seen.contains(&c.as_str()) {
                    continue;
                }
                seen.push(c);
            }
            let counted = mark.counter.as_ref().map(|_| *count);
            self.completed(id, &tree, node, counted, fresh, ttl).await?;
        }
        Ok(())
    }

    /// `node` completed (its count in its group, `counted`, known when the
    /// mark that completed it counted it): advance what it completes.
    /// `fresh`: this call's mark was new (`WfMarked::fresh`). Marks are
    /// only added, so one call alone completes a step with a new mark:
    /// no launch of what follows the step came before it, and it skips
    /// reading the launch records (see `launch`).
    async fn completed(
        &self,
        id: JobId,
        tree: &Tree,
        node: &Node,
        mut counted: Option<u64>,
        mut fresh: bool,
        ttl: Duration,
    ) -> BrokerResult<()> {
        let mut node = node;
        loop {
            let Some(parent) = tree.parent(&node.path) else {
                self.broker().wf_end(id, WfState::Succeeded, ttl).await?;
                return Ok(());
            };
            match &parent.kind {
                Kind::Chain(steps) => {
                    let pos = steps.iter().position(|s| s.path == node.path).unwrap_or(0);
                    if let Some(next) = steps.get(pos + 1) {
                        let collect = matches!(&next.kind, Kind::Job(j) if j.collect);
                        // Steps with inputs of their own need no read.
                        let out = if collect {
                            Some(Value::Array(self.outputs(id, tree, &steps[..=pos]).await?))
                        } else if tree.takes_previous(next) {
                            Some(
                                self.outputs(id, tree, std::slice::from_ref(node))
                                    .await?
                                    .remove(0),
                            )
                        } else {
                            None
                        };
                        return self
                            .launch(id, tree, next, out.map(|o| o.to_string()), fresh)
                            .await;
                    }
                    node = parent;
                    counted = None;
                }
                Kind::Group(steps) | Kind::Chord { members: steps, .. }
                    if steps.iter().any(|s| s.path == node.path) =>
                {
                    let c = match counted {
                        Some(c) => c,
                        None => {
                            let mark = WfMark {
                                kind: MarkKind::Complete,
                                field: format!("c:{}", node.path),
                                value: "1".into(),
                                counter: Some(format!("n:{}", parent.path)),
                            };
                            let Some(m) = self
                                .broker()
                                .wf_mark(id, tree.spec.created_ms, &[mark], ttl)
                                .await?
                            else {
                                return Ok(());
                            };
                            if m.state != WfState::Running {
                                return Ok(());
                            }
                            // Only the call whose mark of this node is new
                            // can complete the group with it (even when an
                            // earlier apply saw the node complete and died).
                            fresh = m.fresh.first().copied().unwrap_or(false);
                            m.counts.first().copied().unwrap_or(0)
                        }
                    };
                    if c < steps.len() as u64 {
                        return Ok(());
                    }
                    if let Kind::Chord { callback, .. } = &parent.kind {
                        let input = Value::Array(self.outputs(id, tree, steps).await?);
                        return self
                            .launch(id, tree, callback, Some(input.to_string()), fresh)
                            .await;
                    }
                    node = parent;
                    counted = None;
                }
                // The chord's callback: the chord completed.
                _ => {
                    node = parent;
                    counted = None;
                }
            }
        }
    }

    /// The outputs of `nodes`, in order, from the results the record
    /// keeps: one read for all of them (a chord of 500 reads once).
    async fn outputs(&self, id: JobId, tree: &Tree, nodes: &[Node]) -> BrokerResult<Vec<Value>> {
        let mut jobs = Vec::new();
        for n in nodes {
            tree.output_jobs(n, &mut jobs);
        }
        let fields: Vec<String> = jobs.iter().map(|j| format!("r:{}", j.path)).collect();
        let values = self.broker().wf_fields(id, &fields).await?;
        let mut results = values.iter().map(|v| result_in(v.as_deref()));
        Ok(nodes
            .iter()
            .map(|n| model::assemble(n, &mut results))
            .collect())
    }

    /// Enqueues the jobs that start `node`, each given `input` (the output
    /// of the step before), idempotently; records them in the workflow.
    /// A launch that finds the workflow no longer running revokes what it
    /// launched (it raced a revoke or a failure). `first`: this is the
    /// first launch of `node` (see `completed`).
    async fn launch(
        &self,
        id: JobId,
        tree: &Tree,
        node: &Node,
        input: Option<String>,
        first: bool,
    ) -> BrokerResult<()> {
        let mut entry = Vec::new();
        tree.entry_jobs(node, &mut entry);
        // Steps launched before (by an end applied again) are not
        // launched again, even once their jobs' records have expired. A
        // first launch skips that read: nothing launched them before it.
        // A repeat racing it (an end applied again while this one stalls
        // past the outbox's staleness) may launch them too; the enqueue's
        // lookup by id, which no launch skips, stores them once.
        let launched = if first {
            vec![None; entry.len()]
        } else {
            let fields: Vec<String> = entry.iter().map(|n| format!("l:{}", n.path)).collect();
            self.broker().wf_fields(id, &fields).await?
        };
        let jobs: Vec<Job> = entry
            .iter()
            .zip(launched)
            .filter(|(_, l)| l.is_none())
            .filter_map(|(n, _)| self.member_job(id, tree, n, input.as_deref()))
            .collect();
        if jobs.is_empty() {
            return Ok(());
        }
        let state = self.enqueue_members(id, tree, jobs).await?;
        if state.is_some_and(|s| s != WfState::Running) {
            // The workflow ended while this launch was under way, so these
            // steps are of the rest that never runs. They may have started
            // already (the enqueue pushes to idle workers), and the revoke
            // could not see them: they are stopped, whatever it asked.
            let mut paths: Vec<&str> = entry.iter().map(|n| n.path.as_str()).collect();
            paths.sort();
            self.revoke_launched(id, tree, Some(&paths), true).await?;
        }
        Ok(())
    }

    /// Enqueues `jobs` (each stored once by its derived id) and records
    /// them; the state after.
    async fn enqueue_members(
        &self,
        id: JobId,
        tree: &Tree,
        jobs: Vec<Job>,
    ) -> BrokerResult<Option<WfState>> {
        let jobs = self.current_modules(tree, jobs).await?;
        let paths: Vec<String> = jobs
            .iter()
            .filter_map(|j| j.workflow.as_ref().map(|w| w.path.clone()))
            .collect();
        let enqueued = self.broker().enqueue(jobs).await?;
        let launched: Vec<(String, JobId)> = paths
            .into_iter()
            .zip(enqueued)
            .map(|(p, e)| (p, e.job.id))
            .collect();
        self.broker().wf_launched(id, &launched).await
    }

    /// Each of `jobs` whose step names no module runs its task's module as
    /// bound now, as a job enqueued now would: a re-bind or a rollback
    /// after the workflow started reaches the steps launched after it.
    /// (The rest of the job, its queue and limits, is as the workflow's
    /// start made it.) A task no longer bound keeps the module it had.
    async fn current_modules(&self, tree: &Tree, mut jobs: Vec<Job>) -> BrokerResult<Vec<Job>> {
        if !tree.spec.modules_at_launch {
            return Ok(jobs);
        }
        let mut bound: HashMap<String, Option<crate::registry::ModuleHash>> = HashMap::new();
        for job in &mut jobs {
            let pinned = job
                .workflow
                .as_ref()
                .and_then(|w| tree.node(&w.path))
                .is_some_and(|n| matches!(&n.kind, Kind::Job(s) if s.pinned));
            let Some(task) = job.task.as_deref().filter(|_| !pinned) else {
                continue;
            };
            let module = match bound.get(task) {
                Some(m) => *m,
                None => {
                    let m = self
                        .producer
                        .bound_module(task)
                        .await
                        .map_err(|e| match e {
                            crate::registry::RegistryError::Redis(e) => BrokerError::Redis(e),
                            e => BrokerError::Protocol(format!("the binding of {task}: {e}")),
                        })?;
                    bound.insert(task.to_string(), m);
                    m
                }
            };
            if module.is_some() {
                job.module = module;
            }
        }
        Ok(jobs)
    }

    /// The job of step `node` of workflow `id`, given `previous`. Its id
    /// is derived from the workflow and the step (`member_id`): launching
    /// the step again finds the first job.
    fn member_job(
        &self,
        id: JobId,
        tree: &Tree,
        node: &Node,
        previous: Option<&str>,
    ) -> Option<Job> {
        let Kind::Job(step) = &node.kind else {
            return None;
        };
        let now = Utc::now();
        let mut job = step.template.clone();
        job.id = member_id(id, tree.spec.created_ms, &node.path);
        job.created_at = now;
        job.input = model::input_for(step, previous);
        job.idempotency_key = None;
        job.workflow = Some(WorkflowRef {
            id,
            path: node.path.clone(),
        });
        let after = |ms: u64| now.checked_add_signed(chrono::Duration::milliseconds(ms as i64));
        if let Some(ms) = step.countdown_ms {
            job.eta = after(ms);
        }
        if let Some(ms) = step.expires_in_ms {
            job.expires = after(ms);
        }
        Some(job)
    }

    /// Launches the error callback that answers the failure of the member
    /// at `failed` (once: its job's id is derived from its step).
    async fn launch_on_error(
        &self,
        id: JobId,
        tree: &Tree,
        failed: &str,
        jobs: &[&Job],
    ) -> BrokerResult<()> {
        let Some(cb) = tree.on_error_for(failed) else {
            return Ok(());
        };
        // Every apply of the failure comes here (the failure is marked
        // once, but its end may be applied again: a redelivery, a stale
        // outbox entry, a dead letter replayed that fails again). The
        // launch record says whether the callback went, also once its
        // job's record has expired (the enqueue's lookup by id would not).
        let launched = self
            .broker()
            .wf_fields(id, &[format!("l:{}", cb.path)])
            .await?;
        if launched.first().is_some_and(Option::is_some) {
            return Ok(());
        }
        let member = jobs
            .iter()
            .find(|j| j.workflow.as_ref().is_some_and(|w| w.path == failed));
        let info = serde_json::json!({
            "workflow": id,
            "step": failed,
            "job": member.map(|j| j.id),
            "state": member.map(|j| j.state),
            "error": member.and_then(|j| j.error.clone()),
        })
        .to_string();
        let Some(job) = self.member_job(id, tree, cb, Some(&info)) else {
            return Ok(());
        };
        self.enqueue_members(id, tree, vec![job]).await?;
        Ok(())
    }

    /// The ids of every job workflow `id` may run, launched or not: each
    /// job step's, error callbacks' too (derived from the workflow and the
    /// step, see `member_id`). `None` when the workflow is unknown.
    pub async fn member_ids(&self, id: JobId) -> BrokerResult<Option<Vec<JobId>>> {
        let Some((_, tree)) = self.read(id).await? else {
            return Ok(None);
        };
        Ok(Some(
            model::job_steps(&tree.spec.root)
                .into_iter()
                .map(|(n, _)| member_id(id, tree.spec.created_ms, &n.path))
                .collect(),
        ))
    }

    /// The workflow as stored, with each step's state.
    pub async fn status(&self, id: JobId) -> BrokerResult<Option<WorkflowStatus>> {
        let Some((stored, tree)) = self.read(id).await? else {
            return Ok(None);
        };
        let root = &tree.spec.root;
        let result = (stored.state == WfState::Succeeded).then(|| {
            let mut jobs = Vec::new();
            tree.output_jobs(root, &mut jobs);
            let mut results = jobs.iter().map(|j| {
                result_in(
                    stored
                        .fields
                        .get(&format!("r:{}", j.path))
                        .map(String::as_str),
                )
            });
            model::assemble(root, &mut results)
        });
        Ok(Some(WorkflowStatus {
            id,
            state: stored.state,
            done: stored.done,
            total: stored.total,
            failed: stored.failed.clone(),
            created_at: stored.created_at,
            finished_at: stored.finished_at,
            result,
            tree: step_status(root, &stored),
        }))
    }

    /// Revokes workflow `id`: steps not launched never run, launched jobs
    /// are revoked (running ones stopped when `terminate`). The state
    /// after (an ended workflow keeps its end); `None` when unknown.
    pub async fn revoke(&self, id: JobId, terminate: bool) -> BrokerResult<Option<WfState>> {
        let Some((_, tree)) = self.read(id).await? else {
            return Ok(None);
        };
        let ttl = Duration::from_millis(tree.spec.ttl_ms);
        let state = self.broker().wf_end(id, WfState::Revoked, ttl).await?;
        if state == Some(WfState::Revoked) {
            self.revoke_launched(id, &tree, None, terminate).await?;
        }
        Ok(state)
    }

    /// Revokes the launched jobs of workflow `id` (its `tree`; of the
    /// steps `only`, sorted, when given), then applies their ends. Revoking the whole
    /// workflow (`only` is `None`) also revokes, by their derived ids, the
    /// job steps with no launch record: a launch that stored its jobs and
    /// failed (or died) before recording them leaves them there, and its
    /// repeat, seeing the workflow revoked, launches nothing and revokes
    /// nothing. (A step never launched answers "not found".)
    async fn revoke_launched(
        &self,
        id: JobId,
        tree: &Tree,
        only: Option<&[&str]>,
        terminate: bool,
    ) -> BrokerResult<()> {
        use futures::StreamExt as _;
        // Read after the workflow ended: the launch records as they are now.
        let Some(stored) = self.broker().wf_read(id).await? else {
            return Ok(());
        };
        let mut steps: Vec<(String, JobId)> = Vec::new();
        for (field, job) in &stored.fields {
            if let Some(path) = field.strip_prefix("l:")
                && let Ok(job) = job.parse::<JobId>()
            {
                steps.push((path.to_string(), job));
            }
        }
        if only.is_none() {
            for (n, _) in model::job_steps(&tree.spec.root) {
                if !stored.fields.contains_key(&format!("l:{}", n.path)) {
                    steps.push((n.path.clone(), member_id(id, tree.spec.created_ms, &n.path)));
                }
            }
        }
        steps.retain(|(path, _)| {
            !path.ends_with(".on_error")
                && !stored.fields.contains_key(&format!("r:{path}"))
                && only.is_none_or(|o| o.binary_search(&path.as_str()).is_ok())
        });
        // A queued job ends here (its end is applied below); a running one
        // ends REVOKED through its worker's settle.
        let broker = self.broker().clone();
        let outcomes: Vec<(String, BrokerResult<crate::queue::RevokeOutcome>)> =
            futures::stream::iter(steps)
                .map(move |(path, job)| {
                    let broker = broker.clone();
                    async move { (path, broker.revoke(job, terminate).await) }
                })
                .buffer_unordered(REVOKE_AT_ONCE)
                .collect()
                .await;
        let mut queues: Vec<String> = Vec::new();
        for (path, outcome) in outcomes {
            if outcome? == crate::queue::RevokeOutcome::Revoked
                && let Some(Kind::Job(step)) = tree.node(&path).map(|n| &n.kind)
                && !queues.contains(&step.template.queue)
            {
                queues.push(step.template.queue.clone());
            }
        }
        for q in queues {
            // Boxed: draining applies ends, which may launch and revoke.
            Box::pin(self.drain_queue(&q)).await?;
        }
        Ok(())
    }
}

/// Revokes of one workflow's steps in flight at once.
const REVOKE_AT_ONCE: usize = 16;

impl crate::producer::ChildWorkflows for Workflows {
    fn start<'a>(
        &'a self,
        children: &'a crate::producer::ChildJobs,
        workflow: String,
        key: String,
        ttl_secs: Option<u64>,
    ) -> futures::future::BoxFuture<'a, Result<String, crate::sandbox::HostError>> {
        use crate::sandbox::HostError;
        Box::pin(async move {
            let workflow: Value = serde_json::from_str(&workflow)
                .map_err(|e| HostError::Invalid(format!("the workflow is not JSON: {e}")))?;
            let req = WorkflowRequest {
                workflow,
                ttl_secs,
                idempotency_key: Some(key),
            };
            // Its steps may only lower what their tasks' bindings allow,
            // like a submit token's (a plain child sets none of it).
            let spec = model::compile(
                children.producer(),
                Caller::Task,
                &req,
                Some(children.parent()),
            )
            .await
            .map_err(host_error)?;
            let jobs: Vec<(String, Option<String>)> = model::job_steps(&spec.root)
                .into_iter()
                .map(|(_, j)| {
                    (
                        j.template.task.clone().unwrap_or_default(),
                        j.asked_queue.clone(),
                    )
                })
                .collect();
            // Refused before it counts against the run's children: a
            // refusal is the task's mistake, which no retry mends.
            let text = stored_form(&spec).map_err(host_error)?;
            children.admit_jobs(&jobs)?;
            let started = self
                .start(spec, &text, req.idempotency_key.as_deref())
                .await
                .map_err(host_error)?;
            Ok(started.id.to_string())
        })
    }
}

/// What a workflow record keeps of a member's end: `{"state", "id",
/// "result"}` or `{"state", "id", "error"}`.
fn outcome(job: &Job) -> String {
    let mut o = serde_json::Map::new();
    o.insert("state".into(), Value::String(job.state.as_str().into()));
    o.insert("id".into(), Value::String(job.id.to_string()));
    if job.state == JobState::Success {
        o.insert("result".into(), job.result_value().unwrap_or(Value::Null));
    } else if let Some(e) = &job.error {
        o.insert(
            "error".into(),
            serde_json::to_value(e).unwrap_or(Value::Null),
        );
    }
    Value::Object(o).to_string()
}

/// The result in a member's outcome (`r:<path>`, see [`outcome`]); null
/// when there is none.
fn result_in(outcome: Option<&str>) -> Value {
    outcome
        .and_then(|v| serde_json::from_str::<Value>(v).ok())
        .and_then(|o| o.get("result").cloned())
        .unwrap_or(Value::Null)
}

/// Whether `job` is a job of workflow `id` as `tree` says it was made:
/// its id is the one its step's job has (see `member_id`).
fn is_member(tree: &Tree, id: JobId, job: &Job) -> bool {
    job.workflow
        .as_ref()
        .is_some_and(|w| member_id(id, tree.spec.created_ms, &w.path) == job.id)
}

/// What a task is told of workflow error `e`: the broker's may pass, the
/// rest is the task's own mistake.
fn host_error(e: WorkflowError) -> crate::sandbox::HostError {
    use crate::sandbox::HostError;
    match e {
        WorkflowError::Broker(b) => HostError::Transient(format!("broker: {b}")),
        WorkflowError::Enqueue(e) => crate::producer::enqueue_error(e),
        other => HostError::Invalid(other.to_string()),
    }
}

/// `spec` as stored. The stored tree nests deeper than the request (a
/// chord takes 4 levels of JSON, a job step 2 more), and serde_json reads
/// at most 128 back: a tree that would not be read back (chords nested
/// some 30 deep) is refused rather than stored, where no member could
/// advance it, and no read or revoke could see it.
fn stored_form(spec: &Spec) -> Result<String, WorkflowError> {
    let text = serde_json::to_string(spec)
        .map_err(|e| BrokerError::Protocol(format!("workflow spec: {e}")))?;
    if serde_json::from_str::<Spec>(&text).is_err() {
        return Err(WorkflowError::at(
            "workflow",
            "steps nest too deeply to be stored (chords take the most room): nest them less deeply",
        ));
    }
    Ok(text)
}

fn parse_tree(id: JobId, text: &str) -> BrokerResult<Tree> {
    let spec: Spec = serde_json::from_str(text)
        .map_err(|e| BrokerError::Protocol(format!("workflow {id}: stored tree: {e}")))?;
    Ok(Tree::new(spec))
}

/// The id of step `path`'s job in workflow `id` started at `created_ms`: a
/// UUIDv7 of that time whose other bits come from the workflow and the
/// step, the same for every process that launches it.
fn member_id(id: JobId, created_ms: i64, path: &str) -> JobId {
    let digest = Sha256::digest(format!("runner workflow step\0{id}\0{path}").as_bytes());
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&digest[..10]);
    JobId(uuid::Builder::from_unix_timestamp_millis(created_ms.max(0) as u64, &bytes).into_uuid())
}

/// The id of the workflow that idempotency key `key` starts: the same for
/// every request that sends it.
fn keyed_id(key: &str) -> JobId {
    let digest = Sha256::digest(format!("runner workflow key\0{key}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    JobId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

fn step_status(node: &Node, stored: &WfStored) -> StepStatus {
    let outcome = stored
        .fields
        .get(&format!("r:{}", node.path))
        .and_then(|v| serde_json::from_str::<Value>(v).ok());
    let launched = stored
        .fields
        .get(&format!("l:{}", node.path))
        .and_then(|v| v.parse::<JobId>().ok());
    let (kind, task, steps) = match &node.kind {
        Kind::Job(j) => ("job", j.template.task.clone(), Vec::new()),
        Kind::Chain(s) => (
            "chain",
            None,
            s.iter().map(|c| step_status(c, stored)).collect(),
        ),
        Kind::Group(s) => (
            "group",
            None,
            s.iter().map(|c| step_status(c, stored)).collect(),
        ),
        Kind::Chord { members, callback } => {
            let mut steps: Vec<StepStatus> =
                members.iter().map(|c| step_status(c, stored)).collect();
            steps.push(step_status(callback, stored));
            ("chord", None, steps)
        }
    };
    let state = match (&node.kind, &outcome) {
        (Kind::Job(_), Some(o)) => match o.get("state").and_then(Value::as_str) {
            Some("SUCCESS") => "succeeded",
            Some("REVOKED") => "revoked",
            _ => "failed",
        },
        (Kind::Job(_), None) if launched.is_some() => "launched",
        (Kind::Job(_), None) => "waiting",
        _ if steps.iter().any(|s| s.state == "failed") => "failed",
        _ if steps.iter().any(|s| s.state == "revoked") => "revoked",
        _ if steps.iter().all(|s| s.state == "succeeded") => "succeeded",
        _ if steps.iter().all(|s| s.state == "waiting") => "waiting",
        _ => "running",
    };
    StepStatus {
        path: node.path.clone(),
        kind,
        state,
        task,
        job: outcome
            .as_ref()
            .and_then(|o| o.get("id"))
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse().ok())
            .or(launched),
        error: outcome.and_then(|o| o.get("error").cloned()),
        steps,
        on_error: node
            .on_error
            .as_ref()
            .map(|e| Box::new(step_status(e, stored))),
    }
}
