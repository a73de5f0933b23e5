//! VM state against real KVM: the in-kernel PICs, I/O APIC, PIT and KVM clock of one VM saved,
//! serialized, restored into a brand-new VM and read back: identical (the clock, which runs on,
//! no earlier than saved; the PIT's load times, which are host times, aside).

use ember::vstate::vm::{KvmHost, Vm};
use ember::vstate::vm_state::VmState;

/// A PIT channel's programming: count, latched count, status, mode, read/write mode, gate.
type PitChannel = (u32, u16, u8, u8, u8, u8);

/// What must survive a round trip: the interrupt controllers as saved, and the PIT's
/// programming (its channels' load times are host times, moved to the restoring host's clock).
fn comparable(state: &VmState) -> (String, Vec<PitChannel>) {
    let chips = serde_json::to_string(&(&state.pic_master, &state.pic_slave, &state.ioapic))
        .expect("serialize");
    let pit = state
        .pit
        .channels
        .iter()
        .map(|c| {
            (
                c.count,
                c.latched_count,
                c.status,
                c.mode,
                c.rw_mode,
                c.gate,
            )
        })
        .collect();
    (chips, pit)
}

#[test]
fn test_vm_state_round_trips_into_a_new_vm() {
    let host = KvmHost::open().expect("/dev/kvm");
    let first = Vm::new(&host).expect("VM");
    // Something a fresh VM does not have: PIT channel 0 programmed, a PIC mask, an I/O APIC
    // redirection entry.
    let mut pit = first.fd().get_pit2().expect("KVM_GET_PIT2");
    pit.channels[0].count = 0x1234;
    pit.channels[0].mode = 2;
    first.fd().set_pit2(&pit).expect("KVM_SET_PIT2");
    let mut saved = VmState::save(first.fd()).expect("save");
    // SAFETY: chip_id says which member of the union KVM filled in; the writes stay inside it.
    unsafe {
        saved.pic_master.chip.pic.imr = 0xfa;
        saved.ioapic.chip.ioapic.redirtbl[5].bits = 0x0000_0000_0000_0035;
    }
    saved.restore(first.fd()).expect("apply the changes");
    let saved = VmState::save(first.fd()).expect("save again");
    let json = serde_json::to_string(&saved).expect("serialize");

    let second = Vm::new(&host).expect("second VM");
    let fresh = VmState::save(second.fd()).expect("save the fresh VM");
    assert!(
        comparable(&fresh) != comparable(&saved),
        "a fresh VM already equals the saved one: the test would prove nothing"
    );
    let loaded: VmState = serde_json::from_str(&json).expect("deserialize");
    loaded.restore(second.fd()).expect("restore");
    let after = VmState::save(second.fd()).expect("read back");
    let (chips, pit) = comparable(&after);
    assert!(chips == comparable(&saved).0, "the irqchip state differs");
    assert_eq!(pit, comparable(&saved).1, "the PIT state differs");
    assert!(
        after.clock.clock >= saved.clock.clock,
        "the restored clock went back: {} < {}",
        after.clock.clock,
        saved.clock.clock
    );
}

#[test]
fn test_vm_state_of_another_version_is_refused() {
    let host = KvmHost::open().expect("/dev/kvm");
    let vm = Vm::new(&host).expect("VM");
    let mut state = VmState::save(vm.fd()).expect("save");
    state.version += 1;
    let err = state.restore(vm.fd()).expect_err("newer version");
    assert!(ember::error_chain(&err).contains("version"), "{err}");
}
