//! PostgreSQL with a hot standby (issue 21): a replica restores its cache from a standby
//! (`--database-read-url`) without becoming ready with orders missing, however far behind the
//! standby is, and through the queries the standby cancels while it replays a heavy load.
//!
//! Each test has its own primary and standby (`support::standby`); its stream is on the shared
//! NATS.

use std::ops::Range;
use std::time::Duration;

use crate::support::commands::{ordersvc, run_successfully, serve_with};
use crate::support::http::cached_orders;
use crate::support::isolation::Names;
use crate::support::nats::SharedStream;
use crate::support::orders::{assert_every_order_is_served, model_with_uid, testdata};
use crate::support::service::TestApp;
use crate::support::standby::{ConflictingLoad, OwnPrimaryStandby, StandbySettings, Which};

/// Stored orders, counted on one server.
const COUNT_ORDERS: &str = "SELECT count(*) FROM orders";
/// Sessions of the service's role (the test's own queries run as the superuser).
const SERVICE_SESSIONS: &str = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'ordersvc'";
/// Rows read from `orders` on a server, by any scan, as its statistics say.
const ROWS_READ: &str = "SELECT (coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0))::int8 \
     FROM pg_stat_user_tables WHERE relname = 'orders'";

/// `ordersvc migrate` on a database of the test's own.
fn migrate(url: &str) {
    run_successfully(ordersvc(&["migrate", "--database-url", url]), b"");
}

/// The id of the `i`th order inserted with `prefix`.
fn uid(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:06}")
}

/// The orders `insert_orders` stores for `prefix` and `range`, as the service must serve them.
fn expected(prefix: &str, range: Range<usize>) -> Vec<(String, Vec<u8>)> {
    range
        .map(|i| {
            let uid = uid(prefix, i);
            let document = model_with_uid(&uid);
            (uid, document)
        })
        .collect()
}

/// Stores orders on the primary with SQL, as another replica's ingest would have (but without
/// a changelog message: only a restore can bring them into a cache), one statement for all:
/// testdata/model.json with the ids `uid(prefix, i)` for `i` in `range`.
fn insert_orders(servers: &OwnPrimaryStandby, prefix: &str, range: Range<usize>) {
    let model = String::from_utf8(testdata("model.json")).expect("model.json is UTF-8");
    assert!(
        !model.contains("$model$"),
        "the model would end its quoting"
    );
    // regexp_replace without the `g` flag replaces the first match only, as `model_with_uid`
    // does: the payment's transaction id is the same string and stays.
    servers.execute(
        Which::Primary,
        &format!(
            "INSERT INTO orders \
                 (order_uid, document, date_created, customer_id, track_number, stream_seq) \
             SELECT uid, \
                    regexp_replace($model${model}$model$, \
                                   '\"order_uid\": \"b563feb7b2b84b6test\"', \
                                   format('\"order_uid\": \"%s\"', uid)), \
                    '2021-11-26T06:22:19Z', 'test', 'WBILMTESTTRACK', 0 \
             FROM (SELECT format('%s-%s', '{prefix}', lpad(i::text, 6, '0')) AS uid \
                   FROM generate_series({start}, {end}) i) ids",
            start = range.start,
            end = range.end - 1,
        ),
    );
}

/// `ordersvc serve` as a child on `database_url` and the stream of `names`, with `extra` flags;
/// ready when this returns.
fn serve(database_url: &str, names: &Names, stream: &SharedStream, extra: &[&str]) -> TestApp {
    let settings = names.serve_settings(database_url, &stream.nats_url);
    TestApp::start_child(serve_with(&settings, extra), &names.suffix)
}

/// The servers with orders `replayed-*` on both and `behind-*` committed on the primary after
/// the standby's replay was paused: a standby behind its primary.
fn a_standby_behind_its_primary() -> (OwnPrimaryStandby, Vec<(String, Vec<u8>)>) {
    let servers = OwnPrimaryStandby::start(StandbySettings::default());
    migrate(&servers.url(Which::Primary));
    insert_orders(&servers, "replayed", 0..300);
    servers.wait_until_replayed();
    servers.pause_replay();
    insert_orders(&servers, "behind", 0..300);
    assert_eq!(
        servers.query_i64(Which::Standby, COUNT_ORDERS),
        300,
        "the standby replayed orders committed after its replay was paused"
    );
    let orders = [expected("replayed", 0..300), expected("behind", 0..300)].concat();
    (servers, orders)
}

/// Asserts that a replica that has just become ready holds all of `orders` in memory (counted
/// before any request: a request for a missing order would load it from the primary) and serves
/// each byte for byte.
#[track_caller]
fn assert_ready_with_every_order(app: &TestApp, orders: &[(String, Vec<u8>)]) {
    let readyz = app.get("/readyz");
    assert_eq!(
        (readyz.0, cached_orders(&readyz)),
        (200, orders.len() as u64),
        "ready with orders missing: {}",
        String::from_utf8_lossy(&readyz.2)
    );
    assert_every_order_is_served(app, orders);
}

