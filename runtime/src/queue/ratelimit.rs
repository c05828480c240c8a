//! Global rate limits: at most `count` starts in any window of `period`.
//!
//! The rule, shared by both brokers (the Redis one runs it in Lua, inside
//! the script that leases jobs, so that every worker sees the same log):
//!
//! - a log per limit key holds the lease times of recent starts;
//! - a job may start at `now` when fewer than `count` starts lie in
//!   `(now - period, now]`; its start is logged;
//! - otherwise it waits in the delayed set until the earliest time a start
//!   leaves the window, and no earlier than `period / count` after the
//!   previous job those limits deferred (the "tail" of each limit that
//!   holds it back), so that a backlog comes back one by one at the
//!   allowed rate instead of all at once. A limit the job is within keeps
//!   its tail: a task's backlog under its own limit, deferred for hours,
//!   does not push the queue's other jobs after it.
//!
//! The check at lease time is exact; the tail only spreads wake-ups. A job
//! given back unrun (a worker hands back what it leased ahead, or shuts
//! down) did not start: its start leaves the logs, and it is logged again
//! when it is leased again.
//!
//! A log lives with its queue (in Redis, under the queue's hash tag, so
//! that one script in one slot reads and writes it): a limit counts the
//! starts of the jobs of one queue. A queue's limit (`queue:NAME`) is
//! therefore global for that queue, and a task's limit (`task:NAME`) is
//! global for that task in each queue it runs in: jobs of one task sent to
//! two queues start at up to twice its rate. Both brokers mean exactly this.

use std::collections::{HashMap, VecDeque};

use super::job::RateLimit;

#[derive(Default, Debug)]
struct Log {
    starts: VecDeque<i64>,
    tail: i64,
}

/// In-memory limiter for the embedded broker.
#[derive(Default, Debug)]
pub struct Limiter {
    logs: HashMap<String, Log>,
}

impl Limiter {
    /// `Ok(())` when a job under `rules` may start at `now` (its start is
    /// logged), `Err(slot)` with the time to try again otherwise.
    pub fn try_start(&mut self, rules: &[RateLimit], now: i64) -> Result<(), i64> {
        let mut blocked: Option<i64> = None;
        let mut holding: Vec<&RateLimit> = Vec::new();
        for r in rules {
            let log = self.logs.entry(r.key.clone()).or_default();
            let period = r.period_ms as i64;
            while log.starts.front().is_some_and(|&t| t <= now - period) {
                log.starts.pop_front();
            }
            let c = log.starts.len();
            let n = r.count as usize;
            if c >= n {
                let until = log.starts[c - n] + period;
                blocked = Some(blocked.map_or(until, |b| b.max(until)));
                holding.push(r);
            }
        }
        if let Some(until) = blocked {
            let mut slot = until.max(now);
            for r in &holding {
                let log = self.logs.entry(r.key.clone()).or_default();
                slot = slot.max(log.tail + (r.period_ms / r.count as u64) as i64);
            }
            for r in &holding {
                if let Some(log) = self.logs.get_mut(&r.key) {
                    log.tail = slot;
                }
            }
            return Err(slot);
        }
        for r in rules {
            let log = self.logs.entry(r.key.clone()).or_default();
            log.starts.push_back(now);
        }
        Ok(())
    }

    /// Withdraws the start logged at `at` for a job under `rules` that was
    /// given back unrun.
    pub fn unstart(&mut self, rules: &[RateLimit], at: i64) {
        for r in rules {
            if let Some(log) = self.logs.get_mut(&r.key)
                && let Some(i) = log.starts.iter().position(|&t| t == at)
            {
                log.starts.remove(i);
            }
        }
    }

    /// The starts `rule` counts at `now`: those in `(now - period, now]`.
    pub fn used(&self, rule: &RateLimit, now: i64) -> u64 {
        self.logs.get(&rule.key).map_or(0, |l| {
            l.starts
                .iter()
                .filter(|&&t| t > now - rule.period_ms as i64 && t <= now)
                .count() as u64
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_count_in_a_window() {
        let rule = RateLimit::parse("k", "5/2s").unwrap();
        let mut l = Limiter::default();
        let mut starts = Vec::new();
        // 40 jobs, each retried at its slot until it starts.
        let mut pending: Vec<i64> = vec![0; 40];
        while !pending.is_empty() {
            pending.sort();
            let now = pending.remove(0);
            match l.try_start(std::slice::from_ref(&rule), now) {
                Ok(()) => starts.push(now),
                Err(slot) => {
                    assert!(slot > now);
                    pending.push(slot);
                }
            }
        }
        starts.sort();
        for (i, &s) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().take_while(|&&t| t < s + 2000).count();
            assert!(in_window <= 5, "{in_window} starts after {s}");
        }
        assert_eq!(starts.len(), 40);
    }

    /// A job held back by one of its limits moves that limit's tail only:
    /// the others' jobs are not pushed after it.
    #[test]
    fn a_limit_a_job_is_within_keeps_its_tail() {
        let own = RateLimit::parse("task:slow", "1/h").unwrap();
        let queue = RateLimit::parse("queue:work", "2/s").unwrap();
        let both = [own, queue.clone()];
        let alone = std::slice::from_ref(&queue);
        let mut l = Limiter::default();
        assert_eq!(l.try_start(&both, 0), Ok(()));
        // Its own limit holds the second back for an hour.
        assert_eq!(l.try_start(&both, 0), Err(3_600_000));
        assert_eq!(l.try_start(alone, 0), Ok(()));
        // The queue's limit is full until the first start leaves its
        // window: a second, not an hour.
        assert_eq!(l.try_start(alone, 0), Err(1000));
        assert_eq!(l.try_start(alone, 0), Err(1500));
    }
}
