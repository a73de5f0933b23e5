//! Network namespaces with TAP devices for the networking tests, and an AF_PACKET socket on a
//! TAP's host side. Each `NetNs` has a unique name, IPv6 off (so the host kernel sends nothing
//! on its own), and is deleted with its TAPs on Drop, also when the test panics. The tests never
//! touch the host's own interfaces: everything lives inside the namespace.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::output_of;

/// Why the networking tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("networking tests need root (network namespaces and TAPs)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing (tun module not loaded)".into());
    }
    None
}

/// A network namespace that lives as long as this value.
pub struct NetNs {
    name: String,
    taps: Vec<String>,
}

impl NetNs {
    /// A fresh namespace named after `tag`; `None` (with a SKIP line) where the tests cannot
    /// run, a failure instead where the environment is required (scripts/test). A missing `ip`
    /// fails as such.
    pub fn new(tag: &str) -> Option<NetNs> {
        if let Some(why) = skip_reason() {
            super::skip_unless_required(&why);
            return None;
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ember-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs {
            name,
            taps: Vec::new(),
        };
        ns.enter(|| {
            for knob in ["all", "default"] {
                // Best effort: without IPv6 in the kernel there is nothing to turn off.
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6"), "1");
            }
        });
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NS args...` and panics if it fails.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// Creates TAP `tap` (persistent, so Ember can attach to it), gives the host side `addr`
    /// (CIDR) if any, and brings it up.
    pub fn add_tap(&mut self, tap: &str, addr: Option<&str>) {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
        self.taps.push(tap.to_string());
        if let Some(addr) = addr {
            self.ip(&["addr", "add", addr, "dev", tap]);
        }
        self.ip(&["link", "set", tap, "up"]);
    }

    /// Waits until the host kernel reports `tap` operationally up, which it does once a reader
    /// (Ember) has attached and the kernel's link watcher (which runs up to a second later) has
    /// activated the TAP's queue: frames sent into the TAP before that are dropped by its qdisc.
    pub fn wait_tap_up(&self, tap: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out =
                output_of(Command::new("ip").args(["-n", &self.name, "-o", "link", "show", tap]));
            if String::from_utf8_lossy(&out.stdout).contains(" state UP ") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{tap} not up within {timeout:?}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `cmd` inside the namespace (`ip netns exec`) and returns its output. A program that
    /// is not installed fails the test as such ("failed to run ping: ..."), not as a command
    /// that ran and failed.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        super::require_program(cmd[0]);
        output_of(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(cmd),
        )
    }

    /// Runs `f` on a thread that has joined the namespace (sockets it opens stay in it).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open the netns file");
                // SAFETY: setns on a valid namespace fd; it only changes this thread's namespace.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("netns thread")
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for tap in &self.taps {
            let _ = Command::new("ip")
                .args(["-n", &self.name, "link", "del", tap])
                .output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(cmd: &mut Command) {
    let out = output_of(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A raw AF_PACKET socket on the host side of a TAP: frames sent go to Ember (and the guest),
/// frames Ember writes to the TAP are received here.
pub struct PacketSocket {
    fd: OwnedFd,
}

const ETH_P_ALL: u16 = 0x0003;

impl PacketSocket {
    /// Opens a socket bound to `ifname` inside `ns`.
    pub fn open(ns: &NetNs, ifname: &str) -> PacketSocket {
        let ifname = CString::new(ifname).expect("interface name");
        ns.enter(move || {
            // SAFETY: plain socket creation; the result is checked.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(ETH_P_ALL.to_be()),
                )
            };
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fd is a new socket nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: ifname is a valid C string.
            let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
            assert!(index != 0, "no interface {ifname:?} in the namespace");
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ALL.to_be();
            addr.sll_ifindex = index as i32;
            // SAFETY: addr is a valid sockaddr_ll and the length matches it.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
            PacketSocket { fd }
        })
    }

    /// Sets the receive buffer to `bytes` (SO_RCVBUFFORCE: root may exceed rmem_max).
    pub fn set_rcvbuf(&self, bytes: i32) {
        // SAFETY: the option value is a valid int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    }

    /// Sends one Ethernet frame into the TAP (towards the guest).
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: frame is a valid buffer of frame.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send on AF_PACKET: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Receives the next frame coming from the guest (frames this socket sent are skipped),
    /// waiting at most `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536 + 64];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc == 0 {
                return None;
            }
            assert!(rc > 0, "poll: {}", std::io::Error::last_os_error());
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and from are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            assert!(n >= 0, "recvfrom: {}", std::io::Error::last_os_error());
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Some(buf[..n as usize].to_vec());
        }
    }

    /// Receives frames until one satisfies `want`, for at most `timeout`.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        want: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.recv(left)?;
            if want(&frame) {
                return Some(frame);
            }
        }
    }
}

/// The `net` test guest's first MAC (`--net ...,mac=02:00:00:00:00:01`).
pub const MAC0: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The source MAC of frames the host sends.
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
/// The EtherType of the test frames (local experimental).
pub const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A frame from the host to the guest: `tag`, then a pattern up to `len` bytes.
pub fn host_frame(dst: [u8; 6], tag: &str, len: usize) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(tag.as_bytes());
    let mut i = 0u8;
    while f.len() < len {
        f.push(i);
        i = i.wrapping_add(13);
    }
    f
}

/// The line the `net` guest prints for a received frame.
pub fn rx_line(frame: &[u8]) -> String {
    format!("RX len={:#x} fnv={:#x}", frame.len(), super::fnv1a64(frame))
}

/// Whether `f` is one of the test frames (their EtherType).
pub fn is_test_frame(f: &[u8]) -> bool {
    f.len() >= 14 && f[12..14] == ETHERTYPE
}

/// Whether the payload of `f` starts with `tag`.
pub fn payload_starts(f: &[u8], tag: &str) -> bool {
    f.len() >= 14 + tag.len() && &f[14..14 + tag.len()] == tag.as_bytes()
}
