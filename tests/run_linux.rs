//! `ember run` on the reference Linux guest: a command's stdout, stderr and exit status come
//! back apart; stdin goes in; volumes go in and (writable, exit 0) come back with the command's
//! changes; a timeout and a signal give their documented codes; the second run of a VM shape
//! restores the first run's snapshot instead of booting. Through the library (`Run`) and the
//! CLI (`ember run`).
//!
//! Three Linux boots in all (the snapshot run's first, `--rootfs`, which always boots, and one
//! without an init): about a minute each on software-nested hosts; every other run restores the snapshot (about a second
//! here). Skipped when the images are not built.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ember_bin, linux_image, scratch_dir};
use ember::run::{Run, RunError, Stdin, Volume};

/// A `Run` with this test's ember and a private snapshot cache.
fn run(cache: &Path, program: &str) -> Run {
    Run::new(program)
        .ember(ember_bin())
        .cache_dir(cache)
        .boot_timeout(Duration::from_secs(600))
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("utf8")
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = scratch_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// `ember run ARGS` with `stdin`; (stdout, stderr, exit code).
fn cli(cache: &Path, args: &[&str], stdin: &[u8]) -> (String, String, i32) {
    let mut child = Command::new(ember_bin())
        .arg("run")
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ember run");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("ember run");
    feeder.join().expect("feeder");
    let code = out.status.code().expect("exit code");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        code,
    )
}

#[test]
fn test_ember_run_commands_volumes_codes_and_snapshot_reuse() {
    let (Some(_), Some(_)) = (linux_image("vmlinux"), linux_image("initramfs.cpio")) else {
        return;
    };
    let cache = fresh_dir("run-cache");

    // First run: a boot, and the snapshot saved on the way.
    let script = "echo out; echo err >&2; exit 7";
    let first = run(&cache, "sh")
        .args(["-c", script])
        .output()
        .expect("first run");
    eprintln!("first run: {}", first.report);
    assert_eq!(
        (text(&first.stdout), text(&first.stderr), first.code),
        ("out\n", "err\n", 7)
    );
    assert!(
        !first.report.restored && first.report.saved,
        "{}",
        first.report
    );

    // The same again: restored, same answer.
    let second = run(&cache, "sh")
        .args(["-c", script])
        .output()
        .expect("second run");
    eprintln!("second run: {}", second.report);
    assert_eq!(
        (text(&second.stdout), text(&second.stderr), second.code),
        ("out\n", "err\n", 7)
    );
    assert!(second.report.restored, "{}", second.report);

    // stdin, environment, working directory, words with spaces and quotes, no shell between.
    let out = run(&cache, "tr")
        .args(["a-z", "A-Z"])
        .stdin(Stdin::Bytes(b"hello\n".to_vec()))
        .output()
        .expect("tr");
    assert_eq!((text(&out.stdout), out.code), ("HELLO\n", 0));
    let out = run(&cache, "sh")
        .args([
            "-c",
            "pwd; echo \"$GREETING\"; printf '%s|' \"$@\"",
            "sh",
            "a b",
            "it's",
        ])
        .env("GREETING", "hi there")
        .workdir("/proc")
        .output()
        .expect("env");
    assert_eq!(text(&out.stdout), "/proc\nhi there\na b|it's|");
    // 1 MiB through stdin and back.
    let big = vec![b'x'; 1 << 20];
    let out = run(&cache, "cat")
        .stdin(Stdin::Bytes(big.clone()))
        .output()
        .expect("cat");
    assert!(out.stdout == big, "{} bytes back", out.stdout.len());

    // Exit codes: a signal is 128 + N, a missing command 127, a timeout is an error (124).
    let out = run(&cache, "sh")
        .args(["-c", "kill -9 $$"])
        .output()
        .expect("kill");
    assert_eq!(out.code, 137);
    let out = run(&cache, "no-such-command").output().expect("missing");
    assert_eq!(out.code, 127, "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no-such-command"));
    match run(&cache, "sleep")
        .arg("60")
        .timeout(Duration::from_secs(3))
        .output()
    {
        Err(e @ RunError::Timeout(_)) => assert_eq!(e.exit_code(), 124),
        other => panic!("expected a timeout: {other:?}"),
    }

    // Volumes: read-only in (and read-only there), writable back with adds, changes, deletes.
    let ro = fresh_dir("run-ro");
    std::fs::write(ro.join("one.txt"), b"1").expect("w");
    std::fs::create_dir_all(ro.join("sub")).expect("mkdir");
    std::fs::write(ro.join("sub/two.txt"), b"2").expect("w");
    let out = run(&cache, "sh")
        .args([
            "-c",
            "ls -R /in; cat /in/sub/two.txt; touch /in/new 2>/dev/null && echo writable",
        ])
        .volume(Volume::parse(&format!("{}:/in:ro", ro.display())).expect("volume"))
        .output()
        .expect("ro volume");
    let listing = text(&out.stdout);
    assert!(
        listing.contains("one.txt") && listing.contains("two.txt"),
        "{listing}"
    );
    assert!(
        listing.contains("2") && !listing.contains("writable"),
        "{listing}"
    );
    assert!(!ro.join("new").exists());

    let rw = fresh_dir("run-rw");
    std::fs::write(rw.join("kept"), b"old\n").expect("w");
    std::fs::write(rw.join("gone"), b"x").expect("w");
    let change =
        "echo new >> /work/kept && echo added > /work/added && rm /work/gone && mkdir /work/d";
    let out = run(&cache, "sh")
        .args(["-c", change])
        .volume(Volume::parse(&format!("{}:/work", rw.display())).expect("volume"))
        .output()
        .expect("rw volume");
    assert_eq!(out.code, 0, "{}", text(&out.stderr));
    assert_eq!(std::fs::read(rw.join("kept")).expect("kept"), b"old\nnew\n");
    assert_eq!(std::fs::read(rw.join("added")).expect("added"), b"added\n");
    assert!(!rw.join("gone").exists() && rw.join("d").is_dir());
    // A failing command leaves the host directory alone.
    let out = run(&cache, "sh")
        .args(["-c", "rm /work/kept; exit 1"])
        .volume(Volume::parse(&format!("{}:/work", rw.display())).expect("volume"))
        .output()
        .expect("failing rw volume");
    assert_eq!(out.code, 1);
    assert!(rw.join("kept").exists());

    // The CLI: output apart, status through, stdin from a pipe, a volume listed.
    let (out, err, code) = cli(&cache, &["--", "sh", "-c", script], b"");
    assert_eq!((out.as_str(), err.as_str(), code), ("out\n", "err\n", 7));
    let (out, _, code) = cli(&cache, &["--", "tr", "a-z", "A-Z"], b"hello\n");
    assert_eq!((out.as_str(), code), ("HELLO\n", 0));
    let volume = format!("{}:/work", ro.display());
    let (out, _, code) = cli(&cache, &["--volume", &volume, "--", "ls", "/work"], b"");
    assert_eq!((out.as_str(), code), ("one.txt\nsub\n", 0));
    let (_, err, code) = cli(&cache, &["--timeout", "2", "--", "sleep", "60"], b"");
    assert_eq!(code, 124, "{err}");
    assert!(
        err.starts_with("ember run: ") && err.lines().count() == 1,
        "{err}"
    );
    // Ember's own failures: one line, 125.
    let (_, err, code) = cli(&cache, &["--kernel", "/nonexistent", "--", "true"], b"");
    assert_eq!(code, 125);
    assert_eq!(
        err, "ember run: --kernel /nonexistent: no such file\n",
        "one clear line"
    );
    let (_, err, code) = cli(
        &cache,
        &["--kernel", "/etc/hostname", "--no-snapshot", "--", "true"],
        b"",
    );
    assert_eq!(code, 125, "{err}");
    assert!(err.starts_with("ember run: the VM stopped"), "{err}");
}

