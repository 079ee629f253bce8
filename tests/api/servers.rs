//! Servers of a test's own, for what the shared ones cannot show: a PostgreSQL that accepts only
//! TLS, and NATS servers that demand a password or a token, over TLS or not, each with
//! certificates made for it in-process (a test CA, a server certificate it signed, and another
//! CA that signed nothing the server shows). Also the test's own corners of the shared servers
//! that such tests still need: a database on the shared PostgreSQL, a stream on the shared NATS.
//!
//! Every server lives under a temporary directory of its own on a free loopback port; dropping
//! it (also while a test panics) stops the process and removes the directory. Names carry a
//! random suffix, so tests running in parallel never share one.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ordersvc_client::child::ServeSettings;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use sqlx::{Connection, PgConnection};

use crate::helpers::{base_database_url, base_nats_url, with_database};

/// How long a server of a test's own may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a server may take to stop after its stop signal before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a cleanup step on a shared server may take.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(30);
/// Between two polls.
const POLL: Duration = Duration::from_millis(50);

/// A random suffix for names, e.g. `3fa9c0d1`.
pub fn random_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A random secret that cannot be mistaken for anything else in a command's output.
pub fn random_secret(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// A free TCP port on 127.0.0.1 (nothing listened on it a moment ago). Like `closed_port`, it can
/// in principle be taken by someone else before the server binds it.
pub fn free_port() -> u16 {
    crate::helpers::closed_port()
}

/// `count` distinct free TCP ports on 127.0.0.1: all are bound at once before any is let go, so
/// none is handed out twice (unlike `count` calls of `free_port`). The same caveat holds: another
/// process may take one before the server binds it.
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind a port on 127.0.0.1")
        })
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("a bound address").port())
        .collect()
}

/// A directory of the test's own under the system's temporary directory; dropping it removes it
/// with everything in it.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("ordersvc-{prefix}-{}", random_suffix()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("cleanup: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// A test's certificates as PEM files: a CA, a server certificate it signed (for IP 127.0.0.1
/// and DNS localhost) with its key, and another CA that signed nothing the server shows.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The test CA: what a client must be given to trust the server.
    pub ca_file: PathBuf,
    /// Another CA, unrelated to the server: trusting only it must fail.
    pub other_ca_file: PathBuf,
    pub cert_file: PathBuf,
    /// The server's private key (mode 0600).
    pub key_file: PathBuf,
}

impl Certs {
    /// Makes the certificates and writes them into `dir`.
    pub fn write_to(dir: &Path) -> Certs {
        let (ca_pem, ca) = new_ca("ordersvc test CA");
        let (other_ca_pem, _) = new_ca("another CA");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("valid subject alternative names");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("cannot generate the server's key");
        let cert = params
            .signed_by(&key, &ca)
            .expect("cannot sign the server certificate");
        let certs = Certs {
            ca_file: dir.join("ca.pem"),
            other_ca_file: dir.join("other-ca.pem"),
            cert_file: dir.join("server.crt"),
            key_file: dir.join("server.key"),
        };
        write(&certs.ca_file, &ca_pem);
        write(&certs.other_ca_file, &other_ca_pem);
        write(&certs.cert_file, &cert.pem());
        write(&certs.key_file, &key.serialize_pem());
        // PostgreSQL refuses a key that others can read.
        fs::set_permissions(&certs.key_file, fs::Permissions::from_mode(0o600))
            .expect("cannot make the key private");
        certs
    }
}

/// A self-signed CA named `name`: its certificate as PEM, and the issuer that signs with it.
fn new_ca(name: &str) -> (String, CertifiedIssuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names is valid");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("cannot generate a CA key");
    let ca = CertifiedIssuer::self_signed(params, key).expect("cannot make a CA certificate");
    (ca.pem(), ca)
}

/// Writes a file of the test's own; panics naming it if it cannot.
pub fn write(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// The user and group a server process runs as: `postgres` when the tests run as root (initdb
/// and postgres refuse to run as root), else the tests' own (`None`: no change).
fn server_user() -> Option<(u32, u32)> {
    // Looked up once: getpwnam returns a static buffer, which tests on other threads would
    // overwrite if each looked it up itself.
    static USER: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    *USER.get_or_init(|| {
        // SAFETY: geteuid cannot fail and touches no memory of ours.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        // SAFETY: the name is a NUL-terminated literal; the record is read at once, inside the
        // OnceLock's initialisation, which runs on one thread only (nothing else in the tests
        // calls getpwnam).
        let entry = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
        assert!(
            !entry.is_null(),
            "running as root, and there is no `postgres` user to run PostgreSQL as"
        );
        // SAFETY: non-null, so it points at a valid passwd record.
        Some(unsafe { ((*entry).pw_uid, (*entry).pw_gid) })
    })
}

/// Gives `path` and everything under it to `user` (when there is one to give it to).
fn give_to(path: &Path, user: Option<(u32, u32)>) {
    let Some((uid, gid)) = user else { return };
    chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("cannot chown {}: {e}", path.display()));
    if path.is_dir() {
        for entry in fs::read_dir(path).expect("cannot list a directory of the test's own") {
            give_to(&entry.expect("a directory entry").path(), user);
        }
    }
}

