//! `ordersvc publish` against a 3-node JetStream cluster whose stream leader is SIGKILLed in the
//! middle of a run: the command rides out the election by sending again what failed, with the
//! same `Nats-Msg-Id`, and the stream ends with every order exactly once. Started just after
//! the leaders died, it waits for new ones.

use std::io::Read;
use std::process::{Child, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::commands::ordersvc;
use crate::support::isolation::Names;
use crate::support::nats_cluster::NatsCluster;

/// Orders published: enough that the run is still under way when the leader dies.
const ORDERS: u64 = 5000;
/// The leader is killed once the stream holds more than this many: well into the run.
const KILL_AFTER: u64 = 500;
/// How long the run may take to store `KILL_AFTER` orders, and then to finish. Each message's
/// retries are bounded by the command's own `--publish-timeout` (30 s by default).
const RUN_DEADLINE: Duration = Duration::from_secs(120);
/// Between two looks at the stream or the process.
const POLL: Duration = Duration::from_millis(20);

/// An `ordersvc publish` running as a child process, its output collected as it comes;
/// dropped (also in a panic), it is killed.
struct PublishRun {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// How a run ended.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl PublishRun {
    /// `ordersvc publish --generate ORDERS --seed 1` to `names`' subject through every node, the
    /// stream created with 3 replicas. Generated orders carry `Nats-Msg-Id` = order_uid.
    fn start(urls: &str, names: &Names) -> PublishRun {
        let count = ORDERS.to_string();
        let mut command = ordersvc(&[
            "publish",
            "--generate",
            &count,
            "--seed",
            "1",
            "--nats-url",
            urls,
            "--stream",
            &names.stream,
            "--subject",
            &names.subject,
            "--stream-replicas",
            "3",
        ]);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start ordersvc publish");
        // A thread per pipe, so that a full pipe never stalls the command.
        let collect = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let stdout = child.stdout.take().map(|p| collect(Box::new(p)));
        let stderr = child.stderr.take().map(|p| collect(Box::new(p)));
        PublishRun {
            child,
            stdout,
            stderr,
        }
    }

    /// Whether the command has exited.
    fn has_exited(&mut self) -> bool {
        self.child
            .try_wait()
            .expect("cannot check on ordersvc publish")
            .is_some()
    }

    /// Waits (bounded by `RUN_DEADLINE`) until the command exits; panics if it does not.
    fn wait(mut self) -> Finished {
        let deadline = Instant::now() + RUN_DEADLINE;
        let status = loop {
            if let Some(status) = self
                .child
                .try_wait()
                .expect("cannot wait for ordersvc publish")
            {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let finished = self.output(None);
                panic!(
                    "ordersvc publish did not finish within {RUN_DEADLINE:?}\nstdout: {}\nstderr: {}",
                    finished.stdout, finished.stderr
                );
            }
            std::thread::sleep(POLL);
        };
        self.output(Some(status))
    }

    /// What the command printed, once it has exited.
    fn output(&mut self, status: Option<ExitStatus>) -> Finished {
        let join = |pipe: Option<JoinHandle<String>>| {
            pipe.map(|t| t.join().expect("a pipe reader panicked"))
                .unwrap_or_default()
        };
        Finished {
            status: status.unwrap_or_else(|| self.child.wait().expect("a killed child")),
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
        }
    }
}

impl Finished {
    /// Asserts that the run succeeded with every order published and none failed; returns its
    /// summary line, and the run's output to show in a failed assertion.
    #[track_caller]
    fn published_all(&self) -> (&str, String) {
        let shown = format!(
            "{}\nstdout: {}\nstderr (the end): {}",
            self.status,
            self.stdout,
            tail(&self.stderr)
        );
        assert!(self.status.success(), "ordersvc publish failed: {shown}");
        let summary = self.stdout.lines().last().unwrap_or_default();
        let expected = format!("published {ORDERS}, duplicates dropped by the server 0, failed 0");
        assert!(summary.starts_with(&expected), "{shown}");
        (summary, shown)
    }
}

impl Drop for PublishRun {
    fn drop(&mut self) {
        // Never panics: this also runs while a failed test unwinds.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a command's stderr: a run that fails prints a line per failed message.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits (bounded by `RUN_DEADLINE`) until `stream` holds more than `count` messages; panics
/// if the run exits first.
fn wait_for_more_than(cluster: &NatsCluster, stream: &str, count: u64, run: &mut PublishRun) {
    let deadline = Instant::now() + RUN_DEADLINE;
    loop {
        // Until `publish` has created the stream, and while it has no leader, there is no count.
        if let Ok(state) = cluster.stream_state(stream) {
            if state.messages > count {
                return;
            }
        }
        if run.has_exited() {
            let finished = run.output(None);
            let state = cluster.stream_state(stream).map(|s| s.messages);
            panic!(
                "ordersvc publish exited before the stream was seen holding {count} messages \
                 (now: {state:?}); {}\nstdout: {}\nstderr (the end): {}",
                finished.status,
                finished.stdout,
                tail(&finished.stderr)
            );
        }
        assert!(
            Instant::now() < deadline,
            "the stream did not hold {count} messages within {RUN_DEADLINE:?}"
        );
        std::thread::sleep(POLL);
    }
}

#[test]
fn publish_rides_out_the_sigkill_of_the_stream_leader_and_stores_every_order_once() {
    // Arrange: a cluster of three, and a publish through all of them that creates an R3 stream.
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3);
    let names = Names::fresh();
    let mut run = PublishRun::start(&cluster.urls(), &names);

    // Act: the stream's leader dies without a word once the run is well under way.
    wait_for_more_than(&cluster, &names.stream, KILL_AFTER, &mut run);
    let leader = cluster.wait_for_stream_leader(&names.stream);
    cluster.kill(leader);
    let killed = Instant::now();
    let finished = run.wait();
    let ran_on = killed.elapsed();

    // Assert: success, nothing failed, and every order stored once (the ids are all distinct,
    // so a retry whose lost first attempt was stored counts as published, not as a repeat).
    let (summary, shown) = finished.published_all();
    let expected = format!("published {ORDERS}, duplicates dropped by the server 0, failed 0");
    // Retries are the proof that the leader died during the run, not after it.
    let retried: u64 = summary
        .strip_prefix(&format!("{expected}, retried "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!("no retries: the run ended before the leader died; publish more: {shown}")
        });
    assert!(retried > 0, "{shown}");
    assert_eq!(cluster.stream_messages(&names.stream), ORDERS);
    eprintln!(
        "leader node {leader} killed at {:.1?} (more than {KILL_AFTER} stored); publish ended \
         {ran_on:.1?} later: {summary}",
        killed - started
    );

    // And the killed node, back on its store, catches up on every order.
    cluster.restart(leader);
    cluster.assert_caught_up(&names.stream, 3, ORDERS);
    eprintln!(
        "node {leader} current again; all done at {:.1?}",
        started.elapsed()
    );
}

#[test]
fn publish_started_just_after_the_meta_and_stream_leader_dies_waits_for_the_election() {
    // Arrange: an R3 stream led by the meta leader, which then dies: for some seconds nobody
    // answers for the stream (seen in README's walkthrough: "jetstream request timed out").
    let mut cluster = NatsCluster::start(3);
    let names = Names::fresh();
    let meta = wait_for(|| cluster.meta_leader(), "a meta leader");
    cluster.create_stream_via(meta, &names.stream, &names.subject, 3);
    cluster.wait_for_current_peers(&names.stream, 3);
    let mut leader = cluster.wait_for_stream_leader(&names.stream);
    for _ in 0..20 {
        if leader == meta {
            break;
        }
        leader = cluster.step_down_stream(&names.stream);
    }
    assert_eq!(
        leader, meta,
        "the stream's leadership never came to the meta leader"
    );
    cluster.kill(leader);

    // Act: the command starts at once, through the nodes left.
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| cluster.url(i))
        .collect();
    let run = PublishRun::start(&survivors.join(","), &names);
    let finished = run.wait();

    // Assert: it waited for the elections instead of giving up on its first lookup.
    finished.published_all();
    assert_eq!(cluster.stream_messages(&names.stream), ORDERS);
}

/// Polls `what` (bounded by `RUN_DEADLINE`) until it gives something.
fn wait_for<T>(mut what: impl FnMut() -> Option<T>, waiting_for: &str) -> T {
    let deadline = Instant::now() + RUN_DEADLINE;
    loop {
        if let Some(found) = what() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {waiting_for} within {RUN_DEADLINE:?}"
        );
        std::thread::sleep(POLL);
    }
}
