//! What the host KVM is, and the compatibility policy for software-nested KVM ("PVM").
//!
//! On PVM hosts (`kvm_pvm` loaded, no `vmx`/`svm` CPU flag) guest kernel code runs in KVM's
//! instruction emulator, and some things that work on hardware KVM do not:
//!
//! | problem | workaround applied by this module |
//! |---|---|
//! | CPUID feature bits set with KVM_SET_CPUID2 do not reach the guest; XRSTOR fails | `noxsave` on the guest command line |
//! | CLAC (SMAP), POPCNT and CMPXCHG16B fail to emulate | `clearcpuid=smap,popcnt,cx16` on the command line (merged with the user's `clearcpuid=`) |
//! | LSL fails to emulate: with FSGSBASE, `paranoid_entry` (#DB, NMI, #DF from kernel mode) looks up the per-CPU GS base with it (seen on a 2-vCPU boot, vCPU 1) | `fsgsbase` in `clearcpuid=`: the kernel reads MSR_GS_BASE instead |
//! | Kernel SIMD code fails to emulate: LDMXCSR in `kernel_fpu_begin`, then MOVD/PSHUFB on XMM registers (Debian's stock kernel: blake2s at ~130 s of boot; emulating LDMXCSR alone only moved the crash to the next SSE instruction) | `clearcpuid=ssse3,sse4_1,sse4_2,aes,pclmulqdq,sha_ni,avx,avx2,avx512f`: crypto and checksum code takes the generic C paths |
//! | The crypto self-tests (RSA) keep both vCPUs busy for 10+ minutes; certificate loading times out | `cryptomgr.notests=1` |
//! | Guest user mode runs natively with the host's XCR0: AVX/AVX-512 usable (and used by glibc), but the `noxsave` kernel saves only x87/SSE state when it switches processes, so vector registers leak between processes (a busybox exec died of a zeroed TLS block about once in 50 on 2 vCPUs). Setting guest CR4.OSXSAVE and XCR0 = x87+SSE through KVM does not reach user mode here | `GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,...` on the command line (init's environment): glibc stays on SSE. Programs that use AVX without asking glibc remain unsafe on these hosts |
//! | A user-mode SYSCALL reaches LSTAR still in ring 3 and faults there (#PF), so init dies on its first system call | `vstate::syscall_repair`: hardware breakpoints on the guest's #PF/#GP handlers finish the SYSCALL by hand (~280 us per call) |
//! | VMCALL (KVM hypercalls, PV IPIs, kvmclock) spins forever without an exit | the KVM paravirt CPUID leaves are hidden from the guest, and a watchdog skips a VMCALL found spinning (RAX = -KVM_ENOSYS) |
//! | The kernel's IO-APIC timer check (a timing loop) fails when the emulated guest is slow | `no_timer_check` on the command line |
//! | INT3 fails to emulate (KVM_EXIT_INTERNAL_ERROR) | RIP += 1 and #BP injected, as the hardware would |
//! | FWAIT fails to emulate | RIP += 1 (no x87 exception can be pending) |
//!
//! Each workaround logs one line when it is applied. On hardware KVM none of this happens.
//! `--pvm-compat on|off|auto` forces the policy on or off.

use std::path::Path;

/// The user's choice for the compatibility policy (`"auto"`, `"on"`, `"off"` in JSON).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompatMode {
    /// Detect the host.
    #[default]
    Auto,
    /// Always apply the policy.
    On,
    /// Never apply it.
    Off,
    /// Apply it without the SYSCALL repair (diagnosis: guest userspace then dies on its first
    /// system call, as before the repair existed).
    #[serde(rename = "no-syscall-repair")]
    NoSyscallRepair,
}

/// What the detection found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostKind {
    /// `/sys/module/kvm_pvm` exists.
    pub pvm_module: bool,
    /// The CPU advertises hardware virtualisation (vmx or svm).
    pub hw_virt: bool,
}

impl HostKind {
    /// Reads the host: the loaded KVM modules and /proc/cpuinfo flags.
    pub fn detect() -> Self {
        let pvm_module = Path::new("/sys/module/kvm_pvm").exists();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        HostKind {
            pvm_module,
            hw_virt: cpuinfo_has_hw_virt(&cpuinfo),
        }
    }

