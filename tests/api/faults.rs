//! Faults on purpose: PostgreSQL or NATS unreachable mid-ingest (through a proxy, never by
//! stopping the shared servers), SIGKILL and SIGTERM under load, and a row PostgreSQL refuses.
//! The promise under test is always the same: every valid order is stored once and served, and
//! nothing is acked before it is committed.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::support::orders::{
    assert_every_order_is_served, generated_orders, model_with_uid, with_ids,
};
use crate::support::postgres::OrdersLocked;
use crate::support::proxy::Proxy;
use crate::support::service::{
    spawn_app, spawn_app_behind_proxy, spawn_child_app, Runs, Server, TestApp,
};

/// How long PostgreSQL stays unreachable.
const DB_OUTAGE: Duration = Duration::from_secs(10);
/// How long NATS stays unreachable.
const NATS_OUTAGE: Duration = Duration::from_secs(4);
/// How long anything else here may take before the test gives up.
const DEADLINE: Duration = Duration::from_secs(60);

/// Sleeps until `instant` (at once if it has passed).
fn sleep_until(instant: Instant) {
    std::thread::sleep(instant.saturating_duration_since(Instant::now()));
}

/// The act of the outage tests: publishes the first half of `orders` and, once the first order
/// is served, cuts `proxy` while the rest of that half is still being published and ingested;
/// then publishes the second half, which reaches the stream while the service cannot reach the
/// server behind `proxy`. Returns when the outage is to end.
fn cut_mid_ingest(
    app: &TestApp,
    proxy: &Proxy,
    orders: &[(String, Vec<u8>)],
    outage: Duration,
) -> Instant {
    let (first_half, second_half) = orders.split_at(orders.len() / 2);
    let (first_uid, first_message) = &first_half[0];
    let outage_ends = std::thread::scope(|s| {
        let publishing = s.spawn(|| app.publish_many(with_ids(first_half)));
        assert_eq!(&app.wait_for_order(first_uid), first_message);
        proxy.cut();
        let outage_ends = Instant::now() + outage;
        publishing.join().expect("the publisher panicked");
        outage_ends
    });
    app.publish_many(with_ids(second_half));
    outage_ends
}

#[test]
fn orders_published_while_postgres_is_unreachable_are_all_stored_once_it_returns() {
    // Arrange: the service reaches PostgreSQL only through the proxy.
    let (db, app) = spawn_app_behind_proxy(Server::Postgres, Runs::InProcess);
    let orders = generated_orders("pg-outage", 20_000);
    let (stored_before, stored_before_body) = &orders[0];

    // Act: PostgreSQL goes away while the first half is being published and ingested.
    let outage_ends = cut_mid_ingest(&app, &db, &orders, DB_OUTAGE);

    // Assert, during the outage: not ready (with the reason), reads go on from the cache,
    // and nothing is acked.
    let reasons = app.wait_until_unready("PostgreSQL is unreachable");
    assert!(
        reasons.iter().any(|r| r.contains("PostgreSQL")),
        "the reasons: {reasons:?}"
    );
    // A batch committed just before the cut may still be acked: let its acks land first.
    std::thread::sleep(Duration::from_secs(1));
    let ack_floor = app.consumer_info().ack_floor.stream_sequence;
    let stored = app.orders_count();
    assert!(
        (stored as usize) < orders.len(),
        "everything was stored before the outage: it tested nothing"
    );
    let mut samples = 0;
    while Instant::now() + Duration::from_millis(500) < outage_ends || samples < 3 {
        let (status, _, body) = app.get(&format!("/order/{stored_before}"));
        assert_eq!(status, 200, "an order stored before the outage, during it");
        assert!(
            &body == stored_before_body,
            "{stored_before} during the outage"
        );
        assert_eq!(app.readiness().0, 503, "/readyz during the outage");
        assert_eq!(
            app.consumer_info().ack_floor.stream_sequence,
            ack_floor,
            "a message was acked while PostgreSQL was unreachable"
        );
        assert_eq!(app.orders_count(), stored, "stored while unreachable?");
        samples += 1;
        std::thread::sleep(Duration::from_millis(1500));
    }
    sleep_until(outage_ends);

    // Act: PostgreSQL comes back.
    db.restore();

    // Assert: everything is stored once, served, and acked.
    assert_recovered_with_every_order_stored_once(&app, &orders);
}

