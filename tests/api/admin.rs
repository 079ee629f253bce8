//! The admin listener: operator data (`/metrics`, `/rejected`) only there, the page and the
//! order API only on the public listener, the health endpoints on both; the admin token; the
//! refusal to expose the admin listener without one; and its own connection cap.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::commands::{ordersvc, run_to_end};
use crate::support::http::status_of;
use crate::support::service::{spawn_app, spawn_app_with, spawn_child_app_with};

const TOKEN: &str = "an-admin-token-of-this-test";

#[test]
fn operator_data_is_served_only_on_the_admin_listener() {
    // Arrange
    let app = spawn_app();
    app.publish_model_and_wait("admin-1");
    assert_ne!(app.addr, app.admin_addr);

    // Assert: the public listener.
    for (path, status) in [
        ("/", 200),
        ("/orders", 200),
        ("/order/admin-1", 200),
        ("/healthz", 200),
        ("/readyz", 200),
        ("/readyz/reads", 200),
        ("/metrics", 404),
        ("/rejected", 404),
        ("/rejected?limit=1", 404),
    ] {
        let (got, _, body) = app.get(path);
        assert_eq!(
            got,
            status,
            "public {path}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    // The admin listener.
    for (path, status) in [
        ("/metrics", 200),
        ("/rejected", 200),
        ("/rejected?limit=1", 200),
        ("/healthz", 200),
        ("/readyz", 200),
        ("/readyz/reads", 200),
        ("/", 404),
        ("/orders", 404),
        ("/order/admin-1", 404),
        ("/app.js", 404),
    ] {
        let (got, _, body) = app.admin_get(path);
        assert_eq!(
            got,
            status,
            "admin {path}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let (_, headers, metrics) = app.admin_get("/metrics");
    assert!(
        headers["content-type"].starts_with("application/openmetrics-text"),
        "{headers:?}"
    );
    assert!(String::from_utf8_lossy(&metrics).contains("ordersvc_messages_total"));
}

#[test]
fn with_a_token_metrics_and_rejected_need_it_and_the_health_endpoints_do_not() {
    // Arrange
    // A child: its log is read.
    let app = spawn_child_app_with(&["--admin-token", TOKEN]);
    let bearer = format!("Bearer {TOKEN}");

    for path in ["/metrics", "/rejected"] {
        // Act + Assert: none, a wrong one, another scheme, then the token.
        for headers in [
            vec![],
            vec![("Authorization", "Bearer wrong")],
            vec![("Authorization", "Bearer an-admin-token-of-this-tes")],
            vec![("Authorization", TOKEN)],
            vec![("Authorization", "Basic YWRtaW46YWRtaW4=")],
        ] {
            let (status, reply_headers, body) = app.admin_request("GET", path, &headers);
            assert_eq!(status, 401, "{path} with {headers:?}");
            assert!(
                reply_headers
                    .get("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{reply_headers:?}"
            );
            let error: serde_json::Value =
                serde_json::from_slice(&body).expect("a JSON error body");
            assert!(error["error"].is_string(), "{error}");
            assert!(!String::from_utf8_lossy(&body).contains(TOKEN));
        }
        let (status, _, _) = app.admin_request("GET", path, &[("Authorization", &bearer)]);
        assert_eq!(status, 200, "{path} with the token");
        // The public listener has no such route, token or not.
        let (status, _, _) = app.request("GET", path, &[("Authorization", &bearer)]);
        assert_eq!(status, 404, "public {path}");
    }
    for path in ["/healthz", "/readyz", "/readyz/reads"] {
        assert_eq!(app.admin_get(path).0, 200, "admin {path}");
    }
    // The token shows nowhere in what the service logged.
    assert!(!app.logs().join("\n").contains(TOKEN));
}

#[test]
fn serve_refuses_an_admin_listener_beyond_loopback_without_a_token() {
    // Act: nothing else is needed for the check, which comes before any connection.
    let output = run_to_end(
        ordersvc(&[
            "serve",
            "--admin-addr",
            "0.0.0.0:0",
            "--http-addr",
            "127.0.0.1:0",
        ]),
        b"",
    );

    // Assert
    assert!(!output.status.success(), "serve started: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--admin-token") && stderr.contains("0.0.0.0:0"),
        "{stderr}"
    );
}

#[test]
fn an_admin_listener_beyond_loopback_with_a_token_serves() {
    let app = spawn_app_with(&["--admin-addr", "0.0.0.0:0", "--admin-token", TOKEN]);
    let bearer = format!("Bearer {TOKEN}");
    assert!(app.admin_addr.ip().is_unspecified(), "{}", app.admin_addr);
    let (status, _, _) = app.admin_request("GET", "/metrics", &[("Authorization", &bearer)]);
    assert_eq!(status, 200);
    assert_eq!(app.admin_get("/metrics").0, 401);
}

#[test]
fn a_flood_of_the_public_listener_does_not_blind_the_admin_one() {
    // Arrange: two public connections at most (the test's own client may hold one of them).
    let app = spawn_app_with(&["--http-max-connections", "2"]);

    // Act: open public connections and keep every one answered until one is refused.
    let mut held = Vec::new();
    let refused = (0..10).any(|_| {
        let mut conn = TcpStream::connect(app.addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("a read timeout");
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("send");
        let mut answer = [0u8; 512];
        let n = conn.read(&mut answer).expect("an answer");
        let status = status_of(&answer[..n]);
        // Keep-alive: an answered connection keeps its slot while it is held here.
        held.push(conn);
        status == 503
    });
    assert!(refused, "no public connection was refused");

    // Assert: the admin listener answers, and counts the refusal.
    let (status, _, body) = app.admin_get("/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    let refusals = text
        .lines()
        .find_map(|line| line.strip_prefix("ordersvc_http_connections_refused_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no refusal counter in:\n{text}"));
    assert!(refusals >= 1.0, "{refusals}");
    assert_eq!(app.admin_get("/readyz").0, 200);
    drop(held);
}