    /// Software-nested: PVM loaded and no hardware virtualisation flag.
    pub fn is_software_nested(&self) -> bool {
        self.pvm_module && !self.hw_virt
    }
}

/// Whether the `flags` lines of /proc/cpuinfo name vmx or svm.
pub fn cpuinfo_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Guest command-line switches the policy appends (unless the user's command line sets the same
/// name), each with the reason it is logged with.
pub const PVM_CMDLINE: [(&str, &str); 4] = [
    ("noxsave", "XRSTOR fails to emulate"),
    (
        "no_timer_check",
        "the IO-APIC timer check is a short timing loop that emulated guest kernels can miss on a loaded host, panicking the boot",
    ),
    (
        "cryptomgr.notests=1",
        "the crypto self-tests (RSA big-number arithmetic) keep an emulated kernel busy for minutes",
    ),
    (
        GLIBC_NO_AVX,
        "guest user mode runs natively with the host's AVX and AVX-512 enabled, but a `noxsave` kernel does not save that state when it switches processes; this environment for init and its children keeps glibc's string and memory functions on SSE",
    ),
];

/// init's environment (the kernel hands it unknown `NAME=value` words) that turns off glibc's
/// AVX and AVX-512 code paths. Measured here with `utest avx`: ymm1's upper half and ymm16 were
/// lost after a switch to another process on the same vCPU in 37 of 200 rounds (never after a
/// system call), and busybox's `memcpy` of its TLS image into a fresh page came back zero,
/// killing about one exec in 50 with SIGSEGV on 2-vCPU guests.
pub const GLIBC_NO_AVX: &str = "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-FMA,-AVX_Fast_Unaligned_Load";

/// The name a command-line word sets (`name=value`), or the word.
fn switch_name(word: &str) -> &str {
    word.split_once('=').map_or(word, |(name, _)| name)
}

/// CPU features the policy turns off with `clearcpuid=` (merged with the user's own list:
/// Linux honours only the last `clearcpuid=`), each group with the reason it is logged with.
/// CPUID masks set with KVM_SET_CPUID2 do not reach the guest here, so the command line is
/// the only way.
pub const PVM_CLEARCPUID: [(&str, &str); 5] = [
    ("smap", "CLAC fails to emulate"),
    (
        "fsgsbase",
        "LSL fails to emulate (paranoid_entry's per-CPU GS base lookup with FSGSBASE: #DB, NMI and #DF entries)",
    ),
    ("popcnt", "POPCNT fails to emulate"),
    (
        "cx16",
        "CMPXCHG16B (SLUB's cmpxchg_double) fails to emulate",
    ),
    (
        "ssse3,sse4_1,sse4_2,aes,pclmulqdq,sha_ni,avx,avx2,avx512f",
        "KVM's emulator cannot run kernel SIMD code (LDMXCSR in kernel_fpu_begin, MOVD to XMM in blake2s; crypto and checksum drivers): the kernel takes its generic C paths",
    ),
];

/// How to get past an instruction KVM failed to emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmulationFixup {
    /// INT3: advance RIP past it and inject #BP (vector 3).
    Breakpoint,
    /// FWAIT: advance RIP past it.
    Skip(u64),
}

const INT3: u8 = 0xcc;
const FWAIT: u8 = 0x9b;
/// VMCALL's encoding.
pub const VMCALL: [u8; 3] = [0x0f, 0x01, 0xc1];
/// What a skipped hypercall returns: -KVM_ENOSYS.
pub const KVM_ENOSYS_RETURN: u64 = (-1000i64) as u64;

/// The compatibility policy in force for this VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPolicy {
    /// Whether the PVM workarounds apply.
    pub pvm: bool,
    /// Whether the SYSCALL repair is part of them.
    pub repair: bool,
}

impl HostPolicy {
    /// Decides from the user's `mode` and the detected host.
    pub fn decide(mode: CompatMode, host: HostKind) -> Self {
        let pvm = match mode {
            CompatMode::On | CompatMode::NoSyscallRepair => true,
            CompatMode::Off => false,
            CompatMode::Auto => host.is_software_nested(),
        };
        HostPolicy {
            pvm,
            repair: pvm && mode != CompatMode::NoSyscallRepair,
        }
    }

