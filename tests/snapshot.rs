//! Snapshot and restore on real KVM with the test guests: a paused VM is saved through the API
//! (`PUT /snapshot/create`), the first process ends, and a new process restores it
//! (`--restore` or `PUT /snapshot/load`). The `smp` guest in `tick=1` mode counts on every vCPU
//! and prints a RAM-only nonce, so a restore that continues (same nonce, the next counts) cannot
//! be mistaken for a reboot (new nonce, counts from 1).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::api::sock_path;
use common::snapshot::{Files, expect, save_and_stop};
use common::{GUEST_TIMEOUT, TestVm, VmArgs, run_ember, scratch_dir};

const QUICK: Duration = Duration::from_secs(60);
const SIGTERM: i32 = 15;

/// A parsed `TICK cpu=C n=N nonce=X` line.
fn tick(line: &str) -> Option<(u32, u64, String)> {
    let rest = line.strip_prefix("TICK cpu=")?;
    let mut fields = rest.split_whitespace();
    let cpu = fields.next()?.parse().ok()?;
    let n = fields.next()?.strip_prefix("n=")?.parse().ok()?;
    let nonce = fields.next()?.strip_prefix("nonce=")?.to_string();
    Some((cpu, n, nonce))
}

/// The last count each CPU printed, and the nonce. A process stopped at a snapshot may end its
/// output in the middle of a line ("TICK cpu=2 n=5 nonce=0x1a"): only lines with the nonce of
/// the first line (complete, since others followed it) count.
fn last_ticks(console: &[String]) -> (BTreeMap<u32, u64>, String) {
    let ticks: Vec<(u32, u64, String)> = console.iter().filter_map(|l| tick(l)).collect();
    let Some(nonce) = ticks.first().map(|t| t.2.clone()) else {
        return (BTreeMap::new(), String::new());
    };
    let last = ticks
        .iter()
        .filter(|t| t.2 == nonce)
        .map(|t| (t.0, t.1))
        .collect();
    (last, nonce)
}

