//! A PostgreSQL cluster under Patroni, of the test's own: one etcd (Patroni's store), three
//! Patroni nodes each with its own PostgreSQL, and haproxy in front with a write port (the
//! primary, by Patroni's `/primary` check) and a read port (the standbys, `/replica`). What the
//! failover tests need that one server cannot show: a primary lost for good, a synchronous
//! standby promoted, and the one URL the service was given moving to it.
//!
//! Everything lives under one temporary directory, on free loopback ports, and runs as the
//! `postgres` user when the tests run as root (initdb and postgres refuse root). Dropping the
//! cluster (also while a test panics) SIGKILLs every process it started, each PostgreSQL with
//! all its processes, and removes the directory.
//!
//! Measured here (Patroni 3.0.2, etcd 3.4.23, haproxy 2.6, PostgreSQL 15): bootstrap to a leader
//! with a synchronous standby takes 10–15 s; after `kill -9` of the leader's Patroni and
//! PostgreSQL the write port reaches the promoted standby 8–10 s later (the leader key's `ttl`,
//! then one `loop_wait`); a switchover takes about 3 s. A freshly promoted leader names no
//! synchronous standby for a few seconds, and Patroni (rightly) promotes nobody if it dies then:
//! `kill_node` and `switchover` therefore wait for a synchronous standby first.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use super::isolation::{free_ports, random_secret, random_suffix, write, TempDir};
use super::own_server::{command_as, give_to, server_user, stop, POLL};
use super::postgres::postgres_bin_dir;

/// How long bootstrap may take: etcd, initdb, the standbys' base backups, a synchronous standby
/// named, and haproxy routing both ports (10–15 s measured; a loaded machine is slower).
const START_DEADLINE: Duration = Duration::from_secs(120);
/// How long a failover or a switchover may take to show on the write port (8–10 s measured).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(90);
/// How long a test's own query may take to connect: a short bound, since a dead node or a port
/// with no server behind it must not hold a poll up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a request to a node's REST API may take.
const REST_TIMEOUT: Duration = Duration::from_secs(2);
/// The cluster's superuser: the service logs in as it (it creates its own database, so it needs
/// CREATEDB; a superuser has it).
const SUPERUSER: &str = "ordersvc";
/// The role the standbys stream WAL as.
const REPLICATION_USER: &str = "replicator";
/// How many nodes: a primary, its synchronous standby and one more, so that a standby remains
/// after a failover.
const NODES: usize = 3;

/// One Patroni node and the PostgreSQL it runs.
struct Node {
    /// Patroni's member name, `n{i}`.
    name: String,
    pg_port: u16,
    rest_port: u16,
    config: PathBuf,
    /// PostgreSQL's data directory: `postmaster.pid`'s first line is the postmaster's pid.
    data: PathBuf,
    /// Patroni's log (PostgreSQL logs to Patroni's stderr, so it is there too); appended.
    log: PathBuf,
    /// Patroni; `None` once killed.
    patroni: Option<Child>,
}

/// A Patroni cluster of the test's own; see the module's documentation.
pub struct PatroniCluster {
    nodes: Vec<Node>,
    etcd: Option<Child>,
    haproxy: Option<Child>,
    etcd_log: PathBuf,
    haproxy_log: PathBuf,
    write_port: u16,
    read_port: u16,
    /// The superuser's password (random).
    password: String,
    http: ureq::Agent,
    /// Runs the test's own queries.
    rt: tokio::runtime::Runtime,
    /// Holds everything. Last: removed once the processes are gone.
    dir: TempDir,
}

/// A member of the cluster as Patroni's `GET /cluster` reports it.
#[derive(Debug, Clone)]
pub struct Member {
    pub node: usize,
    /// `leader`, `sync_standby` or `replica`.
    pub role: String,
    /// `running`, `stopped`, `starting`, ...
    pub state: String,
}

