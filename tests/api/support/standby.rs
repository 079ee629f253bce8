//! A PostgreSQL primary and a hot standby streaming from it, of a test's own (`OwnPrimaryStandby`):
//! what the tests of reading from a standby, of a standby that lags or cancels queries, and of a
//! promotion need. Plaintext on loopback with passwords (SCRAM): TLS is `postgres::OwnPostgres`'s
//! subject, not this one's.
//!
//! The primary is made with initdb and has a database `orders` owned by the service's role
//! `ordersvc` (login, createdb, no superuser, as in production); the test's own queries run as the
//! superuser `postgres`. The standby is a `pg_basebackup -R` of the primary with a replication
//! slot, so the primary keeps every WAL segment the standby has not received, however long its
//! replay is paused. Both live under one temporary directory; dropping this (also while a test
//! panics) stops both, the standby first, and removes the directory.

use std::fmt;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use super::isolation::{free_ports, random_secret, write, TempDir};
use super::own_server::{command_as, give_to, server_user, stop, POLL};
use super::postgres::{initdb, postgres_bin_dir, wait_until_accepting};

/// The database the service uses on these servers.
pub const DATABASE: &str = "orders";

/// How long replication, a promotion or a setting may take to be seen.
const SETTLE: Duration = Duration::from_secs(60);

/// One of the two servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Primary,
    Standby,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Which::Primary => "primary",
            Which::Standby => "standby",
        })
    }
}

/// The standby's settings that decide when it cancels a query that stands in the way of replay.
#[derive(Debug, Clone, Copy)]
pub struct StandbySettings {
    /// How long replay waits for a conflicting query before cancelling it (PostgreSQL's default
    /// is 30 s; a test that provokes cancellations sets it small).
    pub max_standby_streaming_delay: Duration,
    /// Off: the primary's VACUUM does not know what the standby's queries still need, so
    /// replaying it conflicts with them (PostgreSQL's default, and the case to survive).
    pub hot_standby_feedback: bool,
}

impl Default for StandbySettings {
    fn default() -> StandbySettings {
        StandbySettings {
            max_standby_streaming_delay: Duration::from_secs(30),
            hot_standby_feedback: false,
        }
    }
}

/// A PostgreSQL primary and a hot standby streaming from it; see the module's documentation.
pub struct OwnPrimaryStandby {
    primary: Server,
    standby: Server,
    /// The superuser `postgres`'s.
    superuser_password: String,
    /// The service role `ordersvc`'s.
    password: String,
    /// For the test's own queries, from any thread.
    rt: tokio::runtime::Runtime,
    /// Holds both data directories, the sockets and the logs. Last: removed once both servers
    /// have stopped.
    dir: TempDir,
}

/// One postmaster.
struct Server {
    port: u16,
    data: PathBuf,
    /// Its stderr.
    log: PathBuf,
    /// Stopped in `Drop`.
    child: Option<Child>,
}

