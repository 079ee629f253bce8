//! One service of three `serve` replicas on a 3-node JetStream cluster of the test's own (R3
//! streams), one database: NATS nodes and replicas are SIGKILLed under load, and every order
//! still ends up stored once and held and served by every replica.

use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use crate::support::commands::serve_with;
use crate::support::http::{cached_orders, stored_here};
use crate::support::isolation::Names;
use crate::support::nats_cluster::{publish_through, NatsCluster};
use crate::support::orders::generated_orders;
use crate::support::postgres::SharedDatabase;
use crate::support::service::TestApp;

/// How long the service may take to store and spread everything after a fault.
const SETTLE: Duration = Duration::from_secs(240);
/// Between two polls.
const POLL: Duration = Duration::from_millis(100);

/// The service under test. Field order is drop order: the replicas go first (they hold
/// connections to both), then the cluster, then the database.
struct Service {
    replicas: Vec<Option<TestApp>>,
    cluster: NatsCluster,
    db: SharedDatabase,
    names: Names,
}

impl Service {
    /// A 3-node cluster, and `replicas` replicas started one after the other.
    fn start(replicas: usize) -> Service {
        let names = Names::fresh();
        let mut service = Service {
            replicas: Vec::new(),
            cluster: NatsCluster::start(3),
            db: SharedDatabase::named(&names.suffix),
            names,
        };
        for _ in 0..replicas {
            service.replicas.push(None);
            let i = service.replicas.len() - 1;
            service.start_replica(i);
        }
        service
    }

    /// Replica `i`'s command line: every node's URL, R3 streams.
    fn serve_command(&self) -> Command {
        let urls = self.cluster.urls();
        let settings = self.names.serve_settings(&self.db.url, &urls);
        serve_with(&settings, &["--stream-replicas", "3"])
    }

    /// Starts replica `i` and waits until it is ready.
    fn start_replica(&mut self, i: usize) {
        let serving =
            TestApp::start_child(self.serve_command(), &format!("{}-r{i}", self.names.suffix));
        self.replicas[i] = Some(serving);
    }

    /// SIGKILLs replica `i`.
    fn kill_replica(&mut self, i: usize) {
        drop(self.replicas[i].take());
    }

    fn replica(&self, i: usize) -> &TestApp {
        self.replicas[i].as_ref().expect("the replica runs")
    }

    /// Orders stored in PostgreSQL.
    fn stored(&self) -> i64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let mut conn = PgConnection::connect(&self.db.url).await.ok()?;
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
                .fetch_one(&mut conn)
                .await
                .ok()?;
            conn.close().await.ok();
            Some(count)
        })
        .unwrap_or(0)
    }

    /// Waits until `condition` holds, or panics saying `what`, with the nodes' logs.
    #[track_caller]
    fn wait_until(&self, mut condition: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + SETTLE;
        while !condition() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {SETTLE:?}\n{}",
                self.cluster.logs()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Every running replica holds `orders` in memory and serves each byte for byte, and is
    /// ready for reads.
    #[track_caller]
    fn assert_every_replica_serves(&self, orders: &[(String, Vec<u8>)]) {
        let n = orders.len() as u64;
        for (i, replica) in self.replicas.iter().enumerate() {
            let Some(replica) = replica else { continue };
            self.wait_until(
                || cached_orders(&replica.get("/readyz")) >= n,
                &format!("replica {i} to hold {n} orders in memory"),
            );
            for (uid, order) in orders {
                let (status, _, body) = replica.get(&format!("/order/{uid}"));
                assert_eq!((status, &body), (200, order), "replica {i}, {uid}");
            }
            assert_eq!(replica.get("/readyz/reads").0, 200, "replica {i}");
        }
    }
}

/// Publishes `orders` through node `via` in a thread of its own (retrying through elections,
/// with each order_uid as `Nats-Msg-Id`).
fn publish_in_background(
    url: String,
    subject: String,
    orders: Vec<(String, Vec<u8>)>,
) -> std::thread::JoinHandle<Result<usize, String>> {
    std::thread::spawn(move || publish_through(&url, &subject, &orders))
}

#[test]
fn killing_the_stream_leader_under_load_loses_nothing_and_every_replica_serves_every_order() {
    // Arrange
    let mut service = Service::start(3);
    let leader = service
        .cluster
        .wait_for_stream_leader(&service.names.stream);
    let via = (leader + 1) % 3;
    let orders = generated_orders(&format!("lead-{}", service.names.suffix), 30_000);
    let publisher = publish_in_background(
        service.cluster.url(via),
        service.names.subject.clone(),
        orders.clone(),
    );

    // Act: SIGKILL the stream's leader once ingest is well under way, and restart it later.
    service.wait_until(|| service.stored() > 3_000, "3,000 orders stored");
    service.cluster.kill(leader);
    service.wait_until(
        || {
            service
                .cluster
                .stream_leader(&service.names.stream)
                .is_some_and(|l| l != leader)
        },
        "a new stream leader",
    );
    service.cluster.restart(leader);
    let published = publisher.join().expect("the publisher does not panic");
    assert!(
        published.is_ok(),
        "publishing through node {via} failed: {published:?}\nstream: {:?}\n{}",
        service.cluster.stream_state(&service.names.stream),
        service.cluster.logs()
    );
    let in_stream = service.cluster.stream_messages(&service.names.stream);
    assert_eq!(in_stream, 30_000, "messages in the stream");

    // Assert: each order stored once, and every replica holds and serves all of them.
    service.wait_until(|| service.stored() == 30_000, "30,000 orders stored");
    service.assert_every_replica_serves(&orders);
    assert_eq!(service.stored(), 30_000);
}

