//! Rate limiting of a device's I/O with token buckets, as Firecracker's `rate_limiter`
//! objects describe them: one bucket for bytes (`bandwidth`) and one for requests
//! (`ops`), each with a `size` (tokens when full), a `refill_time` (milliseconds from
//! empty to full) and a `one_time_burst` (extra tokens, spent first and never refilled).
//!
//! A request that finds too few tokens is left where it is and the limiter's timerfd is
//! armed for the moment enough will have come back; the device's event loop waits on
//! that fd, so a throttled device costs no host CPU. A request larger than a bucket's
//! size goes through once the bucket is full and leaves it in debt, so the long-run rate
//! is exactly size / refill_time whatever the request sizes.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// Errors of a rate limiter.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    #[error("cannot create the rate limiter's timerfd")]
    Timer(#[source] std::io::Error),
    #[error("cannot arm the rate limiter's timerfd")]
    Arm(#[source] std::io::Error),
}

/// One token bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    size: u64,
    refill_time: Duration,
    /// Tokens now; negative while in debt after a request larger than `size`.
    budget: f64,
    one_time_burst: u64,
    last_refill: Instant,
}

impl TokenBucket {
    /// A full bucket of `size` tokens refilled in `refill_time_ms`, with `one_time_burst`
    /// extra tokens. `None` when size or refill time is 0 (Firecracker: no limit).
    pub fn new(size: u64, one_time_burst: u64, refill_time_ms: u64) -> Option<Self> {
        if size == 0 || refill_time_ms == 0 {
            return None;
        }
        Some(Self {
            size,
            refill_time: Duration::from_millis(refill_time_ms),
            budget: size as f64,
            one_time_burst,
            last_refill: Instant::now(),
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_refill);
        self.last_refill = now;
        let added = elapsed.as_secs_f64() / self.refill_time.as_secs_f64() * self.size as f64;
        self.budget = (self.budget + added).min(self.size as f64);
    }

    /// Tokens a request of `tokens` must find: all of them, or a full bucket for one
    /// larger than the bucket.
    fn needed(&self, tokens: u64) -> f64 {
        tokens.min(self.size) as f64
    }

    /// How long until `tokens` can be taken (zero: now).
    fn wait_for(&mut self, tokens: u64, now: Instant) -> Duration {
        self.refill(now);
        let missing = self.needed(tokens) - self.budget - self.one_time_burst as f64;
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        self.refill_time.mul_f64(missing / self.size as f64)
    }

    /// Takes `tokens` (the caller checked with `wait_for`): the burst first.
    fn take(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.one_time_burst);
        self.one_time_burst -= from_burst;
        self.budget -= (tokens - from_burst) as f64;
    }

    /// The bucket's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The one-time burst left.
    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }
}

/// A device's limiter: a bandwidth bucket, an ops bucket (either may be absent) and the
/// timerfd that wakes the device when a throttled request may go.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    throttled: bool,
}

impl RateLimiter {
    /// A limiter with these buckets.
    pub fn new(
        bandwidth: Option<TokenBucket>,
        ops: Option<TokenBucket>,
    ) -> Result<Self, RateLimiterError> {
        Ok(Self {
            bandwidth,
            ops,
            timer: TimerFd::new().map_err(|e| RateLimiterError::Timer(e.into()))?,
            throttled: false,
        })
    }

    /// Replaces the buckets (PATCH of the rate limiter); `None` keeps that one. A waiting
    /// request is tried again at the next wake-up.
    pub fn update(
        &mut self,
        bandwidth: Option<Option<TokenBucket>>,
        ops: Option<Option<TokenBucket>>,
    ) {
        if let Some(b) = bandwidth {
            self.bandwidth = b;
        }
        if let Some(o) = ops {
            self.ops = o;
        }
        if self.throttled {
            // Wake the device at once to try again under the new limits.
            let _ = self.timer.reset(Duration::from_nanos(1), None);
        }
    }

    /// Whether one request of `bytes` may go now; if so its tokens are taken. If not,
    /// the timer is armed for when it may, and the device should stop until it fires.
    pub fn consume(&mut self, bytes: u64) -> Result<bool, RateLimiterError> {
        let now = Instant::now();
        let wait_bw = (self.bandwidth.as_mut()).map_or(Duration::ZERO, |b| b.wait_for(bytes, now));
        let wait_ops = (self.ops.as_mut()).map_or(Duration::ZERO, |b| b.wait_for(1, now));
        let wait = wait_bw.max(wait_ops);
        if wait.is_zero() {
            if let Some(b) = &mut self.bandwidth {
                b.take(bytes);
            }
            if let Some(o) = &mut self.ops {
                o.take(1);
            }
            return Ok(true);
        }
        // At least a millisecond: a wake-up per request at high rates costs more than it
        // gives.
        let wait = wait.max(Duration::from_millis(1));
        self.timer
            .reset(wait, None)
            .map_err(|e| RateLimiterError::Arm(e.into()))?;
        self.throttled = true;
        Ok(false)
    }

