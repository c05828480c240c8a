//! The embedded broker: the same contract as the Redis one, in this
//! process. **State is kept in memory only**: every job, result and dead
//! letter is lost when the process exits. It serves `runner dev` and tests
//! on a machine with nothing installed; production uses Redis.
//!
//! Leases work as on Redis (a worker that stops settling loses its jobs
//! after the lease), so the conformance suite runs unchanged against both.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::{broadcast, mpsc};

use super::history::Minutes;
use super::job::{DEAD_LETTER_TTL, Job, JobId, JobState, MAX_PRIORITY, Progress, RateLimit};
use super::list::{JobPage, JobQuery, Walk, Window};
use super::ratelimit::Limiter;
use super::workflow::{
    CREATED, DONE, FAILED, FINISHED, MADE, OUTBOX_BATCH, OUTBOX_STALE, RUNNING_TTL, SPEC, STATE,
    TOTAL,
};
use super::{
    Broker, BrokerResult, Delivery, Enqueued, Extended, JobEvent, Lease, LeaseMember, MarkKind,
    PURGED, PurgeFilter, QueueStats, RevokeOutcome, SettleReply, SettleRequest, Settlement, Signal,
    WfMark, WfMarked, WfState, WfStored, WorkerInfo, WorkerSnapshot, earlier, gather_answers,
    ms_to_time, show_open,
};

struct Record {
    queue: String,
    job: Job,
    /// Wall-clock ms after which the record is gone.
    expires_at: Option<i64>,
}

#[derive(Default)]
struct QueueState {
    /// Ready jobs of priority 0, in order.
    ready: VecDeque<(JobId, u32)>,
    /// Ready jobs of priority 1 to 9: highest first (`9 - priority`), then
    /// in the order they became ready (`seq`), as Redis's `prio` set.
    prio: BTreeSet<(u8, u64, JobId, u32)>,
    seq: u64,
    delayed: BTreeSet<(i64, JobId, u32)>,
    /// member -> deadline ms
    leases: HashMap<String, (JobId, i64)>,
    dead: BTreeSet<(i64, JobId)>,
    /// Every job's id while its record lives: the job index (`list.rs`).
    index: BTreeSet<JobId>,
    /// The queue's rate-limit logs: a limit counts starts per queue, as in
    /// Redis (see `ratelimit.rs`).
    limiter: Limiter,
    /// The last hour, minute by minute (`history.rs`).
    history: Minutes,
    /// Workflow members that ended, not applied yet, and since when
    /// (`workflow.rs`).
    wfout: HashMap<JobId, i64>,
}

impl QueueState {
    /// The outbox's entries at least `min_age_ms` old at `now`, oldest
    /// first, with when each was written.
    fn outbox_entries(&self, now: i64, min_age_ms: i64) -> Vec<(i64, JobId)> {
        let mut entries: Vec<(i64, JobId)> = self
            .wfout
            .iter()
            .filter(|(_, t)| **t <= now - min_age_ms)
            .map(|(id, t)| (*t, *id))
            .collect();
        entries.sort();
        entries
    }

    /// Counts jobs entering `states` at `now` and records what waits and
    /// runs after the change (as the Redis scripts' `hist_flush`).
    fn note(&mut self, now: i64, states: impl IntoIterator<Item = JobState>) {
        for s in states {
            self.history.count(now, s, 1);
        }
        let waiting = self.ready.len() + self.prio.len() + self.delayed.len();
        self.history
            .sample(now, waiting as u64, self.leases.len() as u64);
    }
}

#[derive(Default)]
struct State {
    records: HashMap<JobId, Record>,
    queues: HashMap<String, QueueState>,
    idem: HashMap<(String, String), (JobId, i64)>,
    /// Revoked while leased, and whether to terminate the run.
    revoked: HashMap<JobId, bool>,
    progress: HashMap<JobId, Progress>,
    /// When [`State::sweep`] last ran.
    swept_at: i64,
    workers: HashMap<String, (WorkerInfo, i64)>,
    subscribers: Vec<(Vec<String>, mpsc::UnboundedSender<Signal>)>,
    /// Inspect requests waiting for workers' answers, by reply id.
    replies: HashMap<String, mpsc::UnboundedSender<WorkerSnapshot>>,
    /// Workflow records (the fields of Redis's hash) and when they go.
    workflows: HashMap<JobId, (HashMap<String, String>, i64)>,
}

/// How often the state forgets what has expired.
const SWEEP_EVERY_MS: i64 = 1000;

/// What the embedded broker holds in memory (see [`EmbeddedBroker::held`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub records: usize,
    pub idempotency_keys: usize,
    pub revoked: usize,
    pub progress: usize,
    /// Inspections waiting for workers' answers.
    pub inspections: usize,
}

impl State {
    /// Forgets, at most once per [`SWEEP_EVERY_MS`], what Redis would have
    /// let expire: records past their TTL (and their dead-letter entries),
    /// idempotency keys past theirs, revoke marks and progress of jobs that
    /// are final or gone. Memory stays bounded by the TTLs, as in Redis.
    fn sweep(&mut self, now: i64) {
        if now - self.swept_at < SWEEP_EVERY_MS {
            return;
        }
        self.swept_at = now;
        self.records
            .retain(|_, r| r.expires_at.is_none_or(|e| e > now));
        self.idem.retain(|_, (_, until)| *until > now);
        self.workflows.retain(|_, (_, until)| *until > now);
        let records = &self.records;
        let open = |id: &JobId| records.get(id).is_some_and(|r| !r.job.state.is_final());
        self.revoked.retain(|id, _| open(id));
        self.progress.retain(|id, _| open(id));
        for q in self.queues.values_mut() {
            q.dead.retain(|(_, id)| records.contains_key(id));
            q.index.retain(|id| records.contains_key(id));
        }
    }

