//! The dispatcher: one loop owns every conversation with the broker, so
//! that settlements that finish close together and the next lease go out
//! as one call. It wakes on a broker signal, its own timer for the earliest
//! due time, a finished job, or its heartbeat / lease-extension ticks.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument as _;

use super::prefetch::Prefetcher;
use super::run::{execute, run_limits};
use super::settle::revoked_before_start;
use super::slots::{self, Slots};
use super::{RunCtx, WorkerStats, hostname};
use crate::queue::{
    BrokerError, Completion, Delivery, HeldJob, Job, JobId, JobState, Lease, SettleReply,
    SettleRequest, Settlement, Signal, WorkerInfo, WorkerSnapshot,
};
use crate::sandbox::{CancelToken, FuelMeter};

struct QueueView {
    /// The queue may have ready jobs.
    maybe_work: bool,
    /// It may have ready jobs with a priority: a fetch reads them first
    /// (one command more), until one finds none left.
    maybe_prio: bool,
    /// Move due jobs and reclaim lost leases on the next call.
    due_check: bool,
    next_due: Option<DateTime<Utc>>,
    /// When jobs leased by a call whose reply was lost come back: a due
    /// check then reclaims them (the broker leaves our own leases out of
    /// `next_due`).
    orphan_check: Option<DateTime<Utc>>,
    /// Registered as idle in the queue for this many jobs (0: not
    /// registered): an enqueue may lease them straight to this worker
    /// ([`Signal::Pushed`]). What all queues' registrations offer together
    /// is at most [`Worker::capacity`] (see `talk`).
    registered: usize,
    /// A push to this worker is on its way (its call found the marker):
    /// fetch nothing until it arrives, or until then at the latest.
    awaiting_push: Option<Instant>,
}

impl QueueView {
    /// Jobs may be leased to this worker without its knowing (a call whose
    /// reply was lost, a push that never arrived): they come back when
    /// their lease runs out, unextended, so look again a little after.
    /// (The broker leaves this worker's own leases out of `next_due` while
    /// it holds any: only the safety check, every 15 minutes, would find
    /// them otherwise.) One look after the latest such lease finds them
    /// all; an earlier one would find the later ones still leased.
    fn look_for_orphans(&mut self, lease: Duration) {
        let at = Utc::now()
            + chrono::Duration::milliseconds(lease.as_millis().min(i64::MAX as u128) as i64 + 100);
        self.orphan_check = Some(self.orphan_check.map_or(at, |d| d.max(at)));
    }
}

struct Held {
    lease: Lease,
    cancel: CancelToken,
    started: bool,
    /// Revoked before it started: settle as REVOKED instead of running it.
    revoked: bool,
    /// What an inspect request shows of it (`started_at` set once it runs).
    shown: HeldJob,
    meter: FuelMeter,
    /// When it was leased, and when its run started.
    leased: Instant,
    run_started: Option<Instant>,
    /// Its lease was lost (an extension found it gone) and its run told
    /// to stop: a lease of the job that comes now runs it anew, once this
    /// run has ended (`next`).
    lost: bool,
    next: Option<Delivery>,
}

/// The loop that owns every conversation with the broker.
pub(super) struct Dispatcher {
    ctx: Arc<RunCtx>,
    id: String,
    started_at: DateTime<Utc>,
    queues: HashMap<String, QueueView>,
    order: Vec<String>,
    held: HashMap<JobId, Held>,
    buffer: VecDeque<Delivery>,
    running: JoinSet<(Delivery, Completion)>,
    pending: HashMap<String, Vec<Completion>>,
    /// When the oldest unsettled result of each queue came in.
    pending_since: HashMap<String, Instant>,
    /// Results the broker refused as stale (their leases ran out before
    /// they were stored), kept a while with when they were refused: a
    /// lease of the same job and attempt that comes to this worker stores
    /// its result rather than running it again ([`Self::reuse_result`]).
    refused: HashMap<JobId, (Completion, Instant)>,
    stats: WorkerStats,
    /// Since when the broker has been unreachable.
    outage: Option<Instant>,
    /// How many jobs to lease ahead of a free slot (`prefetch.rs`).
    prefetch: Prefetcher,
    /// How many jobs run at once (`slots.rs`).
    slots: Slots,
    /// Jobs leased ahead were handed back because every slot stayed busy:
    /// nothing is leased ahead until a run ends (else the same jobs would
    /// come straight back).
    stalled: bool,
}

