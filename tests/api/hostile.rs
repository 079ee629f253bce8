//! Hostile input: messages as large as NATS allows, and requests whose paths are not ids.
//! Each must be answered or recorded cleanly, and the service must carry on.

use std::collections::HashMap;

use ordersvc_service::bus::MAX_DOCUMENT;

use crate::support::http::status_of;
use crate::support::orders::{model_with_uid, order_of_size, replace_once};
use crate::support::service::{spawn_app, spawn_child_app, TestApp};

/// NATS's default max payload (and the stream's max message size): nothing larger reaches us.
const MAX_PAYLOAD: usize = 1024 * 1024;

/// `n` bytes that are not UTF-8, from a fixed seed (the same garbage every run).
fn garbage(n: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut bytes: Vec<u8> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    bytes[0] = 0xFF; // never valid UTF-8, whatever the generator gives
    bytes
}

#[test]
fn a_message_at_the_nats_max_payload_with_huge_strings_is_handled() {
    // Arrange
    let app = spawn_app();
    // The largest order accepted (1 MiB less the room its fan-out needs), and messages as
    // large that break other rules.
    let huge = order_of_size("huge-strings", MAX_DOCUMENT);
    let half = MAX_DOCUMENT / 2;
    let refused: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a largest document of random bytes",
            garbage(MAX_DOCUMENT),
            "not_utf8",
        ),
        (
            "a largest document of nested arrays",
            format!("{}{}", "[".repeat(half), "]".repeat(half)).into_bytes(),
            "too_deep",
        ),
        (
            "a largest document of text that is not JSON",
            "not json ".repeat(MAX_DOCUMENT / 9).into_bytes(),
            "bad_json",
        ),
        (
            "a largest document of a flat JSON array",
            format!("[{}1]", "1,".repeat((MAX_DOCUMENT - 3) / 2)).into_bytes(),
            "not_object",
        ),
        // Valid orders too large for the changelog message that carries an order to the other
        // replicas: stored, they could never be fanned out, and so never acked.
        (
            "an order a byte over the limit",
            order_of_size("a-byte-too-large", MAX_DOCUMENT + 1),
            "too_large",
        ),
        (
            "an order of the whole max payload",
            order_of_size("max-payload", MAX_PAYLOAD),
            "too_large",
        ),
    ];
    let after = model_with_uid("after-the-huge-ones");

    // Act
    app.publish(&huge);
    let sequences: Vec<u64> = refused
        .iter()
        .map(|(_, payload, _)| app.publish(payload).sequence)
        .collect();
    app.publish(&after);

    // Assert: the huge order is stored and served byte for byte; the rest is recorded.
    assert!(app.wait_for_order("after-the-huge-ones") == after);
    app.wait_until_drained();
    let (status, headers, body) = app.get("/order/huge-strings");
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("content-length").map(String::as_str),
        Some(huge.len().to_string().as_str())
    );
    assert!(
        body == huge,
        "the served body differs ({} bytes)",
        body.len()
    );
    assert_eq!(app.orders_count(), 2);
    for uid in ["a-byte-too-large", "max-payload"] {
        assert_eq!(app.get(&format!("/order/{uid}")).0, 404, "{uid}");
    }
    let rejected = app.rejected();
    assert_eq!(rejected.len(), refused.len(), "one rejection each");
    for ((what, payload, kind), seq) in refused.iter().zip(sequences) {
        let row = rejected
            .iter()
            .find(|r| r.stream_seq as u64 == seq)
            .unwrap_or_else(|| panic!("{what} was not recorded"));
        assert_eq!(&row.kind, kind, "{what}: {}", row.reason);
        assert!(&row.payload == payload, "{what}: the recorded bytes differ");
    }
    // The recent-orders list copes with a huge customer_id too.
    let (status, _, body) = app.get("/orders?limit=5");
    assert_eq!(status, 200, "/orders: {}", String::from_utf8_lossy(&body));
    assert_eq!(app.get("/readyz").0, 200);
}

