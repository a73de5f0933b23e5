//! A minimal HTTP/1.1 client for the API socket (std `UnixStream`), for tests that drive a
//! running `ember` through its API.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::scratch_dir;

/// How long a client waits for an answer: a hang detector, not a timing check.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// A fresh socket path in the scratch directory.
pub fn sock_path(name: &str) -> PathBuf {
    let path = scratch_dir().join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&path);
    path
}

/// Waits until `path` exists (the API thread has bound it).
pub fn wait_for_socket(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    // The file appears at bind(2), a moment before listen(2): until then a connection is
    // refused, so wait for one that is accepted.
    while !(path.exists() && UnixStream::connect(path).is_ok()) {
        assert!(
            Instant::now() < deadline,
            "{} never appeared or never accepted a connection",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The bytes of one request with `Connection: close`.
pub fn request(method: &str, target: &str, body: &str) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Sends raw bytes on a new connection and returns everything the server answers before it
/// closes the connection; panics when nothing comes within [`ANSWER_TIMEOUT`].
pub fn raw(sock: &Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(sock).expect("connect to the API socket");
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("read timeout");
    stream.write_all(bytes).expect("send request");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("no answer within {ANSWER_TIMEOUT:?}: {e}"));
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code and body of one response.
pub fn split_response(text: &str) -> (u16, String) {
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

/// One request on its own connection; returns the status code and the body.
pub fn http(sock: &Path, method: &str, target: &str, body: &str) -> (u16, String) {
    split_response(&raw(sock, request(method, target, body).as_bytes()))
}

/// The status codes of every response in `text` (pipelined answers on one connection).
pub fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text[i + 9..].get(..3)?.parse().ok())
        .collect()
}

/// One request on an open keep-alive connection; returns the status code and the body.
pub fn exchange(stream: &mut UnixStream, method: &str, target: &str, body: &str) -> (u16, String) {
    let keep_alive = request(method, target, body).replace("Connection: close\r\n", "");
    exchange_raw(stream, keep_alive.as_bytes())
}

/// Sends the bytes of one request on an open keep-alive connection and reads one answer
/// (by its Content-Length); returns the status code and the body.
pub fn exchange_raw(stream: &mut UnixStream, bytes: &[u8]) -> (u16, String) {
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("read timeout");
    stream.write_all(bytes).expect("send request");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => answer.push(byte[0]),
            other => panic!("no answer head: {other:?} after {answer:?}"),
        }
    }
    let head = String::from_utf8_lossy(&answer).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map(|v| v.trim().parse().expect("Content-Length"))
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("answer body");
    let (status, _) = split_response(&head);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `PUT`s `body` to `target` and checks for 204.
pub fn put_ok(sock: &Path, target: &str, body: &str) {
    let (status, answer) = http(sock, "PUT", target, body);
    assert_eq!(status, 204, "PUT {target} {body} -> {answer}");
}

/// Configures a 1-vCPU, 64 MiB VM booting `kernel`, without starting it.
pub fn configure_guest(sock: &Path, kernel: &Path) {
    put_ok(
        sock,
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    put_ok(sock, "/boot-source", &boot);
}
