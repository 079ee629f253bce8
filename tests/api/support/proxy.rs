//! A TCP proxy for fault injection: the service talks to PostgreSQL or NATS through it, and a
//! test cuts, black-holes or restores the path without touching the shared servers, sends new
//! connections to another server while the open ones stay where they are (a DNS name moved to a
//! new primary), or cuts a PostgreSQL connection right after the server got its COMMIT, so that
//! the client cannot know whether the transaction was committed (it was).
//!
//! Plain std threads: one accepting, two per connection (one each way). Every thread polls a stop
//! flag, and dropping the `Proxy` shuts every socket down and joins every thread.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often idle threads look at the stop flag and the mode.
const TICK: Duration = Duration::from_millis(20);
/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A peer that takes no bytes for this long is given up on (the connection is closed).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cut COMMIT waits for the server's answer before the connection is cut anyway.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// What the proxy does with traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Forwards both ways.
    Open,
    /// Every connection is closed at once, and new ones are closed as soon as they are accepted.
    Cut,
    /// Connections are accepted and kept, but no byte moves either way until `restore`: a
    /// network partition that heals without resetting anything.
    Blackhole,
}

/// A running proxy from `addr()` to a target.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    accepted: AtomicU64,
    /// Set by `cut_next_commit`, taken by the first connection that sends a COMMIT.
    commit_cut_armed: AtomicBool,
    /// Connections cut after their COMMIT so far.
    commits_cut: AtomicU64,
    /// The mode and the open connections, under one lock so that `cut` cannot miss a
    /// connection that is being registered.
    state: Mutex<State>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

struct State {
    mode: Mode,
    /// Where new connections go.
    target: SocketAddr,
    /// Both sockets of every open connection (clones, to shut them down from here).
    connections: Vec<(TcpStream, TcpStream)>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: cannot listen");
        listener
            .set_nonblocking(true)
            .expect("proxy: cannot make the listener non-blocking");
        let addr = listener.local_addr().expect("proxy: no local address");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            commit_cut_armed: AtomicBool::new(false),
            commits_cut: AtomicU64::new(0),
            state: Mutex::new(State {
                mode: Mode::Open,
                target,
                connections: Vec::new(),
            }),
            pumps: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("proxy: cannot start the accepting thread")
        };
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections were accepted so far (also while cut).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Acquire)
    }

    /// Closes every current connection; new ones are closed as soon as they are accepted, until
    /// `restore`.
    pub fn cut(&self) {
        let mut state = self.shared.state();
        state.mode = Mode::Cut;
        close_all(&mut state.connections);
    }

    /// Stops moving bytes on every connection, current and new, without closing anything, until
    /// `restore` (bytes held meanwhile are delivered then).
    pub fn blackhole(&self) {
        self.shared.state().mode = Mode::Blackhole;
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.shared.state().mode = Mode::Open;
    }

    /// Sends new connections to `target`; the open ones stay with the server they reached, as
    /// a client's pooled connections do when a DNS name moves to another server.
    pub fn retarget(&self, target: SocketAddr) {
        self.shared.state().target = target;
    }

    /// Arms a one-time cut: the next PostgreSQL connection (on any connection, current or new)
    /// that sends COMMIT as a simple query, as sqlx does, has it forwarded to the server, and is
    /// cut once the server has answered, before the answer reaches the client. The transaction is
    /// then committed (or not, as the server decided), and the client cannot know which.
    /// Every connection's client half is followed from its first byte, so connections opened
    /// before this call are watched too. A connection that negotiated TLS cannot be read: give
    /// the client `sslmode=disable`.
    pub fn cut_next_commit(&self) {
        self.shared.commit_cut_armed.store(true, Ordering::Release);
    }

    /// How many connections were cut after their COMMIT so far.
    pub fn commits_cut(&self) -> u64 {
        self.shared.commits_cut.load(Ordering::Acquire)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        close_all(&mut self.shared.state().connections);
        let pumps =
            std::mem::take(&mut *self.shared.pumps.lock().unwrap_or_else(|e| e.into_inner()));
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking pump cannot leave the plain data inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mode(&self) -> Mode {
        self.state().mode
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

fn close_all(connections: &mut Vec<(TcpStream, TcpStream)>) {
    // Shutting a socket down also wakes the pump threads blocked on it.
    for (client, upstream) in connections.drain(..) {
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::AcqRel);
                connect(client, shared);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(_) => std::thread::sleep(TICK),
        }
    }
}

