//! The reference Linux kernel booted by Ember, up to and through guest userspace. On
//! software-nested hosts its kernel code is emulated, so each boot takes 30-90 s: the checks are
//! grouped into few boots and read the guest's own log and its init's report. Set EMBER_REQUIRE_LINUX=1 (scripts/test does) to fail instead of
//! skipping when the images have not been built.

mod common;

use std::time::Duration;

use common::{LINUX_TIMEOUT, TestVm, VmArgs, linux_image};
use ember::host::HostKind;

/// The address of the reference kernel's system-call entry (what it writes to LSTAR), from
/// its System.map: the kernel is not relocatable.
fn entry_syscall_64() -> String {
    let map = linux_image("System.map").expect("System.map is built with vmlinux");
    let text = std::fs::read_to_string(map).expect("read System.map");
    let line = text
        .lines()
        .find(|l| l.ends_with(" entry_SYSCALL_64"))
        .expect("entry_SYSCALL_64 in System.map");
    format!("0x{}", &line[..16])
}

/// One boot, many checks: command line, memory map, SMP bring-up, the init's report, then guest
/// userspace on both vCPUs: 10,000 system calls on each with signals arriving during them and
/// every argument register checked, fork + exec + wait with the child's output through a pipe,
/// 30 shell command substitutions with a pipe (busybox fork + exec), and a user jump to the kernel's entry point that must fault (SIGSEGV) and never enter the
/// kernel. init powers off (ACPI S5), so ember exits 0 by itself.
#[test]
fn test_linux_two_cpus_runs_init_and_userspace_checks() {
    let (Some(kernel), Some(initrd)) = (linux_image("vmlinux"), linux_image("initramfs.cpio"))
    else {
        return;
    };
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 ember.test=linux-boot \
         ember.utest=syscalls:10000,fork:20,shell:30,forge:{}",
        entry_syscall_64()
    );
    let args = VmArgs::kernel(&kernel)
        .arg("--initrd", initrd.display())
        .arg("--vcpus", 2)
        .arg("--memory", 256)
        .arg("--cmdline", &cmdline);
    let mut vm = TestVm::start(args);

    let line = vm.wait_for_line("Command line:", LINUX_TIMEOUT);
    assert!(line.contains(&cmdline), "{line}");
    vm.wait_for_line(
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
        LINUX_TIMEOUT,
    );
    vm.wait_for_line("smp: Brought up 1 node, 2 CPUs", LINUX_TIMEOUT);
    vm.wait_for_line("Run /init as init process", LINUX_TIMEOUT);
    vm.wait_for_line("EMBER-INIT-OK", LINUX_TIMEOUT);
    vm.wait_for_line("EMBER-INIT cpus=2", LINUX_TIMEOUT);
    let cmd = vm.wait_for_line("EMBER-INIT cmdline=", LINUX_TIMEOUT);
    assert!(cmd.contains("ember.test=linux-boot"), "{cmd}");
    // The policy's glibc tunables reach init's environment (docs/usage.md, vector state).
    let tunables = vm.wait_for_line("EMBER-INIT glibc_tunables=", LINUX_TIMEOUT);
    assert_eq!(
        tunables.contains("-AVX512F"),
        HostKind::detect().is_software_nested(),
        "{tunables}"
    );
    // One line per vCPU, in whichever order they finish, then the summary.
    vm.wait_for_line("UTEST syscalls cpus=2 ok", LINUX_TIMEOUT);
    for cpu in 0..2 {
        let lines = vm.lines_with_prefix(&format!("UTEST syscalls cpu={cpu} "));
        assert!(
            lines.len() == 1 && lines[0].ends_with(" bad=0 ok"),
            "{lines:?}"
        );
    }
    vm.wait_for_line("UTEST fork n=20 bad=0 ok", LINUX_TIMEOUT);
    // Busybox fork + exec with TLS set-up on both vCPUs: an SMP memory corruption (the repair
    // once wrote the system registers back) showed as a SIGSEGV in about one of 20.
    vm.wait_for_line("UTEST shell n=30 bad=0 ok", LINUX_TIMEOUT);
    let forge = vm.wait_for_line("UTEST forge ", LINUX_TIMEOUT);
    assert!(forge.ends_with(" ok"), "{forge}");
    vm.wait_for_line("EMBER-INIT utest=ok", LINUX_TIMEOUT);
    assert_eq!(vm.exit_code(LINUX_TIMEOUT), 0, "{}", vm.log());
    assert!(vm.log().contains("Guest powered off"), "{}", vm.log());
    if HostKind::detect().is_software_nested() {
        assert!(vm.log().contains("SYSCALL repair armed"), "{}", vm.log());
    } else {
        assert!(!vm.log().contains("SYSCALL repair"), "{}", vm.log());
    }
    let console = vm.console().join("\n");
    assert!(!console.contains("Kernel panic"), "{console}");
    assert!(!console.contains("segfault"), "{console}");
}

/// The repair is what lets guest userspace run on software-nested hosts: the policy without it
/// (`--pvm-compat no-syscall-repair`) brings back the old failure, init killed by the #PF at
/// LSTAR on its first system call. On hardware KVM that mode changes nothing: init runs.
#[test]
fn test_linux_without_syscall_repair_init_dies_on_software_nested_hosts() {
    let (Some(kernel), Some(initrd)) = (linux_image("vmlinux"), linux_image("initramfs.cpio"))
    else {
        return;
    };
    let args = VmArgs::kernel(&kernel)
        .arg("--initrd", initrd.display())
        .arg("--pvm-compat", "no-syscall-repair")
        .arg("--cmdline", "console=ttyS0 reboot=k panic=1");
    let mut vm = TestVm::start(args);
    vm.wait_for_line("Run /init as init process", LINUX_TIMEOUT);
    if HostKind::detect().is_software_nested() {
        let line = vm.wait_for_line("segfault at", LINUX_TIMEOUT);
        assert!(line.contains(&entry_syscall_64()[2..]), "{line}");
        vm.wait_for_line("Attempted to kill init", LINUX_TIMEOUT);
        // panic=1 reboot=k: the i8042 reset ends the VM.
        assert_eq!(vm.exit_code(LINUX_TIMEOUT), 0, "{}", vm.log());
        assert!(!vm.console().iter().any(|l| l.contains("EMBER-INIT-OK")));
    } else {
        vm.wait_for_line("EMBER-INIT-OK", LINUX_TIMEOUT);
        assert_eq!(vm.exit_code(LINUX_TIMEOUT), 0, "{}", vm.log());
    }
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
