//! ACPI: a guest power-off (S5 through the FADT's sleep control register) ends `ember` with exit
//! 0; `--virtio-discovery` decides where virtio-mmio devices are announced; the reference kernel
//! finds its disk through the DSDT alone; Debian's stock cloud kernel finds the tables and brings
//! up the CPUs the MADT lists. The Linux boots are kernel-only checks (software-nested hosts cannot
//! run guest userspace) and are skipped with a message when their kernel is absent, unless
//! EMBER_REQUIRE_LINUX is set.

mod common;

use std::time::Duration;

use common::{GUEST_TIMEOUT, LINUX_TIMEOUT, TestVm, VmArgs, linux_image, scratch_dir};

fn poweroff(args: VmArgs) -> TestVm {
    let mut vm = TestVm::start(args);
    vm.wait_for_line("PM1A_CONTROL 0x604", GUEST_TIMEOUT);
    vm.wait_for_line("EMBER-TEST poweroff done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    assert!(
        vm.log().contains("Guest powered off (ACPI S5)"),
        "{}",
        vm.log()
    );
    assert!(!vm.log().contains("reset"), "{}", vm.log());
    assert!(vm.lines_with_prefix("EMBER-TEST poweroff fail").is_empty());
    vm
}

#[test]
fn test_poweroff_guest_s5_write_exits_zero_pvh() {
    let vm = poweroff(VmArgs::guest("poweroff"));
    assert!(vm.console()[0].contains("protocol=pvh"));
    assert!(vm.console().iter().any(|l| l == "RSDP 0xe0000"));
}

#[test]
fn test_poweroff_guest_s5_write_exits_zero_linux64() {
    let vm = poweroff(VmArgs::guest("poweroff").arg("--boot-protocol", "linux"));
    assert!(vm.console()[0].contains("protocol=linux64"));
    assert!(vm.console().iter().any(|l| l == "RSDP 0xe0000"));
}

/// The bootinfo guest's command line with one disk, `--virtio-discovery mode` and `cmdline`.
fn cmdline_with_disk(mode: &str, cmdline: &str) -> String {
    let disk = scratch_dir().join(format!("discovery-{mode}.img"));
    std::fs::write(&disk, vec![0u8; 4096]).expect("write disk image");
    let mut vm = TestVm::start(
        VmArgs::guest("bootinfo")
            .arg("--disk", format!("path={}", disk.display()))
            .arg("--virtio-discovery", mode)
            .arg("--cmdline", cmdline),
    );
    vm.wait_for_line("EMBER-TEST bootinfo done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    vm.lines_with_prefix("CMDLINE ")[0].clone()
}

/// `auto` announces each device once: in the DSDT (so not on the command line), or on the
/// command line when it turns ACPI off. (The DSDT side: `arch::acpi` and `config::discovery`
/// unit tests, and the reference kernel below.)
#[test]
fn test_virtio_discovery_modes_choose_cmdline_announcement() {
    const ANNOUNCE: &str = "virtio_mmio.device=4K@0xd0000000:5";
    const PLAIN: &str = "console=ttyS0";
    const NO_ACPI: &str = "console=ttyS0 acpi=off";
    assert!(!cmdline_with_disk("auto", PLAIN).contains("virtio_mmio"));
    assert!(cmdline_with_disk("auto", NO_ACPI).contains(ANNOUNCE));
    assert!(cmdline_with_disk("cmdline", PLAIN).contains(ANNOUNCE));
    assert!(cmdline_with_disk("both", PLAIN).contains(ANNOUNCE));
    assert!(!cmdline_with_disk("acpi", PLAIN).contains("virtio_mmio"));
}

/// The reference kernel with ACPI and no `virtio_mmio.device=` on its command line: the DSDT is
/// the only way it can find its disk. Two vCPUs from the MADT, ext4 root from the disk.
#[test]
fn test_linux_finds_disk_through_dsdt_and_cpus_through_madt() {
    let (Some(kernel), Some(rootfs)) = (linux_image("vmlinux"), linux_image("rootfs.ext4")) else {
        return;
    };
    let disk = scratch_dir().join("acpi-root.ext4");
    std::fs::copy(&rootfs, &disk).expect("copy rootfs");
    let cmdline = "console=ttyS0 reboot=k panic=1 init=/sbin/idle";
    let mut vm = TestVm::start(
        VmArgs::kernel(&kernel)
            .arg("--vcpus", 2)
            .arg("--disk", format!("path={},root=on", disk.display()))
            .arg("--virtio-discovery", "acpi")
            .arg("--cmdline", cmdline),
    );
    let line = vm.wait_for_line("Command line:", LINUX_TIMEOUT);
    assert!(!line.contains("virtio_mmio"), "{line}");
    vm.wait_for_line("ACPI: RSDP 0x00000000000E0000", LINUX_TIMEOUT);
    vm.wait_for_line("ACPI: DSDT", LINUX_TIMEOUT);
    vm.wait_for_line("smp: Brought up 1 node, 2 CPUs", LINUX_TIMEOUT);
    vm.wait_for_line("virtio_blk virtio0: [vda]", LINUX_TIMEOUT);
    vm.wait_for_line("EXT4-fs (vda): mounted filesystem", LINUX_TIMEOUT);
    vm.wait_for_line("Run /sbin/idle as init process", LINUX_TIMEOUT);
    vm.signal(15);
    assert_eq!(vm.exit_code(Duration::from_secs(30)), 143, "{}", vm.log());
}