/// After an outage: the consumer drains, every order is stored once and served, nothing was
/// rejected, and the service is ready again.
fn assert_recovered_with_every_order_stored_once(app: &TestApp, orders: &[(String, Vec<u8>)]) {
    app.wait_until_drained();
    assert_eq!(app.orders_count(), orders.len() as i64);
    let rejected = app.rejected();
    assert!(rejected.is_empty(), "rejections: {:?}", rejected.first());
    assert_every_order_is_served(app, orders);
    app.wait_until(
        |app| app.readiness().0 == 200,
        "/readyz to answer 200 again",
    );
}

#[test]
fn a_cut_nats_connection_mid_ingest_loses_nothing() {
    // Arrange: the service reaches NATS only through the proxy; the test publishes directly.
    let (nats, app) = spawn_app_behind_proxy(Server::Nats, Runs::InProcess);
    let orders = generated_orders("nats-outage", 10_000);

    // Act: the connection is cut while the first half is being published and ingested;
    // the second half arrives on the stream while the service cannot see it.
    let outage_ends = cut_mid_ingest(&app, &nats, &orders, NATS_OUTAGE);

    // Assert, during the outage: not ready, naming NATS.
    let reasons = app.wait_until_unready("NATS is unreachable");
    assert!(
        reasons.iter().any(|r| r.contains("NATS")),
        "the reasons: {reasons:?}"
    );
    assert!(
        (app.orders_count() as usize) < orders.len(),
        "everything was stored before the outage: it tested nothing"
    );
    sleep_until(outage_ends);

    // Act: the network heals; the client reconnects by itself.
    nats.restore();

    // Assert
    assert_recovered_with_every_order_stored_once(&app, &orders);
}

#[test]
fn sigterm_while_a_write_hangs_in_postgres_still_stops_the_service_in_time() {
    // Arrange: a write of the service is in flight and PostgreSQL does not answer it (here a
    // lock; a network partition or an overloaded server look the same to the service).
    let mut app = spawn_child_app();
    let orders = generated_orders("write-hangs", 200);
    let (before, during) = orders.split_at(100);
    app.publish_many(with_ids(before));
    app.wait_for_order(&before[before.len() - 1].0);
    let lock = OrdersLocked::take(&app.database_url);
    app.publish_many(with_ids(during));
    app.wait_until(
        |app| {
            app.query_i64(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            ) > 0
        },
        "a write of the service to wait for the lock",
    );

    // Act: terminate panics if the service does not stop within the stop deadline.
    let status = app.terminate();

    // Assert: it stopped; once PostgreSQL answers again, nothing is lost.
    eprintln!("exit status after SIGTERM with a write hanging: {status}");
    lock.release();
    app.restart();
    app.wait_until_drained();
    assert_eq!(app.orders_count(), orders.len() as i64);
    assert_every_order_is_served(&app, &orders);
}

