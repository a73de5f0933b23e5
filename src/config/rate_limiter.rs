//! Rate limiter settings: Firecracker's body, on drives (`rate_limiter`), network interfaces
//! (`rx_rate_limiter`, `tx_rate_limiter`) and the entropy device (`rate_limiter`). Two token
//! buckets, `bandwidth` (bytes) and `ops` (requests), each `{size, one_time_burst,
//! refill_time}` with `refill_time` in milliseconds; an absent bucket does not limit, and a
//! bucket with `size` or `refill_time` 0 is no limit either (Firecracker's meaning).
//!
//! The same body is the change in `PATCH /drives/{id}` and `PATCH /network-interfaces/{id}`:
//! a bucket left out keeps its current setting, a bucket given replaces it (0 removes it).

use serde::{Deserialize, Serialize};

/// One token bucket: `size` tokens, refilled from empty to full in `refill_time` ms, plus
/// `one_time_burst` tokens that are spent first and never refilled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds when full (bytes for `bandwidth`, requests for `ops`).
    pub size: u64,
    /// Extra tokens available once, at the start (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the bucket from empty to full.
    pub refill_time: u64,
}

impl TokenBucketConfig {
    /// Whether this bucket limits anything (`size` and `refill_time` both non-zero).
    pub fn limits(&self) -> bool {
        self.size != 0 && self.refill_time != 0
    }
}

/// A rate limiter: a bandwidth bucket and an operations bucket, either optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes (data of block requests, frames of a network interface, entropy bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Requests (block requests, frames, entropy requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// This configuration with `update` applied (a `PATCH`): each bucket `update` names
    /// replaces this one's, one that limits nothing removes it.
    pub fn merged(&self, update: &RateLimiterConfig) -> RateLimiterConfig {
        let pick = |now: Option<TokenBucketConfig>, new: Option<TokenBucketConfig>| match new {
            None => now,
            Some(b) if b.limits() => Some(b),
            Some(_) => None,
        };
        RateLimiterConfig {
            bandwidth: pick(self.bandwidth, update.bandwidth),
            ops: pick(self.ops, update.ops),
        }
    }

    /// `Some(self)` when a bucket limits something, else `None` (the form stored in a config).
    pub fn normalized(self) -> Option<RateLimiterConfig> {
        let limiting = RateLimiterConfig::default().merged(&self);
        (limiting != RateLimiterConfig::default()).then_some(limiting)
    }
}

/// `config` with `update` applied: the stored form of a rate limiter after a `PATCH`.
pub fn patch(
    config: Option<RateLimiterConfig>,
    update: Option<&RateLimiterConfig>,
) -> Option<RateLimiterConfig> {
    match update {
        None => config,
        Some(update) => config.unwrap_or_default().merged(update).normalized(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, refill_time: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        }
    }

    #[test]
    fn test_rate_limiter_body_parses_firecracker_shape() {
        let body: RateLimiterConfig = serde_json::from_str(
            r#"{"bandwidth": {"size": 1000, "one_time_burst": 50, "refill_time": 100},
                "ops": {"size": 10, "refill_time": 1000}}"#,
        )
        .expect("parses");
        assert_eq!(body.bandwidth.map(|b| b.one_time_burst), Some(Some(50)));
        assert_eq!(body.ops, Some(bucket(10, 1000)));
        assert!(serde_json::from_str::<RateLimiterConfig>(r#"{"ops": {"size": 1}}"#).is_err());
        assert!(
            serde_json::from_str::<RateLimiterConfig>(
                r#"{"ops": {"size": 1, "refill_time": 1, "x": 1}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn test_rate_limiter_patch_keeps_replaces_and_removes_buckets() {
        let now = RateLimiterConfig {
            bandwidth: Some(bucket(1000, 100)),
            ops: Some(bucket(10, 1000)),
        };
        let only_ops = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(20, 10)),
        };
        let merged = now.merged(&only_ops);
        assert_eq!(merged.bandwidth, now.bandwidth, "a bucket left out is kept");
        assert_eq!(merged.ops, Some(bucket(20, 10)));
        let remove = RateLimiterConfig {
            bandwidth: Some(bucket(0, 0)),
            ops: Some(bucket(5, 0)),
        };
        assert_eq!(patch(Some(now), Some(&remove)), None);
        assert_eq!(patch(Some(now), None), Some(now));
        assert_eq!(
            patch(None, Some(&only_ops)),
            Some(RateLimiterConfig {
                bandwidth: None,
                ops: Some(bucket(20, 10)),
            })
        );
    }
}
