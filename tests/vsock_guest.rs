//! virtio-vsock end to end on real KVM: the `vsock` test guest (a ring-3 vsock driver) talks to
//! real Unix sockets through Firecracker's hybrid protocol: guest -> host connections to
//! `<uds>_<port>`, host -> guest connections with `CONNECT <port>\n` / `OK <port>\n`, malformed
//! packets answered with RSTs and counted, and 16 MiB each way through a 16 KiB guest buffer
//! (flow control, no loss, and Ember's main thread idle while the host does not read).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{GUEST_TIMEOUT, TestVm, VmArgs, fnv1a64, scratch_dir};

/// A fresh socket path for one test (and its `_<port>` companions).
fn uds(name: &str) -> PathBuf {
    let path = scratch_dir().join(format!("{name}.vsock"));
    for p in [path.clone(), port_path(&path, 52), port_path(&path, 53)] {
        std::fs::remove_file(p).ok();
    }
    path
}

fn port_path(uds: &Path, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{port}", uds.display()))
}

/// Accepts one connection on `listener` in a thread, bounded by GUEST_TIMEOUT.
fn accept(listener: UnixListener) -> mpsc::Receiver<UnixStream> {
    let (tx, rx) = mpsc::channel();
    listener.set_nonblocking(true).expect("nonblocking");
    thread::spawn(move || {
        let deadline = Instant::now() + GUEST_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok((stream, _)) = listener.accept() {
                stream.set_nonblocking(false).expect("blocking");
                stream
                    .set_read_timeout(Some(GUEST_TIMEOUT))
                    .expect("timeout");
                let _ = tx.send(stream);
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    });
    rx
}

fn vsock_vm(uds: &Path, cmdline: Option<&str>) -> TestVm {
    let mut args = VmArgs::device_guest("vsock")
        .arg("--vsock", format!("cid=3,uds={}", uds.display()))
        .arg("--log-level", "debug");
    if let Some(c) = cmdline {
        args = args.arg("--cmdline", c);
    }
    TestVm::start(args)
}

fn value<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn test_vsock_guest_both_directions_and_malformed_packets() {
    let uds = uds("check");
    let guest_side = accept(UnixListener::bind(port_path(&uds, 52)).expect("bind _52"));
    let mut vm = vsock_vm(&uds, None);
    vm.wait_for_line("VSOCK cid=3", GUEST_TIMEOUT);

    // Guest -> host: Ember connects to <uds>_52.
    let mut stream = guest_side
        .recv_timeout(GUEST_TIMEOUT)
        .expect("Ember connected to _52");
    vm.wait_for_line("VSOCK connected port=52", GUEST_TIMEOUT);
    let mut hello = [0u8; 16];
    stream.read_exact(&mut hello).expect("guest data");
    assert_eq!(&hello, b"hello from guest");
    stream.write_all(b"hello from host!").expect("host data");
    let line = vm.wait_for_line("VSOCK recv bytes=16", GUEST_TIMEOUT);
    assert_eq!(
        value(&line, "fnv="),
        format!("{:#x}", fnv1a64(b"hello from host!"))
    );
    vm.wait_for_line("VSOCK closed", GUEST_TIMEOUT);
    assert_eq!(
        stream.read(&mut hello).expect("EOF after the guest closed"),
        0
    );

    // Host -> guest: CONNECT 52 / OK <port>, then an echo of 100 KiB.
    vm.wait_for_line("VSOCK listening port=52", GUEST_TIMEOUT);
    let mut client = UnixStream::connect(&uds).expect("connect to the vsock socket");
    client
        .set_read_timeout(Some(GUEST_TIMEOUT))
        .expect("timeout");
    client.write_all(b"CONNECT 52\n").expect("CONNECT");
    let mut ok = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        client.read_exact(&mut byte).expect("OK line");
        ok.push(byte[0]);
    }
    let ok = String::from_utf8(ok).expect("utf8");
    let port: u32 = ok
        .trim()
        .strip_prefix("OK ")
        .expect("OK <port>")
        .parse()
        .expect("port");
    let line = vm.wait_for_line("VSOCK accepted port=", GUEST_TIMEOUT);
    assert_eq!(value(&line, "port="), port.to_string());
    let data: Vec<u8> = (0..100 * 1024u32)
        .map(|i| (i * 31 + i / 251) as u8)
        .collect();
    let writer = {
        let mut client = client.try_clone().expect("clone");
        let data = data.clone();
        thread::spawn(move || {
            client.write_all(&data).expect("host writes");
            client
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
        })
    };
    let mut echoed = Vec::new();
    client.read_to_end(&mut echoed).expect("echo until EOF");
    writer.join().expect("writer");
    assert!(
        echoed == data,
        "echo differs ({} of {} bytes)",
        echoed.len(),
        data.len()
    );
    vm.wait_for_line(&format!("VSOCK echoed bytes={}", data.len()), GUEST_TIMEOUT);
    vm.wait_for_line("VSOCK closed", GUEST_TIMEOUT);

    // Malformed packets: each gets a RST, Ember counts them and keeps running.
    vm.wait_for_line("VSOCK malformed rst=5", GUEST_TIMEOUT);
    vm.wait_for_line("EMBER-TEST vsock done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    let log = vm.log();
    let counters = log
        .lines()
        .find(|l| l.contains("vsock vsock0:") && l.contains("errors"))
        .unwrap_or_else(|| panic!("no vsock counters at exit:\n{log}"));
    assert!(counters.contains(" 5 errors"), "{counters}");
    assert!(!uds.exists(), "the vsock socket is removed at exit");
}

/// CPU time (user + system, clock ticks) of thread `tid` of process `pid`.
fn thread_cpu_ticks(pid: u32, tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// The guest's byte at stream offset `p` (vsock.S, bulk mode).
fn pattern(p: u64) -> u8 {
    (p.wrapping_mul(7).wrapping_add(p >> 12)) as u8
}

#[test]
fn test_vsock_guest_16_mib_each_way_through_a_small_buffer() {
    const MIB: usize = 16;
    let uds = uds("bulk");
    let guest_side = accept(UnixListener::bind(port_path(&uds, 53)).expect("bind _53"));
    let mut vm = vsock_vm(&uds, Some(&format!("vsock=bulk mib={MIB}")));
    let mut stream = guest_side
        .recv_timeout(GUEST_TIMEOUT)
        .expect("Ember connected to _53");
    vm.wait_for_line("VSOCK connected port=53", GUEST_TIMEOUT);

    // Host -> guest: 16 MiB of xorshift bytes, through the guest's 16 KiB buffer.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..MIB << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let expected_fnv = fnv1a64(&data);
    let mut writer = stream.try_clone().expect("clone");
    let started = Instant::now();
    let sender = thread::spawn(move || writer.write_all(&data).expect("host writes 16 MiB"));
    let line = vm.wait_for_line("VSOCK bulk recv bytes=", GUEST_TIMEOUT);
    sender.join().expect("sender");
    let host_to_guest = started.elapsed();
    assert_eq!(value(&line, "bytes="), (MIB << 20).to_string());
    assert_eq!(value(&line, "fnv="), format!("{expected_fnv:#x}"));

    // Guest -> host, with the host not reading for two seconds first: the guest runs out of
    // credit and Ember's main thread must sit idle (no spin) meanwhile.
    thread::sleep(Duration::from_millis(500));
    let pid = vm.pid();
    let before = thread_cpu_ticks(pid, pid);
    thread::sleep(Duration::from_secs(2));
    let idle_ticks = thread_cpu_ticks(pid, pid) - before;
    let started = Instant::now();
    let mut got = vec![0u8; MIB << 20];
    stream.read_exact(&mut got).expect("guest sends 16 MiB");
    let guest_to_host = started.elapsed();
    let bad = (0..got.len()).find(|&p| got[p] != pattern(p as u64));
    assert_eq!(bad, None, "guest data differs");
    vm.wait_for_line("VSOCK bulk sent bytes=", GUEST_TIMEOUT);
    vm.wait_for_line("VSOCK closed", GUEST_TIMEOUT);
    assert_eq!(stream.read(&mut [0u8; 1]).expect("EOF"), 0);
    vm.wait_for_line("EMBER-TEST vsock done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    eprintln!(
        "vsock 16 MiB: host->guest {:.1} MiB/s, guest->host {:.1} MiB/s (from the first byte the host reads); main thread {idle_ticks} ticks while the host did not read for 2 s",
        MIB as f64 / host_to_guest.as_secs_f64(),
        MIB as f64 / guest_to_host.as_secs_f64()
    );
    // 2 s is 200 ticks; a spinning loop would use nearly all of them.
    assert!(
        idle_ticks < 40,
        "main thread used {idle_ticks} ticks while blocked"
    );
}

/// A connection survives pause and resume: bytes the host writes while the VM is paused arrive
/// after it resumes, nothing is lost, and the paused Ember does not spin on the readable stream.
#[test]
fn test_vsock_connection_survives_pause_and_resume() {
    const MIB: usize = 2;
    let uds = uds("pause");
    let api = common::api::sock_path("vsock-pause");
    let guest_side = accept(UnixListener::bind(port_path(&uds, 53)).expect("bind _53"));
    let mut vm = TestVm::start(
        VmArgs::device_guest("vsock")
            .arg("--vsock", format!("cid=3,uds={}", uds.display()))
            .arg("--cmdline", format!("vsock=bulk mib={MIB}"))
            .arg("--api-sock", api.display()),
    );
    let mut stream = guest_side
        .recv_timeout(GUEST_TIMEOUT)
        .expect("Ember connected to _53");
    vm.wait_for_line("VSOCK connected port=53", GUEST_TIMEOUT);
    common::api::wait_for_socket(&api, GUEST_TIMEOUT);
    let (status, body) = common::api::http(&api, "PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(status, 204, "{body}");

    let data: Vec<u8> = (0..MIB << 20).map(|i| (i * 13 + i / 4099) as u8).collect();
    let mut writer = stream.try_clone().expect("clone");
    let payload = data.clone();
    let sender = thread::spawn(move || writer.write_all(&payload).expect("host writes"));
    thread::sleep(Duration::from_millis(300));
    let pid = vm.pid();
    let before = thread_cpu_ticks(pid, pid);
    thread::sleep(Duration::from_secs(1));
    let paused_ticks = thread_cpu_ticks(pid, pid) - before;
    let (status, body) = common::api::http(&api, "PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(status, 204, "{body}");

    let line = vm.wait_for_line("VSOCK bulk recv bytes=", GUEST_TIMEOUT);
    sender.join().expect("sender");
    assert_eq!(value(&line, "fnv="), format!("{:#x}", fnv1a64(&data)));
    let mut got = vec![0u8; MIB << 20];
    stream.read_exact(&mut got).expect("guest sends");
    assert!(
        (0..got.len()).all(|p| got[p] == pattern(p as u64)),
        "guest data differs"
    );
    vm.wait_for_line("EMBER-TEST vsock done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    assert!(
        paused_ticks < 20,
        "main thread used {paused_ticks} ticks while paused"
    );
}

/// Configured over the API as a Firecracker client does it: `PUT /vsock` (a reserved CID and a
/// rate-limited `PUT /entropy` refused with the reason), `GET /vm/config` shows the device,
/// InstanceStart, and the guest's connection reaches the host.
#[test]
fn test_vsock_configured_over_the_api() {
    let uds = uds("api");
    let api = common::api::sock_path("vsock-api");
    let guest_side = accept(UnixListener::bind(port_path(&uds, 53)).expect("bind _53"));
    let mut vm = TestVm::start(
        VmArgs::default()
            .arg("--api-sock", api.display())
            .arg("--virtio-discovery", "cmdline"),
    );
    common::api::wait_for_socket(&api, GUEST_TIMEOUT);
    let put = |target: &str, body: &str| common::api::http(&api, "PUT", target, body);
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "vsock=bulk mib=1"}}"#,
        common::test_guest("vsock").display()
    );
    assert_eq!(put("/boot-source", &boot).0, 204);
    let (status, fault) = put("/vsock", r#"{"guest_cid": 2, "uds_path": "/tmp/x"}"#);
    assert_eq!(status, 400);
    assert!(fault.contains("guest_cid 2 is reserved"), "{fault}");
    let (status, fault) = put(
        "/entropy",
        r#"{"rate_limiter": {"bandwidth": {"size": 1024}}}"#,
    );
    assert_eq!(status, 400);
    assert!(
        fault.contains("rate_limiter.bandwidth: missing field `refill_time`"),
        "{fault}"
    );
    let body = format!(
        r#"{{"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "{}"}}"#,
        uds.display()
    );
    assert_eq!(put("/vsock", &body).0, 204);
    let (_, config) = common::api::http(&api, "GET", "/vm/config", "");
    assert!(config.contains(r#""vsock":{"guest_cid":3"#), "{config}");
    assert!(config.contains(r#""entropy":null"#), "{config}");
    assert_eq!(
        put("/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );

    let mut stream = guest_side
        .recv_timeout(GUEST_TIMEOUT)
        .expect("Ember connected to _53");
    stream
        .write_all(&vec![7u8; 1 << 20])
        .expect("host writes 1 MiB");
    vm.wait_for_line("VSOCK bulk recv bytes=1048576", GUEST_TIMEOUT);
    let mut got = vec![0u8; 1 << 20];
    stream.read_exact(&mut got).expect("guest sends 1 MiB");
    vm.wait_for_line("EMBER-TEST vsock done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
}