#[test]
fn a_backlog_of_messages_at_the_max_payload_is_ingested_within_a_memory_bound() {
    // Arrange: 300 messages of 1 MiB waiting in the stream when the service starts (300 MiB,
    // which one unbounded batch could hold at once), then a valid order.
    const MESSAGES: usize = 300;
    let mut app = spawn_child_app();
    app.kill();
    let huge = garbage(MAX_PAYLOAD);
    app.publish_many((0..MESSAGES).map(|_| (None, huge.as_slice())));
    let after = model_with_uid("after-the-backlog");
    app.publish(&after);

    // Act
    app.restart();

    // Assert: all recorded, the order behind them served, and memory stayed far below the
    // backlog: batches are bounded in bytes (16 MiB), not only in messages. (Without that bound
    // this peaked at 1,060 MiB; with it, at 127 to 145 MiB.)
    assert!(app.wait_for_order("after-the-backlog") == after);
    app.wait_until_drained();
    assert_eq!(app.rejected().len(), MESSAGES);
    let peak = app.peak_rss_bytes();
    eprintln!(
        "peak RSS after a {MESSAGES} MiB backlog: {} MiB",
        peak / (1024 * 1024)
    );
    assert!(
        peak < 256 * 1024 * 1024,
        "peak RSS {} MiB while ingesting {MESSAGES} MiB",
        peak / (1024 * 1024)
    );
}

/// One item of the model with one-character strings and numbers: the smallest valid item.
const SMALLEST_ITEM: &str = r#"{"chrt_id":1,"track_number":"T","price":1,"rid":"r","name":"n","sale":0,"size":"0","total_price":1,"nm_id":1,"brand":"b","status":2}"#;

/// The model with `n` smallest items, compact.
fn order_with_items(uid: &str, n: usize) -> Vec<u8> {
    let mut order: serde_json::Value =
        serde_json::from_slice(&model_with_uid(uid)).expect("model.json is JSON");
    order["items"] = serde_json::Value::Null;
    let text = serde_json::to_string(&order).expect("serialisable");
    let items = vec![SMALLEST_ITEM; n].join(",");
    replace_once(&text, r#""items":null"#, &format!(r#""items":[{items}]"#)).into_bytes()
}

#[test]
fn an_order_with_as_many_items_as_the_max_payload_holds_is_stored_and_served() {
    // Every string of an item must be non-empty, so an item takes at least SMALLEST_ITEM's
    // bytes: 10,000 of them do not fit in one NATS message. The test takes as many as fit.
    let ten_thousand = order_with_items("too-many-items", 10_000);
    assert!(
        ten_thousand.len() > MAX_PAYLOAD,
        "10,000 items fit after all ({} bytes): test exactly 10,000",
        ten_thousand.len()
    );
    let fixed = order_with_items("many-items", 0).len() - 2 + SMALLEST_ITEM.len();
    let n = (MAX_DOCUMENT - fixed) / (SMALLEST_ITEM.len() + 1);
    let order = order_with_items("many-items", n);
    assert!(order.len() <= MAX_DOCUMENT, "{} bytes", order.len());
    assert!(n > 7_000, "only {n} items");

    // 10,000 items do fit when they are not valid ones: such a message is rejected, naming the
    // first item's first missing field.
    let text = String::from_utf8(order_with_items("ten-thousand-bare-items", 0)).expect("UTF-8");
    let bare = vec![r#"{"chrt_id":1}"#; 10_000].join(",");
    let bare_items = replace_once(&text, r#""items":[]"#, &format!(r#""items":[{bare}]"#));
    assert!(bare_items.len() <= MAX_DOCUMENT);

    // Arrange
    let app = spawn_app();

    // Act
    let bare_seq = app.publish(bare_items.as_bytes()).sequence;
    app.publish(&order);

    // Assert
    let served = app.wait_for_order("many-items");
    assert!(
        served == order,
        "the served body differs ({} bytes)",
        served.len()
    );
    app.wait_until_drained();
    let rejected = app.rejected();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].stream_seq as u64, bare_seq);
    assert_eq!(rejected[0].kind, "missing_field");
    assert!(
        rejected[0].reason.starts_with("items[0]."),
        "{}",
        rejected[0].reason
    );
    assert_eq!(app.get("/order/ten-thousand-bare-items").0, 404);
}

/// A raw HTTP answer: status, headers (lower-case names), and every byte after the headers.
struct Raw {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// Sends one request as it is (asking to close the connection) and parses the answer; the
/// body must be exactly as long as Content-Length says (for HEAD: empty).
fn send(app: &TestApp, method: &str, target: &str, body: &[u8]) -> Raw {
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        app.addr
    );
    if !body.is_empty() {
        request += &format!("Content-Length: {}\r\n", body.len());
    }
    request += "\r\n";
    request += std::str::from_utf8(body).expect("request bodies here are text");
    let answer = app.raw_http(&request);
    let what = format!("{method} {}", &target[..target.len().min(80)]);
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no complete header block in {answer:?}"));
    let head = std::str::from_utf8(&answer[..end]).expect("the header block is text");
    let status = status_of(&answer);
    let headers: HashMap<String, String> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let body = answer[end + 4..].to_vec();
    if method == "HEAD" {
        assert!(body.is_empty(), "{what}: a HEAD answer with a body");
    } else if let Some(length) = headers.get("content-length") {
        assert_eq!(
            length.parse::<usize>().ok(),
            Some(body.len()),
            "{what}: Content-Length"
        );
    }
    Raw {
        status,
        headers,
        body,
    }
}

/// A 400 with the design's JSON error body.
fn assert_json_400(reply: &Raw, what: &str) {
    assert_eq!(reply.status, 400, "{what}");
    assert_eq!(
        reply.headers.get("content-type").map(String::as_str),
        Some("application/json"),
        "{what}"
    );
    let error: serde_json::Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e})"));
    assert!(
        error["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {error}"
    );
    assert!(error["order_uid"].is_string(), "{what}: {error}");
}

