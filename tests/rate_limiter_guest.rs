//! Rate limiters end to end, on real KVM with the test guests: a drive whose ops bucket holds N
//! requests serves exactly N (plus the one-time burst) and then nothing until `PATCH` gives it a
//! new bucket; an entropy device whose bandwidth bucket is spent waits for its refill timer; a
//! network interface's TX and RX buckets hold frames until `PATCH` opens them (that test needs
//! root for its network namespace and skips with a message otherwise).
//! No timing is asserted: "no progress" is checked after Ember logged that it parked the
//! queue, and the refill that follows is the limiter's own timer.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::api::{http, sock_path, wait_for_socket};
use common::{GUEST_TIMEOUT, TestVm, VmArgs, scratch_dir, test_guest};

/// Waits until the log has `count` lines containing `needle`.
fn wait_for_log_count(vm: &TestVm, needle: &str, count: usize) {
    let deadline = Instant::now() + GUEST_TIMEOUT;
    while vm.log().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "no {count}x `{needle}` in:\n{}",
            vm.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The highest `BLK op <i>` the guest printed.
fn ops_done(vm: &TestVm) -> u64 {
    vm.console()
        .iter()
        .filter_map(|l| l.strip_prefix("BLK op ")?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

fn write_config(name: &str, json: &str) -> String {
    let path = scratch_dir().join(name);
    std::fs::write(&path, json).expect("config file");
    path.display().to_string()
}

fn start_with_api(config: &str, sock: &Path) -> TestVm {
    let vm = TestVm::start(
        VmArgs::default()
            .arg("--config-file", config)
            .arg("--virtio-discovery", "cmdline")
            .arg("--api-sock", sock.display())
            .arg("--log-level", "debug"),
    );
    wait_for_socket(sock, GUEST_TIMEOUT);
    vm
}

/// Starts the `blk` guest in `blk=count ops=<ops>` mode on a read-only drive `d0` with the
/// ops bucket `ops_bucket` (JSON), configured from a file, with an API socket.
fn start_blk_count(name: &str, ops: u32, ops_bucket: &str) -> (TestVm, std::path::PathBuf) {
    let disk = scratch_dir().join(format!("{name}.img"));
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let metrics = scratch_dir().join(format!("{name}.metrics"));
    std::fs::remove_file(&metrics).ok();
    let config = write_config(
        &format!("{name}.json"),
        &format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "blk=count ops={ops}"}},
                 "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}},
                 "serial": {{"mode": "stdio"}},
                 "metrics": {{"metrics_path": "{}"}},
                 "drives": [{{"drive_id": "d0", "path_on_host": "{}", "is_root_device": false,
                              "is_read_only": true, "rate_limiter": {{"ops": {ops_bucket}}}}}]}}"#,
            test_guest("blk").display(),
            metrics.display(),
            disk.display()
        ),
    );
    let sock = sock_path(name);
    (start_with_api(&config, &sock), sock)
}

#[test]
fn test_drive_ops_bucket_serves_exactly_n_then_patch_changes_it_live() {
    let bucket = r#"{"size": 2, "one_time_burst": 1, "refill_time": 3600000}"#;
    let (mut vm, sock) = start_blk_count("rl-blk", 8, bucket);

    // Bucket of 2 plus a burst of 1: three requests, then the fourth is parked.
    vm.wait_for_line("BLK op 3", GUEST_TIMEOUT);
    wait_for_log_count(&vm, "disk d0: throttled", 1);
    assert_eq!(ops_done(&vm), 3, "{:?}", vm.console());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ops_done(&vm), 3, "no progress while parked");

    // A new bucket of 3: exactly three more, then parked again.
    let patch =
        r#"{"drive_id": "d0", "rate_limiter": {"ops": {"size": 3, "refill_time": 3600000}}}"#;
    let (status, body) = http(&sock, "PATCH", "/drives/d0", patch);
    assert_eq!(status, 204, "{body}");
    vm.wait_for_line("BLK op 6", GUEST_TIMEOUT);
    wait_for_log_count(&vm, "disk d0: throttled", 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ops_done(&vm), 6, "{:?}", vm.console());

    // The configuration reports the new limiter, the metrics the two waits.
    let (_, config) = http(&sock, "GET", "/vm/config", "");
    assert!(config.contains(r#""size":3"#), "{config}");
    let (status, body) = http(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "FlushMetrics"}"#,
    );
    assert_eq!(status, 204, "{body}");
    let metrics = std::fs::read_to_string(scratch_dir().join("rl-blk.metrics")).expect("metrics");
    assert!(
        metrics.contains(r#""rate_limiter_throttled_events":2"#),
        "{metrics}"
    );

    // Removing the bucket lets the rest through.
    let unlimited = r#"{"drive_id": "d0", "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}"#;
    let (status, body) = http(&sock, "PATCH", "/drives/d0", unlimited);
    assert_eq!(status, 204, "{body}");
    vm.wait_for_line("EMBER-TEST blk done", GUEST_TIMEOUT);
    assert_eq!(ops_done(&vm), 8);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
}

#[test]
fn test_patch_drive_refusals_are_clear() {
    let bucket = r#"{"size": 1, "refill_time": 3600000}"#;
    let (mut vm, sock) = start_blk_count("rl-blk2", 1, bucket);
    let (status, body) = http(&sock, "PATCH", "/drives/nope", r#"{"drive_id": "nope"}"#);
    assert_eq!(
        (status, body.contains("No drive with id nope")),
        (400, true),
        "{body}"
    );
    let swap = r#"{"drive_id": "d0", "path_on_host": "/tmp/other.img"}"#;
    let (status, body) = http(&sock, "PATCH", "/drives/d0", swap);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("path_on_host"), "{body}");
    let bad = r#"{"drive_id": "d0", "rate_limiter": {"ops": {"size": 1}}}"#;
    let (status, body) = http(&sock, "PATCH", "/drives/d0", bad);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("refill_time"), "{body}");
    vm.wait_for_line("EMBER-TEST blk done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
}

#[test]
fn test_entropy_bandwidth_bucket_waits_for_its_refill_timer() {
    let config = write_config(
        "rl-rng.json",
        &format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                 "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}},
                 "serial": {{"mode": "stdio"}},
                 "entropy": {{"rate_limiter": {{"bandwidth": {{"size": 64, "refill_time": 1000}}}}}}}}"#,
            test_guest("rng").display()
        ),
    );
    let sock = sock_path("rl-rng");
    let mut vm = start_with_api(&config, &sock);
    // The first 64 bytes empty the bucket; the second request waits for the refill.
    vm.wait_for_line("RNG got=", GUEST_TIMEOUT);
    wait_for_log_count(&vm, "rng rng0: throttled", 1);
    vm.wait_for_line("RNG got=", GUEST_TIMEOUT);
    vm.wait_for_line("EMBER-TEST rng done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    assert_eq!(vm.lines_with_prefix("RNG got=").len(), 2);
}