/// Waits until every CPU in `cpus` printed a count of at least `n(cpu)` (the console is read
/// whole: the CPUs' lines come in any order).
fn wait_for_counts(vm: &TestVm, cpus: &[u32], n: impl Fn(u32) -> u64) {
    let deadline = std::time::Instant::now() + GUEST_TIMEOUT;
    loop {
        let (last, _) = last_ticks(&vm.console());
        if cpus
            .iter()
            .all(|c| last.get(c).is_some_and(|got| *got >= n(*c)))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "CPUs {cpus:?} did not count on within {GUEST_TIMEOUT:?}: {last:?}\n{}\n{}",
            vm.console().join("\n"),
            vm.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Boots the smp guest in tick mode with `vcpus`, waits until every CPU counted a few times,
/// pauses it, snapshots it into `files` and stops it. Returns the last counts and the nonce.
fn snapshot_ticking_guest(vcpus: u32, files: &Files) -> (BTreeMap<u32, u64>, String) {
    let name = files.snap.file_stem().expect("name").to_string_lossy();
    let sock = sock_path(&format!("snap-tick-{name}"));
    let mut vm = TestVm::start(
        VmArgs::guest("smp")
            .arg("--vcpus", vcpus)
            .arg("--cmdline", "tick=1")
            .arg("--api-sock", sock.display()),
    );
    common::api::wait_for_socket(&sock, QUICK);
    let cpus: Vec<u32> = (0..vcpus).collect();
    wait_for_counts(&vm, &cpus, |_| 3);
    save_and_stop(&mut vm, &sock, files);
    let (last, nonce) = last_ticks(&vm.console());
    assert_eq!(last.len(), vcpus as usize, "{:?}", vm.console());
    assert!(!nonce.is_empty());
    (last, nonce)
}

/// Waits until every CPU of `vm` printed two counts after the restore, and checks that each
/// continued from `before` (the next count, or the one after when the line in flight at the
/// pause was cut) with the same nonce.
fn assert_continues(vm: &TestVm, before: &BTreeMap<u32, u64>, nonce: &str) {
    let cpus: Vec<u32> = before.keys().copied().collect();
    wait_for_counts(vm, &cpus, |cpu| before[&cpu] + 3);
    let console = vm.console();
    for (cpu, n) in before {
        let first = console
            .iter()
            .filter_map(|l| tick(l))
            .find(|t| t.0 == *cpu)
            .expect("a tick after the restore");
        assert!(
            first.1 == n + 1 || first.1 == n + 2,
            "CPU {cpu}: counted {n} before the snapshot, {} first after it\n{console:?}",
            first.1
        );
        assert_eq!(
            first.2, nonce,
            "CPU {cpu}: another nonce: a reboot, not a restore"
        );
    }
}

#[test]
fn test_snapshot_counter_continues_in_a_new_process() {
    let files = Files::new("counter");
    let (before, nonce) = snapshot_ticking_guest(1, &files);
    let mem_before = std::fs::read(&files.mem).expect("memory file");

    let mut vm = TestVm::start(VmArgs::restore(&files.spec(true)));
    assert_continues(&vm, &before, &nonce);
    vm.signal(SIGTERM);
    vm.wait_exit(QUICK);
    assert!(
        std::fs::read(&files.mem).expect("memory file") == mem_before,
        "the restored guest's writes reached the memory file (not copy-on-write)"
    );
}

#[test]
fn test_snapshot_smp_guest_continues_on_every_vcpu() {
    let files = Files::new("smp4");
    let (before, nonce) = snapshot_ticking_guest(4, &files);
    let vm = TestVm::start(VmArgs::restore(&files.spec(true)));
    assert_continues(&vm, &before, &nonce);
}

#[test]
fn test_snapshot_load_over_api_paused_then_resumed() {
    let files = Files::new("api-load");
    let (before, nonce) = snapshot_ticking_guest(2, &files);
    let sock = sock_path("snap-api-load");
    let events = scratch_dir().join("snap-api-load-events.jsonl");
    let _ = std::fs::remove_file(&events);
    let vm = TestVm::start(
        VmArgs::default()
            .arg("--api-sock", sock.display())
            .arg("--events", events.display()),
    );
    common::api::wait_for_socket(&sock, QUICK);
    expect(&sock, "PUT", "/snapshot/load", &files.load_body(false), 204);
    let info = expect(&sock, "GET", "/", "", 200);
    assert!(info.contains(r#""state":"Paused""#), "{info}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        vm.lines_with_prefix("TICK").is_empty(),
        "the guest ran while paused: {:?}",
        vm.console()
    );
    expect(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    assert_continues(&vm, &before, &nonce);
    let names: Vec<String> = std::fs::read_to_string(&events)
        .expect("events file")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object a line");
            v["event"].as_str().expect("event").to_string()
        })
        .collect();
    assert_eq!(names, ["started", "paused", "resumed"]);
    expect(&sock, "PUT", "/snapshot/load", &files.load_body(true), 400);
}

#[test]
fn test_snapshot_echo_guest_echoes_input_typed_after_restore() {
    let files = Files::new("echo");
    let sock = sock_path("snap-echo");
    let mut vm = TestVm::start(VmArgs::guest("echo").arg("--api-sock", sock.display()));
    common::api::wait_for_socket(&sock, QUICK);
    vm.wait_for_line("READY", GUEST_TIMEOUT);
    vm.send(b"before the snapshot\n");
    vm.wait_for_line("ECHO before the snapshot", GUEST_TIMEOUT);
    save_and_stop(&mut vm, &sock, &files);

    let mut restored = TestVm::start(VmArgs::restore(&files.spec(true)));
    restored.send(b"typed after the restore\n");
    restored.wait_for_line("ECHO typed after the restore", GUEST_TIMEOUT);
    restored.send(b"quit\n");
    restored.wait_for_line("EMBER-TEST echo done", GUEST_TIMEOUT);
    assert_eq!(restored.exit_code(GUEST_TIMEOUT), 0, "{}", restored.log());
}

#[test]
fn test_snapshot_create_refused_while_running_for_a_diff_of_a_booted_vm_and_a_bad_path() {
    let files = Files::new("running");
    let sock = sock_path("snap-running");
    let mut vm = TestVm::start(
        VmArgs::guest("smp")
            .arg("--cmdline", "tick=1")
            .arg("--api-sock", sock.display()),
    );
    common::api::wait_for_socket(&sock, QUICK);
    vm.wait_for_line("TICK cpu=0 n=1 ", GUEST_TIMEOUT);
    let body = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        files.snap.display(),
        files.mem.display()
    );
    let answer = expect(&sock, "PUT", "/snapshot/create", &body, 400);
    assert!(answer.contains("pause it"), "{answer}");
    assert!(!files.snap.exists() && !files.mem.exists());
    // Paused, a booted (not restored) VM has no base for a diff.
    expect(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    let body = files.create_body().replace("Full", "Diff");
    let answer = expect(&sock, "PUT", "/snapshot/create", &body, 400);
    assert!(answer.contains("restored from a snapshot"), "{answer}");
    // A memory file that cannot be created: 400 naming it, nothing left behind, the VM resumes.
    let body = files
        .create_body()
        .replace(&*files.mem.to_string_lossy(), "/nonexistent-dir/vm.mem");
    let answer = expect(&sock, "PUT", "/snapshot/create", &body, 400);
    assert!(answer.contains("/nonexistent-dir/vm.mem"), "{answer}");
    assert!(!files.snap.exists());
    let (paused_at, _) = last_ticks(&vm.console());
    expect(&sock, "PATCH", "/vm", r#"{"state": "Resumed"}"#, 204);
    wait_for_counts(&vm, &[0], |_| paused_at.get(&0).copied().unwrap_or(0) + 2);
}

/// A copy of the good snapshot, changed by `edit`, at a new path.
fn variant(files: &Files, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(&files.snap).expect("snapshot");
    edit(&mut bytes);
    let path = scratch_dir().join(format!("bad-{name}.snap"));
    std::fs::write(&path, &bytes).expect("write variant");
    path
}

fn load_body(snap: &Path, mem: &Path) -> String {
    format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}", "resume_vm": true}}"#,
        snap.display(),
        mem.display()
    )
}

#[test]
fn test_snapshot_bad_input_is_400_naming_the_problem_and_ember_keeps_waiting() {
    let files = Files::new("bad-input");
    let (before, nonce) = snapshot_ticking_guest(1, &files);
    let truncated = variant(&files, "truncated", |b| b.truncate(b.len() / 2));
    let corrupted = variant(&files, "corrupted", |b| {
        let at = b.len() / 2;
        b[at] ^= 0x01;
    });
    let version = variant(&files, "version", |b| b[8] = 99);
    let short_mem = scratch_dir().join("bad-short.mem");
    std::fs::write(&short_mem, vec![0u8; 4096]).expect("short memory file");
    let missing = scratch_dir().join("bad-missing.snap");
    let _ = std::fs::remove_file(&missing);
    let inputs_before: Vec<Vec<u8>> = [&truncated, &corrupted, &version, &files.snap]
        .iter()
        .map(|p| std::fs::read(p).expect("input"))
        .collect();

    let sock = sock_path("snap-bad-input");
    let vm = TestVm::start(VmArgs::default().arg("--api-sock", sock.display()));
    common::api::wait_for_socket(&sock, QUICK);
    for (snap, mem, needle) in [
        (&truncated, &files.mem, "truncated"),
        (&corrupted, &files.mem, "checksum mismatch"),
        (&version, &files.mem, "format version 99"),
        (&files.snap, &short_mem, "4096 bytes"),
        (&missing, &files.mem, "No such file"),
        (&files.snap, &missing, "memory file"),
    ] {
        let answer = expect(&sock, "PUT", "/snapshot/load", &load_body(snap, mem), 400);
        assert!(answer.contains("fault_message"), "{answer}");
        assert!(answer.contains(needle), "{needle:?} not in {answer}");
    }
    for (overrides, needle) in [
        (
            r#""network_overrides": [{"iface_id": "eth9", "host_dev_name": "tap9"}]"#,
            "no network interface eth9",
        ),
        (
            r#""drive_overrides": [{"drive_id": "nope", "path_on_host": "/x"}]"#,
            "no drive nope",
        ),
    ] {
        let body = files
            .load_body(true)
            .replacen('{', &format!("{{{overrides}, "), 1);
        let answer = expect(&sock, "PUT", "/snapshot/load", &body, 400);
        assert!(answer.contains(needle), "{needle:?} not in {answer}");
    }
    let after: Vec<Vec<u8>> = [&truncated, &corrupted, &version, &files.snap]
        .iter()
        .map(|p| std::fs::read(p).expect("input"))
        .collect();
    assert!(after == inputs_before, "an input file changed");

    // Still waiting: the good snapshot loads and runs.
    expect(&sock, "PUT", "/snapshot/load", &files.load_body(true), 204);
    assert_continues(&vm, &before, &nonce);
}

#[test]
fn test_snapshot_load_after_configuration_is_refused() {
    let files = Files::new("after-config");
    let sock = sock_path("snap-after-config");
    let _vm = TestVm::start(VmArgs::default().arg("--api-sock", sock.display()));
    common::api::wait_for_socket(&sock, QUICK);
    expect(
        &sock,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        204,
    );
    let answer = expect(&sock, "PUT", "/snapshot/load", &files.load_body(true), 400);
    assert!(answer.contains("after configuring"), "{answer}");
    let info = expect(&sock, "GET", "/", "", 200);
    assert!(info.contains("Not started"), "{info}");
}

#[test]
fn test_snapshot_cli_restore_of_a_corrupted_file_is_one_line_and_nonzero() {
    let files = Files::new("cli-bad");
    std::fs::write(&files.snap, b"EMBERSNP\x01\0\0\0garbage").expect("snapshot");
    std::fs::write(&files.mem, [0u8; 4096]).expect("memory");
    let spec = files.spec(true);
    let (code, stderr) = run_ember(&["--restore", &spec], QUICK);
    assert_eq!(code, 2, "bad input is a usage error: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("truncated"), "{stderr}");
}

/// Resident memory of process `pid` in KiB: (anonymous, file-backed), from /proc/PID/status.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("RssAnon:"), field("RssFile:"))
}

#[test]
fn test_snapshot_ten_clones_run_at_once_and_share_guest_memory() {
    const CLONES: usize = 10;
    let files = Files::new("clones");
    let (before, nonce) = snapshot_ticking_guest(1, &files);
    let clones: Vec<TestVm> = (0..CLONES)
        .map(|_| TestVm::start(VmArgs::restore(&files.spec(true))))
        .collect();
    for clone in &clones {
        assert_continues(clone, &before, &nonce);
    }
    let rss: Vec<(u64, u64)> = clones.iter().map(|c| rss_kib(c.pid())).collect();
    let anon: u64 = rss.iter().map(|r| r.0).sum();
    let file: u64 = rss.iter().map(|r| r.1).sum();
    eprintln!(
        "{CLONES} clones of a 128 MiB guest: anonymous RSS {} MiB in all ({} KiB each on average), \
         file-backed RSS {} MiB in all (shared page cache: guest pages read, Ember's binary)",
        anon / 1024,
        anon / CLONES as u64,
        file / 1024
    );
    // Each clone's own memory is Ember's heap plus the guest pages it wrote (copied on
    // write): far below the 128 MiB a copy of guest memory would take.
    for (i, (a, _)) in rss.iter().enumerate() {
        assert!(*a < 32 * 1024, "clone {i}: {a} KiB anonymous RSS");
    }
}

#[test]
fn test_snapshot_diff_of_a_restored_vm_merges_onto_its_base_and_continues() {
    use std::os::unix::fs::MetadataExt;
    let base = Files::new("diff-base");
    let (_, nonce) = snapshot_ticking_guest(1, &base);
    let sock = sock_path("snap-diff");
    let metrics = scratch_dir().join("diff-metrics.jsonl");
    let _ = std::fs::remove_file(&metrics);
    let mut vm = TestVm::start(
        VmArgs::restore(&base.spec(true))
            .arg("--api-sock", sock.display())
            .arg("--metrics-path", metrics.display()),
    );
    common::api::wait_for_socket(&sock, QUICK);
    let (first, _) = last_ticks(&vm.console());
    wait_for_counts(&vm, &[0], |_| first.get(&0).copied().unwrap_or(0) + 3);
    let diff = Files::new("diff");
    expect(&sock, "PATCH", "/vm", r#"{"state": "Paused"}"#, 204);
    let body = diff.create_body().replace("Full", "Diff");
    expect(&sock, "PUT", "/snapshot/create", &body, 204);
    // Still paused: a full snapshot now holds exactly the memory the merged diff must give.
    let full = Files::new("diff-full");
    expect(&sock, "PUT", "/snapshot/create", &full.create_body(), 204);
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    expect(&sock, "PUT", "/actions", flush, 204);
    let lines = std::fs::read_to_string(&metrics).expect("metrics file");
    for name in [
        "load_snapshot",
        "diff_create_snapshot",
        "full_create_snapshot",
        "snapshot_create_count",
    ] {
        assert!(
            lines.contains(&format!("\"{name}\"")),
            "no {name} in {lines}"
        );
    }
    vm.signal(SIGTERM);
    vm.wait_exit(QUICK);
    let (before, diff_nonce) = last_ticks(&vm.console());
    assert_eq!(diff_nonce, nonce);

    let meta = std::fs::metadata(&diff.mem).expect("diff memory file");
    assert_eq!(
        meta.len(),
        128 << 20,
        "a diff is a sparse file of the full size"
    );
    let allocated = meta.blocks() * 512;
    eprintln!(
        "diff snapshot of the ticking guest: {} KiB allocated of {} MiB",
        allocated >> 10,
        meta.len() >> 20
    );
    assert!(
        allocated < 8 << 20,
        "{allocated} bytes allocated: not a diff"
    );

    let merged = scratch_dir().join("diff-merged.mem");
    std::fs::copy(&base.mem, &merged).expect("copy the base");
    let status =
        std::process::Command::new(common::repo_root().join("scripts/merge-diff-snapshot"))
            .arg(&diff.mem)
            .arg(&merged)
            .status()
            .expect("run scripts/merge-diff-snapshot");
    assert!(status.success());
    assert!(
        std::fs::read(&merged).expect("merged") == std::fs::read(&full.mem).expect("full"),
        "base + diff is not the VM's memory: the diff missed written pages"
    );
    let spec = format!(
        "snapshot={},mem={},resume=on",
        diff.snap.display(),
        merged.display()
    );
    let restored = TestVm::start(VmArgs::restore(&spec));
    assert_continues(&restored, &before, &nonce);
}

#[test]
fn test_snapshot_version_flags_name_the_format() {
    let files = Files::new("describe");
    std::fs::write(&files.snap, b"EMBERSNP\x07\0\0\0").expect("a header of version 7");
    let run = |args: &[&str]| {
        let out = common::output_of(std::process::Command::new(common::ember_bin()).args(args));
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (
            out.status.code(),
            text,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(run(&["--snapshot-version"]).1, "v1.0.0");
    let path = files.snap.display().to_string();
    assert_eq!(run(&["--describe-snapshot", &path]).1, "v7.0.0");
    let (code, _, stderr) = run(&["--describe-snapshot", "/nonexistent.snap"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