    /// Appends the policy's switches to the guest command line, logging each, and merges its
    /// `clearcpuid=` features with the user's into one `clearcpuid=` (Linux honours only the
    /// last one). Everything goes before a `--`, after which words are init's arguments.
    pub fn extend_cmdline(&self, cmdline: &mut String) {
        if !self.pvm {
            return;
        }
        let all: Vec<&str> = cmdline.split_whitespace().collect();
        let split = all.iter().position(|w| *w == "--").unwrap_or(all.len());
        let (kernel, init_args) = all.split_at(split);
        let mut kernel = kernel.to_vec();
        for (switch, why) in PVM_CMDLINE {
            if !kernel.iter().any(|w| switch_name(w) == switch_name(switch)) {
                log::info!(
                    "Software-nested KVM: adding `{switch}` to the guest command line ({why})"
                );
                kernel.push(switch);
            }
        }
        let mut words: Vec<&str> = Vec::new();
        let mut features: Vec<String> = Vec::new();
        for word in kernel {
            match word.strip_prefix("clearcpuid=") {
                Some(list) => {
                    features.extend(list.split(',').filter(|f| !f.is_empty()).map(str::to_owned))
                }
                None => words.push(word),
            }
        }
        for (group, why) in PVM_CLEARCPUID {
            let added: Vec<&str> = group
                .split(',')
                .filter(|f| !features.iter().any(|have| have == f))
                .collect();
            if !added.is_empty() {
                log::info!(
                    "Software-nested KVM: clearing CPU features `{}` on the guest command line ({why})",
                    added.join(",")
                );
                features.extend(added.into_iter().map(str::to_owned));
            }
        }
        let merged = format!("clearcpuid={}", features.join(","));
        words.push(&merged);
        words.extend_from_slice(init_args);
        *cmdline = words.join(" ");
    }

    /// Whether to hide the KVM paravirtual CPUID leaves (0x40000000..).
    pub fn hide_kvm_leaves(&self) -> bool {
        self.pvm
    }

    /// Whether to repair misdelivered guest SYSCALLs (`vstate::syscall_repair`).
    pub fn syscall_repair(&self) -> bool {
        self.repair
    }

    /// Whether a watchdog should look for spinning VMCALLs.
    pub fn vmcall_guard(&self) -> bool {
        self.pvm
    }

