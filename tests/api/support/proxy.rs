//! A TCP proxy for fault injection: the service talks to PostgreSQL or NATS through it, and a
//! test cuts, black-holes or restores the path without touching the shared servers.
//!
//! Plain std threads: one accepting, two per connection (one each way). Every thread polls a stop
//! flag, and dropping the `Proxy` shuts every socket down and joins every thread.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often idle threads look at the stop flag and the mode.
const TICK: Duration = Duration::from_millis(20);
/// How long connecting to the target may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A peer that takes no bytes for this long is given up on (the connection is closed).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

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
    target: SocketAddr,
    stop: AtomicBool,
    accepted: AtomicU64,
    /// The mode and the open connections, under one lock so that `cut` cannot miss a
    /// connection that is being registered.
    state: Mutex<State>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

struct State {
    mode: Mode,
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
            target,
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            state: Mutex::new(State {
                mode: Mode::Open,
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
    if shared.mode() == Mode::Cut {
        return; // dropping it closes it
    }
    let Ok(upstream) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
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
    for (from, to) in [(client_reader, upstream), (upstream_reader, client)] {
        let shared = shared.clone();
        if let Ok(pump) = std::thread::Builder::new()
            .name("proxy-pump".into())
            .spawn(move || pump_bytes(from, to, &shared))
        {
            pumps.push(pump);
        }
    }
}

/// Copies `from` to `to` until either side closes, the connection is cut, or the proxy stops.
fn pump_bytes(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    'copy: while !shared.stopping() {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        loop {
            match shared.mode() {
                Mode::Open => break,
                Mode::Cut => break 'copy,
                Mode::Blackhole if shared.stopping() => break 'copy,
                Mode::Blackhole => std::thread::sleep(TICK),
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // Either way ends the whole connection: PostgreSQL and NATS never half-close.
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
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
