//! A storm of readers cannot hold ingest up: listings go through the HTTP side's own PostgreSQL
//! pool (`ordersvc-http`), never through the pool ingest commits with (`ordersvc-ingest`), and
//! the service stays ready throughout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::orders::{model_with_uid, with_ids};
use crate::support::service::{spawn_app, TestApp};

/// Orders ingested while the readers hammer the listing.
const ORDERS: usize = 20_000;
/// Client threads asking for the largest page of the listing, back to back.
const READERS: usize = 64;
/// Generous: a debug build ingesting on two cores shared with the readers (and other tests).
const INGEST_DEADLINE: Duration = Duration::from_secs(300);
/// Between two samples of `/readyz` and of `pg_stat_activity`.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// How the listing's query starts (`Store::recent`), as `pg_stat_activity` shows it.
const LISTING_QUERY: &str = "SELECT order_uid, date_created, customer_id, track_number FROM orders";

/// Sets the flag when dropped, so that the readers and the sampler stop even if the test panics
/// (a scope waits for its threads before it lets a panic through).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What the sampler saw over the whole storm.
#[derive(Debug, Default)]
struct Samples {
    taken: u64,
    /// Every `/readyz` answer other than 200, with its body.
    not_ready: Vec<(u16, String)>,
    /// Most `ordersvc-ingest` connections whose (last) query was the listing's, in one sample.
    listing_on_ingest: i64,
    /// Most `ordersvc-http` connections whose (last) query was the listing's, in one sample.
    listing_on_http: i64,
}

/// Connections of this test's service, named `application_name`, whose query is the listing's.
fn listing_connections(app: &TestApp, application_name: &str) -> i64 {
    app.query_i64(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'ordersvc_test_{}' \
         AND application_name = '{application_name}' AND query LIKE '{LISTING_QUERY}%'",
        app.names.suffix
    ))
}

fn sample_until(app: &TestApp, stop: &AtomicBool) -> Samples {
    let mut samples = Samples::default();
    while !stop.load(Ordering::Relaxed) {
        let (status, _, body) = app.get("/readyz");
        if status != 200 {
            samples
                .not_ready
                .push((status, String::from_utf8_lossy(&body).into_owned()));
        }
        samples.listing_on_ingest = samples
            .listing_on_ingest
            .max(listing_connections(app, "ordersvc-ingest"));
        samples.listing_on_http = samples
            .listing_on_http
            .max(listing_connections(app, "ordersvc-http"));
        samples.taken += 1;
        std::thread::sleep(SAMPLE_EVERY);
    }
    samples
}

#[test]
fn a_storm_of_readers_during_ingest_never_uses_ingest_connections_nor_stops_ingest() {
    // Arrange
    let app = spawn_app();
    let orders: Vec<(String, Vec<u8>)> = (0..ORDERS)
        .map(|i| {
            let uid = format!("storm-{i:05}");
            let message = model_with_uid(&uid);
            (uid, message)
        })
        .collect();
    let stop = AtomicBool::new(false);
    let (listed, refused) = (AtomicU64::new(0), AtomicU64::new(0));

    // Act: readers and the sampler run until ingest has stored every order (or the deadline).
    let (samples, stored) = std::thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..READERS {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let (status, _, _) = app.get("/orders?limit=1000");
                    // A listing that cannot get a connection in time is shed with a 503: the
                    // readers' own pool is small on purpose.
                    match status {
                        200 => listed.fetch_add(1, Ordering::Relaxed),
                        _ => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        let sampler = scope.spawn(|| sample_until(&app, &stop));
        app.publish_many(with_ids(&orders));
        let deadline = Instant::now() + INGEST_DEADLINE;
        let mut stored = app.orders_count();
        while stored < ORDERS as i64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            stored = app.orders_count();
        }
        stop.store(true, Ordering::Relaxed);
        let samples = sampler.join().expect("the sampler does not panic");
        (samples, stored)
    });
    let (listed, refused) = (listed.into_inner(), refused.into_inner());
    eprintln!("readers: {listed} listings, {refused} refused; {samples:?}");

    // Assert: ingest finished, and every order is served.
    assert_eq!(
        stored, ORDERS as i64,
        "ingest did not store every order within {INGEST_DEADLINE:?} of readers"
    );
    for (uid, message) in &orders {
        assert_eq!(&app.wait_for_order(uid), message, "{uid}");
    }
    // The storm was real, and it went through the HTTP side's own connections only.
    assert!(listed > 0, "no listing was answered");
    assert!(samples.taken > 0);
    assert!(
        samples.listing_on_http > 0,
        "no ordersvc-http connection ever ran the listing: {samples:?}"
    );
    assert_eq!(
        samples.listing_on_ingest, 0,
        "an ordersvc-ingest connection ran the listing: {samples:?}"
    );
    assert!(
        samples.not_ready.is_empty(),
        "/readyz left 200 during the storm: {:?}",
        samples.not_ready
    );
}
