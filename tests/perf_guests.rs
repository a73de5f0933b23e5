//! The guests behind `scripts/bench`, checked for correctness (never timed here): `blk` drives a
//! virtio-blk disk itself (a pattern written, read back and compared, checksums matched with the
//! host file, an out-of-range read refused; also under QEMU microvm when installed), its perf
//! mode completes, and `exits` runs its loops.

mod common;

use std::process::Command;

use common::{GUEST_TIMEOUT, TestVm, VmArgs, fnv1a64, repo_root, scratch_dir, test_guest};

/// A disk file of `bytes` with a known pattern; returns its path and contents.
fn pattern_disk(name: &str, bytes: usize) -> (std::path::PathBuf, Vec<u8>) {
    let path = scratch_dir().join(name);
    let contents: Vec<u8> = (0..bytes).map(|i| (i.wrapping_mul(7) + 3) as u8).collect();
    std::fs::write(&path, &contents).expect("disk file");
    (path, contents)
}

/// The value of `key=<hex>` in the console line starting with `prefix`.
fn hex_field(lines: &[String], prefix: &str) -> u64 {
    let line = lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {lines:?}"));
    let value = line[prefix.len()..].trim_start_matches("0x");
    u64::from_str_radix(value, 16).expect("hex value")
}

/// Checks the `blk` guest's check-mode lines against the disk file after the run.
fn check_blk_lines(lines: &[String], before: &[u8], path: &std::path::Path) {
    let after = std::fs::read(path).expect("disk after the run");
    assert_eq!(
        hex_field(lines, "BLK read fnv="),
        fnv1a64(&before[..65536]),
        "the guest read what the host file held"
    );
    assert_eq!(
        hex_field(lines, "BLK write fnv="),
        fnv1a64(&after[65536..131072]),
        "the guest's pattern reached the file"
    );
    assert!(lines.iter().any(|l| l == "BLK readback ok"), "{lines:?}");
    assert_eq!(hex_field(lines, "BLK oob status="), 1, "VIRTIO_BLK_S_IOERR");
    assert_eq!(after[..65536], before[..65536], "nothing else was written");
    assert_eq!(
        after[131072..],
        before[131072..],
        "nothing else was written"
    );
}

/// Runs the `blk` guest on a fresh 1 MiB pattern disk `name` with `cmdline` to `done` and exit
/// 0, checks its check-mode lines, and returns its console and the disk's first contents.
fn blk_check_run(name: &str, cmdline: &str) -> (Vec<String>, Vec<u8>) {
    let (path, before) = pattern_disk(name, 1 << 20);
    let mut vm = TestVm::start(
        VmArgs::device_guest("blk")
            .arg("--disk", format!("path={}", path.display()))
            .arg("--cmdline", cmdline),
    );
    vm.wait_for_line("EMBER-TEST blk done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    let lines = vm.console();
    assert!(lines.contains(&"BLK sectors=2048".to_string()));
    check_blk_lines(&lines, &before, &path);
    (lines, before)
}

#[test]
fn test_blk_guest_write_read_back_matches_host_file() {
    blk_check_run("blk-check.img", "blk=check");
}

/// A request posted before DRIVER_OK and never notified completes: the device looks at its
/// queue when it starts, on its own thread. (Processing it on the vCPU thread that wrote
/// DRIVER_OK ran `preadv` there, which that thread's seccomp filter forbids: status 159.)
#[test]
fn test_blk_guest_request_posted_before_driver_ok_completes() {
    let (lines, before) = blk_check_run("blk-early.img", "blk=early");
    assert_eq!(
        hex_field(&lines, "BLK early read fnv="),
        fnv1a64(&before[..65536]),
        "the early request read what the host file held"
    );
}

#[test]
fn test_blk_guest_perf_mode_completes_every_phase() {
    let (path, _) = pattern_disk("blk-perf.img", 2 << 20);
    let mut vm = TestVm::start(
        VmArgs::device_guest("blk")
            .arg("--disk", format!("path={}", path.display()))
            .arg("--cmdline", "blk=perf mib=1 bs=16384 ops=64 qd=8"),
    );
    vm.wait_for_line("EMBER-TEST blk done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    let perf = vm.lines_with_prefix("PERF ");
    let phases: Vec<&str> = perf
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        phases,
        ["seqwrite", "seqread", "randread", "randwrite"],
        "{perf:?}"
    );
    assert!(perf[0].contains(" bs=16384 ops=64 "), "{perf:?}");
    assert!(perf[2].contains(" bs=4096 ops=64 "), "{perf:?}");
}

#[test]
fn test_blk_guest_under_qemu_microvm_matches_host_file() {
    if !common::qemu_available() {
        return;
    }
    let (path, before) = pattern_disk("blk-qemu.img", 1 << 20);
    let kernel = test_guest("blk");
    let out = Command::new(repo_root().join("guest-images/test-guests/run-qemu.sh"))
        .arg("blk")
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .arg("-drive")
        .arg(format!("if=none,file={},format=raw,id=d0", path.display()))
        .args(["-device", "virtio-blk-device,drive=d0"])
        .env("OUT", kernel.parent().expect("guest dir"))
        .env("TIMEOUT", "60")
        .output()
        .expect("run run-qemu.sh");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    assert!(
        lines.iter().any(|l| l == "EMBER-TEST blk done"),
        "{lines:?}"
    );
    check_blk_lines(&lines, &before, &path);
}

#[test]
fn test_blk_guest_without_disk_fails_cleanly() {
    let mut vm = TestVm::start(VmArgs::device_guest("blk"));
    vm.wait_for_line("EMBER-TEST blk fail no-virtio-mmio-device", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0);
}

#[test]
fn test_exits_guest_reports_each_loop() {
    let (path, _) = pattern_disk("exits.img", 4096);
    let mut vm = TestVm::start(
        VmArgs::device_guest("exits")
            .arg("--disk", format!("path={}", path.display()))
            .arg("--cmdline", "mmio=200 pio=64"),
    );
    vm.wait_for_line("EMBER-TEST exits done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    let lines = vm.lines_with_prefix("EXITS ");
    assert!(
        lines[0].starts_with("EXITS mmio addr=0xd0000000 n=200 tsc="),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("EXITS pio port=0x3fd n=64 tsc="),
        "{lines:?}"
    );
    assert!(lines[2].starts_with("EXITS r0loop n=64 tsc="), "{lines:?}");
}
