//! The host side of `ember-agent`'s protocol (docs/vsock.md, "ember-agent") over the vsock
//! device's Unix socket: Firecracker's `CONNECT <port>` handshake, then `PING` or `EXEC` and
//! the frames that carry stdin, stdout, stderr and the exit status.
//!
//! Everything read here comes from the guest: a frame of an unknown kind or longer than
//! `MAX_FRAME` ends the session with an error, never a panic or an unbounded allocation.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The vsock port `ember-agent` listens on.
pub const AGENT_PORT: u32 = 52;
/// The longest script `EXEC` or body `ARGV` takes (the agent's limit).
pub const MAX_SCRIPT: usize = 65536;
/// The most arguments, command included, in an `ARGV` request (the agent's limit).
pub const MAX_ARGS: usize = 255;
/// The most environment entries in an `ARGV` request (the agent's limit).
pub const MAX_ENV: usize = 61;
/// The most stdin bytes in one frame (the agent's limit).
pub const STDIN_CHUNK: usize = 4096;
/// The longest frame accepted from the guest.
const MAX_FRAME: usize = 1 << 20;

/// One frame from the agent.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Bytes the command wrote to its stdout.
    Stdout(Vec<u8>),
    /// Bytes the command wrote to its stderr.
    Stderr(Vec<u8>),
    /// The command's exit code, or 128 + the signal that killed it; the last frame.
    Exit(u32),
}

/// Why a session with the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The socket could not be used.
    #[error("vsock socket: {0}")]
    Io(#[from] io::Error),
    /// The connection to the guest port was not made (no listener there yet, Ember's socket
    /// not there yet): nothing ran, trying again is safe.
    #[error("the guest's agent did not accept the connection ({0})")]
    Refused(String),
    /// The guest sent something the protocol does not allow.
    #[error("the guest's agent broke the protocol: {0}")]
    Protocol(String),
    /// The connection ended before the exit status.
    #[error("the guest's agent closed the connection before the command's exit status")]
    Closed,
}

/// Connects to the guest's agent through Ember's vsock socket `uds` (the handshake of
/// docs/vsock.md), each read bounded by `timeout`.
fn connect(
    uds: &Path,
    timeout: Duration,
) -> Result<(UnixStream, BufReader<UnixStream>), AgentError> {
    let stream = UnixStream::connect(uds)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    (&stream).write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("OK ") {
        return Err(AgentError::Refused(line));
    }
    Ok((stream, reader))
}

/// Whether the agent answers: `PING` gets `PONG`.
pub fn ping(uds: &Path, timeout: Duration) -> Result<(), AgentError> {
    let (mut stream, mut reader) = connect(uds, timeout)?;
    stream.write_all(b"PING\n")?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line != "PONG\n" {
        return Err(AgentError::Protocol(format!("PING answered {line:?}")));
    }
    Ok(())
}

/// A command running in the guest.
pub struct Session {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Session {
    /// Has the agent run `script` with `/bin/sh -c`.
    pub fn exec(uds: &Path, script: &[u8], timeout: Duration) -> Result<Session, AgentError> {
        if script.len() > MAX_SCRIPT || script.contains(&0) {
            return Err(AgentError::Protocol(format!(
                "the command must be at most {MAX_SCRIPT} bytes without NUL"
            )));
        }
        let (mut stream, reader) = connect(uds, timeout)?;
        stream.write_all(format!("EXEC {}\n", script.len()).as_bytes())?;
        stream.write_all(script)?;
        Ok(Session { stream, reader })
    }

    /// Has the agent run a command without a shell: `ARGV` with `body` (`argv_body`).
    pub fn argv(uds: &Path, body: &[u8], timeout: Duration) -> Result<Session, AgentError> {
        let (mut stream, reader) = connect(uds, timeout)?;
        stream.write_all(format!("ARGV {}\n", body.len()).as_bytes())?;
        stream.write_all(body)?;
        Ok(Session { stream, reader })
    }