impl OwnPrimaryStandby {
    /// Makes the primary with initdb, the database and the service role, then the standby from a
    /// base backup of it, starts both, and waits until the standby streams from the primary.
    pub fn start(settings: StandbySettings) -> OwnPrimaryStandby {
        let dir = TempDir::new("pg-standby");
        let user = server_user();
        let bin = postgres_bin_dir();
        let superuser_password = random_secret("pgsu");
        let password = random_secret("pgpw");
        let ports = free_ports(2);
        let password_file = dir.path().join("password");
        write(&password_file, &superuser_password);
        give_to(dir.path(), user);

        let primary_data = dir.path().join("primary");
        initdb(&bin, user, &primary_data, "postgres", &password_file);
        // Appended: a later setting overrides initdb's. The standby copies this file and appends
        // its own port and settings after it. synchronous_commit stays on (unlike the other
        // servers of the tests): with it off, a commit is visible before its WAL is written, so
        // `pg_current_wal_lsn()` can be behind a committed transaction, which is exactly what
        // the tests of a standby catching up must not be confused by.
        append(
            &primary_data.join("postgresql.conf"),
            &format!(
                "\n# The test's own settings.\n\
                 listen_addresses = '127.0.0.1'\n\
                 port = {port}\n\
                 unix_socket_directories = '{dir}'\n\
                 wal_level = replica\n\
                 max_wal_senders = 10\n\
                 max_replication_slots = 10\n\
                 hot_standby = on\n\
                 shared_buffers = 32MB\n\
                 fsync = off\n\
                 log_line_prefix = '%m [%p] %u@%d %a: '\n",
                port = ports[0],
                dir = dir.path().display(),
            ),
        );
        write(
            &primary_data.join("pg_hba.conf"),
            "# Only from loopback, with a password; the standby streams as the superuser.\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host replication postgres 127.0.0.1/32 scram-sha-256\n",
        );
        give_to(dir.path(), user);

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the test's own queries");
        let standby_data = dir.path().join("standby");
        let mut pair = OwnPrimaryStandby {
            primary: Server {
                port: ports[0],
                data: primary_data,
                log: dir.path().join("primary.log"),
                child: None,
            },
            standby: Server {
                port: ports[1],
                data: standby_data,
                log: dir.path().join("standby.log"),
                child: None,
            },
            superuser_password,
            password,
            rt,
            dir,
        };
        // From here on, a panic drops `pair`, which stops what runs and removes the directory.
        pair.run(Which::Primary);
        pair.execute_in(
            Which::Primary,
            "postgres",
            &[
                &format!(
                    "CREATE ROLE ordersvc LOGIN CREATEDB PASSWORD '{}'",
                    pair.password
                ),
                &format!("CREATE DATABASE {DATABASE} OWNER ordersvc"),
            ],
        );
        pair.base_backup(settings);
        pair.run(Which::Standby);
        pair.wait_until_streaming();
        pair
    }

    /// `pg_basebackup -R` of the primary into the standby's data directory, with a slot of its
    /// own, then the standby's own settings.
    fn base_backup(&self, settings: StandbySettings) {
        let user = server_user();
        let output = command_as(&postgres_bin_dir().join("pg_basebackup"), user)
            .arg("-D")
            .arg(&self.standby.data)
            .args(["-h", "127.0.0.1", "-p", &self.primary.port.to_string()])
            .args(["-U", "postgres", "--no-password"])
            // -R writes primary_conninfo (with this password) and standby.signal; -C -S makes
            // the slot that keeps the WAL the standby still needs; a fast checkpoint starts the
            // backup at once rather than after a spread one.
            .args([
                "-R",
                "-C",
                "-S",
                "standby",
                "--checkpoint=fast",
                "--no-sync",
            ])
            .env("PGPASSWORD", &self.superuser_password)
            .current_dir(self.dir.path())
            .output()
            .expect("cannot run pg_basebackup");
        assert!(
            output.status.success(),
            "pg_basebackup failed ({}): {}{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
        append(
            &self.standby.data.join("postgresql.conf"),
            &format!(
                "\n# The standby's own settings.\n\
                 port = {port}\n\
                 max_standby_streaming_delay = {delay}ms\n\
                 hot_standby_feedback = {feedback}\n\
                 log_recovery_conflict_waits = on\n",
                port = self.standby.port,
                delay = settings.max_standby_streaming_delay.as_millis(),
                feedback = if settings.hot_standby_feedback {
                    "on"
                } else {
                    "off"
                },
            ),
        );
        give_to(&self.standby.data, user);
    }

    /// Starts one server and waits until it accepts the superuser (a standby does once it has
    /// replayed to a consistent state).
    fn run(&mut self, which: Which) {
        let user = server_user();
        let server = self.server(which);
        let log_file = fs::File::create(&server.log).expect("cannot create the server's log");
        give_to(&server.log, user);
        let child = command_as(&postgres_bin_dir().join("postgres"), user)
            .arg("-D")
            .arg(&server.data)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("the log file again"))
            .stderr(log_file)
            .spawn()
            .expect("cannot start postgres");
        self.server_mut(which).child = Some(child);

        let url = self.superuser_url(which, "postgres");
        let addr = self.addr(which);
        // The fields, not `server_mut`: the runtime is borrowed beside the child.
        let server = match which {
            Which::Primary => &mut self.primary,
            Which::Standby => &mut self.standby,
        };
        let child = server
            .child
            .as_mut()
            .expect("the postmaster was just started");
        if let Err(why) = wait_until_accepting(&self.rt, child, addr, &url) {
            panic!("the {which} {why}:\n{}", self.logs());
        }
    }