    fn held(&self) -> Held {
        Held {
            records: self.records.len(),
            idempotency_keys: self.idem.len(),
            revoked: self.revoked.len(),
            progress: self.progress.len(),
            inspections: self.replies.len(),
        }
    }

    fn record(&self, id: &JobId, now: i64) -> Option<&Record> {
        self.records
            .get(id)
            .filter(|r| r.expires_at.is_none_or(|e| e > now))
    }

    /// Job `id` as a lookup shows it at `now`: STARTED while leased,
    /// EXPIRED past its expiry, with its latest progress.
    fn shown(&self, id: JobId, now: i64) -> Option<Job> {
        let rec = self.record(&id, now)?;
        let mut job = rec.job.clone();
        if !job.state.is_final() {
            let lease = self
                .leased(&rec.queue, id)
                .and_then(|m| LeaseMember::parse(m));
            show_open(&mut job, lease, ms_to_time(now));
            if let Some(p) = self.progress.get(&id) {
                job.progress = Some(p.clone());
            }
        }
        Some(job)
    }

    /// Sends `s` to the subscribers of `queue` (all of them for `None`);
    /// returns how many got it.
    fn signal(&mut self, queue: Option<&str>, s: Signal) -> usize {
        let mut sent = 0;
        self.subscribers.retain(|(queues, tx)| {
            if queue.is_none_or(|q| queues.iter().any(|x| x == q)) {
                let ok = tx.send(s.clone()).is_ok();
                sent += ok as usize;
                ok
            } else {
                !tx.is_closed()
            }
        });
        sent
    }

    /// Tells the workers of `queue` that jobs became ready, and that some
    /// of them have a priority when `prioritized` (as Redis's message).
    fn signal_ready(&mut self, queue: &str, prioritized: bool) {
        let queue = queue.to_string();
        self.signal(
            Some(&queue),
            Signal::Work {
                queue: queue.clone(),
            },
        );
        if prioritized {
            self.signal(
                Some(&queue),
                Signal::Prioritized {
                    queue: queue.clone(),
                },
            );
        }
    }

    /// Puts the workflow members among `ended` (jobs that just turned
    /// final in `queue`) in the queue's outbox, under the same lock as
    /// their records.
    fn outbox_ends(&mut self, queue: &str, ended: &[(JobId, JobState)], now: i64) {
        let members: Vec<JobId> = ended
            .iter()
            .filter(|(id, state)| {
                state.is_final()
                    && self
                        .records
                        .get(id)
                        .is_some_and(|r| r.job.workflow.is_some())
            })
            .map(|(id, _)| *id)
            .collect();
        if members.is_empty() {
            return;
        }
        let q = self.queues.entry(queue.to_string()).or_default();
        for id in members {
            // Due from this end, as on Redis (an entry put behind by
            // `outbox_later` comes forward again).
            q.wfout.insert(id, now);
        }
    }

    /// Workflow `id`'s record, if it lives at `now`.
    fn workflow(&mut self, id: JobId, now: i64) -> Option<&mut HashMap<String, String>> {
        match self.workflows.get_mut(&id) {
            Some((f, until)) if *until > now => Some(f),
            _ => None,
        }
    }

    fn leased(&self, queue: &str, id: JobId) -> Option<&String> {
        self.queues
            .get(queue)?
            .leases
            .iter()
            .find(|(_, (j, _))| *j == id)
            .map(|(m, _)| m)
    }
}

impl QueueState {
    /// Makes job `id` (`n` redeliveries) of `priority` ready, behind the
    /// ready jobs of its priority. True when it went to the prioritized set.
    fn make_ready(&mut self, id: JobId, n: u32, priority: u8) -> bool {
        if priority == 0 {
            self.ready.push_back((id, n));
            return false;
        }
        self.seq += 1;
        self.prio
            .insert((MAX_PRIORITY - priority.min(MAX_PRIORITY), self.seq, id, n));
        true
    }

    /// Puts a job back at the front of the ready jobs (a hand-back, a lost
    /// worker's lease): the front of the list, or the first of its
    /// priority. Says whether it has a priority.
    fn make_ready_again(&mut self, id: JobId, n: u32, priority: u8) -> bool {
        if priority == 0 {
            self.ready.push_front((id, n));
            return false;
        }
        self.prio
            .insert((MAX_PRIORITY - priority.min(MAX_PRIORITY), 0, id, n));
        true
    }
}

