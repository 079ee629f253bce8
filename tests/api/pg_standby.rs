//! PostgreSQL with a hot standby, and the failovers a PostgreSQL cluster makes (issue 21): a
//! replica restores its cache from a standby (`--database-read-url`) without becoming ready with
//! orders missing, however far behind the standby is, and through the queries the standby
//! cancels while it replays a heavy load; ingest, writing to `--database-url`, rides out a
//! server turned read-only under it while the name moves to a new primary, and a connection cut
//! during COMMIT, storing every order once, rejecting none, and acking nothing before it is
//! committed.
//!
//! Each test has its own servers: a primary and a standby (`support::standby`), or the shared
//! PostgreSQL behind a proxy; its stream is on the shared NATS.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::support::commands::{ordersvc, run_successfully, serve_with};
use crate::support::http::cached_orders;
use crate::support::isolation::Names;
use crate::support::nats::{Publisher, SharedStream, StreamClient};
use crate::support::orders::{
    assert_every_order_is_served, generated_orders, model_with_uid, testdata, with_ids,
};
use crate::support::postgres::{postgres_addr, SharedDatabase};
use crate::support::proxy::Proxy;
use crate::support::service::TestApp;
use crate::support::standby::{ConflictingLoad, OwnPrimaryStandby, StandbySettings, Which};
use crate::support::urls::with_host;

/// Stored orders, counted on one server.
const COUNT_ORDERS: &str = "SELECT count(*) FROM orders";
/// Rejected messages, counted on one server.
const COUNT_REJECTED: &str = "SELECT count(*) FROM rejected_messages";
/// Every rejected message: its stream sequence, order, reason, and whether the order is stored.
const REJECTED_AND_WHETHER_STORED: &str = "SELECT format('seq %s (%s): %s; stored: %s', \
            r.stream_seq, o.order_uid, r.reason, o.order_uid IS NOT NULL) \
     FROM rejected_messages r \
     LEFT JOIN orders o ON o.order_uid = convert_from(r.payload, 'UTF8')::jsonb ->> 'order_uid' \
     ORDER BY r.stream_seq";
/// Sessions of the service's role (the test's own queries run as the superuser).
const SERVICE_SESSIONS: &str = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'ordersvc'";
/// The service's sessions whose last statement was part of a write (the HTTP side's and the
/// health probe's only read).
const WRITING_SESSIONS: &str = "SELECT format('%s, %s, last statement: %s', \
            application_name, state, left(query, 60)) \
     FROM pg_stat_activity \
     WHERE usename = 'ordersvc' AND query ~* '^\\s*(insert|begin|commit|rollback)'";
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

/// How long the orders may take to be stored on the new primary after its name moved to it.
const STORE_DEADLINE: Duration = Duration::from_secs(60);
/// How long connections to a server that turned read-only may outlive the move of its name.
const DROP_DEADLINE: Duration = Duration::from_secs(60);

/// Sets a flag when dropped, also while a test unwinds.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Publishes orders `{prefix}-NNNNNN` in small chunks, each published (acked by the stream)
/// before the next, until `stop`; counts them in `published` as it goes, and returns them.
fn publish_until(
    publisher: &Publisher,
    prefix: &str,
    stop: &AtomicBool,
    published: &AtomicUsize,
) -> Vec<(String, Vec<u8>)> {
    const CHUNK: usize = 25;
    let mut orders = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let chunk = expected(prefix, orders.len()..orders.len() + CHUNK);
        publisher.publish_many(with_ids(&chunk));
        orders.extend(chunk);
        published.store(orders.len(), Ordering::Release);
        std::thread::sleep(Duration::from_millis(25));
    }
    orders
}

