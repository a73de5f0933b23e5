//! CPUID normalisation: per-vCPU APIC id and topology, the hypervisor bit, and the policy switch
//! that hides KVM's paravirtual leaves.

use kvm_bindings::kvm_cpuid_entry2;

/// First leaf of the hypervisor range (KVM's signature "KVMKVMKVM").
pub const HYPERVISOR_LEAF_FIRST: u32 = 0x4000_0000;
/// Last leaf of the hypervisor range.
pub const HYPERVISOR_LEAF_LAST: u32 = 0x4000_00ff;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// What the normaliser needs to know about the vCPU and the VM.
#[derive(Clone, Copy, Debug)]
pub struct CpuidTopology {
    /// This vCPU's index, which is also its APIC id.
    pub cpu_id: u8,
    /// Number of vCPUs (one core each, one socket).
    pub num_cpus: u8,
}

/// Bits needed to hold `n` distinct ids.
fn id_bits(n: u8) -> u32 {
    if n <= 1 {
        0
    } else {
        u32::BITS - u32::from(n - 1).leading_zeros()
    }
}

/// Rewrites the KVM-supported CPUID `entries` for one vCPU. With `hide_kvm_leaves` the whole
/// hypervisor range is dropped so the guest does not use KVM paravirtual features.
pub fn normalize(
    entries: &[kvm_cpuid_entry2],
    topo: CpuidTopology,
    hide_kvm_leaves: bool,
) -> Vec<kvm_cpuid_entry2> {
    let apic_id = u32::from(topo.cpu_id);
    let cpus = u32::from(topo.num_cpus);
    let core_bits = id_bits(topo.num_cpus);
    entries
        .iter()
        .filter(|e| {
            !(hide_kvm_leaves
                && (HYPERVISOR_LEAF_FIRST..=HYPERVISOR_LEAF_LAST).contains(&e.function))
        })
        .map(|entry| {
            let mut e = *entry;
            match e.function {
                LEAF_FEATURES => {
                    e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (cpus << 16);
                    e.ecx |= ECX_HYPERVISOR;
                    if cpus > 1 {
                        e.edx |= EDX_HTT;
                    } else {
                        e.edx &= !EDX_HTT;
                    }
                }
                LEAF_CACHE => {
                    // Cores per package in EAX[31:26]; caches are private except the last level.
                    let level = (e.eax >> 5) & 0x7;
                    let sharing = if level >= 3 { cpus - 1 } else { 0 };
                    e.eax = (e.eax & 0x3ff) | ((cpus - 1) << 26) | (sharing << 14);
                }
                LEAF_PMU => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = 0;
                    e.edx = 0;
                }
                LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                    e.edx = apic_id;
                    match e.index {
                        0 => {
                            e.eax = 0;
                            e.ebx = 1;
                            e.ecx = (TOPOLOGY_LEVEL_SMT << 8) | e.index;
                        }
                        1 => {
                            e.eax = core_bits;
                            e.ebx = cpus;
                            e.ecx = (TOPOLOGY_LEVEL_CORE << 8) | e.index;
                        }
                        _ => {
                            e.eax = 0;
                            e.ebx = 0;
                            e.ecx = e.index;
                        }
                    }
                }
                _ => {}
            }
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("leaf present")
    }

    fn sample() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0),
            entry(LEAF_FEATURES, 0),
            entry(LEAF_TOPOLOGY, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_TOPOLOGY, 2),
            entry(HYPERVISOR_LEAF_FIRST, 0),
            entry(HYPERVISOR_LEAF_FIRST + 1, 0),
        ]
    }

    #[test]
    fn test_normalize_sets_apic_id_and_count_in_leaf1() {
        let out = normalize(
            &sample(),
            CpuidTopology {
                cpu_id: 3,
                num_cpus: 4,
            },
            false,
        );
        let leaf1 = find(&out, LEAF_FEATURES, 0);
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(leaf1.edx & EDX_HTT, 0);
    }

    #[test]
    fn test_normalize_topology_leaf_reports_cores() {
        let out = normalize(
            &sample(),
            CpuidTopology {
                cpu_id: 2,
                num_cpus: 3,
            },
            false,
        );
        let core = find(&out, LEAF_TOPOLOGY, 1);
        assert_eq!(core.ebx, 3);
        assert_eq!(core.eax, 2);
        assert_eq!(core.edx, 2);
        assert_eq!((core.ecx >> 8) & 0xff, TOPOLOGY_LEVEL_CORE);
        assert_eq!((find(&out, LEAF_TOPOLOGY, 2).ecx >> 8) & 0xff, 0);
    }

    #[test]
    fn test_normalize_hides_hypervisor_leaves_when_asked() {
        let topo = CpuidTopology {
            cpu_id: 0,
            num_cpus: 1,
        };
        let hidden = normalize(&sample(), topo, true);
        assert!(hidden.iter().all(|e| e.function < HYPERVISOR_LEAF_FIRST));
        let kept = normalize(&sample(), topo, false);
        assert!(kept.iter().any(|e| e.function == HYPERVISOR_LEAF_FIRST));
    }

    #[test]
    fn test_id_bits() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}
