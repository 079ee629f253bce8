//! The HTTP connection layer: accepting, limits, timeouts and graceful shutdown, on hyper.
//!
//! Two listeners share the runtime and the handlers: the public one (`--http-addr`) and the
//! admin one (`--admin-addr`), each with its own connection cap, so that a flood of the public
//! port cannot take the slots that `/metrics` and `/readyz` need.
//!
//! Everything a hostile or careless client can hold is bounded: the number of open connections
//! (`--http-max-connections`; the next one gets a 503 and is closed), the size of a request head
//! (`MAX_HEAD_BYTES`, else 431 or 414), the time to send a head, and the time a connection may
//! move no bytes either way (`--http-timeout`). Handlers run on their own small runtime, apart
//! from ingest, with their own PostgreSQL pool made on it, so reads never wait behind a batch and
//! batches never wait behind reads.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use color_eyre::eyre::{Result, WrapErr};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use super::{handle, AppState, Listener, Shared};
use crate::shutdown::{self, Shutdown, Trigger};
use crate::store::{Role, Store};

/// Largest request head (request line and headers) read; a larger one gets 431 (or 414 for the
/// request line alone) and the connection is closed. An order id is at most 64 characters.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
// hyper panics on a read buffer smaller than this.
const _: () = assert!(MAX_HEAD_BYTES >= 8192);
/// Most header fields in one request.
const MAX_HEADERS: usize = 64;
/// How long a failing `accept` (out of file descriptors, say) waits before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// File descriptors kept for everything but served HTTP connections (PostgreSQL, NATS, logs, and
/// connections being refused).
const FD_RESERVE: u64 = 256 + REFUSING_AT_ONCE as u64;
/// Connections over the limit being answered at once; beyond that they are closed unanswered.
const REFUSING_AT_ONCE: usize = 64;
/// Longest a refused connection is kept to answer it.
const LINGER: Duration = Duration::from_secs(1);
/// The whole answer to a connection over the limit.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
Content-Length: 37\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{\"error\":\"too many open connections\"}";

/// What a client may hold, and for how long.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Most connections open at once.
    pub(crate) max_connections: u32,
    /// Longest a client may take to send a request head, and longest a connection may move no
    /// bytes at all (an idle keep-alive, a client that stops reading its response).
    pub(crate) timeout: Duration,
}

/// Where one listener binds, and what its clients may hold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Endpoint {
    /// Port 0 picks a free port (see `HttpServer::local_addr`).
    pub(crate) addr: SocketAddr,
    pub(crate) limits: Limits,
}

/// The PostgreSQL servers the HTTP side reads (the database is already created and migrated).
#[derive(Clone, Copy)]
pub(crate) struct Databases<'a> {
    /// `--database-url`.
    pub(crate) primary: &'a str,
    /// `--database-read-url`, when it names another server.
    pub(crate) reads: Option<&'a str>,
}

/// A running HTTP server: the public listener and the admin one.
pub(crate) struct HttpServer {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: Trigger,
    /// Each listener's connection slots, and how many it has: all are taken back at shutdown.
    slots: Vec<(Arc<Semaphore>, u32)>,
    /// The handlers' pools, closed at shutdown while their runtime still runs.
    stores: Vec<Store>,
}

