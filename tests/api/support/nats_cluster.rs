//! A JetStream cluster of the test's own: `n` nats-server processes (Debian's 2.9, like the
//! shared server) routed to each other on loopback, for the scale-out tests that one server
//! cannot show: R3 streams, a stream leader that dies, a node that comes back.
//!
//! Each node has its own configuration file, JetStream store and log under one temporary
//! directory, on free client, route and monitoring ports; a node that is killed and restarted
//! gets the same ports, configuration and store, so it rejoins as the peer it was. Dropping the
//! cluster (also while a test panics) SIGKILLs every node and removes the directory.
//!
//! What JetStream reports is read through its API (`$JS.API.…` requests over a client connection
//! to one node) and, for a node's own health, its monitoring port (`/healthz`). Each request goes
//! through a connection of its own to one node, so that "through node i" means exactly that.
//!
//! Known behaviour of a 2.9 cluster (measured with Debian's 2.9.10) that the waits here allow
//! for:
//! - A fresh cluster (empty stores) elects a meta leader within a second: a node bootstrapped
//!   with no state campaigns at once. Nodes restarted on their stores wait out a random 4–9 s
//!   election timeout first, so a whole cluster restarted takes about 8–12 s. Until then every
//!   JetStream request fails ("JetStream system temporarily unavailable") or goes unanswered.
//! - After a stream's leader is killed, the remaining peers elect another after their election
//!   timeout: about 4–10 s, more on a loaded machine. Meanwhile nobody answers `STREAM.INFO` at
//!   first (the followers still believe in the old leader), then the followers answer with their
//!   own state and no leader.
//! - Only a stream's leader listens on its subjects, so a publish during that election finds no
//!   responder at all: async-nats reports it at once as "no stream found for given subject"
//!   (not as a timeout), exactly as for a subject no stream captures. Retrying is right only
//!   because the stream is known to exist; `publish_through` retries, each message with its
//!   `Nats-Msg-Id` so that the stream stores it once.
//! - A node restarted on its old store dir rejoins as the peer it was: its peers mark it
//!   current again once it has caught up, which is what `wait_for_current_peers` waits for.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use serde_json::Value;

use super::isolation::{free_ports, random_suffix, write, TempDir};
use super::nats::nats_server_program;

/// How long a new cluster may take to route its nodes together and elect a JetStream meta
/// leader, and a restarted node to rejoin.
const FORM_DEADLINE: Duration = Duration::from_secs(30);
/// How long a stream may take to elect a leader, or its peers to become current.
const ELECTION_DEADLINE: Duration = Duration::from_secs(30);
/// How long publishing a batch may take, retries through elections included: a bound against a
/// hang, not a speed check (30,000 orders on a loaded 2-core machine took over a minute once).
const PUBLISH_DEADLINE: Duration = Duration::from_secs(240);
/// How long a request that changes something (creating a stream), or a connection attempt, may
/// take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request that is polled may take: JetStream answers in milliseconds or not at all
/// (during an election nobody may answer `STREAM.INFO`), and a short wait keeps a poll of the
/// running nodes in turn from measuring an election in steps of several seconds.
const POLL_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Publish acks awaited at once by `publish_via`.
const PUBLISH_WINDOW: usize = 256;
/// Before `publish_through` sends again what failed: a publish during an election fails at once,
/// and nats.go waits this long between its own retries.
const PUBLISH_RETRY_WAIT: Duration = Duration::from_millis(250);
/// Between two polls.
const POLL: Duration = Duration::from_millis(100);

/// A JetStream cluster of the test's own; see the module's documentation.
pub struct NatsCluster {
    nodes: Vec<Node>,
    /// For the monitoring ports.
    http: ureq::Agent,
    /// Runs the test's own NATS requests.
    rt: tokio::runtime::Runtime,
    /// Holds every node's configuration, store and log. Last: removed once the nodes are gone.
    dir: TempDir,
}

/// One nats-server of the cluster.
struct Node {
    /// Unique in the cluster: what JetStream names peers and leaders by.
    server_name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    /// stdout and stderr of every run, appended (nats-server logs to stderr).
    log: PathBuf,
    /// `None` while the node is killed.
    child: Option<Child>,
}

/// A stream as its leader reports it (or, during an election, as a follower does).
#[derive(Debug, Clone)]
pub struct StreamState {
    /// The leading node; `None` during an election.
    pub leader: Option<usize>,
    /// The other peers, as the answering server sees them.
    pub replicas: Vec<Replica>,
    /// Messages stored.
    pub messages: u64,
}

