//! The host side of Firecracker's hybrid vsock: the Unix socket Ember listens on for
//! host-initiated connections (`uds_path`, whose clients first write `CONNECT <port>\n`), and
//! the non-blocking connect to `<uds_path>_<port>` for guest-initiated ones. A connect never
//! blocks the event loop: a listener whose backlog is full is a refusal (RST), not a wait.

use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Longest `CONNECT <port>\n` line accepted from a host client.
pub const MAX_CONNECT_LINE: usize = 32;

/// Binds the non-blocking listener on `path`. A socket file that no process listens on (left
/// by an Ember that was killed) is replaced, with a warning; any other existing file is an error.
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Non-blocking: a live listener with a full backlog is in use, not a reason to wait.
        let stale = meta.file_type().is_socket()
            && matches!(connect(path), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused);
        if !stale {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists (and is not a stale socket)",
            ));
        }
        log::warn!("vsock: replacing the stale socket {}", path.display());
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// `<uds_path>_<port>`: where a guest connection to host port `port` goes.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut name = uds_path.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// Connects to the Unix socket at `path` without blocking: a listener that is missing,
/// refuses, or has a full backlog (EAGAIN) is an error.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is a valid value (family and path filled in below).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket this function owns; the stream closes it on every path.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes that outlives the call.
    let rc = unsafe {
        libc::connect(
            fd,
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// What reading the `CONNECT <port>\n` line gave so far.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// The line is complete: the guest port asked for.
    Port(u32),
    /// Not complete yet: wait for more bytes.
    More,
    /// Malformed, too long, or the client went away: close it.
    Bad,
}

/// Reads the rest of a `CONNECT <port>\n` line into `line`, one byte at a time so that nothing
/// after the newline (the stream's first data) is consumed.
pub fn read_connect_line(stream: &mut UnixStream, line: &mut Vec<u8>) -> LineRead {
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return LineRead::Bad,
            Ok(_) if byte[0] == b'\n' => return parse_connect_line(line),
            Ok(_) if line.len() >= MAX_CONNECT_LINE => return LineRead::Bad,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return LineRead::More,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return LineRead::Bad,
        }
    }
}

/// `CONNECT <port>` (without the newline) -> the port.
pub fn parse_connect_line(line: &[u8]) -> LineRead {
    let text = std::str::from_utf8(line).unwrap_or("");
    let text = text.strip_suffix('\r').unwrap_or(text);
    match text.strip_prefix("CONNECT ").map(str::parse::<u32>) {
        Some(Ok(port)) => LineRead::Port(port),
        _ => LineRead::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ember-vsock-{name}-{}", std::process::id()));
        std::fs::remove_file(&p).ok();
        p
    }

    #[test]
    fn test_connect_line_parses_port_and_refuses_the_rest() {
        assert_eq!(parse_connect_line(b"CONNECT 52"), LineRead::Port(52));
        assert_eq!(parse_connect_line(b"CONNECT 52\r"), LineRead::Port(52));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT x",
            b"connect 52",
            b"CONNECT 99999999999",
            b"",
        ] {
            assert_eq!(parse_connect_line(bad), LineRead::Bad);
        }
    }

    #[test]
    fn test_read_connect_line_leaves_the_data_after_it() {
        let (mut a, mut b) = UnixStream::pair().expect("pair");
        b.set_nonblocking(true).expect("nonblocking");
        let mut line = Vec::new();
        a.write_all(b"CONN").expect("write");
        assert_eq!(read_connect_line(&mut b, &mut line), LineRead::More);
        a.write_all(b"ECT 7\nhello").expect("write");
        assert_eq!(read_connect_line(&mut b, &mut line), LineRead::Port(7));
        let mut rest = [0u8; 5];
        b.read_exact(&mut rest).expect("rest");
        assert_eq!(&rest, b"hello");
        a.write_all(&[b'x'; MAX_CONNECT_LINE + 1]).expect("write");
        assert_eq!(read_connect_line(&mut b, &mut Vec::new()), LineRead::Bad);
    }

    #[test]
    fn test_connect_reaches_a_listener_and_refuses_a_missing_one() {
        let path = scratch("connect");
        let listener = listen(&path).expect("listen");
        connect(&path).expect("connects");
        assert!(listener.accept().is_ok());
        assert!(connect(&port_path(&path, 1)).is_err());
        drop(listener);
        // A stale socket (nobody listens) is replaced; a regular file is not.
        let _again = listen(&path).expect("stale socket replaced");
        std::fs::remove_file(&path).ok();
        std::fs::write(&path, b"x").expect("file");
        assert!(listen(&path).is_err());
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn test_port_path_appends_the_port() {
        assert_eq!(
            port_path(Path::new("/tmp/v.sock"), 52),
            PathBuf::from("/tmp/v.sock_52")
        );
    }
}
