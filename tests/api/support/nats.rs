//! NATS for the tests: where the shared server is, a test's own stream on it (`SharedStream`) and
//! the test's own client of it (`StreamClient`), a publisher to a test's subject, and
//! nats-servers of a test's own (`OwnNats`) that demand a password or a token, over TLS or not.
//!
//! A server of the test's own lives under a temporary directory of its own; dropping it (also
//! while a test panics) stops the process and removes the directory.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use ordersvc_client::publisher::{Outcome, Pipeline};

use super::certs::Certs;
use super::isolation::{
    block_on_bounded, free_port, random_secret, random_suffix, write, Names, TempDir,
};
use super::own_server::{stop, POLL, START_DEADLINE};
use super::urls::server_addr;

/// The NATS server unless `ORDERSVC_TEST_NATS_URL` says otherwise.
const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Publish acks awaited at once by `publish_many`.
const PUBLISH_WINDOW: usize = 256;

/// The shared NATS server's URL (`ORDERSVC_TEST_NATS_URL` or the default).
pub fn base_nats_url() -> String {
    std::env::var("ORDERSVC_TEST_NATS_URL").unwrap_or_else(|_| DEFAULT_NATS_URL.to_owned())
}

/// The NATS server the tests use (`ORDERSVC_TEST_NATS_URL` or the default).
pub fn nats_addr() -> SocketAddr {
    server_addr(&base_nats_url(), 4222)
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

    /// Stops the server (SIGTERM, then SIGKILL if it lingers): NATS is down until `run` starts
    /// it again, on the same port, configuration and JetStream store.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("nats-server is not running");
        stop(&mut child, libc::SIGTERM);
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

/// The test's own connection to its stream on the shared NATS server, for a service on servers
/// of the test's own (which has no `World` to publish and look with): a publisher to the
/// stream's subject, and what the server says of the durable consumer.
pub struct StreamClient {
    js: jetstream::Context,
    names: Names,
    /// Last, so that it is dropped after everything that runs on it.
    rt: tokio::runtime::Runtime,
}

impl StreamClient {
    /// Connects to `nats_url` for the stream, subject and durable consumer of `names`.
    pub fn connect(names: &Names, nats_url: &str) -> StreamClient {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("cannot build the stream client's runtime");
        let js = rt.block_on(async {
            let client = async_nats::connect(nats_url)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to NATS at {nats_url}: {e}"));
            jetstream::new(client)
        });
        StreamClient {
            js,
            names: names.clone(),
            rt,
        }
    }

    /// A publisher to the subject, usable from any thread while this lives.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            js: self.js.clone(),
            subject: self.names.subject.clone(),
            rt: self.rt.handle().clone(),
        }
    }

    /// The durable consumer's state as the server reports it (an error until the service has
    /// made the stream and the consumer).
    pub fn consumer_info(&self) -> Result<jetstream::consumer::Info, String> {
        self.rt.block_on(async {
            let stream = self
                .js
                .get_stream(&self.names.stream)
                .await
                .map_err(|e| e.to_string())?;
            stream
                .consumer_info(&self.names.durable)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Publishes to a test's subject; made by `TestApp::publisher`.
#[derive(Clone)]
pub struct Publisher {
    pub(super) js: jetstream::Context,
    pub(super) subject: String,
    pub(super) rt: tokio::runtime::Handle,
}

impl Publisher {
    /// Publishes every message in order, each with `Nats-Msg-Id` when it has an id, with up to
    /// `PUBLISH_WINDOW` acks awaited at once (the service's own pipeline, as `ordersvc publish`
    /// uses); returns the stream sequences in the same order (a repeat the server dropped within
    /// its duplicate window gets the original's sequence).
    pub fn publish_many<'m>(
        &self,
        messages: impl IntoIterator<Item = (Option<&'m str>, &'m [u8])>,
    ) -> Vec<u64> {
        self.rt.block_on(async {
            let mut sequences = Vec::new();
            let on_outcome = |outcome: Outcome<()>| {
                let ack = outcome.result.unwrap_or_else(|failure| {
                    panic!("message {} was not published: {failure}", outcome.index)
                });
                let at = usize::try_from(outcome.index).expect("an index fits in usize");
                if sequences.len() <= at {
                    sequences.resize(at + 1, 0);
                }
                sequences[at] = ack.sequence;
            };
            let mut pipeline =
                Pipeline::new(self.js.clone(), &self.subject, PUBLISH_WINDOW, on_outcome);
            for (msg_id, payload) in messages {
                pipeline.send((), payload.to_vec().into(), msg_id).await;
            }
            pipeline.finish().await;
            sequences
        })
    }
}
