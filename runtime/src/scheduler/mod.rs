//! The scheduler (Celery Beat's job): fires beats, recurring jobs defined
//! by a cron expression or an interval in a named time zone, exactly once
//! per due time across any number of replicas.
//!
//! # Using it
//!
//! ```no_run
//! # async fn demo(producer: runner::producer::Producer,
//! #               registry: std::sync::Arc<dyn runner::registry::Registry>,
//! #               config_beats: Vec<runner::scheduler::Beat>) -> anyhow::Result<()> {
//! use runner::scheduler::{Beat, Scheduler};
//! // Redis broker: beats and fire records shared with every replica.
//! let scheduler =
//!     Scheduler::connect_redis("redis://127.0.0.1/", producer, registry, config_beats).await?;
//! // (Embedded broker: `Scheduler::embedded(producer, registry, config_beats)?`.)
//! let looping = scheduler.clone();
//! tokio::spawn(async move { looping.run(std::future::pending::<()>()).await });
//! // The same value serves the API: list/get/put/delete/set_enabled/fire_now.
//! scheduler.put(Beat::cron("morning", "reminder", "0 9 * * mon-fri")).await?;
//! # Ok(()) }
//! ```
//!
//! [`Scheduler`] is cheap to clone; one clone runs the loop ([`Scheduler::run`]),
//! the others answer the API. `put` refuses bad beats with a [`BeatError`]
//! naming the field (`cron: 61 is out of range for minutes (0-59)`) or the
//! unknown task; [`BeatError::is_bad_input`] tells 400 from 404/503.
//!
//! # Sources
//!
//! Beats from `runner.toml` (`[[beats]]`, given to the constructor) merged
//! with dynamic beats stored through [`Scheduler::put`] in a [`BeatStore`]
//! (Redis hash `runner:beats`, or memory). A dynamic beat with the same name
//! as a config beat overrides it; deleting the dynamic one brings the config
//! one back. Disabling a config beat stores such an override with
//! `enabled = false`. A config beat cannot be deleted through the API: the
//! file is its source.
//!
//! Every change is announced (pub/sub `runner:beats:changed`), and a running
//! loop reloads on the announcement: no polling, no restart, no file.
//!
//! # Exactly once
//!
//! Every replica computes the same due times (cron in the beat's zone;
//! intervals counted from the Unix epoch) and, at each, prepares the same
//! job: its id is derived from the beat's name and the due time
//! ([`fire_id`]), its idempotency key is `beat:<name>:<due unix seconds>`
//! (a key callers may not use). Then it claims the fire in the store
//! ([`BeatStore::claim_fire`], `runner:beats:claims`): one atomic step that
//! succeeds only if no claim for this due time or a later one is held. The
//! claim depends on the beat's name and due time alone, not on the queue
//! (replicas that disagree on a beat's queue still fire once) nor on the
//! job's record still existing (a replica paused past the job's result TTL
//! does not fire again). Only the claimant enqueues and records the fire
//! (`runner:beats:fired`, kept only if its due time is the newest).
//!
//! A claimant can die between its claim and its enqueue. A replica that
//! finds a due time claimed by another therefore checks back after
//! [`fire::CLAIM_TIMEOUT`]: it enqueues the job the claim names (same id,
//! same queue, same idempotency key), which the broker stores only if the
//! claimant did not (an idempotency key that names the same job id counts
//! as that job, even once its record has expired). A fire is lost only if
//! its claimant dies before enqueuing and no other replica is running.
//!
//! Redis answering LOADING, READONLY, MASTERDOWN or TRYAGAIN (a restart, a
//! failover) is an outage like a dropped connection: the fire is tried
//! again every second, within the on-time grace, never skipped as refused.
//!
//! # Missed fires
//!
//! A due time that passes while this loop watches the beat is fired even if
//! the loop gets to it late, up to [`ON_TIME_GRACE`]. Older due times (the
//! process was down or suspended, Redis was unreachable, or they fell before
//! start-up) are *missed*: `skip` drops them, `catch-up-once` enqueues one
//! job for the latest of them. The last recorded fire tells a fresh replica
//! what was missed; a beat never fired before has missed what came due
//! since it was stored or changed through the API (a beat of
//! `runner.toml`, which has no such time, has missed nothing).
//!
//! # Idle cost
//!
//! The loop sleeps until the earliest due time (at most a minute, to follow
//! wall-clock jumps, without touching Redis) or a change announcement.
//! While nothing is due it sends no Redis command at all.
//!
//! See `docs/scheduler.md` for DST rules with examples.

pub mod beat;
pub mod fire;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use beat::{
    Beat, BeatError, FieldError, MissedPolicy, RuleError, Schedule, parse_cron, parse_every,
};
pub use store::{
    BeatChange, BeatStore, FireRecord, MemoryBeatStore, RedisBeatStore, StoreError, StoredBeat,
};

