//! The reference Linux kernel booted by Ember. On software-nested hosts its kernel code is
//! emulated, so each boot takes minutes: the checks are grouped into few boots and read the
//! guest kernel's own log. Set EMBER_REQUIRE_LINUX=1 (scripts/test does) to fail instead of
//! skipping when the images have not been built.

mod common;

use std::time::Duration;

use common::{LINUX_TIMEOUT, TestVm, VmArgs, linux_image};
use ember::host::HostKind;

/// One boot, many checks: command line, memory map and size, SMP bring-up, hand-over to init;
/// where guest userspace can run, the init's own report and a clean exit 0.
#[test]
fn test_linux_vmlinux_boots_two_cpus_to_init() {
    let (Some(kernel), Some(initrd)) = (linux_image("vmlinux"), linux_image("initramfs.cpio"))
    else {
        return;
    };
    let cmdline = "console=ttyS0 reboot=k panic=1 ember.test=linux-boot";
    let args = VmArgs::kernel(&kernel)
        .arg("--initrd", initrd.display())
        .arg("--vcpus", 2)
        .arg("--memory", 256)
        .arg("--cmdline", cmdline);
    let mut vm = TestVm::start(args);

    let line = vm.wait_for_line("Command line:", LINUX_TIMEOUT);
    assert!(line.contains(cmdline), "{line}");
    vm.wait_for_line(
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
        LINUX_TIMEOUT,
    );
    vm.wait_for_line("smp: Brought up 1 node, 2 CPUs", LINUX_TIMEOUT);
    vm.wait_for_line("Run /init as init process", LINUX_TIMEOUT);

    if HostKind::detect().is_software_nested() {
        // Guest userspace cannot make system calls here (see docs/usage.md): init dies, the
        // kernel panics and, with panic=1 reboot=k, resets through the i8042.
        eprintln!(
            "software-nested KVM: guest userspace cannot run, checks end at the init hand-over"
        );
        assert_eq!(vm.exit_code(LINUX_TIMEOUT), 0, "{}", vm.log());
    } else {
        vm.wait_for_line("EMBER-INIT-OK", LINUX_TIMEOUT);
        vm.wait_for_line("EMBER-INIT cpus=2", LINUX_TIMEOUT);
        let cmd = vm.wait_for_line("EMBER-INIT cmdline=", LINUX_TIMEOUT);
        assert!(cmd.contains("ember.test=linux-boot"), "{cmd}");
        assert_eq!(vm.exit_code(LINUX_TIMEOUT), 0, "{}", vm.log());
    }
    let console = vm.console().join("\n");
    assert!(!console.contains("Kernel panic") || HostKind::detect().is_software_nested());
}

/// The bzImage path (64-bit boot protocol, the kernel decompresses itself): booted far enough
/// for the kernel to print its command line, then stopped with SIGTERM (exit 143).
#[test]
fn test_linux_bzimage_boots_and_stops_on_sigterm() {
    let Some(kernel) = linux_image("bzImage") else {
        return;
    };
    let args = VmArgs::kernel(&kernel).arg(
        "--cmdline",
        "console=ttyS0 reboot=k panic=1 ember.test=bzimage",
    );
    let mut vm = TestVm::start(args);
    let line = vm.wait_for_line("Command line:", LINUX_TIMEOUT);
    assert!(line.contains("ember.test=bzimage"), "{line}");
    vm.wait_for_line(
        "BIOS-e820: [mem 0x0000000000100000-0x0000000007ffffff] usable",
        LINUX_TIMEOUT,
    );
    vm.signal(15);
    assert_eq!(vm.exit_code(Duration::from_secs(30)), 143, "{}", vm.log());
}