/// `--rootfs`: the command runs chrooted into a read-only ext4 image (the reference rootfs),
/// with /proc and a writable /tmp. Then a guest whose userspace cannot start (no init): one
/// line with the kernel's panic, status 125.
#[test]
fn test_ember_run_rootfs_chroots_into_the_image() {
    let (Some(_), Some(_), Some(rootfs)) = (
        linux_image("vmlinux"),
        linux_image("initramfs.cpio"),
        linux_image("rootfs.ext4"),
    ) else {
        return;
    };
    let cache = fresh_dir("run-rootfs-cache");
    let out = run(&cache, "sh")
        .args([
            "-c",
            "ls /sbin/init && echo t > /tmp/t && cat /tmp/t && test -r /proc/self/stat && \
             echo proc; touch /x 2>/dev/null || echo read-only",
        ])
        .rootfs(&rootfs)
        .output()
        .expect("rootfs run");
    assert_eq!(out.code, 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/sbin/init\nt\nproc\nread-only\n");
    assert!(!out.report.restored && !out.report.saved, "{}", out.report);

    // A guest whose userspace cannot start (here: no init) is said so in one line, 125.
    let (_, err, code) = cli(
        &cache,
        &[
            "--no-snapshot",
            "--append",
            "rdinit=/nonexistent",
            "--",
            "true",
        ],
        b"",
    );
    assert_eq!(code, 125, "{err}");
    assert!(
        err.starts_with("ember run: the VM stopped")
            && err.contains("the guest's userspace did not start: Kernel panic")
            && err.lines().count() == 1,
        "{err}"
    );
}