use crate::producer::{EnqueueError, Producer};
use crate::queue::redis::RedisTls;
use crate::queue::{Job, JobId, JobState};
use crate::registry::Registry;
use fire::request;

/// How many times [`Scheduler::set_enabled`] reads and writes a beat that
/// keeps changing under it before it gives up.
const SWITCH_TRIES: usize = 5;

/// How late a due time may be reached and still count as on time.
pub const ON_TIME_GRACE: Duration = Duration::from_secs(5);

/// The idempotency key of one fire's job (a caller may not use `beat:`
/// keys: [`crate::producer::check_caller_key`]).
pub fn fire_key(beat: &str, due: DateTime<Utc>) -> String {
    format!("beat:{beat}:{}", due.timestamp())
}

/// The job id of one fire, the same on every replica: a UUIDv7 whose time
/// is the due time (ids still sort by time) and whose other bits come from
/// the beat's name and the due time.
pub fn fire_id(beat: &str, due: DateTime<Utc>) -> JobId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(fire_key(beat, due).as_bytes());
    let mut bits = [0u8; 10];
    bits.copy_from_slice(&digest[..10]);
    let ms = u64::try_from(due.timestamp_millis()).unwrap_or(0);
    JobId(uuid::Builder::from_unix_timestamp_millis(ms, &bits).into_uuid())
}

/// Checks the beats of a config file: every problem reported, each naming
/// the beat and the field (`beats[1] (bad).cron: ...`), and no two beats of
/// one name. Whether their tasks exist is not checked here.
pub fn validate_config_beats(beats: &[Beat]) -> Result<(), BeatError> {
    let mut problems = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, b) in beats.iter().enumerate() {
        let at = if b.name.is_empty() {
            format!("beats[{i}]")
        } else {
            format!("beats[{i}] ({})", b.name)
        };
        if let Err(BeatError::Invalid(errs)) = b.validate() {
            for e in errs {
                problems.push(FieldError::new(&format!("{at}.{}", e.field), e.message));
            }
        }
        if !b.name.is_empty() && !seen.insert(b.name.clone()) {
            problems.push(FieldError::new(
                &format!("{at}.name"),
                "another beat in the file has this name",
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(BeatError::Invalid(problems))
    }
}

/// Where the effective definition of a beat comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BeatSource {
    /// `runner.toml`.
    Config,
    /// The API or CLI.
    Api,
    /// The API or CLI, replacing a beat of the same name in `runner.toml`.
    ApiOverConfig,
}

/// A point in time in the beat's zone and in UTC.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FireTime {
    pub utc: DateTime<Utc>,
    /// RFC 3339 with the zone's offset at that instant.
    pub local: String,
}

/// The newest fire of a beat.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LastFire {
    /// The due time fired (for a manual fire: when it was asked for).
    pub due: FireTime,
    /// When the job was enqueued.
    pub fired_at: DateTime<Utc>,
    pub job: JobId,
    pub manual: bool,
}

/// The job of the last fire as the broker has it now.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct JobOutcome {
    pub id: JobId,
    /// `None` once the broker forgot the job (its result TTL passed).
    pub state: Option<JobState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A beat with where it comes from and how it has been firing.
