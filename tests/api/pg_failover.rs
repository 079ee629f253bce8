//! PostgreSQL under Patroni (synchronous mode) behind haproxy, two `serve` replicas writing
//! through haproxy's write port while orders stream in: the primary's machine is lost, or a
//! switchover is made, and every order still ends up stored once on the new primary and served
//! by both replicas. Meanwhile ingest pauses with `/readyz` saying why, and reads go on from
//! memory (`/readyz/reads` 200).
//!
//! Each test has a Patroni cluster of its own (`PatroniCluster`) and its own stream on the
//! shared NATS server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::commands::serve_with;
use crate::support::http::{cached_orders, http_agent, http_request};
use crate::support::isolation::Names;
use crate::support::nats::SharedStream;
use crate::support::nats_cluster::publish_through;
use crate::support::orders::generated_orders;
use crate::support::patroni::PatroniCluster;
use crate::support::service::TestApp;

/// The orders published in each test.
const ORDERS: usize = 20_000;
/// How long the service may take to store and spread everything after the fault: a bound
/// against a hang, not a speed check.
const SETTLE: Duration = Duration::from_secs(240);
/// Between two polls.
const POLL: Duration = Duration::from_millis(100);
/// The service's database on the cluster (it creates it through the write port).
const DATABASE: &str = "orders";

/// Two replicas on a Patroni cluster. Field order is drop order: the replicas first (they hold
/// connections to both), then the cluster, then the stream.
struct Service {
    replicas: Vec<TestApp>,
    cluster: PatroniCluster,
    stream: SharedStream,
    names: Names,
}

impl Service {
    /// A Patroni cluster, and two replicas whose `--database-url` is haproxy's write port,
    /// started one after the other (the first creates the database and the streams).
    fn start() -> Service {
        let names = Names::fresh();
        let mut service = Service {
            replicas: Vec::new(),
            cluster: PatroniCluster::start(),
            stream: SharedStream::of(&names),
            names,
        };
        let url = service.cluster.write_url(DATABASE);
        for i in 0..2 {
            let settings = service.names.serve_settings(&url, &service.stream.nats_url);
            let replica = TestApp::start_child(
                serve_with(&settings, &[]),
                &format!("{}-r{i}", service.names.suffix),
            );
            service.replicas.push(replica);
        }
        service
    }

    /// Orders stored, as the primary behind the write port counts them (0 while there is none).
    fn stored(&self) -> i64 {
        self.cluster
            .try_query_i64(
                &self.cluster.write_url(DATABASE),
                "SELECT count(*) FROM orders",
            )
            .unwrap_or(0)
    }

    /// Publishes the orders on the shared NATS in a thread of its own (each with its order_uid
    /// as `Nats-Msg-Id`).
    fn publish_in_background(
        &self,
        orders: &[(String, Vec<u8>)],
    ) -> JoinHandle<Result<usize, String>> {
        let (url, subject, orders) = (
            self.stream.nats_url.clone(),
            self.names.subject.clone(),
            orders.to_vec(),
        );
        std::thread::spawn(move || publish_through(&url, &subject, &orders))
    }

    /// Waits until `condition` holds, or panics saying `what`, with the cluster's logs.
    #[track_caller]
    fn wait_until(&self, mut condition: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + SETTLE;
        while !condition() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {SETTLE:?}\nmembers: {:?}\n{}",
                self.cluster.members(),
                self.cluster.logs()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Watches every replica's `/readyz` and `/readyz/reads` from now on, in a thread of its own.
    fn watch_readiness(&self) -> ReadinessWatch {
        ReadinessWatch::start(self.replicas.iter().map(|r| r.addr).collect())
    }

    /// After the fault: the orders are all stored once on `primary` (directly, not through
    /// haproxy), none was rejected, and every replica holds and serves each byte for byte.
    #[track_caller]
    fn assert_every_order_stored_once_and_served(
        &self,
        primary: usize,
        orders: &[(String, Vec<u8>)],
    ) {
        let on_primary = self.cluster.node_url(primary, DATABASE);
        let count = |query| self.cluster.try_query_i64(&on_primary, query).unwrap_or(-1);
        let n = orders.len() as i64;
        self.wait_until(
            || count("SELECT count(*) FROM orders") >= n,
            &format!("{n} orders stored on the new primary"),
        );
        assert_eq!(count("SELECT count(DISTINCT order_uid) FROM orders"), n);
        assert_eq!(count("SELECT count(*) FROM orders"), n, "stored once");
        let rejected: i64 = self
            .cluster
            .query_i64(&on_primary, "SELECT count(*) FROM rejected_messages");
        assert_eq!(rejected, 0, "valid orders were recorded as rejected");

        for (i, replica) in self.replicas.iter().enumerate() {
            self.wait_until(
                || cached_orders(&replica.get("/readyz")) >= n as u64,
                &format!("replica {i} to hold {n} orders in memory"),
            );
            for (uid, order) in orders {
                let (status, _, body) = replica.get(&format!("/order/{uid}"));
                assert_eq!(status, 200, "replica {i}, {uid}");
                assert!(&body == order, "replica {i}, {uid}: the body differs");
            }
            assert_eq!(replica.get("/readyz/reads").0, 200, "replica {i}");
            self.wait_until(
                || replica.get("/readyz").0 == 200,
                &format!("replica {i} ready again"),
            );
        }
        // And a standby follows the new primary again, with everything (what the read port will
        // serve restores and listings from).
        let on_standby = self.cluster.read_url(DATABASE);
        self.wait_until(
            || {
                self.cluster
                    .try_query_i64(&on_standby, "SELECT count(*) FROM orders")
                    .is_ok_and(|count| count == n)
            },
            &format!("a standby behind the read port to hold {n} orders"),
        );
    }
}

/// What a replica answered while the database was away: `/readyz` 503 with a reason about
/// PostgreSQL, and `/readyz/reads` 200, in one look.
#[derive(Debug)]
struct Outage {
    replica: usize,
    reasons: Vec<String>,
}

/// A thread that polls every replica's readiness until stopped, and keeps the first `Outage`
/// it sees (and the last answer of each, for the failure message).
struct ReadinessWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Option<Outage>, Vec<String>)>>,
}