#[test]
fn bodies_and_paths_that_are_not_ids_are_refused_cleanly() {
    // Arrange
    let app = spawn_app();
    let order = app.publish_model_and_wait("abc-1");
    let (status, _, metrics) = app.admin_get("/metrics");
    assert_eq!(status, 200);
    let metrics_text = String::from_utf8_lossy(&metrics).into_owned();

    // Percent-encoded ids are decoded, then looked up.
    for target in ["/order/abc%2D1", "/order/%61%62%63-1", "/order/abc-1?x=%FF"] {
        let reply = send(&app, "GET", target, b"");
        assert_eq!(reply.status, 200, "{target}");
        assert!(reply.body == order, "{target}: the body differs");
    }

    // Ids that are not ids: 400 with a JSON error.
    let long = "a".repeat(10 * 1024);
    for target in [
        "/order/%FF%FE".to_owned(),
        "/order/%C3%28".to_owned(),
        "/order/abc%00".to_owned(),
        "/order/%".to_owned(),
        "/order/".to_owned(),
        format!("/order/{long}"),
        format!("/order/{}", "%41".repeat(3_000)),
    ] {
        let reply = send(&app, "GET", &target, b"");
        assert_json_400(&reply, &format!("GET {}", &target[..target.len().min(40)]));
    }

    // Traversal: refused, and never the metrics.
    for target in [
        "/order/../metrics",
        "/order/..%2Fmetrics",
        "/order/%2E%2E/metrics",
        "/order/%2e%2e%2fmetrics",
        "/order/../../../etc/passwd",
        "/order//metrics",
        // The admin listener's routes do not exist on this one.
        "/metrics",
        "/rejected",
    ] {
        let reply = send(&app, "GET", target, b"");
        assert!(
            matches!(reply.status, 400 | 404),
            "{target}: {}",
            reply.status
        );
        let text = String::from_utf8_lossy(&reply.body);
        assert!(
            !text.contains("# EOF") && text != metrics_text,
            "{target} served the metrics"
        );
    }

    // HEAD: the status and headers of GET, no body (the parser checks it).
    let head = send(&app, "HEAD", "/order/x", b"");
    assert_eq!(head.status, 404);
    let head = send(&app, "HEAD", "/order/abc-1", b"");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.headers.get("content-length").map(String::as_str),
        Some(order.len().to_string().as_str())
    );

    // Other methods: 405 naming the allowed ones, bodies or not.
    let big_body = "x".repeat(100 * 1024);
    for (method, body) in [
        ("DELETE", ""),
        ("POST", "{}"),
        ("PUT", big_body.as_str()),
        ("OPTIONS", ""),
        ("BREW", ""),
    ] {
        let reply = send(&app, method, "/order/x", body.as_bytes());
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(
            reply.headers.get("allow").map(String::as_str),
            Some("GET, HEAD"),
            "{method}"
        );
    }

    // A GET with a body is still a GET.
    let reply = send(&app, "GET", "/order/abc-1", b"ignored");
    assert_eq!(reply.status, 200);
    assert!(reply.body == order);

    // And after all that, the service is fine.
    assert_eq!(app.get("/readyz").0, 200);
    assert_eq!(app.get("/order/abc-1").2, order);
}
