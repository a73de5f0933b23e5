//! The `ember_api` thread: a Unix-socket listener and its connections multiplexed with epoll,
//! so that a slow or silent client never holds up the others. Each complete request is routed
//! here; what needs the VM goes to the main thread over a channel plus an eventfd, and the
//! thread waits (bounded) for the answer.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::http::{self, Parsed, Request};
use super::routes::route;
use super::{ApiCall, ApiChannel, ApiResponse};

/// A connection with no complete request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the API thread waits for the main thread to answer one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long writing one response may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 64;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_SHUTDOWN: u64 = 1;
const FIRST_CONNECTION: u64 = 2;

/// Why the API socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// The socket path is already taken.
    #[error("api-sock: {0} already exists (remove it or choose another path)")]
    Exists(PathBuf),
    /// The socket's directory is missing.
    #[error("api-sock: the directory of {0} does not exist")]
    NoDirectory(PathBuf),
    /// bind(2) failed.
    #[error("api-sock: cannot listen on {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    /// An eventfd, epoll or the thread could not be created.
    #[error("api-sock: failed to create {0}")]
    Io(&'static str, #[source] std::io::Error),
}

impl ApiServerError {
    /// Whether the user's input is at fault (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ApiServerError::Exists(_) | ApiServerError::NoDirectory(_)
        )
    }
}

/// The running API thread. Dropping it stops the thread and removes the socket file.
pub struct ApiServer {
    path: PathBuf,
    shutdown: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `path` and starts the `ember_api` thread; the main thread's end is returned.
    pub fn start(path: &Path, seccomp: bool) -> Result<(ApiServer, ApiChannel), ApiServerError> {
        if path.symlink_metadata().is_ok() {
            return Err(ApiServerError::Exists(path.to_owned()));
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir
            && !dir.is_dir()
        {
            return Err(ApiServerError::NoDirectory(path.to_owned()));
        }
        let listener =
            UnixListener::bind(path).map_err(|e| ApiServerError::Bind(path.to_owned(), e))?;
        // From here on the file exists: build the server value first so Drop removes it.
        let shutdown = match EventFd::new(EFD_NONBLOCK) {
            Ok(evt) => evt,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(ApiServerError::Io("an eventfd", e));
            }
        };
        let mut server = ApiServer {
            path: path.to_owned(),
            shutdown,
            thread: None,
        };
        let io = |what| move |e| ApiServerError::Io(what, e);
        listener.set_nonblocking(true).map_err(io("the listener"))?;
        let notify = EventFd::new(EFD_NONBLOCK).map_err(io("an eventfd"))?;
        let (calls_tx, calls) = channel();
        let mut worker = Worker {
            listener,
            shutdown: server.shutdown.try_clone().map_err(io("an eventfd"))?,
            calls: calls_tx,
            notify: notify.try_clone().map_err(io("an eventfd"))?,
            epoll: Epoll::new().map_err(io("an epoll"))?,
            conns: HashMap::new(),
            next_token: FIRST_CONNECTION,
        };
        worker.register()?;
        let thread = std::thread::Builder::new()
            .name("ember_api".into())
            .spawn(move || {
                if seccomp && let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Api)
                {
                    log::error!("{e}; the API thread stops");
                    return;
                }
                worker.run()
            })
            .map_err(io("the ember_api thread"))?;
        server.thread = Some(thread);
        log::info!("API listening on {}", path.display());
        Ok((server, ApiChannel { calls, notify }))
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown.write(1);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("The API thread panicked");
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!(
                "Failed to remove the API socket {}: {e}",
                self.path.display()
            );
        }
    }
}

struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
    last_active: Instant,
    continue_sent: bool,
}

struct Worker {
    listener: UnixListener,
    shutdown: EventFd,
    calls: Sender<ApiCall>,
    notify: EventFd,
    epoll: Epoll,
    conns: HashMap<u64, Connection>,
    next_token: u64,
}

/// What to do with a connection after reading from it.
enum Next {
    Keep,
    Close,
}

