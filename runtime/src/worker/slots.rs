//! How many jobs a worker runs at once.
//!
//! `concurrency = N` (`[worker]`, or `--concurrency N`) runs exactly N.
//! Without it, a worker adapts between one slot per core and
//! [`default_max`] (`max_concurrency` sets that bound). Every [`WINDOW`]
//! it looks at the window just past:
//!
//! - **saturation**: the share of the time every slot was busy while more
//!   work waited (jobs leased ahead, or a queue said to hold more);
//! - **busy**: of the time runs held slots, the share they were working
//!   (being polled, or compiling their module on a blocking thread), not
//!   waiting for a host call (mail, webhooks, timers) to answer;
//! - **CPU**: the process's CPU time (`getrusage`) as a share of the cores.
//!
//! When the slots were saturated for most of the window (over
//! [`SATURATED`]), the runs mostly waited (busy under [`IDLE_CPU`]) and the
//! cores were mostly idle (CPU under [`IDLE_CPU`]), the runs are waiting on
//! something other than the CPU: more slots start more of them, so it adds
//! half as many again (at least one), up to the maximum. (A CPU-bound run
//! slowed by other processes on the machine still counts as busy, so
//! contention does not look like waiting.) When the cores are nearly full
//! (over [`BUSY_CPU`]) and it runs more slots than its base, it takes a
//! quarter of the extra slots away (at least one): more runs than the cores
//! can serve only stretch each run's wall-clock time towards its limit.
//! Otherwise it keeps what it has. CPU-bound tasks therefore stay at one
//! slot per core, and tasks that wait grow the worker until either the
//! queue is drained faster than it fills or the CPU is busy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// How often an adaptive worker reconsiders its slots.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Saturated for more than this share of a window: it may grow.
pub const SATURATED: f64 = 0.5;
/// It grows only while the process uses less than this share of the cores.
pub const IDLE_CPU: f64 = 0.5;
/// It shrinks when the process uses more than this share of the cores.
pub const BUSY_CPU: f64 = 0.9;

/// The most slots an adaptive worker grows to by default.
pub fn default_max(cores: usize) -> usize {
    16.max(cores.saturating_mul(8))
}

/// The slots to run next window: a pure function of the last one's
/// figures (the module docs).
pub fn decide(
    current: usize,
    min: usize,
    max: usize,
    saturation: f64,
    busy: f64,
    cpu: f64,
) -> usize {
    if saturation > SATURATED && busy < IDLE_CPU && cpu < IDLE_CPU && current < max {
        (current + (current / 2).max(1)).min(max)
    } else if cpu > BUSY_CPU && current > min {
        let extra = current - min;
        current - (extra / 4).max(1)
    } else {
        current
    }
}