#[derive(Clone, Debug, Serialize)]
pub struct BeatStatus {
    #[serde(flatten)]
    pub beat: Beat,
    pub source: BeatSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
    /// `None` while disabled.
    pub next_fire: Option<FireTime>,
    pub last_fire: Option<LastFire>,
    pub last_job: Option<JobOutcome>,
    /// The last fire this process could not enqueue, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Clone, Debug)]
struct Effective {
    beat: Beat,
    source: BeatSource,
    updated_at: Option<DateTime<Utc>>,
}

struct Inner {
    store: Arc<dyn BeatStore>,
    producer: Producer,
    registry: Arc<dyn Registry>,
    config: Vec<Beat>,
    /// Fire errors seen by this process, by beat.
    errors: Mutex<HashMap<String, String>>,
}

/// The scheduler: its loop ([`run`](Self::run)) and the operations the API
/// and CLI need. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl Scheduler {
    /// A scheduler over `store`, enqueueing through `producer`. The config
    /// beats are validated here (every problem reported, each naming the
    /// beat and the field); whether their tasks exist is only known at fire
    /// time, since a config may name tasks bound later.
    pub fn new(
        store: Arc<dyn BeatStore>,
        producer: Producer,
        registry: Arc<dyn Registry>,
        config_beats: Vec<Beat>,
    ) -> Result<Self, BeatError> {
        validate_config_beats(&config_beats)?;
        Ok(Scheduler {
            inner: Arc::new(Inner {
                store,
                producer,
                registry,
                config: config_beats,
                errors: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// For the Redis broker: dynamic beats and fire records in the Redis at
    /// `url`, shared by every replica.
    pub async fn connect_redis(
        url: &str,
        producer: Producer,
        registry: Arc<dyn Registry>,
        config_beats: Vec<Beat>,
    ) -> anyhow::Result<Self> {
        Self::connect_redis_with(url, &RedisTls::default(), producer, registry, config_beats).await
    }

    /// [`connect_redis`](Self::connect_redis) with the TLS files `tls`.
    pub async fn connect_redis_with(
        url: &str,
        tls: &RedisTls,
        producer: Producer,
        registry: Arc<dyn Registry>,
        config_beats: Vec<Beat>,
    ) -> anyhow::Result<Self> {
        let store = RedisBeatStore::connect_with(url, tls).await?;
        Ok(Self::new(
            Arc::new(store),
            producer,
            registry,
            config_beats,
        )?)
    }

    /// For the embedded broker: dynamic beats in this process only.
    pub fn embedded(
        producer: Producer,
        registry: Arc<dyn Registry>,
        config_beats: Vec<Beat>,
    ) -> Result<Self, BeatError> {
        Self::new(
            Arc::new(MemoryBeatStore::new()),
            producer,
            registry,
            config_beats,
        )
    }

    pub fn store(&self) -> &Arc<dyn BeatStore> {
        &self.inner.store
    }

    /// The beats from `runner.toml`.
    pub fn config_beats(&self) -> &[Beat] {
        &self.inner.config
    }

    async fn effective(&self) -> Result<Vec<Effective>, StoreError> {
        let dynamic = self.inner.store.beats().await?;
        Ok(merge(&self.inner.config, dynamic))
    }

    /// Every beat (config and dynamic, disabled ones too) with its status,
    /// by name.
    pub async fn list(&self) -> Result<Vec<BeatStatus>, BeatError> {
        let beats = self.effective().await?;
        self.statuses(beats).await
    }

    /// One beat with its status.
    pub async fn get(&self, name: &str) -> Result<BeatStatus, BeatError> {
        let beats: Vec<Effective> = self
            .effective()
            .await?
            .into_iter()
            .filter(|e| e.beat.name == name)
            .collect();
        if beats.is_empty() {
            return Err(BeatError::NotFound(name.to_string()));
        }
        Ok(self.statuses(beats).await?.remove(0))
    }

    async fn statuses(&self, beats: Vec<Effective>) -> Result<Vec<BeatStatus>, BeatError> {
        let fired = self.inner.store.fires(false).await?;
        let manual = self.inner.store.fires(true).await?;
        let errors = self
            .inner
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        let now = Utc::now();
        let mut out = Vec::with_capacity(beats.len());
        for e in beats {
            let Ok(schedule) = e.beat.schedule() else {
                // Stored before a stricter check: shown, never fired.
                out.push(BeatStatus {
                    last_error: e.beat.validate().err().map(|x| x.to_string()),
                    beat: e.beat,
                    source: e.source,
                    updated_at: e.updated_at,
                    next_fire: None,
                    last_fire: None,
                    last_job: None,
                });
                continue;
            };
            let scheduled = fired.get(&e.beat.name);
            let by_hand = manual.get(&e.beat.name);
            let last = match (scheduled, by_hand) {
                (Some(s), Some(m)) if m.fired_at > s.fired_at => Some((m, true)),
                (Some(s), _) => Some((s, false)),
                (None, Some(m)) => Some((m, true)),
                (None, None) => None,
            };
            let after = scheduled.map_or(now, |s| s.due.max(now));
            let next_fire = e
                .beat
                .enabled
                .then(|| schedule.next_after(after))
                .flatten()
                .map(|t| FireTime {
                    utc: t,
                    local: schedule.local(t),
                });
            let last_job = match last {
                Some((rec, _)) => Some(self.outcome(rec.job).await?),
                None => None,
            };
            out.push(BeatStatus {
                last_fire: last.map(|(rec, manual)| LastFire {
                    due: FireTime {
                        utc: rec.due,
                        local: schedule.local(rec.due),
                    },
                    fired_at: rec.fired_at,
                    job: rec.job,
                    manual,
                }),
                last_error: errors.get(&e.beat.name).cloned(),
                beat: e.beat,
                source: e.source,
                updated_at: e.updated_at,
                next_fire,
                last_job,
            });
        }
        Ok(out)
    }

    async fn outcome(&self, id: JobId) -> Result<JobOutcome, BeatError> {
        let job = self
            .inner
            .producer
            .broker()
            .get(id)
            .await
            .map_err(|e| BeatError::Enqueue(EnqueueError::Broker(e)))?;
        Ok(JobOutcome {
            id,
            state: job.as_ref().map(|j| j.state),
            finished_at: job.as_ref().and_then(|j| j.finished_at),
            error: job
                .and_then(|j| j.error)
                .map(|f| format!("{}: {}", f.kind, f.message)),
        })
    }

    /// Creates or replaces a dynamic beat: validated, its task must be
    /// bound. A running loop picks it up at once; its schedule starts from
    /// now (no catch-up for times before the change).
    pub async fn put(&self, beat: Beat) -> Result<BeatStatus, BeatError> {
        beat.validate()?;
        if self.inner.registry.task(&beat.task).await?.is_none() {
            return Err(BeatError::UnknownTask(beat.task.clone()));
        }
        let name = beat.name.clone();
        self.inner
            .store
            .put(&StoredBeat {
                beat,
                updated_at: Utc::now(),
            })
            .await?;
        self.get(&name).await
    }

    /// Enables or disables a beat without deleting it. For a beat from
    /// `runner.toml`, this stores an override (see the module docs).
    ///
    /// The beat is read and written back only if it did not change in
    /// between: a `put` made meanwhile is never undone (read again, and
    /// the switch applied to it, a few times at most).
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<BeatStatus, BeatError> {
        for _ in 0..SWITCH_TRIES {
            let dynamic = self.inner.store.beats().await?;
            let stored = dynamic.iter().find(|b| b.beat.name == name).cloned();
            let Some(current) = merge(&self.inner.config, dynamic)
                .into_iter()
                .find(|e| e.beat.name == name)
            else {
                return Err(BeatError::NotFound(name.to_string()));
            };
            if current.beat.enabled == enabled {
                return self.get(name).await;
            }
            let mut beat = current.beat;
            beat.enabled = enabled;
            beat.validate()?;
            let new = StoredBeat {
                beat,
                updated_at: Utc::now(),
            };
            if self.inner.store.replace(stored.as_ref(), &new).await? {
                return self.get(name).await;
            }
        }
        Err(BeatError::Conflict(name.to_string()))
    }

    /// Deletes a dynamic beat. If it overrode a beat of `runner.toml`, that
    /// one applies again; a beat only in `runner.toml` cannot be deleted.
    pub async fn delete(&self, name: &str) -> Result<(), BeatError> {
        let in_config = self.inner.config.iter().any(|b| b.name == name);
        let existed = self.inner.store.delete(name, !in_config).await?;
        if existed {
            if let Ok(mut e) = self.inner.errors.lock() {
                e.remove(name);
            }
            Ok(())
        } else if in_config {
            Err(BeatError::FromConfig(name.to_string()))
        } else {
            Err(BeatError::NotFound(name.to_string()))
        }
    }

    /// Enqueues the beat's job now, whatever its schedule (disabled beats
    /// too). The job carries the beat's name and the time of this call; it
    /// has no fire key, so it never takes the place of a scheduled fire.
    pub async fn fire_now(&self, name: &str) -> Result<Job, BeatError> {
        let e = self
            .effective()
            .await?
            .into_iter()
            .find(|e| e.beat.name == name)
            .ok_or_else(|| BeatError::NotFound(name.to_string()))?;
        let now = Utc::now();
        let mut req = request(&e.beat, now);
        req.idempotency_key = None;
        req.id = None;
        let enqueued = self.inner.producer.enqueue(req).await?;
        let job = enqueued.job;
        let record = FireRecord {
            due: now,
            fired_at: job.created_at,
            job: job.id,
            queue: job.queue.clone(),
        };
        if let Err(err) = self.inner.store.record_fire(name, &record, true).await {
            tracing::warn!(
                beat = name,
                "job {} enqueued, but not recorded: {err}",
                job.id
            );
        }
        Ok(job)
    }
}

/// Config beats overridden by dynamic beats of the same name, by name.
fn merge(config: &[Beat], dynamic: Vec<StoredBeat>) -> Vec<Effective> {
    let mut out: Vec<Effective> = config
        .iter()
        .map(|b| Effective {
            beat: b.clone(),
            source: BeatSource::Config,
            updated_at: None,
        })
        .collect();
    for d in dynamic {
        match out.iter_mut().find(|e| e.beat.name == d.beat.name) {
            Some(e) => {
                *e = Effective {
                    beat: d.beat,
                    source: BeatSource::ApiOverConfig,
                    updated_at: Some(d.updated_at),
                }
            }
            None => out.push(Effective {
                beat: d.beat,
                source: BeatSource::Api,
                updated_at: Some(d.updated_at),
            }),
        }
    }
    out.sort_by(|a, b| a.beat.name.cmp(&b.beat.name));
    out
}