/// A stream peer that is not the leader.
#[derive(Debug, Clone)]
pub struct Replica {
    /// `None` if the server name is none of this cluster's (never expected).
    pub node: Option<usize>,
    pub current: bool,
    pub offline: bool,
    /// Operations it is behind the leader.
    pub lag: u64,
}

impl NatsCluster {
    /// Starts `n` routed nodes and waits until every one is current with a JetStream meta leader
    /// and answers `$JS.API.INFO`; panics with the nodes' logs after `FORM_DEADLINE`.
    pub fn start(n: usize) -> NatsCluster {
        assert!(n > 0, "a cluster needs at least one node");
        let dir = TempDir::new("nats-cluster");
        let suffix = random_suffix();
        let ports = free_ports(3 * n);
        let (client_ports, rest) = ports.split_at(n);
        let (cluster_ports, monitor_ports) = rest.split_at(n);
        // Every node lists every node, itself included (nats-server skips a route to itself):
        // one list, and a restarted node finds the others whichever it is.
        let routes: String = cluster_ports
            .iter()
            .map(|port| format!("    \"nats-route://127.0.0.1:{port}\"\n"))
            .collect();
        let nodes = (0..n)
            .map(|i| {
                let node_dir = dir.path().join(format!("n{i}"));
                fs::create_dir(&node_dir)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", node_dir.display()));
                let server_name = format!("n{i}-{suffix}");
                let config = node_dir.join("nats.conf");
                // Strings are quoted: a temporary path could hold characters the parser reads
                // otherwise.
                write(
                    &config,
                    &format!(
                        "server_name: \"{server_name}\"\n\
                         listen: \"127.0.0.1:{client}\"\n\
                         http: \"127.0.0.1:{monitor}\"\n\
                         jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 64MB\n  max_file_store: 256MB\n}}\n\
                         cluster {{\n  name: \"ordersvc-{suffix}\"\n  listen: \"127.0.0.1:{route}\"\n  routes: [\n{routes}  ]\n}}\n",
                        client = client_ports[i],
                        monitor = monitor_ports[i],
                        route = cluster_ports[i],
                        store = node_dir.join("jetstream").display(),
                    ),
                );
                Node {
                    server_name,
                    client_port: client_ports[i],
                    monitor_port: monitor_ports[i],
                    config,
                    log: node_dir.join("nats.log"),
                    child: None,
                }
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the cluster's requests");
        let mut cluster = NatsCluster {
            nodes,
            http: ureq::AgentBuilder::new()
                .timeout(POLL_REQUEST_TIMEOUT)
                .build(),
            rt,
            dir,
        };
        // From here on, a panic drops `cluster`, which kills what was started and removes the
        // directory.
        for i in 0..n {
            cluster.spawn(i);
        }
        let started = Instant::now();
        cluster.wait_until_nodes_ready(&(0..n).collect::<Vec<_>>(), "the cluster to form");
        eprintln!(
            "cluster of {n} formed {:.1?} after its nodes started",
            started.elapsed()
        );
        cluster
    }

    /// How many nodes the cluster has (killed ones included).
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's client URL, comma-separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        (0..self.size())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Node `i`'s server name, as JetStream reports peers and leaders.
    pub fn server_name(&self, i: usize) -> &str {
        &self.nodes[i].server_name
    }

    /// Node `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// The directory that holds every node's configuration, store and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs node `i` and waits until it is gone: no shutdown, no goodbye to its peers, like a
    /// crash or a power cut.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.nodes[i]
            .child
            .take()
            .unwrap_or_else(|| panic!("node {i} is not running"));
        child.kill().expect("cannot SIGKILL a node");
        child.wait().expect("cannot wait for a killed node");
    }

    /// Starts a killed node again on the same ports, configuration and store, and waits until it
    /// has rejoined: current with the meta leader and answering `$JS.API.INFO`. Its streams may
    /// still be catching up (see `wait_for_current_peers`).
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is running");
        self.spawn(i);
        self.wait_until_nodes_ready(&[i], &format!("node {i} to rejoin"));
    }