/// Joins an accepted client to a new connection to the target (or closes it, while cut).
fn connect(client: TcpStream, shared: &Arc<Shared>) {
    let target = {
        let state = shared.state();
        if state.mode == Mode::Cut {
            return; // dropping it closes it
        }
        state.target
    };
    let Ok(upstream) = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) else {
        return;
    };
    let mut state = shared.state();
    if state.mode == Mode::Cut {
        return;
    }
    let sockets = (|| {
        for socket in [&client, &upstream] {
            socket.set_nonblocking(false)?;
            socket.set_nodelay(true)?;
            socket.set_read_timeout(Some(TICK))?;
            socket.set_write_timeout(Some(WRITE_TIMEOUT))?;
        }
        Ok::<_, std::io::Error>((
            client.try_clone()?,
            upstream.try_clone()?,
            client.try_clone()?,
            upstream.try_clone()?,
        ))
    })();
    let Ok((client_reader, upstream_reader, client_kept, upstream_kept)) = sockets else {
        return;
    };
    state.connections.push((client_kept, upstream_kept));
    drop(state);
    let mut pumps = shared.pumps.lock().unwrap_or_else(|e| e.into_inner());
    // Forget the pumps that are done, so that a long test does not keep every handle.
    pumps.retain(|pump| !pump.is_finished());
    let link = Arc::new(Link::default());
    for (from, to, way) in [
        (client_reader, upstream, Way::ToServer),
        (upstream_reader, client, Way::ToClient),
    ] {
        let (shared, link) = (shared.clone(), link.clone());
        if let Ok(pump) = std::thread::Builder::new()
            .name("proxy-pump".into())
            .spawn(move || pump_bytes(from, to, way, &shared, &link))
        {
            pumps.push(pump);
        }
    }
}

/// Which way a pump copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    ToServer,
    ToClient,
}

/// What the two pumps of one connection tell each other, for `cut_next_commit`.
#[derive(Debug, Default)]
struct Link {
    /// The client's COMMIT is on its way to the server: no answer may reach the client now.
    hold_answers: AtomicBool,
    /// The server answered while answers were held: the transaction's fate is decided.
    answer_held: AtomicBool,
}

/// Copies `from` to `to` until either side closes, the connection is cut, or the proxy stops.
fn pump_bytes(mut from: TcpStream, mut to: TcpStream, way: Way, shared: &Shared, link: &Link) {
    let mut buf = vec![0u8; 64 * 1024];
    // Only the client's half is followed: that is where a COMMIT shows.
    let mut frontend = (way == Way::ToServer).then(Frontend::default);
    'copy: while !shared.stopping() {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if way == Way::ToClient && link.hold_answers.load(Ordering::Acquire) {
            link.answer_held.store(true, Ordering::Release);
            continue;
        }
        loop {
            match shared.mode() {
                Mode::Open => break,
                Mode::Cut => break 'copy,
                Mode::Blackhole if shared.stopping() => break 'copy,
                Mode::Blackhole => std::thread::sleep(TICK),
            }
        }
        let commit_end = frontend.as_mut().and_then(|f| f.feed(&buf[..n]));
        let cut_after =
            commit_end.filter(|_| shared.commit_cut_armed.swap(false, Ordering::AcqRel));
        if cut_after.is_some() {
            // Before the COMMIT leaves, so that no byte of its answer can slip through.
            link.hold_answers.store(true, Ordering::Release);
        }
        // A client sends nothing after its COMMIT until it is answered: nothing is lost here.
        if to.write_all(&buf[..cut_after.unwrap_or(n)]).is_err() {
            break;
        }
        if cut_after.is_some() {
            let deadline = Instant::now() + ANSWER_WAIT;
            while !link.answer_held.load(Ordering::Acquire) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            shared.commits_cut.fetch_add(1, Ordering::AcqRel);
            break;
        }
    }
    // Either way ends the whole connection: PostgreSQL and NATS never half-close.
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// The COMMIT that sqlx sends to end a transaction: a simple query ('Q', then the length, which
/// counts itself, then the text with its NUL).
const COMMIT_TEXT: &[u8] = b"COMMIT\0";
/// The request codes of the untyped messages a client may send before its StartupMessage.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Follows what a PostgreSQL client sends, message by message, to find a COMMIT. The first
/// messages have no type byte (an SSLRequest or GSSENCRequest, then the StartupMessage); after a
/// request the server accepted, the rest is encrypted and nothing more is found.
#[derive(Debug, Default)]
struct Frontend {
    /// Past the StartupMessage: each message starts with a type byte.
    typed: bool,
    /// Encryption was negotiated.
    opaque: bool,
    /// The last message asked for encryption: what follows is a handshake or, if the server
    /// refused, the StartupMessage.
    asked_for_encryption: bool,
    /// The current message's header so far (type byte and length, or the length alone).
    header: Vec<u8>,
    /// The current message's type (`None` for an untyped one).
    kind: Option<u8>,
    /// Bytes of the current message's body still to come; 0 between messages.
    remaining: usize,
    /// The current message's body so far, kept only while it may be a COMMIT, or an untyped
    /// message's code.
    body: Option<Vec<u8>>,
}

