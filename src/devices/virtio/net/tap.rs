//! The host side of a virtio-net device: an existing TAP interface opened through
//! /dev/net/tun with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, non-blocking, with a 12-byte
//! (`virtio_net_hdr_v1`) vnet header on every frame. The unsafe here is the tun ioctls, which
//! have no safe wrapper in the crates Ember uses.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::frame::VNET_HDR_LEN;

/// The tun/tap control device.
const TUN_PATH: &str = "/dev/net/tun";
/// IFNAMSIZ: interface names are at most 15 bytes plus the NUL.
const IFNAMSIZ: usize = 16;

/// Errors while opening or configuring a TAP.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// No interface of that name exists (in Ember's network namespace).
    #[error(
        "TAP device {tap} for {id} does not exist: create it with `ip tuntap add dev {tap} mode tap` and `ip link set {tap} up`"
    )]
    Missing {
        /// Interface name.
        tap: String,
        /// Interface id in the configuration.
        id: String,
    },
    /// The interface exists but is not a TAP (a TUN, a bridge, a real NIC...).
    #[error("Interface {tap} for {id} exists but is not a TAP device")]
    NotTap {
        /// Interface name.
        tap: String,
        /// Interface id.
        id: String,
    },
    /// Another process (or another `--net`) already has the TAP open.
    #[error("TAP device {tap} for {id} is already in use by another process")]
    Busy {
        /// Interface name.
        tap: String,
        /// Interface id.
        id: String,
    },
    /// /dev/net/tun cannot be opened.
    #[error("Cannot open {TUN_PATH} for {id} (is the tun module loaded, and may Ember use it?)")]
    OpenTun {
        /// Interface id.
        id: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tun ioctl failed.
    #[error("{op} on TAP device {tap} failed")]
    Ioctl {
        /// Which ioctl.
        op: &'static str,
        /// Interface name.
        tap: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `struct ifreq` as far as the tun ioctls use it: the name and the flags (40 bytes in all).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> Self {
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            // The tun flags all fit in the 16-bit ifr_flags field.
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        let len = name.len().min(IFNAMSIZ - 1);
        req.name[..len].copy_from_slice(&name.as_bytes()[..len]);
        req
    }
}

/// Whether an interface called `name` exists in this process's network namespace.
fn interface_exists(name: &str) -> bool {
    let Ok(cname) = CString::new(name) else {
        return false;
    };
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(cname.as_ptr()) != 0 }
}

/// An open TAP interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens the existing TAP `name` (for interface `id`, used in messages): non-blocking, no
    /// packet information, 12-byte vnet headers. A missing interface is an error that says how to
    /// create one; Ember never creates interfaces itself.
    pub fn open(name: &str, id: &str) -> Result<Tap, TapError> {
        if !interface_exists(name) {
            return Err(TapError::Missing {
                tap: name.to_string(),
                id: id.to_string(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| TapError::OpenTun {
                id: id.to_string(),
                source,
            })?;
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        let mut req = IfReq::new(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a live, properly sized
        // (40-byte) ifreq and the fd is the tun device we just opened.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EINVAL) => TapError::NotTap {
                    tap: name.to_string(),
                    id: id.to_string(),
                },
                Some(libc::EBUSY) => TapError::Busy {
                    tap: name.to_string(),
                    id: id.to_string(),
                },
                _ => tap.ioctl_error("TUNSETIFF")(err),
            });
        }
        // The interface could have vanished between the check and TUNSETIFF, which then creates
        // a fresh, non-persistent one: refuse it (closing the fd destroys it again).
        let mut got = IfReq::new(name, 0);
        // SAFETY: TUNGETIFF writes one `struct ifreq` into the live `got`.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNGETIFF, &mut got) };
        if rc < 0 {
            return Err(tap.ioctl_error("TUNGETIFF")(std::io::Error::last_os_error()));
        }
        if libc::c_int::from(got.flags) & libc::IFF_PERSIST == 0 {
            return Err(TapError::Missing {
                tap: name.to_string(),
                id: id.to_string(),
            });
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at `hdr_len`.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if rc < 0 {
            return Err(tap.ioctl_error("TUNSETVNETHDRSZ")(
                std::io::Error::last_os_error(),
            ));
        }
        tap.set_offload(0)?;
        Ok(tap)
    }

    fn ioctl_error(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> TapError {
        let tap = self.name.clone();
        move |source| TapError::Ioctl { op, tap, source }
    }

    /// Tells the TAP which offloads the guest accepts on receive (TUN_F_* bits): the host
    /// kernel may then hand Ember partially checksummed and GSO frames.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(self.ioctl_error("TUNSETOFFLOAD")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A stand-in for tests: `file` (one end of a datagram socket pair) carries the frames.
    #[cfg(test)]
    pub(crate) fn from_file(file: File, name: &str) -> Tap {
        Tap {
            file,
            name: name.to_string(),
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl super::rxtx::Backend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ifreq_is_kernel_sized_and_truncates_name() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        let req = IfReq::new("a-very-long-interface-name", libc::IFF_TAP);
        assert_eq!(req.name[IFNAMSIZ - 1], 0);
        assert_eq!(&req.name[..3], b"a-v");
        assert_eq!(libc::c_int::from(req.flags), libc::IFF_TAP);
    }

    #[test]
    fn test_tap_open_missing_interface_says_how_to_create_it() {
        let err = Tap::open("ember-nonexist", "net0").expect_err("no such interface");
        let text = err.to_string();
        assert!(matches!(err, TapError::Missing { .. }), "{text}");
        assert!(
            text.contains("ip tuntap add dev ember-nonexist mode tap"),
            "{text}"
        );
        assert!(text.contains("ip link set ember-nonexist up"), "{text}");
    }
}
