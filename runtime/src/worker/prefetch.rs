//! How many jobs a worker leases ahead of a free slot.
//!
//! Leasing ahead saves round trips (one settle call stores the results of
//! many jobs and leases as many more), but a leased job waits for a slot of
//! this worker even when another worker is idle. A fixed prefetch is a bet
//! on how long jobs run; the adaptive one (the default) measures it:
//!
//! - it keeps a moving average of how long this worker's runs take (start
//!   to end, every queue);
//! - it leases ahead as many jobs as its slots would start within
//!   [`HORIZON`]: `concurrency * HORIZON / average run`, at most
//!   [`cap`] (`max(64, 4 * concurrency)`) and at least none. Microsecond
//!   runs lease the cap (one call per 64 jobs); runs of `concurrency *
//!   HORIZON` or more lease nothing ahead (a job is leased when a slot is
//!   free);
//! - before its first run ends it leases `concurrency` ahead;
//! - **no hostages**: while every slot is busy and a leased job has waited
//!   longer than [`Prefetcher::hand_back_after`] (`max(250 ms, 4 * average
//!   run)`), the jobs waiting for a slot are handed back to the queue, where
//!   another worker takes them, and nothing more is leased until a slot
//!   frees. A slow job holds no other job back.
//!
//! A fixed prefetch (`[worker] prefetch`, `--prefetch`) leases exactly that
//! many ahead and never hands back.

use std::time::Duration;

/// How far ahead the adaptive prefetch leases: jobs its slots would start
/// within this time.
pub const HORIZON: Duration = Duration::from_millis(5);

/// The least time a leased job waits for a slot before it is handed back.
pub const MIN_HAND_BACK: Duration = Duration::from_millis(250);

/// The most jobs the adaptive prefetch leases ahead for `concurrency`
/// slots.
pub fn cap(concurrency: usize) -> usize {
    64.max(concurrency.saturating_mul(4))
}

/// Jobs leased ahead of a free slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// Exactly this many.
    Fixed(usize),
    /// Sized from the observed run times (the module docs).
    Adaptive,
}

/// The state of a worker's prefetch.
#[derive(Clone, Debug)]
pub struct Prefetcher {
    mode: Prefetch,
    concurrency: usize,
    /// Moving average of run times, in seconds.
    average: Option<f64>,
}

impl Prefetcher {
    pub fn new(mode: Prefetch, concurrency: usize) -> Self {
        Prefetcher {
            mode,
            concurrency: concurrency.max(1),
            average: None,
        }
    }

    /// The worker now runs `concurrency` jobs at once (`slots.rs`).
    pub fn set_concurrency(&mut self, concurrency: usize) {
        self.concurrency = concurrency.max(1);
    }

    /// A run took `run`.
    pub fn observe(&mut self, run: Duration) {
        let s = run.as_secs_f64();
        self.average = Some(match self.average {
            None => s,
            // Recent runs weigh most: a change of workload shows within a
            // few dozen runs.
            Some(a) => a + (s - a) * 0.1,
        });
    }

    /// The average run time observed so far.
    pub fn average(&self) -> Option<Duration> {
        self.average.map(Duration::from_secs_f64)
    }

    /// How many jobs to hold beyond the slots now; `stalled` says every
    /// slot is busy and a leased job waits past [`Self::hand_back_after`].
    pub fn ahead(&self, stalled: bool) -> usize {
        match self.mode {
            Prefetch::Fixed(n) => n,
            Prefetch::Adaptive if stalled => 0,
            Prefetch::Adaptive => match self.average {
                None => self.concurrency,
                Some(a) => {
                    let n = self.concurrency as f64 * HORIZON.as_secs_f64() / a.max(1e-9);
                    (n.floor() as usize).min(cap(self.concurrency))
                }
            },
        }
    }

    /// How long a leased job may wait for a slot before it is handed back
    /// (`None`: never, with a fixed prefetch).
    pub fn hand_back_after(&self) -> Option<Duration> {
        match self.mode {
            Prefetch::Fixed(_) => None,
            Prefetch::Adaptive => Some(
                self.average()
                    .map_or(MIN_HAND_BACK, |a| (a * 4).max(MIN_HAND_BACK)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(runs: &[Duration], concurrency: usize) -> Prefetcher {
        let mut p = Prefetcher::new(Prefetch::Adaptive, concurrency);
        for r in runs {
            p.observe(*r);
        }
        p
    }

    #[test]
    fn fast_runs_lease_the_cap_and_never_more() {
        for c in [1, 2, 8, 64] {
            let p = after(&[Duration::from_micros(15); 50], c);
            assert_eq!(p.ahead(false), cap(c), "concurrency {c}");
            let p = after(&[Duration::ZERO; 5], c);
            assert_eq!(p.ahead(false), cap(c), "concurrency {c}, instant runs");
        }
    }

    #[test]
    fn slow_runs_lease_nothing_ahead() {
        let p = after(&[Duration::from_millis(50); 20], 2);
        assert_eq!(p.ahead(false), 0);
        // In between: as many as the slots start within the horizon.
        let p = after(&[Duration::from_micros(500); 50], 2);
        assert_eq!(p.ahead(false), 20);
    }

    #[test]
    fn the_average_follows_a_change_of_workload() {
        let mut p = after(&[Duration::from_micros(10); 100], 2);
        assert_eq!(p.ahead(false), 64);
        for _ in 0..60 {
            p.observe(Duration::from_millis(100));
        }
        assert_eq!(p.ahead(false), 0, "{:?}", p.average());
        assert!(p.hand_back_after().unwrap() >= Duration::from_millis(390));
    }

    #[test]
    fn unknown_runs_lease_the_concurrency_and_a_stall_leases_nothing() {
        let p = Prefetcher::new(Prefetch::Adaptive, 3);
        assert_eq!(p.ahead(false), 3);
        assert_eq!(p.ahead(true), 0);
        assert_eq!(p.hand_back_after(), Some(MIN_HAND_BACK));
        let fixed = Prefetcher::new(Prefetch::Fixed(7), 3);
        assert_eq!((fixed.ahead(false), fixed.ahead(true)), (7, 7));
        assert_eq!(fixed.hand_back_after(), None);
    }
}
