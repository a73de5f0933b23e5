//! The same test guests boot under QEMU's microvm machine (PVH entry, KVM), which keeps them
//! honest as PVH guests and lets benchmarks run identical inputs under both VMMs. Skips with a
//! clear message when qemu-system-x86_64 is not installed.

mod common;

use std::process::Command;

use common::{fnv1a64, repo_root, scratch_dir, test_guest};

/// Runs test guest `name` under QEMU microvm and returns its console lines.
fn run_qemu(name: &str, extra: &[&str]) -> Vec<String> {
    let kernel = test_guest(name);
    let out = Command::new(repo_root().join("guest-images/test-guests/run-qemu.sh"))
        .arg(name)
        .args(extra)
        .env("OUT", kernel.parent().expect("guest dir"))
        .env("TIMEOUT", "60")
        .output()
        .expect("run run-qemu.sh");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

#[test]
fn test_qemu_microvm_boots_hello_guest() {
    if !common::qemu_available() {
        return;
    }
    let lines = run_qemu("hello", &[]);
    assert!(
        lines.iter().any(|l| l == "Hello from the hello guest"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l == "EMBER-TEST hello done"),
        "{lines:?}"
    );
}

#[test]
fn test_qemu_microvm_boots_bootinfo_guest_with_initrd_and_cmdline() {
    if !common::qemu_available() {
        return;
    }
    let initrd = scratch_dir().join("qemu-initrd");
    let contents = b"initrd for the QEMU peer run\n".repeat(100);
    std::fs::write(&initrd, &contents).expect("initrd");
    let initrd_arg = initrd.display().to_string();
    let lines = run_qemu(
        "bootinfo",
        &["-append", "peer=qemu", "-initrd", &initrd_arg],
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("EMBER-TEST bootinfo start protocol=pvh")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l == "CMDLINE peer=qemu"), "{lines:?}");
    let initrd_line = lines
        .iter()
        .find(|l| l.starts_with("INITRD 0x"))
        .unwrap_or_else(|| panic!("no INITRD line: {lines:?}"));
    assert!(
        initrd_line.ends_with(&format!("{:#x} {:#x}", contents.len(), fnv1a64(&contents))),
        "{initrd_line}"
    );
    assert!(lines.iter().any(|l| l.starts_with("E820 ")), "{lines:?}");
    assert!(
        lines.iter().any(|l| l == "EMBER-TEST bootinfo done"),
        "{lines:?}"
    );
}
