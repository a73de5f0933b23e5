//! Bad input: each case gives one clear error line naming the problem and a non-zero exit
//! within seconds, never a panic.

mod common;

use std::time::Duration;

use common::{run_ember, scratch_dir, test_guest};

/// A hang detector, not a timing check: generous because a loaded software-nested host can
/// stall KVM set-up for seconds.
const QUICK: Duration = Duration::from_secs(60);

/// Runs ember and checks the failure shape: expected exit code, no panic, a single `ember:`
/// error line containing `needle`.
fn expect_error(args: &[&str], code: i32, needle: &str) {
    let (got, stderr) = run_ember(args, QUICK);
    assert_eq!(got, code, "exit code for {args:?}; stderr:\n{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "panic for {args:?}:\n{stderr}"
    );
    assert!(
        !stderr.contains("RUST_BACKTRACE"),
        "backtrace for {args:?}:\n{stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ember:") || l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line for {args:?}:\n{stderr}");
    assert!(
        errors[0].contains(needle),
        "error for {args:?} should mention {needle:?}: {}",
        errors[0]
    );
}

fn scratch_file(name: &str, contents: &[u8]) -> String {
    let path = scratch_dir().join(name);
    std::fs::write(&path, contents).expect("write scratch file");
    path.display().to_string()
}

#[test]
fn test_missing_kernel_is_usage_error() {
    expect_error(&["--kernel", "/nonexistent/vmlinux"], 2, "does not exist");
}

#[test]
fn test_directory_kernel_is_usage_error() {
    let dir = scratch_dir().display().to_string();
    expect_error(&["--kernel", &dir], 2, "not a regular file");
}

#[test]
fn test_empty_kernel_is_rejected() {
    let path = scratch_file("empty-kernel", b"");
    expect_error(&["--kernel", &path], 1, "is empty");
}

#[test]
fn test_random_bytes_kernel_is_rejected() {
    let bytes: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let path = scratch_file("random-kernel", &bytes);
    expect_error(
        &["--kernel", &path],
        1,
        "neither an ELF vmlinux nor a bzImage",
    );
}

#[test]
fn test_truncated_elf_is_rejected() {
    let elf = std::fs::read(test_guest("hello")).expect("read guest");
    let path = scratch_file("truncated-elf", &elf[..elf.len() / 3]);
    expect_error(&["--kernel", &path], 1, "Invalid ELF kernel");
}

#[test]
fn test_truncated_elf_header_is_rejected() {
    let elf = std::fs::read(test_guest("hello")).expect("read guest");
    let path = scratch_file("truncated-elf-header", &elf[..40]);
    expect_error(&["--kernel", &path], 1, "Invalid ELF kernel");
}

/// A bzImage header (boot protocol 2.15, 64-bit entry) followed by too few bytes.
fn fake_truncated_bzimage() -> Vec<u8> {
    let mut image = vec![0u8; 0x400];
    image[0x1f1] = 30; // setup_sects: claims 31 sectors of setup code
    image[0x1fe] = 0x55;
    image[0x1ff] = 0xaa;
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: 64-bit entry
    image
}

#[test]
fn test_truncated_bzimage_is_rejected() {
    let path = scratch_file("truncated-bzimage", &fake_truncated_bzimage());
    expect_error(&["--kernel", &path], 1, "Invalid bzImage kernel");
}

#[test]
fn test_missing_initrd_is_usage_error() {
    let kernel = test_guest("hello").display().to_string();
    expect_error(
        &["--kernel", &kernel, "--initrd", "/nonexistent/initrd"],
        2,
        "initrd",
    );
}

#[test]
fn test_initrd_larger_than_memory_is_rejected() {
    let kernel = test_guest("hello").display().to_string();
    let path = scratch_dir().join("big-initrd");
    let file = std::fs::File::create(&path).expect("create");
    file.set_len(40 << 20).expect("sparse 40 MiB");
    let initrd = path.display().to_string();
    expect_error(
        &["--kernel", &kernel, "--initrd", &initrd, "--memory", "32"],
        1,
        "does not fit in guest memory",
    );
}

#[test]
fn test_zero_memory_is_usage_error() {
    let kernel = test_guest("hello").display().to_string();
    expect_error(&["--kernel", &kernel, "--memory", "0"], 2, "memory");
}

#[test]
fn test_absurd_memory_is_usage_error() {
    let kernel = test_guest("hello").display().to_string();
    expect_error(
        &["--kernel", &kernel, "--memory", "1000000000000"],
        2,
        "more than the host",
    );
}

#[test]
fn test_zero_vcpus_is_usage_error() {
    let kernel = test_guest("hello").display().to_string();
    expect_error(&["--kernel", &kernel, "--vcpus", "0"], 2, "vcpus");
}

#[test]
fn test_vcpus_above_host_limit_is_usage_error() {
    let kernel = test_guest("hello").display().to_string();
    expect_error(
        &["--kernel", &kernel, "--vcpus", "255"],
        2,
        "more than this host allows",
    );
}

#[test]
fn test_vcpus_not_a_number_is_usage_error() {
    let kernel = test_guest("hello").display().to_string();
    expect_error(&["--kernel", &kernel, "--vcpus", "1000"], 2, "--vcpus");
}

#[test]
fn test_unknown_flag_is_usage_error() {
    let kernel = test_guest("hello").display().to_string();
    expect_error(&["--kernel", &kernel, "--frobnicate"], 2, "--frobnicate");
}

#[test]
fn test_missing_kernel_flag_is_usage_error() {
    expect_error(&[], 2, "--kernel");
}

#[test]
fn test_bad_serial_value_is_usage_error() {
    let kernel = test_guest("hello").display().to_string();
    expect_error(&["--kernel", &kernel, "--serial", "tcp:1"], 2, "serial");
}

#[test]
fn test_pvh_forced_on_bzimage_is_rejected() {
    let path = scratch_file("pvh-bzimage", &fake_truncated_bzimage());
    expect_error(
        &["--kernel", &path, "--boot-protocol", "pvh"],
        1,
        "no PVH entry",
    );
}

#[test]
fn test_help_documents_exit_codes() {
    let out = std::process::Command::new(common::ember_bin())
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--memory",
        "--vcpus",
        "--serial",
        "--log-level",
        "Exit status",
        "Example",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

/// A duplicate drive id in a config file: the reason appears once in the one error line (an
/// error that wraps another does not repeat it in its own message).
#[test]
fn test_config_file_duplicate_drive_id_is_reported_once() {
    let disk = scratch_file("dup-id.img", &[0u8; 4096]);
    let drive = format!(
        r#"{{"drive_id": "x", "path_on_host": "{disk}", "is_root_device": false, "is_read_only": false}}"#
    );
    let config = scratch_file(
        "dup-id.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "drives": [{drive}, {drive}]}}"#,
            test_guest("hello").display()
        )
        .as_bytes(),
    );
    expect_error(&["--config-file", &config], 2, "disk: id x is used twice");
    let (_, stderr) = run_ember(&["--config-file", &config], QUICK);
    assert_eq!(stderr.matches("is used twice").count(), 1, "{stderr}");
}
