//! A minimal HTTP/1.1 keep-alive client for the benchmarks, over `std::net::TcpStream`.
//!
//! Why its own: on 2 cores the load generator shares the CPU with the server it measures, so the
//! client's cost per request is part of every number. This one sends each request as one
//! pre-formatted write with TCP_NODELAY set (so Nagle's algorithm never delays it), reads into a
//! buffer that is reused from request to request, and parses only what it needs: the status, the
//! framing headers and `Connection`. It handles `Content-Length`, `Transfer-Encoding: chunked`
//! and bodies delimited by the end of the connection; a connection is re-opened after
//! `Connection: close` or any error.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use color_eyre::eyre::{bail, eyre, Result, WrapErr};

/// Largest response accepted (headers and body): far beyond any order, small enough to be safe.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Largest response head (status line and headers).
const MAX_HEAD: usize = 64 * 1024;
/// Initial size of a connection's read buffer: one read takes a typical order whole.
const INITIAL_BUFFER: usize = 32 * 1024;

/// Where the service is: the address to connect to and the `Host` header to send.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    addr: SocketAddr,
    host: String,
    url: String,
}

impl Target {
    /// Parses an `http://host[:port][/]` URL and resolves the host once.
    pub(crate) fn parse(url: &str) -> Result<Target> {
        let rest = match url.strip_prefix("http://") {
            Some(rest) => rest,
            None if url.starts_with("https://") => {
                bail!("{url}: https is not supported, the benchmark speaks plain HTTP")
            }
            None => bail!("{url}: expected a URL like http://127.0.0.1:8080"),
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !path.is_empty() && path != "/" {
            bail!("{url}: a path is not supported, give the service's base URL");
        }
        if authority.is_empty() {
            bail!("{url}: no host");
        }
        // `host`, `host:port`, `[v6]` or `[v6]:port`: a port follows the last colon outside brackets.
        let has_port = match authority.rfind(']') {
            Some(end) => authority[end..].contains(':'),
            None => authority.contains(':'),
        };
        let with_port = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .wrap_err_with(|| format!("{url}: cannot resolve {with_port}"))?
            .next()
            .ok_or_else(|| eyre!("{url}: {with_port} resolves to no address"))?;
        Ok(Target {
            addr,
            host: authority.to_owned(),
            url: url.trim_end_matches('/').to_owned(),
        })
    }

    /// The resolved socket address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, without a trailing slash (for messages).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The complete bytes of a `GET` for `path` (which must already be URL-safe).
    pub(crate) fn get(&self, path: &str) -> Box<[u8]> {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ordersvc-bench\r\nAccept: */*\r\n\r\n",
            self.host
        )
        .into_bytes()
        .into_boxed_slice()
    }
}

/// What a request got back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// Body bytes (after removing chunked framing).
    pub body_len: usize,
}

/// Why a request got no reply. The texts are stable (no addresses or byte counts), so that the
/// report's error set lists each kind of failure once.
#[derive(Debug)]
pub(crate) enum ClientError {
    /// The TCP connection could not be opened.
    Connect(io::Error),
    /// Writing the request failed.
    Send(io::Error),
    /// Reading the response failed.
    Receive(io::Error),
    /// No complete response within the timeout.
    Timeout(Duration),
    /// The server closed the connection before the response was complete.
    Closed,
    /// The bytes are not an HTTP/1.x response this client understands.
    Malformed(&'static str),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "connect: {e}"),
            ClientError::Send(e) => write!(f, "send: {e}"),
            ClientError::Receive(e) => write!(f, "receive: {e}"),
            ClientError::Timeout(d) => write!(f, "timeout: no complete response within {d:?}"),
            ClientError::Closed => {
                f.write_str("the server closed the connection before the response was complete")
            }
            ClientError::Malformed(what) => write!(f, "malformed response: {what}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// One keep-alive connection (opened on first use, re-opened after a close or an error).
pub(crate) struct Client {
    addr: SocketAddr,
    timeout: Duration,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    filled: usize,
}

impl Client {
    /// A client for `addr`; `timeout` bounds connecting and each request.
    pub(crate) fn new(addr: SocketAddr, timeout: Duration) -> Client {
        Client {
            addr,
            timeout,
            stream: None,
            buf: vec![0; INITIAL_BUFFER],
            filled: 0,
        }
    }

    /// Opens the connection now, so that the first request does not pay for it.
    pub(crate) fn connect(&mut self) -> Result<(), ClientError> {
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, self.timeout)
                .map_err(ClientError::Connect)?;
            // Without NODELAY a small request can wait for the previous segment's ACK (~40 ms).
            stream.set_nodelay(true).map_err(ClientError::Connect)?;
            stream
                .set_read_timeout(Some(self.timeout))
                .map_err(ClientError::Connect)?;
            stream
                .set_write_timeout(Some(self.timeout))
                .map_err(ClientError::Connect)?;
            self.stream = Some(stream);
        }
        Ok(())
    }

    /// Sends one request (complete bytes) and reads the whole response. With `body`, the body
    /// (de-chunked) is appended to it; otherwise it is only counted.
    ///
    /// A kept-alive connection that the server closed while idle fails before any byte of the
    /// response arrives; such a request is sent once more on a new connection, as browsers do.
    pub(crate) fn request(
        &mut self,
        request: &[u8],
        mut body: Option<&mut Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let reused = self.stream.is_some();
        match self.attempt(request, body.as_deref_mut()) {
            Err(e) if reused && self.filled == 0 && is_stale(&e) => self.attempt(request, body),
            result => result,
        }
    }

    fn attempt(
        &mut self,
        request: &[u8],
        body: Option<&mut Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        self.filled = 0;
        self.connect()?;
        let result = self.exchange(request, body);
        if !matches!(result, Ok((_, true))) {
            // After `Connection: close` or any error the connection's state is unknown: drop it.
            self.stream = None;
        }
        result.map(|(reply, _)| reply)
    }

    /// One request and response on the open connection; also says whether it may be kept.
    fn exchange(
        &mut self,
        request: &[u8],
        body: Option<&mut Vec<u8>>,
    ) -> Result<(Reply, bool), ClientError> {
        let deadline = Instant::now() + self.timeout;
        let Some(stream) = self.stream.as_mut() else {
            return Err(ClientError::Closed);
        };
        stream.write_all(request).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Timeout(self.timeout)
            }
            _ => ClientError::Send(e),
        })?;
        let head = loop {
            if let Some(head) =
                parse_head(&self.buf[..self.filled]).map_err(ClientError::Malformed)?
            {
                break head;
            }
            if self.filled > MAX_HEAD {
                return Err(ClientError::Malformed(
                    "response headers larger than 64 KiB",
                ));
            }
            self.read_more(deadline)?;
        };
        let (body_range, body_len) = match head.framing {
            Framing::Empty => (head.len..head.len, 0),
            Framing::Length(n) => {
                let end = usize::try_from(n)
                    .ok()
                    .and_then(|n| n.checked_add(head.len))
                    .filter(|&end| end <= MAX_RESPONSE)
                    .ok_or(ClientError::Malformed("Content-Length larger than 64 MiB"))?;
                while self.filled < end {
                    self.read_more(deadline)?;
                }
                (head.len..end, end - head.len)
            }
            Framing::Chunked => loop {
                match chunked_len(&self.buf[head.len..self.filled], None)
                    .map_err(ClientError::Malformed)?
                {
                    Some((used, len)) => break (head.len..head.len + used, len),
                    None => self.read_more(deadline)?,
                }
            },
            Framing::UntilClose => {
                loop {
                    match self.read_more(deadline) {
                        Ok(()) => {}
                        Err(ClientError::Closed) => break,
                        Err(e) => return Err(e),
                    }
                }
                (head.len..self.filled, self.filled - head.len)
            }
        };
        if body_range.end != self.filled {
            // Nothing was pipelined, so anything after the response is a protocol error.
            return Err(ClientError::Malformed(
                "bytes after the end of the response",
            ));
        }
        if let Some(out) = body {
            let raw = &self.buf[body_range];
            if head.framing == Framing::Chunked {
                chunked_len(raw, Some(out)).map_err(ClientError::Malformed)?;
            } else {
                out.extend_from_slice(raw);
            }
        }
        let reply = Reply {
            status: head.status,
            body_len,
        };
        Ok((reply, !head.close && head.framing != Framing::UntilClose))
    }

    /// Reads at least one more byte into the buffer, growing it when full.
    fn read_more(&mut self, deadline: Instant) -> Result<(), ClientError> {
        if self.filled == self.buf.len() {
            if self.buf.len() >= MAX_RESPONSE {
                return Err(ClientError::Malformed("response larger than 64 MiB"));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(ClientError::Closed);
        };
        loop {
            // The socket's read timeout bounds each read; the deadline bounds the whole response
            // (checked between reads, so a server trickling bytes is caught within one more timeout).
            if Instant::now() > deadline {
                return Err(ClientError::Timeout(self.timeout));
            }
            match stream.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => {
                    self.filled += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ClientError::Timeout(self.timeout))
                }
                Err(e) => return Err(ClientError::Receive(e)),
            }
        }
    }
}

/// A failure that a request on a connection closed while idle meets before any response byte.
fn is_stale(e: &ClientError) -> bool {
    match e {
        ClientError::Closed => true,
        ClientError::Send(e) | ClientError::Receive(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
        ),
        _ => false,
    }
}

/// How the body of a response ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body (204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// No length given: the body runs until the server closes the connection.
    UntilClose,
}

/// The parsed status line and headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    /// Bytes of the status line and headers, including the blank line.
    len: usize,
    framing: Framing,
    /// The server will close the connection after this response.
    close: bool,
}

/// Parses a response head, or `None` while the blank line that ends it has not arrived.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, &'static str> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let (version, rest) = status_line.split_once(' ').ok_or("no status line")?;
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err("not an HTTP/1.x status line"),
    };
    let code = rest.get(..3).ok_or("no status code")?;
    let status: u16 = code
        .parse()
        .ok()
        .filter(|s| (100..1000).contains(s))
        .ok_or("the status code is not three digits")?;
    if (100..200).contains(&status) {
        // No request here asks for one (no `Expect`, no upgrade).
        return Err("unexpected 1xx response");
    }
    let mut length = None;
    let mut chunked = false;
    // HTTP/1.0 closes unless told otherwise; HTTP/1.1 keeps alive unless told otherwise.
    let mut close = http10;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or("a header line without a colon")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| "an invalid Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length headers");
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            if !last.eq_ignore_ascii_case("chunked") || value.contains(',') {
                return Err("a Transfer-Encoding other than chunked");
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    let framing = if status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        // RFC 9112 §6.3: chunked wins over Content-Length.
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Some(Head {
        status,
        len: end + 4,
        framing,
        close,
    }))
}

/// Measures a chunked body at the start of `data`: `Some((bytes used, body length))` once its
/// last chunk and trailers are complete, `None` while more must be read. With `out`, the decoded
/// body is appended to it (call it so only once the body is known to be complete).
fn chunked_len(
    data: &[u8],
    mut out: Option<&mut Vec<u8>>,
) -> Result<Option<(usize, usize)>, &'static str> {
    let mut at = 0;
    let mut total = 0usize;
    loop {
        let Some(line_len) = find(&data[at..], b"\r\n") else {
            return Ok(None);
        };
        let line =
            std::str::from_utf8(&data[at..at + line_len]).map_err(|_| "a bad chunk size line")?;
        // A chunk extension (`;name=value`) may follow the size; it is ignored.
        let hex = line.split(';').next().unwrap_or_default().trim();
        if hex.is_empty() || hex.len() > 15 {
            return Err("a bad chunk size");
        }
        let size = usize::from_str_radix(hex, 16).map_err(|_| "a bad chunk size")?;
        at += line_len + 2;
        if size == 0 {
            // Trailer fields, then a blank line.
            loop {
                let Some(len) = find(&data[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += len + 2;
                if len == 0 {
                    return Ok(Some((at, total)));
                }
            }
        }
        total = total
            .checked_add(size)
            .filter(|&t| t <= MAX_RESPONSE)
            .ok_or("a chunked body larger than 64 MiB")?;
        let end = at + size;
        if data.len() < end + 2 {
            return Ok(None);
        }
        if &data[end..end + 2] != b"\r\n" {
            return Err("a chunk not followed by CRLF");
        }
        if let Some(out) = out.as_deref_mut() {
            out.extend_from_slice(&data[at..end]);
        }
        at = end + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn a_content_length_response_is_framed_by_its_length() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        let head = parse_head(raw).expect("valid").expect("complete");
        assert_eq!(head.status, 200);
        assert_eq!(head.framing, Framing::Length(2));
        assert_eq!(head.len, raw.len() - 2);
        assert!(!head.close);
    }

    #[test]
    fn an_incomplete_head_asks_for_more_bytes() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
    }

    #[test]
    fn connection_close_and_http10_end_the_connection() {
        let close =
            parse_head(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(close.expect("valid").expect("complete").close);
        let old = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(old.expect("valid").expect("complete").close);
        let kept =
            parse_head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n");
        assert!(!kept.expect("valid").expect("complete").close);
    }

    #[test]
    fn chunked_wins_over_content_length_and_no_length_reads_until_close() {
        let both = parse_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(
            both.expect("valid").expect("complete").framing,
            Framing::Chunked
        );
        let none = parse_head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(
            none.expect("valid").expect("complete").framing,
            Framing::UntilClose
        );
        let not_modified = parse_head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(
            not_modified.expect("valid").expect("complete").framing,
            Framing::Empty
        );
    }

    #[test]
    fn garbage_heads_are_refused() {
        for bad in [
            &b"SMTP 220 hello\r\n\r\n"[..],
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_chunked_body_is_decoded_across_chunks_extensions_and_trailers() {
        let raw = b"4\r\nWiki\r\n6;ext=1\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(chunked_len(raw, None), Ok(Some((raw.len(), 24))));
        let mut out = Vec::new();
        chunked_len(raw, Some(&mut out)).expect("valid");
        assert_eq!(out, b"Wikipedia in \r\n\r\nchunks.");
        for cut in 0..raw.len() {
            assert_eq!(chunked_len(&raw[..cut], None), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn a_broken_chunked_body_is_refused() {
        assert!(chunked_len(b"zz\r\n", None).is_err());
        assert!(chunked_len(b"2\r\nabc\r\n", None).is_err());
        assert!(chunked_len(b"\r\n", None).is_err());
    }

    #[test]
    fn urls_resolve_with_and_without_a_port_and_other_schemes_are_refused() {
        let t = Target::parse("http://127.0.0.1:8080/").expect("valid");
        assert_eq!(t.addr(), "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(t.url(), "http://127.0.0.1:8080");
        assert_eq!(&*t.get("/x"), &b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: ordersvc-bench\r\nAccept: */*\r\n\r\n"[..]);
        assert_eq!(
            Target::parse("http://127.0.0.1")
                .expect("valid")
                .addr()
                .port(),
            80
        );
        assert_eq!(
            Target::parse("http://[::1]:9")
                .expect("valid")
                .addr()
                .port(),
            9
        );
        assert!(Target::parse("https://127.0.0.1").is_err());
        assert!(Target::parse("127.0.0.1:8080").is_err());
        assert!(Target::parse("http://127.0.0.1:8080/api").is_err());
    }

    /// Serves the canned responses, one per request read, on a single connection per entry.
    fn serve(responses: Vec<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut responses = responses.into_iter();
            'accept: while let Ok((mut conn, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => continue 'accept,
                        Ok(_) => {}
                    }
                    let Some(response) = responses.next() else {
                        return;
                    };
                    // Split the write to exercise reads that end mid-response.
                    let (a, b) = response.split_at(response.len() / 2);
                    let _ = conn.write_all(a);
                    std::thread::sleep(Duration::from_millis(2));
                    let _ = conn.write_all(b);
                    if response.ends_with(b"close-me") {
                        continue 'accept;
                    }
                }
            }
        });
        addr
    }

    #[test]
    fn the_client_reads_length_chunked_and_close_delimited_responses_in_turn() {
        let addr = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close-me",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ]);
        let mut client = Client::new(addr, Duration::from_secs(5));
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        // Each answer in turn: its status, its length, and (when kept) its body.
        let mut expect = |status: u16, body_len: usize, body: Option<&[u8]>| {
            let mut kept = Vec::new();
            let reply = client
                .request(request, body.map(|_| &mut kept))
                .expect("an answer");
            assert_eq!(reply, Reply { status, body_len });
            if let Some(body) = body {
                assert_eq!(kept, body);
            }
        };
        expect(200, 5, Some(b"hello"));
        expect(404, 5, Some(b"abcde"));
        expect(200, b"until close-me".len(), None);
        // The server closed: the client reconnects by itself.
        expect(200, 2, None);
    }

    #[test]
    fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = Client::new(addr, Duration::from_millis(100));
        let err = client
            .request(b"GET / HTTP/1.1\r\n\r\n", None)
            .expect_err("no answer");
        assert!(matches!(err, ClientError::Timeout(_)), "{err}");
        drop(listener);
    }
}
