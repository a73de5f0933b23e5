//! The reference Linux kernel with Ember's virtio-rng and virtio-vsock: both drivers probe and
//! set DRIVER_OK (the transport's "activated" lines), the kernel's hwrng core reads entropy from
//! the device (its counters at exit), and `ember-agent` in the guest answers a host `CONNECT`
//! through Firecracker's protocol and runs `uname -a`, then a `poweroff -f` that ends the VM.
//! One boot (about 100 s on software-nested hosts); skipped when the images are not built.
//! The agent's protocol is also checked on the host, over a socket pair, without a boot.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{LINUX_TIMEOUT, TestVm, VmArgs, linux_image, repo_root, scratch_dir};

/// Connects to the vsock socket, asks for guest port 52 and has the agent run `command`;
/// returns (stdout, stderr, exit status).
fn agent_run(uds: &Path, command: &str, stdin: &[u8]) -> (String, String, Option<u32>) {
    let stream = UnixStream::connect(uds).expect("connect to the vsock socket");
    stream
        .set_read_timeout(Some(LINUX_TIMEOUT))
        .expect("timeout");
    (&stream).write_all(b"CONNECT 52\n").expect("CONNECT");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut ok = String::new();
    reader.read_line(&mut ok).expect("OK line");
    assert!(ok.starts_with("OK "), "{ok:?}");
    agent_session(stream, reader, command, stdin)
}

/// One agent session on `stream` (read through `reader`): RUN `command`, `stdin` then its
/// end, and the frames that come back.
fn agent_session(
    mut stream: UnixStream,
    mut reader: impl Read,
    command: &str,
    stdin: &[u8],
) -> (String, String, Option<u32>) {
    stream
        .write_all(format!("RUN {command}\n").as_bytes())
        .expect("RUN");
    for chunk in stdin.chunks(4096) {
        stream.write_all(&[0]).expect("frame kind");
        stream
            .write_all(&(chunk.len() as u32).to_le_bytes())
            .expect("frame length");
        stream.write_all(chunk).expect("stdin");
    }
    stream.write_all(&[0, 0, 0, 0, 0]).expect("end of stdin");
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), None);
    loop {
        let mut head = [0u8; 5];
        if reader.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
        let mut data = vec![0u8; len];
        reader.read_exact(&mut data).expect("frame payload");
        match head[0] {
            1 => out.extend_from_slice(&data),
            2 => err.extend_from_slice(&data),
            3 => status = Some(u32::from_le_bytes(data[..4].try_into().expect("status"))),
            kind => panic!("unknown frame kind {kind}"),
        }
    }
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (text(out), text(err), status)
}

/// The agent built as scripts/build-guest-images builds it, run on the host with
/// `--session` over a socket pair: stdin in, stdout and stderr apart, the exit status last.
#[test]
fn test_ember_agent_protocol_over_a_socket_pair() {
    let agent = scratch_dir().join("ember-agent");
    let built = Command::new("gcc")
        .args([
            "-O2",
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
        ])
        .args([
            "-fno-pie",
            "-no-pie",
            "-Wall",
            "-Werror",
            "-Wl,--build-id=none",
            "-o",
        ])
        .arg(&agent)
        .arg(repo_root().join("guest-images/initramfs/ember-agent.c"))
        .status()
        .expect("run gcc");
    assert!(built.success(), "ember-agent does not build");
    let (host, guest) = UnixStream::pair().expect("socket pair");
    host.set_read_timeout(Some(LINUX_TIMEOUT)).expect("timeout");
    let mut child = Command::new(&agent)
        .arg("--session")
        .stdin(Stdio::from(OwnedFd::from(guest)))
        .stdout(Stdio::null())
        .spawn()
        .expect("start ember-agent");
    let reader = host.try_clone().expect("clone");
    let (out, err, status) = agent_session(
        host,
        reader,
        "tr a-z A-Z; echo oops >&2; exit 3",
        b"shout\n",
    );
    assert_eq!(
        (out.as_str(), err.as_str(), status),
        ("SHOUT\n", "oops\n", Some(3))
    );
    assert!(child.wait().expect("agent exits").success());
}

#[test]
fn test_linux_probes_rng_and_vsock_and_agent_runs_uname() {
    let (Some(kernel), Some(initrd)) = (linux_image("vmlinux"), linux_image("initramfs.cpio"))
    else {
        return;
    };
    let uds = scratch_dir().join("linux.vsock");
    std::fs::remove_file(&uds).ok();
    let args = VmArgs::kernel(&kernel)
        .arg("--initrd", initrd.display())
        .arg(
            "--cmdline",
            "console=ttyS0 reboot=k panic=1 ember.test=vsock-linux ember.agent",
        )
        .arg("--log-level", "debug")
        .flag("--rng")
        .arg("--vsock", format!("cid=42,uds={}", uds.display()));
    let mut vm = TestVm::start(args);
    vm.wait_for_line("EMBER-INIT-OK", LINUX_TIMEOUT);
    vm.wait_for_line("ember-agent: listening", LINUX_TIMEOUT);

    let (out, err, status) = agent_run(&uds, "uname -a", b"");
    eprintln!("guest: {out}");
    assert_eq!(status, Some(0), "stdout {out:?} stderr {err:?}");
    assert!(out.starts_with("Linux "), "{out:?}");
    let (_, _, status) = agent_run(&uds, "echo to-stderr >&2; exit 7", b"");
    assert_eq!(status, Some(7));
    // 1 MiB each way between guest userspace and the host, through both sides' credit.
    let started = std::time::Instant::now();
    let (out, _, status) = agent_run(&uds, "head -c 1048576 /dev/zero", b"");
    let from_guest = started.elapsed();
    assert_eq!((out.len(), status), (1 << 20, Some(0)));
    let started = std::time::Instant::now();
    let (out, _, status) = agent_run(&uds, "wc -c", &vec![b'x'; 1 << 20]);
    let to_guest = started.elapsed();
    assert_eq!((out.trim(), status), ("1048576", Some(0)));
    eprintln!(
        "Linux guest userspace over vsock, 1 MiB: guest -> host {:.2} MiB/s, host -> guest {:.2} MiB/s (command start included)",
        1.0 / from_guest.as_secs_f64(),
        1.0 / to_guest.as_secs_f64()
    );
    // The last command ends the VM: the connection may end before its status arrives.
    let _ = agent_run(&uds, "poweroff -f", b"");

    assert_eq!(vm.exit_code(LINUX_TIMEOUT), 0, "{}", vm.log());
    let log = vm.log();
    for device in ["rng rng0", "vsock vsock0"] {
        assert!(
            log.contains(&format!("{device}: activated")),
            "the {device} driver did not set DRIVER_OK:\n{log}"
        );
    }
    let rng = log
        .lines()
        .find(|l| l.contains("rng rng0:") && l.contains(" ops,"))
        .unwrap_or_else(|| panic!("no rng counters at exit:\n{log}"));
    let ops: u64 = rng
        .split("rng rng0: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("ops");
    assert!(ops > 0, "the kernel never read entropy: {rng}");
    eprintln!("{rng}");
    if let Some(vsock) = log
        .lines()
        .find(|l| l.contains("vsock vsock0:") && l.contains(" ops,"))
    {
        eprintln!("{vsock}");
    }
    assert!(!uds.exists(), "the vsock socket is removed at exit");
}
