//! What a client can hold of the HTTP server, and for how long: request heads are bounded in
//! size, idle and stalled connections are closed after `--http-timeout`, and connections beyond
//! `--http-max-connections` are refused with a 503. Through all of it, others are still served.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ordersvc_service::http::MAX_HEAD_BYTES;

use crate::support::http::status_of;
use crate::support::orders::order_of_size;
use crate::support::service::{spawn_app, spawn_app_with, TestApp};
/// How long a test client waits for the service to act before it gives up: far above the
/// one-second HTTP timeout the tests set, so that only a service that never acts fails.
const CLIENT_PATIENCE: Duration = Duration::from_secs(30);

fn connect(app: &TestApp) -> TcpStream {
    let conn = TcpStream::connect(app.addr).expect("cannot connect to the service");
    conn.set_read_timeout(Some(CLIENT_PATIENCE))
        .expect("set a read timeout");
    conn
}

/// Reads one response (head, then a Content-Length body) from a kept-alive connection.
fn read_response(conn: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => answer.push(byte[0]),
            other => {
                panic!("the connection ended inside a response head: {other:?} after {answer:?}")
            }
        }
    }
    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).expect("a whole body");
    (status_of(&answer), body)
}

/// Waits for the service to close `conn` (end of stream or reset), reading whatever it sends
/// first; panics if it is still open after `CLIENT_PATIENCE`.
fn assert_closed_by_service(conn: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match conn.read(&mut chunk) {
            Ok(0) => return answer,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("{what}: still open after {CLIENT_PATIENCE:?}")
            }
            // Reset: closed too.
            Err(_) => return answer,
        }
    }
}

