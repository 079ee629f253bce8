//! `GET /orders`: newest first, keyset paging with an opaque cursor, strict parameters.

use crate::support::orders::model_with_uid;
use crate::support::service::{spawn_app, TestApp};

fn order_created_at(uid: &str, date: &str) -> Vec<u8> {
    String::from_utf8(model_with_uid(uid))
        .expect("UTF-8")
        .replacen(
            r#""date_created": "2021-11-26T06:22:19Z""#,
            &format!(r#""date_created": "{date}""#),
            1,
        )
        .into_bytes()
}

fn page(app: &TestApp, query: &str) -> (Vec<String>, Option<String>) {
    let (status, _, body) = app.get(&format!("/orders?{query}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let ids = json["orders"]
        .as_array()
        .expect("orders array")
        .iter()
        .map(|o| o["order_uid"].as_str().expect("order_uid").to_owned())
        .collect();
    (ids, json["next"].as_str().map(str::to_owned))
}

#[test]
fn recent_orders_come_newest_first_and_page_with_the_cursor() {
    // Arrange: seven orders, two of them created at the same instant.
    let app = spawn_app();
    let dates = [
        ("list-a", "2021-01-01T00:00:00Z"),
        ("list-b", "2021-01-02T00:00:00Z"),
        ("list-c", "2021-01-03T00:00:00Z"),
        ("list-d", "2021-01-03T00:00:00Z"),
        ("list-e", "2021-01-04T00:00:00+03:00"),
        ("list-f", "2021-01-05T12:30:00.5Z"),
        ("list-g", "2021-01-06T00:00:00Z"),
    ];
    for (uid, date) in dates {
        app.publish(&order_created_at(uid, date));
    }
    for (uid, _) in dates {
        app.wait_for_order(uid);
    }

    // Act
    let (first, cursor) = page(&app, "limit=3");
    let cursor = cursor.expect("a next cursor after the first page");
    let (second, cursor) = page(&app, &format!("limit=3&before={cursor}"));
    let cursor = cursor.expect("a next cursor after the second page");
    let (third, last) = page(&app, &format!("limit=3&before={cursor}"));

    // Assert: newest first, ties broken by order_uid (descending), nothing repeated or skipped.
    assert_eq!(first, ["list-g", "list-f", "list-e"]);
    assert_eq!(second, ["list-d", "list-c", "list-b"]);
    assert_eq!(third, ["list-a"]);
    assert_eq!(last, None);
    let (all, next) = page(&app, "");
    assert_eq!(all.len(), 7, "the default limit covers all seven");
    assert_eq!(next, None);
}

#[test]
fn bad_paging_parameters_get_400_with_a_json_error() {
    let app = spawn_app();
    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "before=garbage",
        "before=1.bad%20uid",
        "colour=red",
    ] {
        let json = app.get_json_error(&format!("/orders?{query}"), 400);
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{query}: {json}"
        );
    }
    let (status, _, _) = app.get("/orders?limit=1000");
    assert_eq!(status, 200, "the largest limit is allowed");
}
