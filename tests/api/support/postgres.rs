//! PostgreSQL for the tests: where the shared server is, a test's own database on it
//! (`SharedDatabase`), a lock a test takes on it (`OrdersLocked`), and a PostgreSQL cluster of a
//! test's own (`OwnPostgres`, initdb on a free port) that accepts only TLS.
//!
//! A server of the test's own lives under a temporary directory of its own; dropping it (also
//! while a test panics) stops the process and removes the directory.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Instant;

use sqlx::{Connection, PgConnection};

use super::certs::{Certs, ServerCert};
use super::isolation::{block_on_bounded, free_port, random_secret, write, TempDir};
use super::own_server::{command_as, give_to, server_user, stop, POLL, START_DEADLINE};
use super::urls::server_addr;

/// Where the service's database lives unless `ORDERSVC_TEST_DATABASE_URL` says otherwise; only
/// the database name of either is replaced.
const DEFAULT_DATABASE_URL: &str = "postgres://ordersvc:ordersvc@127.0.0.1:5432/postgres";

/// The shared PostgreSQL's URL (`ORDERSVC_TEST_DATABASE_URL` or the default).
pub fn base_database_url() -> String {
    std::env::var("ORDERSVC_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned())
}

/// The PostgreSQL server the tests use (`ORDERSVC_TEST_DATABASE_URL` or the default).
pub fn postgres_addr() -> SocketAddr {
    server_addr(&base_database_url(), 5432)
}

/// `url` with its database name replaced by `name` (user, host, port and parameters kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((main, query)) => (main, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority = main.find("://").map_or(0, |i| i + 3);
    let path = main[authority..]
        .find('/')
        .map_or(main.len(), |i| authority + i);
    format!("{}/{name}{query}", &main[..path])
}

/// Where this machine's PostgreSQL server programs are: the newest
/// `/usr/lib/postgresql/VERSION/bin` that has `initdb` (Debian's layout).
pub fn postgres_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .expect("no /usr/lib/postgresql/*/bin/initdb: install the PostgreSQL server package")
}

