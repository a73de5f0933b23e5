//! Metrics (`--metrics-path`, `PUT /metrics`, the config file's `metrics`): one JSON object a
//! line, written to a file or FIFO by the main thread every 60 s while the VM runs, on the
//! `FlushMetrics` action and when the VM ends. As in Firecracker, every counter is the increase
//! since the previous line. Field names are documented in docs/metrics.md; they are
//! Firecracker's where the meaning is the same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::device_manager::DeviceReport;
use crate::sink::{LineSink, SinkError};

/// How often the running VM writes a line.
pub const FLUSH_PERIOD: Duration = Duration::from_secs(60);

/// Why metrics could not be set up or written.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The destination could not be opened.
    #[error("metrics_path")]
    Open(#[from] SinkError),
    /// A destination is already set (Firecracker's rule: once per process).
    #[error("metrics are already written to {0}")]
    AlreadyConfigured(PathBuf),
    /// No destination was set.
    #[error("no metrics path is set (--metrics-path or PUT /metrics)")]
    NotConfigured,
    /// The line did not fit in the FIFO (the reader is behind) or the write failed.
    #[error("the metrics line could not be written to {0} (dropped)")]
    Dropped(PathBuf),
}

/// The exits of one vCPU, counted by its thread (one relaxed add per exit).
#[derive(Debug, Default)]
pub struct VcpuExitCounters {
    /// Port reads.
    pub io_in: AtomicU64,
    /// Port writes.
    pub io_out: AtomicU64,
    /// MMIO reads.
    pub mmio_read: AtomicU64,
    /// MMIO writes.
    pub mmio_write: AtomicU64,
    /// Every other exit that returned to the run loop (interrupt windows, EOIs, signals, ...).
    pub other: AtomicU64,
}

impl VcpuExitCounters {
    /// Counts one exit.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn add_to(&self, out: &mut BTreeMap<&'static str, u64>) {
        for (name, counter) in [
            ("exit_io_in", &self.io_in),
            ("exit_io_out", &self.io_out),
            ("exit_mmio_read", &self.mmio_read),
            ("exit_mmio_write", &self.mmio_write),
            ("exit_other", &self.other),
        ] {
            *out.entry(name).or_default() += counter.load(Ordering::Relaxed);
        }
    }
}

/// What one line is made of besides the API counts kept here.
#[derive(Default)]
pub struct Sources<'a> {
    /// Every virtio device's counters (none before the VM is built).
    pub devices: &'a [DeviceReport],
    /// Every vCPU's exit counters.
    pub vcpus: Vec<&'a VcpuExitCounters>,
}

struct Writer {
    sink: LineSink,
    /// The totals of the previous line, for the increases.
    last: Value,
}

static WRITER: Mutex<Option<Writer>> = Mutex::new(None);
/// `api_server`'s start-up times (µs), reported in every line as they are (not increases).
static STARTUP: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
/// `latencies_us`: the last duration of each named step, in µs.
static LATENCIES: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
/// Groups whose values are written as they are, not as increases.
const GAUGE_GROUPS: [&str; 2] = ["api_server", "latencies_us"];

/// Records how long step `name` took this time (`latencies_us.<name>` in the next lines:
/// `pause_vm`, `resume_vm`, `process_start_to_vcpus`, ...).
pub fn record_latency(name: &'static str, took: Duration) {
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    LATENCIES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name, micros);
}

/// Firecracker's start-up times, from the launcher's `--start-time-us` (its monotonic clock
/// when it started Ember), `--start-time-cpu-us` (Ember's CPU time then) and
/// `--parent-cpu-time-us` (the launcher's own CPU time): `api_server.process_startup_time_us`
/// and `process_startup_time_cpu_us`, measured now (call it just before the API serves).
pub fn record_startup(
    start_us: Option<u64>,
    start_cpu_us: Option<u64>,
    parent_cpu_us: Option<u64>,
) {
    use crate::devices::legacy::boot_timer::{monotonic_time, process_cpu_time};
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let mut startup = STARTUP.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(start) = start_us {
        let took = micros(monotonic_time()).saturating_sub(start);
        log::info!("Process start-up took {took} us");
        startup.insert("process_startup_time_us", took);
    }
    if let Some(start) = start_cpu_us {
        let took = micros(process_cpu_time()).saturating_sub(start) + parent_cpu_us.unwrap_or(0);
        log::info!("Process start-up took {took} us of CPU time");
        startup.insert("process_startup_time_cpu_us", took);
    }
}

