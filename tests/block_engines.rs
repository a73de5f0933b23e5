//! The block I/O engines end to end with the `blk` test guest: the same check and performance
//! runs on the Sync and the Async (io_uring) engine, and on a host without io_uring (simulated
//! by a seccomp filter that answers `io_uring_setup` with ENOSYS, as a kernel built without
//! it does) Async falls back to Sync with one log line and the guest sees no difference.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use common::{GUEST_TIMEOUT, TestVm, VmArgs, ember_bin, scratch_dir, test_guest};

fn disk(name: &str) -> std::path::PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, vec![0u8; 8 << 20]).expect("disk file");
    path
}

/// Whether this host lets a process set up an io_uring (else Async falls back to Sync).
fn io_uring_available() -> bool {
    io_uring::IoUring::new(4).is_ok()
}

#[test]
fn test_blk_guest_check_and_perf_on_both_engines() {
    let uring = io_uring_available();
    if !uring {
        eprintln!(
            "SKIP the io_uring half of test_blk_guest_check_and_perf_on_both_engines: no io_uring here (Async runs as Sync, checked below)"
        );
    }
    for engine in ["sync", "async"] {
        for mode in ["blk=check", "blk=perf mib=2 ops=512 qd=32"] {
            let path = disk(&format!("engines-{engine}.img"));
            let mut vm = TestVm::start(
                VmArgs::device_guest("blk")
                    .arg(
                        "--disk",
                        format!("path={},io_engine={engine}", path.display()),
                    )
                    .arg("--cmdline", mode),
            );
            vm.wait_for_line("EMBER-TEST blk done", GUEST_TIMEOUT);
            assert_eq!(
                vm.exit_code(GUEST_TIMEOUT),
                0,
                "{engine} {mode}: {}",
                vm.log()
            );
            let fell_back = vm.log().contains("io_uring is not available");
            assert_eq!(fell_back, engine == "async" && !uring, "{}", vm.log());
        }
    }
}

/// Four queues of 512 offered (VIRTIO_BLK_F_MQ): a driver that does not negotiate MQ, as the
/// `blk` guest, still has queue 0 (it sets up 256 of its entries) and nothing else changes.
#[test]
fn test_blk_guest_on_a_four_queue_disk_uses_queue_zero() {
    let path = disk("engines-mq.img");
    let mut vm = TestVm::start(
        VmArgs::device_guest("blk")
            .arg(
                "--disk",
                format!("path={},num_queues=4,queue_size=512", path.display()),
            )
            .arg("--cmdline", "blk=check"),
    );
    vm.wait_for_line("BLK readback ok", GUEST_TIMEOUT);
    vm.wait_for_line("EMBER-TEST blk done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
}

/// Four queues used (the `blk` guest negotiates VIRTIO_BLK_F_MQ with `mq=4` and spreads its
/// requests over them) on both engines.
#[test]
fn test_blk_guest_spreads_perf_over_four_queues_on_both_engines() {
    for engine in ["sync", "async"] {
        let path = disk(&format!("engines-mq4-{engine}.img"));
        let mut vm = TestVm::start(
            VmArgs::device_guest("blk")
                .arg(
                    "--disk",
                    format!("path={},io_engine={engine},num_queues=4", path.display()),
                )
                .arg("--cmdline", "blk=perf mib=2 ops=512 mq=4"),
        );
        vm.wait_for_line("BLK queues=4", GUEST_TIMEOUT);
        vm.wait_for_line("EMBER-TEST blk done", GUEST_TIMEOUT);
        assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{engine}: {}", vm.log());
    }
}

/// `direct=on` (O_DIRECT for aligned transfers) on both engines: the guest's check and perf
/// runs pass. (Where a file system has no O_DIRECT, starting is one error line; no such file
/// system is at hand here: tmpfs has O_DIRECT since Linux 6.6.)
#[test]
fn test_blk_guest_with_direct_io_on_both_engines() {
    for engine in ["sync", "async"] {
        let path = disk(&format!("engines-direct-{engine}.img"));
        for mode in ["blk=check", "blk=perf mib=2 ops=256"] {
            let mut vm = TestVm::start(
                VmArgs::device_guest("blk")
                    .arg(
                        "--disk",
                        format!("path={},io_engine={engine},direct=on", path.display()),
                    )
                    .arg("--cmdline", mode),
            );
            vm.wait_for_line("EMBER-TEST blk done", GUEST_TIMEOUT);
            assert_eq!(
                vm.exit_code(GUEST_TIMEOUT),
                0,
                "{engine} {mode}: {}",
                vm.log()
            );
        }
    }
}

#[test]
fn test_async_engine_falls_back_to_sync_without_io_uring() {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let filter = SeccompFilter::new(
        [(libc::SYS_io_uring_setup, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .expect("filter");
    let program = BpfProgram::try_from(filter).expect("bpf");
    let path = disk("engines-fallback.img");
    let mut cmd = Command::new(ember_bin());
    cmd.arg("--kernel")
        .arg(test_guest("blk"))
        .args(["--virtio-discovery", "cmdline", "--serial", "stdio"])
        .arg("--disk")
        .arg(format!("path={},io_engine=async", path.display()));
    // SAFETY: between fork and exec the child only installs the prepared filter (prctl and
    // seccomp system calls, no allocation).
    unsafe {
        cmd.pre_exec(move || {
            seccompiler::apply_filter(&program).map_err(|e| std::io::Error::other(e.to_string()))
        });
    }
    let out = cmd.output().expect("run ember");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("BLK readback ok"), "{stdout}");
    let fallback: Vec<_> = stderr.lines().filter(|l| l.contains("io_uring")).collect();
    assert_eq!(fallback.len(), 1, "{stderr}");
    assert!(
        fallback[0].contains("io_uring is not available") && fallback[0].contains("Sync engine"),
        "{stderr}"
    );
}
