//! virtio-blk with the reference Linux kernel: an ext4 root mounted from an Ember disk,
//! read-write (the mount's superblock write reaches the host file) and read-only (the file stays
//! byte-identical). Kernel-only checks, so they run on software-nested hosts too; the guest
//! userspace write test runs only where guest userspace can make system calls.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{LINUX_TIMEOUT, TestVm, VmArgs, linux_image, scratch_dir};
use ember::host::HostKind;

/// A private copy of the root filesystem image for one test.
fn rootfs_copy(name: &str) -> Option<PathBuf> {
    let src = linux_image("rootfs.ext4")?;
    let dst = scratch_dir().join(format!("{name}.ext4"));
    std::fs::copy(&src, &dst).expect("copy rootfs");
    Some(dst)
}

/// The ext4 superblock's mount count, read on the host with dumpe2fs.
fn mount_count(image: &Path) -> u32 {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .expect("run dumpe2fs (package e2fsprogs)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Mount count:"))
        .map(|v| v.trim().parse().expect("mount count"))
        .expect("dumpe2fs prints a mount count")
}

fn boot_root(disk: &Path, extra: &str, cmdline_tail: &str) -> TestVm {
    let kernel = linux_image("vmlinux").expect("vmlinux built with rootfs.ext4");
    let cmdline = format!("console=ttyS0 reboot=k panic=1 {cmdline_tail}");
    TestVm::start(
        VmArgs::kernel(&kernel)
            .arg("--disk", format!("path={},root=on{extra}", disk.display()))
            .arg("--cmdline", cmdline),
    )
}

#[test]
fn test_linux_mounts_ext4_root_read_write_and_writes_reach_file() {
    let Some(disk) = rootfs_copy("rw-root") else {
        return;
    };
    let before = mount_count(&disk);
    let mut vm = boot_root(&disk, "", "init=/sbin/idle");
    vm.wait_for_line("virtio_blk virtio0: [vda]", LINUX_TIMEOUT);
    vm.wait_for_line("EXT4-fs (vda): mounted filesystem", LINUX_TIMEOUT);
    let line = vm.wait_for_line("VFS: Mounted root (ext4 filesystem)", LINUX_TIMEOUT);
    assert!(!line.contains("readonly"), "{line}");
    vm.wait_for_line("Run /sbin/idle as init process", LINUX_TIMEOUT);
    vm.signal(15);
    assert_eq!(vm.exit_code(Duration::from_secs(30)), 143, "{}", vm.log());
    assert_eq!(
        mount_count(&disk),
        before + 1,
        "the superblock write reached the host file"
    );
}

#[test]
fn test_linux_mounts_readonly_disk_readonly_and_file_unchanged() {
    let Some(disk) = rootfs_copy("ro-root") else {
        return;
    };
    let before = std::fs::read(&disk).expect("read image");
    let mut vm = boot_root(&disk, ",readonly=on", "init=/sbin/idle");
    vm.wait_for_line("virtio_blk virtio0: [vda]", LINUX_TIMEOUT);
    let line = vm.wait_for_line("VFS: Mounted root (ext4 filesystem)", LINUX_TIMEOUT);
    assert!(line.contains("readonly"), "{line}");
    vm.wait_for_line("Run /sbin/idle as init process", LINUX_TIMEOUT);
    vm.signal(15);
    assert_eq!(vm.exit_code(Duration::from_secs(30)), 143, "{}", vm.log());
    assert!(
        std::fs::read(&disk).expect("read image") == before,
        "read-only image changed"
    );
    assert!(vm.log().contains("read-only"), "{}", vm.log());
}

#[test]
fn test_linux_userspace_write_is_durable_on_host() {
    if HostKind::detect().is_software_nested() {
        eprintln!(
            "SKIP: software-nested KVM: guest userspace cannot make system calls, so no guest \
             program can write a file (the kernel-only root mount tests cover the block path)"
        );
        return;
    }
    let Some(disk) = rootfs_copy("write-root") else {
        return;
    };
    let mut vm = boot_root(&disk, "", "ember.write=durable-bytes-42");
    vm.wait_for_line("EMBER-ROOT wrote", LINUX_TIMEOUT);
    assert_eq!(vm.exit_code(LINUX_TIMEOUT), 0, "{}", vm.log());
    let out = Command::new("debugfs")
        .args(["-R", "cat /ember-write-test"])
        .arg(&disk)
        .output()
        .expect("run debugfs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "durable-bytes-42\n");
}