impl ReadinessWatch {
    fn start(addrs: Vec<SocketAddr>) -> ReadinessWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let http = http_agent();
            let mut last = vec![String::new(); addrs.len()];
            while !stopped.load(Ordering::Relaxed) {
                for (i, &addr) in addrs.iter().enumerate() {
                    let (status, _, body) = http_request(&http, addr, "GET", "/readyz", &[]);
                    last[i] = format!("{status} {}", String::from_utf8_lossy(&body));
                    if status != 503 {
                        continue;
                    }
                    let reasons: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|json| json["reasons"].as_array().cloned())
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|reason| reason.as_str().map(str::to_owned))
                        .collect();
                    if !reasons.iter().any(|r| r.contains("PostgreSQL")) {
                        continue;
                    }
                    let reads = http_request(&http, addr, "GET", "/readyz/reads", &[]).0;
                    if reads == 200 {
                        return (
                            Some(Outage {
                                replica: i,
                                reasons,
                            }),
                            last,
                        );
                    }
                    last[i].push_str(&format!(" (and /readyz/reads {reads})"));
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            (None, last)
        });
        ReadinessWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops watching; panics unless an `Outage` was seen.
    #[track_caller]
    fn assert_saw_outage(mut self) -> Outage {
        self.stop.store(true, Ordering::Relaxed);
        let (seen, last) = self
            .thread
            .take()
            .expect("joined once")
            .join()
            .expect("the readiness watch does not panic");
        seen.unwrap_or_else(|| {
            panic!(
                "no replica answered /readyz 503 naming PostgreSQL with /readyz/reads 200 \
                 while the primary was away; last answers: {last:#?}"
            )
        })
    }
}

impl Drop for ReadinessWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn losing_the_primarys_machine_under_ingest_promotes_the_sync_standby_and_loses_no_order() {
    // Arrange: orders streaming in, ingest well under way.
    let mut service = Service::start();
    let orders = generated_orders(&format!("pgkill-{}", service.names.suffix), ORDERS);
    let publisher = service.publish_in_background(&orders);
    service.wait_until(|| service.stored() >= 2_000, "2,000 orders stored");
    let sync = service.cluster.wait_for_sync_standby();
    let old = service.cluster.leader().expect("a leader");
    let watch = service.watch_readiness();

    // Act: the primary's machine is lost (Patroni and PostgreSQL, kill -9).
    let stored_before = service.stored();
    service.cluster.kill_node(old);
    eprintln!(
        "killed node {old} with {stored_before} orders stored, the publisher {}",
        if publisher.is_finished() {
            "done"
        } else {
            "still sending"
        }
    );

    // Assert: ingest pauses and says why, reads go on; Patroni promotes the synchronous
    // standby and haproxy's write port follows it.
    let new = service.cluster.wait_for_leader_other_than(old);
    assert_eq!(
        new, sync,
        "Patroni promoted a node other than the synchronous standby"
    );
    let outage = watch.assert_saw_outage();
    eprintln!(
        "during the outage replica {} said: {:?}",
        outage.replica, outage.reasons
    );
    let published = publisher.join().expect("the publisher does not panic");
    assert!(published.is_ok(), "publishing failed: {published:?}");
    service.assert_every_order_stored_once_and_served(new, &orders);
}

#[test]
fn a_switchover_under_ingest_loses_no_order_and_every_replica_serves_every_order() {
    // Arrange
    let service = Service::start();
    let orders = generated_orders(&format!("pgswitch-{}", service.names.suffix), ORDERS);
    let publisher = service.publish_in_background(&orders);
    service.wait_until(|| service.stored() >= 2_000, "2,000 orders stored");
    let watch = service.watch_readiness();

    // Act: a planned switchover to the synchronous standby (`patronictl switchover`).
    let stored_before = service.stored();
    let (old, new) = service.cluster.switchover();
    eprintln!(
        "switched over from node {old} to {new} with {stored_before} orders stored, the \
         publisher {}",
        if publisher.is_finished() {
            "done"
        } else {
            "still sending"
        }
    );

    // Assert
    assert_ne!(old, new);
    let outage = watch.assert_saw_outage();
    eprintln!(
        "during the switchover replica {} said: {:?}",
        outage.replica, outage.reasons
    );
    let published = publisher.join().expect("the publisher does not panic");
    assert!(published.is_ok(), "publishing failed: {published:?}");
    service.assert_every_order_stored_once_and_served(new, &orders);
}
