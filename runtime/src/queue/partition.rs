//! Partitioned queues: `[queues.x] partitions = N` splits queue `x` into the
//! queues `x~0` to `x~<N-1>`. Each partition is a queue of its own: its own
//! keys under its own hash tag (`runner:{x~3}:...`), so on a Redis Cluster
//! the partitions of one hot queue are spread over the slots, and so over
//! the masters. (`~` is not allowed in a queue's own name: a partition's
//! name never meets another queue's.)
//!
//! - **Producers** place each job in one partition ([`Partitions::place`]):
//!   by its idempotency key when it has one (so a repeated request meets
//!   the job it repeats), else by its id (random bits: an even spread; and
//!   a workflow step, whose id is derived from its workflow, lands in the
//!   same partition however often its launch is retried).
//! - **Rate limits stay exact.** A job that carries a rate limit goes to the
//!   partition its limit's key picks (the queue's limit when it has one,
//!   else the task's), so every start a limit counts is in one partition's
//!   log, as on a queue of one partition. Such jobs are not spread: a
//!   rate-limited queue is bounded by its limit, not by one shard.
//! - **Workers** consuming `x` consume every partition, and `x` itself
//!   ([`Partitions::expand`]: jobs sent before the queue was split are
//!   not left behind), taking turns among those with work: a busy
//!   partition is drained by every worker of the queue. Lowering a
//!   queue's partitions strands the jobs of those it no longer has: drain
//!   the queue first.
//! - **Priorities** order the jobs of one partition; across partitions a
//!   worker takes turns, so a prioritized job waits behind at most one
//!   lease batch of each other partition.
//! - **Admin views** (`GET /v1/queues`, a queue's detail, dead letters,
//!   purge, replay, running, scheduled, job listings) add the partitions of
//!   `x` up under `x`; a job's own `queue` names its partition (`x~3`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::job::{Job, JobError, validate_queue_name};

/// The most partitions a queue may have.
pub const PARTITIONS_MAX: u32 = 64;

/// Between a queue's name and its partition's number.
const SEP: char = '~';

/// The partitioned queues of a configuration, and how many partitions
/// each has (queues not listed have one: they are not split).
#[derive(Clone, Debug, Default)]
pub struct Partitions {
    counts: Arc<BTreeMap<String, u32>>,
}

impl Partitions {
    /// From `(queue, partitions)` pairs; 1 leaves a queue whole.
    pub fn new<S: AsRef<str>>(
        queues: impl IntoIterator<Item = (S, u32)>,
    ) -> Result<Self, JobError> {
        let mut counts = BTreeMap::new();
        for (q, n) in queues {
            let q = q.as_ref();
            validate_queue_name(q)?;
            if n == 0 || n > PARTITIONS_MAX {
                return Err(JobError::InvalidQueue {
                    name: q.to_string(),
                    reason: format!("partitions must be 1 to {PARTITIONS_MAX}, not {n}"),
                });
            }
            if n > 1 {
                counts.insert(q.to_string(), n);
            }
        }
        Ok(Self {
            counts: Arc::new(counts),
        })
    }

    /// How many partitions `queue` has (1: not split).
    pub fn count(&self, queue: &str) -> u32 {
        self.counts.get(queue).copied().unwrap_or(1)
    }

    /// The partitioned queues and their counts, by name.
    pub fn split_queues(&self) -> impl Iterator<Item = (&str, u32)> {
        self.counts.iter().map(|(q, n)| (q.as_str(), *n))
    }

    /// The queues that may hold `queue`'s jobs: itself, then its
    /// partitions when it is split (jobs sent to it before it was split
    /// stay in it, and are consumed and listed with the rest).
    pub fn names(&self, queue: &str) -> Vec<String> {
        let mut names = vec![queue.to_string()];
        match self.count(queue) {
            1 => {}
            n => names.extend((0..n).map(|i| partition_name(queue, i))),
        }
        names
    }

