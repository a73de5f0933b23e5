//! Snapshot and restore of the reference Linux kernel, one boot (a minute or more on
//! software-nested hosts): a static address on virtio-net in a network namespace the test
//! creates, and the initramfs's /bin/utest making system calls with signals, then fork+exec,
//! from guest userspace. As soon as the init has started utest, the guest is paused, saved,
//! and restored by `PUT /snapshot/load` in a fresh Ember: it answers pings without booting (its boot log is not printed again), utest finishes its checks in the
//! restored guest, and the guest powers off (exit 0). The time from the load request to the
//! first ping reply is printed (a measurement, not a pass condition). Needs root and the built
//! images; skips otherwise (fails under EMBER_REQUIRE_ALL).

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
fn test_snapshot_linux_answers_pings_and_userspace_finishes_after_restore() {
    let (Some(kernel), Some(initrd)) = (linux_image("vmlinux"), linux_image("initramfs.cpio"))
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
                    "console=ttyS0 reboot=k panic=1 ip={GUEST_IP}::10.0.2.2:255.255.255.0::eth0:off \
                     ember.utest=syscalls:8000,fork:10"
                ),
            )
            .arg("--net", "tap=tap0,mac=02:00:00:00:00:01")
            .arg("--api-sock", sock.display())
            .in_netns(ns.name()),
    );
    common::api::wait_for_socket(&sock, QUICK);
    // The last line of the init's report: utest starts right after it, and the kernel has
    // configured eth0 before the init ran. Saved at once, so utest runs across the restore.
    vm.wait_for_line("EMBER-INIT nics=", LINUX_TIMEOUT);
    save_and_stop(&mut vm, &sock, &files);
    assert!(
        !vm.console()
            .iter()
            .any(|l| l.starts_with("EMBER-INIT utest=")),
        "utest finished before the snapshot: the test proves nothing about userspace\n{}",
        vm.console().join("\n")
    );
    assert!(!pings(&ns, "1"), "something else answers for the guest");

    let sock = sock_path("snap-linux-restored");
    let mut restored = TestVm::start(
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
    restored.wait_for_line("EMBER-INIT utest=", LINUX_TIMEOUT);
    let console = restored.console();
    assert!(
        console.iter().any(|l| l == "EMBER-INIT utest=ok"),
        "utest failed in the restored guest\n{}\n--- ember log ---\n{}",
        console.join("\n"),
        restored.log()
    );
    assert_eq!(restored.exit_code(LINUX_TIMEOUT), 0, "{}", restored.log());
}