impl Frontend {
    /// Takes the client's next bytes; returns where the first COMMIT among them ends.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut found = None;
        let mut at = 0;
        while at < bytes.len() && !self.opaque {
            if self.remaining == 0 {
                if self.header.is_empty() && std::mem::take(&mut self.asked_for_encryption) {
                    self.opaque = bytes[at] == TLS_HANDSHAKE;
                    if self.opaque {
                        break;
                    }
                }
                self.header.push(bytes[at]);
                at += 1;
                let header_len = if self.typed { 5 } else { 4 };
                if self.header.len() < header_len {
                    continue;
                }
                let length = self.header[header_len - 4..]
                    .try_into()
                    .map_or(0, u32::from_be_bytes);
                self.kind = self.typed.then(|| self.header[0]);
                self.header.clear();
                self.remaining = usize::try_from(length)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(4);
                let may_be_commit = self.kind == Some(b'Q') && self.remaining == COMMIT_TEXT.len();
                self.body = (self.kind.is_none() || may_be_commit).then(Vec::new);
            } else {
                let take = self.remaining.min(bytes.len() - at);
                if let Some(body) = &mut self.body {
                    // An untyped message's code is its first 4 bytes; a COMMIT is 7 in all.
                    let keep = take.min(COMMIT_TEXT.len().saturating_sub(body.len()));
                    body.extend_from_slice(&bytes[at..at + keep]);
                }
                at += take;
                self.remaining -= take;
            }
            if self.remaining == 0 && self.header.is_empty() {
                let body = self.body.take();
                match self.kind.take() {
                    Some(_) => {
                        if body.as_deref() == Some(COMMIT_TEXT) && found.is_none() {
                            found = Some(at);
                        }
                    }
                    None => {
                        let code = body
                            .as_deref()
                            .and_then(|b| b.get(..4))
                            .and_then(|c| c.try_into().ok())
                            .map(u32::from_be_bytes);
                        match code {
                            Some(SSL_REQUEST | GSSENC_REQUEST) => self.asked_for_encryption = true,
                            _ => self.typed = true,
                        }
                    }
                }
            }
        }
        found
    }
}

/// An echo server on a free port, for as long as the test runs.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn round_trip(conn: &mut TcpStream, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    conn.write_all(bytes)?;
    let mut back = vec![0u8; bytes.len()];
    conn.read_exact(&mut back)?;
    Ok(back)
}

fn client(proxy: &Proxy) -> TcpStream {
    let conn = TcpStream::connect(proxy.addr()).expect("connect to the proxy");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    conn
}

#[test]
fn the_proxy_forwards_cuts_holds_and_restores() {
    let proxy = Proxy::start(echo_server());

    let mut conn = client(&proxy);
    assert_eq!(round_trip(&mut conn, b"hello").expect("open"), b"hello");

    proxy.cut();
    assert!(
        round_trip(&mut conn, b"again").is_err(),
        "a cut closes the connections that were open"
    );
    let mut during = client(&proxy);
    assert!(
        round_trip(&mut during, b"new").is_err(),
        "a cut closes new connections"
    );

    proxy.restore();
    let mut after = client(&proxy);
    assert_eq!(round_trip(&mut after, b"back").expect("restored"), b"back");

    proxy.blackhole();
    after.write_all(b"held").expect("write while black-holed");
    after
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    let mut buf = [0u8; 4];
    assert!(
        after.read_exact(&mut buf).is_err(),
        "nothing moves while black-holed"
    );
    proxy.restore();
    after
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    after.read_exact(&mut buf).expect("held bytes arrive");
    assert_eq!(&buf, b"held");
    assert_eq!(proxy.accepted(), 3);
}

