//! The web page in a real browser: a stored order is shown in full, an unknown id says so, and
//! hostile text in an order is shown as text without running anything.

use std::path::PathBuf;

use crate::support::browser::{dump_dom, screenshot, text_of_element};
use crate::support::orders::{model_with_uid, testdata};
use crate::support::service::spawn_app;

/// The (serialised) text of the element whose `data-field` is `name`.
fn field<'a>(dom: &'a str, name: &str) -> &'a str {
    text_of_element(dom, &format!(r#"data-field="{name}""#))
}

fn docs(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/docs")).join(name)
}

#[test]
fn the_page_shows_a_stored_order_with_all_its_fields_and_items() {
    // Arrange
    let app = spawn_app();
    app.publish(&testdata("model.json"));
    app.publish(&testdata("valid/multi-item.json"));
    app.wait_for_order("b563feb7b2b84b6test");
    app.wait_for_order("multi-item-order-0001");
    let url = format!("http://{}/?id=multi-item-order-0001", app.addr);

    // Act
    let dom = dump_dom(&url);

    // Assert: the header, both cards and every item, and nothing left in a loading state.
    for (name, text) in [
        ("order_uid", "multi-item-order-0001"),
        ("track_number", "WBILMTESTTRACK"),
        ("date_utc", "2021-11-26T06:22:19Z"),
        ("customer_id", "test"),
        ("locale", "en"),
        ("delivery_service", "meest"),
        ("entry", "WBIL"),
        ("shardkey", "9"),
        ("oof_shard", "1"),
        ("sm_id", "99"),
        ("internal_signature", "(empty)"),
        ("delivery.name", "Test Testov"),
        ("delivery.phone", "+9720000000"),
        ("delivery.email", "test@gmail.com"),
        ("delivery.city", "Kiryat Mozkin"),
        ("delivery.zip", "2639809"),
        ("payment.bank", "alpha"),
        ("payment.provider", "wbpay"),
        ("payment.currency", "USD"),
        ("payment.paid_utc", "2021-11-26T06:22:07Z"),
        ("item_count", "3"),
    ] {
        assert_eq!(field(&dom, name), text, "{name}");
    }
    for item_text in [
        "Mascaras",
        "Vivienne Sabo",
        "Lipstick",
        "Maybelline",
        "Eyeliner",
        "NYX",
        "multi0001item3",
    ] {
        assert!(
            dom.contains(&format!(">{item_text}</td>")),
            "item cell {item_text} missing:\n{dom}"
        );
    }
    assert!(
        dom.contains(r#"<article id="order" aria-labelledby="order-title">"#),
        "order not shown:\n{dom}"
    );
    assert!(
        dom.contains(r#"id="state" class="state" role="status" aria-live="polite" hidden"#),
        "a state message is still shown:\n{dom}"
    );
    // The recent list has both orders, as links that open them.
    assert!(
        dom.contains(r#"href="/?id=b563feb7b2b84b6test""#),
        "recent list:\n{dom}"
    );

    screenshot(&url, &docs("screenshot-order.png"), 1280, 1500);
}

#[test]
fn the_page_says_when_an_order_does_not_exist_and_echoes_the_id_as_text() {
    // Arrange
    let app = spawn_app();
    let url = format!("http://{}/?id=no-such-order", app.addr);

    // Act
    let dom = dump_dom(&url);

    // Assert
    assert!(
        dom.contains("No order with id “no-such-order” was found."),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<article id="order" hidden="""#),
        "an order is shown:\n{dom}"
    );
    assert!(dom.contains("No orders stored yet."), "{dom}");

    screenshot(&url, &docs("screenshot-not-found.png"), 1280, 700);
}

#[test]
fn the_page_explains_an_invalid_id_with_the_rule() {
    let app = spawn_app();
    let dom = dump_dom(&format!("http://{}/?id=bad%20id%3Cb%3E", app.addr));
    assert!(
        dom.contains(
            "“bad id&lt;b&gt;” is not a valid order id: order_uid must be 1 to 64 characters"
        ),
        "{dom}"
    );
}

#[test]
fn hostile_text_in_an_order_is_shown_literally_and_runs_nothing() {
    // Arrange: an order whose strings would run script if the page treated them as HTML.
    let app = spawn_app();
    let order = String::from_utf8(model_with_uid("hostile-0001"))
        .expect("UTF-8")
        .replacen(
            r#""name": "Test Testov""#,
            r#""name": "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">""#,
            1,
        )
        .replacen(
            r#""name": "Mascaras""#,
            r#""name": "<script>document.body.setAttribute('data-pwned','script')</script>""#,
            1,
        )
        .replacen(
            r#""customer_id": "test""#,
            r#""customer_id": "\"><svg onload=\"document.body.setAttribute('data-pwned','svg')\">""#,
            1,
        );
    app.publish(order.as_bytes());
    app.wait_for_order("hostile-0001");

    // Act
    let dom = dump_dom(&format!("http://{}/?id=hostile-0001", app.addr));

    // Assert: nothing ran, no element was made from the data, and the text is there as text.
    assert!(!dom.contains("data-pwned="), "a payload ran:\n{dom}");
    assert!(
        !dom.contains("<img src=\"x\""),
        "an img element was created from order data:\n{dom}"
    );
    assert!(
        !dom.contains("<svg"),
        "an svg element was created from order data:\n{dom}"
    );
    assert_eq!(
        field(&dom, "delivery.name"),
        "&lt;img src=x onerror=\"document.body.setAttribute('data-pwned','img')\"&gt;"
    );
    assert!(
        dom.contains(
            "&lt;script&gt;document.body.setAttribute('data-pwned','script')&lt;/script&gt;</td>"
        ),
        "{dom}"
    );
}

#[test]
fn the_page_is_served_with_a_strict_content_security_policy() {
    let app = spawn_app();
    let (status, headers, body) = app.get("/");
    assert_eq!(status, 200);
    let csp = headers
        .get("content-security-policy")
        .expect("a CSP header");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(
        headers.get("x-content-type-options").map(String::as_str),
        Some("nosniff")
    );
    let html = String::from_utf8(body).expect("UTF-8");
    assert!(!html.contains("<script>"), "inline script in the page");
    for asset in ["/app.js", "/app.css"] {
        assert_eq!(app.get(asset).0, 200, "{asset}");
    }
}