#[test]
fn a_replica_whose_standby_does_not_catch_up_in_time_restores_from_the_primary_and_misses_nothing()
{
    // Arrange
    let (servers, orders) = a_standby_behind_its_primary();
    let names = Names::fresh();
    let stream = SharedStream::of(&names);

    // Act: a replica that restores from the standby, waiting at most 3 s for it to catch up.
    let standby = servers.url(Which::Standby);
    let app = serve(
        &servers.url(Which::Primary),
        &names,
        &stream,
        &[
            "--database-read-url",
            &standby,
            "--read-catch-up-timeout",
            "3s",
        ],
    );

    // Assert: ready only with every order, which only the primary had.
    assert_ready_with_every_order(&app, &orders);
    assert_eq!(
        servers.query_i64(Which::Standby, COUNT_ORDERS),
        300,
        "the standby caught up after all: the test proved nothing"
    );
}

#[test]
fn a_replica_waiting_for_its_standby_to_catch_up_restores_from_it_once_it_has_and_misses_nothing() {
    // Arrange
    let (servers, orders) = a_standby_behind_its_primary();
    let names = Names::fresh();
    let stream = SharedStream::of(&names);
    let read_before = servers.query_i64(Which::Standby, ROWS_READ);

    // Act: a replica that would wait 45 s for the standby; replay resumes while it waits.
    let standby = servers.url(Which::Standby);
    let primary = servers.url(Which::Primary);
    let app = std::thread::scope(|s| {
        let starting = s.spawn(|| {
            serve(
                &primary,
                &names,
                &stream,
                &[
                    "--database-read-url",
                    &standby,
                    "--read-catch-up-timeout",
                    "45s",
                ],
            )
        });
        servers.wait_until(
            || starting.is_finished() || servers.query_i64(Which::Standby, SERVICE_SESSIONS) > 0,
            "the replica to connect to the standby",
        );
        let ready_before_the_standby_caught_up = starting.is_finished();
        servers.resume_replay();
        let app = starting
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        assert!(
            !ready_before_the_standby_caught_up,
            "the replica was ready before its standby had replayed what the primary committed"
        );
        app
    });

    // Assert: ready with every order, read from the standby.
    assert_ready_with_every_order(&app, &orders);
    servers.wait_until(
        || servers.query_i64(Which::Standby, ROWS_READ) - read_before >= orders.len() as i64,
        "the standby's statistics to show the restore's reads",
    );
}

#[test]
fn a_long_restore_from_a_standby_that_cancels_its_queries_under_a_heavy_write_load_completes() {
    const ORDERS: usize = 100_000;
    // Arrange: a standby that cancels a query standing in the way of replay after 100 ms, and
    // whose primary does not hold back the row versions its queries need. Under this load the
    // standby cancels any statement that runs for more than a few hundred milliseconds (every
    // attempt at streaming 100,000 rows was cancelled within 150-300 ms when the harness was
    // tried): a restore completes only if a retry goes on after the last row it got, rather
    // than starting its part over.
    let servers = OwnPrimaryStandby::start(StandbySettings {
        max_standby_streaming_delay: Duration::from_millis(100),
        hot_standby_feedback: false,
    });
    migrate(&servers.url(Which::Primary));
    insert_orders(&servers, "bulk", 0..ORDERS);
    servers.wait_until_replayed();
    let load = ConflictingLoad::start(&servers);
    servers.wait_until(|| load.rounds() >= 10, "the write load to run");
    let names = Names::fresh();
    let stream = SharedStream::of(&names);

    // Act: a replica that restores from the standby over two connections.
    let standby = servers.url(Which::Standby);
    let app = serve(
        &servers.url(Which::Primary),
        &names,
        &stream,
        &[
            "--database-read-url",
            &standby,
            "--restore-connections",
            "2",
        ],
    );
    let readyz = app.get("/readyz");
    let rounds = load.finish();

    // Assert: ready with every order, each served byte for byte (a sample: each is a request).
    assert_eq!(
        (readyz.0, cached_orders(&readyz)),
        (200, ORDERS as u64),
        "ready with orders missing: {}",
        String::from_utf8_lossy(&readyz.2)
    );
    let sample: Vec<usize> = (0..ORDERS).step_by(997).chain([ORDERS - 1]).collect();
    let sample: Vec<(String, Vec<u8>)> = sample
        .into_iter()
        .flat_map(|i| expected("bulk", i..i + 1))
        .collect();
    assert_every_order_is_served(&app, &sample);
    // ...through cancellations of the service's own queries: without one, this proved nothing.
    let log = servers.log(Which::Standby);
    let cancelled = log
        .lines()
        .filter(|line| line.contains("conflict with recovery") && line.contains("ordersvc@"))
        .count();
    eprintln!(
        "{ORDERS} orders restored from the standby through {cancelled} cancellations of the \
         service's queries, {} recovery conflicts in all, {rounds} rounds of write load",
        servers.recovery_conflicts()
    );
    assert!(
        cancelled > 0,
        "the standby cancelled none of the service's queries ({rounds} rounds of write load): \
         the test proved nothing\n{log}"
    );
}
