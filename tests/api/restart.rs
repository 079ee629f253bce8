//! Crashes, restarts and stops: everything stored is served again, byte for byte.

use crate::support::orders::{
    assert_every_order_is_served, generated_orders, model_with_uid, testdata, with_ids,
};
use crate::support::service::{spawn_child_app, spawn_child_app_with, TestApp};

/// How many generated orders the restart tests store beside the samples: a restore of a few
/// thousand, not a handful.
const GENERATED: usize = 3000;

/// The valid testdata samples and `GENERATED` generated orders, as (order_uid, message).
fn some_valid_orders() -> Vec<(String, Vec<u8>)> {
    let mut orders: Vec<(String, Vec<u8>)> = [
        ("b563feb7b2b84b6test", "model.json"),
        ("multi-item-order-0001", "valid/multi-item.json"),
        ("extra-fields-order-0001", "valid/extra-fields.json"),
        ("html-in-fields-0001", "valid/html-in-fields.json"),
        ("unicode-order-0001", "valid/unicode.json"),
    ]
    .into_iter()
    .map(|(uid, file)| (uid.to_owned(), testdata(file)))
    .collect();
    orders.extend(generated_orders("generated", GENERATED));
    orders
}

/// A service that has stored `some_valid_orders()` and served each of them byte for byte, with
/// those orders.
fn spawn_app_serving_some_valid_orders() -> (TestApp, Vec<(String, Vec<u8>)>) {
    let app = spawn_child_app();
    let orders = some_valid_orders();
    app.publish_many(with_ids(&orders));
    for (uid, message) in &orders {
        assert_eq!(&app.wait_for_order(uid), message, "{uid} before the kill");
    }
    (app, orders)
}

#[test]
fn after_a_kill_and_restart_every_order_is_served_again_byte_for_byte() {
    // Arrange
    let (mut app, orders) = spawn_app_serving_some_valid_orders();

    // Act
    app.kill();
    app.restart();

    // Assert: ready means restored, so every order is there at once.
    assert_every_order_is_served(&app, &orders);
    assert_eq!(app.orders_count(), orders.len() as i64);
}

#[test]
fn after_a_restart_with_the_stream_deleted_orders_are_restored_from_postgres() {
    // Arrange
    let (mut app, orders) = spawn_app_serving_some_valid_orders();
    app.kill();

    // Act
    app.delete_stream();
    app.restart(); // waits until the service has recreated the stream and the consumer

    // Assert: ready means restored, so every order is there at once.
    assert_every_order_is_served(&app, &orders);
    // And it carries on with the new stream.
    let newer = model_with_uid("after-the-stream-was-deleted");
    app.publish(&newer);
    assert_eq!(app.wait_for_order("after-the-stream-was-deleted"), newer);
    assert_eq!(app.orders_count(), orders.len() as i64 + 1);
}

#[test]
fn sigterm_stops_the_service_with_exit_code_zero() {
    // Arrange
    let mut app = spawn_child_app();
    app.publish(&testdata("model.json"));
    app.wait_for_order("b563feb7b2b84b6test");

    // Act
    let status = app.terminate();

    // Assert
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
}

#[test]
fn restoring_documents_near_the_max_payload_stays_within_the_memory_bound() {
    // Arrange: 300 stored documents of about 1 MiB (the NATS max payload), written straight
    // into the table, and a cache bound of 64 MiB.
    let mut app = spawn_child_app_with(&["--cache-max-bytes", "64MiB"]);
    app.execute_as_owner(
        "INSERT INTO orders (order_uid, document, date_created, customer_id, track_number, stream_seq) \
         SELECT 'big-' || i, '\"' || repeat(md5(i::text), 32000) || '\"', now(), 'c', 't', i \
         FROM generate_series(1, 300) AS i",
    );
    assert!(app.terminate().success());

    // Act
    app.restart();

    // Assert: memory stayed under the bound that ingest keeps for a backlog of such messages
    // (hostile.rs), because the restore hands the cache chunks bounded in bytes, not only in
    // count. (With chunks of 10,000 documents, all 300 MiB were in flight at once.)
    let peak = app.peak_rss_bytes();
    eprintln!(
        "peak RSS restoring 300 documents of 1 MiB: {} MiB",
        peak >> 20
    );
    assert!(
        peak < 256 << 20,
        "peak RSS {} MiB while restoring",
        peak >> 20
    );
    assert!(app.metric("ordersvc_cache_bytes") <= (64 << 20) as f64);
    let (status, _, body) = app.get("/order/big-7");
    assert_eq!(status, 200);
    assert_eq!(
        body.len(),
        32_000 * 32 + 2,
        "served whole, from memory or PostgreSQL"
    );
}