/// A command that runs as `user` (when there is one).
fn command_as(program: &Path, user: Option<(u32, u32)>) -> Command {
    let mut command = Command::new(program);
    if let Some((uid, gid)) = user {
        // std also drops root's supplementary groups when it changes the uid.
        command.uid(uid).gid(gid);
    }
    command
}

/// Stops a server: `signal`, a bounded wait, then SIGKILL; never panics (it runs in `Drop`).
fn stop(child: &mut Child, signal: libc::c_int) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) touches no memory of ours; the child is not reaped yet (try_wait said
        // so), so the pid is still its own.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Where this machine's PostgreSQL server programs are: the newest
/// `/usr/lib/postgresql/VERSION/bin` that has `initdb` (Debian's layout).
fn postgres_bin_dir() -> PathBuf {
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
        let dir = TempDir::new("pg");
        let user = server_user();
        let bin = postgres_bin_dir();
        let password = random_secret("pgpw");
        let certs = Certs::write_to(dir.path());
        let password_file = dir.path().join("password");
        write(&password_file, &password);
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        give_to(dir.path(), user);

        let output = command_as(&bin.join("initdb"), user)
            .arg("-D")
            .arg(&data)
            .args(["-U", "ordersvc", "--auth=scram-sha-256"])
            .arg(format!("--pwfile={}", password_file.display()))
            .args(["--encoding=UTF8", "--locale=C", "--no-sync"])
            // Not root's home, which the postgres user cannot enter.
            .current_dir(dir.path())
            .output()
            .expect("cannot run initdb");
        assert!(
            output.status.success(),
            "initdb failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        fs::remove_file(&password_file).expect("cannot remove the password file");

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
        let deadline = Instant::now() + START_DEADLINE;
        let url = self.url("postgres", "sslmode=require");
        let mut last_error = String::from("no attempt yet");
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("postgres exited ({status}):\n{}", self.log());
            }
            if TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.port))).is_ok() {
                let attempt = self.rt.block_on(async {
                    let conn = PgConnection::connect(&url).await?;
                    conn.close().await
                });
                match attempt {
                    Ok(()) => return,
                    Err(e) => last_error = e.to_string(),
                }
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept a TLS connection within {START_DEADLINE:?} \
                 (last error: {last_error}):\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
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

    /// The test CA's certificate (PEM), which signed the server's.
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

/// How a client proves who it is to an `OwnNats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsAuth {
    /// `authorization { user, password }`.
    UserPassword,
    /// `authorization { token }`.
    Token,
}

/// Whether an `OwnNats` demands TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsTls {
    Off,
    /// `tls { cert_file, key_file }` with a certificate signed by the test CA.
    On,
}

/// A nats-server of the test's own with JetStream, demanding a password or a token, over TLS or
/// not.
pub struct OwnNats {
    port: u16,
    auth: NatsAuth,
    user: String,
    /// The password or the token.
    secret: String,
    certs: Certs,
    /// The server; stopped in `Drop`.
    child: Option<Child>,
    log: PathBuf,
    /// Holds the configuration, the certificates, the JetStream store and the log. Last: removed
    /// once the server has stopped.
    dir: TempDir,
}

impl OwnNats {
    /// Starts a server on a free port and waits until it greets clients.
    pub fn start(auth: NatsAuth, tls: NatsTls) -> OwnNats {
        let mut server = OwnNats::prepare(auth, tls);
        server.run();
        server
    }

