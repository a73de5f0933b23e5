//! Firecracker clients' request sequences replayed byte for byte against the real `ember`
//! binary: the bytes are what the client's HTTP stack sends (captured from python-requests
//! 2.34, which firecracker-python 0.0.5 and hysn-firecracker-python use through
//! requests-unixsocket: its `Host` is the URL-encoded socket path), with this test's paths.

mod common;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::api::{exchange_raw, sock_path, wait_for_socket};
use common::{GUEST_TIMEOUT, TestVm, VmArgs, scratch_dir, test_guest};

/// One request as python-requests writes it: its header order and spelling, and the body as
/// `json.dumps` writes it (`", "` and `": "` separators), given here already serialised.
fn python_requests(method: &str, target: &str, host: &str, json: Option<&str>) -> Vec<u8> {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: python-requests/2.34.2\r\n\
         Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n"
    );
    match json {
        Some(body) => {
            head.push_str(&format!(
                "Content-Length: {}\r\nContent-Type: application/json\r\n\r\n{body}",
                body.len()
            ));
        }
        None => head.push_str("\r\n"),
    }
    head.into_bytes()
}

/// requests-unixsocket's `Host`: the socket path, percent-encoded as `quote_plus` does.
fn host_of(sock: &Path) -> String {
    sock.display()
        .to_string()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// firecracker-python's `create()` (launch line, `GET /` until it answers, boot source, root
/// drive, machine config, InstanceStart), then `config()`, `pause()`, `resume()` and
/// `delete()` (SIGTERM). Its `PUT /network-interfaces/eth0` is left out: it needs a host TAP
/// device, which tests/net_guest.rs covers.
#[test]
fn test_firecracker_python_create_config_pause_resume_delete_replayed() {
    let sock = sock_path("fcpy-replay");
    let log = scratch_dir().join("fcpy-replay.log");
    std::fs::write(&log, "").expect("create_log_file");
    let rootfs = scratch_dir().join("fcpy-replay-rootfs.ext4");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).expect("rootfs copy");
    let mut vm = TestVm::start(
        VmArgs::default()
            .arg("--api-sock", sock.display())
            .arg("--id", "3f2a9c1e")
            .arg("--log-path", log.display()),
    );
    wait_for_socket(&sock, Duration::from_secs(60));
    let host = host_of(&sock);
    let kernel = test_guest("echo").display().to_string();
    let boot = format!(
        r#"{{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0 reboot=k pci=off panic=1 ip=172.16.0.2::172.16.0.1:255.255.255.0:fc-vm:eth0:on"}}"#
    );
    let drive = format!(
        r#"{{"drive_id": "rootfs", "path_on_host": "{}", "is_root_device": true, "is_read_only": false}}"#,
        rootfs.display()
    );
    let create: [(&str, &str, Option<&str>, u16); 5] = [
        ("GET", "/", None, 200),
        ("PUT", "/boot-source", Some(&boot), 204),
        ("PUT", "/drives/rootfs", Some(&drive), 204),
        (
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 64}"#),
            204,
        ),
        (
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#),
            204,
        ),
    ];
    let mut session = UnixStream::connect(&sock).expect("connect");
    for (method, target, json, status) in create {
        let (got, body) = exchange_raw(&mut session, &python_requests(method, target, &host, json));
        assert_eq!(got, status, "{method} {target} -> {body}");
        if method == "GET" {
            let info: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(info["id"], "3f2a9c1e");
        }
    }
    drop(session);
    vm.wait_for_line("READY", GUEST_TIMEOUT);

    let mut session = UnixStream::connect(&sock).expect("connect");
    let (got, body) = exchange_raw(
        &mut session,
        &python_requests("GET", "/vm/config", &host, None),
    );
    assert_eq!(got, 200, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(config["drives"][0]["drive_id"], "rootfs");
    assert_eq!(config["machine-config"]["mem_size_mib"], 64);
    for state in ["Paused", "Resumed"] {
        let json = format!(r#"{{"state": "{state}"}}"#);
        let (got, body) = exchange_raw(
            &mut session,
            &python_requests("PATCH", "/vm", &host, Some(&json)),
        );
        assert_eq!(got, 204, "{state}: {body}");
    }
    vm.send(b"still there\n");
    vm.wait_for_line("ECHO still there", GUEST_TIMEOUT);
    vm.signal(15);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 143);
    assert!(!sock.exists(), "delete() expects the socket gone");
    let text = std::fs::read_to_string(&log).expect("log file");
    assert!(text.contains("[3f2a9c1e:main] VM paused"), "{text}");
}