impl PatroniCluster {
    /// Starts etcd, three Patroni nodes and haproxy, and waits until a leader has a synchronous
    /// standby and haproxy routes the write port to the leader and the read port to a standby;
    /// panics with every log after `START_DEADLINE`.
    pub fn start() -> PatroniCluster {
        let dir = TempDir::new("patroni");
        let user = server_user();
        let ports = free_ports(4 + 2 * NODES);
        let (etcd_client, etcd_peer, write_port, read_port) =
            (ports[0], ports[1], ports[2], ports[3]);
        let password = random_secret("pgpw");
        let replication_password = random_secret("replpw");
        let scope = format!("ordersvc-{}", random_suffix());

        let nodes: Vec<Node> = (0..NODES)
            .map(|i| {
                let node_dir = dir.path().join(format!("n{i}"));
                fs::create_dir(&node_dir)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", node_dir.display()));
                let node = Node {
                    name: format!("n{i}"),
                    pg_port: ports[4 + 2 * i],
                    rest_port: ports[5 + 2 * i],
                    config: node_dir.join("patroni.yml"),
                    data: node_dir.join("data"),
                    log: node_dir.join("patroni.log"),
                    patroni: None,
                };
                write(
                    &node.config,
                    &patroni_config(
                        &scope,
                        &node,
                        &node_dir,
                        etcd_client,
                        &password,
                        &replication_password,
                    ),
                );
                node
            })
            .collect();
        let haproxy_config = dir.path().join("haproxy.cfg");
        write(
            &haproxy_config,
            &haproxy_config_text(&nodes, write_port, read_port),
        );
        give_to(dir.path(), user);

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the test's own queries");
        let mut cluster = PatroniCluster {
            etcd_log: dir.path().join("etcd.log"),
            haproxy_log: dir.path().join("haproxy.log"),
            nodes,
            etcd: None,
            haproxy: None,
            write_port,
            read_port,
            password,
            http: ureq::AgentBuilder::new()
                .timeout(REST_TIMEOUT)
                .redirects(0)
                .build(),
            rt,
            dir,
        };
        // From here on, a panic drops `cluster`, which kills what was started and cleans up.
        cluster.start_etcd(etcd_client, etcd_peer);
        for i in 0..NODES {
            cluster.start_patroni(i);
        }
        cluster.start_haproxy(&haproxy_config);
        let deadline = Instant::now() + START_DEADLINE;
        let leader = cluster.wait_for(deadline, "a leader with a synchronous standby", |c| {
            c.sync_standby().and(c.leader())
        });
        cluster.wait_for(deadline, "the write port to reach the leader", |c| {
            (c.write_port_reaches() == Some(leader)).then_some(())
        });
        cluster.wait_for(deadline, "the read port to reach a standby", |c| {
            c.port_reaches(c.read_port)
                .filter(|&(_, in_recovery)| in_recovery)
                .map(drop)
        });
        cluster
    }

