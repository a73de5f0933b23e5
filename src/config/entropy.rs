//! The entropy device: `--rng`, `entropy` in the config file, `PUT /entropy` (Firecracker's
//! body, with its optional `rate_limiter`: see `rate_limiter.rs`).

use serde::{Deserialize, Serialize};

use super::rate_limiter::RateLimiterConfig;

/// The entropy device's configuration (one device, `rng0`; bytes from getrandom(2)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntropyConfig {
    /// Requests and bytes per second the guest may take (none: unlimited).
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// The `entropy` resource of the JSON file and the body of `PUT /entropy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyBody {
    /// Firecracker's rate limiter (absent or null: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl From<&EntropyBody> for EntropyConfig {
    fn from(body: &EntropyBody) -> Self {
        EntropyConfig {
            rate_limiter: body.rate_limiter.and_then(RateLimiterConfig::normalized),
        }
    }
}

impl From<&EntropyConfig> for EntropyBody {
    fn from(config: &EntropyConfig) -> Self {
        EntropyBody {
            rate_limiter: config.rate_limiter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::rate_limiter::TokenBucketConfig;

    #[test]
    fn test_entropy_body_empty_or_null_limiter_is_unlimited() {
        for json in ["{}", r#"{"rate_limiter": null}"#, r#"{"rate_limiter": {}}"#] {
            let body: EntropyBody = serde_json::from_str(json).expect("parses");
            assert_eq!(EntropyConfig::from(&body), EntropyConfig::default());
        }
    }

    #[test]
    fn test_entropy_body_with_limiter_round_trips() {
        let body: EntropyBody = serde_json::from_str(
            r#"{"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#,
        )
        .expect("parses");
        let config = EntropyConfig::from(&body);
        assert_eq!(
            config.rate_limiter.and_then(|r| r.bandwidth),
            Some(TokenBucketConfig {
                size: 1000,
                one_time_burst: None,
                refill_time: 100
            })
        );
        assert_eq!(EntropyBody::from(&config), body);
        assert!(serde_json::from_str::<EntropyBody>(r#"{"src": "/dev/random"}"#).is_err());
    }
}
