//! Snapshot and restore with virtio devices in use: the `blk` guest's check spans a snapshot
//! (written before it, read back and compared after the restore, in a new process, on the
//! queue where it was), and the `net` guest continues on another TAP given by
//! `network_overrides` (frames in and out of the new TAP, none on the old one). The network
//! test needs root (network namespaces, TAPs) and skips with a message otherwise.

mod common;

use std::time::Duration;

use common::api::sock_path;
use common::netns::{
    MAC0, NetNs, PacketSocket, host_frame, is_test_frame, payload_starts, rx_line,
};
use common::snapshot::{Files, save_and_stop};
use common::{GUEST_TIMEOUT, TestVm, VmArgs, fnv1a64, run_ember, scratch_dir};

const QUICK: Duration = Duration::from_secs(60);
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// Runs the `blk` guest in span mode on `disk` (I/O engine `engine`) until it waits between its
/// write and its read-back, and saves it into `files`; returns its `BLK write fnv=` line.
fn save_blk_guest_mid_check(disk: &std::path::Path, files: &Files, engine: &str) -> String {
    let name = files.snap.file_stem().expect("name").to_string_lossy();
    let sock = sock_path(&format!("snap-{name}"));
    let mut vm = TestVm::start(
        VmArgs::device_guest("blk")
            .arg(
                "--disk",
                format!("path={},io_engine={engine}", disk.display()),
            )
            .arg("--cmdline", "blk=span")
            .arg("--api-sock", sock.display()),
    );
    common::api::wait_for_socket(&sock, QUICK);
    let write = vm.wait_for_line("BLK write fnv=", GUEST_TIMEOUT);
    vm.wait_for_line("BLK waiting", GUEST_TIMEOUT);
    save_and_stop(&mut vm, &sock, files);
    write
}

#[test]
fn test_snapshot_blk_check_spans_the_snapshot() {
    blk_check_spans_the_snapshot("async");
}

/// The same on the Sync engine (the saved state does not depend on the engine).
#[test]
fn test_snapshot_blk_check_spans_the_snapshot_on_the_sync_engine() {
    blk_check_spans_the_snapshot("sync");
}

fn blk_check_spans_the_snapshot(engine: &str) {
    let disk = scratch_dir().join(format!("snap-blk-{engine}.img"));
    let before: Vec<u8> = (0..1usize << 20)
        .map(|i| (i.wrapping_mul(7) + 3) as u8)
        .collect();
    std::fs::write(&disk, &before).expect("disk file");
    let files = Files::new(&format!("blk-span-{engine}"));
    let write = save_blk_guest_mid_check(&disk, &files, engine);
    // The write reached the file before the snapshot; the restored guest reads it back.
    let written = std::fs::read(&disk).expect("disk");
    assert_eq!(
        write,
        format!("BLK write fnv={:#x}", fnv1a64(&written[65536..131072]))
    );

    let mut restored = TestVm::start(VmArgs::restore(&files.spec(true)));
    restored.send(b"g");
    restored.wait_for_line("BLK readback ok", GUEST_TIMEOUT);
    restored.wait_for_line("BLK oob status=0x1", GUEST_TIMEOUT);
    restored.wait_for_line("EMBER-TEST blk done", GUEST_TIMEOUT);
    assert_eq!(restored.exit_code(GUEST_TIMEOUT), 0, "{}", restored.log());
    let after = std::fs::read(&disk).expect("disk after");
    assert_eq!(after[..65536], before[..65536], "nothing else was written");
    assert_eq!(
        after[131072..],
        before[131072..],
        "nothing else was written"
    );
    // The disk is reopened by path: without it the restore is one error line naming it.
    std::fs::remove_file(&disk).expect("remove the disk");
    let spec = files.spec(true);
    let (code, stderr) = run_ember(&["--restore", &spec], QUICK);
    assert_ne!(code, 0, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&disk.display().to_string()), "{stderr}");
}

