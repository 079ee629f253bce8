//! The web page's search in a real browser: `/?track_number=T` and `/?customer_id=C` (what the
//! lookup box's "Track number" and "Customer id" choices navigate to) list the matching orders as
//! the recent list does; no match and a bad value say so; hostile query text stays text.

use crate::support::browser::{dump_dom, text_of_element};
use crate::support::orders::model_with;
use crate::support::service::{spawn_app, TestApp};

fn publish_all(app: &TestApp, orders: &[(String, Vec<u8>)]) {
    for (_, message) in orders {
        app.publish(message);
    }
    for (uid, _) in orders {
        app.wait_for_order(uid);
    }
}

/// The order ids the list links to, in the page's order.
fn listed(dom: &str) -> Vec<&str> {
    let table = &dom[dom.find(r#"<table id="recent">"#).expect("the list table")..];
    let table = &table[..table.find("</table>").expect("the end of the list table")];
    table
        .split(r#"<a href="/?id="#)
        .skip(1)
        .map(|rest| &rest[..rest.find('"').expect("a closing quote")])
        .collect()
}

/// The text of the element with this id (up to its first child element).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    text_of_element(dom, &format!(r#"id="{id}""#))
}

#[test]
fn a_search_by_track_number_lists_the_matching_orders_newest_first() {
    // Arrange
    let app = spawn_app();
    let orders: Vec<_> = [
        ("pt-old", "2021-01-01T00:00:00Z", "PAGE-TRACK", "c1"),
        ("pt-new", "2021-01-03T00:00:00Z", "PAGE-TRACK", "c2"),
        ("pt-mid", "2021-01-02T00:00:00Z", "PAGE-TRACK", "c3"),
        ("pt-other", "2021-01-04T00:00:00Z", "PAGE-TRACK-2", "c1"),
    ]
    .into_iter()
    .map(|(uid, date, track, customer)| (uid.to_owned(), model_with(uid, date, track, customer)))
    .collect();
    publish_all(&app, &orders);

    // Act
    let dom = dump_dom(&format!("http://{}/?track_number=PAGE-TRACK", app.addr));

    // Assert: the matches in the recent list's table, as links that open them; no order open,
    // no older page, and the box set to track numbers.
    assert_eq!(listed(&dom), ["pt-new", "pt-mid", "pt-old"], "{dom}");
    assert!(dom.contains(">PAGE-TRACK</td>"), "{dom}");
    assert_eq!(
        text_of(&dom, "recent-title"),
        "Orders with track number “PAGE-TRACK”"
    );
    assert_eq!(text_of(&dom, "id-label"), "Track number");
    assert_eq!(text_of(&dom, "go"), "Find orders");
    assert!(
        dom.contains(r#"<article id="order" hidden="""#),
        "an order is shown:\n{dom}"
    );
    assert!(
        dom.contains(r#"id="older" hidden="""#),
        "older shown:\n{dom}"
    );
    assert!(
        dom.contains(r#"<p id="recent-state" role="status" hidden="""#),
        "{dom}"
    );

    // An order opened by its id has the recent list below it, as before the search existed.
    let opened = dump_dom(&format!("http://{}/?id=pt-mid", app.addr));
    assert_eq!(text_of(&opened, "recent-title"), "Recent orders");
    assert_eq!(listed(&opened), ["pt-other", "pt-new", "pt-mid", "pt-old"]);
}

#[test]
fn a_search_by_customer_id_lists_that_customers_orders_with_an_older_page() {
    // Arrange: more orders than a page holds, and another customer's.
    let app = spawn_app();
    let mut orders: Vec<_> = (0..21)
        .map(|i| {
            let uid = format!("pc-{i:02}");
            let date = format!("2021-02-{:02}T00:00:00Z", i + 1);
            let message = model_with(&uid, &date, &format!("T{i}"), "page cust+1");
            (uid, message)
        })
        .collect();
    orders.push((
        "pc-other".to_owned(),
        model_with("pc-other", "2021-03-01T00:00:00Z", "T", "page cust"),
    ));
    publish_all(&app, &orders);

    // Act: a space and a plus in the value, encoded as the page encodes them.
    let dom = dump_dom(&format!("http://{}/?customer_id=page%20cust%2B1", app.addr));

    // Assert: the newest 20 of that customer, and an "older" button for the 21st.
    let expected: Vec<String> = (1..21).rev().map(|i| format!("pc-{i:02}")).collect();
    assert_eq!(listed(&dom), expected, "{dom}");
    assert_eq!(
        text_of(&dom, "recent-title"),
        "Orders with customer id “page cust+1”"
    );
    assert_eq!(text_of(&dom, "id-label"), "Customer id");
    assert!(
        dom.contains(r#"<button type="button" id="older">Older orders</button>"#),
        "no older button:\n{dom}"
    );
}

#[test]
fn a_search_without_matches_or_with_a_bad_value_says_so() {
    let app = spawn_app();
    app.publish_model_and_wait("ps-only");

    let none = dump_dom(&format!("http://{}/?track_number=NO-SUCH-TRACK", app.addr));
    assert_eq!(
        text_of(&none, "recent-state"),
        "No orders match track number “NO-SUCH-TRACK”."
    );
    assert_eq!(listed(&none), Vec::<&str>::new());

    let long = "x".repeat(257);
    let bad = dump_dom(&format!("http://{}/?customer_id={long}", app.addr));
    assert_eq!(
        text_of(&bad, "recent-state"),
        format!("“{long}” is not a valid customer id: customer_id must be 1 to 256 characters.")
    );
    assert_eq!(listed(&bad), Vec::<&str>::new());
}

#[test]
fn hostile_search_text_is_shown_literally_and_runs_nothing() {
    // Arrange
    let app = spawn_app();
    app.publish_model_and_wait("ps-hostile");
    let query = r#"<img src=x onerror="document.body.setAttribute('data-pwned','search')">"#;
    let encoded: String = query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();

    for by in ["track_number", "customer_id"] {
        // Act
        let dom = dump_dom(&format!("http://{}/?{by}={encoded}", app.addr));

        // Assert: no element came from the query, nothing ran, and the text is there as text.
        assert!(!dom.contains("data-pwned="), "a payload ran:\n{dom}");
        assert!(
            !dom.contains("<img"),
            "an img element was made from the query:\n{dom}"
        );
        let escaped =
            r#"&lt;img src=x onerror="document.body.setAttribute('data-pwned','search')"&gt;"#;
        let noun = by.replace('_', " ");
        assert_eq!(
            text_of(&dom, "recent-state"),
            format!("No orders match {noun} “{escaped}”."),
            "{dom}"
        );
        assert!(
            text_of(&dom, "recent-title").ends_with(&format!("“{escaped}”")),
            "{dom}"
        );
    }
}
