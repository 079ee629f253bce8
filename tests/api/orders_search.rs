//! `GET /orders?track_number=T` and `?customer_id=C`: exactly the orders whose column equals the
//! value, newest first, with the listing's paging; a bad value is a 400 naming the rule.

use std::collections::HashSet;

use crate::support::orders::model_with;
use crate::support::service::{spawn_app, TestApp};

/// One page of a listing: its orders as JSON, and the next cursor.
fn page(app: &TestApp, query: &str) -> (Vec<serde_json::Value>, Option<String>) {
    let (status, _, body) = app.get(&format!("/orders?{query}"));
    assert_eq!(status, 200, "{query}: {}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let orders = json["orders"].as_array().expect("orders array").clone();
    let next = match &json["next"] {
        serde_json::Value::Null => None,
        next => Some(next.as_str().expect("next is a string or null").to_owned()),
    };
    (orders, next)
}

fn ids(orders: &[serde_json::Value]) -> Vec<String> {
    orders
        .iter()
        .map(|o| o["order_uid"].as_str().expect("order_uid").to_owned())
        .collect()
}

/// Every page of `query` at `limit`, following `next`.
fn walk(app: &TestApp, query: &str, limit: usize) -> Vec<String> {
    let mut all = Vec::new();
    let mut before = None::<String>;
    for _ in 0..100 {
        let cursor = before.map(|c| format!("&before={c}")).unwrap_or_default();
        let (orders, next) = page(app, &format!("{query}&limit={limit}{cursor}"));
        assert!(orders.len() <= limit, "{query}: a page longer than {limit}");
        all.extend(ids(&orders));
        match next {
            Some(next) => before = Some(next),
            None => return all,
        }
    }
    panic!("{query}: still a next page after 100: {all:?}");
}

#[test]
fn a_search_by_track_number_or_customer_id_returns_exactly_the_matches_newest_first() {
    // Arrange: two groups that share a value, one order in both, and near misses of each
    // (another case, a trailing space, a longer value) that must not match.
    let app = spawn_app();
    let orders = [
        ("s-t1", "2021-01-01T00:00:00Z", "TRACK-A", "cust-1"),
        ("s-t2", "2021-01-02T00:00:00Z", "TRACK-A", "cust-2"),
        ("s-t3", "2021-01-03T00:00:00Z", "TRACK-A", "cust-3"),
        // The same instant as s-t3: order_uid breaks the tie.
        ("s-t4", "2021-01-03T00:00:00Z", "TRACK-A", "cust-4"),
        ("s-t5", "2021-01-05T12:30:00.5Z", "TRACK-A", "cust-5"),
        ("s-both", "2021-01-04T00:00:00+03:00", "TRACK-A", "cust-b"),
        ("s-c1", "2021-02-01T00:00:00Z", "TRACK-C1", "cust-b"),
        ("s-c2", "2021-02-02T00:00:00Z", "TRACK-C2", "cust-b"),
        ("s-c3", "2020-12-31T23:59:59Z", "TRACK-C3", "cust-b"),
        ("s-x1", "2021-03-01T00:00:00Z", "track-a", "Cust-B"),
        ("s-x2", "2021-03-02T00:00:00Z", "TRACK-A ", "cust-b "),
        ("s-x3", "2021-03-03T00:00:00Z", "TRACK-AB", "cust-bb"),
        ("s-x4", "2021-03-04T00:00:00Z", "TRACK+A", "cust b"),
        ("s-u", "2021-03-05T00:00:00Z", "TR A+1/Ж", "Жанна & Co"),
    ];
    for (uid, date, track, customer) in orders {
        app.publish(&model_with(uid, date, track, customer));
    }
    for (uid, ..) in orders {
        app.wait_for_order(uid);
    }

    // Act
    let (by_track, track_next) = page(&app, "track_number=TRACK-A");
    let (by_customer, customer_next) = page(&app, "customer_id=cust-b");
    let (encoded, _) = page(&app, "track_number=TR+A%2B1%2F%D0%96");
    let (ampersand, _) = page(
        &app,
        "customer_id=%D0%96%D0%B0%D0%BD%D0%BD%D0%B0%20%26%20Co",
    );
    let (plus, _) = page(&app, "track_number=TRACK%2BA");

    // Assert: exact, case-sensitive matches only, newest first, with the listing's fields.
    assert_eq!(
        ids(&by_track),
        ["s-t5", "s-both", "s-t4", "s-t3", "s-t2", "s-t1"]
    );
    assert_eq!(track_next, None);
    assert_eq!(ids(&by_customer), ["s-c2", "s-c1", "s-both", "s-c3"]);
    assert_eq!(customer_next, None);
    assert_eq!(
        by_customer[2],
        serde_json::json!({
            "order_uid": "s-both",
            "date_created": "2021-01-03T21:00:00Z",
            "customer_id": "cust-b",
            "track_number": "TRACK-A",
        })
    );
    assert_eq!(ids(&encoded), ["s-u"], "+ is a space, %2B a plus");
    assert_eq!(ids(&ampersand), ["s-u"]);
    assert_eq!(ids(&plus), ["s-x4"]);

    // Paging two at a time walks each search whole, in the same order, without repeats.
    let track_pages = walk(&app, "track_number=TRACK-A", 2);
    assert_eq!(track_pages, ids(&by_track));
    let customer_pages = walk(&app, "customer_id=cust-b", 2);
    assert_eq!(customer_pages, ids(&by_customer));
    let (first_two, next) = page(&app, "customer_id=cust-b&limit=2");
    assert_eq!(ids(&first_two), ["s-c2", "s-c1"]);
    assert!(next.is_some(), "an older page exists");
    assert_eq!(walk(&app, "customer_id=cust-b", 3), ids(&by_customer));
    let unique: HashSet<_> = track_pages.iter().collect();
    assert_eq!(unique.len(), track_pages.len(), "an order repeated");

    // Both parameters: the orders with that track number of that customer, paged alike.
    assert_eq!(
        ids(&page(&app, "track_number=TRACK-A&customer_id=cust-b").0),
        ["s-both"]
    );
    assert_eq!(
        ids(&page(&app, "customer_id=cust-3&track_number=TRACK-A").0),
        ["s-t3"]
    );
    assert!(page(&app, "track_number=TRACK-C1&customer_id=cust-1")
        .0
        .is_empty());
    // Two of the same customer's track numbers share none: walk a wider pair.
    assert_eq!(
        walk(&app, "track_number=TRACK-A&customer_id=cust-b", 1),
        ["s-both"]
    );
}

#[test]
fn a_search_that_matches_nothing_is_an_empty_page() {
    let app = spawn_app();
    app.publish_model_and_wait("s-only");
    for query in [
        "track_number=NO-SUCH-TRACK",
        "customer_id=nobody",
        // The model's values, in another case.
        "track_number=wbilmtesttrack",
        "customer_id=TEST",
        &format!("track_number={}", "x".repeat(256)),
    ] {
        let (status, _, body) = app.get(&format!("/orders?{query}"));
        assert_eq!(status, 200, "{query}");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({ "orders": [], "next": null }),
            "{query}"
        );
    }
    // The model's own values do match: the empty pages are not a broken search.
    assert_eq!(
        ids(&page(&app, "track_number=WBILMTESTTRACK").0),
        ["s-only"]
    );
    assert_eq!(ids(&page(&app, "customer_id=test").0), ["s-only"]);
}