#[test]
fn test_snapshot_net_guest_continues_on_the_override_tap() {
    let Some(mut ns) = NetNs::new("snap") else {
        return;
    };
    ns.add_tap("tap0", None);
    let files = Files::new("net-override");
    let sock = sock_path("snap-net");
    let mut vm = TestVm::start(
        VmArgs::device_guest("net")
            .arg("--cmdline", "net=basic")
            .arg("--net", "tap=tap0,mac=02:00:00:00:00:01")
            .arg("--api-sock", sock.display())
            .in_netns(ns.name()),
    );
    common::api::wait_for_socket(&sock, QUICK);
    vm.wait_for_line("TX split used=1", GUEST_TIMEOUT);
    vm.wait_for_line("RX nobuf ready", GUEST_TIMEOUT);
    save_and_stop(&mut vm, &sock, &files);

    ns.add_tap("tap1", None);
    let old = PacketSocket::open(&ns, "tap0");
    let new = PacketSocket::open(&ns, "tap1");
    let spec = format!("{},net=net0:tap1", files.spec(true));
    let mut restored = TestVm::start(VmArgs::restore(&spec).in_netns(ns.name()));
    ns.wait_tap_up("tap1", GUEST_TIMEOUT);
    let early = host_frame(MAC0, "EMBER-NET-RX-EARLY", 100);
    let second = host_frame(MAC0, "EMBER-NET-RX-SECOND", 1514);
    new.send(&early);
    new.send(&second);
    restored.send(b"go\n");
    restored.wait_for_line(&rx_line(&early), GUEST_TIMEOUT);
    restored.wait_for_line("RX posted ready", GUEST_TIMEOUT);
    restored.wait_for_line(&rx_line(&second), GUEST_TIMEOUT);
    restored.wait_for_line("TX malformed used=5", GUEST_TIMEOUT);
    let after = new
        .recv_matching(FRAME_WAIT, is_test_frame)
        .expect("the restored guest's TX frame on the override TAP");
    assert!(payload_starts(&after, "EMBER-NET-TX-AFTER"), "{after:02x?}");
    restored.wait_for_line("RX malformed ready", GUEST_TIMEOUT);
    let last = host_frame(MAC0, "EMBER-NET-RX-LAST", 64);
    new.send(&last);
    restored.wait_for_line(&rx_line(&last), GUEST_TIMEOUT);
    restored.wait_for_line("EMBER-TEST net done", GUEST_TIMEOUT);
    assert_eq!(restored.exit_code(GUEST_TIMEOUT), 0, "{}", restored.log());
    assert!(
        old.recv_matching(Duration::from_millis(100), is_test_frame)
            .is_none(),
        "a frame went out on the saved TAP instead of the override"
    );
}

#[test]
fn test_snapshot_clones_with_their_own_disk_copies_run_at_once() {
    let disk = scratch_dir().join("snap-clones.img");
    std::fs::write(&disk, vec![0x5au8; 1 << 20]).expect("disk file");
    let files = Files::new("blk-clones");
    save_blk_guest_mid_check(&disk, &files, "async");

    // Two clones on their own copies (disk=ID:PATH), one on the saved image.
    let copies: Vec<_> = (0..2)
        .map(|i| {
            let copy = scratch_dir().join(format!("snap-clone-{i}.img"));
            std::fs::copy(&disk, &copy).expect("copy the image");
            copy
        })
        .collect();
    let mut clones: Vec<TestVm> = copies
        .iter()
        .map(|copy| {
            let spec = format!("{},disk=disk0:{}", files.spec(true), copy.display());
            TestVm::start(VmArgs::restore(&spec))
        })
        .collect();
    clones.push(TestVm::start(VmArgs::restore(&files.spec(true))));
    // The clones wait for a serial byte: the one on the saved image holds its lock meanwhile,
    // so one more restore without a copy is refused, naming the conflict.
    let holder = clones.last().expect("a clone").pid();
    let deadline = std::time::Instant::now() + QUICK;
    while !has_open(holder, &disk) {
        assert!(
            std::time::Instant::now() < deadline,
            "the clone never opened the image"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, stderr) = run_ember(&["--restore", &files.spec(true)], QUICK);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("in use by another disk or process"),
        "{stderr}"
    );
    for clone in &mut clones {
        clone.send(b"g");
    }
    for clone in &mut clones {
        clone.wait_for_line("BLK readback ok", GUEST_TIMEOUT);
        clone.wait_for_line("EMBER-TEST blk done", GUEST_TIMEOUT);
        assert_eq!(clone.exit_code(GUEST_TIMEOUT), 0, "{}", clone.log());
    }
}

/// Whether process `pid` has `path` open.
fn has_open(pid: u32, path: &std::path::Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
        })
        .unwrap_or(false)
}