/// Test frames the host sees on `sock` until none comes for `quiet`.
fn count_frames(sock: &common::netns::PacketSocket, quiet: Duration) -> usize {
    let mut n = 0;
    while sock
        .recv_matching(quiet, common::netns::is_test_frame)
        .is_some()
    {
        n += 1;
    }
    n
}

#[test]
fn test_net_tx_and_rx_buckets_hold_frames_until_patch() {
    use common::netns::{MAC0, NetNs, PacketSocket, host_frame};
    let Some(mut ns) = NetNs::new("ratelimit") else {
        return;
    };
    ns.add_tap("tap0", None);
    let sock = PacketSocket::open(&ns, "tap0");
    let config = write_config(
        "rl-net.json",
        &format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "net=perf count=6 size=72"}},
                 "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}},
                 "serial": {{"mode": "stdio"}},
                 "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0",
                     "guest_mac": "02:00:00:00:00:01",
                     "tx_rate_limiter": {{"ops": {{"size": 2, "one_time_burst": 1, "refill_time": 3600000}}}},
                     "rx_rate_limiter": {{"ops": {{"size": 2, "refill_time": 3600000}}}}}}]}}"#,
            test_guest("net").display()
        ),
    );
    let sock_path = sock_path("rl-net");
    let mut vm = TestVm::start(
        VmArgs::default()
            .arg("--config-file", &config)
            .arg("--virtio-discovery", "cmdline")
            .arg("--api-sock", sock_path.display())
            .arg("--log-level", "debug")
            .in_netns(ns.name()),
    );
    wait_for_socket(&sock_path, GUEST_TIMEOUT);
    vm.wait_for_line("PERF tx start", GUEST_TIMEOUT);
    ns.wait_tap_up("tap0", GUEST_TIMEOUT);

    // TX: a bucket of 2 plus a burst of 1 lets exactly three frames out.
    wait_for_log_count(&vm, "net eth0 tx: throttled", 1);
    assert_eq!(count_frames(&sock, Duration::from_millis(500)), 3);
    let open_tx =
        r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}"#;
    let (status, body) = http(&sock_path, "PATCH", "/network-interfaces/eth0", open_tx);
    assert_eq!(status, 204, "{body}");
    vm.wait_for_line("PERF tx done frames=6", GUEST_TIMEOUT);
    assert_eq!(
        count_frames(&sock, Duration::from_millis(500)),
        3,
        "the rest"
    );

    // RX: two frames reach the guest, the third waits in Ember until the PATCH.
    vm.wait_for_line("PERF rx ready", GUEST_TIMEOUT);
    let frame = host_frame(MAC0, "EMBER-NET-PERF", 60);
    for _ in 0..6 {
        sock.send(&frame);
    }
    wait_for_log_count(&vm, "net eth0 rx: throttled", 1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !vm.console().iter().any(|l| l.contains("PERF rx done")),
        "{:?}",
        vm.console()
    );
    let open_rx =
        r#"{"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}"#;
    let (status, body) = http(&sock_path, "PATCH", "/network-interfaces/eth0", open_rx);
    assert_eq!(status, 204, "{body}");
    vm.wait_for_line("PERF rx done frames=6", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
}