    /// The fixup for an emulation failure at an instruction starting with `bytes`, if any.
    pub fn emulation_fixup(&self, bytes: &[u8]) -> Option<EmulationFixup> {
        if !self.pvm {
            return None;
        }
        match *bytes.first()? {
            INT3 => Some(EmulationFixup::Breakpoint),
            FWAIT => Some(EmulationFixup::Skip(1)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PVM_HOST: HostKind = HostKind {
        pvm_module: true,
        hw_virt: false,
    };
    const HW_HOST: HostKind = HostKind {
        pvm_module: false,
        hw_virt: true,
    };

    #[test]
    fn test_cpuinfo_has_hw_virt_finds_vmx_flag() {
        assert!(cpuinfo_has_hw_virt(
            "processor: 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(!cpuinfo_has_hw_virt(
            "flags\t\t: fpu vme sse hypervisor\nvmx flags: x\n"
        ));
    }

    #[test]
    fn test_policy_auto_follows_detection() {
        assert!(HostPolicy::decide(CompatMode::Auto, PVM_HOST).pvm);
        assert!(!HostPolicy::decide(CompatMode::Auto, HW_HOST).pvm);
        let both = HostKind {
            pvm_module: true,
            hw_virt: true,
        };
        assert!(!HostPolicy::decide(CompatMode::Auto, both).pvm);
    }

    #[test]
    fn test_policy_forced_modes_override_detection() {
        assert!(HostPolicy::decide(CompatMode::On, HW_HOST).pvm);
        assert!(!HostPolicy::decide(CompatMode::Off, PVM_HOST).pvm);
    }

    const POLICY_FEATURES: &str =
        "smap,fsgsbase,popcnt,cx16,ssse3,sse4_1,sse4_2,aes,pclmulqdq,sha_ni,avx,avx2,avx512f";

    #[test]
    fn test_extend_cmdline_appends_once() {
        let policy = HostPolicy::decide(CompatMode::On, HW_HOST);
        let mut cmdline = String::from("console=ttyS0 noxsave");
        policy.extend_cmdline(&mut cmdline);
        assert_eq!(
            cmdline,
            format!(
                "console=ttyS0 noxsave no_timer_check cryptomgr.notests=1 {GLIBC_NO_AVX} clearcpuid={POLICY_FEATURES}"
            )
        );
        let again = cmdline.clone();
        policy.extend_cmdline(&mut cmdline);
        assert_eq!(cmdline, again);
        let mut off = String::from("console=ttyS0 clearcpuid=pku");
        HostPolicy::decide(CompatMode::Off, PVM_HOST).extend_cmdline(&mut off);
        assert_eq!(off, "console=ttyS0 clearcpuid=pku");
    }

    #[test]
    fn test_extend_cmdline_merges_the_users_clearcpuid_lists() {
        let policy = HostPolicy::decide(CompatMode::On, HW_HOST);
        let mut cmdline =
            String::from("clearcpuid=pku,smap console=ttyS0 clearcpuid=la57 root=/dev/vda");
        policy.extend_cmdline(&mut cmdline);
        let clears: Vec<&str> = cmdline
            .split_whitespace()
            .filter(|w| w.starts_with("clearcpuid="))
            .collect();
        assert_eq!(clears.len(), 1, "{cmdline}");
        let features: Vec<&str> = clears[0]["clearcpuid=".len()..].split(',').collect();
        assert_eq!(&features[..3], ["pku", "smap", "la57"]);
        assert_eq!(features.iter().filter(|f| **f == "smap").count(), 1);
        for f in POLICY_FEATURES.split(',') {
            assert!(features.contains(&f), "{f} missing from {cmdline}");
        }
        assert!(
            cmdline.starts_with("console=ttyS0 root=/dev/vda "),
            "{cmdline}"
        );
    }

    #[test]
    fn test_extend_cmdline_keeps_init_arguments_and_the_users_own_settings() {
        let policy = HostPolicy::decide(CompatMode::On, HW_HOST);
        let mut cmdline = String::from(
            "console=ttyS0 GLIBC_TUNABLES=glibc.malloc.check=3 cryptomgr.notests=0 -- -s noxsave",
        );
        policy.extend_cmdline(&mut cmdline);
        let (kernel, init) = cmdline.split_once(" -- ").expect("the -- stays");
        assert_eq!(init, "-s noxsave", "init's arguments untouched: {cmdline}");
        for word in [
            "noxsave",
            "no_timer_check",
            "GLIBC_TUNABLES=glibc.malloc.check=3",
        ] {
            assert!(kernel.split(' ').any(|w| w == word), "{word} in {cmdline}");
        }
        assert!(kernel.contains("cryptomgr.notests=0") && !kernel.contains("notests=1"));
        assert!(
            !kernel.contains(GLIBC_NO_AVX),
            "the user's own tunables win: {cmdline}"
        );
        assert!(kernel.ends_with(&format!("clearcpuid={POLICY_FEATURES}")));
    }

    #[test]
    fn test_syscall_repair_only_under_the_policy() {
        assert!(HostPolicy::decide(CompatMode::Auto, PVM_HOST).syscall_repair());
        assert!(!HostPolicy::decide(CompatMode::Auto, HW_HOST).syscall_repair());
        assert!(!HostPolicy::decide(CompatMode::Off, PVM_HOST).syscall_repair());
        let without = HostPolicy::decide(CompatMode::NoSyscallRepair, PVM_HOST);
        assert!(without.pvm && !without.syscall_repair());
    }

    #[test]
    fn test_emulation_fixup_int3_and_fwait_only_under_pvm() {
        let pvm = HostPolicy::decide(CompatMode::On, HW_HOST);
        assert_eq!(
            pvm.emulation_fixup(&[0xcc]),
            Some(EmulationFixup::Breakpoint)
        );
        assert_eq!(
            pvm.emulation_fixup(&[0x9b, 0x90]),
            Some(EmulationFixup::Skip(1))
        );
        assert_eq!(pvm.emulation_fixup(&[0x0f, 0x0b]), None);
        assert_eq!(pvm.emulation_fixup(&[]), None);
        assert_eq!(
            HostPolicy::decide(CompatMode::Off, PVM_HOST).emulation_fixup(&[0xcc]),
            None
        );
    }
}