/// Makes a cluster in `data` with initdb, as `user`, whose superuser `superuser` logs in with
/// SCRAM and the password in `password_file` (removed once read).
pub fn initdb(
    bin: &Path,
    user: Option<(u32, u32)>,
    data: &Path,
    superuser: &str,
    password_file: &Path,
) {
    let output = command_as(&bin.join("initdb"), user)
        .arg("-D")
        .arg(data)
        .args(["-U", superuser, "--auth=scram-sha-256"])
        .arg(format!("--pwfile={}", password_file.display()))
        .args(["--encoding=UTF8", "--locale=C", "--no-sync"])
        // Not root's home, which the postgres user cannot enter.
        .current_dir(password_file.parent().unwrap_or(Path::new("/")))
        .output()
        .expect("cannot run initdb");
    assert!(
        output.status.success(),
        "initdb failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    fs::remove_file(password_file).expect("cannot remove the password file");
}

/// Waits until the postmaster `child`, listening at `addr`, takes a connection to `url` (over
/// TLS if the URL asks for it); `Err` says why not: it exited, or did not within
/// `START_DEADLINE` (with the last error).
pub fn wait_until_accepting(
    rt: &tokio::runtime::Runtime,
    child: &mut Child,
    addr: SocketAddr,
    url: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + START_DEADLINE;
    let mut last_error = String::from("no attempt yet");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited ({status})"));
        }
        if TcpStream::connect(addr).is_ok() {
            let attempt = rt.block_on(async {
                let conn = PgConnection::connect(url).await?;
                conn.close().await
            });
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "did not accept a connection within {START_DEADLINE:?} (last error: {last_error})"
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// A PostgreSQL cluster of the test's own that accepts only TLS connections (`hostssl` with
/// SCRAM; a plaintext attempt is refused by the server itself), with the superuser `ordersvc`
/// and a random password, and a certificate signed by the test CA.
pub struct OwnPostgres {
    port: u16,
    password: String,
    certs: Certs,
    /// The postmaster; stopped in `Drop`.
    child: Option<Child>,
    /// The server's stderr, shown when it does not start.
    log: PathBuf,
    /// For the test's own queries.
    rt: tokio::runtime::Runtime,
    /// Holds the data directory, the certificates, the socket and the log. Last: removed once
    /// the server has stopped.
    _dir: TempDir,
}

impl OwnPostgres {
    /// Makes the cluster with initdb, starts it, and waits until it accepts a TLS connection.
    pub fn start() -> OwnPostgres {
        OwnPostgres::start_with(ServerCert::SignedByTestCa)
    }

    /// `start`, with the server certificate `server` (`ca_file` is then what trusts it).
    pub fn start_with(server: ServerCert) -> OwnPostgres {
        let dir = TempDir::new("pg");
        let user = server_user();
        let bin = postgres_bin_dir();
        let password = random_secret("pgpw");
        let certs = Certs::write_with(dir.path(), server);
        let password_file = dir.path().join("password");
        write(&password_file, &password);
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        give_to(dir.path(), user);

        initdb(&bin, user, &data, "ordersvc", &password_file);

        let port = free_port();
        // Appended: a later setting overrides initdb's.
        let settings = format!(
            "\n# The test's own settings.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{dir}'\n\
             ssl = on\n\
             ssl_cert_file = '{cert}'\n\
             ssl_key_file = '{key}'\n\
             shared_buffers = 32MB\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n",
            dir = dir.path().display(),
            cert = certs.cert_file.display(),
            key = certs.key_file.display(),
        );
        let conf = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).expect("cannot read postgresql.conf");
        text.push_str(&settings);
        write(&conf, &text);
        write(
            &data.join("pg_hba.conf"),
            "# Only TLS from loopback, with a password: anything else is refused.\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\n",
        );

        let log_file = fs::File::create(&log).expect("cannot create the server's log");
        give_to(dir.path(), user);
        let child = command_as(&bin.join("postgres"), user)
            .arg("-D")
            .arg(&data)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("the log file again"))
            .stderr(log_file)
            .spawn()
            .expect("cannot start postgres");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the test's own queries");
        let mut server = OwnPostgres {
            port,
            password,
            certs,
            child: Some(child),
            log,
            rt,
            _dir: dir,
        };
        // From here on, a panic drops `server`, which stops it and removes the directory.
        server.wait_until_accepting();
        server
    }

    fn wait_until_accepting(&mut self) {
        let url = self.url("postgres", "sslmode=require");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let child = self
            .child
            .as_mut()
            .expect("the postmaster was just started");
        if let Err(why) = wait_until_accepting(&self.rt, child, addr, &url) {
            panic!("postgres {why}:\n{}", self.log());
        }
    }

    /// The superuser `ordersvc`'s password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgres://ordersvc:PASSWORD@127.0.0.1:PORT/DATABASE?PARAMS`, e.g. with the parameters
    /// `sslmode=verify-full&sslrootcert=/path/ca.pem`.
    pub fn url(&self, database: &str, params: &str) -> String {
        format!(
            "postgres://ordersvc:{}@127.0.0.1:{}/{database}?{params}",
            self.password, self.port
        )
    }

    /// What trusts the server's certificate (PEM): the test CA's certificate, which signed it,
    /// or the self-signed certificate itself.
    pub fn ca_file(&self) -> &Path {
        &self.certs.ca_file
    }

    /// Another CA's certificate (PEM), which did not.
    pub fn other_ca_file(&self) -> &Path {
        &self.certs.other_ca_file
    }

    /// One integer from a query as the superuser in the `postgres` database (over TLS that
    /// verifies the server, like any client should).
    pub fn query_i64(&self, query: &str) -> i64 {
        let url = self.url(
            "postgres",
            &format!(
                "sslmode=verify-full&sslrootcert={}",
                self.ca_file().display()
            ),
        );
        self.rt
            .block_on(async {
                let mut conn = PgConnection::connect(&url).await?;
                let value: i64 = sqlx::query_scalar(query).fetch_one(&mut conn).await?;
                conn.close().await?;
                Ok::<_, sqlx::Error>(value)
            })
            .unwrap_or_else(|e| panic!("cannot run {query:?}: {e}"))
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: it disconnects clients rather than waiting for
        // them (SIGTERM's smart shutdown would wait for a service that was not stopped).
        if let Some(mut child) = self.child.take() {
            stop(&mut child, libc::SIGINT);
        }
    }
}

