//! Client-side limits: at most N requests in flight, and at most M requests
//! started in any sliding window of one minute.
//!
//! Both block the calling thread (the clients are synchronous and callers fan
//! out with threads); a permit is released when it is dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Shared limits for one client (clones share the same counters).
#[derive(Debug, Clone, Default)]
pub struct Limiter {
    inner: Arc<LimiterInner>,
}

#[derive(Debug, Default)]
struct LimiterInner {
    max_in_flight: Option<usize>,
    in_flight: Mutex<usize>,
    released: Condvar,
    window: Option<Window>,
}

#[derive(Debug)]
struct Window {
    max_starts: usize,
    period: Duration,
    starts: Mutex<VecDeque<Instant>>,
}

/// Held while a request is in flight.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<LimiterInner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.inner.max_in_flight.is_some() {
            let mut in_flight = lock(&self.inner.in_flight);
            *in_flight = in_flight.saturating_sub(1);
            self.inner.released.notify_one();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these counters inconsistent, so poisoning is ignored.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Limiter {
    /// At most `max_in_flight` concurrent requests and `requests_per_minute` starts per minute.
    pub fn new(max_in_flight: Option<usize>, requests_per_minute: Option<u32>) -> Self {
        Self::with_period(max_in_flight, requests_per_minute, Duration::from_secs(60))
    }

    /// As [`Limiter::new`] with a window other than a minute (tests).
    pub fn with_period(
        max_in_flight: Option<usize>,
        max_starts: Option<u32>,
        period: Duration,
    ) -> Self {
        Limiter {
            inner: Arc::new(LimiterInner {
                max_in_flight: max_in_flight.map(|n| n.max(1)),
                in_flight: Mutex::new(0),
                released: Condvar::new(),
                window: max_starts.map(|n| Window {
                    max_starts: n.max(1) as usize,
                    period,
                    starts: Mutex::new(VecDeque::new()),
                }),
            }),
        }
    }

    /// Blocks until a request may start.
    pub fn acquire(&self) -> Permit {
        if let Some(max) = self.inner.max_in_flight {
            let mut in_flight = lock(&self.inner.in_flight);
            while *in_flight >= max {
                in_flight = self
                    .inner
                    .released
                    .wait(in_flight)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *in_flight += 1;
        }
        if let Some(window) = &self.inner.window {
            loop {
                let wait = {
                    let mut starts = lock(&window.starts);
                    next_start_wait(
                        &mut starts,
                        Instant::now(),
                        window.max_starts,
                        window.period,
                    )
                };
                match wait {
                    None => break,
                    Some(wait) => std::thread::sleep(wait),
                }
            }
        }
        Permit {
            inner: self.inner.clone(),
        }
    }
}

/// Records a start at `now` and returns `None` when fewer than `max_starts` started
/// within `period`; otherwise how long until the oldest start leaves the window.
pub(crate) fn next_start_wait(
    starts: &mut VecDeque<Instant>,
    now: Instant,
    max_starts: usize,
    period: Duration,
) -> Option<Duration> {
    while starts
        .front()
        .is_some_and(|&t| now.saturating_duration_since(t) >= period)
    {
        starts.pop_front();
    }
    if starts.len() < max_starts {
        starts.push_back(now);
        return None;
    }
    let oldest = *starts.front()?;
    Some(
        (oldest + period)
            .saturating_duration_since(now)
            .max(Duration::from_millis(1)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn window_admits_max_starts_then_waits_for_the_oldest() {
        let period = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut starts = VecDeque::new();
        assert_eq!(next_start_wait(&mut starts, t0, 2, period), None);
        assert_eq!(
            next_start_wait(&mut starts, t0 + Duration::from_secs(10), 2, period),
            None
        );
        assert_eq!(
            next_start_wait(&mut starts, t0 + Duration::from_secs(20), 2, period),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            next_start_wait(&mut starts, t0 + Duration::from_secs(60), 2, period),
            None
        );
        assert_eq!(starts.len(), 2);
    }

    #[test]
    fn concurrency_never_exceeds_the_limit() {
        let limiter = Limiter::new(Some(2), None);
        let current = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (limiter, current, peak) = (limiter.clone(), current.clone(), peak.clone());
                std::thread::spawn(move || {
                    let _permit = limiter.acquire();
                    let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    current.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn rate_window_delays_the_extra_start() {
        let limiter = Limiter::with_period(None, Some(2), Duration::from_millis(150));
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(limiter.acquire());
        }
        assert!(
            t0.elapsed() >= Duration::from_millis(140),
            "{:?}",
            t0.elapsed()
        );
    }
}
