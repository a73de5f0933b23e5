//! A VM prepared ahead (`vstate::prepared`) against real KVM: it comes back from its thread
//! with the irqchip and PIT made, takes real memory slots (slot 0 again, after its placeholder
//! was deleted), and has the system-call MSRs trapped exactly on software-nested hosts.

use ember::host::HostKind;
use ember::vstate::memory::create_guest_memory;
use ember::vstate::prepared::Preparing;

#[test]
fn test_prepared_vm_is_ready_for_memory_and_state() {
    let mut preparing = Preparing::start();
    assert!(!preparing.is_taken());
    let prepared = preparing
        .take()
        .expect("a prepared VM on a host with /dev/kvm");
    assert!(preparing.is_taken() && preparing.take().is_none());
    assert_eq!(
        prepared.msr_filter,
        HostKind::detect().is_software_nested(),
        "the MSR filter is set exactly where the SYSCALL repair needs it"
    );
    let mem = create_guest_memory(64 << 20).expect("guest memory");
    prepared
        .vm
        .register_memory(&mem)
        .expect("slot 0 is free again after the placeholder");
    // The in-kernel irqchip and PIT exist: their state can be read.
    ember::vstate::vm_state::VmState::save(prepared.vm.fd()).expect("PICs, I/O APIC, PIT, clock");
}
