//! The entropy device: `--rng`, `entropy` in the config file, `PUT /entropy` (Firecracker's
//! body). Firecracker's optional `rate_limiter` is refused when set (Ember has no rate limiter
//! yet, and silently serving an unlimited device would not be what the client asked for); an
//! absent or `null` one is accepted.

use serde::{Deserialize, Serialize};

/// The entropy device's configuration (one device, `rng0`; bytes from getrandom(2)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntropyConfig;

/// The `entropy` resource of the JSON file and the body of `PUT /entropy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyBody {
    /// Firecracker's rate limiter: must be absent or null (not supported yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}

/// Invalid entropy settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntropyError {
    /// A rate limiter was asked for.
    #[error("entropy: rate_limiter is not supported yet (leave it out or null)")]
    RateLimiter,
}

impl TryFrom<&EntropyBody> for EntropyConfig {
    type Error = EntropyError;

    fn try_from(body: &EntropyBody) -> Result<Self, Self::Error> {
        match &body.rate_limiter {
            None | Some(serde_json::Value::Null) => Ok(EntropyConfig),
            Some(_) => Err(EntropyError::RateLimiter),
        }
    }
}

impl From<&EntropyConfig> for EntropyBody {
    fn from(_: &EntropyConfig) -> Self {
        EntropyBody::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_entropy_body_empty_or_null_limiter_accepted() {
        for json in ["{}", r#"{"rate_limiter": null}"#] {
            let body: EntropyBody = serde_json::from_str(json).expect("parses");
            assert_eq!(EntropyConfig::try_from(&body), Ok(EntropyConfig));
        }
    }

    #[test]
    fn test_entropy_body_with_limiter_or_unknown_field_refused() {
        let body: EntropyBody = serde_json::from_str(
            r#"{"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}"#,
        )
        .expect("parses");
        assert_eq!(
            EntropyConfig::try_from(&body),
            Err(EntropyError::RateLimiter)
        );
        assert!(serde_json::from_str::<EntropyBody>(r#"{"src": "/dev/random"}"#).is_err());
    }
}