    /// A writer of the command's stdin (frames of at most `STDIN_CHUNK` bytes), for another
    /// thread.
    pub fn stdin(&self) -> Result<StdinWriter, AgentError> {
        let stream = self.stream.try_clone()?;
        // Writes may wait as long as the command does not read: only the reader has a limit.
        stream.set_write_timeout(None)?;
        Ok(StdinWriter { stream })
    }

    /// The next frame; `deadline` bounds the wait (`TimedOut` past it).
    pub fn next_frame(&mut self, deadline: Option<Instant>) -> Result<Frame, AgentError> {
        let mut head = [0u8; 5];
        self.read_exact(&mut head, deadline)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            return Err(AgentError::Protocol(format!("a frame of {len} bytes")));
        }
        let mut data = vec![0u8; len];
        self.read_exact(&mut data, deadline)?;
        parse_frame(head[0], data)
    }

    fn read_exact(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> Result<(), AgentError> {
        let mut got = 0;
        while got < buf.len() {
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::from(io::ErrorKind::TimedOut).into());
                }
                self.reader.get_ref().set_read_timeout(Some(left))?;
            } else {
                self.reader.get_ref().set_read_timeout(None)?;
            }
            match self.reader.read(&mut buf[got..]) {
                Ok(0) => return Err(AgentError::Closed),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock) => {
                    // A read timeout; the loop checks the deadline.
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(AgentError::Closed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Sends the command's stdin.
pub struct StdinWriter {
    stream: UnixStream,
}

impl StdinWriter {
    /// Sends `data` (any length) as stdin frames.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(STDIN_CHUNK) {
            let mut frame = Vec::with_capacity(5 + chunk.len());
            frame.push(0);
            frame.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            frame.extend_from_slice(chunk);
            self.stream.write_all(&frame)?;
        }
        Ok(())
    }

    /// Tells the command its stdin has ended.
    pub fn close(mut self) -> io::Result<()> {
        self.stream.write_all(&[0, 0, 0, 0, 0])
    }

    /// Copies `input` to the command's stdin until its end, then closes it.
    pub fn copy_from(mut self, mut input: impl Read) -> io::Result<()> {
        let mut buf = vec![0u8; 16 * STDIN_CHUNK];
        loop {
            match input.read(&mut buf) {
                Ok(0) => return self.close(),
                Ok(n) => self.write(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The body of an `ARGV` request: the root to chroot into (empty: none), the working
/// directory, the environment and the command's words, each NUL-terminated, an empty string
/// between environment and command. None when a part holds a NUL or the agent's limits are
/// passed.
pub fn argv_body(root: &[u8], dir: &[u8], env: &[Vec<u8>], words: &[&[u8]]) -> Option<Vec<u8>> {
    if words.is_empty() || words.len() > MAX_ARGS || env.len() > MAX_ENV {
        return None;
    }
    let mut body = Vec::new();
    let parts = [root, dir]
        .into_iter()
        .chain(env.iter().map(Vec::as_slice))
        .chain([&b""[..]])
        .chain(words.iter().copied());
    if env.iter().any(|e| e.is_empty()) {
        return None; // an empty entry would end the environment
    }
    for part in parts {
        if part.contains(&0) {
            return None;
        }
        body.extend_from_slice(part);
        body.push(0);
    }
    (body.len() <= MAX_SCRIPT).then_some(body)
}

/// A frame from its kind byte and payload.
fn parse_frame(kind: u8, data: Vec<u8>) -> Result<Frame, AgentError> {
    match kind {
        1 => Ok(Frame::Stdout(data)),
        2 => Ok(Frame::Stderr(data)),
        3 => {
            let bytes: [u8; 4] = data.as_slice().try_into().map_err(|_| {
                AgentError::Protocol(format!("an exit frame of {} bytes", data.len()))
            })?;
            Ok(Frame::Exit(u32::from_le_bytes(bytes)))
        }
        other => Err(AgentError::Protocol(format!("a frame of kind {other}"))),
    }
}

/// `arg` quoted for `/bin/sh`: one word, whatever its bytes (NUL cannot occur in an argument).
pub fn shell_quote(arg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(arg.len() + 2);
    out.push(b'\'');
    for &b in arg {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_frame_kinds_and_bad_ones() {
        assert_eq!(
            parse_frame(1, b"a".to_vec()).unwrap(),
            Frame::Stdout(b"a".to_vec())
        );
        assert_eq!(parse_frame(2, vec![]).unwrap(), Frame::Stderr(vec![]));
        assert_eq!(
            parse_frame(3, 7u32.to_le_bytes().to_vec()).unwrap(),
            Frame::Exit(7)
        );
        assert!(matches!(
            parse_frame(3, vec![1, 2]),
            Err(AgentError::Protocol(_))
        ));
        assert!(matches!(
            parse_frame(0, vec![]),
            Err(AgentError::Protocol(_))
        ));
        assert!(matches!(
            parse_frame(9, vec![]),
            Err(AgentError::Protocol(_))
        ));
    }

    #[test]
    fn test_argv_body_layout_and_limits() {
        let body = argv_body(b"", b"/w", &[b"A=1".to_vec()], &[b"ls", b"-l"]).expect("body");
        assert_eq!(body, b"\0/w\0A=1\0\0ls\0-l\0");
        assert_eq!(argv_body(b"", b"/", &[], &[]), None);
        assert_eq!(argv_body(b"", b"/", &[], &[b"a\0b"]), None);
        let many = vec![&b"x"[..]; MAX_ARGS + 1];
        assert_eq!(argv_body(b"", b"/", &[], &many), None);
        let long = vec![b'x'; MAX_SCRIPT];
        assert_eq!(argv_body(b"", b"/", &[], &[&long]), None);
    }

    #[test]
    fn test_shell_quote_survives_the_shell() {
        let args: [&[u8]; 5] = [b"plain", b"it's", b"a b\nc", b"$HOME `x` \\ \"q\"", b""];
        let mut script = b"printf '%s|' ".to_vec();
        for a in args {
            script.extend_from_slice(&shell_quote(a));
            script.push(b' ');
        }
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&script))
            .output()
            .expect("run sh");
        assert_eq!(
            out.stdout,
            b"plain|it's|a b\nc|$HOME `x` \\ \"q\"||".to_vec()
        );
    }

    /// A fake agent on a socket pair: frames are read back, a huge length is refused.
    #[test]
    fn test_session_frames_and_oversized_frame() {
        let (host, mut guest) = UnixStream::pair().expect("pair");
        let reader = BufReader::new(host.try_clone().expect("clone"));
        let mut session = Session {
            stream: host,
            reader,
        };
        guest.write_all(&[1, 2, 0, 0, 0, b'h', b'i']).unwrap();
        guest.write_all(&[3, 4, 0, 0, 0, 5, 0, 0, 0]).unwrap();
        guest.write_all(&[1, 0xff, 0xff, 0xff, 0x7f]).unwrap();
        assert_eq!(
            session.next_frame(None).unwrap(),
            Frame::Stdout(b"hi".to_vec())
        );
        assert_eq!(session.next_frame(None).unwrap(), Frame::Exit(5));
        assert!(matches!(
            session.next_frame(None),
            Err(AgentError::Protocol(_))
        ));
        drop(guest);
        assert!(matches!(session.next_frame(None), Err(AgentError::Closed)));
    }

    #[test]
    fn test_session_deadline() {
        let (host, _guest) = UnixStream::pair().expect("pair");
        let reader = BufReader::new(host.try_clone().expect("clone"));
        let mut session = Session {
            stream: host,
            reader,
        };
        let deadline = Instant::now() + Duration::from_millis(50);
        match session.next_frame(Some(deadline)) {
            Err(AgentError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut),
            other => panic!("{other:?}"),
        }
    }
}
