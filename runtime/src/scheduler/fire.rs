//! The scheduler's loop: sleep until the earliest due time or a change,
//! fire what is due exactly once across replicas (see the module docs of
//! [`crate::scheduler`]), and wait out outages.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::store::{FireRecord, StoreError};
use super::{Beat, MissedPolicy, ON_TIME_GRACE, Schedule, Scheduler, fire_id, fire_key};
use crate::producer::{EnqueueError, EnqueueRequest};
use crate::queue::{BrokerError, Enqueued};
use crate::registry::RegistryError;

/// The longest the loop sleeps without looking at the clock again.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// How long a replica that found a fire claimed by another waits before it
/// makes sure the job was enqueued.
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

fn claim_timeout() -> chrono::Duration {
    chrono::Duration::from_std(CLAIM_TIMEOUT).unwrap_or_default()
}

/// Whether another replica's claim is still checked ([`Scheduler::confirm`]):
/// made within the claim timeout and the on-time grace, as a starting
/// replica takes it. Older, its due time counts as missed.
fn claim_checkable(claim: &FireRecord, now: DateTime<Utc>) -> bool {
    let grace = chrono::Duration::from_std(ON_TIME_GRACE).unwrap_or_default();
    claim.fired_at + claim_timeout() + grace > now
}

impl Scheduler {
    /// Runs the loop until `shutdown` completes. Store or broker outages are
    /// waited out (logged once each); this never returns an error.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut outage = Outage::default();
        // Subscribe before the first read: a change between the two is then
        // seen as an event, never lost.
        let mut changes = loop {
            match self.inner.store.watch().await {
                Ok(rx) => break rx,
                Err(e) => outage.failed("watching beat changes", &e),
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(outage.backoff()) => {}
            }
        };
        let mut entries: HashMap<String, Entry> = HashMap::new();
        let mut initial = true;
        let mut reload_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
        loop {
            if reload_at.is_some_and(|t| t <= tokio::time::Instant::now()) {
                match self.load(&mut entries, initial).await {
                    Ok(()) => {
                        initial = false;
                        reload_at = None;
                        outage.recovered("reading beats");
                    }
                    Err(e) => {
                        outage.failed("reading beats", &e);
                        reload_at = Some(tokio::time::Instant::now() + outage.backoff());
                    }
                }
            }
            if !initial {
                self.fire_due(&mut entries).await;
            }
            let now = Utc::now();
            let mut sleep = entries
                .values()
                .filter_map(|e| e.wake_at())
                .min()
                .map(|w| (w - now).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            if let Some(t) = reload_at {
                sleep = sleep.min(t.saturating_duration_since(tokio::time::Instant::now()));
            }
            tokio::select! {
                _ = &mut shutdown => return,
                change = changes.recv() => match change {
                    Some(_) => {
                        // One reload for a burst of changes.
                        while changes.try_recv().is_ok() {}
                        reload_at = Some(tokio::time::Instant::now());
                    }
                    None => {
                        // The store dropped the feed: watch again.
                        match self.inner.store.watch().await {
                            Ok(rx) => {
                                changes = rx;
                                reload_at = Some(tokio::time::Instant::now());
                            }
                            Err(e) => {
                                outage.failed("watching beat changes", &e);
                                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                                // A feed that ends at once makes the next
                                // round try again after the backoff.
                                let backoff = outage.backoff();
                                tokio::spawn(async move {
                                    tokio::time::sleep(backoff).await;
                                    drop(tx);
                                });
                                changes = rx;
                            }
                        }
                    }
                },
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Reads the beats again and rebuilds the loop's entries. A beat whose
    /// timing did not change keeps its place in its schedule.
    async fn load(
        &self,
        entries: &mut HashMap<String, Entry>,
        initial: bool,
    ) -> Result<(), StoreError> {
        let beats = self.effective().await?;
        let (fired, claims) = if initial {
            (
                self.inner.store.fires(false).await?,
                self.inner.store.claims().await?,
            )
        } else {
            (HashMap::new(), HashMap::new())
        };
        let now = Utc::now();
        let grace = chrono::Duration::from_std(ON_TIME_GRACE).unwrap_or_default();
        let mut next = HashMap::with_capacity(beats.len());
        for e in beats {
            if !e.beat.enabled {
                entries.remove(&e.beat.name);
                continue;
            }
            let schedule = match e.beat.schedule() {
                Ok(s) => s,
                Err(err) => {
                    tracing::warn!(beat = e.beat.name, "not scheduled: {err}");
                    continue;
                }
            };
            let name = e.beat.name.clone();
            let entry = match entries.remove(&name) {
                Some(old) if old.beat.same_timing(&e.beat) => Entry {
                    beat: e.beat,
                    schedule,
                    ..old
                },
                _ if initial => {
                    // A claim later than the last recorded fire is a fire
                    // too: its claimant may have died after its enqueue
                    // and before recording it. One made just now is checked
                    // as any other replica's claim is ([`Self::confirm`]);
                    // an older one is taken as fired, not fired again.
                    let claim = claims
                        .get(&name)
                        .filter(|c| fired.get(&name).is_none_or(|f| c.due > f.due) && c.due <= now);
                    let last = fired.get(&name).map(|f| f.due).max(claim.map(|c| c.due));
                    // Due times after the last fire (or after the beat last
                    // changed) and before now were missed.
                    let from = match (last, e.updated_at) {
                        (Some(a), Some(b)) => a.max(b),
                        (Some(a), None) | (None, Some(a)) => a,
                        (None, None) => now,
                    }
                    .min(now);
                    let mut entry = Entry::new(e.beat, schedule, from, now);
                    if let Some(c) = claim
                        && claim_checkable(c, now)
                    {
                        entry
                            .unconfirmed
                            .push((c.clone(), (c.fired_at + claim_timeout()).max(now)));
                    }
                    entry
                }
                old => {
                    // New or re-timed while running: its schedule starts at
                    // the change (another host's clock may differ a little).
                    let from = e.updated_at.unwrap_or(now).clamp(now - grace, now);
                    let mut entry = Entry::new(e.beat, schedule, from, from);
                    // Claims of other replicas still to check are checked
                    // all the same: their due times were claimed.
                    if let Some(old) = old {
                        entry.unconfirmed = old.unconfirmed;
                    }
                    entry
                }
            };
            next.insert(name, entry);
        }
        *entries = next;
        Ok(())
    }

    async fn fire_due(&self, entries: &mut HashMap<String, Entry>) {
        let now = Utc::now();
        let work = entries
            .values_mut()
            .filter(|e| e.wake_at().is_some_and(|w| w <= now))
            .map(|e| self.fire_entry(e, now));
        futures::future::join_all(work).await;
    }

    async fn fire_entry(&self, e: &mut Entry, now: DateTime<Utc>) {
        if !e.unconfirmed.is_empty() {
            self.confirm(e, now).await;
        }
        if e.retry_at.is_some_and(|r| r > now) {
            return;
        }
        e.retry_at = None;
        let grace = chrono::Duration::from_std(ON_TIME_GRACE).unwrap_or_default();
        let on_time_from = e.watch_from.max(now - grace);
        let Some(first) = e.schedule.next_after(e.cursor) else {
            return;
        };
        if first > now {
            return;
        }
        if first <= on_time_from {
            if e.beat.missed == MissedPolicy::CatchUpOnce
                && let Some(latest) = e.schedule.latest_at_or_before(on_time_from)
                && latest > e.cursor
            {
                tracing::info!(
                    beat = e.beat.name,
                    "catching up once for the missed period {first} .. {latest}"
                );
                if !self.fire_one(e, latest, now).await {
                    return;
                }
                metrics::counter!("runner_beat_misses_total", "policy" => "catch_up_once")
                    .increment(1);
            } else {
                tracing::info!(
                    beat = e.beat.name,
                    "skipping due times missed from {first} to {on_time_from}"
                );
                metrics::counter!("runner_beat_misses_total", "policy" => "skip").increment(1);
            }
            e.cursor = e.cursor.max(on_time_from);
        }
        while let Some(due) = e.schedule.next_after(e.cursor)
            && due <= now
        {
            if !self.fire_one(e, due, now).await {
                return;
            }
        }
    }

    /// Fires one due time. Returns false if the broker or the store could
    /// not be reached (the entry then waits and tries again).
    ///
    /// The job is prepared first (its id derived from the beat and the due
    /// time, its queue resolved), then the fire is claimed in the store
    /// (see [`super::BeatStore::claim_fire`]); only the claimant enqueues.
    /// A replica that finds the same due time claimed by another checks
    /// back after [`CLAIM_TIMEOUT`] ([`Self::confirm`]).
    async fn fire_one(&self, e: &mut Entry, due: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let name = e.beat.name.clone();
        let mut job = match self.inner.producer.prepare(request(&e.beat, due)).await {
            Ok(job) => job,
            Err(err) => return self.failed(e, due, now, err),
        };
        let claim = FireRecord {
            due,
            fired_at: now,
            job: job.id,
            queue: job.queue.clone(),
        };
        match self.inner.store.claim_fire(&name, &claim).await {
            Err(err) => return self.unreachable(e, due, now, &err),
            Ok(None) => e.claimed = Some(due),
            // Ours: an earlier try whose enqueue failed. The job goes to
            // the queue the claim names, as another replica's check sends
            // it (the beat may have moved meanwhile): one queue, one
            // idempotency key, one job.
            Ok(Some(other)) if other.due == due && e.claimed == Some(due) => {
                job.queue = other.queue;
            }
            // Another replica's (every replica prepares the same job, so
            // only this loop's memory tells its own claim from theirs).
            Ok(Some(other)) => {
                metrics::counter!("runner_beat_fires_total", "result" => "other_replica")
                    .increment(1);
                if other.due == due {
                    e.unconfirmed.push((other, now + claim_timeout()));
                }
                e.cursor = due;
                return true;
            }
        }
        match self.inner.producer.broker().enqueue(vec![job]).await {
            Ok(enq) => {
                if let Some(enq) = enq.first() {
                    self.recorded(&name, due, enq).await;
                }
                self.fired(e, due);
                true
            }
            Err(err) => self.failed(e, due, now, err.into()),
        }
    }

    /// Checks, [`CLAIM_TIMEOUT`] after another replica claimed a fire of
    /// `e`, that its job is in the queue: enqueues it again (same id, same
    /// queue, same idempotency key, so that it is stored at most once). A
    /// claimant that died between its claim and its enqueue loses nothing.
    async fn confirm(&self, e: &mut Entry, now: DateTime<Utc>) {
        let mut keep = Vec::new();
        for (claim, at) in std::mem::take(&mut e.unconfirmed) {
            if at > now {
                keep.push((claim, at));
                continue;
            }
            // The job the claimant prepared, on the queue its claim names
            // (a partition of the beat's queue, or the queue its config
            // gave the beat), as the claimant enqueues it: not through the
            // producer, which takes no partition for a queue and might
            // place the job in another.
            let enqueued = match self
                .inner
                .producer
                .prepare(request(&e.beat, claim.due))
                .await
            {
                Ok(mut job) => {
                    job.queue = claim.queue.clone();
                    self.inner
                        .producer
                        .broker()
                        .enqueue(vec![job])
                        .await
                        .map_err(EnqueueError::from)
                }
                Err(err) => Err(err),
            };
            match enqueued {
                Ok(enq) => {
                    if let Some(enq) = enq.first().filter(|enq| enq.created) {
                        tracing::warn!(
                            beat = e.beat.name,
                            due = %claim.due,
                            "the replica that claimed this fire did not enqueue it; enqueued it in its place"
                        );
                        self.recorded(&e.beat.name, claim.due, enq).await;
                    }
                }
                // Tried again every second while the claim is as fresh as
                // one a starting replica checks; older, its due time is
                // missed, as the claimant's own would be (not fired late,
                // after the outage, with every other one it held back).
                Err(err) if is_transient(&err) && claim_checkable(&claim, now) => {
                    keep.push((claim, now + chrono::Duration::seconds(1)));
                }
                Err(err) if is_transient(&err) => {
                    tracing::warn!(
                        beat = e.beat.name,
                        due = %claim.due,
                        "could not check another replica's claimed fire in time; missed: {err}"
                    );
                    metrics::counter!("runner_beat_misses_total", "policy" => "skip").increment(1);
                    self.note_error(&e.beat.name, format!("{}: {err}", claim.due));
                }
                Err(err) => {
                    tracing::warn!(beat = e.beat.name, due = %claim.due, "confirming a fire: {err}");
                }
            }
        }
        e.unconfirmed = keep;
    }

    /// Records the fire `enq` of `name` at `due`.
    async fn recorded(&self, name: &str, due: DateTime<Utc>, enq: &Enqueued) {
        let record = FireRecord {
            due,
            fired_at: enq.job.created_at,
            job: enq.job.id,
            queue: enq.job.queue.clone(),
        };
        if let Err(err) = self.inner.store.record_fire(name, &record, false).await {
            tracing::warn!(beat = name, "fire of {due} enqueued, not recorded: {err}");
        }
        tracing::debug!(beat = name, %due, job = %enq.job.id, "fired");
    }

    /// The fire at `due` is done: enqueued, or enqueued already.
    fn fired(&self, e: &mut Entry, due: DateTime<Utc>) {
        metrics::counter!("runner_beat_fires_total", "result" => "fired").increment(1);
        if e.failing.take().is_some() {
            tracing::info!(beat = e.beat.name, "firing again");
        }
        if let Ok(mut errs) = self.inner.errors.lock() {
            errs.remove(&e.beat.name);
        }
        e.cursor = due;
    }

    /// The fire at `due` failed with `err`: tried again in a second if the
    /// broker or registry is unavailable (returns false), else refused and
    /// skipped (returns true).
    fn failed(
        &self,
        e: &mut Entry,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
        err: EnqueueError,
    ) -> bool {
        if is_transient(&err) {
            return self.unreachable(e, due, now, &err);
        }
        metrics::counter!("runner_beat_fires_total", "result" => "refused").increment(1);
        // Logged once until the reason changes: a beat firing every
        // second for an unbound task must not flood the log.
        let name = e.beat.name.clone();
        let reason = err.to_string();
        if e.failing.as_deref() != Some(reason.as_str()) {
            tracing::warn!(beat = name, "fire of {due} refused: {reason}");
            e.failing = Some(reason);
        }
        self.note_error(&name, format!("{due}: {err}"));
        e.cursor = due;
        true
    }

    /// The fire at `due` could not reach Redis: it is tried again in a
    /// second. Returns false.
    fn unreachable(
        &self,
        e: &mut Entry,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
        err: &dyn std::fmt::Display,
    ) -> bool {
        if e.failing.as_deref() != Some(UNAVAILABLE) {
            tracing::warn!(
                beat = e.beat.name,
                "cannot fire {due} now, will retry: {err}"
            );
            e.failing = Some(UNAVAILABLE.to_string());
        }
        self.note_error(&e.beat.name, format!("{due}: {err}"));
        e.retry_at = Some(now + chrono::Duration::seconds(1));
        false
    }

    fn note_error(&self, name: &str, msg: String) {
        if let Ok(mut errs) = self.inner.errors.lock() {
            errs.insert(name.to_string(), msg);
        }
    }
}

/// The job a beat's fire enqueues: on every replica the same id and
/// idempotency key.
pub(super) fn request(beat: &Beat, due: DateTime<Utc>) -> EnqueueRequest {
    EnqueueRequest {
        id: Some(fire_id(&beat.name, due)),
        task: Some(beat.task.clone()),
        input: beat.input.to_string(),
        queue: beat.queue.clone(),
        retry: beat.retry.clone(),
        limits: beat.limits.clone(),
        priority: beat.priority,
        expires_in_secs: beat.expires_in_secs,
        idempotency_key: Some(fire_key(&beat.name, due)),
        schedule: Some(beat.name.clone()),
        scheduled_for: Some(due),
        ..Default::default()
    }
}

/// Whether the fire may succeed if tried again: the broker or registry is
/// unreachable, loading, read-only or failing over.
fn is_transient(err: &EnqueueError) -> bool {
    match err {
        EnqueueError::Broker(e) => e.is_unavailable() || matches!(e, BrokerError::Protocol(_)),
        EnqueueError::Registry(RegistryError::Redis(_) | RegistryError::Io(_)) => true,
        _ => false,
    }
}

/// The loop's view of one enabled beat.
struct Entry {
    beat: Beat,
    schedule: Schedule,
    /// Every due time at or before this was handled (fired, refused or
    /// skipped).
    cursor: DateTime<Utc>,
    /// Due times after this (and within the grace) are on time; earlier
    /// ones are missed.
    watch_from: DateTime<Utc>,
    /// The broker was unreachable: try again then.
    retry_at: Option<DateTime<Utc>>,
    /// Why the last fire failed, as logged (logged again only when the
    /// reason changes).
    failing: Option<String>,
    /// Fires another replica claimed, and when to make sure they were
    /// enqueued.
    unconfirmed: Vec<(FireRecord, DateTime<Utc>)>,
    /// The due time this loop claimed last.
    claimed: Option<DateTime<Utc>>,
}

impl Entry {
    fn new(
        beat: Beat,
        schedule: Schedule,
        cursor: DateTime<Utc>,
        watch_from: DateTime<Utc>,
    ) -> Self {
        Entry {
            beat,
            schedule,
            cursor,
            watch_from,
            retry_at: None,
            failing: None,
            unconfirmed: Vec::new(),
            claimed: None,
        }
    }

    fn wake_at(&self) -> Option<DateTime<Utc>> {
        let fire = self
            .retry_at
            .or_else(|| self.schedule.next_after(self.cursor));
        let confirm = self.unconfirmed.iter().map(|(_, at)| *at).min();
        crate::queue::earlier(fire, confirm)
    }
}

const UNAVAILABLE: &str = "unavailable";

/// Logs an outage once, and its end.
#[derive(Default)]
struct Outage {
    failures: u32,
}

impl Outage {
    fn failed(&mut self, what: &str, err: &dyn std::fmt::Display) {
        if self.failures == 0 {
            tracing::warn!("scheduler: {what} failed, retrying: {err}");
        }
        self.failures += 1;
    }

    fn recovered(&mut self, what: &str) {
        if self.failures > 0 {
            tracing::info!("scheduler: {what} works again");
        }
        self.failures = 0;
    }

    fn backoff(&self) -> Duration {
        Duration::from_millis(100 * 2u64.pow(self.failures.min(6))).min(Duration::from_secs(5))
    }
}
