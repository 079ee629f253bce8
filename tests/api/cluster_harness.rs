//! The cluster harness itself, against real nats-server processes: what the scale-out tests will
//! lean on must hold first. A 3-node cluster forms, keeps an R3 stream through the SIGKILL of
//! the stream's leader (a new leader, publishing through a survivor) and takes the killed node
//! back as a current peer; dropping a cluster, even in a panic, leaves no process or file behind.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::support::isolation::Names;
use crate::support::nats_cluster::{publish_through, NatsCluster};

/// `count` small messages, each with its own id `{prefix}-{i:05}` (its `Nats-Msg-Id`).
fn numbered(prefix: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let id = format!("{prefix}-{i:05}");
            let payload = format!("{{\"id\":\"{id}\"}}").into_bytes();
            (id, payload)
        })
        .collect()
}

#[test]
fn an_r3_stream_survives_the_sigkill_of_its_leader_and_takes_the_node_back() {
    // Arrange: a cluster, and an R3 stream created through node 1 (not the one published to).
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3);
    let names = Names::fresh();
    cluster.create_stream_via(1, &names.stream, &names.subject, 3);
    let leader = cluster.wait_for_stream_leader(&names.stream);
    cluster.wait_for_current_peers(&names.stream, 3);
    let state = cluster
        .stream_state(&names.stream)
        .expect("the stream's state");
    let mut peers: Vec<Option<usize>> = state.replicas.iter().map(|r| r.node).collect();
    peers.push(state.leader);
    peers.sort();
    assert_eq!(
        peers,
        [Some(0), Some(1), Some(2)],
        "one peer per node: {state:?}"
    );
    eprintln!(
        "formed, stream created and led by node {leader} ({}) at {:.1?}",
        cluster.server_name(leader),
        started.elapsed()
    );

    // Act 1: 1,000 messages through node 0.
    let retries = cluster.publish_via(0, &names.subject, &numbered("before", 1000));

    // Assert 1: all stored, none twice.
    assert_eq!(cluster.stream_messages(&names.stream), 1000);
    eprintln!(
        "1,000 published ({retries} retried) at {:.1?}",
        started.elapsed()
    );

    // Act 2: the leader dies without a word, while a survivor is being published to.
    cluster.kill(leader);
    let killed = Instant::now();
    let first_survivor = (0..cluster.size())
        .find(|&i| i != leader)
        .expect("a survivor");
    let url = cluster.url(first_survivor);
    let subject = names.subject.clone();
    let during = std::thread::spawn(move || {
        let retries = publish_through(&url, &subject, &numbered("during", 100));
        (retries, killed.elapsed())
    });
    let new_leader = cluster.wait_for_stream_leader(&names.stream);
    let election = killed.elapsed();
    let (retries, published) = during.join().expect("the publishing thread panicked");
    let retries = retries.unwrap_or_else(|e| {
        panic!(
            "publishing during the election failed: {e}\n{}",
            cluster.logs()
        )
    });

    // Assert 2: another node leads; what was published during the election is stored once;
    // a survivor takes publishes at once. The survivor that does not lead: its publishes must
    // travel to the new leader over a route.
    assert_ne!(new_leader, leader, "the killed node cannot lead");
    assert!(!cluster.is_running(leader));
    assert_eq!(cluster.stream_messages(&names.stream), 1100);
    let follower = (0..cluster.size())
        .find(|&i| i != leader && i != new_leader)
        .expect("a third node");
    let after_retries = cluster.publish_via(follower, &names.subject, &numbered("after", 100));
    assert_eq!(cluster.stream_messages(&names.stream), 1200);
    eprintln!(
        "node {new_leader} leads {election:.1?} after the SIGKILL of node {leader}; 100 published \
         through node {first_survivor} meanwhile were acked {published:.1?} after it ({retries} \
         retried); 100 more through node {follower} ({after_retries} retried) at {:.1?}",
        started.elapsed()
    );

    // Act 3: the killed node comes back on its old store.
    let restarting = Instant::now();
    cluster.restart(leader);
    assert!(cluster.is_running(leader));

    // Assert 3: three current peers again, the returned one caught up with what it missed.
    cluster.assert_caught_up(&names.stream, 3, 1200);
    eprintln!(
        "node {leader} current again {:.1?} after its restart; all done at {:.1?}",
        restarting.elapsed(),
        started.elapsed()
    );
}

#[test]
fn a_dropped_cluster_leaves_no_process_port_or_directory_even_in_a_panic() {
    // Arrange: what the cluster is made of, noted before the test panics.
    let seen: Mutex<(Vec<u32>, Vec<String>, PathBuf)> = Mutex::default();

    // Act: a test that fails with its cluster up.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cluster = NatsCluster::start(3);
        // Something in every store, so that there are files to remove.
        let names = Names::fresh();
        cluster.create_stream_r3(&names.stream, &names.subject);
        cluster.publish_via(2, &names.subject, &numbered("drop", 10));
        let pids = (0..cluster.size())
            .map(|i| cluster.pid(i).expect("every node runs"))
            .collect();
        let urls = cluster.urls().split(',').map(str::to_owned).collect();
        *seen.lock().unwrap() = (pids, urls, cluster.dir().to_owned());
        panic!("a failing test (on purpose: the harness must clean up after it)");
    }));

    // Assert
    assert!(outcome.is_err(), "the test should have panicked");
    let (pids, urls, dir) = seen.into_inner().unwrap();
    assert_eq!(pids.len(), 3);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "nats-server {pid} is still there"
        );
    }
    for url in urls {
        let addr = url.trim_start_matches("nats://");
        assert!(
            TcpStream::connect(addr).is_err(),
            "something still listens on {addr}"
        );
    }
    assert!(!dir.exists(), "{} is still there", dir.display());
}