/// A message of a kill round, with what must become of it.
enum Sent {
    /// A valid order (or a repeat of one): stored once, served.
    Valid,
    /// Refused by validation: recorded once, never served (the uid, when it has one).
    Invalid(&'static str, Option<String>),
}

#[test]
fn kill_9_at_random_moments_during_ingest_loses_nothing() {
    const ROUNDS: usize = 4;
    const NEW_PER_ROUND: usize = 1_500;
    // Arrange
    let mut app = spawn_child_app();
    let mut rng = rand::rng();
    let mut valid: HashMap<String, Vec<u8>> = HashMap::new();
    let mut invalid: Vec<(u64, &'static str, Option<String>, Vec<u8>)> = Vec::new();

    for round in 0..ROUNDS {
        // New orders with their ids as Nats-Msg-Id; every 50th message repeats an order of an
        // earlier round without an id (so the stream really holds it twice); every 100th is
        // invalid.
        let mut chunk: Vec<(Option<String>, Vec<u8>, Sent)> = Vec::new();
        let earlier: Vec<String> = valid.keys().cloned().collect();
        for i in 0..NEW_PER_ROUND {
            let uid = format!("kill-r{round}-{i:05}");
            let message = model_with_uid(&uid);
            valid.insert(uid.clone(), message.clone());
            chunk.push((Some(uid), message, Sent::Valid));
            if i % 50 == 25 && !earlier.is_empty() {
                let uid = earlier[rng.random_range(0..earlier.len())].clone();
                let message = valid[&uid].clone();
                chunk.push((None, message, Sent::Valid));
            }
            if i % 100 == 50 {
                let uid = format!("kill-invalid-r{round}-{i:05}");
                let message = String::from_utf8(model_with_uid(&uid))
                    .expect("model.json is UTF-8")
                    .replacen(r#""amount": 1817"#, r#""amount": -1817"#, 1)
                    .into_bytes();
                chunk.push((None, message, Sent::Invalid("invalid_value", Some(uid))));
                let garbage = format!("not an order, round {round}, message {i}").into_bytes();
                chunk.push((None, garbage, Sent::Invalid("bad_json", None)));
            }
        }
        let delay = Duration::from_millis(rng.random_range(50..1_500));
        let publisher = app.publisher();

        // Act: SIGKILL while the chunk is being published and ingested.
        let sequences = std::thread::scope(|s| {
            let publishing = s.spawn(|| {
                publisher.publish_many(
                    chunk
                        .iter()
                        .map(|(id, message, _)| (id.as_deref(), message.as_slice())),
                )
            });
            std::thread::sleep(delay);
            app.kill();
            publishing.join().expect("the publisher panicked")
        });
        eprintln!(
            "round {round}: SIGKILL {delay:?} after publishing started; {} of {} orders stored",
            app.orders_count(),
            valid.len()
        );
        for ((_, message, sent), seq) in chunk.into_iter().zip(sequences) {
            if let Sent::Invalid(kind, uid) = sent {
                invalid.push((seq, kind, uid, message));
            }
        }
        app.restart();
    }

    // Assert: every valid order stored once and served byte for byte.
    app.wait_until_drained();
    assert_eq!(app.orders_count(), valid.len() as i64, "stored orders");
    let mut orders: Vec<(String, Vec<u8>)> = valid.into_iter().collect();
    orders.sort();
    assert_every_order_is_served(&app, &orders);
    // Every invalid message recorded once, with its kind and bytes, and never served.
    let rejected = app.rejected();
    let by_seq: HashMap<u64, _> = rejected.iter().map(|r| (r.stream_seq as u64, r)).collect();
    assert_eq!(
        rejected.len(),
        invalid.len(),
        "one rejection per invalid message"
    );
    for (seq, kind, uid, message) in &invalid {
        let row = by_seq
            .get(seq)
            .unwrap_or_else(|| panic!("the invalid message at {seq} was not recorded"));
        assert_eq!(&row.kind, kind, "{seq}: {}", row.reason);
        assert!(&row.payload == message, "{seq}: the recorded bytes differ");
        if let Some(uid) = uid {
            assert_eq!(
                app.get(&format!("/order/{uid}")).0,
                404,
                "an invalid order is served"
            );
        }
    }
}

/// What an HTTP reader saw until the service went away.
struct Reads {
    complete: usize,
    /// The first failure to get any answer (the service stopped), and when.
    gone: Option<(String, Instant)>,
}

/// GETs the orders in turn until `stop`, or until the service no longer answers. Every answer
/// received must be whole and right; a torn one fails the test.
fn read_orders(addr: SocketAddr, orders: &[(String, Vec<u8>)], stop: &AtomicBool) -> Reads {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(15))
        .build();
    let mut reads = Reads {
        complete: 0,
        gone: None,
    };
    for (uid, expected) in orders.iter().cycle() {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let response = match agent.get(&format!("http://{addr}/order/{uid}")).call() {
            Ok(response) => response,
            Err(ureq::Error::Status(status, _)) => panic!("{uid}: answered {status}"),
            Err(e) => {
                reads.gone = Some((e.to_string(), Instant::now()));
                break;
            }
        };
        let mut body = Vec::new();
        if let Err(e) = response.into_reader().read_to_end(&mut body) {
            panic!("{uid}: a torn response ({} bytes, then {e})", body.len());
        }
        assert!(&body == expected, "{uid}: a wrong or torn body");
        reads.complete += 1;
    }
    reads
}

#[test]
fn sigterm_under_load_finishes_the_batch_in_flight_and_exits_zero() {
    // Arrange: orders to read, then a stream of orders being ingested.
    let mut app = spawn_child_app();
    let readable = generated_orders("sigterm-read", 200);
    app.publish_many(with_ids(&readable));
    app.wait_for_order(&readable[readable.len() - 1].0);
    let streamed = generated_orders("sigterm-load", 8_000);
    let publisher = app.publisher();
    let addr = app.addr;
    let stop_reading = AtomicBool::new(false);

    let (status, sent_at, reads) = std::thread::scope(|s| {
        let publishing = s.spawn(|| publisher.publish_many(with_ids(&streamed)));
        let readers: Vec<_> = (0..2)
            .map(|_| s.spawn(|| read_orders(addr, &readable, &stop_reading)))
            .collect();
        app.wait_until(
            |app| app.orders_count() as usize > readable.len() + 500,
            "ingest to be under way",
        );

        // Act
        let sent_at = Instant::now();
        let status = app.terminate();

        stop_reading.store(true, Ordering::Release);
        let reads: Vec<Reads> = readers
            .into_iter()
            .map(|r| r.join().expect("a reader panicked"))
            .collect();
        publishing.join().expect("the publisher panicked");
        (status, sent_at, reads)
    });

    // Assert: a clean exit, whole answers, and the batch in flight committed and acked.
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    for reads in &reads {
        assert!(reads.complete > 0, "a reader got no answer at all");
        if let Some((error, at)) = &reads.gone {
            assert!(
                *at >= sent_at,
                "the service stopped answering before SIGTERM: {error}"
            );
        }
    }
    let consumer = app.consumer_info();
    eprintln!(
        "after SIGTERM: {} answers read; {} messages delivered but unacked (back after the ack wait)",
        reads.iter().map(|r| r.complete).sum::<usize>(),
        consumer.num_ack_pending
    );
    let last_stored = app.query_i64("SELECT max(stream_seq) FROM orders") as u64;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let floor = app.consumer_info().ack_floor.stream_sequence;
        if floor >= last_stored {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stored up to stream sequence {last_stored}, but acked only up to {floor}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Act: start again; Assert: everything published is stored once.
    app.restart();
    app.wait_until_drained();
    let all: Vec<(String, Vec<u8>)> = readable.into_iter().chain(streamed).collect();
    assert_eq!(app.orders_count(), all.len() as i64);
    assert_every_order_is_served(&app, &all);
}

/// Publishes 20 good orders around one whose customer PostgreSQL refuses (as `setup` makes it
/// refuse), and checks that the good ones are stored and the poison recorded with `reason`.
fn assert_a_refused_row_is_isolated(setup: &[&str], reason: &str) {
    // Arrange: PostgreSQL refuses one customer; the model itself allows it.
    let app = spawn_app();
    for statement in setup {
        app.execute_as_owner(statement);
    }
    let good = generated_orders("around-poison", 20);
    let poison = String::from_utf8(model_with_uid("poison-order"))
        .expect("model.json is UTF-8")
        .replacen(r#""customer_id": "test""#, r#""customer_id": "poison""#, 1)
        .into_bytes();
    assert!(poison.windows(8).any(|w| w == b"\"poison\""), "poison made");
    let mut messages: Vec<(Option<&str>, &[u8])> = with_ids(&good[..10]).collect();
    messages.push((Some("poison-order"), &poison));
    messages.extend(with_ids(&good[10..]));

    // Act: all in one go, so that they are likely to share a batch.
    let sequences = app.publish_many(messages);
    let poison_seq = sequences[10];

    // Assert
    for (uid, message) in &good {
        assert!(&app.wait_for_order(uid) == message, "{uid}");
    }
    app.wait_until_drained();
    assert_eq!(
        app.get("/order/poison-order").0,
        404,
        "the poison is served"
    );
    assert_eq!(app.orders_count(), good.len() as i64);
    let rejected = app.rejected();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let row = &rejected[0];
    assert_eq!(row.stream_seq as u64, poison_seq);
    assert_eq!(row.kind, "store_error", "{}", row.reason);
    assert!(
        row.reason.contains(reason),
        "the reason does not say {reason:?}: {}",
        row.reason
    );
    assert!(row.payload == poison, "the recorded bytes differ");
}

#[test]
fn a_row_postgres_refuses_is_rejected_and_does_not_block_the_orders_behind_it() {
    assert_a_refused_row_is_isolated(
        &["ALTER TABLE orders ADD CONSTRAINT no_poison CHECK (customer_id <> 'poison')"],
        "no_poison",
    );
}

/// A trigger that refuses the customer "poison" with an error that is not about data.
const REFUSE_POISON_TRIGGER: [&str; 2] = [
    "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN IF NEW.customer_id = 'poison' THEN RAISE EXCEPTION 'poison refused by a trigger'; \
     END IF; RETURN NEW; END $$",
    "CREATE TRIGGER refuse_poison BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
];

#[test]
fn a_row_a_trigger_refuses_is_retried_then_rejected_and_does_not_block_the_orders_behind_it() {
    // A trigger's error is not a data error: it is retried as an outage first, then the batch
    // is tried message by message, and only the message refused on its own is rejected.
    assert_a_refused_row_is_isolated(&REFUSE_POISON_TRIGGER, "poison refused by a trigger");
}

#[test]
fn a_lone_row_a_trigger_refuses_is_rejected_because_postgres_takes_a_known_good_order() {
    // Arrange: the refused message is alone in its batch, so no other message shows that
    // PostgreSQL still takes orders; a rolled-back probe order does.
    let app = spawn_app();
    for statement in REFUSE_POISON_TRIGGER {
        app.execute_as_owner(statement);
    }
    let poison = String::from_utf8(model_with_uid("lone-poison"))
        .expect("model.json is UTF-8")
        .replacen(r#""customer_id": "test""#, r#""customer_id": "poison""#, 1);

    // Act
    app.publish(poison.as_bytes());
    app.wait_until(
        |app| app.rejected().len() == 1,
        "the lone poison to be rejected",
    );
    app.publish(&model_with_uid("after-the-lone-poison"));

    // Assert: the order behind it is served, the poison is recorded and never served.
    app.wait_for_order("after-the-lone-poison");
    app.wait_until_drained();
    let rejected = app.rejected();
    assert_eq!(rejected[0].kind, "store_error", "{}", rejected[0].reason);
    assert!(
        rejected[0].reason.contains("poison refused by a trigger"),
        "{}",
        rejected[0].reason
    );
    assert_eq!(app.get("/order/lone-poison").0, 404);
    assert_eq!(app.orders_count(), 1, "the probe order was rolled back");
}
