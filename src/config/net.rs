//! Network interfaces: `--net tap=NAME[,mac=MAC][,id=NAME]`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::drive::{key_values, valid_id};
use super::rate_limiter::RateLimiterConfig;

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("`{s}` is not a MAC address like 02:00:00:00:00:01"));
        }
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(format!("`{s}` is not a MAC address like 02:00:00:00:00:01"));
            }
            *b = u8::from_str_radix(p, 16)
                .map_err(|_| format!("`{s}` is not a MAC address like 02:00:00:00:00:01"))?;
        }
        if mac[0] & 1 != 0 {
            return Err(format!("`{s}` is a multicast address"));
        }
        Ok(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl MacAddr {
    /// A locally administered unicast MAC derived from `id` (stable across runs).
    pub fn generated(id: &str) -> Self {
        // FNV-1a of the id: stable, no randomness, spreads similar ids apart.
        let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let b = h.to_le_bytes();
        MacAddr([0x02, b[0], b[1], b[2], b[3], b[4]])
    }
}

/// One virtio-net interface backed by a host TAP device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Identifier. Default `net<N>` by position.
    pub id: String,
    /// Host TAP interface name.
    pub tap: String,
    /// Guest MAC (generated from the id when absent).
    pub mac: Option<MacAddr>,
    /// Frames and bytes per second the guest may receive (none: unlimited).
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Frames and bytes per second the guest may send (none: unlimited).
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// One entry of `network-interfaces` in the JSON file, and the body of
/// `PUT /network-interfaces/{id}`, with Firecracker's field names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetBody {
    /// Identifier (required).
    pub iface_id: String,
    /// Host TAP device (required).
    pub host_dev_name: String,
    /// Guest MAC (default: generated from the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<MacAddr>,
    /// Firecracker's receive rate limiter (absent or null: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Firecracker's transmit rate limiter (absent or null: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// The body of `PATCH /network-interfaces/{id}` while the VM runs: the interface and its new
/// rate limiters (Firecracker's `PartialNetworkInterface`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetPatch {
    /// Identifier (required).
    pub iface_id: String,
    /// The receive change: buckets named replace the current ones, 0-sized ones remove them.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// The transmit change, the same way.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

impl From<&NetBody> for NetConfig {
    fn from(body: &NetBody) -> Self {
        NetConfig {
            id: body.iface_id.clone(),
            tap: body.host_dev_name.clone(),
            mac: body.guest_mac,
            rx_rate_limiter: body.rx_rate_limiter.and_then(RateLimiterConfig::normalized),
            tx_rate_limiter: body.tx_rate_limiter.and_then(RateLimiterConfig::normalized),
        }
    }
}

impl From<&NetConfig> for NetBody {
    fn from(net: &NetConfig) -> Self {
        NetBody {
            iface_id: net.id.clone(),
            host_dev_name: net.tap.clone(),
            guest_mac: net.mac,
            rx_rate_limiter: net.rx_rate_limiter,
            tx_rate_limiter: net.tx_rate_limiter,
        }
    }
}

/// Invalid network settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    /// Syntax error.
    #[error("net: {0}")]
    Parse(String),
    /// Duplicate id, TAP or MAC.
    #[error("net: {0} is used twice")]
    Duplicate(String),
    /// Bad id.
    #[error("net: id `{0}` must be 1-64 characters of [A-Za-z0-9_-]")]
    BadId(String),
    /// Bad TAP name.
    #[error("net: tap name `{0}` must be 1-15 characters without '/' or spaces")]
    BadTap(String),
}

impl FromStr for NetConfig {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut net = NetConfig {
            id: String::new(),
            tap: String::new(),
            mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        for (key, value) in key_values(s).map_err(NetError::Parse)? {
            match key {
                "tap" => net.tap = value.to_string(),
                "id" => net.id = value.to_string(),
                "mac" => net.mac = Some(value.parse().map_err(NetError::Parse)?),
                other => {
                    return Err(NetError::Parse(format!(
                        "unknown key `{other}` (expected tap, mac, id)"
                    )));
                }
            }
        }
        if net.tap.is_empty() {
            return Err(NetError::Parse("tap=NAME is required".into()));
        }
        Ok(net)
    }
}

impl NetConfig {
    /// The MAC the guest sees.
    pub fn guest_mac(&self) -> MacAddr {
        self.mac.unwrap_or_else(|| MacAddr::generated(&self.id))
    }