    fn wait_until_streaming(&self) {
        self.wait_until(
            || {
                self.try_query_i64(
                    Which::Standby,
                    "postgres",
                    "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                )
                .ok()
                    == Some(1)
            },
            "the standby to stream from the primary",
        );
    }

    fn server(&self, which: Which) -> &Server {
        match which {
            Which::Primary => &self.primary,
            Which::Standby => &self.standby,
        }
    }

    fn server_mut(&mut self, which: Which) -> &mut Server {
        match which {
            Which::Primary => &mut self.primary,
            Which::Standby => &mut self.standby,
        }
    }

    /// A server's postmaster process, while it runs.
    pub fn pid(&self, which: Which) -> Option<u32> {
        self.server(which).child.as_ref().map(Child::id)
    }

    /// The directory that holds both servers' files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where a server listens.
    pub fn addr(&self, which: Which) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.server(which).port))
    }

    /// The service role's URL of `DATABASE` on a server, in plaintext.
    pub fn url(&self, which: Which) -> String {
        format!(
            "postgres://ordersvc:{}@{}/{DATABASE}?sslmode=disable",
            self.password,
            self.addr(which)
        )
    }

    /// The superuser's URL of `database` on a server, in plaintext.
    pub fn superuser_url(&self, which: Which, database: &str) -> String {
        format!(
            "postgres://postgres:{}@{}/{database}?sslmode=disable",
            self.superuser_password,
            self.addr(which)
        )
    }

    /// One integer (NULL reads as 0) from a query as the superuser in `DATABASE`.
    /// On the standby, a query the standby cancels for a conflict with recovery (the tests'
    /// conflicting load makes such cancellations on purpose) is asked again, a few times.
    pub fn query_i64(&self, which: Which, sql: &str) -> i64 {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.try_query_i64(which, DATABASE, sql) {
                Ok(value) => return value,
                Err(sqlx::Error::Database(e))
                    if e.code().as_deref() == Some("40001") && attempts < 50 =>
                {
                    std::thread::sleep(POLL);
                }
                Err(e) => panic!("cannot run {sql:?} on the {which}: {e}\n{}", self.logs()),
            }
        }
    }

    fn try_query_i64(&self, which: Which, database: &str, sql: &str) -> Result<i64, sqlx::Error> {
        let url = self.superuser_url(which, database);
        self.rt.block_on(async {
            let mut conn = PgConnection::connect(&url).await?;
            let value: Option<i64> = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
            conn.close().await?;
            Ok(value.unwrap_or(0))
        })
    }

    /// Every row of a query's one text column, as the superuser in `DATABASE` (for what a test
    /// shows when it fails).
    pub fn query_strings(&self, which: Which, sql: &str) -> Vec<String> {
        let url = self.superuser_url(which, DATABASE);
        self.rt
            .block_on(async {
                let mut conn = PgConnection::connect(&url).await?;
                let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(&mut conn).await?;
                conn.close().await?;
                Ok::<_, sqlx::Error>(rows)
            })
            .unwrap_or_else(|e| panic!("cannot run {sql:?} on the {which}: {e}\n{}", self.logs()))
    }

    /// Runs one SQL statement as the superuser in `DATABASE`.
    pub fn execute(&self, which: Which, sql: &str) {
        self.execute_in(which, DATABASE, &[sql]);
    }

    /// Runs statements one after the other on one connection: one at a time, because PostgreSQL
    /// runs a string of several as one transaction, where VACUUM and ALTER SYSTEM are refused.
    fn execute_in(&self, which: Which, database: &str, statements: &[&str]) {
        let url = self.superuser_url(which, database);
        self.rt
            .block_on(async {
                let mut conn = PgConnection::connect(&url).await?;
                for sql in statements {
                    sqlx::raw_sql(sql).execute(&mut conn).await?;
                }
                conn.close().await
            })
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {statements:?} on the {which}: {e}\n{}",
                    self.logs()
                )
            });
    }

    /// Stops the standby's replay (it still receives WAL) and waits until it has stopped.
    pub fn pause_replay(&self) {
        self.execute(Which::Standby, "SELECT pg_wal_replay_pause()");
        self.wait_until(
            || {
                // Replay pauses before the next record it would apply: give it one.
                self.execute(
                    Which::Primary,
                    "SELECT pg_logical_emit_message(false, 'test', 'pause here')",
                );
                self.try_query_i64(
                    Which::Standby,
                    "postgres",
                    "SELECT count(*) FROM (SELECT pg_get_wal_replay_pause_state() AS s) p \
                     WHERE s = 'paused'",
                )
                .ok()
                    == Some(1)
            },
            "the standby's replay to pause",
        );
    }

    /// Lets the standby replay again.
    pub fn resume_replay(&self) {
        self.execute(Which::Standby, "SELECT pg_wal_replay_resume()");
    }

    /// How far the standby has replayed (`pg_last_wal_replay_lsn()`, in bytes).
    pub fn replay_lsn(&self) -> u64 {
        lsn(self.query_i64(
            Which::Standby,
            "SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint",
        ))
    }

    /// How far the primary has written (`pg_current_wal_lsn()`, in bytes).
    pub fn current_lsn(&self) -> u64 {
        lsn(self.query_i64(
            Which::Primary,
            "SELECT (pg_current_wal_lsn() - '0/0')::bigint",
        ))
    }

    /// Waits until the standby has replayed everything the primary has written so far.
    pub fn wait_until_replayed(&self) {
        let target = self.current_lsn();
        self.wait_until(
            || self.replay_lsn() >= target,
            &format!("the standby to replay up to {target}"),
        );
    }

    /// Turns `default_transaction_read_only` on or off on the primary (ALTER SYSTEM and a
    /// reload), as an operator does to an old primary before the name moves to a new one, and
    /// waits until a new session sees it. Sessions already open see it before their next
    /// statement once their backend has processed the reload.
    pub fn set_read_only(&self, read_only: bool) {
        let value = if read_only { "on" } else { "off" };
        // The session's own setting first: the statements must not run read-only themselves.
        self.execute_in(
            Which::Primary,
            DATABASE,
            &[
                "SET default_transaction_read_only = off",
                &format!("ALTER SYSTEM SET default_transaction_read_only = {value}"),
                "SELECT pg_reload_conf()",
            ],
        );
        let wanted = i64::from(read_only);
        self.wait_until(
            || {
                self.try_query_i64(
                    Which::Primary,
                    DATABASE,
                    "SELECT (current_setting('default_transaction_read_only') = 'on')::int::int8",
                )
                .ok()
                    == Some(wanted)
            },
            &format!("default_transaction_read_only = {value} on the primary"),
        );
    }

    /// Promotes the standby (`pg_promote()`, waiting for it) and waits until it takes writes.
    pub fn promote_standby(&self) {
        self.execute(Which::Standby, "SELECT pg_promote(true, 60)");
        self.wait_until(
            || {
                self.try_query_i64(
                    Which::Standby,
                    DATABASE,
                    "SELECT (NOT pg_is_in_recovery())::int::int8",
                )
                .ok()
                    == Some(1)
            },
            "the promoted standby to leave recovery",
        );
    }

    /// How many queries the standby has cancelled in `DATABASE` because they stood in the way of
    /// replay (every kind of recovery conflict).
    pub fn recovery_conflicts(&self) -> i64 {
        self.query_i64(
            Which::Standby,
            "SELECT (confl_tablespace + confl_lock + confl_snapshot + confl_bufferpin \
                     + confl_deadlock)::int8 \
             FROM pg_stat_database_conflicts WHERE datname = current_database()",
        )
    }

    /// What a server has logged so far.
    pub fn log(&self, which: Which) -> String {
        fs::read_to_string(&self.server(which).log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Both logs, for a failure's message.
    pub fn logs(&self) -> String {
        format!(
            "--- primary log ---\n{}\n--- standby log ---\n{}",
            self.log(Which::Primary),
            self.log(Which::Standby)
        )
    }

    /// Polls `condition` until it holds; panics naming `what`, with both logs, after `SETTLE`.
    #[track_caller]
    pub fn wait_until(&self, mut condition: impl FnMut() -> bool, what: &str) {
        let deadline = Instant::now() + SETTLE;
        while !condition() {
            assert!(
                Instant::now() < deadline,
                "timed out after {SETTLE:?} waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for OwnPrimaryStandby {
    fn drop(&mut self) {
        // The standby first: stopped after its primary, it would keep retrying to stream.
        // SIGINT is PostgreSQL's fast shutdown: it disconnects clients rather than waiting.
        for server in [&mut self.standby, &mut self.primary] {
            if let Some(mut child) = server.child.take() {
                stop(&mut child, libc::SIGINT);
            }
        }
    }
}

/// A write load on the primary that makes the standby cancel long queries in the same database:
/// a scratch table updated and vacuumed over and over. Replaying the removal of row versions
/// that a standby query's snapshot may still see conflicts with that query; with
/// `hot_standby_feedback` off the primary does not hold them back, so after
/// `max_standby_streaming_delay` the standby cancels the query ("canceling statement due to
/// conflict with recovery", SQLSTATE 40001). Stopped and joined when dropped.
pub struct ConflictingLoad {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl ConflictingLoad {
    /// Creates the scratch table in `DATABASE` on the primary and starts updating and
    /// vacuuming it, as the superuser, on a thread of its own.
    pub fn start(servers: &OwnPrimaryStandby) -> ConflictingLoad {
        servers.execute(
            Which::Primary,
            "CREATE TABLE IF NOT EXISTS scratch (id int PRIMARY KEY, n int NOT NULL)",
        );
        servers.execute(
            Which::Primary,
            "INSERT INTO scratch SELECT i, 0 FROM generate_series(1, 1000) i \
             ON CONFLICT (id) DO NOTHING",
        );
        let url = servers.superuser_url(Which::Primary, DATABASE);
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            std::thread::Builder::new()
                .name("conflicting-load".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    rt.block_on(async {
                        let mut conn = PgConnection::connect(&url).await?;
                        while !stop.load(Ordering::Acquire) {
                            // Apart: VACUUM is refused in a string of statements.
                            sqlx::raw_sql("UPDATE scratch SET n = n + 1")
                                .execute(&mut conn)
                                .await?;
                            sqlx::raw_sql("VACUUM scratch").execute(&mut conn).await?;
                            rounds.fetch_add(1, Ordering::AcqRel);
                        }
                        conn.close().await
                    })
                    .map_err(|e: sqlx::Error| e.to_string())
                })
                .expect("cannot start the load's thread")
        };
        ConflictingLoad {
            stop,
            rounds,
            thread: Some(thread),
        }
    }

    /// Rounds of update and vacuum so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Acquire)
    }

    /// Stops the load; panics if it failed meanwhile.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        let ran = self
            .thread
            .take()
            .expect("the load runs until finished")
            .join()
            .expect("the load's thread panicked");
        if let Err(e) = ran {
            panic!("the write load failed: {e}");
        }
        self.rounds()
    }
}

impl Drop for ConflictingLoad {
    fn drop(&mut self) {
        // Never panics: this also runs while a failed test unwinds.
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An LSN read as a bigint (never negative: an LSN below 2^63).
fn lsn(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Appends `text` to a file of the test's own.
fn append(path: &Path, text: &str) {
    let mut contents =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    contents.push_str(text);
    write(path, &contents);
}

#[test]
fn the_standby_replicates_pauses_and_is_promoted_and_the_primary_turns_read_only() {
    // Arrange
    let servers = OwnPrimaryStandby::start(StandbySettings::default());
    servers.execute(Which::Primary, "CREATE TABLE t (n int)");
    servers.execute(
        Which::Primary,
        "INSERT INTO t SELECT generate_series(1, 100)",
    );
    let count = |which| servers.query_i64(which, "SELECT count(*) FROM t");
    // The service's URL logs in to its database on either server as its own role, no superuser.
    for which in [Which::Primary, Which::Standby] {
        let url = servers.url(which);
        let superuser: Result<bool, sqlx::Error> = servers.rt.block_on(async {
            let mut conn = PgConnection::connect(&url).await?;
            sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                .fetch_one(&mut conn)
                .await
        });
        assert!(!superuser.expect("the service's URL logs in"), "{which}");
    }

    // Act 1, assert 1: the standby replays what the primary commits, and only while not paused.
    servers.wait_until_replayed();
    assert_eq!(count(Which::Standby), 100);
    servers.pause_replay();
    servers.execute(
        Which::Primary,
        "INSERT INTO t SELECT generate_series(1, 50)",
    );
    let paused_at = servers.replay_lsn();
    assert!(servers.current_lsn() > paused_at);
    assert_eq!(count(Which::Standby), 100, "replayed while paused");
    servers.resume_replay();
    servers.wait_until_replayed();
    assert_eq!(count(Which::Standby), 150);
    assert!(servers.replay_lsn() > paused_at);

    // Act 2, assert 2: read-only on the primary refuses a write with SQLSTATE 25006; off again
    // takes it.
    servers.set_read_only(true);
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        servers.execute(Which::Primary, "INSERT INTO t VALUES (0)")
    }));
    let message = *refused
        .expect_err("a write on a read-only primary")
        .downcast::<String>()
        .expect("a panic message");
    assert!(
        message.contains("read-only transaction"),
        "another error: {message}"
    );
    servers.set_read_only(false);
    servers.execute(Which::Primary, "INSERT INTO t VALUES (0)");

    // Act 3, assert 3: the promoted standby takes writes of its own.
    servers.wait_until_replayed();
    servers.promote_standby();
    servers.execute(Which::Standby, "INSERT INTO t VALUES (-1)");
    assert_eq!(count(Which::Standby), 152);
    assert_eq!(count(Which::Primary), 151);
}

#[test]
fn a_dropped_primary_and_standby_leave_no_process_port_or_directory_even_in_a_panic() {
    // Arrange: what the servers are made of, noted before the test panics.
    let seen: Mutex<(Vec<u32>, Vec<SocketAddr>, PathBuf)> = Mutex::default();

    // Act: a test that fails with both servers up.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let servers = OwnPrimaryStandby::start(StandbySettings::default());
        let pids = [Which::Primary, Which::Standby]
            .map(|which| servers.pid(which).expect("both run"))
            .to_vec();
        let addrs = [Which::Primary, Which::Standby]
            .map(|which| servers.addr(which))
            .to_vec();
        *seen.lock().unwrap() = (pids, addrs, servers.dir().to_owned());
        panic!("a failing test (on purpose: the harness must clean up after it)");
    }));

    // Assert
    assert!(outcome.is_err(), "the test should have panicked");
    let (pids, addrs, dir) = seen.into_inner().unwrap();
    assert_eq!(pids.len(), 2, "both servers started");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "postgres {pid} is still there"
        );
    }
    for addr in addrs {
        assert!(
            TcpStream::connect(addr).is_err(),
            "something still listens on {addr}"
        );
    }
    assert!(!dir.exists(), "{} is still there", dir.display());
}