    /// `queues` with every partitioned one replaced by its partitions (in
    /// order; each name once).
    pub fn expand(&self, queues: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for q in queues {
            for name in self.names(q) {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        out
    }

    /// Moves a job of a partitioned queue to its partition (see the module
    /// docs); a job of any other queue (or already in a partition) stays.
    pub fn place(&self, job: &mut Job) {
        let n = self.count(&job.queue);
        if n == 1 {
            return;
        }
        let limit = job
            .rate_limits
            .iter()
            .find(|l| l.key.starts_with("queue:"))
            .or_else(|| job.rate_limits.first());
        let by = match (limit, &job.idempotency_key) {
            (Some(l), _) => fnv1a(l.key.as_bytes()),
            (None, Some(k)) => fnv1a(k.as_bytes()),
            (None, None) => fnv1a(job.id.0.as_bytes()),
        };
        // `n` <= PARTITIONS_MAX: the remainder fits.
        let i = (by % u64::from(n)) as u32;
        job.queue = partition_name(&job.queue, i);
    }
}

/// The name of partition `i` of `queue`: `queue~i`.
pub fn partition_name(queue: &str, i: u32) -> String {
    format!("{queue}{SEP}{i}")
}

/// The queue a queue name belongs to: `x` for `x~3` (and for `x`).
pub fn queue_of(name: &str) -> &str {
    match name.rsplit_once(SEP) {
        Some((q, i)) if !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()) => q,
        _ => name,
    }
}

/// Checks a queue's name, or a partition's (`x~3`: a valid queue name, `~`
/// and a number below [`PARTITIONS_MAX`]).
pub fn validate_queue_or_partition(name: &str) -> Result<(), JobError> {
    let Some((q, i)) = name.rsplit_once(SEP) else {
        return validate_queue_name(name);
    };
    validate_queue_name(q)?;
    let digits = !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit());
    match i.parse::<u32>() {
        Ok(n) if digits && n < PARTITIONS_MAX && (i == "0" || !i.starts_with('0')) => Ok(()),
        _ => Err(JobError::InvalidQueue {
            name: name.to_string(),
            reason: format!(
                "{i:?} is not a partition's number (0 to {})",
                PARTITIONS_MAX - 1
            ),
        }),
    }
}

/// FNV-1a, 64 bits: the same in every process and every build (placing a
/// job must not depend on which producer placed it).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::job::RateLimit;

    fn job(queue: &str) -> Job {
        Job::new(queue.to_string(), "{}".to_string(), chrono::Utc::now())
    }

    #[test]
    fn a_queue_of_many_partitions_spreads_its_jobs() {
        let p = Partitions::new([("hot", 8)]).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let mut j = job("hot");
            p.place(&mut j);
            assert_eq!(queue_of(&j.queue), "hot");
            validate_queue_or_partition(&j.queue).unwrap();
            seen.insert(j.queue);
        }
        assert_eq!(seen.len(), 8, "{seen:?}");
        // Other queues stay whole.
        let mut j = job("cold");
        p.place(&mut j);
        assert_eq!(j.queue, "cold");
    }

    #[test]
    fn a_key_or_a_rate_limit_picks_one_partition() {
        let p = Partitions::new([("hot", 8)]).unwrap();
        let placed = |edit: &dyn Fn(&mut Job)| {
            let mut j = job("hot");
            edit(&mut j);
            p.place(&mut j);
            j.queue
        };
        let keyed = |j: &mut Job| j.idempotency_key = Some("order-42".into());
        let first = placed(&keyed);
        for _ in 0..20 {
            assert_eq!(placed(&keyed), first);
        }
        let task = RateLimit::parse("task:mail", "10/s").unwrap();
        let queue = RateLimit::parse("queue:hot", "30/m").unwrap();
        let by_task = |j: &mut Job| j.rate_limits = vec![task.clone()];
        let both = |j: &mut Job| {
            j.rate_limits = vec![task.clone(), queue.clone()];
            j.idempotency_key = Some("x".into());
        };
        let only_queue = |j: &mut Job| j.rate_limits = vec![queue.clone()];
        let t = placed(&by_task);
        let q = placed(&only_queue);
        for _ in 0..20 {
            assert_eq!(placed(&by_task), t);
            // The queue's limit wins over the task's and over a key.
            assert_eq!(placed(&both), q);
        }
    }

    #[test]
    fn names_and_counts_are_checked() {
        let p = Partitions::new([("a", 3), ("b", 1)]).unwrap();
        assert_eq!(p.names("a"), ["a", "a~0", "a~1", "a~2"]);
        assert_eq!(p.names("b"), ["b"]);
        assert_eq!(
            p.expand(&["b".into(), "a~1".into(), "a".into()]),
            ["b", "a~1", "a", "a~0", "a~2"]
        );
        assert_eq!(p.split_queues().collect::<Vec<_>>(), [("a", 3)]);
        for bad in [0, PARTITIONS_MAX + 1] {
            let e = Partitions::new([("a", bad)]).unwrap_err().to_string();
            assert!(e.contains("partitions must be 1 to 64"), "{e}");
        }
        assert!(Partitions::new([("a~1", 2)]).is_err());
        for ok in ["a", "a~0", "a~63", "a.b:c~7"] {
            validate_queue_or_partition(ok).unwrap();
        }
        for bad in ["a~", "a~64", "a~01", "a~-1", "a~+1", "~1", "a~1~2", "a b~1"] {
            assert!(validate_queue_or_partition(bad).is_err(), "{bad}");
        }
        assert_eq!(queue_of("a~12"), "a");
        assert_eq!(queue_of("a"), "a");
    }
}