    /// Checks names.
    pub fn validate(&self) -> Result<(), NetError> {
        if !valid_id(&self.id) {
            return Err(NetError::BadId(self.id.clone()));
        }
        if self.tap.is_empty() || self.tap.len() > 15 || self.tap.contains(['/', ' ', '\0']) {
            return Err(NetError::BadTap(self.tap.clone()));
        }
        Ok(())
    }
}

/// Gives unnamed interfaces `net<N>` ids and checks uniqueness of ids, TAPs and MACs.
pub fn finalize_nets(nets: &mut [NetConfig]) -> Result<(), NetError> {
    for (i, n) in nets.iter_mut().enumerate() {
        if n.id.is_empty() {
            n.id = format!("net{i}");
        }
    }
    validate_nets(nets)
}

/// Checks uniqueness of ids, TAPs and MACs.
pub fn validate_nets(nets: &[NetConfig]) -> Result<(), NetError> {
    for (i, n) in nets.iter().enumerate() {
        n.validate()?;
        for o in &nets[..i] {
            if o.id == n.id {
                return Err(NetError::Duplicate(format!("id {}", n.id)));
            }
            if o.tap == n.tap {
                return Err(NetError::Duplicate(format!("tap {}", n.tap)));
            }
            if o.guest_mac() == n.guest_mac() {
                return Err(NetError::Duplicate(format!("mac {}", n.guest_mac())));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_net_body_rate_limiters_null_or_buckets() {
        let null = r#"{"iface_id": "eth0", "host_dev_name": "tap0",
                     "rx_rate_limiter": null, "tx_rate_limiter": null}"#;
        let body: NetBody = serde_json::from_str(null).expect("null accepted");
        assert_eq!(NetConfig::from(&body).rx_rate_limiter, None);
        let limited = r#"{"iface_id": "eth0", "host_dev_name": "tap0",
                          "rx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#;
        let body: NetBody = serde_json::from_str(limited).expect("limiter accepted");
        let net = NetConfig::from(&body);
        assert!(net.rx_rate_limiter.is_some() && net.tx_rate_limiter.is_none());
        assert_eq!(NetBody::from(&net), body);
        let bad = r#"{"iface_id": "eth0", "host_dev_name": "tap0",
                      "tx_rate_limiter": {"ops": {"size": 1}}}"#;
        let e = crate::config::file::parse_json::<NetBody>(bad.as_bytes()).expect_err("no");
        assert!(e.starts_with("tx_rate_limiter.ops"), "{e}");
    }

    #[test]
    fn test_net_parse_and_generated_mac_is_local_unicast() {
        let mut nets: Vec<NetConfig> = vec!["tap=tap0".parse().expect("ok")];
        finalize_nets(&mut nets).expect("valid");
        let mac = nets[0].guest_mac();
        assert_eq!(mac.0[0] & 0x3, 0x2);
        assert_eq!(mac, MacAddr::generated("net0"));
    }

    #[test]
    fn test_net_parse_mac_and_errors() {
        let n: NetConfig = "tap=t,mac=02:aa:bb:cc:dd:ee,id=x".parse().expect("ok");
        assert_eq!(n.mac.expect("mac").to_string(), "02:aa:bb:cc:dd:ee");
        assert!("tap=t,mac=01:00:00:00:00:00".parse::<NetConfig>().is_err());
        assert!("tap=t,mac=zz".parse::<NetConfig>().is_err());
        assert!("mac=02:00:00:00:00:01".parse::<NetConfig>().is_err());
    }

    #[test]
    fn test_net_body_parses_uppercase_mac() {
        let body: NetBody = serde_json::from_str(
            r#"{"iface_id": "net1", "guest_mac": "06:00:AC:10:00:02", "host_dev_name": "tap0"}"#,
        )
        .expect("parses");
        let net = NetConfig::from(&body);
        assert_eq!(net.mac.expect("mac").to_string(), "06:00:ac:10:00:02");
        assert!(
            serde_json::from_str::<NetBody>(
                r#"{"iface_id": "n", "host_dev_name": "t", "guest_mac": "x"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn test_net_duplicate_tap_rejected() {
        let mut nets: Vec<NetConfig> =
            vec!["tap=t".parse().expect("ok"), "tap=t".parse().expect("ok")];
        assert!(finalize_nets(&mut nets).is_err());
    }
}