#[test]
fn bad_search_values_and_a_parameter_given_twice_get_400_naming_the_rule() {
    let app = spawn_app();
    let long = "x".repeat(257);
    for (query, rule) in [
        ("track_number=", "track_number must be 1 to 256 characters"),
        ("customer_id", "customer_id must be 1 to 256 characters"),
        (
            &format!("track_number={long}"),
            "track_number must be 1 to 256 characters",
        ),
        (
            &format!("customer_id={long}&limit=2"),
            "customer_id must be 1 to 256 characters",
        ),
        ("customer_id=a%00b", "customer_id must not contain U+0000"),
        ("track_number=%FF", "track_number must be valid UTF-8"),
        (
            "track_number=a&customer_id=b&track_number=a",
            "give track_number only once",
        ),
        (
            "track_number=a&track_number=b",
            "give track_number only once",
        ),
        ("track_number=a&colour=red", "unknown parameter \"colour\""),
        (
            "track_number=a&limit=0",
            "limit must be an integer from 1 to 1000",
        ),
        (
            "customer_id=a&before=garbage",
            "before is not a cursor returned by /orders",
        ),
    ] {
        let json = app.get_json_error(&format!("/orders?{query}"), 400);
        assert_eq!(json, serde_json::json!({ "error": rule }), "{query}");
    }
}

#[test]
fn an_order_with_a_track_number_too_long_for_the_search_index_is_still_stored() {
    // Arrange: validation sets no maximum, and a btree entry cannot exceed about 2.7 KB. Random
    // hex does not compress, so this value could not go into a full index on the column.
    let app = spawn_app();
    assert_eq!(
        app.query_i64(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'orders' \
             AND indexname IN ('orders_track_number_idx', 'orders_customer_id_idx')"
        ),
        2,
        "the search indexes exist"
    );
    let huge: String = (0..1000)
        .map(|_| format!("{:08x}", rand::random::<u32>()))
        .collect();
    app.publish(&model_with("s-huge", "2021-01-01T00:00:00Z", &huge, &huge));
    app.publish(&model_with("s-next", "2021-01-02T00:00:00Z", "T", "C"));

    // Act: both are stored (one batch that failed would hold both back, again and again).
    app.wait_for_order("s-huge");
    app.wait_for_order("s-next");

    // Assert: it is listed; the search cannot look for a value that long.
    let (recent, _) = page(&app, "");
    assert_eq!(ids(&recent), ["s-next", "s-huge"]);
    assert_eq!(recent[1]["track_number"], huge.as_str());
    let (status, _, _) = app.get(&format!("/orders?track_number={huge}"));
    assert_eq!(status, 400);
    assert_eq!(ids(&page(&app, "customer_id=C").0), ["s-next"]);
}
