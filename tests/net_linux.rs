//! virtio-net under the reference Linux kernel, in a network namespace the test creates: one
//! boot with two NICs on two TAPs and `ip=dhcp`. The kernel's DHCP client sends its DISCOVER on
//! every NIC before it waits for answers; the responder on the first TAP answers (a second
//! later, so that the DISCOVER on the second NIC goes out first: the kernel stops sending once
//! it has an answer), the kernel configures eth0 with the offered address, and the host then
//! pings it. The kernel's DHCP client configures one interface only, so the second NIC is
//! checked for transmit here and both directions by the `net` test guest (tests/net_guest.rs). The initramfs is the idle one (its init makes no system
//! call), so this runs on software-nested hosts too, where a boot takes a minute or more. Needs
//! root; skips without it, and skips when the images are missing unless EMBER_REQUIRE_LINUX is
//! set.

mod common;

use std::time::{Duration, Instant};

use common::dhcp::DhcpServer;
use common::netns::{NetNs, PacketSocket};
use common::{LINUX_TIMEOUT, TestVm, VmArgs, linux_image};

const MAC0: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const MAC1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[test]
fn test_linux_dhcp_then_ping_with_two_nics() {
    let (Some(kernel), Some(initrd)) = (linux_image("vmlinux"), linux_image("initramfs-idle.cpio"))
    else {
        return;
    };
    let Some(mut ns) = NetNs::new("linux") else {
        return;
    };
    // Checked before the minute-long boot: without ping the test could only time out.
    common::require_program("ping");
    ns.add_tap("tap0", Some("10.0.2.2/24"));
    ns.add_tap("tap1", Some("10.0.3.2/24"));
    let server = DhcpServer::spawn(
        PacketSocket::open(&ns, "tap0"),
        [10, 0, 2, 2],
        [10, 0, 2, 15],
        true,
        Duration::from_secs(1),
    );
    let watcher = DhcpServer::spawn(
        PacketSocket::open(&ns, "tap1"),
        [10, 0, 3, 2],
        [10, 0, 3, 15],
        false,
        Duration::ZERO,
    );
    let args = VmArgs::kernel(&kernel)
        .arg("--initrd", initrd.display())
        .arg("--memory", 256)
        .arg("--cmdline", "console=ttyS0 reboot=k panic=1 ip=dhcp")
        .arg("--net", "tap=tap0,mac=02:00:00:00:00:01")
        .arg("--net", "tap=tap1,mac=02:00:00:00:00:02")
        .in_netns(ns.name());
    let mut vm = TestVm::start(args);

    vm.wait_for_line("IP-Config: Complete", LINUX_TIMEOUT);
    let config = vm.wait_for_line("device=", LINUX_TIMEOUT);
    assert!(config.contains("device=eth0"), "{config}");
    assert!(config.contains("hwaddr=02:00:00:00:00:01"), "{config}");
    assert!(config.contains("ipaddr=10.0.2.15"), "{config}");
    assert!(config.contains("gw=10.0.2.2"), "{config}");
    assert!(server.saw_discover_from(MAC0), "{:?}", server.seen());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !watcher.saw_request_from(MAC1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        watcher.saw_request_from(MAC1),
        "nothing from eth1 on tap1: {:?}",
        watcher.seen()
    );

    // The kernel prints its IP-Config report before it assigns the address, and it runs
    // emulated here (busy for a while after ipconfig): wait for a first reply, then ping.
    let deadline = Instant::now() + Duration::from_secs(180);
    while !ns
        .exec(&["ping", "-c", "1", "-W", "3", "10.0.2.15"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the guest never answered a ping\n--- console ---\n{}\n--- ember log ---\n{}",
            vm.console().join("\n"),
            vm.log()
        );
    }
    let ping = ns.exec(&["ping", "-c", "3", "-i", "0.5", "-W", "10", "10.0.2.15"]);
    let out = String::from_utf8_lossy(&ping.stdout);
    assert!(
        out.contains("3 packets transmitted, 3 received"),
        "ping failed:\n{out}{}\n--- ember log ---\n{}",
        String::from_utf8_lossy(&ping.stderr),
        vm.log()
    );

    vm.signal(libc::SIGTERM);
    assert_eq!(vm.exit_code(Duration::from_secs(30)), 143, "{}", vm.log());
}

