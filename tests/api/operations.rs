//! What operators rely on: `/rejected` explains refused messages, and idle or slow clients do
//! not keep anyone else from being served.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::helpers::{model_with_uid, spawn_app};

#[test]
fn rejected_messages_are_listed_newest_first_with_their_reason_and_payload() {
    // Arrange
    let app = spawn_app();
    app.publish(b"first garbage");
    app.publish(br#"{"order_uid": 5}"#);
    app.publish(&model_with_uid("after-the-garbage"));
    app.wait_for_order("after-the-garbage");

    // Act
    let (status, headers, body) = app.get("/rejected?limit=1");

    // Assert: one per page, newest first, with a cursor to the next.
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let page: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let newest = &page["rejected"][0];
    assert_eq!(newest["payload"], r#"{"order_uid": 5}"#);
    assert_eq!(newest["payload_bytes"], 16);
    assert_eq!(newest["stream"].as_str(), Some(app.stream.as_str()));
    assert!(
        newest["reason"]
            .as_str()
            .is_some_and(|r| r.contains("order_uid")),
        "{newest}"
    );
    let next = page["next"].as_i64().expect("a cursor to the older page");
    let (_, _, body) = app.get(&format!("/rejected?limit=1&before={next}"));
    let older: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(older["rejected"][0]["payload"], "first garbage");
    assert_eq!(older["rejected"][0]["kind"], "bad_json");
    for bad in ["limit=0", "limit=201", "before=x", "colour=red"] {
        assert_eq!(app.get(&format!("/rejected?{bad}")).0, 400, "{bad}");
    }
}

/// Idle keep-alive connections, and clients that send a request a byte at a time.
const IDLE: usize = 2000;
const SLOW: usize = 20;

#[test]
fn thousands_of_idle_and_slow_connections_do_not_starve_normal_requests() {
    // Arrange: an order to read, then the connections that do nothing useful.
    let app = spawn_app();
    app.publish(&model_with_uid("still-served"));
    app.wait_for_order("still-served");
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            TcpStream::connect(app.addr).unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| TcpStream::connect(app.addr).expect("slow connection"))
        .collect();
    for conn in &mut slow {
        conn.write_all(b"GET /order/still-se")
            .expect("the first bytes of a slow request");
    }

    // Act + Assert: normal requests, on fresh connections, are answered in full meanwhile.
    for round in 0..50 {
        let (status, _, body) = app.get("/order/still-served");
        assert_eq!(status, 200, "request {round}");
        assert_eq!(body, model_with_uid("still-served"), "request {round}");
        if round % 10 == 0 {
            // The slow clients go on trickling their request.
            for conn in &mut slow {
                let _ = conn.write_all(b"r");
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(app.get("/healthz").0, 200);
    drop(idle);
    drop(slow);
}
