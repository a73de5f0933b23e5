//! The HTTP API over a Unix socket, the JSON config file and lifecycle events, driven with a
//! real HTTP client (std `UnixStream`) against the real `ember` binary and the test guests.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::api::{http, raw, sock_path, split_response};
use common::{GUEST_TIMEOUT, TestVm, VmArgs, run_ember, scratch_dir, test_guest};

/// A hang detector, not a timing check: generous because a loaded software-nested host can
/// stall KVM set-up for seconds.
const QUICK: Duration = Duration::from_secs(60);
const SIGTERM: i32 = 15;

fn wait_for_socket(path: &Path) {
    common::api::wait_for_socket(path, QUICK);
}

fn expect(sock: &Path, method: &str, target: &str, body: &str, status: u16) -> String {
    let (got, answer) = http(sock, method, target, body);
    assert_eq!(got, status, "{method} {target} {body} -> {answer}");
    answer
}

fn state(sock: &Path) -> String {
    let body = expect(sock, "GET", "/", "", 200);
    let info: serde_json::Value = serde_json::from_str(&body).expect("JSON instance info");
    assert_eq!(info["app_name"], "ember");
    info["state"].as_str().expect("state").to_string()
}

fn event_names(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("events file")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object a line");
            assert!(v["timestamp_us"].as_u64().is_some(), "{l}");
            v["event"].as_str().expect("event").to_string()
        })
        .collect()
}

#[test]
fn test_api_configure_start_pause_resume_quit() {
    let sock = sock_path("lifecycle");
    let events = scratch_dir().join("lifecycle-events.jsonl");
    let _ = std::fs::remove_file(&events);
    let mut vm = TestVm::start(
        VmArgs::default()
            .arg("--api-sock", sock.display())
            .arg("--events", events.display()),
    );
    wait_for_socket(&sock);
    assert_eq!(state(&sock), "Not started");
    common::api::configure_guest(&sock, &test_guest("echo"));
    let config = expect(&sock, "GET", "/vm/config", "", 200);
    assert!(config.contains(r#""mem_size_mib":64"#), "{config}");
    expect(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
        204,
    );
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    assert_eq!(state(&sock), "Running");

    expect(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    assert_eq!(state(&sock), "Paused");
    vm.send(b"while paused\n");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !vm.console().iter().any(|l| l.contains("ECHO while paused")),
        "a paused guest echoed: {:?}",
        vm.console()
    );
    expect(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
        400,
    );
    expect(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    assert_eq!(state(&sock), "Running");
    vm.wait_for_line("ECHO while paused", GUEST_TIMEOUT);

    // Configuration is frozen once the VM runs; a second start makes no sense.
    expect(
        &sock,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        400,
    );
    expect(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
        400,
    );

    vm.send(b"quit\n");
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    assert!(!sock.exists(), "the socket is removed at exit");
    assert_eq!(
        event_names(&events),
        ["started", "paused", "resumed", "reset"]
    );
}

#[test]
fn test_api_ctrl_alt_del_resets_kbd_guest() {
    let sock = sock_path("cad");
    let mut vm = TestVm::start(VmArgs::guest("kbd").arg("--api-sock", sock.display()));
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    wait_for_socket(&sock);
    expect(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
        204,
    );
    vm.wait_for_line("CTRL-ALT-DEL", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    assert_eq!(
        vm.lines_with_prefix("KBD "),
        ["KBD 0x14", "KBD 0x11", "KBD 0xe0", "KBD 0x71"]
    );
    assert!(!sock.exists(), "the socket is removed at exit");
}

/// The reference Linux kernel reboots on Ctrl-Alt-Del without any userspace (the kernel's
/// default C-A-D action, through atkbd and the VT keyboard handler): kernel-only, so it runs on
/// software-nested hosts. Skipped when the images are not built, unless EMBER_REQUIRE_LINUX.
#[test]
fn test_api_ctrl_alt_del_reboots_reference_linux() {
    let (Some(kernel), Some(initrd)) = (
        common::linux_image("vmlinux"),
        common::linux_image("initramfs-idle.cpio"),
    ) else {
        return;
    };
    let sock = sock_path("linux-cad");
    let mut vm = TestVm::start(
        VmArgs::kernel(&kernel)
            .arg("--initrd", initrd.display())
            .arg("--cmdline", "console=ttyS0 reboot=k panic=1 i8042.noaux")
            .arg("--api-sock", sock.display()),
    );
    let linux = Duration::from_secs(600);
    vm.wait_for_line("serio: i8042 KBD port", linux);
    vm.wait_for_line("Run /init as init process", linux);
    // atkbd probes the keyboard asynchronously; give it a moment after init starts.
    std::thread::sleep(Duration::from_secs(3));
    expect(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
        204,
    );
    assert_eq!(vm.exit_code(linux), 0, "{}", vm.log());
    assert!(vm.log().contains("reset"), "{}", vm.log());
}

#[test]
fn test_api_firecracker_getting_started_sequence() {
    let sock = sock_path("firecracker");
    let rootfs = scratch_dir().join("fc-rootfs.ext4");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).expect("rootfs file");
    let mut vm = TestVm::start(VmArgs::default().arg("--api-sock", sock.display()));
    wait_for_socket(&sock);
    expect(
        &sock,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 128}"#,
        204,
    );
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}}"#,
        test_guest("hello").display()
    );
    expect(&sock, "PUT", "/boot-source", &boot, 204);
    let drive = format!(
        r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true, "is_read_only": false}}"#,
        rootfs.display()
    );
    expect(&sock, "PUT", "/drives/rootfs", &drive, 204);
    expect(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
        204,
    );
    vm.wait_for_line("EMBER-TEST hello done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
}