#[test]
fn request_heads_over_the_limit_are_refused_and_others_are_still_served() {
    // Arrange
    let app = spawn_app();
    let order = app.publish_model_and_wait("head-1");

    // A request line longer than the whole head may be.
    let target = format!("/order/{}", "a".repeat(MAX_HEAD_BYTES + 1024));
    let answer = app.raw_http(format!(
        "GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    ));
    assert!(
        matches!(status_of(&answer), 414 | 431),
        "a long request line: {}",
        status_of(&answer)
    );

    // One huge header field.
    let answer = app.raw_http(format!(
        "GET /order/head-1 HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(MAX_HEAD_BYTES + 1024)
    ));
    assert_eq!(status_of(&answer), 431, "a huge header field");

    // Too many small header fields.
    let many: String = (0..200).map(|i| format!("X-Field-{i}: v\r\n")).collect();
    let answer = app.raw_http(format!(
        "GET /order/head-1 HTTP/1.1\r\nHost: t\r\n{many}Connection: close\r\n\r\n"
    ));
    assert_eq!(status_of(&answer), 431, "200 header fields");

    // A header line that never ends: the service stops reading and closes, whatever was sent.
    let mut endless = connect(&app);
    let _ = endless.write_all(b"GET /order/head-1 HTTP/1.1\r\nX-Endless: ");
    let filler = vec![b'e'; 64 * 1024];
    for _ in 0..64 {
        if endless.write_all(&filler).is_err() {
            break;
        }
    }
    assert_closed_by_service(&mut endless, "an endless header line");

    // Raw bytes that are not UTF-8 (nor even ASCII) in the path.
    let answer =
        app.raw_http(b"GET /order/\xff\xfe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&answer), 400, "raw non-ASCII bytes in the path");

    // Assert: the service is unharmed.
    let (status, _, body) = app.get("/order/head-1");
    assert_eq!(status, 200);
    assert!(body == order, "the order's bytes changed");
}

#[test]
fn idle_and_trickling_clients_are_disconnected_after_the_timeout() {
    // Arrange: a one-second timeout.
    let app = spawn_app_with(&["--http-timeout", "1"]);
    let before = app.metric("ordersvc_http_connections_timed_out_total");

    // Act: a client that never sends a byte; one whose request never ends though a byte arrives
    // every 200 ms; one kept alive and idle after an answer.
    let mut silent = connect(&app);
    let trickler = {
        let mut conn = connect(&app);
        std::thread::spawn(move || {
            let _ = conn.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ");
            for _ in 0..(CLIENT_PATIENCE.as_millis() / 200) {
                std::thread::sleep(Duration::from_millis(200));
                if conn.write_all(b"s").is_err() {
                    return true;
                }
                // A closed connection may still take a write or two: check for the close too.
                conn.set_nonblocking(true).expect("non-blocking");
                let mut byte = [0u8; 1];
                let closed = matches!(conn.read(&mut byte), Ok(0))
                    || matches!(conn.read(&mut byte), Err(e) if e.kind() != ErrorKind::WouldBlock);
                conn.set_nonblocking(false).expect("blocking");
                if closed {
                    return true;
                }
            }
            false
        })
    };
    let mut kept = connect(&app);
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send a request");
    assert_eq!(read_response(&mut kept).0, 200);

    // Assert: the service closes all three; meanwhile and afterwards it serves others.
    assert_closed_by_service(&mut silent, "a client that sends nothing");
    assert_closed_by_service(&mut kept, "an idle kept-alive connection");
    assert!(
        trickler.join().expect("the trickling client"),
        "a request head trickled a byte at a time was never cut off"
    );
    assert_eq!(app.get("/healthz").0, 200);
    assert!(
        app.metric("ordersvc_http_connections_timed_out_total") >= before + 3.0,
        "the three closed connections are counted"
    );
}

#[test]
fn a_client_that_stops_reading_its_responses_is_disconnected() {
    // Arrange: a large order, and a one-second timeout.
    let app = spawn_app_with(&["--http-timeout", "1"]);
    let order = order_of_size("large-1", 900 * 1024);
    app.publish(&order);
    app.wait_for_order("large-1");
    let before = app.metric("ordersvc_http_connections_timed_out_total");

    // Act: ask for it 200 times in one go (175 MiB of answers, far more than the socket
    // buffers hold), then read nothing.
    let mut greedy = connect(&app);
    let requests = "GET /order/large-1 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(200);
    greedy
        .write_all(requests.as_bytes())
        .expect("send the requests");

    // Assert: the service gives up on it, and goes on serving others meanwhile.
    app.wait_until(
        |app| app.metric("ordersvc_http_connections_timed_out_total") > before,
        "the stalled connection to be closed",
    );
    let (status, _, body) = app.get("/order/large-1");
    assert_eq!(status, 200);
    assert!(body == order, "the order's bytes changed");
    drop(greedy);
}

#[test]
fn connections_beyond_the_limit_get_503_until_one_closes() {
    // Arrange: room for 4 connections, kept open for a long time.
    const LIMIT: usize = 4;
    let app = spawn_app_with(&["--http-max-connections", "4", "--http-timeout", "60"]);

    // Act: open connections, each answered once and kept alive, until one is refused. The test
    // client's own pooled connection may hold one of the 4 places.
    let mut held = Vec::new();
    let refusal = loop {
        let mut conn = connect(&app);
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send a request");
        let (status, body) = read_response(&mut conn);
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        held.push(conn);
        assert!(
            held.len() <= LIMIT,
            "more than {LIMIT} connections were served at once"
        );
    };

    // Assert: the refusal says why, and a closed connection makes room again.
    assert!(
        held.len() >= LIMIT - 1,
        "refused with only {} open",
        held.len()
    );
    let error: serde_json::Value = serde_json::from_slice(&refusal).expect("a JSON body");
    assert_eq!(error["error"], "too many open connections");
    drop(held);
    app.wait_until(
        |app| {
            let answer =
                app.raw_http("GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            status_of(&answer) == 200
        },
        "a new connection to be served after the others closed",
    );
    assert!(app.metric("ordersvc_http_connections_refused_total") >= 1.0);
}