    /// Everything but the process: a free port, the credentials, the certificates and the
    /// configuration, so that a client can be started before the server is (`run` starts it).
    pub fn prepare(auth: NatsAuth, tls: NatsTls) -> OwnNats {
        let dir = TempDir::new("nats");
        let port = free_port();
        let certs = Certs::write_to(dir.path());
        let user = format!("user{}", random_suffix());
        let secret = random_secret(match auth {
            NatsAuth::UserPassword => "natspw",
            NatsAuth::Token => "natstoken",
        });
        // Strings are quoted: unquoted, a token could be read as a number or a `$variable`.
        let authorization = match auth {
            NatsAuth::UserPassword => format!("user: \"{user}\"\n  password: \"{secret}\""),
            NatsAuth::Token => format!("token: \"{secret}\""),
        };
        let tls_block = match tls {
            NatsTls::Off => String::new(),
            // A handshake timeout above the default, for a loaded 2-core machine.
            NatsTls::On => format!(
                "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 5\n}}\n",
                certs.cert_file.display(),
                certs.key_file.display()
            ),
        };
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 64MB\n  max_file_store: 256MB\n}}\n\
             authorization {{\n  {authorization}\n}}\n\
             {tls_block}",
            store = dir.path().join("jetstream").display(),
        );
        write(&dir.path().join("nats.conf"), &config);
        OwnNats {
            port,
            auth,
            user,
            secret,
            certs,
            child: None,
            log: dir.path().join("nats.log"),
            dir,
        }
    }

    /// Starts the prepared server and waits until it greets clients.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let dir = self.dir.path();
        let child = Command::new(nats_server_program())
            .arg("-c")
            .arg(dir.join("nats.conf"))
            .arg("-l")
            .arg(&self.log)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start nats-server");
        // From here on, a panic drops `self`, which stops the server and removes the directory.
        self.child = Some(child);
        self.wait_until_greeting();
    }

    /// Waits until a client that connects gets the server's `INFO` line (sent in the clear even
    /// by a TLS server: the client upgrades after it).
    fn wait_until_greeting(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("nats-server exited ({status}):\n{}", self.log());
            }
            if let Ok(conn) = TcpStream::connect(self.addr()) {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                if BufReader::new(conn).read_line(&mut line).is_ok() && line.starts_with("INFO ") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not greet a client within {START_DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `SCHEME://127.0.0.1:PORT`, without credentials (`nats` or `tls`).
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr())
    }

    /// `SCHEME://USERINFO@127.0.0.1:PORT`: `user:password` or a token as USERINFO.
    pub fn url_with(&self, scheme: &str, userinfo: &str) -> String {
        format!("{scheme}://{userinfo}@{}", self.addr())
    }

    /// The right USERINFO for `url_with`: `user:password` or the token.
    pub fn credentials(&self) -> String {
        match self.auth {
            NatsAuth::UserPassword => format!("{}:{}", self.user, self.secret),
            NatsAuth::Token => self.secret.clone(),
        }
    }

    /// The user name (only `NatsAuth::UserPassword` servers ask for it).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password or the token.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The test CA's certificate (PEM), which signed the server's.
    pub fn ca_file(&self) -> &Path {
        &self.certs.ca_file
    }

    /// Another CA's certificate (PEM), which did not.
    pub fn other_ca_file(&self) -> &Path {
        &self.certs.other_ca_file
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, libc::SIGTERM);
        }
    }
}

/// `$NATS_SERVER` if set (as for scripts/local-cluster.sh), else Debian's nats-server (the 2.9
/// the service is built for), else whichever is on the PATH.
pub fn nats_server_program() -> PathBuf {
    if let Some(program) = std::env::var_os("NATS_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(program);
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("nats-server")
    }
}

/// A test's names: its suffix, and a stream, subject and durable consumer named after it.
#[derive(Debug, Clone)]
pub struct Names {
    pub suffix: String,
    pub stream: String,
    pub subject: String,
    pub durable: String,
}

impl Names {
    pub fn fresh() -> Names {
        let suffix = random_suffix();
        Names {
            stream: format!("TEST_{}", suffix.to_uppercase()),
            subject: format!("test.{suffix}"),
            durable: format!("durable_{suffix}"),
            suffix,
        }
    }

    /// `serve` on these names and a free port, with these URLs and no token or CA.
    pub fn serve_settings<'a>(
        &'a self,
        database_url: &'a str,
        nats_url: &'a str,
    ) -> ServeSettings<'a> {
        ServeSettings {
            database_url,
            nats_url,
            nats_token: None,
            nats_tls_ca: None,
            stream: &self.stream,
            subject: &self.subject,
            durable: &self.durable,
            http_addr: "127.0.0.1:0",
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
    pub fn named(suffix: &str) -> SharedDatabase {
        let name = format!("ordersvc_test_{suffix}");
        let base = with_database(&base_database_url(), &name);
        let separator = if base.contains('?') { '&' } else { '?' };
        SharedDatabase {
            url: format!("{base}{separator}sslmode=disable"),
            name,
        }
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

/// The test's stream on the shared NATS server; dropping this deletes it (and its consumer), if
/// anyone made it.
pub struct SharedStream {
    pub nats_url: String,
    name: String,
    changelog: String,
}

impl SharedStream {
    /// The stream of `names`, and the changelog a service on it makes.
    pub fn of(names: &Names) -> SharedStream {
        SharedStream {
            nats_url: base_nats_url(),
            name: names.stream.clone(),
            changelog: ordersvc_service::changelog::stream_name(&names.stream, &names.durable),
        }
    }
}

impl Drop for SharedStream {
    fn drop(&mut self) {
        let result = block_on_bounded(async {
            let client = async_nats::connect(&self.nats_url)
                .await
                .map_err(|e| e.to_string())?;
            let js = async_nats::jetstream::new(client);
            let _ = js.delete_stream(&self.changelog).await;
            match js.delete_stream(&self.name).await {
                Ok(_) => Ok(()),
                // Never made: the test failed before.
                Err(e) if e.to_string().contains("not found") => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        });
        match result {
            Some(Ok(())) => {}
            Some(Err(e)) => eprintln!("cleanup: cannot delete stream {}: {e}", self.name),
            None => eprintln!("cleanup: deleting stream {} timed out", self.name),
        }
    }
}

/// Runs a cleanup step on a runtime of its own, bounded by `CLEANUP_DEADLINE`; `None` if it
/// timed out or no runtime could be built. Never panics: it runs in `Drop`.
fn block_on_bounded<T>(step: impl std::future::Future<Output = T>) -> Option<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async { tokio::time::timeout(CLEANUP_DEADLINE, step).await.ok() })
}