    /// Whether node `i`'s process is alive (false once killed, or if it exited by itself).
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) | None => false,
        }
    }

    /// Creates a file stream on `subject` with `replicas` replicas, through node `via`.
    pub fn create_stream_via(&self, via: usize, name: &str, subject: &str, replicas: usize) {
        let config = serde_json::json!({
            "name": name,
            "subjects": [subject],
            "num_replicas": replicas,
            "storage": "file",
        });
        self.request_via(
            via,
            &format!("$JS.API.STREAM.CREATE.{name}"),
            config.to_string(),
            REQUEST_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("cannot create stream {name} through node {via}: {e}"));
    }

    /// Creates an R3 file stream on `subject` through the first running node.
    pub fn create_stream_r3(&self, name: &str, subject: &str) {
        let via = self.running().next().expect("no node is running");
        self.create_stream_via(via, name, subject, 3);
    }

    /// `STREAM.INFO` through the running nodes in turn, first answer wins. During an election
    /// the answer can be a follower's, with no leader.
    pub fn stream_state(&self, stream: &str) -> Result<StreamState, String> {
        let info = self.request(&format!("$JS.API.STREAM.INFO.{stream}"), String::new())?;
        let cluster = &info["cluster"];
        let replicas = cluster["replicas"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|peer| Replica {
                node: peer["name"].as_str().and_then(|name| self.node_named(name)),
                current: peer["current"].as_bool().unwrap_or(false),
                offline: peer["offline"].as_bool().unwrap_or(false),
                lag: peer["lag"].as_u64().unwrap_or(0),
            })
            .collect();
        Ok(StreamState {
            leader: cluster["leader"]
                .as_str()
                .and_then(|name| self.node_named(name)),
            replicas,
            messages: info["state"]["messages"]
                .as_u64()
                .ok_or_else(|| format!("no state.messages in {info}"))?,
        })
    }

    /// Which node leads `stream` now: `None` during an election, when no node answers, or when
    /// the named leader is a node the harness killed (a stale answer is no leader).
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        let leader = self.stream_state(stream).ok()?.leader?;
        self.nodes[leader].child.is_some().then_some(leader)
    }

    /// Which running node is the JetStream meta leader (which creates and places streams), as
    /// the first running node that names one says; `None` during an election.
    pub fn meta_leader(&self) -> Option<usize> {
        self.running().find_map(|i| {
            let url = format!("http://127.0.0.1:{}/jsz", self.nodes[i].monitor_port);
            let body = self.http.get(&url).call().ok()?.into_string().ok()?;
            let jsz: Value = serde_json::from_str(&body).ok()?;
            let leader = self.node_named(jsz["meta_cluster"]["leader"].as_str()?)?;
            self.nodes[leader].child.is_some().then_some(leader)
        })
    }

    /// Asks `stream`'s leader to step down (another peer is elected), and waits for the new one.
    pub fn step_down_stream(&self, stream: &str) -> usize {
        let leader = self.wait_for_stream_leader(stream);
        self.request_via(
            leader,
            &format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
            String::new(),
            REQUEST_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("stream {stream}'s leader does not step down: {e}"));
        self.wait_until(
            || self.stream_leader(stream).is_some_and(|l| l != leader),
            &format!("a new leader of stream {stream}"),
            || self.stream_state(stream).map(|s| format!("{s:?}")),
        );
        self.wait_for_stream_leader(stream)
    }

    /// Waits (bounded by `ELECTION_DEADLINE`) until a running node leads `stream`, and returns it.
    pub fn wait_for_stream_leader(&self, stream: &str) -> usize {
        let mut leader = None;
        self.wait_until(
            || {
                leader = self.stream_leader(stream);
                leader.is_some()
            },
            &format!("a leader of stream {stream}"),
            || self.stream_state(stream).map(|s| format!("{s:?}")),
        );
        leader.expect("the wait ended on a leader")
    }

    /// Waits (bounded by `ELECTION_DEADLINE`) until `stream` has a leader and `count` current
    /// peers in all, the leader included (`cluster.replicas` with `current: true`, not offline).
    pub fn wait_for_current_peers(&self, stream: &str, count: usize) {
        self.wait_until(
            || {
                self.stream_state(stream).is_ok_and(|state| {
                    state.leader.is_some()
                        && 1 + state
                            .replicas
                            .iter()
                            .filter(|r| r.current && !r.offline)
                            .count()
                            == count
                })
            },
            &format!("{count} current peers of stream {stream}"),
            || self.stream_state(stream).map(|s| format!("{s:?}")),
        );
    }

    /// Waits for `peers` current peers of `stream` (see `wait_for_current_peers`), then asserts
    /// that none lags behind and that the stream holds `messages`: a node back on its old store
    /// has caught up with what it missed.
    #[track_caller]
    pub fn assert_caught_up(&self, stream: &str, peers: usize, messages: u64) {
        self.wait_for_current_peers(stream, peers);
        let state = self.stream_state(stream).expect("the stream's state");
        assert!(
            state.replicas.iter().all(|r| r.current && r.lag == 0),
            "{state:?}"
        );
        assert_eq!(state.messages, messages);
    }

    /// How many messages `stream` holds, as its leader says (waiting for one, bounded: a
    /// follower answers only during an election, and then with its own count).
    pub fn stream_messages(&self, stream: &str) -> u64 {
        let mut messages = None;
        self.wait_until(
            || {
                messages = self
                    .stream_state(stream)
                    .ok()
                    .filter(|state| state.leader.is_some_and(|l| self.nodes[l].child.is_some()))
                    .map(|state| state.messages);
                messages.is_some()
            },
            &format!("the leader of stream {stream} to answer"),
            || self.stream_state(stream).map(|s| format!("{s:?}")),
        );
        messages.expect("the wait ended on an answer")
    }

    /// Publishes every `(id, payload)` to `subject` through node `via` only (see
    /// `publish_through`); returns how many sends were retries, panics with the nodes' logs if
    /// some message is still unacknowledged after `PUBLISH_DEADLINE`.
    pub fn publish_via(&self, via: usize, subject: &str, messages: &[(String, Vec<u8>)]) -> usize {
        publish_through(&self.url(via), subject, messages).unwrap_or_else(|e| {
            panic!("publishing through node {via} failed: {e}\n{}", self.logs())
        })
    }

    /// Every node's log so far, each under its name.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let log =
                    fs::read_to_string(&node.log).unwrap_or_else(|e| format!("(no log: {e})"));
                format!("===== node {i} ({}) =====\n{log}", node.server_name)
            })
            .collect()
    }

    /// Starts node `i`'s process (stdout and stderr appended to its log).
    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", node.log.display()));
        let child = Command::new(nats_server_program())
            .arg("-c")
            .arg(&node.config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file again"))
            .stderr(log)
            .spawn()
            .expect("cannot start nats-server");
        node.child = Some(child);
    }

    /// Waits until each of `nodes` is current with a meta leader (`/healthz?js-server-only`) and
    /// answers `$JS.API.INFO` through its own client port; panics if one exits, or after
    /// `FORM_DEADLINE`, with every node's log.
    fn wait_until_nodes_ready(&mut self, nodes: &[usize], what: &str) {
        let deadline = Instant::now() + FORM_DEADLINE;
        loop {
            for &i in nodes {
                if !self.is_running(i) {
                    panic!("node {i} exited while waiting for {what}:\n{}", self.logs());
                }
            }
            let waiting: Vec<String> = nodes
                .iter()
                .filter_map(|&i| self.node_ready(i).err().map(|e| format!("node {i}: {e}")))
                .collect();
            if waiting.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {FORM_DEADLINE:?} waiting for {what}: {}\n{}",
                waiting.join("; "),
                self.logs()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Whether node `i` is current with a JetStream meta leader and answers JetStream requests.
    fn node_ready(&self, i: usize) -> Result<(), String> {
        let url = format!(
            "http://127.0.0.1:{}/healthz?js-server-only=true",
            self.nodes[i].monitor_port
        );
        match self.http.get(&url).call() {
            Ok(_) => {}
            Err(ureq::Error::Status(status, response)) => {
                let body = response.into_string().unwrap_or_default();
                return Err(format!("/healthz {status} {}", body.trim()));
            }
            Err(e) => return Err(format!("/healthz: {e}")),
        }
        self.request_via(i, "$JS.API.INFO", String::new(), POLL_REQUEST_TIMEOUT)
            .map(drop)
            .map_err(|e| format!("$JS.API.INFO: {e}"))
    }

    /// The nodes the harness has not killed, in order.
    fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.size()).filter(|&i| self.nodes[i].child.is_some())
    }

    fn node_named(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.server_name == name)
    }

    /// A polled JetStream API request through the running nodes in turn; the first answer
    /// without an error wins, else every node's error.
    fn request(&self, subject: &str, payload: String) -> Result<Value, String> {
        let mut errors = Vec::new();
        for i in self.running() {
            match self.request_via(i, subject, payload.clone(), POLL_REQUEST_TIMEOUT) {
                Ok(answer) => return Ok(answer),
                Err(e) => errors.push(format!("node {i}: {e}")),
            }
        }
        Err(if errors.is_empty() {
            "no node is running".to_owned()
        } else {
            errors.join("; ")
        })
    }

    /// A JetStream API request through node `i` alone (a connection of its own), bounded by
    /// `timeout`: the answer's JSON, or its `error`, or why there was none.
    fn request_via(
        &self,
        i: usize,
        subject: &str,
        payload: String,
        timeout: Duration,
    ) -> Result<Value, String> {
        let url = self.url(i);
        let answer = self.rt.block_on(async {
            tokio::time::timeout(timeout, async {
                let client = connect(&url).await?;
                let message = client
                    .request(subject.to_owned(), payload.into())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(message.payload)
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
        })?;
        let json: Value = serde_json::from_slice(&answer)
            .map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(&answer)))?;
        match json.get("error") {
            Some(error) => Err(format!("JetStream error {error}")),
            None => Ok(json),
        }
    }

    /// Polls `condition` until it holds; after `ELECTION_DEADLINE` panics naming `what`, with
    /// `state()` (what the cluster says now) and every node's log.
    fn wait_until(
        &self,
        mut condition: impl FnMut() -> bool,
        what: &str,
        state: impl Fn() -> Result<String, String>,
    ) {
        let deadline = Instant::now() + ELECTION_DEADLINE;
        while !condition() {
            if Instant::now() > deadline {
                let now = state().unwrap_or_else(|e| format!("error: {e}"));
                panic!(
                    "timed out after {ELECTION_DEADLINE:?} waiting for {what}; now: {now}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        // SIGKILL: the stores are thrown away with the directory, so a clean shutdown (and its
        // lame-duck wait) would only cost time. Never panics: this also runs while a test unwinds.
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Publishes every `(id, payload)` to `subject` through the server at `url` only (a client of
/// its own, on a runtime of its own: any thread can publish while the test kills nodes), each
/// with its id as `Nats-Msg-Id`, `PUBLISH_WINDOW` acks awaited at once. A message whose publish
/// fails or whose ack does not come (an election under way) is sent again, with the same id so
/// that the stream stores it once, until `PUBLISH_DEADLINE`. Returns how many sends were retries.
pub fn publish_through(
    url: &str,
    subject: &str,
    messages: &[(String, Vec<u8>)],
) -> Result<usize, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"))?;
    rt.block_on(async {
        let client = connect(url).await?;
        let js = jetstream::new(client);
        let deadline = Instant::now() + PUBLISH_DEADLINE;
        let mut pending: Vec<usize> = (0..messages.len()).collect();
        let mut retries = 0;
        let mut last_error = String::new();
        while !pending.is_empty() {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} messages still unacknowledged after {PUBLISH_DEADLINE:?} \
                     (last error: {last_error})",
                    pending.len()
                ));
            }
            let mut failed = Vec::new();
            for window in pending.chunks(PUBLISH_WINDOW) {
                let mut acks = Vec::with_capacity(window.len());
                for &index in window {
                    let (id, payload) = &messages[index];
                    let publish = PublishMessage::build()
                        .payload(payload.clone().into())
                        .message_id(id.as_str());
                    let sent = js.send_publish(subject.to_owned(), publish).await;
                    acks.push(async move {
                        match sent {
                            Ok(ack) => (index, ack.await.map(drop).map_err(|e| e.to_string())),
                            Err(e) => (index, Err(e.to_string())),
                        }
                    });
                }
                // Together: an ack's timeout starts when it is awaited, so awaiting them one
                // by one turns a window the server dropped during an election into minutes.
                for (index, acked) in futures::future::join_all(acks).await {
                    if let Err(e) = acked {
                        last_error = e;
                        failed.push(index);
                    }
                }
            }
            if !failed.is_empty() {
                retries += failed.len();
                tokio::time::sleep(PUBLISH_RETRY_WAIT).await;
            }
            pending = failed;
        }
        if retries > 0 {
            eprintln!(
                "publishing through {url}: {retries} sends retried (last error: {last_error})"
            );
        }
        Ok(retries)
    })
}

/// A client of one server only: it does not follow the servers the cluster advertises, so a
/// request through node i goes through node i.
async fn connect(url: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .connection_timeout(REQUEST_TIMEOUT)
        .ignore_discovered_servers()
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))
}
