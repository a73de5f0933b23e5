//! The `ember_api` thread: a Unix-socket listener and its connections multiplexed with epoll,
//! so that a slow, silent or hostile client never holds up the others: reads and writes never
//! block, each request has a deadline from its first byte, a client that does not read its
//! answers is not sent more (nor read) until it does, and accept(2) failing for want of
//! descriptors backs off instead of spinning. Each complete request is routed
//! here; what needs the VM goes to the main thread over a channel plus an eventfd, and the
//! thread waits (bounded) for the answer.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
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

/// A connection with no request in progress and nothing to write for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A request must arrive whole within this time of its first byte (a client trickling bytes
/// does not extend it); else 408 and the connection is closed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the API thread waits for the main thread to answer one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that leaves its answers unread for this long (reading some does not extend it) is
/// closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// While this many answer bytes wait for a client, its further requests wait unread.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;
/// Most connections served at once; beyond it the connection idle the longest is closed, or
/// when none is idle the newcomer is answered 503.
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
    /// A process listens on the socket.
    #[error("api-sock: {0} is in use: another process listens on it")]
    InUse(PathBuf),
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
            ApiServerError::Exists(_) | ApiServerError::InUse(_) | ApiServerError::NoDirectory(_)
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
        if let Ok(meta) = path.symlink_metadata() {
            // A socket nobody listens on is what a killed Ember leaves (SIGKILL, a crash).
            if !meta.file_type().is_socket() {
                return Err(ApiServerError::Exists(path.to_owned()));
            }
            if someone_listens(path) {
                return Err(ApiServerError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(|e| ApiServerError::Bind(path.to_owned(), e))?;
            log::warn!(
                "Removed the stale API socket {} (no process listens on it)",
                path.display()
            );
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
            backoff: AcceptBackoff::default(),
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

/// How long the check for a live server at an existing socket path may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a process accepts connections on the socket at `path`. Only a refused connection
/// says no: a connection, a time-out (a live server whose backlog is full makes connect wait,
/// so the probe runs on a short-lived thread) or any other error leaves the file alone.
fn someone_listens(path: &Path) -> bool {
    let (tx, rx) = channel();
    let probe = path.to_owned();
    let spawned = std::thread::Builder::new()
        .name("ember_probe".into())
        .spawn(move || {
            let _ = tx.send(UnixStream::connect(probe).map(drop));
        });
    if spawned.is_err() {
        return true;
    }
    !matches!(
        rx.recv_timeout(PROBE_TIMEOUT),
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNREFUSED)
    )
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

/// One client. Reads, parsing and writes never block: a response the client has no room for
/// waits in `out` (and its further requests wait unread) while other connections are served.
struct Connection {
    stream: UnixStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
    /// Response bytes not yet written, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    /// When the first byte of the request being received arrived (the whole request must
    /// arrive within `REQUEST_TIMEOUT` of it, however it trickles in).
    request_started: Option<Instant>,
    /// Since when the connection has neither a request in progress nor output waiting.
    idle_since: Instant,
    /// Since when the client leaves written output unread (cleared once `out` drains).
    stalled_since: Option<Instant>,
    continue_sent: bool,
    /// The client shut down its sending side: answer what it sent, then close.
    eof: bool,
    /// Close once `out` is written.
    closing: bool,
    /// What epoll watches for this connection now.
    interest: EventSet,
}

impl Connection {
    fn new(stream: UnixStream) -> Self {
        Connection {
            stream,
            buf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            request_started: None,
            idle_since: Instant::now(),
            stalled_since: None,
            continue_sent: false,
            eof: false,
            closing: false,
            interest: EventSet::IN | EventSet::READ_HANG_UP,
        }
    }

    fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn answer(&mut self, response: &ApiResponse, close: bool) {
        self.queue(&http::format_response(response, close));
        if close {
            self.closing = true;
        }
    }

    /// Reads what the client sent, up to one request's worth beyond what is buffered.
    fn read_input(&mut self) -> Next {
        let mut chunk = [0u8; 4096];
        while self.buf.len() <= http::MAX_HEAD + http::max_body() {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    if self.buf.is_empty() && self.request_started.is_none() {
                        self.request_started = Some(Instant::now());
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        Next::Keep
    }

    /// Writes what the client has room for.
    fn write_output(&mut self) -> Next {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Next::Close,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.stalled_since.get_or_insert_with(Instant::now);
                    return Next::Keep;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        self.out.clear();
        self.out_pos = 0;
        self.stalled_since = None;
        Next::Keep
    }

    /// What epoll should watch: input while the connection takes requests and its output is
    /// not backed up, output while some waits.
    fn wanted_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if !self.eof && !self.closing && self.pending_out() < MAX_PENDING_OUTPUT {
            set |= EventSet::IN | EventSet::READ_HANG_UP;
        }
        if self.pending_out() > 0 {
            set |= EventSet::OUT;
        }
        set
    }

    /// Whether the connection is done: nothing more to read, parse or write.
    fn finished(&self) -> bool {
        self.pending_out() == 0 && (self.closing || (self.eof && self.buf.is_empty()))
    }

    /// Whether it is idle: connected, no request in progress and no output waiting.
    fn idle(&self) -> bool {
        self.request_started.is_none() && self.pending_out() == 0
    }
}

/// Accepting stops for this long when the process is out of descriptors (EMFILE, ENFILE) or
/// memory: retrying at once would spin, since the waiting connection stays queued.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);
/// At most one log line per this period about failing accepts.
const ACCEPT_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Why accept(2) keeps failing, and when it was last said.
#[derive(Default)]
struct AcceptBackoff {
    /// Accepting resumes at this time.
    until: Option<Instant>,
    last_log: Option<Instant>,
    unreported: u64,
}

impl AcceptBackoff {
    /// Notes one failure; returns the line to log, at most once per `ACCEPT_LOG_PERIOD`.
    fn fail(&mut self, error: &std::io::Error, now: Instant) -> Option<String> {
        self.until = Some(now + ACCEPT_BACKOFF);
        self.unreported += 1;
        if self
            .last_log
            .is_some_and(|last| now.duration_since(last) < ACCEPT_LOG_PERIOD)
        {
            return None;
        }
        self.last_log = Some(now);
        let count = std::mem::take(&mut self.unreported);
        Some(format!(
            "API: cannot accept connections: {error}; retrying every {} ms ({count} failure(s) since the last report)",
            ACCEPT_BACKOFF.as_millis()
        ))
    }
}

struct Worker {
    listener: UnixListener,
    shutdown: EventFd,
    calls: Sender<ApiCall>,
    notify: EventFd,
    epoll: Epoll,
    conns: HashMap<u64, Connection>,
    next_token: u64,
    backoff: AcceptBackoff,
}

/// What to do with a connection after serving it.
enum Next {
    Keep,
    Close,
}

/// Errors accept(2) reports while the host or process is out of resources.
fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
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
            let timeout = match self.backoff.until {
                Some(until) => until
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .clamp(1, 1000) as i32,
                None => 1000,
            };
            let n = match self.epoll.wait(timeout, &mut events) {
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
                    token => self.serve(token),
                }
            }
            self.resume_accepting(false);
            self.enforce_deadlines();
        }
    }

    /// Watches the listener again once the back-off is over (or at once with `now`, when a
    /// connection closed and gave back its descriptor).
    fn resume_accepting(&mut self, now: bool) {
        let Some(until) = self.backoff.until else {
            return;
        };
        if !now && Instant::now() < until {
            return;
        }
        self.backoff.until = None;
        let event = EpollEvent::new(EventSet::IN, TOKEN_LISTENER);
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Modify, self.listener.as_raw_fd(), event)
        {
            log::error!("API thread: cannot watch the listener again: {e}");
        }
    }

    fn pause_accepting(&mut self, error: &std::io::Error) {
        if let Some(line) = self.backoff.fail(error, Instant::now()) {
            log::warn!("{line}");
        }
        // Level-triggered: while the connection waits in the backlog the listener stays
        // readable, so it is not watched until the back-off ends.
        let event = EpollEvent::new(EventSet::empty(), TOKEN_LISTENER);
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Modify, self.listener.as_raw_fd(), event)
        {
            log::error!("API thread: cannot pause the listener: {e}");
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if is_exhaustion(&e) => {
                    self.pause_accepting(&e);
                    return;
                }
                Err(e) => {
                    log::warn!("API thread: accept failed: {e}");
                    return;
                }
            };
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("API thread: cannot use a connection: {e}");
                continue;
            }
            if self.conns.len() >= MAX_CONNECTIONS && !self.evict_idle() {
                let busy = ApiResponse::error(503, "Too many API connections.");
                // One non-blocking attempt: a full socket just misses the explanation.
                let _ = (&stream).write(&http::format_response(&busy, true));
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            let conn = Connection::new(stream);
            let event = EpollEvent::new(conn.interest, token);
            if let Err(e) = self
                .epoll
                .ctl(ControlOperation::Add, conn.stream.as_raw_fd(), event)
            {
                log::warn!("API thread: cannot watch a connection: {e}");
                continue;
            }
            self.conns.insert(token, conn);
        }
    }

    /// Makes room for a new client by closing the connection idle the longest; false when
    /// every connection is busy.
    fn evict_idle(&mut self) -> bool {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| c.idle())
            .min_by_key(|(_, c)| c.idle_since)
            .map(|(&t, _)| t);
        match oldest {
            Some(token) => {
                self.close(token);
                true
            }
            None => false,
        }
    }

    fn close(&mut self, token: u64) {
        if let Some(conn) = self.conns.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            // A descriptor is free again.
            self.resume_accepting(true);
        }
    }

    /// Closes connections past a deadline: a request not complete `REQUEST_TIMEOUT` after its
    /// first byte (408), output left unread for `WRITE_TIMEOUT`, or idle for `IDLE_TIMEOUT`.
    fn enforce_deadlines(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (&token, conn) in &mut self.conns {
            if conn
                .stalled_since
                .is_some_and(|t| now.duration_since(t) > WRITE_TIMEOUT)
            {
                expired.push(token);
            } else if !conn.closing
                && conn
                    .request_started
                    .is_some_and(|t| now.duration_since(t) > REQUEST_TIMEOUT)
            {
                log::debug!("API: closing a connection whose request did not arrive in time");
                let timeout = ApiResponse::error(408, "The request did not arrive in time.");
                conn.buf.clear();
                conn.request_started = None;
                conn.answer(&timeout, true);
                if let Next::Close = conn.write_output() {
                    expired.push(token);
                }
            } else if conn.idle()
                && !conn.closing
                && now.duration_since(conn.idle_since) > IDLE_TIMEOUT
            {
                let timeout = ApiResponse::error(408, "No request in time.");
                conn.answer(&timeout, true);
                let _ = conn.write_output();
                expired.push(token);
            }
        }
        for token in expired {
            self.close(token);
        }
        let done: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.finished())
            .map(|(&t, _)| t)
            .collect();
        for token in done {
            self.close(token);
        }
    }

    /// Reads, answers and writes what the connection allows, then watches it for what it
    /// needs next.
    fn serve(&mut self, token: u64) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let next = self.serve_connection(token, &mut conn);
        self.conns.insert(token, conn);
        if let Next::Close = next {
            self.close(token);
        }
    }

    fn serve_connection(&mut self, token: u64, conn: &mut Connection) -> Next {
        if conn.wanted_interest().contains(EventSet::IN)
            && let Next::Close = conn.read_input()
        {
            return Next::Close;
        }
        loop {
            if let Next::Close = conn.write_output() {
                return Next::Close;
            }
            // Requests already read are parsed only while the client takes its answers.
            if conn.closing || conn.pending_out() >= MAX_PENDING_OUTPUT || !self.answer_one(conn) {
                break;
            }
        }
        if conn.finished() {
            return Next::Close;
        }
        let wanted = conn.wanted_interest();
        if wanted != conn.interest {
            let event = EpollEvent::new(wanted, token);
            if self
                .epoll
                .ctl(ControlOperation::Modify, conn.stream.as_raw_fd(), event)
                .is_err()
            {
                return Next::Close;
            }
            conn.interest = wanted;
        }
        Next::Keep
    }

    /// Parses and answers the first request in the buffer; false when none is complete.
    fn answer_one(&mut self, conn: &mut Connection) -> bool {
        match http::parse_request(&conn.buf) {
            Parsed::Complete(request, used) => {
                conn.buf.drain(..used);
                conn.continue_sent = false;
                // A pipelined request already started arriving.
                conn.request_started = (!conn.buf.is_empty()).then(Instant::now);
                conn.idle_since = Instant::now();
                let close = request.close;
                let response = self.dispatch(request);
                conn.answer(&response, close);
                true
            }
            Parsed::Incomplete { continue_needed } => {
                if conn.eof {
                    if !conn.buf.is_empty() {
                        conn.buf.clear();
                        conn.answer(&ApiResponse::bad_request("Truncated request."), true);
                    }
                    conn.closing = true;
                } else if continue_needed && !conn.continue_sent {
                    conn.continue_sent = true;
                    conn.queue(http::CONTINUE);
                }
                false
            }
            Parsed::Error(response) => {
                conn.buf.clear();
                conn.answer(&response, true);
                false
            }
        }
    }

    /// Routes a request and, when it needs the VM, waits for the main thread's answer; counts
    /// it for the metrics.
    fn dispatch(&self, request: Request) -> ApiResponse {
        log::debug!("API: {} {}", request.method, request.target);
        let (method, target) = (request.method.clone(), request.target.clone());
        let response = self.answer_request(request);
        crate::metrics::count_api_request(&method, &target, response.status);
        response
    }

    fn answer_request(&self, request: Request) -> ApiResponse {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_accept_backoff_logs_once_per_period_with_count() {
        let mut backoff = AcceptBackoff::default();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let start = Instant::now();
        assert!(backoff.fail(&emfile, start).is_some());
        for i in 1..100 {
            assert_eq!(
                backoff.fail(&emfile, start + Duration::from_millis(i)),
                None
            );
        }
        let later = start + ACCEPT_LOG_PERIOD + Duration::from_millis(1);
        let line = backoff.fail(&emfile, later).expect("one line per period");
        assert!(line.contains("(100 failure(s)"), "{line}");
        assert_eq!(backoff.until, Some(later + ACCEPT_BACKOFF));
    }

    #[test]
    fn test_connection_with_backed_up_output_stops_reading() {
        let (stream, _peer) = UnixStream::pair().expect("socket pair");
        let mut conn = Connection::new(stream);
        assert!(conn.wanted_interest().contains(EventSet::IN));
        conn.queue(&vec![b'x'; MAX_PENDING_OUTPUT]);
        assert_eq!(conn.wanted_interest(), EventSet::OUT);
    }

    #[test]
    fn test_connection_half_closed_with_requests_left_is_not_finished() {
        let (stream, _peer) = UnixStream::pair().expect("socket pair");
        let mut conn = Connection::new(stream);
        conn.eof = true;
        conn.buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert!(!conn.finished());
        assert!(!conn.wanted_interest().contains(EventSet::IN));
        conn.buf.clear();
        assert!(conn.finished());
    }
}