/// The process's CPU time so far (user and system).
fn process_cpu() -> Option<Duration> {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Some(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// A run's future, boxed (spawning it moves a pointer, not the future),
/// adding the time spent polling it to a counter.
pub struct Timed<F> {
    fut: Pin<Box<F>>,
    polled: Arc<AtomicU64>,
}

impl<F: Future> Timed<F> {
    pub fn new(fut: F, polled: Arc<AtomicU64>) -> Self {
        Timed {
            fut: Box::pin(fut),
            polled,
        }
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let t = std::time::Instant::now();
        let out = self.fut.as_mut().poll(cx);
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.polled.fetch_add(ns, Ordering::Relaxed);
        out
    }
}

/// A worker's slots.
#[derive(Debug)]
pub struct Slots {
    current: usize,
    min: usize,
    max: usize,
    cores: usize,
    window_start: Instant,
    cpu_at_start: Option<Duration>,
    /// This window's saturated time and slot time taken by runs (runs x
    /// seconds), as of `last_note`; since then `running` run and the
    /// slots are `saturated` or not.
    saturated_secs: f64,
    occupied: f64,
    last_note: Instant,
    running: usize,
    saturated: bool,
    /// Nanoseconds the runs worked: polled ([`Timed`]) or compiling their
    /// module (a blocking task); and the count at the window's start.
    polled: Arc<AtomicU64>,
    polled_at_start: u64,
    /// Runs compiling their module now.
    loading: Arc<AtomicUsize>,
}

impl Slots {
    /// `concurrency` slots, adapting up to `max` when that is more; the
    /// runs add the time they work (not wait) to `busy_ns`.
    pub fn new(
        concurrency: usize,
        max: Option<usize>,
        busy_ns: Arc<AtomicU64>,
        loading: Arc<AtomicUsize>,
    ) -> Self {
        let min = concurrency.max(1);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Slots {
            current: min,
            min,
            max: max.unwrap_or(min).max(min),
            cores,
            window_start: Instant::now(),
            cpu_at_start: process_cpu(),
            saturated_secs: 0.0,
            occupied: 0.0,
            last_note: Instant::now(),
            running: 0,
            saturated: false,
            loading,
            polled_at_start: busy_ns.load(Ordering::Relaxed),
            polled: busy_ns,
        }
    }

    /// The counter a run's [`Timed`] adds to.
    pub fn polled(&self) -> Arc<AtomicU64> {
        self.polled.clone()
    }

    pub fn current(&self) -> usize {
        self.current
    }

    /// The most slots it may ever run.
    pub fn max(&self) -> usize {
        self.max
    }

    pub fn adaptive(&self) -> bool {
        self.max > self.min
    }

    /// How many runs are running and whether every slot is busy while more
    /// work waits, as of `now`.
    pub fn note(&mut self, now: Instant, running: usize, saturated: bool) {
        self.integrate_until(now);
        self.running = running;
        self.saturated = saturated;
    }

    /// Adds the time since the last note to the window's figures.
    fn integrate_until(&mut self, now: Instant) {
        let since = self.last_note.max(self.window_start);
        let secs = now.saturating_duration_since(since).as_secs_f64();
        self.occupied += self.running as f64 * secs;
        if self.saturated {
            self.saturated_secs += secs;
        }
        self.last_note = now;
    }

    /// Ends the window at `now`: the new slot count when it changed.
    pub fn adapt(&mut self, now: Instant) -> Option<usize> {
        let window = now.saturating_duration_since(self.window_start);
        if window.is_zero() {
            return None;
        }
        self.integrate_until(now);
        let cpu_now = process_cpu();
        let cpu = match (self.cpu_at_start, cpu_now) {
            (Some(a), Some(b)) => {
                b.saturating_sub(a).as_secs_f64() / (window.as_secs_f64() * self.cores as f64)
            }
            // No CPU figure: never grow on a guess.
            _ => 1.0,
        };
        let polled = self.polled.load(Ordering::Relaxed);
        // Of the time runs held slots, the share they worked (no runs: no
        // sign of waiting).
        let worked = polled.saturating_sub(self.polled_at_start) as f64 / 1e9;
        let busy = if self.occupied > 0.0 {
            worked / self.occupied
        } else {
            1.0
        };
        self.occupied = 0.0;
        self.window_start = now;
        self.cpu_at_start = cpu_now;
        self.polled_at_start = polled;
        let share = self.saturated_secs / window.as_secs_f64();
        self.saturated_secs = 0.0;
        // A run compiling its module says nothing of what runs need (its
        // time counts as work only once the compilation ends).
        if self.loading.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let next = decide(self.current, self.min, self.max, share, busy, cpu);
        (next != self.current).then(|| {
            self.current = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_runs_grow_the_slots_up_to_the_max() {
        let mut n = 2;
        let mut seen = vec![n];
        while n < 16 {
            n = decide(n, 2, 16, 0.9, 0.05, 0.1);
            seen.push(n);
        }
        assert_eq!(seen, [2, 3, 4, 6, 9, 13, 16]);
        assert_eq!(decide(16, 2, 16, 1.0, 0.0, 0.0), 16);
    }

    #[test]
    fn busy_cores_or_idle_slots_do_not_grow_them() {
        // CPU-bound: the cores are the limit.
        assert_eq!(decide(2, 2, 16, 1.0, 0.95, 0.95), 2);
        assert_eq!(decide(2, 2, 16, 1.0, 0.9, 0.6), 2);
        // CPU-bound runs slowed by another process: busy, the process's
        // CPU share low.
        assert_eq!(decide(2, 2, 16, 1.0, 0.9, 0.3), 2);
        // Slots idle most of the time: more would sit idle too.
        assert_eq!(decide(2, 2, 16, 0.3, 0.05, 0.05), 2);
    }

    #[test]
    fn full_cores_take_extra_slots_back_to_the_base() {
        let mut n = 16;
        let mut seen = vec![n];
        while n > 2 {
            n = decide(n, 2, 16, 1.0, 0.5, 0.97);
            seen.push(n);
        }
        assert_eq!(seen.first(), Some(&16));
        assert_eq!(seen.last(), Some(&2));
        assert!(seen.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn a_fixed_count_never_changes() {
        let mut s = Slots::new(3, None, Arc::default(), Arc::default());
        assert!(!s.adaptive());
        let t = Instant::now();
        s.note(t, 3, true);
        assert_eq!(s.adapt(t + Duration::from_secs(1)), None);
        assert_eq!(s.current(), 3);
    }

    #[test]
    fn saturation_is_measured_over_the_window() {
        let mut s = Slots::new(1, Some(4), Arc::default(), Arc::default());
        let t0 = s.window_start;
        s.note(t0 + Duration::from_millis(100), 1, true);
        s.note(t0 + Duration::from_millis(900), 0, false);
        assert!(
            (s.saturated_secs - 0.8).abs() < 1e-9,
            "{}",
            s.saturated_secs
        );
        assert!((s.occupied - 0.8).abs() < 1e-9, "{}", s.occupied);
    }

    #[tokio::test]
    async fn a_timed_future_counts_time_in_its_polls() {
        let polled = Arc::new(AtomicU64::new(0));
        let t = std::time::Instant::now();
        Timed::new(
            tokio::time::sleep(Duration::from_millis(50)),
            polled.clone(),
        )
        .await;
        let waited = t.elapsed();
        let ns = polled.load(Ordering::Relaxed);
        // Polled at least once, and never longer than it existed.
        assert!(
            ns > 0 && Duration::from_nanos(ns) <= waited,
            "{ns} ns in {waited:?}"
        );
    }
}