    /// Whether a request is waiting for the timer.
    pub fn is_throttled(&self) -> bool {
        self.throttled
    }

    /// The timer fired: clears it; the device then tries its requests again.
    pub fn on_timer(&mut self) {
        // The fd is readable (the event loop said so), so this read does not block.
        let _ = self.timer.wait();
        self.throttled = false;
    }

    /// The buckets (bandwidth, ops).
    pub fn buckets(&self) -> (Option<&TokenBucket>, Option<&TokenBucket>) {
        (self.bandwidth.as_ref(), self.ops.as_ref())
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn zero_size_or_refill_means_no_bucket() {
        assert!(TokenBucket::new(0, 10, 100).is_none());
        assert!(TokenBucket::new(10, 10, 0).is_none());
    }

    #[test]
    fn a_bucket_refills_at_size_per_refill_time() {
        let mut b = TokenBucket::new(1000, 0, 100).unwrap();
        let t0 = b.last_refill;
        assert_eq!(b.wait_for(1000, t0), Duration::ZERO);
        b.take(1000);
        // Empty: 500 tokens take half the refill time.
        let w = b.wait_for(500, t0);
        assert!((w.as_secs_f64() - 0.05).abs() < 1e-6, "{w:?}");
        assert_eq!(b.wait_for(500, at(t0, 50)), Duration::ZERO);
        b.take(500);
        // Never above the size.
        b.refill(at(t0, 10_000));
        assert_eq!(b.budget, 1000.0);
    }

    #[test]
    fn the_one_time_burst_is_spent_first_and_not_refilled() {
        let mut b = TokenBucket::new(100, 1000, 1000).unwrap();
        let t0 = b.last_refill;
        assert_eq!(b.wait_for(1100, t0), Duration::ZERO);
        b.take(1000);
        assert_eq!((b.one_time_burst(), b.budget), (0, 100.0));
        b.take(100);
        b.refill(at(t0, 60_000));
        assert_eq!((b.one_time_burst(), b.budget), (0, 100.0));
    }

    #[test]
    fn a_request_larger_than_the_bucket_waits_for_a_full_bucket_then_leaves_debt() {
        let mut b = TokenBucket::new(100, 0, 100).unwrap();
        let t0 = b.last_refill;
        assert_eq!(b.wait_for(250, t0), Duration::ZERO);
        b.take(250);
        assert_eq!(b.budget, -150.0);
        // 150 to pay back, then 10 more: 160 ms.
        let w = b.wait_for(10, t0);
        assert!((w.as_secs_f64() - 0.16).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn a_limiter_checks_both_buckets_and_takes_from_both_or_neither() {
        let bw = TokenBucket::new(1000, 0, 1000);
        let ops = TokenBucket::new(2, 0, 1000);
        let mut l = RateLimiter::new(bw, ops).unwrap();
        assert!(l.consume(100).unwrap());
        assert!(l.consume(100).unwrap());
        // Out of ops: refused, and the bandwidth bucket untouched.
        assert!(!l.consume(100).unwrap());
        assert!(l.is_throttled());
        let (bw, ops) = l.buckets();
        assert!(bw.unwrap().budget > 799.0 && bw.unwrap().budget < 801.0);
        assert!(ops.unwrap().budget < 0.01);
        // The timer fires after about half a second (1 op at 2 per second).
        let start = Instant::now();
        let mut fds = [libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, and the length says so.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 5000) };
        assert_eq!(n, 1);
        let waited = start.elapsed();
        assert!(
            waited > Duration::from_millis(400) && waited < Duration::from_millis(1500),
            "{waited:?}"
        );
        l.on_timer();
        assert!(!l.is_throttled());
        assert!(l.consume(100).unwrap());
    }

    #[test]
    fn updating_a_throttled_limiter_wakes_it_at_once() {
        let mut l = RateLimiter::new(None, TokenBucket::new(1, 0, 100_000)).unwrap();
        assert!(l.consume(1).unwrap());
        assert!(!l.consume(1).unwrap());
        l.update(None, Some(None));
        let mut fds = [libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, and the length says so.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
        assert_eq!(n, 1);
        l.on_timer();
        assert!(l.consume(1).unwrap());
    }
}