#[test]
fn ingest_moves_to_the_new_primary_when_the_old_one_turns_read_only_and_loses_nothing() {
    // Arrange: the service writes through a proxy (the name of the primary) to A, the primary;
    // B, its standby, is the one to be promoted.
    let servers = OwnPrimaryStandby::start(StandbySettings::default());
    let name = Proxy::start(servers.addr(Which::Primary));
    let names = Names::fresh();
    let stream = SharedStream::of(&names);
    let app = serve(
        &with_host(&servers.url(Which::Primary), name.addr()),
        &names,
        &stream,
        &[],
    );
    let bus = StreamClient::connect(&names, &stream.nats_url);
    app.wait_until(
        |_| bus.consumer_info().is_ok(),
        "the service to create its stream and durable consumer",
    );
    let on = |which| servers.query_i64(which, COUNT_ORDERS);
    let publisher = bus.publisher();
    let stop = AtomicBool::new(false);
    let published = AtomicUsize::new(0);

    let (orders, moved_at) = std::thread::scope(|s| {
        let publishing = s.spawn(|| publish_until(&publisher, "switch", &stop, &published));
        // Also if an assertion fails here: the scope waits for the publisher.
        let _stop_publishing = SetOnDrop(&stop);

        // Act 1: A turns read-only under ingest, as an operator makes an old primary.
        servers.wait_until(|| on(Which::Primary) >= 500, "ingest to be under way on A");
        servers.set_read_only(true);
        let read_only_at = Instant::now();
        let reasons = app.wait_until_unready("A is read-only");

        // Assert 1: not ready, saying why; nothing acked that A has not stored (every message
        // is an order of its own, so the ack floor counts stored orders), for some seconds, as
        // a DNS name takes a while to move.
        assert!(
            reasons.iter().any(|r| r.contains("read-only")),
            "the reasons: {reasons:?}"
        );
        for _ in 0..10 {
            let floor = bus
                .consumer_info()
                .expect("the consumer")
                .ack_floor
                .stream_sequence;
            let stored = on(Which::Primary);
            assert!(
                floor <= stored as u64,
                "acked up to {floor} while A holds {stored} orders"
            );
            std::thread::sleep(Duration::from_millis(500));
        }

        // Act 2: B, once it holds everything A committed, is promoted, and the name moves to it;
        // the service's open connections still lead to A. Publishing goes on meanwhile and after.
        servers.wait_until_replayed();
        servers.promote_standby();
        name.retarget(servers.addr(Which::Standby));
        let at_move = published.load(Ordering::Acquire);
        eprintln!(
            "A read-only; {:.1?} later B promoted and the name moved to it, with {} orders on \
             A and {at_move} published",
            read_only_at.elapsed(),
            on(Which::Primary)
        );
        let moved_at = Instant::now();
        servers.wait_until(
            || published.load(Ordering::Acquire) >= at_move + 500,
            "500 more orders to be published after the move",
        );
        stop.store(true, Ordering::Release);
        (publishing.join().expect("the publisher panicked"), moved_at)
    });

    // Assert 2: every order stored on B, promptly (the connections to A dropped, not waited
    // out), none rejected anywhere, all acked and served.
    let total = orders.len() as i64;
    loop {
        let stored = on(Which::Standby);
        if stored == total {
            break;
        }
        assert!(
            moved_at.elapsed() < STORE_DEADLINE,
            "{STORE_DEADLINE:?} after the name moved, B holds {stored} of {total} orders; \
             rejected there: {:#?}",
            servers.query_strings(Which::Standby, REJECTED_AND_WHETHER_STORED)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "all {total} orders on B {:.1?} after the name moved",
        moved_at.elapsed()
    );
    app.wait_until(
        |_| {
            let info = bus.consumer_info().expect("the consumer");
            info.num_pending == 0 && info.num_ack_pending == 0
        },
        "the consumer to have no message pending or unacked",
    );
    assert_eq!(
        bus.consumer_info()
            .expect("the consumer")
            .ack_floor
            .stream_sequence,
        total as u64
    );
    assert_eq!(on(Which::Standby), total, "every order on B");
    for which in [Which::Primary, Which::Standby] {
        let rejected = servers.query_strings(which, REJECTED_AND_WHETHER_STORED);
        assert!(
            rejected.is_empty(),
            "valid orders recorded as rejected on the {which}: {rejected:#?}"
        );
    }
    assert_every_order_is_served(&app, &orders);
    app.wait_until(
        |app| app.readiness().0 == 200,
        "/readyz to answer 200 again",
    );

    // Assert 3: the connections to A that took part in writes are dropped, not kept to fail
    // again (orders published one by one meanwhile put every idle connection of the pool to use).
    let deadline = Instant::now() + DROP_DEADLINE;
    for more in 0.. {
        let writing = servers.query_strings(Which::Primary, WRITING_SESSIONS);
        if writing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{DROP_DEADLINE:?} after every order was on B and served, and {more} orders \
             later, the service still has connections to A that it wrote through: {writing:#?}"
        );
        let (uid, order) = expected("after", more..more + 1).remove(0);
        publisher.publish_many([(Some(uid.as_str()), order.as_slice())]);
        assert!(app.wait_for_order(&uid) == order, "{uid}");
    }
}

/// One integer from a query on the database at `url`, on a connection of its own.
fn query_i64(url: &str, sql: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the test's own query");
    rt.block_on(async {
        let mut conn = PgConnection::connect(url).await?;
        let value: i64 = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
        conn.close().await?;
        Ok::<_, sqlx::Error>(value)
    })
    .unwrap_or_else(|e| panic!("cannot run {sql:?}: {e}"))
}

#[test]
fn a_connection_cut_during_commit_leaves_every_order_stored_once_and_none_rejected() {
    // Arrange: the service reaches its database on the shared PostgreSQL through the proxy, in
    // plaintext (the proxy must read the COMMIT); its next COMMIT is cut once the server has
    // committed, before the service hears so.
    let names = Names::fresh();
    let db = SharedDatabase::named(&names.suffix);
    let stream = SharedStream::of(&names);
    let proxy = Proxy::start(postgres_addr());
    let app = serve(&with_host(&db.url, proxy.addr()), &names, &stream, &[]);
    let bus = StreamClient::connect(&names, &stream.nats_url);
    app.wait_until(
        |_| bus.consumer_info().is_ok(),
        "the service to create its stream and durable consumer",
    );
    let orders = generated_orders("commit-cut", 2_000);
    proxy.cut_next_commit();

    // Act
    bus.publisher().publish_many(with_ids(&orders));
    app.wait_until(
        |_| proxy.commits_cut() == 1,
        "a COMMIT of the service to be cut",
    );

    // Assert: the batch whose outcome the service could not know was retried: every order is
    // stored once and served, none rejected, all acked.
    app.wait_until(
        |_| {
            let info = bus.consumer_info().expect("the consumer");
            info.num_pending == 0 && info.num_ack_pending == 0
        },
        "the consumer to have no message pending or unacked",
    );
    assert_eq!(query_i64(&db.url, COUNT_ORDERS), orders.len() as i64);
    assert_eq!(query_i64(&db.url, COUNT_REJECTED), 0, "rejected messages");
    assert_every_order_is_served(&app, &orders);
    app.wait_until(
        |app| app.readiness().0 == 200,
        "/readyz to answer 200 again",
    );
    assert_eq!(proxy.commits_cut(), 1);
}
