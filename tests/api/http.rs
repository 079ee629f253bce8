//! The HTTP contract: orders served byte for byte, JSON errors, methods, paths, health.

use crate::support::orders::testdata;
use crate::support::service::spawn_app;

#[test]
fn a_published_valid_order_is_served_with_the_exact_bytes_that_were_sent() {
    // Arrange
    let app = spawn_app();
    let sent = testdata("model.json");

    // Act
    app.publish(&sent);
    let served = app.wait_for_order("b563feb7b2b84b6test");

    // Assert
    assert_eq!(served, sent, "the body differs from the message");
    let (status, headers, body) = app.get("/order/b563feb7b2b84b6test");
    assert_eq!(status, 200);
    assert_eq!(body, sent);
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let etag = headers.get("etag").expect("an ETag header").clone();
    assert!(!etag.is_empty());

    let (status, headers, body) = app.request(
        "GET",
        "/order/b563feb7b2b84b6test",
        &[("If-None-Match", &etag)],
    );
    assert_eq!(status, 304, "If-None-Match with the current ETag");
    assert!(body.is_empty(), "a 304 has no body");
    assert_eq!(headers.get("etag"), Some(&etag));

    // An HTTP client hides a HEAD body, so read the raw answer.
    let answer = app.raw_http(format!(
        "HEAD /order/b563feb7b2b84b6test HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        app.addr
    ));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "HEAD answer: {text}");
    let head_end = text.find("\r\n\r\n").expect("a complete header block") + 4;
    assert_eq!(
        &text[head_end..],
        "",
        "HEAD must answer without a body: {text}"
    );
}

#[test]
fn unknown_ids_get_404_and_invalid_ids_get_400_with_a_json_error() {
    // Arrange
    let app = spawn_app();
    let too_long = "a".repeat(65);
    // (id in the URL, status, the order_uid echoed in the error; None: any string)
    let cases = [
        ("no-such-order-0001", 404, Some("no-such-order-0001")),
        ("bad%20uid", 400, Some("bad uid")),
        ("semi;colon", 400, Some("semi;colon")),
        (too_long.as_str(), 400, Some(too_long.as_str())),
        ("", 400, Some("")),
        ("%FF%FE", 400, None),
    ];

    for (id, expected_status, echoed) in cases {
        // Act
        let error = app.get_json_error(&format!("/order/{id}"), expected_status);

        // Assert
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "GET /order/{id}: no error message in {error}"
        );
        let order_uid = error["order_uid"].as_str();
        assert!(
            order_uid.is_some(),
            "GET /order/{id}: no order_uid in {error}"
        );
        if let Some(echoed) = echoed {
            assert_eq!(
                order_uid,
                Some(echoed),
                "GET /order/{id}: order_uid in {error}"
            );
        }
    }
}

#[test]
fn other_methods_get_405_and_unknown_paths_404() {
    // Arrange
    let app = spawn_app();

    for (method, path) in [
        ("POST", "/order/b563feb7b2b84b6test"),
        ("PUT", "/order/b563feb7b2b84b6test"),
        ("DELETE", "/order/b563feb7b2b84b6test"),
        ("PATCH", "/healthz"),
        ("POST", "/"),
    ] {
        // Act
        let (status, headers, _) = app.request(method, path, &[]);

        // Assert
        assert_eq!(status, 405, "{method} {path}");
        let allow = headers.get("allow").map(String::as_str).unwrap_or_default();
        assert!(
            allow.contains("GET") && allow.contains("HEAD"),
            "{method} {path}: Allow is {allow:?}"
        );
    }

    for path in ["/nope", "/order", "/orders/x", "/healthz/extra", "/ORDER/x"] {
        // Act
        let (status, _, _) = app.get(path);

        // Assert
        assert_eq!(status, 404, "GET {path}");
    }
}