impl Worker {
    fn register(&self) -> Result<(), ApiServerError> {
        let add = |fd, token| {
            self.epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(|e| ApiServerError::Io("an epoll registration", e))
        };
        add(self.listener.as_raw_fd(), TOKEN_LISTENER)?;
        add(self.shutdown.as_raw_fd(), TOKEN_SHUTDOWN)
    }

    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let n = match self.epoll.wait(1000, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("API thread: epoll failed: {e}");
                    return;
                }
            };
            for event in &events[..n] {
                match event.data() {
                    TOKEN_SHUTDOWN => return,
                    TOKEN_LISTENER => self.accept(),
                    token => {
                        if let Next::Close = self.serve(token) {
                            self.close(token);
                        }
                    }
                }
            }
            self.close_idle();
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("API thread: accept failed: {e}");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                let busy = ApiResponse::error(503, "Too many API connections.");
                let _ = write_response(&stream, &busy, true);
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("API thread: cannot use a connection: {e}");
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            let event = EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token);
            if let Err(e) = self
                .epoll
                .ctl(ControlOperation::Add, stream.as_raw_fd(), event)
            {
                log::warn!("API thread: cannot watch a connection: {e}");
                continue;
            }
            self.conns.insert(
                token,
                Connection {
                    stream,
                    buf: Vec::new(),
                    last_active: Instant::now(),
                    continue_sent: false,
                },
            );
        }
    }

    fn close(&mut self, token: u64) {
        if let Some(conn) = self.conns.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn close_idle(&mut self) {
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.last_active.elapsed() > IDLE_TIMEOUT)
            .map(|(&t, _)| t)
            .collect();
        for token in idle {
            if let Some(conn) = self.conns.get(&token) {
                let timeout = ApiResponse::error(408, "No complete request in time.");
                let _ = write_response(&conn.stream, &timeout, true);
            }
            self.close(token);
        }
    }

    /// Reads what the connection has, answers every complete request in it.
    fn serve(&mut self, token: u64) -> Next {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Next::Keep;
        };
        let mut eof = false;
        let mut chunk = [0u8; 4096];
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    conn.buf.extend_from_slice(&chunk[..n]);
                    if conn.buf.len() > http::MAX_HEAD + http::MAX_BODY {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Next::Close,
            }
        }
        conn.last_active = Instant::now();
        loop {
            let Some(conn) = self.conns.get_mut(&token) else {
                return Next::Close;
            };
            match http::parse_request(&conn.buf) {
                Parsed::Complete(request, used) => {
                    conn.buf.drain(..used);
                    conn.continue_sent = false;
                    let close = request.close || eof;
                    let response = self.dispatch(request);
                    let Some(conn) = self.conns.get(&token) else {
                        return Next::Close;
                    };
                    if write_response(&conn.stream, &response, close).is_err() || close {
                        return Next::Close;
                    }
                }
                Parsed::Incomplete { continue_needed } => {
                    if eof {
                        if !conn.buf.is_empty() {
                            let truncated = ApiResponse::bad_request("Truncated request.");
                            let _ = write_response(&conn.stream, &truncated, true);
                        }
                        return Next::Close;
                    }
                    if continue_needed && !conn.continue_sent {
                        conn.continue_sent = true;
                        if write_all(&conn.stream, http::CONTINUE).is_err() {
                            return Next::Close;
                        }
                    }
                    return Next::Keep;
                }
                Parsed::Error(response) => {
                    let _ = write_response(&conn.stream, &response, true);
                    return Next::Close;
                }
            }
        }
    }

    /// Routes a request and, when it needs the VM, waits for the main thread's answer.
    fn dispatch(&self, request: Request) -> ApiResponse {
        log::debug!("API: {} {}", request.method, request.target);
        let api_request = match route(&request.method, &request.target, &request.body) {
            Ok(r) => r,
            Err(response) => return response,
        };
        let (reply, answer) = channel();
        let call = ApiCall {
            request: api_request,
            reply,
        };
        if self.calls.send(call).is_err() {
            return ApiResponse::error(503, "The VM is shutting down.");
        }
        if let Err(e) = self.notify.write(1) {
            log::error!("API thread: cannot wake the event loop: {e}");
        }
        answer.recv_timeout(REPLY_TIMEOUT).unwrap_or_else(|_| {
            ApiResponse::error(503, "The VMM did not answer (it may be shutting down).")
        })
    }
}

fn write_all(mut stream: &UnixStream, bytes: &[u8]) -> std::io::Result<()> {
    // Responses are small; a blocking write with a timeout keeps this simple and bounded.
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let result = stream.write_all(bytes);
    stream.set_nonblocking(true)?;
    result
}

fn write_response(stream: &UnixStream, response: &ApiResponse, close: bool) -> std::io::Result<()> {
    write_all(stream, &http::format_response(response, close))
}