/// A server on a free port that greets every connection with `tag` and then echoes: tells which
/// server a connection reached.
fn tagged_echo_server(tag: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                if conn.write_all(tag).is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The greeting of a server from `tagged_echo_server`.
fn greeting(conn: &mut TcpStream) -> [u8; 1] {
    let mut tag = [0u8; 1];
    conn.read_exact(&mut tag).expect("the server's greeting");
    tag
}

#[test]
fn a_retargeted_proxy_sends_new_connections_to_the_new_server_and_keeps_the_old_ones() {
    let proxy = Proxy::start(tagged_echo_server(b"A"));
    let mut old = client(&proxy);
    assert_eq!(&greeting(&mut old), b"A");

    proxy.retarget(tagged_echo_server(b"B"));

    let mut new = client(&proxy);
    assert_eq!(&greeting(&mut new), b"B", "a new connection reaches B");
    assert_eq!(
        round_trip(&mut old, b"still A").expect("the old connection is open"),
        b"still A"
    );
    assert_eq!(
        round_trip(&mut new, b"on B").expect("the new one works"),
        b"on B"
    );
}

/// A PostgreSQL frontend message: its type, its length (which counts itself) and its body.
fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let length = u32::try_from(body.len() + 4).expect("a short message");
    [&[kind][..], &length.to_be_bytes(), body].concat()
}

/// An untyped message (the StartupMessage and the requests before it): length, code, rest.
fn untyped(code: u32, rest: &[u8]) -> Vec<u8> {
    let length = u32::try_from(rest.len() + 8).expect("a short message");
    [&length.to_be_bytes()[..], &code.to_be_bytes(), rest].concat()
}

/// What sqlx sends to start a session in plaintext: an SSLRequest (refused by the server), then
/// the StartupMessage of protocol 3.0.
fn session_start() -> Vec<u8> {
    let startup = untyped(196_608, b"user\0ordersvc\0database\0orders\0\0");
    [untyped(SSL_REQUEST, b""), startup].concat()
}

#[test]
fn the_frontend_finds_a_commit_as_a_simple_query_wherever_the_reads_split_it() {
    let before = [
        session_start(),
        message(b'p', b"SCRAM-SHA-256\0..."),
        message(b'Q', b"BEGIN\0"),
        // An extended query whose text and parameter hold the very bytes of a COMMIT.
        message(b'P', b"\0INSERT INTO t VALUES ($1) -- COMMIT\0\0\0"),
        message(b'B', b"\0\0\0\0\0\x01\0\0\0\x07COMMIT\0\0\0"),
        message(b'S', b""),
        message(b'Q', b"SELECT 'COMMIT'\0"),
    ]
    .concat();
    let commit = message(b'Q', COMMIT_TEXT);
    let stream = [before.clone(), commit.clone(), message(b'X', b"")].concat();

    let mut whole = Frontend::default();
    assert_eq!(whole.feed(&stream), Some(before.len() + commit.len()));

    for chunk in [1, 2, 3, 5, 7, 11] {
        let mut frontend = Frontend::default();
        let mut found = None;
        for (i, piece) in stream.chunks(chunk).enumerate() {
            if let Some(end) = frontend.feed(piece) {
                assert!(found.is_none(), "one COMMIT, found twice");
                found = Some(i * chunk + end);
            }
        }
        assert_eq!(
            found,
            Some(before.len() + commit.len()),
            "chunks of {chunk}"
        );
    }
}

#[test]
fn the_frontend_gives_up_once_the_session_is_encrypted() {
    // The server accepted the SSLRequest: a TLS handshake follows, whatever bytes it carries.
    let stream = [
        untyped(SSL_REQUEST, b""),
        vec![TLS_HANDSHAKE, 3, 1],
        message(b'Q', COMMIT_TEXT),
    ]
    .concat();
    assert_eq!(Frontend::default().feed(&stream), None);
}

/// An echo server that also keeps every byte it received, for as long as the test runs.
fn recording_echo_server() -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = received.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    kept.lock()
                        .expect("not poisoned")
                        .extend_from_slice(&buf[..n]);
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

#[test]
fn a_commit_cut_reaches_the_server_never_answers_the_client_and_happens_once() {
    // The echo stands for PostgreSQL's answer.
    let (server, received) = recording_echo_server();
    let proxy = Proxy::start(server);
    let commit = message(b'Q', COMMIT_TEXT);
    let mut conn = client(&proxy);
    let begin = [session_start(), message(b'Q', b"BEGIN\0")].concat();
    assert_eq!(round_trip(&mut conn, &begin).expect("open"), begin);

    proxy.cut_next_commit();
    conn.write_all(&commit).expect("send the COMMIT");
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "the client got an answer to its COMMIT: {answer:?}"
    );
    assert_eq!(proxy.commits_cut(), 1);
    assert!(
        received.lock().expect("not poisoned").ends_with(&commit),
        "the server did not get the COMMIT"
    );

    let mut next = client(&proxy);
    let again = [session_start(), commit].concat();
    assert_eq!(
        round_trip(&mut next, &again).expect("the next COMMIT is answered"),
        again,
        "the cut happens once"
    );
    assert_eq!(proxy.commits_cut(), 1);
}