/// API request counts: (group, resource name) -> (count, fails).
type ApiCounts = BTreeMap<(&'static str, String), (u64, u64)>;

static API: Mutex<ApiCounts> = Mutex::new(BTreeMap::new());

/// Opens the metrics destination (once per process).
pub fn configure(path: &Path) -> Result<(), MetricsError> {
    let mut writer = WRITER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(w) = writer.as_ref() {
        return Err(MetricsError::AlreadyConfigured(w.sink.path().to_owned()));
    }
    *writer = Some(Writer {
        sink: LineSink::open(path)?,
        last: Value::Null,
    });
    Ok(())
}

/// The metrics destination, if one is set.
pub fn path() -> Option<PathBuf> {
    let writer = WRITER.lock().unwrap_or_else(|e| e.into_inner());
    writer.as_ref().map(|w| w.sink.path().to_owned())
}

/// Counts one API request by its method and the resource of its path (`PUT /drives/x` is
/// `put_api_requests.drive_count`, and `drive_fails` when the answer is an error). Unknown
/// paths count as `invalid`, so a client cannot grow the table.
pub fn count_api_request(method: &str, target: &str, status: u16) {
    let group = match method {
        "GET" => "get_api_requests",
        "PUT" => "put_api_requests",
        "PATCH" => "patch_api_requests",
        _ => "other_api_requests",
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let name = match (status, parts.as_slice()) {
        (404, _) => "invalid".to_string(),
        (_, []) => "instance_info".to_string(),
        (_, ["version"]) => "vmm_version".to_string(),
        (_, ["machine-config", ..]) => "machine_cfg".to_string(),
        (_, ["network-interfaces", ..]) => "network".to_string(),
        (_, ["drives", ..]) => "drive".to_string(),
        (_, ["vm", "config"]) => "vm_config".to_string(),
        (_, ["snapshot", "create"]) => "snapshot_create".to_string(),
        (_, ["snapshot", "load"]) => "snapshot_load".to_string(),
        (_, [first, ..]) => first.replace('-', "_"),
    };
    let mut api = API.lock().unwrap_or_else(|e| e.into_inner());
    let entry = api.entry((group, name)).or_default();
    entry.0 += 1;
    if status >= 400 {
        entry.1 += 1;
    }
}

/// Firecracker's names for a device kind's counters, where the meaning is the same.
fn counter_name(kind: &str, field: &str) -> String {
    match (kind, field) {
        ("block", "ops") => "requests",
        ("block", "written_bytes") => "write_bytes",
        ("net", "ops") => "frames",
        ("net", "read_bytes") => "rx_bytes_count",
        ("net", "written_bytes") => "tx_bytes_count",
        (_, "throttled") => "rate_limiter_throttled_events",
        (_, other) => other,
    }
    .to_string()
}

/// The running totals, as one JSON object (every leaf a counter).
fn totals(sources: &Sources) -> Value {
    let mut root = Map::new();
    for ((group, name), (count, fails)) in API.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let g = root
            .entry(*group)
            .or_insert_with(|| Value::Object(Map::new()));
        g[format!("{name}_count")] = (*count).into();
        g[format!("{name}_fails")] = (*fails).into();
    }
    for device in sources.devices {
        let kind = serde_json::to_value(device.kind)
            .ok()
            .and_then(|k| k.as_str().map(str::to_string))
            .unwrap_or_else(|| "device".to_string());
        let Ok(Value::Object(fields)) = serde_json::to_value(device.counters) else {
            continue;
        };
        let mut own = Map::new();
        for (field, value) in fields {
            let name = counter_name(&kind, &field);
            let sum = root
                .entry(kind.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let before = sum[&name].as_u64().unwrap_or(0);
            sum[&name] = (before + value.as_u64().unwrap_or(0)).into();
            own.insert(name, value);
        }
        root.insert(format!("{kind}_{}", device.id), Value::Object(own));
    }
    if !sources.vcpus.is_empty() {
        let mut exits = BTreeMap::new();
        for vcpu in &sources.vcpus {
            vcpu.add_to(&mut exits);
        }
        root.insert(
            "vcpu".into(),
            serde_json::to_value(exits).unwrap_or_default(),
        );
    }
    for (group, values) in [("api_server", &STARTUP), ("latencies_us", &LATENCIES)] {
        let values = values.lock().unwrap_or_else(|e| e.into_inner());
        if !values.is_empty() {
            root.insert(
                group.into(),
                serde_json::to_value(&*values).unwrap_or_default(),
            );
        }
    }
    let mut logger = Map::new();
    logger.insert(
        "missed_log_count".into(),
        crate::logger::missed_lines().into(),
    );
    root.insert("logger".into(), Value::Object(logger));
    Value::Object(root)
}

/// `now` minus `last`, leaf by leaf (a leaf missing from `last` counts from zero).
fn increase(now: &Value, last: &Value) -> Value {
    match now {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| match GAUGE_GROUPS.contains(&k.as_str()) {
                    true => (k.clone(), v.clone()),
                    false => (k.clone(), increase(v, &last[k])),
                })
                .collect(),
        ),
        Value::Number(n) => {
            let (now, before) = (n.as_u64().unwrap_or(0), last.as_u64().unwrap_or(0));
            now.saturating_sub(before).into()
        }
        other => other.clone(),
    }
}