impl Dispatcher {
    pub(super) fn new(ctx: Arc<RunCtx>, id: String) -> Self {
        Dispatcher {
            id,
            started_at: Utc::now(),
            queues: ctx
                .cfg
                .queues
                .iter()
                .map(|q| {
                    (
                        q.clone(),
                        QueueView {
                            maybe_work: true,
                            maybe_prio: true,
                            due_check: true,
                            next_due: None,
                            orphan_check: None,
                            registered: 0,
                            awaiting_push: None,
                        },
                    )
                })
                .collect(),
            order: ctx.cfg.queues.clone(),
            held: HashMap::new(),
            buffer: VecDeque::new(),
            running: JoinSet::new(),
            pending: HashMap::new(),
            pending_since: HashMap::new(),
            refused: HashMap::new(),
            stats: WorkerStats::default(),
            outage: None,
            prefetch: Prefetcher::new(ctx.cfg.prefetch, ctx.cfg.concurrency),
            slots: Slots::new(
                ctx.cfg.concurrency,
                ctx.cfg.max_concurrency,
                ctx.busy_ns.clone(),
                ctx.loading.clone(),
            ),
            stalled: false,
            ctx,
        }
    }

    pub(super) async fn run(
        &mut self,
        mut signals: mpsc::UnboundedReceiver<Signal>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<WorkerStats> {
        let cfg = self.ctx.cfg.clone();
        let mut heartbeat = tokio::time::interval(cfg.heartbeat);
        let extend_every = (cfg.lease / 3).max(Duration::from_millis(50));
        let mut extend = tokio::time::interval_at(Instant::now() + extend_every, extend_every);
        let mut safety =
            tokio::time::interval_at(Instant::now() + cfg.safety_check, cfg.safety_check);
        let mut retry_at: Option<Instant> = None;
        tokio::pin!(shutdown);
        let mut adapt = tokio::time::interval_at(Instant::now() + slots::WINDOW, slots::WINDOW);
        tracing::info!(worker = %self.id, queues = ?cfg.queues, concurrency = cfg.concurrency, max_concurrency = self.slots.max(), "worker started");

        // Nothing held when the loop last looked.
        let mut was_idle = true;
        loop {
            // Lease extensions run while jobs are held: a period after the
            // loop sees the first (leased by a call, or pushed while it
            // waited), not at once in a burst of the ticks missed while
            // idle.
            let idle = self.held.is_empty();
            if idle || was_idle {
                extend.reset();
            }
            was_idle = idle;
            self.start_buffered();
            self.hand_back_if_stalled();
            let now = Instant::now();
            self.slots.note(now, self.running.len(), self.saturated());
            if retry_at.is_none_or(|t| t <= now) {
                retry_at = None;
                if let Err(e) = self.talk().await {
                    retry_at = Some(Instant::now() + self.outage_backoff(&e));
                }
            }
            let sleep_until = self
                .next_timer(retry_at)
                .map(|t| t.min(retry_at.unwrap_or(t)))
                .or(retry_at);
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    match done {
                        Ok((d, c)) => self.finished(d, c),
                        // `run::execute` settles panics itself; nothing else
                        // runs in the task, and nothing aborts it.
                        Err(e) => tracing::error!(error = %e, "a job's task ended without a completion"),
                    }
                    // Take every other job that ended meanwhile: one settle call for all.
                    while let Some(Ok((d, c))) = self.running.try_join_next() {
                        self.finished(d, c);
                    }
                }
                s = signals.recv() => match s {
                    Some(s) => self.on_signal(s),
                    None => match self.resubscribe(shutdown.as_mut()).await? {
                        Some(s) => signals = s,
                        None => break,
                    },
                },
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = adapt.tick(), if self.slots.adaptive() => self.adapt(),
                _ = extend.tick(), if !self.held.is_empty() => self.extend().await,
                _ = safety.tick() => {
                    for q in self.queues.values_mut() {
                        q.due_check = true;
                        q.maybe_work = true;
                        q.maybe_prio = true;
                    }
                }
                _ = sleep_until_opt(sleep_until) => {
                    let now = Utc::now();
                    let instant = Instant::now();
                    let lease = self.ctx.cfg.lease;
                    for q in self.queues.values_mut() {
                        if q.awaiting_push.is_some_and(|t| t <= instant) {
                            // The push never came (lost with the signal
                            // connection): its jobs are leased to us.
                            q.awaiting_push = None;
                            q.look_for_orphans(lease);
                        }
                        if q.next_due.is_some_and(|t| t <= now) {
                            q.next_due = None;
                            q.due_check = true;
                        }
                        if q.orphan_check.is_some_and(|t| t <= now) {
                            q.orphan_check = None;
                            q.due_check = true;
                        }
                    }
                }
            }
        }
        self.shut_down(extend_every, &mut signals).await;
        Ok(self.stats.clone())
    }

    /// Every slot is busy and more work waits: leased ahead, or in a queue.
    fn saturated(&self) -> bool {
        self.running.len() >= self.slots.current()
            && (!self.buffer.is_empty() || self.queues.values().any(|q| q.maybe_work))
    }

    /// Ends a window of the adaptive slots (`slots.rs`).
    fn adapt(&mut self) {
        let before = self.slots.current();
        let now = Instant::now();
        self.slots.note(now, self.running.len(), self.saturated());
        if let Some(n) = self.slots.adapt(now) {
            tracing::info!(from = before, to = n, "slots adapted");
            self.prefetch.set_concurrency(n);
            // More slots: more jobs to fetch.
            if n > before {
                for q in self.queues.values_mut() {
                    q.maybe_work = true;
                }
            }
        }
    }

    fn capacity(&self) -> usize {
        let ahead = self.prefetch.ahead(self.is_stalled());
        (self.slots.current() + ahead).saturating_sub(self.held.len())
    }

    /// When every slot is busy, since when the oldest job leased ahead has
    /// waited for one (`None`: a slot is free, or nothing waits).
    fn waiting_since(&self) -> Option<Instant> {
        if self.running.len() < self.slots.current() {
            return None;
        }
        self.buffer
            .iter()
            .find_map(|d| self.held.get(&d.job.id))
            .map(|h| h.leased)
    }

    /// When the jobs leased ahead are to be handed back: every slot has
    /// been busy for longer than the prefetch lets a job wait.
    fn hand_back_at(&self) -> Option<Instant> {
        Some(self.waiting_since()? + self.prefetch.hand_back_after()?)
    }

    /// Jobs leased ahead are due to be handed back, or were and no run
    /// ended since.
    fn is_stalled(&self) -> bool {
        self.stalled || self.hand_back_at().is_some_and(|t| t <= Instant::now())
    }

    /// Hands the jobs waiting for a slot back to their queues when every
    /// slot has been busy too long (slow jobs hold no others hostage):
    /// another worker takes them.
    fn hand_back_if_stalled(&mut self) {
        if self.hand_back_at().is_none_or(|t| t > Instant::now()) {
            return;
        }
        self.stalled = true;
        let mut n = 0;
        while let Some(d) = self.buffer.pop_front() {
            if self.held.contains_key(&d.job.id) && self.hand_back(d) {
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(
                count = n,
                "every slot busy too long: handed back the jobs leased ahead"
            );
        }
    }

    /// Gives a job leased ahead back to its queue, or, if it was revoked
    /// while it waited, ends it REVOKED (handed back, another worker could
    /// run it before learning of the revoke). Says whether it went back.
    fn hand_back(&mut self, d: Delivery) -> bool {
        let revoked = self.held.get(&d.job.id).is_some_and(|h| h.revoked);
        let c = if revoked {
            revoked_before_start(&d)
        } else {
            Completion {
                lease: d.lease.clone(),
                settlement: Settlement::Release { started: false },
                had_progress: false,
            }
        };
        self.finished(d, c);
        !revoked
    }

    fn start_buffered(&mut self) {
        while self.running.len() < self.slots.current() {
            let Some(d) = self.buffer.pop_front() else {
                break;
            };
            let Some(h) = self.held.get_mut(&d.job.id) else {
                continue;
            };
            if h.revoked {
                let c = revoked_before_start(&d);
                self.finished(d, c);
                continue;
            }
            h.started = true;
            h.shown.started_at = Some(Utc::now());
            h.run_started = Some(Instant::now());
            let cancel = h.cancel.clone();
            let meter = h.meter.clone();
            let ctx = self.ctx.clone();
            let span = tracing::info_span!(
                "job",
                job = %d.job.id,
                task = d.job.task.as_deref().unwrap_or(""),
                queue = %d.lease.queue,
                attempt = d.job.attempt,
            );
            self.running.spawn(
                slots::Timed::new(
                    async move {
                        let c = execute(&ctx, &d, cancel, meter).await;
                        (d, c)
                    },
                    self.slots.polled(),
                )
                .instrument(span),
            );
        }
    }

    fn finished(&mut self, d: Delivery, mut c: Completion) {
        let mut next = None;
        if let Some(h) = self.held.remove(&d.job.id) {
            if h.lost {
                // Its lease is gone: what it says is stale. A run it was
                // told to stop ends REVOKED, which nobody asked for: that
                // is dropped (stored under a lease that came meanwhile,
                // it would end the job).
                next = h.next;
            } else {
                // Settled under the lease held now (see [`Self::take`]).
                c.lease = h.lease;
            }
            if let Some(t) = h.run_started {
                self.prefetch.observe(t.elapsed());
                // A slot is free: lease ahead again.
                self.stalled = false;
            }
            if h.lost && reusable_attempt(&c).is_none() {
                if let Some(n) = next {
                    self.take_next(n);
                }
                return;
            }
        }
        match &c.settlement {
            Settlement::Finish { job, .. } => {
                self.stats.processed += 1;
                match job.state {
                    JobState::Success => self.stats.succeeded += 1,
                    _ => self.stats.failed += 1,
                }
            }
            Settlement::Retry { .. } => {
                self.stats.processed += 1;
                self.stats.retried += 1;
            }
            Settlement::Release { .. } => self.stats.handed_back += 1,
        }
        self.pending_since
            .entry(d.lease.queue.clone())
            .or_insert_with(Instant::now);
        self.pending
            .entry(d.lease.queue.clone())
            .or_default()
            .push(c);
        // Leased again while the run stopped: its result (just kept, and
        // refused as stale once sent) or a run of its own.
        if let Some(n) = next {
            self.take_next(n);
        }
    }

    /// A lease that came while a stopped run ended ([`Held::next`]): its
    /// result stored under it when this worker holds one, else taken, or
    /// handed back at once when the worker stops (its buffer was emptied
    /// already, and nothing may start now).
    fn take_next(&mut self, n: Delivery) {
        if !self.ctx.shutting_down.load(Ordering::Relaxed) {
            self.take(n);
        } else if !self.reuse_result(&n) {
            self.hand_back(n);
        }
    }

    /// One settle call per queue that has something to say.
    async fn talk(&mut self) -> Result<(), BrokerError> {
        let shutting = self.ctx.shutting_down.load(Ordering::Relaxed);
        let n = self.order.len();
        // Rotate so that no queue is always served first.
        if n > 1 {
            self.order.rotate_left(1);
        }
        for q in self.order.clone() {
            let completions = self.pending.remove(&q).unwrap_or_default();
            let view = self.queues.get(&q);
            let due_check = view.is_some_and(|v| v.due_check) && !shutting;
            // Fetch only when the jobs at hand no longer fill the slots, and
            // not before jobs pushed to this worker arrived (they are older).
            let awaiting = view
                .and_then(|v| v.awaiting_push)
                .is_some_and(|t| t > Instant::now());
            let need_jobs = self.buffer.len() < self.slots.current() && !awaiting;
            let want =
                if shutting || !need_jobs || !(view.is_some_and(|v| v.maybe_work) || due_check) {
                    0
                } else {
                    self.capacity()
                };
            // Results wait a little for company (one call stores many), but
            // never when the worker would otherwise sit idle.
            let batch_target = self.slots.current() + self.prefetch.ahead(false);
            let flush = !completions.is_empty()
                && (shutting
                    || self.running.is_empty()
                    || want > 0
                    || completions.len() >= batch_target
                    || self
                        .pending_since
                        .get(&q)
                        .is_some_and(|t| t.elapsed() >= FLUSH_AFTER));
            // What this queue's registration may offer: the capacity
            // the others' registrations leave. Each push uses up its
            // registration and takes no more jobs than it offered, so the
            // worker is never pushed more than it can take, even by jobs
            // enqueued at once in all its queues.
            let others: usize = self
                .queues
                .iter()
                .filter(|(k, _)| **k != q)
                .map(|(_, v)| v.registered)
                .sum();
            let room = self.capacity().saturating_sub(others);
            // Free slots: a call made anyway also fetches, so that finding
            // the queue empty registers them for pushes (`idle`).
            let idle = if shutting || !need_jobs {
                0
            } else {
                self.idle_slots(n).min(room)
            };
            let offered = view.map_or(0, |v| v.registered);
            let registered = offered > 0;
            // A worker that stops ends its registration as idle, and so
            // does one whose registration offers more than it can now take
            // (its capacity shrank: leases ahead, fewer slots).
            let unregister = registered && (shutting || offered > room);
            let want = if want == 0 && idle > 0 && (flush || due_check) {
                self.capacity()
            } else {
                want
            };
            if !flush && want == 0 && !due_check && !unregister {
                if !completions.is_empty() {
                    self.pending.insert(q.clone(), completions);
                }
                continue;
            }
            self.pending_since.remove(&q);
            let holds_leases = self.held.values().any(|h| h.lease.queue == q);
            let completions: Arc<[Completion]> = completions.into();
            let req = SettleRequest {
                queue: q.clone(),
                worker: self.id.clone(),
                completions: completions.clone(),
                fetch: want,
                due_check,
                holds_leases,
                lease: self.ctx.cfg.lease,
                prioritized: want > 0 && view.is_some_and(|v| v.maybe_prio),
                idle: if want > 0 { idle } else { 0 },
                registered,
            };
            let asked_prio = req.prioritized;
            let reply = match self.ctx.broker.settle(req).await {
                Ok(r) => r,
                Err(e) => {
                    // Keep the results: they are settled when the broker is back.
                    self.pending
                        .entry(q.clone())
                        .or_default()
                        .extend(completions.iter().cloned());
                    self.pending_since
                        .entry(q.clone())
                        .or_insert_with(Instant::now);
                    // The call may have leased jobs whose reply was lost.
                    if let Some(v) = self.queues.get_mut(&q) {
                        v.look_for_orphans(self.ctx.cfg.lease);
                    }
                    return Err(e);
                }
            };
            self.recovered();
            self.advance_workflows(&q, &completions, &reply);
            for id in &reply.stale {
                tracing::warn!(job = %id, "lease was lost before the result was stored; another run owns it");
            }
            self.keep_refused(&completions, &reply.stale);
            if !reply.stale.is_empty() {
                metrics::counter!("runner_leases_lost_total", "queue" => q.clone())
                    .increment(reply.stale.len() as u64);
            }
            if reply.reclaimed > 0 {
                tracing::info!(queue = %q, count = reply.reclaimed, "took back the leases of a lost worker");
                metrics::counter!("runner_leases_reclaimed_total", "queue" => q.clone())
                    .increment(reply.reclaimed as u64);
            }
            if let Some(v) = self.queues.get_mut(&q) {
                if due_check {
                    v.due_check = false;
                    v.next_due = reply.next_due;
                }
                if let Some(t) = reply.deferred_until {
                    metrics::counter!("runner_rate_limit_deferrals_total", "queue" => q.clone())
                        .increment(1);
                    v.next_due = Some(v.next_due.map_or(t, |d| d.min(t)));
                }
                // Only a fetch that took fewer entries than asked says the
                // queue is empty: jobs deferred by a rate limit (or dropped
                // as expired) were taken too, and more may wait behind them.
                // (A call that leased nothing because a push is on its way
                // found nothing out.)
                if want > 0 && !reply.push_in_flight {
                    v.maybe_work = reply.popped >= want;
                }
                if asked_prio {
                    v.maybe_prio = reply.prioritized_left;
                }
                v.registered = reply.offered;
                v.awaiting_push = reply.push_in_flight.then(|| Instant::now() + PUSH_WAIT);
            }
            for d in reply.deliveries {
                self.take(d);
            }
            self.start_buffered();
        }
        Ok(())
    }

    /// How many jobs an enqueue may push to this worker per queue: none
    /// while no slot is free (a busy worker leaves them to idle ones),
    /// else what a lease call would take now (the free slots and the
    /// prefetch ahead of them, [`Self::capacity`]), shared among the
    /// `queues`; at least one per queue (`talk` then keeps the sum within
    /// the capacity).
    fn idle_slots(&self, queues: usize) -> usize {
        let busy = self.running.len() + self.buffer.len();
        if self.slots.current() <= busy {
            return 0;
        }
        (self.capacity() / queues.max(1)).max(1)
    }

    /// Holds a leased job: it waits in the buffer for a slot. A job held
    /// already was leased to this worker again: its lease ran out
    /// unextended (a broker outage longer than the lease) and a due check
    /// put it back. It keeps its place, or its run, under the new lease (the
    /// one extended and settled from now on): it is not run twice.
    ///
    /// A job whose run was told to stop because its lease was lost waits
    /// for that run to end, then runs anew. A job whose result this worker
    /// holds is not run again: the result is stored under the new lease.
    fn take(&mut self, d: Delivery) {
        if let Some(h) = self.held.get_mut(&d.job.id) {
            if h.lease.member != d.lease.member {
                if h.lost {
                    tracing::warn!(job = %d.job.id, "leased again while its run stops for a lost lease: runs anew once stopped");
                    h.next = Some(d);
                } else {
                    tracing::warn!(job = %d.job.id, "leased again while held (its lease ran out): kept, under the new lease");
                    h.lease = d.lease;
                    h.shown.redeliveries = h.lease.redeliveries;
                }
            }
            return;
        }
        if self.reuse_result(&d) {
            return;
        }
        let shown = HeldJob {
            id: d.job.id,
            queue: d.lease.queue.clone(),
            task: d.job.task.clone(),
            attempt: d.job.attempt,
            redeliveries: d.lease.redeliveries,
            leased_at: d.leased_at,
            started_at: None,
            fuel_used: None,
            fuel_limit: run_limits(&self.ctx.cfg.default_limits, &d.job).fuel,
        };
        self.held.insert(
            d.job.id,
            Held {
                lease: d.lease.clone(),
                cancel: CancelToken::new(),
                started: false,
                revoked: false,
                shown,
                meter: FuelMeter::default(),
                leased: Instant::now(),
                run_started: None,
                lost: false,
                next: None,
            },
        );
        self.buffer.push_back(d);
    }

    /// The job of `d` ended in this worker already (same attempt, under an
    /// earlier lease of this delivery), and its
    /// result waits to be stored, or was refused as stale (its lease ran
    /// out during an outage and a due check put the job back): the result
    /// is stored under `d`'s lease. Its run is not repeated.
    fn reuse_result(&mut self, d: &Delivery) -> bool {
        // A lease after the result's: the job was put back (its count of
        // redeliveries grew), not replayed (a replay starts again at 0).
        let same = |c: &Completion| {
            c.lease.id == d.job.id
                && d.lease.redeliveries > c.lease.redeliveries
                && reusable_attempt(c) == Some(d.job.attempt)
        };
        let q = &d.lease.queue;
        if let Some(c) = self
            .pending
            .get_mut(q)
            .and_then(|v| v.iter_mut().find(|c| same(c)))
        {
            tracing::warn!(job = %d.job.id, "leased again before its result was stored: stored under the new lease");
            c.lease = d.lease.clone();
            return true;
        }
        match self.refused.remove(&d.job.id) {
            Some((mut c, _)) if same(&c) => {
                tracing::warn!(job = %d.job.id, "leased again after its result was refused as stale: stored under the new lease");
                c.lease = d.lease.clone();
                self.pending_since
                    .entry(q.clone())
                    .or_insert_with(Instant::now);
                self.pending.entry(q.clone()).or_default().push(c);
                true
            }
            _ => false,
        }
    }

    /// Keeps the results in `completions` that the broker refused as
    /// `stale`, for three leases, at most [`REFUSED_KEPT`].
    fn keep_refused(&mut self, completions: &[Completion], stale: &[JobId]) {
        let keep_for = self.ctx.cfg.lease.saturating_mul(3);
        self.refused.retain(|_, (_, at)| at.elapsed() < keep_for);
        for c in completions {
            if self.refused.len() >= REFUSED_KEPT {
                break;
            }
            if stale.contains(&c.lease.id) && reusable_attempt(c).is_some() {
                self.refused.insert(c.lease.id, (c.clone(), Instant::now()));
            }
        }
    }

    /// Applies the ends of workflow members this settle stored (and the
    /// stale outbox entries its due check found) in the background
    /// ([`crate::workflow::Workflows::apply_soon`]).
    fn advance_workflows(&self, queue: &str, completions: &[Completion], reply: &SettleReply) {
        let ended: Vec<Job> = completions
            .iter()
            .filter(|c| !reply.stale.contains(&c.lease.id))
            .filter_map(|c| match &c.settlement {
                Settlement::Finish { job, .. } if job.workflow.is_some() => Some(job.clone()),
                _ => None,
            })
            .collect();
        self.ctx
            .workflows
            .apply_soon(queue, ended, reply.outbox.clone());
    }

    fn outage_backoff(&mut self, e: &BrokerError) -> Duration {
        let since = *self.outage.get_or_insert_with(|| {
            tracing::warn!(error = %e, "broker unreachable; keeping results and retrying with backoff");
            Instant::now()
        });
        let secs = since.elapsed().as_secs_f64();
        Duration::from_millis((100.0 * 2f64.powf(secs.min(6.0))).min(5000.0) as u64)
    }

    fn recovered(&mut self) {
        if let Some(since) = self.outage.take() {
            tracing::info!(after = ?since.elapsed(), "broker reachable again");
            for v in self.queues.values_mut() {
                v.due_check = true;
                v.maybe_work = true;
                v.maybe_prio = true;
            }
        }
    }

    /// When the loop must wake next. While a failed call waits for
    /// `retry_at`, results waiting to be stored wake it no sooner: their
    /// flush is past, and a wake-up that cannot call the broker would
    /// come back at once (a busy loop for the whole outage).
    fn next_timer(&self, retry_at: Option<Instant>) -> Option<Instant> {
        let flush = self
            .pending_since
            .values()
            .min()
            .map(|t| (*t + FLUSH_AFTER).max(retry_at.unwrap_or(*t)));
        let due = self
            .queues
            .values()
            .flat_map(|v| [v.next_due, v.orphan_check])
            .flatten()
            .min()
            .map(|earliest| {
                let ms = (earliest - Utc::now()).num_milliseconds().max(0) as u64;
                Instant::now() + Duration::from_millis(ms)
            });
        // A push that never arrives (a lost message): fetch after all.
        let push = self.queues.values().filter_map(|v| v.awaiting_push).min();
        [flush, due, self.hand_back_at(), push]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_signal(&mut self, s: Signal) {
        match s {
            Signal::Work { queue } => {
                if let Some(v) = self.queues.get_mut(&queue) {
                    v.maybe_work = true;
                }
            }
            Signal::Prioritized { queue } => {
                if let Some(v) = self.queues.get_mut(&queue) {
                    v.maybe_prio = true;
                }
            }
            Signal::WakeAt { queue, at } => {
                if let Some(v) = self.queues.get_mut(&queue) {
                    v.next_due = Some(v.next_due.map_or(at, |d| d.min(at)));
                }
            }
            Signal::LeaseUntil { queue, worker, at } => {
                if worker != self.id
                    && let Some(v) = self.queues.get_mut(&queue)
                {
                    // A little after the deadline, so the lease has surely run out.
                    let at = at + chrono::Duration::milliseconds(50);
                    v.next_due = Some(v.next_due.map_or(at, |d| d.min(at)));
                }
            }
            Signal::Pushed {
                queue,
                worker,
                deliveries,
            } => {
                if worker != self.id {
                    return;
                }
                // The push used the registration up.
                if let Some(v) = self.queues.get_mut(&queue) {
                    v.registered = 0;
                    v.awaiting_push = None;
                }
                let stopping = self.ctx.shutting_down.load(Ordering::Relaxed);
                for d in deliveries {
                    self.take(d);
                }
                // Pushed while this worker stops (before its call ended the
                // registration): back to the queue for another worker.
                if stopping {
                    while let Some(d) = self.buffer.pop_front() {
                        self.hand_back(d);
                    }
                }
            }
            Signal::Revoke { id, terminate } => self.revoked(id, terminate),
            Signal::Inspect { reply } => {
                let snapshot = self.snapshot();
                let broker = self.ctx.broker.clone();
                tokio::spawn(async move {
                    if let Err(e) = broker.answer(&reply, &snapshot).await {
                        tracing::debug!(error = %e, "inspect answer not sent");
                    }
                });
            }
            Signal::Reconnected => {
                let lease = self.ctx.cfg.lease;
                for v in self.queues.values_mut() {
                    // A push to this worker while the signal connection was
                    // down is lost, its jobs leased to us.
                    if v.registered > 0 || v.awaiting_push.is_some() {
                        v.look_for_orphans(lease);
                    }
                    v.due_check = true;
                    v.maybe_work = true;
                    v.maybe_prio = true;
                }
            }
        }
    }

    /// Handles the signals that have arrived, without waiting.
    fn drain_signals(&mut self, signals: &mut mpsc::UnboundedReceiver<Signal>) {
        while let Ok(s) = signals.try_recv() {
            self.on_signal(s);
        }
    }

    /// Subscribes again once the signals ended; `None` if `shutdown`
    /// resolved first (the worker then shuts down).
    async fn resubscribe(
        &self,
        shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> anyhow::Result<Option<mpsc::UnboundedReceiver<Signal>>> {
        super::subscribe(&*self.ctx.broker, &self.id, &self.ctx.cfg.queues, shutdown).await
    }

    fn info(&self) -> WorkerInfo {
        WorkerInfo {
            id: self.id.clone(),
            hostname: hostname(),
            pid: std::process::id(),
            queues: self.ctx.cfg.queues.clone(),
            concurrency: self.slots.current(),
            started_at: self.started_at,
            last_seen: Utc::now(),
            running: self
                .held
                .iter()
                .filter(|(_, h)| h.started)
                .map(|(id, _)| *id)
                .collect(),
            processed: self.stats.processed,
            failed: self.stats.failed,
        }
    }

    /// What this worker holds now: running jobs (oldest first, with the
    /// fuel they used so far) and prefetched ones (in the order they start).
    fn snapshot(&self) -> WorkerSnapshot {
        let metered = self.ctx.sandbox.config().fuel_metering;
        let mut active: Vec<HeldJob> = self
            .held
            .values()
            .filter(|h| h.started)
            .map(|h| HeldJob {
                fuel_used: metered.then(|| h.meter.used()),
                ..h.shown.clone()
            })
            .collect();
        active.sort_by_key(|j| j.started_at);
        let reserved = self
            .buffer
            .iter()
            .filter_map(|d| self.held.get(&d.job.id))
            .filter(|h| !h.started)
            .map(|h| h.shown.clone())
            .collect();
        let cfg = &self.ctx.cfg;
        WorkerSnapshot {
            id: self.id.clone(),
            hostname: hostname(),
            pid: std::process::id(),
            queues: cfg.queues.clone(),
            concurrency: self.slots.current(),
            prefetch: self.prefetch.ahead(self.is_stalled()),
            processed: self.stats.processed,
            failed: self.stats.failed,
            active,
            reserved,
            at: Utc::now(),
        }
    }

    async fn heartbeat(&mut self) {
        let ttl = self.ctx.cfg.heartbeat * 3;
        if let Err(e) = self.ctx.broker.heartbeat(&self.info(), ttl).await {
            tracing::debug!(error = %e, "heartbeat not stored");
        }
    }

    /// Job `id` was revoked: a held job not started yet never starts, a
    /// running one is stopped when the revoke says to terminate.
    fn revoked(&mut self, id: JobId, terminate: bool) {
        if let Some(h) = self.held.get_mut(&id) {
            if !h.started {
                h.revoked = true;
            } else if terminate {
                h.cancel.cancel();
            }
        }
    }

    async fn extend(&mut self) {
        let leases: Vec<Lease> = self.held.values().map(|h| h.lease.clone()).collect();
        match self.ctx.broker.extend(&leases, self.ctx.cfg.lease).await {
            Ok(extended) => {
                for id in extended.lost {
                    if let Some(h) = self.held.get_mut(&id) {
                        metrics::counter!("runner_leases_lost_total", "queue" => h.lease.queue.clone())
                            .increment(1);
                        tracing::warn!(job = %id, "lease lost (redelivered elsewhere); stopping this run");
                        h.cancel.cancel();
                        h.lost = true;
                    }
                }
                // Revokes whose message may never have arrived.
                for (id, terminate) in extended.revoked {
                    self.revoked(id, terminate);
                }
            }
            Err(e) => tracing::debug!(error = %e, "lease extension failed; retrying next tick"),
        }
    }

    async fn shut_down(
        &mut self,
        extend_every: Duration,
        signals: &mut mpsc::UnboundedReceiver<Signal>,
    ) {
        tracing::info!(worker = %self.id, running = self.running.len(), "shutting down: no more fetching");
        self.ctx.shutting_down.store(true, Ordering::Relaxed);
        // Leased but never started: hand back at once.
        while let Some(d) = self.buffer.pop_front() {
            self.hand_back(d);
        }
        let _ = self.talk().await;
        // Jobs pushed before that call ended this worker's registrations as
        // idle go back too (and revokes still reach running jobs).
        self.drain_signals(signals);
        let deadline = Instant::now() + self.ctx.cfg.grace;
        let mut extend = tokio::time::interval_at(Instant::now() + extend_every, extend_every);
        let mut cancelled = false;
        while !self.running.is_empty() {
            tokio::select! {
                Some(done) = self.running.join_next() => {
                    match done {
                        Ok((d, c)) => self.finished(d, c),
                        Err(e) => tracing::error!(error = %e, "a job's task ended without a completion"),
                    }
                    let _ = self.talk().await;
                }
                Some(s) = signals.recv() => {
                    self.on_signal(s);
                    // A job pushed meanwhile is handed back now, not when
                    // a run ends.
                    if self.pending.values().any(|v| !v.is_empty()) {
                        let _ = self.talk().await;
                    }
                }
                _ = extend.tick() => self.extend().await,
                _ = tokio::time::sleep_until(deadline), if !cancelled => {
                    tracing::warn!(running = self.running.len(), "grace period over: stopping and handing back the rest");
                    for h in self.held.values() { h.cancel.cancel(); }
                    cancelled = true;
                }
            }
        }
        // A registration left is ended while the broker answers within the
        // grace period (results, for all 50 rounds).
        let give_up = Instant::now() + self.ctx.cfg.grace;
        for _ in 0..50 {
            self.drain_signals(signals);
            // Results stored, and no registration as idle left (a call
            // that failed above left it: jobs would be pushed to this
            // worker once it is gone).
            let registered = self.queues.values().any(|v| v.registered > 0);
            // A push its call found on the way (`push_in_flight`): its
            // jobs are leased to this worker, which hands them back.
            let push_due = self
                .queues
                .values()
                .filter_map(|v| v.awaiting_push)
                .filter(|t| *t > Instant::now())
                .max();
            let settled = self.pending.values().all(|v| v.is_empty());
            if settled && ((!registered && push_due.is_none()) || Instant::now() >= give_up) {
                break;
            }
            if settled
                && !registered
                && let Some(t) = push_due
            {
                match tokio::time::timeout_at(t.min(give_up), signals.recv()).await {
                    Ok(Some(s)) => self.on_signal(s),
                    // Never came (the lease brings its jobs back), or the
                    // signals ended.
                    _ => self
                        .queues
                        .values_mut()
                        .for_each(|v| v.awaiting_push = None),
                }
                continue;
            }
            if let Err(e) = self.talk().await {
                // Says once that the broker is away (and when it is back).
                self.outage_backoff(&e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let unsettled: Vec<JobId> = self
            .pending
            .values()
            .flatten()
            .map(|c| c.lease.id)
            .collect();
        if !unsettled.is_empty() {
            // Their runs are over, but nothing stored them: their leases
            // run out and they run again elsewhere (a second run of each).
            tracing::error!(
                worker = %self.id,
                count = unsettled.len(),
                jobs = ?unsettled,
                "stopped with results the broker never took: these jobs run again when their leases run out"
            );
        }
        let _ = self.ctx.broker.worker_gone(&self.id).await;
        tracing::info!(worker = %self.id, stats = ?self.stats, "worker stopped");
    }
}

/// How long a worker waits for jobs pushed to it before it fetches again
/// (a lost push's jobs come back when their lease runs out).
const PUSH_WAIT: Duration = Duration::from_secs(1);

/// A result waits at most this long for others to be stored with it.
const FLUSH_AFTER: Duration = Duration::from_millis(20);

/// At most this many results refused as stale are kept for a lease of
/// their job that comes back ([`Dispatcher::keep_refused`]).
const REFUSED_KEPT: usize = 1000;

/// The attempt a result is of, when it may be stored under another lease
/// of its job: a run's own end (final, or a retry, whose record is of the
/// next attempt), not a hand back, nor a run stopped (REVOKED: a revoke's
/// own end comes from the broker, not from a lease that came back).
fn reusable_attempt(c: &Completion) -> Option<u32> {
    match &c.settlement {
        Settlement::Finish { job, .. } => (job.state != JobState::Revoked).then_some(job.attempt),
        Settlement::Retry { if_revoked, .. } => Some(if_revoked.attempt),
        Settlement::Release { .. } => None,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
