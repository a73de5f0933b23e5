//! virtio-rng end to end: the `rng` test guest drives the device from ring 3 on real KVM and
//! checks the bytes it gets are not constant; Ember's counters at exit say what it served.

mod common;

use common::{GUEST_TIMEOUT, TestVm, VmArgs};

#[test]
fn test_rng_guest_reads_distinct_entropy_and_counters_show_it() {
    let mut vm = TestVm::start(
        VmArgs::device_guest("rng")
            .flag("--rng")
            .arg("--log-level", "debug"),
    );
    let a = vm.wait_for_line("RNG got=", GUEST_TIMEOUT);
    let b = vm.wait_for_line("RNG got=", GUEST_TIMEOUT);
    vm.wait_for_line("RNG distinct ok", GUEST_TIMEOUT);
    vm.wait_for_line("EMBER-TEST rng done", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0, "{}", vm.log());
    assert_ne!(a, b, "two requests gave the same bytes");
    assert!(
        vm.log()
            .contains("2 ops, 128 bytes read, 0 bytes written, 0 errors, 0 drops"),
        "{}",
        vm.log()
    );
}

#[test]
fn test_rng_guest_without_the_device_fails_cleanly() {
    let mut vm = TestVm::start(VmArgs::device_guest("rng"));
    vm.wait_for_line("EMBER-TEST rng fail no-virtio-mmio-device", GUEST_TIMEOUT);
    assert_eq!(vm.exit_code(GUEST_TIMEOUT), 0);
}