impl State {
    /// Stores what each completion settles (final record, retry, hand-back);
    /// a completion whose lease is no longer held is stale. Says whether a
    /// job became ready, and whether one with a priority.
    fn apply_completions(
        &mut self,
        req: &SettleRequest,
        now: i64,
        reply: &mut SettleReply,
        events: &mut Vec<(JobId, JobState)>,
    ) -> (bool, bool) {
        let mut readied = false;
        let mut prioritized = false;
        for c in req.completions.iter() {
            let st_ref = &mut *self;
            let Some(q) = st_ref.queues.get_mut(&req.queue) else {
                continue;
            };
            if q.leases.remove(&c.lease.member).is_none() {
                reply.stale.push(c.lease.id);
                continue;
            }
            if c.had_progress {
                st_ref.progress.remove(&c.lease.id);
            }
            match &c.settlement {
                Settlement::Finish { job, dead } => {
                    let ttl = if *dead {
                        DEAD_LETTER_TTL.as_millis() as i64
                    } else {
                        job.result_ttl_ms as i64
                    };
                    if *dead {
                        q.dead.insert((now, job.id));
                    }
                    st_ref.records.insert(
                        job.id,
                        Record {
                            queue: req.queue.clone(),
                            job: job.clone(),
                            expires_at: Some(now + ttl.max(1)),
                        },
                    );
                    events.push((job.id, job.state));
                }
                Settlement::Retry {
                    job,
                    due,
                    if_revoked,
                } => {
                    if st_ref.revoked.contains_key(&job.id) {
                        st_ref.records.insert(
                            job.id,
                            Record {
                                queue: req.queue.clone(),
                                job: if_revoked.clone(),
                                expires_at: Some(now + if_revoked.result_ttl_ms as i64),
                            },
                        );
                        events.push((job.id, JobState::Revoked));
                    } else {
                        let due = due.timestamp_millis();
                        q.delayed.insert((due, job.id, 0));
                        st_ref.records.insert(
                            job.id,
                            Record {
                                queue: req.queue.clone(),
                                job: job.clone(),
                                expires_at: None,
                            },
                        );
                        defer(reply, due);
                        events.push((job.id, JobState::Retry));
                    }
                }
                Settlement::Release { started } => {
                    let rec = st_ref.records.get(&c.lease.id);
                    let priority = rec.map_or(0, |r| r.job.priority);
                    // Given back unrun: it did not start. (One leased past
                    // its expiry took no start: another's may share the
                    // millisecond.)
                    if let (Some(r), Some(m)) = (rec, LeaseMember::parse(&c.lease.member))
                        && !r.job.rate_limits.is_empty()
                        && !started
                        && !r.job.is_expired_at(ms_to_time(m.leased_ms))
                    {
                        q.limiter.unstart(&r.job.rate_limits, m.leased_ms);
                    }
                    if st_ref.revoked.contains_key(&c.lease.id) {
                        // Revoked meanwhile (its worker missed it): not
                        // put back.
                        end_revoked(&mut st_ref.records, c.lease.id, now, events);
                    } else {
                        prioritized |=
                            q.make_ready_again(c.lease.id, c.lease.redeliveries, priority);
                        readied = true;
                        expire_again(&mut st_ref.records, c.lease.id, now);
                    }
                }
            }
        }
        (readied, prioritized)
    }

    /// Moves due delayed jobs to ready and takes back expired leases (a
    /// revoked job's lease ends it); tells the caller when to look again.
    /// Says whether a job became ready, and whether one with a priority.
    fn due_check(
        &mut self,
        req: &SettleRequest,
        now: i64,
        reply: &mut SettleReply,
        events: &mut Vec<(JobId, JobState)>,
    ) -> (bool, bool) {
        let mut readied = false;
        let mut prioritized = false;
        let st_ref = &mut *self;
        let q = st_ref.queues.entry(req.queue.clone()).or_default();
        while let Some(&(due, id, n)) = q.delayed.first() {
            if due > now {
                break;
            }
            q.delayed.pop_first();
            let priority = st_ref.records.get(&id).map_or(0, |r| r.job.priority);
            prioritized |= q.make_ready(id, n, priority);
            readied = true;
        }
        let expired: Vec<String> = q
            .leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(m, _)| m.clone())
            .collect();
        for m in expired {
            let Some((id, _)) = q.leases.remove(&m) else {
                continue;
            };
            reply.reclaimed += 1;
            let n = LeaseMember::parse(&m).map_or(0, |m| m.redeliveries);
            if st_ref.revoked.contains_key(&id) {
                // Revoked while its worker was lost: end it here.
                end_revoked(&mut st_ref.records, id, now, events);
            } else {
                let priority = st_ref.records.get(&id).map_or(0, |r| r.job.priority);
                prioritized |= q.make_ready_again(id, n + 1, priority);
                readied = true;
                expire_again(&mut st_ref.records, id, now);
            }
        }
        let d = q.delayed.first().map(|(t, _, _)| *t);
        let l = q
            .leases
            .iter()
            .filter(|(m, _)| {
                !(req.holds_leases && LeaseMember::parse(m).is_some_and(|l| l.worker == req.worker))
            })
            .map(|(_, (_, t))| *t)
            .min();
        reply.next_due = earlier(d, l).map(ms_to_time);
        (readied, prioritized)
    }

    /// Leases up to `req.fetch` ready jobs to the caller, deferring those
    /// over a rate limit. Returns when the new leases run out.
    fn lease_ready(
        &mut self,
        req: &SettleRequest,
        now: i64,
        reply: &mut SettleReply,
        events: &mut Vec<(JobId, JobState)>,
    ) -> i64 {
        let lease_until = now + req.lease.as_millis() as i64;
        // As Redis: up to `fetch` prioritized jobs first, then the list.
        let mut from_prio = 0;
        while reply.popped < req.fetch {
            let st_ref = &mut *self;
            let Some(q) = st_ref.queues.get_mut(&req.queue) else {
                break;
            };
            let next = match q.prio.first().copied() {
                Some(e) if req.prioritized && from_prio == reply.popped => {
                    q.prio.remove(&e);
                    from_prio += 1;
                    Some((e.2, e.3))
                }
                _ => q.ready.pop_front(),
            };
            let Some((id, n)) = next else {
                break;
            };
            reply.popped += 1;
            let Some(rec) = st_ref
                .records
                .get(&id)
                .filter(|r| r.expires_at.is_none_or(|e| e > now))
            else {
                continue;
            };
            let mut job = rec.job.clone();
            if !matches!(job.state, JobState::Pending | JobState::Retry) {
                continue;
            }
            // A job past its expiry does not run (its worker ends it
            // EXPIRED): it takes no start and waits for none.
            if !job.rate_limits.is_empty()
                && !job.is_expired_at(ms_to_time(now))
                && let Err(slot) = q.limiter.try_start(&job.rate_limits, now)
            {
                q.delayed.insert((slot, id, n));
                defer(reply, slot);
                continue;
            }
            let lease = LeaseMember {
                id,
                redeliveries: n,
                worker: req.worker.clone(),
                leased_ms: now,
            };
            let member = lease.encode();
            q.leases.insert(member.clone(), (id, lease_until));
            // Running, its record no longer expires (a job with an expiry
            // had one): its end, or a retry, sets the time anew.
            if let Some(r) = st_ref.records.get_mut(&id) {
                r.expires_at = None;
            }
            lease.show_started(&mut job);
            events.push((id, JobState::Started));
            reply.deliveries.push(Delivery {
                job,
                lease: lease.lease(&req.queue, member),
                leased_at: ms_to_time(now),
            });
        }
        reply.prioritized_left = req.prioritized && req.fetch > 0 && from_prio >= req.fetch;
        lease_until
    }

    /// The signals one settle call owes the queue's workers.
    fn announce(
        &mut self,
        req: &SettleRequest,
        reply: &SettleReply,
        (readied, prioritized): (bool, bool),
        lease_until: i64,
    ) {
        if readied {
            self.signal_ready(&req.queue, prioritized);
        }
        if let Some(at) = reply.deferred_until {
            self.signal(
                Some(&req.queue),
                Signal::WakeAt {
                    queue: req.queue.clone(),
                    at,
                },
            );
        }
        if !reply.deliveries.is_empty() {
            self.signal(
                Some(&req.queue),
                Signal::LeaseUntil {
                    queue: req.queue.clone(),
                    worker: req.worker.clone(),
                    at: ms_to_time(lease_until),
                },
            );
        }
    }
}

