//! Ember as a drop-in `firecracker`: the command lines Firecracker's clients launch it with
//! (firecracker-python and its fork hysn-firecracker-python, microheart, Kata Containers), the
//! logger, serial and metrics resources they configure, and `--version`. The real `ember`
//! binary, real sockets, files and FIFOs, and the test guests.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use common::api::{http, sock_path, wait_for_socket};
use common::{GUEST_TIMEOUT, TestVm, VmArgs, ember_bin, output_of, run_ember, scratch_dir};

/// A hang detector, not a timing check.
const QUICK: Duration = Duration::from_secs(60);

fn expect(sock: &Path, method: &str, target: &str, body: &str, status: u16) -> String {
    let (got, answer) = http(sock, method, target, body);
    assert_eq!(got, status, "{method} {target} {body} -> {answer}");
    answer
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn fresh(name: &str) -> PathBuf {
    let path = scratch_dir().join(name);
    let _ = std::fs::remove_file(&path);
    path
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo reads the NUL-terminated path only.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// Reads a FIFO line by line on a thread (as Kata's and firecracker-containerd's readers do).
fn read_fifo(path: &Path) -> Receiver<String> {
    let (tx, rx) = channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open FIFO for reading");
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle` from `lines`.
fn wait_line(lines: &Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + GUEST_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no line with {needle:?} ({e}); got:\n{}", seen.join("\n")),
        }
    }
}

/// Configures the `echo` guest over the API and starts it.
fn configure_and_start(sock: &Path) {
    common::api::configure_guest(sock, &common::test_guest("echo"));
    common::api::put_ok(sock, "/actions", r#"{"action_type": "InstanceStart"}"#);
}

/// firecracker-python 0.0.5 and hysn-firecracker-python launch
/// `firecracker --api-sock S --id ID --log-path FILE` with stderr to /dev/null: Ember serves
/// the API, reports the id, and its log lands in the file in Firecracker's format.
#[test]
fn test_firecracker_python_launch_line_logs_to_file_with_id() {
    let sock = sock_path("fc-python");
    let log = fresh("fc-python.log");
    std::fs::write(&log, "").expect("the client creates the log file");
    let mut vm = TestVm::start(
        VmArgs::default()
            .arg("--api-sock", sock.display())
            .arg("--id", "fcpy-vm-1")
            .arg("--log-path", log.display()),
    );
    wait_for_socket(&sock, QUICK);
    let info = json(&expect(&sock, "GET", "/", "", 200));
    assert_eq!(info["id"], "fcpy-vm-1");
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["vmm_version"], "1.13.0");
    let version = json(&expect(&sock, "GET", "/version", "", 200));
    assert_eq!(version["firecracker_version"], "1.13.0");
    configure_and_start(&sock);
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    expect(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    expect(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    let config = json(&expect(&sock, "GET", "/vm/config", "", 200));
    assert!(
        config["balloon"].is_null() && config["vsock"].is_null(),
        "{config}"
    );
    assert_eq!(config["logger"]["log_path"], log.display().to_string());
    vm.send(b"quit\n");
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0);

    let text = std::fs::read_to_string(&log).expect("log file");
    let started = text
        .lines()
        .find(|l| l.contains("Started 1 vCPU thread(s)"))
        .unwrap_or_else(|| panic!("no start line in the log file:\n{text}"));
    // `<UTC time> [<id>:<thread>] message`, Firecracker's format without level and origin.
    let (time, rest) = started.split_once(' ').expect("time first");
    assert_eq!(
        time.len(),
        "2026-12-01T06:13:55.123456789".len(),
        "{started}"
    );
    assert!(rest.starts_with("[fcpy-vm-1:main] "), "{started}");
    assert!(text.contains("[fcpy-vm-1:main] VM paused"), "{text}");
    assert!(
        !vm.log().contains("Started 1 vCPU"),
        "the log went to stderr too: {}",
        vm.log()
    );
}

/// microheart launches `firecracker --api-sock S --enable-pci`, then sends `PUT /logger` with
/// a log path (here a FIFO), level and both show flags, and `PUT /serial`: Ember warns about
/// PCI on stderr, logs to the FIFO with level and origin, and writes the console to the file.
#[test]
fn test_microheart_launch_line_logger_fifo_and_serial_file() {
    let sock = sock_path("microheart");
    let fifo = fresh("microheart-log.fifo");
    let console = fresh("microheart-console.txt");
    mkfifo(&fifo);
    let lines = read_fifo(&fifo);
    let mut vm = TestVm::start(
        VmArgs::default()
            .arg("--api-sock", sock.display())
            .flag("--enable-pci"),
    );
    wait_for_socket(&sock, QUICK);
    let logger = format!(
        r#"{{"log_path": "{}", "level": "Info", "show_level": true, "show_log_origin": true}}"#,
        fifo.display()
    );
    expect(&sock, "PUT", "/logger", &logger, 204);
    let serial = format!(r#"{{"serial_out_path": "{}"}}"#, console.display());
    expect(&sock, "PUT", "/serial", &serial, 204);
    // A bad body is one clear 400, and Ember keeps serving.
    let bad = json(&expect(
        &sock,
        "PUT",
        "/logger",
        r#"{"log_path": "/nonexistent-dir/x"}"#,
        400,
    ));
    assert!(
        bad["fault_message"]
            .as_str()
            .expect("message")
            .contains("/nonexistent-dir/x"),
        "{bad}"
    );
    configure_and_start(&sock);
    let started = wait_line(&lines, "Started 1 vCPU thread(s)");
    let tag = started.split(' ').nth(1).expect("tag");
    assert!(
        tag.starts_with("[anonymous-instance:main:INFO:src/vmm.rs:"),
        "{started}"
    );
    // Configuration is frozen once the VM runs (the logger too: no open(2) under seccomp).
    expect(&sock, "PUT", "/logger", r#"{"level": "Debug"}"#, 400);
    let deadline = std::time::Instant::now() + GUEST_TIMEOUT;
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("READY")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no READY in the console file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    vm.signal(15);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 143);
    assert!(vm.log().contains("--enable-pci ignored"), "{}", vm.log());
}

/// `--version`: the second word is a semver Firecracker clients accept (Kata requires
/// >= 0.21.1), and Ember's own version follows.
#[test]
fn test_version_line_is_what_kata_parses() {
    let out = output_of(std::process::Command::new(ember_bin()).arg("--version"));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().expect("a line");
    let version = first.split(' ').nth(1).expect("second word");
    assert_eq!(version, "v1.13.0", "{first}");
    assert!(
        first.contains(&format!("ember {}", env!("CARGO_PKG_VERSION"))),
        "{first}"
    );
}

/// Firecracker's flags Ember cannot honour: one clear line and exit status 2, or a warning.
#[test]
fn test_unsupported_firecracker_flags_refused_or_warned() {
    let (code, stderr) = run_ember(&["--seccomp-filter", "/tmp/f.bpf"], QUICK);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("built in"), "{stderr}");
    let (code, stderr) = run_ember(&["--id", "no spaces", "--api-sock", "/tmp/x.sock"], QUICK);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--id"), "{stderr}");
    for flag in ["--log-path", "--metrics-path"] {
        let args = [flag, "/nonexistent-dir/x", "--api-sock", "/tmp/x.sock"];
        let (code, stderr) = run_ember(&args, QUICK);
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("cannot open /nonexistent-dir/x"),
            "{stderr}"
        );
    }
    let hello = common::test_guest("hello").display().to_string();
    let (code, stderr) = run_ember(
        &[
            "--kernel",
            &hello,
            "--mmds-size-limit",
            "1024",
            "--parent-cpu-time-us",
            "1",
            "--boot-timer",
            "--level",
            "Warning",
            "--http-api-max-payload-size",
            "4096",
        ],
        GUEST_TIMEOUT,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("--mmds-size-limit ignored"), "{stderr}");
    assert!(stderr.contains("--parent-cpu-time-us ignored"), "{stderr}");
}

/// Metrics to a FIFO (`--metrics-path`): `FlushMetrics` writes a line at once, whose block
/// counters are what the `blk` guest did (check and flush: three 64 KiB transfers, a read past
/// the end, a FLUSH), and the next line has only what happened since.
#[test]
fn test_metrics_fifo_block_counters_match_blk_guest() {
    let sock = sock_path("metrics-blk");
    let fifo = fresh("metrics-blk.fifo");
    let disk = fresh("metrics-blk.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).expect("disk file");
    mkfifo(&fifo);
    let lines = read_fifo(&fifo);
    let mut vm = TestVm::start(
        VmArgs::device_guest("blk")
            .arg("--disk", format!("path={},id=scratch", disk.display()))
            .arg("--cmdline", "blk=flush")
            .arg("--api-sock", sock.display())
            .arg("--metrics-path", fifo.display()),
    );
    vm.wait_for_line("BLK flushed", GUEST_TIMEOUT);
    wait_for_socket(&sock, QUICK);
    expect(&sock, "GET", "/", "", 200);
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    expect(&sock, "PUT", "/actions", flush, 204);
    let first = json(&wait_line(&lines, "utc_timestamp_ms"));
    let disk_counters = &first["block_scratch"];
    assert_eq!(disk_counters["requests"], 5, "{first}");
    assert_eq!(disk_counters["read_bytes"], 2 * 65536, "{first}");
    assert_eq!(disk_counters["write_bytes"], 65536, "{first}");
    assert_eq!(disk_counters["errors"], 1, "the read past the end: {first}");
    assert_eq!(
        first["block"], *disk_counters,
        "one disk: the sum is its own"
    );
    assert_eq!(
        first["get_api_requests"]["instance_info_count"], 1,
        "{first}"
    );
    assert!(
        first["vcpu"]["exit_mmio_write"].as_u64() > Some(0),
        "{first}"
    );
    let boot = &first["latencies_us"]["process_start_to_vcpus"];
    assert!(boot.as_u64() > Some(0), "{first}");

    expect(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    expect(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    expect(&sock, "PUT", "/actions", flush, 204);
    let second = json(&wait_line(&lines, "utc_timestamp_ms"));
    assert_eq!(second["block_scratch"]["requests"], 0, "{second}");
    assert_eq!(second["put_api_requests"]["actions_count"], 1, "{second}");
    assert_eq!(second["patch_api_requests"]["vm_count"], 2, "{second}");
    let latencies = &second["latencies_us"];
    assert!(latencies["pause_vm"].as_u64() > Some(0), "{second}");
    assert!(latencies["resume_vm"].as_u64() > Some(0), "{second}");
    assert_eq!(
        latencies["process_start_to_vcpus"], *boot,
        "a value, not an increase"
    );
    vm.signal(15);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 143);
    // The last line is written at exit.
    wait_line(&lines, "utc_timestamp_ms");
}

/// Kata Containers launches `firecracker --api-sock S --config-file C` with `logger.log_path`
/// and `metrics.metrics_path` FIFOs it reads and a pool of empty placeholder drives (with its
/// `cache_type`), then waits for `GET /` to say Running.
#[test]
fn test_kata_config_file_with_log_and_metrics_fifos() {
    let sock = sock_path("kata");
    let log_fifo = fresh("kata-log.fifo");
    let metrics_fifo = fresh("kata-metrics.fifo");
    mkfifo(&log_fifo);
    mkfifo(&metrics_fifo);
    let log_lines = read_fifo(&log_fifo);
    let metrics_lines = read_fifo(&metrics_fifo);
    let config = fresh("kata-config.json");
    // Kata's pool of placeholder drives: empty files, swapped later with PATCH /drives.
    let placeholder = fresh("kata-drive_0");
    std::fs::write(&placeholder, "").expect("placeholder drive");
    let doc = serde_json::json!({
        "drives": [{
            "drive_id": "drive_0", "path_on_host": placeholder, "is_read_only": false,
            "is_root_device": false, "cache_type": "Unsafe"
        }],
        "boot-source": {
            "kernel_image_path": common::test_guest("echo"),
            "boot_args": "console=ttyS0 reboot=k panic=1"
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "smt": false},
        "logger": {"log_path": log_fifo, "level": "Debug"},
        "metrics": {"metrics_path": metrics_fifo}
    });
    std::fs::write(&config, doc.to_string()).expect("config file");
    let mut vm = TestVm::start(
        VmArgs::default()
            .arg("--api-sock", sock.display())
            .arg("--config-file", config.display()),
    );
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    wait_for_socket(&sock, QUICK);
    let info = json(&expect(&sock, "GET", "/", "", 200));
    assert_eq!(info["state"], "Running");
    expect(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "FlushMetrics"}"#,
        204,
    );
    let metrics = json(&wait_line(&metrics_lines, "utc_timestamp_ms"));
    assert!(
        metrics["vcpu"]["exit_io_out"].as_u64() > Some(0),
        "{metrics}"
    );
    let vm_config = json(&expect(&sock, "GET", "/vm/config", "", 200));
    assert_eq!(
        vm_config["metrics"]["metrics_path"],
        metrics_fifo.display().to_string()
    );
    // Metrics and logger are set once, before the start.
    let again = format!(r#"{{"metrics_path": "{}"}}"#, metrics_fifo.display());
    expect(&sock, "PUT", "/metrics", &again, 400);
    wait_line(
        &log_lines,
        "[anonymous-instance:main] Started 1 vCPU thread(s)",
    );
    vm.send(b"quit\n");
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0);
}

/// `--http-api-max-payload-size` bounds request bodies (413 above it); `--module` keeps only
/// one module's log lines; `--id` shows in the stderr log.
#[test]
fn test_payload_limit_module_filter_and_id_on_stderr() {
    let sock = sock_path("payload");
    let mut vm = TestVm::start(
        VmArgs::default()
            .arg("--api-sock", sock.display())
            .arg("--http-api-max-payload-size", 64)
            .arg("--id", "small-vm")
            .arg("--module", "api"),
    );
    wait_for_socket(&sock, QUICK);
    let small = r#"{"vcpu_count": 1, "mem_size_mib": 64}"#;
    let large = format!(
        r#"{{"vcpu_count": 1, "mem_size_mib": 64, "smt": false{}}}"#,
        " ".repeat(64)
    );
    expect(&sock, "PUT", "/machine-config", small, 204);
    let refused = json(&expect(&sock, "PUT", "/machine-config", &large, 413));
    assert!(
        refused["fault_message"]
            .as_str()
            .expect("message")
            .contains("64"),
        "{refused}"
    );
    expect(&sock, "GET", "/", "", 200);
    vm.signal(15);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 143);
    let log = vm.log();
    assert!(log.contains("[ember:small-vm "), "{log}");
    assert!(log.contains("API listening"), "{log}");
    assert!(
        !log.contains("Waiting for the configuration"),
        "not filtered: {log}"
    );
}

/// The monotonic clock in µs, as a launcher (the jailer) reads it for `--start-time-us`.
fn monotonic_us() -> u64 {
    // SAFETY: timespec is plain data that clock_gettime fills.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid timespec owned by this frame.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// `PUT /metrics` before the start (once), and `FlushMetrics` before the start: 400 without a
/// path, then a line with the API counts at once, and the start-up time measured from the
/// launcher's `--start-time-us` (in every line: it is not an increase).
#[test]
fn test_put_metrics_and_flush_before_start() {
    let sock = sock_path("metrics-preboot");
    let fifo = fresh("metrics-preboot.fifo");
    mkfifo(&fifo);
    let lines = read_fifo(&fifo);
    let mut vm = TestVm::start(
        VmArgs::default()
            .arg("--api-sock", sock.display())
            .arg("--start-time-us", monotonic_us())
            .arg("--start-time-cpu-us", 0),
    );
    wait_for_socket(&sock, QUICK);
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    let refused = json(&expect(&sock, "PUT", "/actions", flush, 400));
    assert!(
        refused["fault_message"]
            .as_str()
            .expect("message")
            .contains("metrics path")
    );
    let body = format!(r#"{{"metrics_path": "{}"}}"#, fifo.display());
    expect(&sock, "PUT", "/metrics", &body, 204);
    expect(&sock, "PUT", "/metrics", &body, 400);
    expect(&sock, "PUT", "/actions", flush, 204);
    let line = json(&wait_line(&lines, "utc_timestamp_ms"));
    let put = &line["put_api_requests"];
    assert_eq!(put["metrics_count"], 2, "{line}");
    assert_eq!(put["metrics_fails"], 1, "{line}");
    assert_eq!(put["actions_fails"], 1, "{line}");
    let took = line["api_server"]["process_startup_time_us"].as_u64();
    assert!(took > Some(0) && took < Some(60_000_000), "{line}");
    assert!(
        line["api_server"]["process_startup_time_cpu_us"].as_u64() > Some(0),
        "{line}"
    );
    expect(&sock, "PUT", "/actions", flush, 204);
    let again = json(&wait_line(&lines, "utc_timestamp_ms"));
    assert_eq!(again["api_server"], line["api_server"], "{again}");
    vm.signal(15);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 143);
}

/// `--no-api` with `--config-file` runs the VM without a socket, as Firecracker does.
#[test]
fn test_no_api_with_config_file_runs() {
    let config = fresh("no-api.json");
    let doc = serde_json::json!({
        "boot-source": {"kernel_image_path": common::test_guest("hello")},
        "serial": {"mode": "none"}
    });
    std::fs::write(&config, doc.to_string()).expect("config file");
    let path = config.display().to_string();
    let (code, stderr) = run_ember(&["--config-file", &path, "--no-api"], GUEST_TIMEOUT);
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = run_ember(&["--no-api", "--api-sock", "/tmp/x.sock"], QUICK);
    assert_eq!(code, 2, "{stderr}");
}

/// The running VM writes a metrics line every 60 s without being asked. Ignored in the regular
/// suite because it waits out the period (`-- --ignored` runs it).
#[test]
#[ignore = "waits out the 60 s metrics period"]
fn test_metrics_written_every_60_s() {
    let fifo = fresh("metrics-period.fifo");
    mkfifo(&fifo);
    let lines = read_fifo(&fifo);
    let mut vm = TestVm::start(VmArgs::guest("echo").arg("--metrics-path", fifo.display()));
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    let started = std::time::Instant::now();
    let line = json(&wait_line(&lines, "utc_timestamp_ms"));
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_secs(50),
        "a line after {waited:?}: {line}"
    );
    assert!(line["vcpu"]["exit_io_out"].as_u64() > Some(0), "{line}");
    vm.send(b"quit\n");
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0);
}

/// `PATCH /machine-config` before the start changes only the fields it names; after the start
/// it is refused like every configuration change.
#[test]
fn test_patch_machine_config_before_start_only() {
    let sock = sock_path("patch-machine");
    let mut vm = TestVm::start(VmArgs::default().arg("--api-sock", sock.display()));
    wait_for_socket(&sock, QUICK);
    expect(
        &sock,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
        204,
    );
    expect(
        &sock,
        "PATCH",
        "/machine-config",
        r#"{"mem_size_mib": 96}"#,
        204,
    );
    let machine = json(&expect(&sock, "GET", "/machine-config", "", 200));
    assert_eq!(
        (
            machine["vcpu_count"].as_u64(),
            machine["mem_size_mib"].as_u64()
        ),
        (Some(2), Some(96))
    );
    expect(
        &sock,
        "PATCH",
        "/machine-config",
        r#"{"vcpu_count": 0}"#,
        400,
    );
    expect(&sock, "PATCH", "/machine-config", r#"{"vcpus": 1}"#, 400);
    configure_and_start(&sock);
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    expect(
        &sock,
        "PATCH",
        "/machine-config",
        r#"{"mem_size_mib": 128}"#,
        400,
    );
    vm.send(b"quit\n");
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0);
}

/// `GET /vm/config`'s answer, with Firecracker's keys for the resources Ember lacks set to
/// `null`, is a config file another Ember runs.
#[test]
fn test_vm_config_answer_runs_as_config_file() {
    let sock = sock_path("vm-config-file");
    let disk = fresh("vm-config-file.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk file");
    let mut vm = TestVm::start(VmArgs::default().arg("--api-sock", sock.display()));
    wait_for_socket(&sock, QUICK);
    common::api::configure_guest(&sock, &common::test_guest("hello"));
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": true}}"#,
        disk.display()
    );
    expect(&sock, "PUT", "/drives/data", &drive, 204);
    let answer = expect(&sock, "GET", "/vm/config", "", 200);
    let config = json(&answer);
    assert!(
        config["mmds-config"].is_null() && config["balloon"].is_null(),
        "{config}"
    );
    let file = fresh("vm-config-file.json");
    std::fs::write(&file, &answer).expect("config file");
    let (code, stderr) = run_ember(
        &["--config-file", &file.display().to_string()],
        GUEST_TIMEOUT,
    );
    assert_eq!(code, 0, "{stderr}");
    vm.signal(15);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 143);
}
