//! Token-bucket rate limiters for the virtio devices (Firecracker's model): a `bandwidth`
//! bucket of bytes and an `ops` bucket of requests. A device asks `consume(bytes)` before it
//! serves a request; when a bucket is short the request waits where it is (the chain stays in
//! the avail ring) and the limiter arms its timerfd for the moment the bucket will hold
//! enough. The device watches that timerfd in the event loop and looks at its queue again when
//! it fires: a throttled queue is parked, never polled.
//!
//! Buckets refill continuously (`size` tokens per `refill_time`); the `one_time_burst` is spent
//! first and never refilled. A request larger than a whole bucket is let through when the bucket
//! is full and leaves it in debt, so the next request waits as long as the big one's share.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use crate::config::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

/// One bucket of tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    refill_ns: u128,
    /// Tokens in the bucket; negative after an over-size request (debt).
    budget: i128,
    /// One-time burst tokens left.
    burst: u64,
    last_refill: Instant,
}

impl TokenBucket {
    /// A full bucket, or `None` when the configuration limits nothing.
    pub fn new(config: &TokenBucketConfig, now: Instant) -> Option<Self> {
        config.limits().then(|| TokenBucket {
            size: config.size,
            refill_ns: u128::from(config.refill_time) * 1_000_000,
            budget: i128::from(config.size),
            burst: config.one_time_burst.unwrap_or(0),
            last_refill: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let size = i128::from(self.size);
        if self.budget >= size {
            self.last_refill = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.last_refill).as_nanos();
        let tokens = elapsed * u128::from(self.size) / self.refill_ns;
        if tokens == 0 {
            return;
        }
        // Advance by the time those whole tokens took, so fractions are not lost.
        let used = tokens * self.refill_ns / u128::from(self.size);
        self.last_refill += Duration::from_nanos(u64::try_from(used).unwrap_or(u64::MAX));
        self.budget = (self.budget + i128::try_from(tokens).unwrap_or(i128::MAX)).min(size);
        if self.budget == size {
            self.last_refill = now;
        }
    }

    /// Takes `tokens` (burst first): false, and nothing taken, when there are not enough.
    pub fn try_take(&mut self, tokens: u64, now: Instant) -> bool {
        self.refill(now);
        let from_burst = tokens.min(self.burst);
        let rest = i128::from(tokens - from_burst);
        let full = self.budget == i128::from(self.size);
        if rest <= self.budget || (full && rest > i128::from(self.size)) {
            self.burst -= from_burst;
            self.budget -= rest;
            return true;
        }
        false
    }

    /// Gives back `tokens` taken by `try_take` for a request that was not served after all.
    pub fn give_back(&mut self, tokens: u64) {
        self.budget = (self.budget + i128::from(tokens)).min(i128::from(self.size));
    }

    /// How long until `try_take(tokens)` can succeed (zero when it can now).
    pub fn wait_for(&self, tokens: u64) -> Duration {
        let rest = i128::from(tokens.saturating_sub(self.burst));
        let needed = rest.min(i128::from(self.size));
        let missing = needed - self.budget;
        if missing <= 0 {
            return Duration::ZERO;
        }
        let missing = u128::try_from(missing).unwrap_or(0);
        let ns = (missing * self.refill_ns).div_ceil(u128::from(self.size));
        let elapsed = self.last_refill.elapsed().as_nanos();
        Duration::from_nanos(u64::try_from(ns.saturating_sub(elapsed)).unwrap_or(u64::MAX))
    }
}

/// A device's rate limiter: up to two buckets and the timerfd a throttled queue waits on.
pub struct RateLimiter {
    /// Whose limiter this is, for the log (`disk rootfs`, `net eth0 rx`).
    name: String,
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    /// A request waits for the timer: `consume` says no until `on_timer` or `update`.
    blocked: bool,
    /// Times a request was made to wait (for the metrics).
    throttled: u64,
}

/// A rate limiter's timer could not be created or armed.
#[derive(Debug, thiserror::Error)]
#[error("Rate limiter timer")]
pub struct RateLimiterError(#[source] pub std::io::Error);

impl RateLimiter {
    /// `name`'s limiter with `config`'s buckets (none: unlimited) and its disarmed timerfd.
    pub fn new(name: &str, config: Option<&RateLimiterConfig>) -> Result<Self, RateLimiterError> {
        let timer = TimerFd::new().map_err(|e| RateLimiterError(e.into()))?;
        let mut limiter = RateLimiter {
            name: name.to_string(),
            bandwidth: None,
            ops: None,
            timer,
            blocked: false,
            throttled: 0,
        };
        if let Some(config) = config {
            limiter.update(config);
        }
        Ok(limiter)
    }

    /// Whether a bucket is set.
    pub fn is_limited(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// Whether a request waits for the timer (the device should leave its queue alone).
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Takes one operation and `bytes` of bandwidth. When a bucket is short nothing is taken,
    /// the limiter blocks and its timer is armed for when both buckets will have enough.
    pub fn consume(&mut self, bytes: u64) -> bool {
        if self.blocked {
            return false;
        }
        let now = Instant::now();
        if let Some(ops) = self.ops.as_mut()
            && !ops.try_take(1, now)
        {
            let wait = ops.wait_for(1);
            self.block(wait);
            return false;
        }
        if let Some(bw) = self.bandwidth.as_mut()
            && !bw.try_take(bytes, now)
        {
            let wait = bw.wait_for(bytes);
            if let Some(ops) = self.ops.as_mut() {
                ops.give_back(1);
            }
            self.block(wait);
            return false;
        }
        true
    }

    /// Gives back what `consume(bytes)` took, for a request that could not be served after all
    /// (a received frame with no guest buffer for it).
    pub fn give_back(&mut self, bytes: u64) {
        if let Some(ops) = self.ops.as_mut() {
            ops.give_back(1);
        }
        if let Some(bw) = self.bandwidth.as_mut() {
            bw.give_back(bytes);
        }
    }

    /// Times a request was made to wait so far.
    pub fn throttled(&self) -> u64 {
        self.throttled
    }

    fn block(&mut self, wait: Duration) {
        self.blocked = true;
        self.throttled += 1;
        // A zero duration would disarm the timer: wait at least a millisecond.
        let wait = wait.max(Duration::from_millis(1));
        log::debug!("{}: throttled for {wait:?}", self.name);
        if let Err(e) = self.timer.reset(wait, None) {
            // Without the timer the queue would wait for the guest's next notification.
            log::error!(
                "{}: cannot arm the rate limiter's timer: {e}; not limiting",
                self.name
            );
            self.blocked = false;
        }
    }

    /// The timer fired: the queue may go on (the readiness is consumed by disarming it).
    pub fn on_timer(&mut self) {
        if let Err(e) = self.timer.clear() {
            log::warn!("{}: cannot disarm the rate limiter's timer: {e}", self.name);
        }
        self.blocked = false;
    }

    /// Applies a `PATCH` (or the initial configuration): each bucket it names is replaced by a
    /// full one (or removed, for a bucket that limits nothing); the queue may go on at once.
    pub fn update(&mut self, config: &RateLimiterConfig) {
        let now = Instant::now();
        if let Some(b) = &config.bandwidth {
            self.bandwidth = TokenBucket::new(b, now);
        }
        if let Some(b) = &config.ops {
            self.ops = TokenBucket::new(b, now);
        }
        self.on_timer();
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

    fn bucket(size: u64, burst: u64, refill_ms: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: (burst > 0).then_some(burst),
            refill_time: refill_ms,
        }
    }

    #[test]
    fn test_token_bucket_zero_size_or_refill_is_no_bucket() {
        let now = Instant::now();
        assert!(TokenBucket::new(&bucket(0, 0, 100), now).is_none());
        assert!(TokenBucket::new(&bucket(10, 0, 0), now).is_none());
    }

    #[test]
    fn test_token_bucket_full_bucket_then_empty() {
        let now = Instant::now();
        let mut b = TokenBucket::new(&bucket(3, 0, 1000), now).expect("bucket");
        assert!((0..3).all(|_| b.try_take(1, now)));
        assert!(!b.try_take(1, now), "empty after size tokens");
    }

    #[test]
    fn test_token_bucket_burst_spent_first_and_not_refilled() {
        let now = Instant::now();
        let mut b = TokenBucket::new(&bucket(2, 3, 1000), now).expect("bucket");
        assert!((0..5).all(|_| b.try_take(1, now)), "size + burst");
        assert!(!b.try_take(1, now));
        let later = now + Duration::from_secs(10);
        assert!((0..2).all(|_| b.try_take(1, later)), "refilled to size");
        assert!(!b.try_take(1, later), "the burst does not come back");
    }

    #[test]
    fn test_token_bucket_refills_in_proportion_to_time() {
        let now = Instant::now();
        let mut b = TokenBucket::new(&bucket(100, 0, 1000), now).expect("bucket");
        assert!(b.try_take(100, now));
        assert!(
            !b.try_take(10, now + Duration::from_millis(50)),
            "5 tokens only"
        );
        assert!(
            b.try_take(10, now + Duration::from_millis(100)),
            "10 tokens after 100 ms"
        );
        assert!(!b.try_take(1, now + Duration::from_millis(100)));
    }

    #[test]
    fn test_token_bucket_wait_for_is_the_missing_share() {
        let now = Instant::now();
        let mut b = TokenBucket::new(&bucket(1000, 0, 1000), now).expect("bucket");
        assert!(b.try_take(1000, now));
        let wait = b.wait_for(500);
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        assert!(wait > Duration::from_millis(400), "{wait:?}");
        assert_eq!(b.wait_for(0), Duration::ZERO);
    }

    #[test]
    fn test_token_bucket_oversized_request_passes_when_full_and_leaves_debt() {
        let now = Instant::now();
        let mut b = TokenBucket::new(&bucket(100, 0, 1000), now).expect("bucket");
        assert!(b.try_take(300, now), "larger than the bucket, bucket full");
        let later = now + Duration::from_secs(1);
        assert!(!b.try_take(1, later), "still paying 200 tokens of debt");
        assert!(b.try_take(100, now + Duration::from_secs(3)));
    }

    #[test]
    fn test_rate_limiter_unlimited_always_consumes() {
        let mut l = RateLimiter::new("test", None).expect("timerfd");
        assert!(!l.is_limited());
        assert!((0..1000).all(|_| l.consume(1 << 20)));
    }

    #[test]
    fn test_rate_limiter_ops_bucket_blocks_and_arms_timer() {
        let config = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(2, 1, 100_000)),
        };
        let mut l = RateLimiter::new("test", Some(&config)).expect("timerfd");
        assert!((0..3).all(|_| l.consume(4096)), "size 2 + burst 1");
        assert!(!l.consume(4096));
        assert!(l.is_blocked());
        assert!(l.timer.is_armed().expect("timerfd"));
        assert!(!l.consume(0), "blocked until the timer or an update");
        assert_eq!(l.throttled(), 1, "one wait, however often asked");
    }

    #[test]
    fn test_rate_limiter_bandwidth_short_gives_the_op_back() {
        let config = RateLimiterConfig {
            bandwidth: Some(bucket(1000, 0, 100_000)),
            ops: Some(bucket(5, 0, 100_000)),
        };
        let mut l = RateLimiter::new("test", Some(&config)).expect("timerfd");
        assert!(l.consume(1000));
        assert!(!l.consume(1));
        l.on_timer();
        assert!(!l.is_blocked() && !l.timer.is_armed().expect("timerfd"));
        // Four ops remain: the refused requests did not spend theirs.
        let only_ops = RateLimiterConfig {
            bandwidth: Some(bucket(0, 0, 0)),
            ops: None,
        };
        l.update(&only_ops);
        assert!((0..4).all(|_| l.consume(1 << 20)));
        assert!(!l.consume(0));
    }

    #[test]
    fn test_rate_limiter_update_unblocks_with_a_full_bucket() {
        let config = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(1, 0, 100_000)),
        };
        let mut l = RateLimiter::new("test", Some(&config)).expect("timerfd");
        assert!(l.consume(0));
        assert!(!l.consume(0));
        l.update(&config);
        assert!(!l.is_blocked());
        assert!(l.consume(0));
        l.give_back(0);
        assert!(l.consume(0), "given back");
    }
}