impl HttpServer {
    /// Binds both listeners and serves them on `workers` threads, reading `databases` through
    /// pools of the HTTP side's own.
    pub(crate) fn start(
        public: Endpoint,
        admin: Endpoint,
        workers: usize,
        databases: Databases<'_>,
        state: AppState,
    ) -> Result<HttpServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("http")
            .enable_all()
            .build()
            .wrap_err("cannot start the HTTP runtime")?;
        let bind = |addr: SocketAddr, what: &str| {
            listen(addr).wrap_err_with(|| format!("cannot listen on {addr} ({what})"))
        };
        let public_listener = bind(public.addr, "--http-addr")?;
        let admin_listener = bind(admin.addr, "--admin-addr")?;
        let addr = public_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let (public_listener, admin_listener, store, reads) = {
            let _in_runtime = runtime.enter();
            let register = |listener| {
                TcpListener::from_std(listener).wrap_err("cannot register an HTTP listener")
            };
            (
                register(public_listener)?,
                register(admin_listener)?,
                Store::open_pool(databases.primary, Role::Http)?,
                databases
                    .reads
                    .map(|url| Store::open_pool(url, Role::Http))
                    .transpose()?,
            )
        };
        // The admin listener's few connections come out of the descriptors kept in reserve for
        // everything else; the public one gets what the open-file limit affords.
        let public = Endpoint {
            limits: Limits {
                max_connections: affordable_connections(
                    public.limits.max_connections,
                    admin.limits.max_connections,
                ),
                ..public.limits
            },
            ..public
        };
        let (stop, stopping) = shutdown::channel();
        let shared = Arc::new(Shared {
            state,
            store: store.clone(),
            // Without a read URL the listings share the primary's pool.
            reads: reads.clone().unwrap_or_else(|| store.clone()),
        });
        let mut slots = Vec::new();
        for (listener, endpoint, which) in [
            (public_listener, public, Listener::Public),
            (admin_listener, admin, Listener::Admin),
        ] {
            let max = endpoint.limits.max_connections;
            let cap = match which {
                Listener::Public => &shared.state.metrics.http_max_connections,
                Listener::Admin => &shared.state.metrics.admin_max_connections,
            };
            cap.set(i64::from(max));
            let semaphore = Arc::new(Semaphore::new(max as usize));
            runtime.spawn(accept_loop(
                listener,
                semaphore.clone(),
                endpoint.limits,
                which,
                stopping.clone(),
                shared.clone(),
            ));
            slots.push((semaphore, max));
        }
        Ok(HttpServer {
            runtime,
            addr,
            admin_addr,
            stop,
            slots,
            // Each pool once: a shared one is closed once.
            stores: std::iter::once(store).chain(reads).collect(),
        })
    }

    /// The address actually bound (useful with port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address actually bound.
    pub(crate) fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub(crate) fn shutdown(self, wait: Duration) {
        // One deadline for every step, so that the whole stop stays within its share.
        let deadline = std::time::Instant::now() + wait;
        let left = || deadline.saturating_duration_since(std::time::Instant::now());
        self.stop.trigger();
        let drained = self.runtime.block_on(async {
            let all = futures::future::join_all(
                self.slots
                    .iter()
                    .map(|(slots, max)| slots.acquire_many(*max)),
            );
            tokio::time::timeout(left(), all).await
        });
        if drained.is_err() {
            warn!("some HTTP connections were still busy at shutdown; closing them");
        }
        let closed = self.runtime.block_on(async {
            let all = futures::future::join_all(self.stores.iter().map(Store::close));
            tokio::time::timeout(left(), all).await
        });
        if closed.is_err() {
            warn!("the HTTP side's PostgreSQL connections did not close in time; dropping them");
        }
        self.runtime.shutdown_timeout(left());
    }
}

/// A listening socket with TCP_NODELAY set, which Linux copies to every accepted connection
/// (without it, keep-alive responses over ~1 KB wait ~40 ms for Nagle's algorithm).
fn listen(addr: SocketAddr) -> io::Result<StdListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The public connection limit the process can keep beside `admin` admin connections: raises
/// the soft limit on open files towards the hard one if needed, and lowers the public limit
/// (with a warning) if even that is short.
fn affordable_connections(wanted: u32, admin: u32) -> u32 {
    let reserve = FD_RESERVE + u64::from(admin);
    let needed = u64::from(wanted) + reserve;
    match raise_open_file_limit(needed) {
        Ok(limit) if limit >= needed => wanted,
        Ok(limit) => {
            let affordable = u32::try_from(limit.saturating_sub(reserve).max(1)).unwrap_or(wanted);
            warn!(
                wanted,
                affordable,
                open_file_limit = limit,
                "the open-file limit is too low for --http-max-connections; using a lower limit"
            );
            affordable
        }
        Err(e) => {
            warn!(error = %e, "cannot read the open-file limit; keeping --http-max-connections");
            wanted
        }
    }
}

/// Raises RLIMIT_NOFILE's soft limit to `needed` (at most the hard limit); returns the new one.
fn raise_open_file_limit(needed: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur >= needed {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: needed.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Ok(limit.rlim_cur);
    }
    Ok(raised.rlim_cur)
}