#[test]
fn the_conflicting_load_makes_the_standby_cancel_a_long_query_in_the_same_database() {
    // Arrange: a standby that waits 100 ms for a query in the way of replay, and rows enough
    // for a query that takes longer than that to read.
    let servers = OwnPrimaryStandby::start(StandbySettings {
        max_standby_streaming_delay: Duration::from_millis(100),
        hot_standby_feedback: false,
    });
    servers.execute(
        Which::Primary,
        "CREATE TABLE big AS SELECT i, repeat('x', 1000) AS filler \
         FROM generate_series(1, 100000) i",
    );
    servers.wait_until_replayed();
    let before = servers.recovery_conflicts();
    let load = ConflictingLoad::start(&servers);
    servers.wait_until(|| load.rounds() >= 5, "the load to run");

    // Act: a long read on the standby, streamed a row at a time, as a restore reads.
    let url = servers.superuser_url(Which::Standby, DATABASE);
    let read = servers.rt.block_on(async {
        let mut conn = PgConnection::connect(&url).await?;
        let mut rows =
            sqlx::query_as::<_, (i32, String)>("SELECT i, filler FROM big").fetch(&mut conn);
        let mut n = 0u64;
        while let Some(row) = futures::StreamExt::next(&mut rows).await {
            row?;
            n += 1;
            if n % 10_000 == 0 {
                // A reader slower than the load's rounds, as a restore on a busy machine is.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok::<_, sqlx::Error>(n)
    });
    let rounds = load.finish();

    // Assert: cancelled with SQLSTATE 40001, counted and logged by the standby.
    match read {
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(e.code().as_deref(), Some("40001"), "{e}");
            assert!(e.message().contains("conflict with recovery"), "{e}");
        }
        other => panic!("the long read was not cancelled ({rounds} rounds of load): {other:?}"),
    }
    servers.wait_until(
        || servers.recovery_conflicts() > before,
        "the standby's statistics to count the cancellation",
    );
    assert!(
        servers
            .log(Which::Standby)
            .lines()
            .any(|line| line.contains("postgres@orders") && line.contains("conflict with recovery")),
        "{}",
        servers.log(Which::Standby)
    );
}