/// When the record of `job`, waiting unrun, expires (ms): its expiry plus
/// its result TTL; never for a workflow's step, which waits for a worker
/// to end it EXPIRED (whose end advances its workflow), as on Redis.
fn unrun_expiry(job: &Job, now: i64) -> Option<i64> {
    job.expires
        .filter(|_| job.workflow.is_none())
        .map(|e| e.timestamp_millis().max(now + 1) + job.result_ttl_ms as i64)
}

/// Job `id`, leased (its record's expiry stopped) and back in the queue
/// unrun, expires again as a waiting job does.
fn expire_again(records: &mut HashMap<JobId, Record>, id: JobId, now: i64) {
    if let Some(r) = records.get_mut(&id) {
        r.expires_at = unrun_expiry(&r.job, now);
    }
}

/// Ends job `id`, revoked while leased, when its lease is given back or
/// runs out: no run follows.
fn end_revoked(
    records: &mut HashMap<JobId, Record>,
    id: JobId,
    now: i64,
    events: &mut Vec<(JobId, JobState)>,
) {
    if let Some(rec) = records.get_mut(&id) {
        rec.job.state = JobState::Revoked;
        rec.expires_at = Some(now + rec.job.result_ttl_ms as i64);
        events.push((id, JobState::Revoked));
    }
}

/// Keeps the earliest time a deferred job comes due.
fn defer(reply: &mut SettleReply, t: i64) {
    let t = ms_to_time(t);
    reply.deferred_until = Some(reply.deferred_until.map_or(t, |d| d.min(t)));
}

/// In-process broker; see the module docs. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedBroker {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<JobEvent>,
    idempotency_ttl: Duration,
}

impl Default for EmbeddedBroker {
    fn default() -> Self {
        Self::new()
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl EmbeddedBroker {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        EmbeddedBroker {
            state: Arc::new(Mutex::new(State::default())),
            events,
            idempotency_ttl: Duration::from_secs(24 * 3600),
        }
    }

    /// Keeps idempotency keys this long (24 h by default).
    pub fn with_idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_ttl = ttl;
        self
    }

    /// What the broker holds in memory now (after forgetting what expired).
    pub fn held(&self) -> Held {
        self.lock().held()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only mutated in short sections without awaits; a
        // poisoned lock still holds consistent maps.
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.sweep(now_ms());
        st
    }

