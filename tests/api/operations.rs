//! What operators rely on: `/rejected` explains refused messages, and idle or slow clients do
//! not keep anyone else from being served.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::support::orders::model_with_uid;
use crate::support::service::{spawn_app, spawn_app_with_options, Runs, SpawnOptions};

#[test]
fn rejected_messages_are_listed_newest_first_with_their_reason_and_payload() {
    // Arrange
    let app = spawn_app();
    app.publish(b"first garbage");
    app.publish(br#"{"order_uid": 5}"#);
    app.publish(&model_with_uid("after-the-garbage"));
    app.wait_for_order("after-the-garbage");

    // Act
    let (status, headers, body) = app.admin_get("/rejected?limit=1");

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
    assert_eq!(newest["stream"].as_str(), Some(app.names.stream.as_str()));
    assert!(
        newest["reason"]
            .as_str()
            .is_some_and(|r| r.contains("order_uid")),
        "{newest}"
    );
    let next = page["next"].as_i64().expect("a cursor to the older page");
    let (_, _, body) = app.admin_get(&format!("/rejected?limit=1&before={next}"));
    let older: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(older["rejected"][0]["payload"], "first garbage");
    assert_eq!(older["rejected"][0]["kind"], "bad_json");
    for bad in ["limit=0", "limit=201", "before=x", "colour=red"] {
        assert_eq!(app.admin_get(&format!("/rejected?{bad}")).0, 400, "{bad}");
    }
}

#[test]
fn the_last_page_of_rejected_messages_has_no_next_cursor() {
    // Arrange: exactly two rejected messages (the order behind them shows both are recorded).
    let app = spawn_app();
    app.publish(b"garbage one");
    app.publish(b"garbage two");
    app.publish(&model_with_uid("after-two-rejections"));
    app.wait_for_order("after-two-rejections");
    let page = |query: &str| {
        let (status, _, body) = app.admin_get(&format!("/rejected?{query}"));
        assert_eq!(status, 200, "{query}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice::<serde_json::Value>(&body).expect("JSON")
    };

    // Act: a page exactly as long as what is left, and the last of two one-row pages.
    let whole = page("limit=2");
    let first = page("limit=1");
    let next = first["next"]
        .as_i64()
        .expect("a cursor after the first of two");
    let last = page(&format!("limit=1&before={next}"));

    // Assert: a page that reaches the end says so, however many rows it holds.
    assert_eq!(whole["rejected"].as_array().map(Vec::len), Some(2));
    assert!(whole["next"].is_null(), "{whole}");
    assert_eq!(last["rejected"][0]["payload"], "garbage one");
    assert!(last["next"].is_null(), "{last}");
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

#[test]
fn no_log_line_carries_the_personal_data_of_an_order() {
    // Arrange: the most talkative logs, and orders whose personal fields are easy to spot.
    let app = spawn_app_with_options(SpawnOptions {
        serve_args: &["--log-format", "json"],
        log_filter: Some("debug"),
        runs: Runs::Child,
        ..SpawnOptions::default()
    });
    let personal = [
        "Zebediah Quaxworth",
        "+1555019283",
        "zebediah@example.org",
        "17 Qwxyz Lane",
    ];
    let order = String::from_utf8(model_with_uid("personal-data"))
        .expect("UTF-8")
        .replacen("Test Testov", personal[0], 1)
        .replacen("+9720000000", personal[1], 1)
        .replacen("test@gmail.com", personal[2], 1)
        .replacen("Ploshad Mira 15", personal[3], 1);
    app.publish(order.as_bytes());
    // The same data in a message that is refused, and in a conflicting duplicate.
    app.publish(
        order
            .replacen("\"sm_id\": 99", "\"sm_id\": -1", 1)
            .as_bytes(),
    );
    app.publish(
        order
            .replacen("\"sm_id\": 99", "\"sm_id\": 100", 1)
            .as_bytes(),
    );
    app.wait_for_order("personal-data");
    app.wait_until(
        |app| app.rejected().len() == 2,
        "both refusals to be recorded",
    );
    app.get("/order/personal-data");

    // Assert: logs were written (at debug), and none holds any of the personal values.
    let logs = app.logs();
    assert!(
        logs.iter().any(|l| l.contains("\"level\":\"DEBUG\"")),
        "no debug logs at all"
    );
    for line in &logs {
        for value in personal {
            assert!(!line.contains(value), "a log line holds {value:?}: {line}");
        }
    }
}

#[test]
fn the_commit_failures_help_text_says_that_a_failed_batch_is_retried_in_place() {
    // The operator reads it in Prometheus: it must tell what happens, not an old design.
    let app = spawn_app();
    let (status, _, body) = app.admin_get("/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).expect("the metrics are UTF-8");
    let help = text
        .lines()
        .find(|line| line.starts_with("# HELP ordersvc_commit_failures"))
        .unwrap_or_else(|| panic!("no help for commit_failures in\n{text}"));
    assert!(help.contains("retried in place"), "{help}");
    assert!(!help.contains("nak"), "{help}");
}