#[test]
fn a_replica_killed_mid_ingest_and_restarted_ends_complete_like_the_others() {
    // Arrange
    let mut service = Service::start(3);
    let orders = generated_orders(&format!("crash-{}", service.names.suffix), 10_000);
    let publisher = publish_in_background(
        service.cluster.url(0),
        service.names.subject.clone(),
        orders.clone(),
    );

    // Act: SIGKILL replica 1 while the others ingest, then start it again.
    service.wait_until(|| service.stored() > 2_000, "2,000 orders stored");
    service.kill_replica(1);
    let published = publisher.join().expect("the publisher does not panic");
    assert!(published.is_ok(), "publishing failed: {published:?}");
    service.start_replica(1);

    // Assert
    service.wait_until(|| service.stored() == 10_000, "10,000 orders stored");
    service.assert_every_replica_serves(&orders);
}

#[test]
fn with_two_of_three_nodes_down_ingest_waits_reads_go_on_and_nothing_is_lost() {
    // Arrange: a first lot stored and everywhere, then a second lot on its way.
    let mut service = Service::start(2);
    let first = generated_orders(&format!("q1-{}", service.names.suffix), 1_000);
    let published = publish_through(&service.cluster.url(0), &service.names.subject, &first);
    assert!(published.is_ok(), "{published:?}");
    service.assert_every_replica_serves(&first);
    let second = generated_orders(&format!("q2-{}", service.names.suffix), 5_000);
    let published = publish_through(&service.cluster.url(0), &service.names.subject, &second);
    assert!(published.is_ok(), "{published:?}");

    // Act: two nodes go, leaving no quorum, while the second lot is being ingested.
    service.cluster.kill(1);
    service.cluster.kill(2);

    // Assert: reads of what is held go on and the replicas stay ready for reads, while
    // `/readyz` says the whole job is not being done.
    service.wait_until(
        || (0..2).all(|i| service.replica(i).get("/readyz").0 == 503),
        "/readyz to answer 503 on both replicas",
    );
    for i in 0..2 {
        let replica = service.replica(i);
        assert_eq!(replica.get("/readyz/reads").0, 200, "replica {i}");
        for (uid, order) in first.iter().step_by(10) {
            let (status, _, body) = replica.get(&format!("/order/{uid}"));
            assert_eq!((status, &body), (200, order), "replica {i}, {uid}");
        }
    }

    // Act: the nodes come back.
    service.cluster.restart(1);
    service.cluster.restart(2);

    // Assert: everything stored once, and held by both.
    service.wait_until(|| service.stored() == 6_000, "6,000 orders stored");
    let all: Vec<_> = first.into_iter().chain(second).collect();
    service.assert_every_replica_serves(&all);
}

#[test]
fn a_replica_started_while_the_others_ingest_is_ready_for_reads_only_with_what_was_stored() {
    // Arrange: two replicas ingesting.
    let mut service = Service::start(2);
    let orders = generated_orders(&format!("cold-{}", service.names.suffix), 10_000);
    let publisher = publish_in_background(
        service.cluster.url(0),
        service.names.subject.clone(),
        orders.clone(),
    );
    service.wait_until(|| service.stored() > 2_000, "2,000 orders stored");

    // Act: a third replica starts cold; `Serving::start` returns once `/readyz` is 200.
    let stored_before = service.stored() as u64;
    service.replicas.push(None);
    service.start_replica(2);

    // Assert: ready, it holds at least what was stored before it started (give a fan-out in
    // flight a second), and in the end it holds everything.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(service.replica(2).get("/readyz/reads").0, 200);
    let held = cached_orders(&service.replica(2).get("/readyz"));
    assert!(
        held >= stored_before,
        "ready with {held} orders in memory, {stored_before} stored before it started"
    );
    let published = publisher.join().expect("the publisher does not panic");
    assert!(published.is_ok(), "publishing failed: {published:?}");
    service.wait_until(|| service.stored() == 10_000, "10,000 orders stored");
    service.assert_every_replica_serves(&orders);
}

#[test]
fn three_replicas_on_a_fresh_cluster_each_take_a_share_of_the_ingest() {
    // Arrange: the first replica creates the R3 stream and the consumer while the cluster is
    // still electing their leaders; a pull request sent then can be lost for good.
    let service = Service::start(3);
    let mut orders = Vec::new();

    // Act: orders in lots of 500 until every replica has stored some (bounded).
    let shares = |service: &Service| -> Vec<f64> {
        (0..3)
            .map(|i| stored_here(&service.replica(i).admin_get("/metrics")))
            .collect()
    };
    for lot in 0..40 {
        let more = generated_orders(&format!("share{lot}-{}", service.names.suffix), 500);
        let published = publish_through(&service.cluster.url(0), &service.names.subject, &more);
        assert!(published.is_ok(), "{published:?}");
        orders.extend(more);
        let total = orders.len() as i64;
        // A replica counts what it stored only once the batch is fanned out and acked, a
        // moment after the rows are in PostgreSQL: wait for the counts too.
        service.wait_until(
            || service.stored() == total && shares(&service).iter().sum::<f64>() == total as f64,
            "every lot stored, and counted by the replica that stored it",
        );
        if shares(&service).iter().all(|&n| n > 0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // Assert: each replica pulled a share (a lost pull is noticed by its missing heartbeats and
    // the subscription made again), and all hold and serve everything.
    let shares = shares(&service);
    assert!(
        shares.iter().all(|&n| n > 0.0),
        "stored by each replica: {shares:?}"
    );
    assert_eq!(
        shares.iter().sum::<f64>(),
        orders.len() as f64,
        "{shares:?}"
    );
    service.assert_every_replica_serves(&orders);
    for i in 0..3 {
        assert_eq!(service.replica(i).get("/readyz").0, 200, "replica {i}");
    }
}