    fn emit(&self, id: JobId, queue: &str, state: JobState) {
        let _ = self.events.send(JobEvent {
            id,
            queue: queue.to_string(),
            state,
            progress: None,
            record: None,
        });
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn enqueue(&self, jobs: Vec<Job>) -> BrokerResult<Vec<Enqueued>> {
        let now = now_ms();
        let mut out = Vec::with_capacity(jobs.len());
        let mut st = self.lock();
        let mut woken: HashMap<String, (bool, Option<i64>, bool)> = HashMap::new();
        for job in jobs {
            // A workflow's step: its id is derived, and stored once.
            if job.idempotency_key.is_none()
                && job.workflow.is_some()
                && let Some(rec) = st.record(&job.id, now)
            {
                out.push(Enqueued {
                    job: rec.job.clone(),
                    created: false,
                });
                continue;
            }
            if let Some(key) = &job.idempotency_key {
                let k = (job.queue.clone(), key.clone());
                if let Some((prev, until)) = st.idem.get(&k).copied()
                    && until > now
                    && let Some(rec) = st.record(&prev, now)
                {
                    out.push(Enqueued {
                        job: rec.job.clone(),
                        created: false,
                    });
                    continue;
                }
                // The same job again (an id the runner derives, as for a
                // beat's fire) whose record has expired: stored once already.
                if st
                    .idem
                    .get(&k)
                    .is_some_and(|&(prev, until)| prev == job.id && until > now)
                {
                    out.push(Enqueued {
                        job,
                        created: false,
                    });
                    continue;
                }
                st.idem
                    .insert(k, (job.id, now + self.idempotency_ttl.as_millis() as i64));
            }
            let expires_at = unrun_expiry(&job, now);
            st.records.insert(
                job.id,
                Record {
                    queue: job.queue.clone(),
                    job: job.clone(),
                    expires_at,
                },
            );
            let q = st.queues.entry(job.queue.clone()).or_default();
            q.index.insert(job.id);
            q.history.count(now, JobState::Pending, 1);
            let w = woken.entry(job.queue.clone()).or_default();
            match job.eta.map(|e| e.timestamp_millis()).filter(|&e| e > now) {
                Some(due) => {
                    q.delayed.insert((due, job.id, 0));
                    w.1 = Some(w.1.map_or(due, |d: i64| d.min(due)));
                }
                None => {
                    w.2 |= q.make_ready(job.id, 0, job.priority);
                    w.0 = true;
                }
            }
            out.push(Enqueued { job, created: true });
        }
        for (q, (ready, wake, prioritized)) in woken {
            if let Some(qs) = st.queues.get_mut(&q) {
                qs.note(now, []);
            }
            if ready {
                st.signal_ready(&q, prioritized);
            }
            if let Some(at) = wake {
                st.signal(
                    Some(&q),
                    Signal::WakeAt {
                        queue: q.clone(),
                        at: ms_to_time(at),
                    },
                );
            }
        }
        Ok(out)
    }

    async fn get(&self, id: JobId) -> BrokerResult<Option<Job>> {
        Ok(self.lock().shown(id, now_ms()))
    }

    async fn subscribe(&self) -> BrokerResult<broadcast::Receiver<JobEvent>> {
        Ok(self.events.subscribe())
    }

    async fn revoke(&self, id: JobId, terminate: bool) -> BrokerResult<RevokeOutcome> {
        let now = now_ms();
        let mut st = self.lock();
        let Some(rec) = st.record(&id, now) else {
            return Ok(RevokeOutcome::NotFound);
        };
        let queue = rec.queue.clone();
        let mut job = rec.job.clone();
        if job.state.is_final() {
            return Ok(RevokeOutcome::AlreadyFinal(job.state));
        }
        if st.leased(&queue, id).is_some() {
            let marked = st.revoked.entry(id).or_insert(false);
            *marked |= terminate;
            st.signal(None, Signal::Revoke { id, terminate });
            return Ok(if terminate {
                RevokeOutcome::Terminating
            } else {
                RevokeOutcome::WillNotRetry
            });
        }
        job = job.revoked("revoked before it ran", Utc::now());
        st.records.insert(
            id,
            Record {
                queue: queue.clone(),
                job: job.clone(),
                expires_at: Some(now + job.result_ttl_ms as i64),
            },
        );
        if let Some(q) = st.queues.get_mut(&queue) {
            // A delayed job leaves the delayed set now, as on Redis (a
            // ready one is skipped when popped).
            q.delayed.retain(|(_, i, _)| *i != id);
            q.note(now, [JobState::Revoked]);
        }
        st.outbox_ends(&queue, &[(id, JobState::Revoked)], now);
        drop(st);
        self.emit(id, &queue, JobState::Revoked);
        Ok(RevokeOutcome::Revoked)
    }

    async fn settle(&self, req: SettleRequest) -> BrokerResult<SettleReply> {
        let now = now_ms();
        let mut events: Vec<(JobId, JobState)> = Vec::new();
        let mut reply = SettleReply::default();
        let mut st = self.lock();
        st.queues.entry(req.queue.clone()).or_default();
        let mut readied = st.apply_completions(&req, now, &mut reply, &mut events);
        if req.due_check {
            let (due, prioritized) = st.due_check(&req, now, &mut reply, &mut events);
            readied = (readied.0 || due, readied.1 || prioritized);
        }
        let lease_until = st.lease_ready(&req, now, &mut reply, &mut events);
        let changed = !req.completions.is_empty()
            || reply.popped > 0
            || readied.0
            || reply.reclaimed > 0
            || !events.is_empty();
        if changed && let Some(q) = st.queues.get_mut(&req.queue) {
            q.note(now, events.iter().map(|e| e.1));
        }
        st.outbox_ends(&req.queue, &events, now);
        if req.due_check
            && let Some(q) = st.queues.get(&req.queue)
        {
            // As Redis: stale entries to apply again, and a wake-up for the
            // oldest of the rest.
            let stale_ms = OUTBOX_STALE.as_millis() as i64;
            let entries = q.outbox_entries(now, i64::MIN / 2);
            let stale = entries
                .iter()
                .take_while(|(t, _)| *t <= now - stale_ms)
                .take(OUTBOX_BATCH)
                .count();
            reply.outbox = entries[..stale].iter().map(|(_, id)| *id).collect();
            if let Some((t, _)) = entries.get(stale) {
                let at = ms_to_time(t + stale_ms);
                reply.next_due = Some(reply.next_due.map_or(at, |d| d.min(at)));
            }
        }
        st.announce(&req, &reply, readied, lease_until);
        drop(st);
        for (id, state) in events {
            self.emit(id, &req.queue, state);
        }
        Ok(reply)
    }

    async fn extend(&self, leases: &[Lease], lease: Duration) -> BrokerResult<Extended> {
        let until = now_ms() + lease.as_millis() as i64;
        let mut st = self.lock();
        let mut out = Extended::default();
        for l in leases {
            match st
                .queues
                .get_mut(&l.queue)
                .and_then(|q| q.leases.get_mut(&l.member))
            {
                Some(entry) => entry.1 = until,
                None => out.lost.push(l.id),
            }
            if let Some(&terminate) = st.revoked.get(&l.id) {
                out.revoked.push((l.id, terminate));
            }
        }
        Ok(out)
    }

    async fn progress(&self, lease: &Lease, progress: &Progress) -> BrokerResult<()> {
        self.lock().progress.insert(lease.id, progress.clone());
        let _ = self.events.send(JobEvent {
            id: lease.id,
            queue: lease.queue.clone(),
            state: JobState::Started,
            progress: Some(progress.clone()),
            record: None,
        });
        Ok(())
    }

    async fn signals(
        &self,
        _worker: &str,
        queues: &[String],
    ) -> BrokerResult<mpsc::UnboundedReceiver<Signal>> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Same contract as Redis: the first signal says "look now".
        let _ = tx.send(Signal::Reconnected);
        self.lock().subscribers.push((queues.to_vec(), tx));
        Ok(rx)
    }

    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> BrokerResult<()> {
        let until = now_ms() + ttl.as_millis() as i64;
        self.lock()
            .workers
            .insert(worker.id.clone(), (worker.clone(), until));
        Ok(())
    }