    fn start_etcd(&mut self, client: u16, peer: u16) {
        let data = self.dir.path().join("etcd");
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut command = command_as(Path::new("etcd"), server_user());
        command
            .args(["--name", "etcd"])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("etcd={peer_url}")])
            .args(["--initial-cluster-state", "new"]);
        self.etcd = Some(self.spawn_logged(command, &self.etcd_log.clone(), "etcd"));
        let health = format!("{client_url}/health");
        let deadline = Instant::now() + START_DEADLINE;
        self.wait_for(deadline, "etcd to answer /health", |c| {
            c.rest_get(&health)
                .filter(|body| body.contains("\"health\":\"true\""))
                .map(drop)
        });
    }

    /// Starts node `i`'s Patroni (which starts its PostgreSQL); no wait.
    fn start_patroni(&mut self, i: usize) {
        let mut command = command_as(Path::new("patroni"), server_user());
        command.arg(&self.nodes[i].config);
        let log = self.nodes[i].log.clone();
        let child = self.spawn_logged(command, &log, "patroni");
        self.nodes[i].patroni = Some(child);
    }

    fn start_haproxy(&mut self, config: &Path) {
        // Debian puts it in /usr/sbin, which a user's PATH may lack.
        let program = Path::new("/usr/sbin/haproxy");
        let program = if program.exists() {
            program
        } else {
            Path::new("haproxy")
        };
        let mut command = command_as(program, server_user());
        // -db: in the foreground, not a daemon, so that it is our child to stop.
        command.arg("-f").arg(config).arg("-db");
        self.haproxy = Some(self.spawn_logged(command, &self.haproxy_log.clone(), "haproxy"));
    }

    /// Spawns `command` in the cluster's directory with stdout and stderr appended to `log`.
    fn spawn_logged(&self, mut command: Command, log: &Path, what: &str) -> Child {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        command
            // Not root's home, which the postgres user cannot enter.
            .current_dir(self.dir.path())
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("the log file again"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e} (is it installed?)"))
    }

    /// Polls `check` until it gives a value; panics with every log after `deadline`.
    fn wait_for<T>(
        &self,
        deadline: Instant,
        what: &str,
        mut check: impl FnMut(&PatroniCluster) -> Option<T>,
    ) -> T {
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nmembers: {:?}\n{}",
                self.members(),
                self.logs()
            );
            std::thread::sleep(POLL * 4);
        }
    }

    /// `postgres://ordersvc:PASSWORD@127.0.0.1:WRITE_PORT/DATABASE?sslmode=disable`: the primary,
    /// whichever node it is, through haproxy.
    pub fn write_url(&self, database: &str) -> String {
        self.url(self.write_port, database)
    }

    /// The standbys, through haproxy (round robin).
    pub fn read_url(&self, database: &str) -> String {
        self.url(self.read_port, database)
    }

    /// Node `i`'s PostgreSQL, directly.
    pub fn node_url(&self, i: usize, database: &str) -> String {
        self.url(self.nodes[i].pg_port, database)
    }

    fn url(&self, port: u16, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{port}/{database}?sslmode=disable",
            self.password
        )
    }

    /// The members as the first node that answers sees them (Patroni's view of its store);
    /// empty if none answers.
    pub fn members(&self) -> Vec<Member> {
        for node in self.nodes.iter().filter(|n| n.patroni.is_some()) {
            let url = format!("http://127.0.0.1:{}/cluster", node.rest_port);
            let Some(body) = self.rest_get(&url) else {
                continue;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            return json["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|member| {
                    let name = member["name"].as_str()?;
                    Some(Member {
                        node: self.nodes.iter().position(|n| n.name == name)?,
                        role: member["role"].as_str()?.to_owned(),
                        state: member["state"].as_str().unwrap_or_default().to_owned(),
                    })
                })
                .collect();
        }
        Vec::new()
    }

    /// The node that holds the leader key and runs, if any.
    pub fn leader(&self) -> Option<usize> {
        self.member_with_role("leader")
    }

    /// The node the leader has named its synchronous standby, if any: the only one Patroni will
    /// promote in synchronous mode.
    pub fn sync_standby(&self) -> Option<usize> {
        self.member_with_role("sync_standby")
    }

    fn member_with_role(&self, role: &str) -> Option<usize> {
        self.members()
            .into_iter()
            .find(|m| m.role == role && m.state == "running")
            .map(|m| m.node)
    }

    /// Waits until a synchronous standby is named, and returns it.
    pub fn wait_for_sync_standby(&self) -> usize {
        let deadline = Instant::now() + FAILOVER_DEADLINE;
        self.wait_for(deadline, "a synchronous standby", |c| {
            c.leader().and(c.sync_standby())
        })
    }

    /// Waits until a node other than `old` leads and the write port reaches it; returns it.
    pub fn wait_for_leader_other_than(&self, old: usize) -> usize {
        let deadline = Instant::now() + FAILOVER_DEADLINE;
        let leader = self.wait_for(deadline, "a new leader", |c| {
            c.leader().filter(|&l| l != old)
        });
        self.wait_for(deadline, "the write port to reach the new leader", |c| {
            (c.write_port_reaches() == Some(leader)).then_some(())
        });
        leader
    }

    /// The node the write port reaches, if it reaches a primary.
    fn write_port_reaches(&self) -> Option<usize> {
        self.port_reaches(self.write_port)
            .filter(|&(_, in_recovery)| !in_recovery)
            .map(|(node, _)| node)
    }

    /// The node behind `port` (by the port its server listens on) and whether it is a standby.
    fn port_reaches(&self, port: u16) -> Option<(usize, bool)> {
        let url = self.url(port, "postgres");
        let (server_port, in_recovery): (i32, bool) = self.rt.block_on(async {
            let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(&url))
                .await
                .ok()?
                .ok()?;
            let row = sqlx::query_as("SELECT inet_server_port(), pg_is_in_recovery()")
                .fetch_one(&mut conn)
                .await
                .ok();
            let _ = conn.close().await;
            row
        })?;
        let node = self
            .nodes
            .iter()
            .position(|n| i32::from(n.pg_port) == server_port)?;
        Some((node, in_recovery))
    }

    /// SIGKILLs node `i`'s Patroni and its PostgreSQL (the postmaster and every process it
    /// started), as if its machine were lost; returns once they are gone. Killing
    /// PostgreSQL alone would not do: Patroni would start it again in place.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut patroni) = self.nodes[i].patroni.take() {
            let _ = patroni.kill();
            let _ = patroni.wait();
        }
        kill_postmaster(&self.nodes[i].data);
    }

    /// A planned switchover with `patronictl switchover --force` from the leader to its
    /// synchronous standby (waited for first); returns `(old leader, new leader)` once the write
    /// port reaches the new one.
    pub fn switchover(&self) -> (usize, usize) {
        let candidate = self.wait_for_sync_standby();
        let leader = self
            .leader()
            .expect("a leader, since it has a synchronous standby");
        let mut command = Command::new("patronictl");
        command
            .arg("-c")
            .arg(&self.nodes[candidate].config)
            .args(["switchover", "--force"])
            .args(["--leader", &self.nodes[leader].name])
            .args(["--candidate", &self.nodes[candidate].name])
            .current_dir(self.dir.path());
        let output = command.output().expect("cannot run patronictl");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && printed.contains("Successfully switched over"),
            "patronictl switchover failed ({}):\n{printed}\n{}",
            output.status,
            self.logs()
        );
        let new = self.wait_for_leader_other_than(leader);
        assert_eq!(new, candidate, "the switchover went to another node");
        (leader, new)
    }

    /// One integer from a query at `url` (NULL reads as 0); panics naming the query.
    pub fn query_i64(&self, url: &str, query: &str) -> i64 {
        self.try_query_i64(url, query)
            .unwrap_or_else(|e| panic!("cannot run {query:?}: {e}"))
    }

    /// `query_i64` that reports failure instead of panicking, for polls across a failover.
    pub fn try_query_i64(&self, url: &str, query: &str) -> Result<i64, String> {
        self.rt.block_on(async {
            let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url))
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            let value: Option<i64> = sqlx::query_scalar(query)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let _ = conn.close().await;
            Ok(value.unwrap_or(0))
        })
    }

    /// The last lines of every log (each Patroni with its PostgreSQL, etcd, haproxy), for
    /// failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        let logs = self
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), &n.log))
            .chain([("etcd", &self.etcd_log), ("haproxy", &self.haproxy_log)]);
        for (name, path) in logs {
            let log = fs::read(path)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_else(|e| format!("(no log: {e})"));
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            text.push_str(&format!("----- {name} ({}) -----\n", path.display()));
            for line in tail {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }

    /// The body of a 2xx answer to a GET, or `None`.
    fn rest_get(&self, url: &str) -> Option<String> {
        self.http.get(url).call().ok()?.into_string().ok()
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // Never panics: this also runs while a failed test unwinds. haproxy first, so that no
        // client is routed anywhere meanwhile; every Patroni before its PostgreSQL, so that none
        // starts it again.
        if let Some(mut haproxy) = self.haproxy.take() {
            stop(&mut haproxy, libc::SIGKILL);
        }
        for node in &mut self.nodes {
            if let Some(mut patroni) = node.patroni.take() {
                stop(&mut patroni, libc::SIGKILL);
            }
        }
        for node in &self.nodes {
            kill_postmaster(&node.data);
        }
        if let Some(mut etcd) = self.etcd.take() {
            stop(&mut etcd, libc::SIGKILL);
        }
    }
}

