//! `--cache-max-bytes`: memory holds at most the bound, and every stored order is still served,
//! byte for byte, before and after a restart (what is not in memory is read from PostgreSQL).

use crate::support::orders::{assert_every_order_is_served, generated_orders, with_ids};
use crate::support::service::spawn_app_with;

/// Room for about a dozen model-sized orders (~1.1 KB each); the test stores two thousand.
const BOUND: u64 = 15_000;

#[test]
fn a_cache_smaller_than_the_data_still_serves_every_order_within_its_bound() {
    // Arrange
    let bound = BOUND.to_string();
    let mut app = spawn_app_with(&["--cache-max-bytes", &bound]);
    let orders = generated_orders("bounded", 2000);
    app.publish_many(with_ids(&orders));
    for (uid, _) in &orders {
        app.wait_for_order(uid);
    }

    // Act + Assert: every order, twice over (hits and misses), and memory within the bound.
    assert_every_order_is_served(&app, &orders);
    assert_every_order_is_served(&app, &orders);
    assert!(app.metric("ordersvc_cache_bytes") <= BOUND as f64);
    assert!(app.metric("ordersvc_cache_evictions_total") > 0.0);
    assert!(app.metric("ordersvc_cache_misses_total") > 0.0);
    assert_eq!(
        app.get("/order/bounded-never-stored").0,
        404,
        "an unknown id is still a 404"
    );

    // And after a restart, which restores only what fits.
    app.stop();
    app.restart();
    assert!(app.metric("ordersvc_cache_bytes") <= BOUND as f64);
    assert!(app.metric("ordersvc_cache_orders") < orders.len() as f64);
    assert_every_order_is_served(&app, &orders);
    assert!(app.metric("ordersvc_cache_bytes") <= BOUND as f64);
}
