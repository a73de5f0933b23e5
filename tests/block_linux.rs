//! virtio-blk with the reference Linux kernel: an ext4 root mounted from an Ember disk,
//! read-write from guest userspace (a file written and synced in one boot is in the host file
//! and read back in the next) and read-only (the file stays byte-identical).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{LINUX_TIMEOUT, TestVm, VmArgs, linux_image, scratch_dir};

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

/// The guest's contents of `/ember-write-test` in `image`, read on the host with debugfs.
fn debugfs_cat(image: &Path) -> String {
    let out = Command::new("debugfs")
        .args(["-R", "cat /ember-write-test"])
        .arg(image)
        .output()
        .unwrap_or_else(|e| panic!("cannot run debugfs (package e2fsprogs): {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ext4 root from guest userspace, over two boots on one vCPU: the first mounts it
/// read-write (the superblock's mount count reaches the host file), runs 10,000 system calls
/// with signals and fork/exec/wait from the disk's own binaries, writes a file and syncs it,
/// and powers off; the host reads the file out of the image; the second boot reads it back.
#[test]
fn test_linux_ext4_root_userspace_write_survives_reboot() {
    let Some(disk) = rootfs_copy("write-root") else {
        return;
    };
    let before = mount_count(&disk);
    let mut vm = boot_root(
        &disk,
        "",
        "ember.write=durable-bytes-42 ember.utest=syscalls:10000,fork:10",
    );
    vm.wait_for_line("virtio_blk virtio0: [vda]", LINUX_TIMEOUT);
    let line = vm.wait_for_line("VFS: Mounted root (ext4 filesystem)", LINUX_TIMEOUT);
    assert!(!line.contains("readonly"), "{line}");
    vm.wait_for_line("EMBER-ROOT-OK", LINUX_TIMEOUT);
    vm.wait_for_line("EMBER-ROOT wrote 17 bytes", LINUX_TIMEOUT);
    let calls = vm.wait_for_line("UTEST syscalls cpu=0 ", LINUX_TIMEOUT);
    assert!(calls.ends_with(" bad=0 ok"), "{calls}");
    vm.wait_for_line("UTEST fork n=10 bad=0 ok", LINUX_TIMEOUT);
    vm.wait_for_line("EMBER-ROOT utest=ok", LINUX_TIMEOUT);
    assert_eq!(vm.exit_code(LINUX_TIMEOUT), 0, "{}", vm.log());
    assert_eq!(
        mount_count(&disk),
        before + 1,
        "the superblock write reached the host file"
    );
    assert_eq!(debugfs_cat(&disk), "durable-bytes-42\n");

    let mut vm = boot_root(&disk, "", "ember.read");
    vm.wait_for_line("EMBER-ROOT read=durable-bytes-42", LINUX_TIMEOUT);
    assert_eq!(vm.exit_code(LINUX_TIMEOUT), 0, "{}", vm.log());
}