/// Writes one line now (main thread only: it looks at the FIFO's room with `ioctl`).
pub fn flush(sources: &Sources) -> Result<(), MetricsError> {
    let mut guard = WRITER.lock().unwrap_or_else(|e| e.into_inner());
    let writer = guard.as_mut().ok_or(MetricsError::NotConfigured)?;
    let mut now = totals(sources);
    if let Some(logger) = now.get_mut("logger") {
        logger["missed_metrics_count"] = writer.sink.missed().into();
    }
    let mut line = increase(&now, &writer.last);
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    line["utc_timestamp_ms"] = u64::try_from(ms).unwrap_or(u64::MAX).into();
    let mut text = line.to_string();
    text.push('\n');
    if writer.sink.write_line(text.as_bytes(), true) {
        writer.last = now;
        Ok(())
    } else {
        // The increases are kept for the next line that gets through.
        Err(MetricsError::Dropped(writer.sink.path().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_manager::VirtioKind;
    use crate::devices::virtio::counters::CounterValues;

    #[test]
    fn test_increase_is_leafwise_since_last() {
        let last = serde_json::json!({"a": {"x": 3}, "b": 1});
        let now = serde_json::json!({"a": {"x": 5, "y": 2}, "b": 1});
        assert_eq!(
            increase(&now, &last),
            serde_json::json!({"a": {"x": 2, "y": 2}, "b": 0})
        );
        assert_eq!(increase(&now, &Value::Null), now);
        let gauge = serde_json::json!({"api_server": {"process_startup_time_us": 7}});
        assert_eq!(increase(&gauge, &gauge), gauge);
    }

    #[test]
    fn test_totals_name_devices_firecracker_style_and_sum_per_kind() {
        let report = |id: &str, ops| DeviceReport {
            id: id.into(),
            kind: VirtioKind::Block,
            counters: CounterValues {
                ops,
                read_bytes: 512,
                written_bytes: 1024,
                errors: 0,
                drops: 0,
                throttled: 2,
            },
        };
        let devices = [report("root", 3), report("data", 4)];
        let vcpu = VcpuExitCounters::default();
        VcpuExitCounters::count(&vcpu.mmio_write);
        let t = totals(&Sources {
            devices: &devices,
            vcpus: vec![&vcpu],
        });
        assert_eq!(t["block_root"]["requests"], 3);
        assert_eq!(t["block_data"]["write_bytes"], 1024);
        assert_eq!(t["block"]["requests"], 7);
        assert_eq!(t["block"]["read_bytes"], 1024);
        assert_eq!(t["block_root"]["rate_limiter_throttled_events"], 2);
        assert_eq!(t["block"]["rate_limiter_throttled_events"], 4);
        assert_eq!(t["vcpu"]["exit_mmio_write"], 1);
    }

    #[test]
    fn test_api_requests_counted_by_resource_and_unknown_paths_bounded() {
        count_api_request("PUT", "/drives/rootfs", 204);
        count_api_request("PUT", "/drives/other", 400);
        count_api_request("GET", "/no/such/path", 404);
        let api = API.lock().expect("lock");
        let drive = api[&("put_api_requests", "drive".to_string())];
        assert!(drive.0 >= 2 && drive.1 >= 1, "{drive:?}");
        assert!(api.contains_key(&("get_api_requests", "invalid".to_string())));
        assert!(!api.keys().any(|(_, name)| name == "no"));
    }
}