/// One newc cpio entry.
fn cpio_entry(out: &mut Vec<u8>, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let header = format!(
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        out.len() as u32 + 1, // any unique inode number
        mode,
        0,
        0,
        1,
        0,
        data.len(),
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() + 1,
        0
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// An initramfs with the host's static busybox and `init` as /init.
fn busybox_initramfs(init: &str) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
    let mut out = Vec::new();
    for dir in ["bin", "dev", "proc", "sys", "tmp"] {
        cpio_entry(&mut out, dir, 0o040755, (0, 0), &[]);
    }
    cpio_entry(&mut out, "dev/console", 0o020600, (5, 1), &[]);
    cpio_entry(&mut out, "bin/busybox", 0o100755, (0, 0), &busybox);
    cpio_entry(&mut out, "init", 0o100755, (0, 0), init.as_bytes());
    cpio_entry(&mut out, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

fn sha256_of(data: &[u8]) -> String {
    let path = common::scratch_dir().join(format!("sha-{}", std::process::id()));
    std::fs::write(&path, data).expect("write scratch");
    let out = common::output_of(std::process::Command::new("sha256sum").arg(&path));
    let _ = std::fs::remove_file(&path);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string()
}

/// Bytes sent each way by the TCP test (the guest's `dd count=` matches).
const TCP_BYTES: usize = 256 << 10;

const TCP_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
echo EMBER-NET-TCP listening
nc -l -p 5000 > /tmp/in
echo "EMBER-NET-TCP in=$(sha256sum /tmp/in | cut -d' ' -f1) size=$(wc -c < /tmp/in)"
dd if=/dev/urandom of=/tmp/out bs=1024 count=256 2>/dev/null
echo "EMBER-NET-TCP out=$(sha256sum /tmp/out | cut -d' ' -f1)"
nc 10.0.2.2 5001 < /tmp/out
echo EMBER-NET-TCP sent
reboot -f
"#;

/// A file both ways over TCP between the host and guest userspace (busybox `ip` configures
/// the NIC, `nc` moves the data), with equal checksums. 256 KiB each way: the guest kernel's
/// TCP stack is emulated on software-nested hosts.
#[test]
#[ignore = "on software-nested hosts the guest's connection back to the host never came (the test hung in accept, seen once in a fresh root); not diagnosed yet"]
fn test_linux_tcp_file_both_ways() {
    use std::io::{Read, Write};
    let Some(kernel) = linux_image("vmlinux") else {
        return;
    };
    let Some(mut ns) = NetNs::new("tcp") else {
        return;
    };
    ns.add_tap("tap0", Some("10.0.2.2/24"));
    let initrd = common::scratch_dir().join(format!("tcp-initramfs-{}.cpio", std::process::id()));
    std::fs::write(&initrd, busybox_initramfs(TCP_INIT)).expect("write initramfs");
    let listener = ns.enter(|| std::net::TcpListener::bind("10.0.2.2:5001").expect("listen"));
    let args = VmArgs::kernel(&kernel)
        .arg("--initrd", initrd.display())
        .arg("--memory", 256)
        .arg("--cmdline", "console=ttyS0 reboot=k panic=1")
        .arg("--net", "tap=tap0,mac=02:00:00:00:00:01")
        .in_netns(ns.name());
    let mut vm = TestVm::start(args);
    vm.wait_for_line("EMBER-NET-TCP listening", LINUX_TIMEOUT);

    let data: Vec<u8> = (0..TCP_BYTES as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut conn = loop {
        match ns.enter(|| std::net::TcpStream::connect("10.0.2.15:5000")) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("cannot connect to the guest: {e}"),
        }
    };
    conn.write_all(&data).expect("send to guest");
    drop(conn);
    let line = vm.wait_for_line("EMBER-NET-TCP in=", LINUX_TIMEOUT);
    assert_eq!(
        line,
        format!("EMBER-NET-TCP in={} size={}", sha256_of(&data), data.len())
    );

    let out = vm.wait_for_line("EMBER-NET-TCP out=", LINUX_TIMEOUT);
    // Bounded: a guest that never connects back must fail the test, not hang it.
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let deadline = Instant::now() + LINUX_TIMEOUT;
    let (mut back, _) = loop {
        match listener.accept() {
            Ok(conn) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("the guest never connected back ({e}):\n{}", vm.log()),
        }
    };
    back.set_nonblocking(false).expect("blocking stream");
    let mut received = vec![0u8; TCP_BYTES];
    back.read_exact(&mut received).expect("receive from guest");
    drop(back);
    assert_eq!(out, format!("EMBER-NET-TCP out={}", sha256_of(&received)));
    assert_eq!(vm.exit_code(LINUX_TIMEOUT), 0, "{}", vm.log());
    let _ = std::fs::remove_file(&initrd);
}

/// The TCP test's initramfs (built here, booted only on real KVM) is a valid newc archive.
#[test]
fn test_tcp_initramfs_is_a_valid_cpio_archive() {
    if !std::path::Path::new("/bin/busybox").exists() {
        common::skip_unless_required("/bin/busybox missing (Debian package busybox-static)");
        return;
    }
    let archive = busybox_initramfs(TCP_INIT);
    let mut child = common::spawn(
        std::process::Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped()),
    );
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &archive).expect("feed");
    let out = child.wait_with_output().expect("cpio");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains(" init"), "{listing}");
    assert!(listing.contains("bin/busybox"), "{listing}");
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("crw") && l.contains("dev/console")),
        "{listing}"
    );
}