async fn accept_loop(
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: Limits,
    which: Listener,
    stopping: Shutdown,
    shared: Arc<Shared>,
) {
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopping.requested() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors or memory, or a connection reset before it was taken:
                // never a reason to stop serving.
                warn!(error = %e, "cannot accept an HTTP connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(serve_connection(
                    stream,
                    slot,
                    limits,
                    which,
                    stopping.clone(),
                    shared.clone(),
                ));
            }
            Err(_) => {
                shared.state.metrics.http_connections_refused.inc();
                match refusing.clone().try_acquire_owned() {
                    Ok(slot) => {
                        tokio::spawn(refuse(stream, slot));
                    }
                    // Flooded: close at once, without the courtesy of an answer.
                    Err(_) => drop(stream),
                }
            }
        }
    }
}

/// Answers a connection over the limit with a 503, then closes it gently: a close with the
/// client's request still unread would reset the connection, and the client could lose the answer.
async fn refuse(mut stream: TcpStream, _slot: OwnedSemaphorePermit) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(LINGER, async {
        stream.write_all(REFUSAL).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

async fn serve_connection(
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    limits: Limits,
    which: Listener,
    stopping: Shutdown,
    shared: Arc<Shared>,
) {
    let metrics = shared.state.metrics.clone();
    let open = match which {
        Listener::Public => metrics.http_connections.clone(),
        Listener::Admin => metrics.admin_connections.clone(),
    };
    open.inc();
    let io = TokioIo::new(Watchdog::new(stream, limits.timeout));
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(request, which, &shared).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopping.requested() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() || is_stall(&e) {
            metrics.http_connections_timed_out.inc();
        }
        debug!(error = %e, "HTTP connection ended with an error");
    }
    open.dec();
}

fn is_stall(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
}

/// A connection that fails with `TimedOut` once it has moved no bytes, either way, for `timeout`.
///
/// hyper's header timeout covers a slow request head; this covers the rest: a client that stops
/// reading its response, or sends a body at a trickle. The deadline is pushed back lazily (only
/// when it fires after some progress), so the hot path never touches the timer: a stalled
/// connection is closed between one and two `timeout`s after its last byte.
struct Watchdog<S> {
    stream: S,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    moved: bool,
}

impl<S> Watchdog<S> {
    fn new(stream: S, timeout: Duration) -> Watchdog<S> {
        Watchdog {
            stream,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            moved: false,
        }
    }

    /// Called when the stream is not ready: fails once the deadline passes with nothing moved.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.deadline.as_mut().poll(cx));
            if !self.moved {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no bytes moved within the HTTP timeout",
                ));
            }
            self.moved = false;
            let next = Instant::now() + self.timeout;
            self.deadline.as_mut().reset(next);
        }
    }

    fn track<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.moved = true;
                Poll::Ready(result)
            }
            Poll::Pending => match self.check(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watchdog<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.track(cx, poll)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watchdog<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.track(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.track(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.track(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const T: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_moves_nothing_fails_after_the_timeout() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut guarded = Watchdog::new(ours, T);
        let started = Instant::now();
        let error = guarded.read_u8().await.expect_err("nothing ever arrives");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), T);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_peer_is_never_cut_off() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut guarded = Watchdog::new(ours, T);
        let peer = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(T / 2).await;
                theirs.write_all(b"x").await.expect("write");
            }
            theirs
        });
        for _ in 0..20 {
            assert_eq!(guarded.read_u8().await.expect("a byte in time"), b'x');
        }
        drop(peer.await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_is_cut_off_within_two_timeouts_of_its_last_read() {
        let (ours, mut theirs) = tokio::io::duplex(16);
        let mut guarded = Watchdog::new(ours, T);
        // It reads once, a while after the start, then never again.
        guarded
            .write_all(&[0; 16])
            .await
            .expect("the buffer takes it");
        tokio::time::sleep(T * 3 / 4).await;
        let mut first = [0u8; 16];
        theirs.read_exact(&mut first).await.expect("read");
        let last_read = Instant::now();
        let error = guarded
            .write_all(&[0; 1024])
            .await
            .expect_err("the peer reads no more");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let waited = last_read.elapsed();
        // Cut off at least one timeout after the last byte moved, and at most two.
        assert!(waited >= T && waited <= T * 2, "{waited:?}");
    }

    #[test]
    fn the_refusal_is_a_complete_response_with_a_json_body() {
        let text = std::str::from_utf8(REFUSAL).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .and_then(|n| n.parse::<usize>().ok());
        assert_eq!(length, Some(body.len()));
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert!(json["error"].is_string());
    }
}
