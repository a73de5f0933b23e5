//! The reference Linux kernel drives Ember's virtio-rng and virtio-vsock devices: both drivers
//! probe and set DRIVER_OK (the transport's "activated" lines), the kernel's hwrng core reads
//! entropy from the device (its counters at exit), and the VM powers off cleanly. One boot
//! (30-120 s on software-nested hosts); skipped when the images are not built.

mod common;

use common::{LINUX_TIMEOUT, TestVm, VmArgs, linux_image, scratch_dir};

#[test]
fn test_linux_probes_rng_and_vsock() {
    let (Some(kernel), Some(initrd)) = (linux_image("vmlinux"), linux_image("initramfs.cpio"))
    else {
        return;
    };
    let uds = scratch_dir().join("linux.vsock");
    std::fs::remove_file(&uds).ok();
    let args = VmArgs::kernel(&kernel)
        .arg("--initrd", initrd.display())
        .arg(
            "--cmdline",
            "console=ttyS0 reboot=k panic=1 ember.test=vsock-linux",
        )
        .arg("--log-level", "debug")
        .flag("--rng")
        .arg("--vsock", format!("cid=42,uds={}", uds.display()));
    let mut vm = TestVm::start(args);
    vm.wait_for_line("EMBER-INIT-OK", LINUX_TIMEOUT);
    assert_eq!(vm.exit_code(LINUX_TIMEOUT), 0, "{}", vm.log());
    let log = vm.log();
    for device in ["rng rng0", "vsock vsock0"] {
        assert!(
            log.contains(&format!("{device}: activated")),
            "the {device} driver did not set DRIVER_OK:\n{log}"
        );
    }
    let rng = log
        .lines()
        .find(|l| l.contains("rng rng0:") && l.contains(" ops,"))
        .unwrap_or_else(|| panic!("no rng counters at exit:\n{log}"));
    let ops: u64 = rng
        .split("rng rng0: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("ops");
    assert!(ops > 0, "the kernel never read entropy: {rng}");
    eprintln!("{rng}");
    assert!(!uds.exists(), "the vsock socket is removed at exit");
}
