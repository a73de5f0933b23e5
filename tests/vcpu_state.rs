//! vCPU state against real KVM: a configured vCPU's whole state (registers, special registers,
//! XSAVE, XCRs, debug registers, LAPIC, MSRs, MP state, events) saved, serialized, restored into
//! a vCPU of a brand-new VM and read back: identical (the guest TSC, which runs on, aside).

use ember::arch::kernel::BootProtocol;
use ember::host::{CompatMode, HostKind, HostPolicy};
use ember::vstate::memory::create_guest_memory;
use ember::vstate::vcpu::{Vcpu, supported_cpuid};
use ember::vstate::vcpu_state::{VcpuState, saveable_msrs};
use ember::vstate::vm::{KvmHost, Vm};

/// IA32_TSC: counts on between the save and the read-back.
const MSR_TSC: u32 = 0x10;

/// The state as JSON, without IA32_TSC (kvm-bindings serializes each MSR entry as its bytes:
/// the index is the first four, little-endian).
fn without_tsc(state: &VcpuState) -> serde_json::Value {
    let mut value = serde_json::to_value(state).expect("serialize");
    let msrs = value["msrs"].as_array_mut().expect("msrs array");
    msrs.retain(|m| msr_index(m) != MSR_TSC);
    value
}

fn msr_index(entry: &serde_json::Value) -> u32 {
    let bytes: Vec<u8> = entry
        .as_array()
        .expect("MSR entry bytes")
        .iter()
        .take(4)
        .map(|b| b.as_u64().expect("byte") as u8)
        .collect();
    u32::from_le_bytes(bytes.try_into().expect("four bytes"))
}

/// The top-level fields (and MSR indices) where `a` and `b` differ.
fn differences(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let (a, b) = (
        a.as_object().expect("object"),
        b.as_object().expect("object"),
    );
    let mut out = Vec::new();
    for (key, value) in a {
        if key == "msrs" {
            let (ma, mb) = (
                value.as_array().expect("array"),
                b[key].as_array().expect("array"),
            );
            if ma.len() != mb.len() {
                out.push(format!("msrs: {} vs {} entries", ma.len(), mb.len()));
            }
            for (x, y) in ma.iter().zip(mb) {
                if x != y {
                    out.push(format!("MSR {:#x}", msr_index(x)));
                }
            }
        } else if b.get(key) != Some(value) {
            out.push(key.clone());
        }
    }
    out
}

#[test]
fn test_vcpu_state_round_trips_into_a_new_vm() {
    let host = KvmHost::open().expect("/dev/kvm");
    let policy = HostPolicy::decide(CompatMode::Auto, HostKind::detect());
    let supported = supported_cpuid(&host.kvm).expect("supported CPUID");
    let msrs = saveable_msrs(&host.kvm).expect("MSR list");
    let mem = create_guest_memory(64 << 20).expect("guest memory");

    let first = Vm::new(&host).expect("VM");
    first.register_memory(&mem).expect("memory slots");
    let vcpu = Vcpu::new(first.fd(), 0).expect("vCPU");
    vcpu.configure(
        &supported,
        &mem,
        1,
        policy,
        Some((0x10_0000, BootProtocol::Pvh)),
    )
    .expect("configure");
    let saved = vcpu.save_state(&msrs).expect("save");
    assert!(saved.msrs.len() > 10, "{} MSRs saved", saved.msrs.len());
    let json = serde_json::to_string(&saved).expect("serialize");

    let second = Vm::new(&host).expect("second VM");
    second.register_memory(&mem).expect("memory slots");
    let fresh = Vcpu::new(second.fd(), 0).expect("vCPU");
    fresh
        .configure(&supported, &mem, 1, policy, None)
        .expect("configure (CPUID)");
    let before = fresh.save_state(&msrs).expect("save the fresh vCPU");
    assert!(
        !differences(&without_tsc(&before), &without_tsc(&saved)).is_empty(),
        "a fresh vCPU already equals the saved one: the test would prove nothing"
    );
    let loaded: VcpuState = serde_json::from_str(&json).expect("deserialize");
    fresh.restore_state(&loaded).expect("restore");
    let after = fresh.save_state(&msrs).expect("read back");
    let diff = differences(&without_tsc(&after), &without_tsc(&saved));
    assert!(diff.is_empty(), "restored state differs in {diff:?}");
}

#[test]
fn test_vcpu_state_of_another_version_is_refused() {
    let host = KvmHost::open().expect("/dev/kvm");
    let policy = HostPolicy::decide(CompatMode::Auto, HostKind::detect());
    let supported = supported_cpuid(&host.kvm).expect("supported CPUID");
    let mem = create_guest_memory(64 << 20).expect("guest memory");
    let vm = Vm::new(&host).expect("VM");
    let vcpu = Vcpu::new(vm.fd(), 0).expect("vCPU");
    vcpu.configure(&supported, &mem, 1, policy, None)
        .expect("configure");
    let mut state = vcpu.save_state(&[]).expect("save");
    state.version += 1;
    let err = vcpu.restore_state(&state).expect_err("newer version");
    assert!(err.to_string().contains("version"), "{err}");
}