#[test]
fn test_api_bad_requests_are_answered_and_never_block() {
    let sock = sock_path("bad");
    let mut vm = TestVm::start(VmArgs::default().arg("--api-sock", sock.display()));
    wait_for_socket(&sock);
    // A client that connects and never sends holds up nobody.
    let _silent = UnixStream::connect(&sock).expect("connect");

    let fault = expect(&sock, "PUT", "/machine-config", "{\"vcpu_count\": ", 400);
    assert!(fault.contains("fault_message"), "{fault}");
    let fault = expect(
        &sock,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64, "turbo": true}"#,
        400,
    );
    assert!(fault.contains("unknown field `turbo`"), "{fault}");
    let fault = expect(
        &sock,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": "one", "mem_size_mib": 64}"#,
        400,
    );
    assert!(fault.contains("vcpu_count"), "{fault}");
    expect(&sock, "PUT", "/machine-config", "", 400);
    expect(
        &sock,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 0, "mem_size_mib": 64}"#,
        400,
    );
    let fault = expect(
        &sock,
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#,
        400,
    );
    assert!(fault.contains("/nonexistent/vmlinux"), "{fault}");
    expect(&sock, "GET", "/nowhere", "", 404);
    expect(&sock, "DELETE", "/machine-config", "", 405);
    expect(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#, 400);
    expect(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
        400,
    );
    let fault = expect(
        &sock,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
        400,
    );
    assert!(fault.contains("boot-source"), "{fault}");

    let big = format!(
        "PUT /machine-config HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        10 << 20
    );
    assert_eq!(split_response(&raw(&sock, big.as_bytes())).0, 413);
    let (status, _) = split_response(&raw(&sock, b"GARBAGE\x00\r\n\r\n"));
    assert_eq!(status, 400);
    let mut truncated = UnixStream::connect(&sock).expect("connect");
    truncated
        .write_all(b"PUT /actions HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"act")
        .expect("send");
    truncated
        .shutdown(std::net::Shutdown::Write)
        .expect("half close");
    let mut answer = String::new();
    let _ = truncated.read_to_string(&mut answer);
    assert!(answer.is_empty() || answer.contains(" 400 "), "{answer}");

    // Still serving, still not started.
    assert_eq!(state(&sock), "Not started");
    vm.signal(SIGTERM);
    assert_eq!(vm.exit_code(QUICK), 143);
    assert!(!sock.exists(), "the socket is removed after a signal");
    assert!(!vm.log().contains("panicked"), "{}", vm.log());
}

#[test]
fn test_api_socket_path_exists_is_usage_error() {
    let sock = sock_path("exists");
    std::fs::write(&sock, b"").expect("occupy the path");
    let (code, stderr) = run_ember(&["--api-sock", &sock.display().to_string()], QUICK);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.starts_with("ember: "), "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(sock.exists(), "somebody else's file is left alone");
}

#[test]
fn test_api_socket_directory_missing_is_usage_error() {
    let (code, stderr) = run_ember(&["--api-sock", "/nonexistent-dir/ember.sock"], QUICK);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("directory"), "{stderr}");
}

fn config_file(name: &str, text: &str) -> String {
    let path = scratch_dir().join(name);
    std::fs::write(&path, text).expect("config file");
    path.display().to_string()
}

#[test]
fn test_config_file_boots_hello() {
    let path = config_file(
        "hello.json",
        &format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                 "machine-config": {{"vcpu_count": 1, "mem_size_mib": 32}},
                 "serial": {{"mode": "stdio"}},
                 "logger": {{"level": "Info"}}}}"#,
            test_guest("hello").display()
        ),
    );
    let mut vm = TestVm::start(VmArgs::default().arg("--config-file", &path));
    vm.wait_for_line("Hello from the hello guest", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
}

#[test]
fn test_config_file_unknown_field_names_path() {
    let path = config_file(
        "unknown.json",
        r#"{"boot-source": {"kernel_image_path": "/k"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 32, "hugepages": true}}"#,
    );
    let (code, stderr) = run_ember(&["--config-file", &path], QUICK);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("machine-config.hugepages: unknown field `hugepages`"),
        "{stderr}"
    );
}

#[test]
fn test_config_file_wrong_type_names_path() {
    let path = config_file(
        "wrongtype.json",
        r#"{"boot-source": {"kernel_image_path": "/k"},
            "drives": [{"drive_id": "a", "path_on_host": "/a", "is_read_only": "yes"}]}"#,
    );
    let (code, stderr) = run_ember(&["--config-file", &path], QUICK);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("drives[0].is_read_only: invalid type"),
        "{stderr}"
    );
}

#[test]
fn test_config_file_with_vm_flags_rejected() {
    let path = config_file("conflict.json", "{}");
    let (code, stderr) = run_ember(&["--config-file", &path, "--memory", "64"], QUICK);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--memory"), "{stderr}");
}

#[test]
fn test_config_file_bad_json_and_missing_file_rejected() {
    let path = config_file("broken.json", "{\"boot-source\": ");
    let (code, stderr) = run_ember(&["--config-file", &path], QUICK);
    assert_eq!(code, 2, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (code, stderr) = run_ember(&["--config-file", "/nonexistent/vm.json"], QUICK);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/vm.json"), "{stderr}");
}

#[test]
fn test_events_file_reports_start_and_reset() {
    let events = scratch_dir().join("hello-events.jsonl");
    let _ = std::fs::remove_file(&events);
    let mut vm = TestVm::start(VmArgs::guest("hello").arg("--events", events.display()));
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    assert_eq!(event_names(&events), ["started", "reset"]);
    let text = std::fs::read_to_string(&events).expect("events");
    assert!(text.contains(r#""exit_code":0"#), "{text}");
}
