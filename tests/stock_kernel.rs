//! Debian's stock cloud kernel (a bzImage built elsewhere, fetched by
//! scripts/fetch-distro-kernel) under Ember with the reference busybox
//! initramfs: ACPI tables, 2 vCPUs from the MADT, userspace (init's report) and an ACPI power-off.
//!
//! Ignored in the regular suite: on this project's software-nested hosts this kernel's boot
//! crawls (its TSC calibration against the PIT fails and the guest clock stands still for
//! minutes): alone it was still before SMP bring-up after 10 minutes (guest clock at 0.64 s), and
//! the whole test did not end within 30 minutes beside other boots, more than CI's budget allows.
//! Run it with `cargo test --test stock_kernel -- --ignored` (after scripts/fetch-distro-kernel);
//! the policy's switches keep the kernel out of SIMD code and crypto self-tests, which the
//! emulator cannot run.

mod common;

use std::time::Duration;

use common::{TestVm, VmArgs, linux_image, repo_root};

/// The stock kernel does several times the reference kernel's work at boot.
const STOCK_TIMEOUT: Duration = Duration::from_secs(3600);

#[test]
#[ignore = "takes well over 30 minutes on software-nested hosts (guest clock crawls); run with --ignored"]
fn test_stock_debian_kernel_boots_to_userspace_and_powers_off() {
    let kernel = repo_root().join("guest-images/out/debian-cloud/vmlinuz");
    if !kernel.exists() {
        common::skip_unless_required(&format!(
            "{} missing (run scripts/fetch-distro-kernel)",
            kernel.display()
        ));
        return;
    }
    let Some(initrd) = linux_image("initramfs.cpio") else {
        return;
    };
    let mut vm = TestVm::start(
        VmArgs::kernel(&kernel)
            .arg("--initrd", initrd.display())
            .arg("--vcpus", 2)
            .arg("--memory", 512)
            .arg(
                "--cmdline",
                "console=ttyS0 reboot=k panic=1 ember.test=stock",
            ),
    );
    vm.wait_for_line("ACPI: RSDP 0x00000000000E0000", STOCK_TIMEOUT);
    vm.wait_for_line(
        "ACPI: Using ACPI (MADT) for SMP configuration",
        STOCK_TIMEOUT,
    );
    vm.wait_for_line("smp: Brought up 1 node, 2 CPUs", STOCK_TIMEOUT);
    vm.wait_for_line("Run /init as init process", STOCK_TIMEOUT);
    vm.wait_for_line("EMBER-INIT-OK", STOCK_TIMEOUT);
    vm.wait_for_line("EMBER-INIT cpus=2", STOCK_TIMEOUT);
    let cmdline = vm.wait_for_line("EMBER-INIT cmdline=", STOCK_TIMEOUT);
    assert!(cmdline.contains("ember.test=stock"), "{cmdline}");
    assert_eq!(vm.exit_code(STOCK_TIMEOUT), 0, "{}", vm.log());
    assert!(vm.log().contains("Guest powered off"), "{}", vm.log());
}
