//! Test orders: testdata/model.json with another id, date, track number, customer, person or
//! size, and many of them at once.

use super::isolation::random_suffix;
use super::service::TestApp;

/// A file under testdata/, byte for byte.
pub fn testdata(path: &str) -> Vec<u8> {
    let full = format!(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/{}"), path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("cannot read {full}: {e}"))
}

/// testdata/model.json with another order_uid (and nothing else changed).
pub fn model_with_uid(uid: &str) -> Vec<u8> {
    let model = String::from_utf8(testdata("model.json")).expect("model.json is UTF-8");
    let from = r#""order_uid": "b563feb7b2b84b6test""#;
    assert!(model.contains(from), "model.json no longer has {from}");
    model
        .replacen(from, &format!(r#""order_uid": "{uid}""#), 1)
        .into_bytes()
}

/// testdata/model.json as text, with `from` replaced once by `to`.
pub fn replace_once(model: &str, from: &str, to: &str) -> String {
    assert!(model.contains(from), "the model no longer has {from}");
    model.replacen(from, to, 1)
}

/// The model with this id, creation time (RFC 3339), top-level track number and customer (the
/// items' track numbers stay as they are).
pub fn model_with(uid: &str, date: &str, track: &str, customer: &str) -> Vec<u8> {
    let model = String::from_utf8(model_with_uid(uid)).expect("UTF-8");
    let model = replace_once(
        &model,
        r#""date_created": "2021-11-26T06:22:19Z""#,
        &format!(r#""date_created": {}"#, serde_json::json!(date)),
    );
    // The first track_number is the order's own.
    let model = replace_once(
        &model,
        r#""track_number": "WBILMTESTTRACK""#,
        &format!(r#""track_number": {}"#, serde_json::json!(track)),
    );
    replace_once(
        &model,
        r#""customer_id": "test""#,
        &format!(r#""customer_id": {}"#, serde_json::json!(customer)),
    )
    .into_bytes()
}

/// The person an order is for, every value unique (a random part each), so that a search for
/// one of them finds this order's copies and nothing else.
#[derive(Debug, Clone)]
pub struct Person {
    pub name: String,
    pub phone: String,
    pub email: String,
    pub address: String,
    pub customer_id: String,
}

impl Person {
    pub fn unique() -> Person {
        Person {
            name: format!("Erin Erasable {}", random_suffix()),
            phone: format!("+7 555 {}", random_suffix()),
            email: format!("erin.{}@example.org", random_suffix()),
            address: format!("{} Forgotten Lane", random_suffix()),
            customer_id: format!("customer-{}", random_suffix()),
        }
    }

    /// What identifies the person (the customer id is the shop's, not theirs), with its field.
    pub fn personal_values(&self) -> [(&'static str, &str); 4] {
        [
            ("delivery.name", &self.name),
            ("delivery.phone", &self.phone),
            ("delivery.email", &self.email),
            ("delivery.address", &self.address),
        ]
    }
}

/// testdata/model.json with this id, for this person (delivery name, phone, email, address and
/// customer_id).
pub fn model_for(uid: &str, person: &Person) -> Vec<u8> {
    let mut model = String::from_utf8(model_with_uid(uid)).expect("model.json is UTF-8");
    for (field, from, to) in [
        ("name", "Test Testov", &person.name),
        ("phone", "+9720000000", &person.phone),
        ("email", "test@gmail.com", &person.email),
        ("address", "Ploshad Mira 15", &person.address),
        ("customer_id", "test", &person.customer_id),
    ] {
        model = replace_once(
            &model,
            &format!(r#""{field}": "{from}""#),
            &format!(r#""{field}": {}"#, serde_json::json!(to)),
        );
    }
    model.into_bytes()
}

/// A valid order of exactly `size` bytes: the model with huge strings of several kinds
/// (multi-byte UTF-8, JSON escapes, markup, and plain ASCII to make up the exact size).
pub fn order_of_size(uid: &str, size: usize) -> Vec<u8> {
    let model = String::from_utf8(model_with_uid(uid)).expect("model.json is UTF-8");
    let wide = "Ü🦀ж".repeat(30_000); // 9 bytes each
    let escaped = r#"\"\\\n\t\u0000\u00e9</script><b>"#.repeat(10_000);
    let order = replace_once(
        &model,
        r#""address": "Ploshad Mira 15""#,
        &format!(r#""address": "{wide}""#),
    );
    let order = replace_once(
        &order,
        r#""name": "Mascaras""#,
        &format!(r#""name": "{escaped}""#),
    );
    let placeholder = r#""customer_id": "test""#;
    let without_padding = order.len() - "test".len();
    assert!(
        without_padding < size,
        "the fixed part is already too large"
    );
    let padding = "c".repeat(size - without_padding);
    let order = replace_once(
        &order,
        placeholder,
        &format!(r#""customer_id": "{padding}""#),
    );
    assert_eq!(order.len(), size);
    order.into_bytes()
}

/// `n` copies of testdata/model.json, each with its own order_uid `{prefix}-{i:05}`.
pub fn generated_orders(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let uid = format!("{prefix}-{i:05}");
            let message = model_with_uid(&uid);
            (uid, message)
        })
        .collect()
}

/// The orders as `publish_many` takes them: each with its order_uid as `Nats-Msg-Id`.
pub fn with_ids(orders: &[(String, Vec<u8>)]) -> impl Iterator<Item = (Option<&str>, &[u8])> {
    orders
        .iter()
        .map(|(uid, message)| (Some(uid.as_str()), message.as_slice()))
}

/// Asserts that every order answers 200 on its first request (no waiting) with exactly the bytes
/// that were published. A failure points at the caller's line.
#[track_caller]
pub fn assert_every_order_is_served(app: &TestApp, orders: &[(String, Vec<u8>)]) {
    for (uid, message) in orders {
        let (status, _, body) = app.get(&format!("/order/{uid}"));
        assert_eq!(status, 200, "{uid}: {}", String::from_utf8_lossy(&body));
        // Not assert_eq!: the bodies can be megabytes.
        assert!(&body == message, "{uid}: the body differs from the message");
    }
}
