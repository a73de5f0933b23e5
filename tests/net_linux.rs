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

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::dhcp::DhcpServer;
use common::netns::{NetNs, PacketSocket};
use common::{TestVm, VmArgs, repo_root};

/// Generous: ~90 s to init for one guest on a software-nested host, double when two boot at once.
const LINUX_TIMEOUT: Duration = Duration::from_secs(600);
const MAC0: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const MAC1: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn image(name: &str) -> Option<PathBuf> {
    let path = repo_root().join("guest-images/out").join(name);
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("EMBER_REQUIRE_LINUX").is_some() {
        panic!("{} missing: run scripts/build-guest-images", path.display());
    }
    eprintln!(
        "SKIP: {} not built (run scripts/build-guest-images)",
        path.display()
    );
    None
}

#[test]
fn test_linux_dhcp_then_ping_with_two_nics() {
    let (Some(kernel), Some(initrd)) = (image("vmlinux"), image("initramfs-idle.cpio")) else {
        return;
    };
    let Some(mut ns) = NetNs::new("linux") else {
        return;
    };
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
    // emulated here: ping until three replies came back (or a minute passed).
    let ping = ns.exec(&["ping", "-c", "3", "-i", "0.5", "-w", "60", "10.0.2.15"]);
    let out = String::from_utf8_lossy(&ping.stdout);
    assert!(
        out.contains(" 3 received"),
        "ping failed:\n{out}{}\n--- console ---\n{}\n--- ember log ---\n{}",
        String::from_utf8_lossy(&ping.stderr),
        vm.console().join("\n"),
        vm.log()
    );

    vm.signal(libc::SIGTERM);
    assert_eq!(vm.exit_code(Duration::from_secs(30)), 143, "{}", vm.log());
}