/// A database of the test's own on the shared PostgreSQL (`ordersvc_test_SUFFIX`, in plaintext:
/// the shared server is not what these tests are about). The service creates it; dropping this
/// drops it, as its owner, like `TestApp` does.
pub struct SharedDatabase {
    pub url: String,
    name: String,
}

impl SharedDatabase {
    /// `ordersvc_test_SUFFIX` in plaintext.
    pub fn named(suffix: &str) -> SharedDatabase {
        let mut db = SharedDatabase::for_suffix(suffix);
        let separator = if db.url.contains('?') { '&' } else { '?' };
        db.url = format!("{}{separator}sslmode=disable", db.url);
        db
    }

    /// `ordersvc_test_SUFFIX`, reached as the tests' base URL says (`spawn_app`'s database).
    pub fn for_suffix(suffix: &str) -> SharedDatabase {
        let name = SharedDatabase::name_for(suffix);
        SharedDatabase {
            url: with_database(&base_database_url(), &name),
            name,
        }
    }

    /// The name of a test's database.
    pub fn name_for(suffix: &str) -> String {
        format!("ordersvc_test_{suffix}")
    }

    /// One integer from a query in this database, on a connection of its own (NULL reads as
    /// 0): for a test that has no `World`.
    pub fn query_i64(&self, query: &str) -> i64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the query");
        rt.block_on(async {
            let mut conn = PgConnection::connect(&self.url).await?;
            let value: Option<i64> = sqlx::query_scalar(query).fetch_one(&mut conn).await?;
            conn.close().await?;
            Ok::<_, sqlx::Error>(value.unwrap_or(0))
        })
        .unwrap_or_else(|e| panic!("cannot run {query:?}: {e}"))
    }
}

impl Drop for SharedDatabase {
    fn drop(&mut self) {
        let maintenance = with_database(&self.url, "postgres");
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let result = block_on_bounded(async {
            let mut conn = PgConnection::connect(&maintenance).await?;
            sqlx::query(&sql).execute(&mut conn).await?;
            conn.close().await
        });
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => eprintln!("cleanup: cannot drop {}: {e}", self.name),
            None => eprintln!("cleanup: dropping {} timed out", self.name),
        }
    }
}

/// A transaction of the test's own that holds an exclusive lock on `orders`: every write of the
/// service waits for it, with its query in flight and no answer (while pings still succeed).
pub struct OrdersLocked {
    // Before the runtime: the connection is dropped inside it.
    conn: Option<PgConnection>,
    rt: tokio::runtime::Runtime,
}

impl OrdersLocked {
    pub fn take(database_url: &str) -> OrdersLocked {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the lock");
        let conn = rt.block_on(async {
            let mut conn = PgConnection::connect(database_url).await?;
            sqlx::query("BEGIN").execute(&mut conn).await?;
            sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
                .execute(&mut conn)
                .await?;
            Ok::<_, sqlx::Error>(conn)
        });
        OrdersLocked {
            conn: Some(conn.expect("cannot lock the orders table")),
            rt,
        }
    }

    pub fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            self.rt
                .block_on(async {
                    sqlx::query("ROLLBACK").execute(&mut conn).await?;
                    conn.close().await
                })
                .expect("cannot release the lock");
        }
    }
}

impl Drop for OrdersLocked {
    fn drop(&mut self) {
        // Closing the connection ends the transaction, and with it the lock.
        let _inside = self.rt.enter();
        drop(self.conn.take());
    }
}