/// SIGKILLs the postmaster of `data` and every process it started, as a lost machine would end
/// them, and waits (bounded) until the postmaster is gone. Its children must be killed one by
/// one: each puts itself in a session of its own (so that the postmaster can signal its
/// subprocesses), and on their own they would notice the postmaster's death and tell their
/// clients so ("terminating connection due to unexpected postmaster exit"), which a lost
/// machine never does. The postmaster is stopped first so that it forks nothing meanwhile.
/// Does nothing unless the pid in `postmaster.pid` is a running process whose command line names
/// `data`: a stale file must not make us kill a process that reused its pid.
fn kill_postmaster(data: &Path) {
    let Some(pid) = fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<libc::pid_t>().ok())
        .filter(|&pid| pid > 1)
    else {
        return;
    };
    let Some(cmdline) = fs::read(format!("/proc/{pid}/cmdline")).ok() else {
        return;
    };
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if !cmdline.contains(&*data.to_string_lossy()) {
        return;
    }
    // SAFETY: kill touches no memory of ours.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    for child in children_of(pid) {
        // SAFETY: as above; a child that has exited meanwhile is a zombie until its stopped
        // parent reaps it, so its pid cannot have been reused.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
}

/// The processes whose parent is `parent` (from /proc).
fn children_of(parent: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| {
            // The fields after the command name: state, then the parent's pid.
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<libc::pid_t>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// Whether `pid` is a process that is not a zombie (a killed postmaster is reaped by whoever
/// inherited it, which may take a moment).
fn running(pid: libc::pid_t) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Node `node`'s Patroni configuration.
fn patroni_config(
    scope: &str,
    node: &Node,
    node_dir: &Path,
    etcd_client: u16,
    password: &str,
    replication_password: &str,
) -> String {
    // Strings are quoted (YAML would read some paths or secrets as other types otherwise). The
    // leader key lives `ttl` seconds unless renewed every `loop_wait`; Patroni wants
    // loop_wait + 2 × retry_timeout <= ttl. fsync is off: the tests kill processes, not the
    // kernel, so the page cache keeps what was written, and PostgreSQL's fsyncs would only slow
    // down etcd's, which the leader key's renewals wait for.
    format!(
        r#"scope: "{scope}"
name: "{name}"
log:
  level: INFO
restapi:
  listen: "127.0.0.1:{rest}"
  connect_address: "127.0.0.1:{rest}"
etcd3:
  hosts: "127.0.0.1:{etcd_client}"
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 4
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        hot_standby_feedback: "on"
        max_connections: 100
        shared_buffers: "32MB"
        fsync: "off"
        full_page_writes: "off"
  initdb:
    - encoding: UTF8
    - locale: C
postgresql:
  listen: "127.0.0.1:{pg}"
  connect_address: "127.0.0.1:{pg}"
  data_dir: "{data}"
  bin_dir: "{bin}"
  pgpass: "{pgpass}"
  parameters:
    unix_socket_directories: "{socket_dir}"
  authentication:
    superuser:
      username: "{SUPERUSER}"
      password: "{password}"
    replication:
      username: "{REPLICATION_USER}"
      password: "{replication_password}"
  pg_hba:
    - host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
"#,
        name = node.name,
        rest = node.rest_port,
        pg = node.pg_port,
        data = node.data.display(),
        pgpass = node_dir.join("pgpass").display(),
        socket_dir = node_dir.display(),
        bin = postgres_bin_dir().display(),
    )
}

/// haproxy's configuration: the write port to whichever node answers `/primary` on its REST
/// API, the read port to those answering `/replica`.
fn haproxy_config_text(nodes: &[Node], write_port: u16, read_port: u16) -> String {
    let servers: String = nodes
        .iter()
        .map(|n| {
            format!(
                "  server {} 127.0.0.1:{} check port {}\n",
                n.name, n.pg_port, n.rest_port
            )
        })
        .collect();
    // OPTIONS rather than GET: Patroni answers it with the same decision, status only; haproxy
    // resets the connection once it has the status, and Patroni logs a stack trace for every GET
    // whose body it could not send (two a second per server). Checked every 500 ms, down after
    // two failures; a server marked down has its sessions cut, so that no client keeps writing
    // to a node that is no longer the primary.
    let section = |name: &str, port: u16, check: &str, balance: &str| {
        format!(
            "listen {name}\n\
             \x20 bind 127.0.0.1:{port}\n\
             \x20 balance {balance}\n\
             \x20 option httpchk OPTIONS {check}\n\
             \x20 http-check expect status 200\n\
             \x20 default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2 on-marked-down shutdown-sessions\n\
             {servers}"
        )
    };
    format!(
        "global\n\
         \x20 maxconn 1000\n\
         \x20 log stderr format raw local0 info\n\
         defaults\n\
         \x20 mode tcp\n\
         \x20 log global\n\
         \x20 timeout connect 2s\n\
         \x20 timeout client 30m\n\
         \x20 timeout server 30m\n\
         \x20 timeout check 1s\n\
         {}{}",
        section("write", write_port, "/primary", "first"),
        section("read", read_port, "/replica", "roundrobin"),
    )
}
