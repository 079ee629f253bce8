//! What keeps tests that run at the same time apart: random names and secrets, free loopback
//! ports, temporary directories, and a bounded runner for cleanup steps that must never hang a
//! test's `Drop`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ordersvc_client::child::ServeSettings;

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
    closed_port()
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

/// A TCP port on 127.0.0.1 that nothing listens on (it was free a moment ago): connecting to it
/// is refused at once.
pub fn closed_port() -> u16 {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind a port on 127.0.0.1");
    listener.local_addr().expect("a bound address").port()
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

/// Writes a file of the test's own; panics naming it if it cannot.
pub fn write(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
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

    /// `--nats-url URL --stream S --subject J`: where a command finds this test's stream.
    pub fn stream_flags<'a>(&'a self, nats_url: &'a str) -> Vec<&'a str> {
        vec![
            "--nats-url",
            nats_url,
            "--stream",
            &self.stream,
            "--subject",
            &self.subject,
        ]
    }

    /// `stream_flags`, then `--durable D`: where a command finds this test's consumer too.
    pub fn consumer_flags<'a>(&'a self, nats_url: &'a str) -> Vec<&'a str> {
        let mut flags = self.stream_flags(nats_url);
        flags.extend(["--durable", &self.durable]);
        flags
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

/// How long a cleanup step on a shared server may take.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(30);

/// Runs a cleanup step on a runtime of its own, bounded by `CLEANUP_DEADLINE`; `None` if it
/// timed out or no runtime could be built. Never panics: it runs in `Drop`.
pub fn block_on_bounded<T>(step: impl std::future::Future<Output = T>) -> Option<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async { tokio::time::timeout(CLEANUP_DEADLINE, step).await.ok() })
}