    async fn worker_gone(&self, worker_id: &str) -> BrokerResult<()> {
        self.lock().workers.remove(worker_id);
        Ok(())
    }

    async fn workers(&self) -> BrokerResult<Vec<WorkerInfo>> {
        let now = now_ms();
        let mut st = self.lock();
        st.workers.retain(|_, (_, until)| *until > now);
        let mut out: Vec<WorkerInfo> = st.workers.values().map(|(w, _)| w.clone()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn register_queue(&self, queue: &str) -> BrokerResult<()> {
        self.lock().queues.entry(queue.to_string()).or_default();
        Ok(())
    }

    async fn queues(&self) -> BrokerResult<Vec<QueueStats>> {
        let st = self.lock();
        let mut out: Vec<QueueStats> = st
            .queues
            .iter()
            .map(|(name, q)| QueueStats {
                name: name.clone(),
                ready: (q.ready.len() + q.prio.len()) as u64,
                delayed: q.delayed.len() as u64,
                in_flight: q.leases.len() as u64,
                dead: q.dead.len() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn history(&self, queues: &[String]) -> BrokerResult<Vec<Minutes>> {
        let st = self.lock();
        Ok(queues
            .iter()
            .map(|q| {
                st.queues
                    .get(q)
                    .map(|q| q.history.clone())
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn rate_usage(&self, queue: &str, limits: &[RateLimit]) -> BrokerResult<Vec<u64>> {
        let now = now_ms();
        let st = self.lock();
        Ok(limits
            .iter()
            .map(|r| st.queues.get(queue).map_or(0, |q| q.limiter.used(r, now)))
            .collect())
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> BrokerResult<Vec<Job>> {
        let now = now_ms();
        let mut st = self.lock();
        let ids: Vec<(i64, JobId)> = st
            .queues
            .get(queue)
            .map(|q| q.dead.iter().copied().collect())
            .unwrap_or_default();
        let mut out = Vec::new();
        for (t, id) in ids {
            match st.record(&id, now) {
                Some(r) => {
                    if out.len() < limit {
                        out.push(r.job.clone());
                    }
                }
                None => {
                    if let Some(q) = st.queues.get_mut(queue) {
                        q.dead.remove(&(t, id));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn replay(&self, queue: &str, ids: &[JobId]) -> BrokerResult<Vec<JobId>> {
        // One lock from reading the dead letters to queueing them: two
        // replays at once cannot both take the same job.
        let now = now_ms();
        let mut st = self.lock();
        let st = &mut *st;
        let mut done = Vec::new();
        let mut prioritized = false;
        let Some(q) = st.queues.get_mut(queue) else {
            return Ok(done);
        };
        let chosen: Vec<(i64, JobId)> = q
            .dead
            .iter()
            .copied()
            .filter(|(_, id)| ids.is_empty() || ids.contains(id))
            .collect();
        for (t, id) in chosen {
            q.dead.remove(&(t, id));
            let Some(rec) = st
                .records
                .get_mut(&id)
                .filter(|r| r.expires_at.is_none_or(|e| e > now))
            else {
                continue;
            };
            rec.job = rec.job.fresh_attempt();
            rec.expires_at = None;
            // A revoke of its last run (it failed for good even so) does
            // not reach the new one.
            st.revoked.remove(&id);
            prioritized |= q.make_ready(id, 0, rec.job.priority);
            done.push(id);
        }
        if !done.is_empty() {
            q.note(now, []);
            st.signal_ready(queue, prioritized);
        }
        Ok(done)
    }

    async fn purge(&self, queue: &str, filter: &PurgeFilter) -> BrokerResult<Vec<JobId>> {
        let now = now_ms();
        let at = Utc::now();
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(q) = st.queues.get_mut(queue) else {
            return Ok(Vec::new());
        };
        let records = &mut st.records;
        // Taken: a queued job the filter picks. Dropped as well (not on a
        // dry run): an entry whose record is gone or already final (a job
        // revoked before it ran, skipped when popped).
        let mut taken = Vec::new();
        let mut verdict = |id: &JobId| -> bool {
            match records
                .get(id)
                .filter(|r| r.expires_at.is_none_or(|e| e > now))
            {
                Some(r) if filter.takes(&r.job) => {
                    taken.push(*id);
                    true
                }
                Some(r) => r.job.state.is_final(),
                None => true,
            }
        };
        if filter.delayed {
            let gone: Vec<_> = q
                .delayed
                .iter()
                .filter(|(_, id, _)| verdict(id))
                .copied()
                .collect();
            if !filter.dry_run {
                for e in gone {
                    q.delayed.remove(&e);
                }
            }
        }
        if filter.ready {
            let keep: BTreeSet<_> = q
                .prio
                .iter()
                .filter(|(_, _, id, _)| !verdict(id))
                .copied()
                .collect();
            if !filter.dry_run {
                q.prio = keep;
            }
            let keep: VecDeque<_> = q
                .ready
                .iter()
                .filter(|(id, _)| !verdict(id))
                .copied()
                .collect();
            if !filter.dry_run {
                q.ready = keep;
            }
        }
        if filter.dry_run {
            return Ok(taken);
        }
        for id in &taken {
            if let Some(r) = records.get_mut(id) {
                r.job = r.job.revoked(PURGED, at);
                r.expires_at = Some(now + r.job.result_ttl_ms as i64);
            }
        }
        if !taken.is_empty() {
            q.note(now, taken.iter().map(|_| JobState::Revoked));
        }
        let ended: Vec<(JobId, JobState)> =
            taken.iter().map(|id| (*id, JobState::Revoked)).collect();
        st.outbox_ends(queue, &ended, now);
        drop(guard);
        for id in &taken {
            self.emit(*id, queue, JobState::Revoked);
        }
        Ok(taken)
    }

    async fn scheduled(
        &self,
        queue: &str,
        limit: usize,
    ) -> BrokerResult<Vec<(chrono::DateTime<Utc>, Job)>> {
        let now = now_ms();
        let st = self.lock();
        let Some(q) = st.queues.get(queue) else {
            return Ok(Vec::new());
        };
        Ok(q.delayed
            .iter()
            .filter_map(|(due, id, _)| {
                let job = &st.record(id, now)?.job;
                (!job.state.is_final()).then(|| (ms_to_time(*due), job.clone()))
            })
            .take(limit)
            .collect())
    }

    async fn inspect(&self, timeout: Duration) -> BrokerResult<Vec<WorkerSnapshot>> {
        let reply = uuid::Uuid::new_v4().to_string();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let asked = {
            let mut st = self.lock();
            st.replies.insert(reply.clone(), tx);
            st.signal(
                None,
                Signal::Inspect {
                    reply: reply.clone(),
                },
            )
        };
        // Forgotten however the wait ends: also when whoever asked is
        // gone (an HTTP client that hung up drops this future).
        struct Forget<'a>(&'a EmbeddedBroker, String);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.lock().replies.remove(&self.1);
            }
        }
        let _forget = Forget(self, reply);
        let answers = futures::stream::poll_fn(|cx| rx.poll_recv(cx));
        Ok(gather_answers(answers, asked, timeout).await)
    }

    async fn answer(&self, reply: &str, snapshot: &WorkerSnapshot) -> BrokerResult<()> {
        // An answer nobody waits for any more is dropped, as on Redis.
        if let Some(tx) = self.lock().replies.get(reply) {
            let _ = tx.send(snapshot.clone());
        }
        Ok(())
    }

    async fn list(&self, query: &JobQuery) -> BrokerResult<JobPage> {
        let now = now_ms();
        let mut st = self.lock();
        st.sweep(now);
        let names: Vec<String> = match query.queues.as_slice() {
            [_, ..] => query.queues.clone(),
            [] => {
                let mut names: Vec<String> = st.queues.keys().cloned().collect();
                names.sort();
                names
            }
        };
        let (upper, lower) = query.id_range();
        let range = (
            lower.map_or(Bound::Unbounded, |b| Bound::Included(b.id())),
            upper.map_or(Bound::Unbounded, |b| Bound::Excluded(b.id())),
        );
        // `since` after `until` (or after the cursor) holds nothing, and a
        // range given its ends the wrong way round panics.
        let empty = matches!((lower, upper), (Some(l), Some(u)) if l.id() > u.id());
        let st = &*st;
        let windows = names
            .into_iter()
            .map(|queue| {
                let q = st.queues.get(&queue).filter(|_| !empty);
                let ids = q.map_or_else(Vec::new, |q| {
                    q.index
                        .range(range)
                        .rev()
                        // An ended state's own index, as in Redis.
                        .filter(|id| {
                            query.indexed_state().is_none_or(|s| {
                                st.record(id, now).is_some_and(|r| r.job.state == s)
                            })
                        })
                        .take(query.window())
                        .copied()
                        .collect()
                });
                Window { queue, ids }
            })
            .collect();
        let mut walk = Walk::new(query, windows);
        loop {
            let chunk = walk.next_chunk();
            if chunk.is_empty() {
                break;
            }
            let jobs = chunk.iter().map(|(_, id)| st.shown(*id, now)).collect();
            walk.feed(jobs);
        }
        Ok(walk.page())
    }

    async fn wf_create(&self, id: JobId, spec: &str, total: u64, made: i64) -> BrokerResult<bool> {
        let now = now_ms();
        let mut st = self.lock();
        if st.workflow(id, now).is_some() {
            return Ok(false);
        }
        let fields = HashMap::from([
            (SPEC.to_string(), spec.to_string()),
            (STATE.to_string(), WfState::Running.as_str().to_string()),
            (DONE.to_string(), "0".to_string()),
            (TOTAL.to_string(), total.to_string()),
            (CREATED.to_string(), now.to_string()),
            (MADE.to_string(), made.to_string()),
        ]);
        st.workflows
            .insert(id, (fields, now + RUNNING_TTL.as_millis() as i64));
        Ok(true)
    }

    async fn wf_read(&self, id: JobId) -> BrokerResult<Option<WfStored>> {
        let now = now_ms();
        let mut st = self.lock();
        Ok(st
            .workflow(id, now)
            .and_then(|f| WfStored::from_fields(f.clone())))
    }

    async fn wf_spec(&self, id: JobId) -> BrokerResult<Option<String>> {
        let now = now_ms();
        let mut st = self.lock();
        Ok(st.workflow(id, now).and_then(|f| f.get(SPEC).cloned()))
    }

    async fn wf_mark(
        &self,
        id: JobId,
        made: i64,
        marks: &[WfMark],
        ttl: Duration,
    ) -> BrokerResult<Option<WfMarked>> {
        let now = now_ms();
        let mut st = self.lock();
        let Some((f, until)) = st.workflows.get_mut(&id).filter(|(_, u)| *u > now) else {
            return Ok(None);
        };
        if f.get(MADE).is_some_and(|m| *m != made.to_string()) {
            return Ok(None);
        }
        let was = f.get(STATE).and_then(|s| WfState::parse(s));
        let mut state = was.unwrap_or(WfState::Running);
        let num = |f: &HashMap<String, String>, k: &str| {
            f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        let mut ended = 0;
        // The counters this call moved, and the uncounted marks it added.
        let mut moved: Vec<&str> = Vec::new();
        let mut fresh = Vec::with_capacity(marks.len());
        for m in marks {
            let new = !f.contains_key(&m.field);
            fresh.push(new);
            if new {
                f.insert(m.field.clone(), m.value.clone());
                if m.kind != MarkKind::Complete {
                    ended += 1;
                }
            }
            if let Some(k) = &m.counter
                && new
            {
                let c = num(f, k) + 1;
                f.insert(k.clone(), c.to_string());
                moved.push(k);
            }
            if m.kind == MarkKind::Failure && new && state == WfState::Running {
                state = WfState::Failed;
                let path = m.field.strip_prefix("r:").unwrap_or(&m.field);
                f.insert(STATE.into(), state.as_str().into());
                f.insert(FAILED.into(), path.to_string());
                f.insert(FINISHED.into(), now.to_string());
                *until = now + ttl.as_millis() as i64;
            }
        }
        // As Redis: each mark's counter as it is after the whole call.
        let counts = marks
            .iter()
            .map(|m| m.counter.as_ref().map_or(0, |k| num(f, k)))
            .collect();
        let fresh = marks
            .iter()
            .zip(fresh)
            .map(|(m, new)| match &m.counter {
                Some(k) if m.kind != MarkKind::Failure => moved.contains(&k.as_str()),
                _ => new,
            })
            .collect();
        let done = num(f, DONE) + ended;
        f.insert(DONE.into(), done.to_string());
        let failed = f.get(FAILED).cloned().filter(|_| state == WfState::Failed);
        drop(st);
        if ended > 0 || Some(state) != was {
            let _ = self.events.send(super::workflow::event(id, state, done));
        }
        Ok(Some(WfMarked {
            state,
            done,
            failed,
            counts,
            fresh,
        }))
    }

    async fn wf_fields(&self, id: JobId, fields: &[String]) -> BrokerResult<Vec<Option<String>>> {
        let now = now_ms();
        let mut st = self.lock();
        let f = st.workflow(id, now);
        Ok(fields
            .iter()
            .map(|k| f.as_ref().and_then(|f| f.get(k).cloned()))
            .collect())
    }

    async fn wf_launched(
        &self,
        id: JobId,
        launched: &[(String, JobId)],
    ) -> BrokerResult<Option<WfState>> {
        let now = now_ms();
        let mut st = self.lock();
        let Some(f) = st.workflow(id, now) else {
            return Ok(None);
        };
        for (path, job) in launched {
            f.insert(format!("l:{path}"), job.to_string());
        }
        Ok(f.get(STATE).and_then(|s| WfState::parse(s)))
    }

    async fn wf_end(&self, id: JobId, to: WfState, ttl: Duration) -> BrokerResult<Option<WfState>> {
        let now = now_ms();
        let mut st = self.lock();
        let Some((f, until)) = st.workflows.get_mut(&id).filter(|(_, u)| *u > now) else {
            return Ok(None);
        };
        let state = f.get(STATE).and_then(|s| WfState::parse(s));
        if state != Some(WfState::Running) {
            return Ok(state);
        }
        f.insert(STATE.into(), to.as_str().into());
        f.insert(FINISHED.into(), now.to_string());
        *until = now + ttl.as_millis() as i64;
        let done = f.get(DONE).and_then(|v| v.parse().ok()).unwrap_or(0);
        drop(st);
        let _ = self.events.send(super::workflow::event(id, to, done));
        Ok(Some(to))
    }

    async fn outbox_done(&self, queue: &str, ids: &[JobId]) -> BrokerResult<()> {
        let mut st = self.lock();
        if let Some(q) = st.queues.get_mut(queue) {
            for id in ids {
                q.wfout.remove(id);
            }
        }
        Ok(())
    }

    async fn outbox_later(&self, queue: &str, ids: &[JobId], after: Duration) -> BrokerResult<()> {
        let shift = super::workflow::later_shift(after).as_millis();
        let at = now_ms().saturating_add(i64::try_from(shift).unwrap_or(i64::MAX));
        let mut st = self.lock();
        if let Some(q) = st.queues.get_mut(queue) {
            for id in ids {
                if let Some(t) = q.wfout.get_mut(id) {
                    *t = at;
                }
            }
        }
        Ok(())
    }

    async fn outbox(
        &self,
        queue: &str,
        min_age: Duration,
        limit: usize,
    ) -> BrokerResult<Vec<JobId>> {
        let now = now_ms();
        let st = self.lock();
        let Some(q) = st.queues.get(queue) else {
            return Ok(Vec::new());
        };
        Ok(q.outbox_entries(now, min_age.as_millis() as i64)
            .into_iter()
            .take(limit)
            .map(|(_, id)| id)
            .collect())
    }

    async fn running(&self, queue: &str) -> BrokerResult<Vec<Job>> {
        let now = now_ms();
        let st = self.lock();
        let Some(q) = st.queues.get(queue) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Job> = q
            .leases
            .keys()
            .filter_map(|m| {
                let member = LeaseMember::parse(m)?;
                let mut job = st.record(&member.id, now)?.job.clone();
                member.show_started(&mut job);
                Some(job)
            })
            .collect();
        out.sort_by_key(|j| j.started_at);
        Ok(out)
    }
}
