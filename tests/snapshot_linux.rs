//! Snapshot and restore of the reference Linux kernel: booted once (idle initramfs, a static
//! address on virtio-net, in a network namespace the test creates) until it answers pings,
//! paused, saved, and restored by `PUT /snapshot/load` in a fresh Ember, where it answers pings
//! again without booting (its boot log is not printed again). The time from the load request to
//! the first ping reply is printed (a measurement, not a pass condition). The boot takes a
//! minute or more on software-nested hosts. Needs root and the built images; skips otherwise
//! (fails under EMBER_REQUIRE_ALL).

mod common;

use std::time::{Duration, Instant};

use common::api::sock_path;
use common::netns::NetNs;
use common::snapshot::{Files, expect, save_and_stop};
use common::{LINUX_TIMEOUT, TestVm, VmArgs, linux_image};

const QUICK: Duration = Duration::from_secs(60);
const GUEST_IP: &str = "10.0.2.15";

fn pings(ns: &NetNs, wait_s: &str) -> bool {
    ns.exec(&["ping", "-c", "1", "-W", wait_s, GUEST_IP])
        .status
        .success()
}

#[test]
fn test_snapshot_linux_answers_pings_after_restore_in_a_new_process() {
    let (Some(kernel), Some(initrd)) = (linux_image("vmlinux"), linux_image("initramfs-idle.cpio"))
    else {
        return;
    };
    let Some(mut ns) = NetNs::new("snaplx") else {
        return;
    };
    common::require_program("ping");
    ns.add_tap("tap0", Some("10.0.2.2/24"));
    let files = Files::new("linux");
    let sock = sock_path("snap-linux");
    let mut vm = TestVm::start(
        VmArgs::kernel(&kernel)
            .arg("--initrd", initrd.display())
            .arg("--memory", 256)
            .arg(
                "--cmdline",
                format!(
                    "console=ttyS0 reboot=k panic=1 ip={GUEST_IP}::10.0.2.2:255.255.255.0::eth0:off"
                ),
            )
            .arg("--net", "tap=tap0,mac=02:00:00:00:00:01")
            .arg("--api-sock", sock.display())
            .in_netns(ns.name()),
    );
    common::api::wait_for_socket(&sock, QUICK);
    let deadline = Instant::now() + LINUX_TIMEOUT;
    while !pings(&ns, "3") {
        assert!(
            Instant::now() < deadline,
            "the guest never answered a ping\n--- console ---\n{}\n--- ember log ---\n{}",
            vm.console().join("\n"),
            vm.log()
        );
    }
    save_and_stop(&mut vm, &sock, &files);
    assert!(!pings(&ns, "1"), "something else answers for the guest");

    let sock = sock_path("snap-linux-restored");
    let restored = TestVm::start(
        VmArgs::default()
            .arg("--api-sock", sock.display())
            .in_netns(ns.name()),
    );
    common::api::wait_for_socket(&sock, QUICK);
    let load = Instant::now();
    expect(&sock, "PUT", "/snapshot/load", &files.load_body(true), 204);
    let loaded = load.elapsed();
    let deadline = Instant::now() + QUICK;
    while !pings(&ns, "1") {
        assert!(
            Instant::now() < deadline,
            "the restored guest never answered a ping\n--- console ---\n{}\n--- ember log ---\n{}",
            restored.console().join("\n"),
            restored.log()
        );
    }
    eprintln!(
        "reference Linux restored: load request -> 204 in {loaded:?}, -> first ping reply in {:?}",
        load.elapsed()
    );
    assert!(
        !restored
            .console()
            .iter()
            .any(|l| l.contains("Linux version")),
        "the restored guest booted again: {:?}",
        restored.console()
    );
    let info = expect(&sock, "GET", "/", "", 200);
    assert!(info.contains("Running"), "{info}");
}
