//! `ordersvc serve`: the service as one value, `App`: built from its settings, asked for its
//! address, and run until a shutdown future resolves; it reads build → restore → run → stop.
//!
//! Threads: the ingest runtime's single worker ("ingest": the ingest loop and the health
//! monitor), the cache writer, and the HTTP runtime's workers. HTTP answers from the start
//! (503 for orders until the cache is restored), so that `/readyz` can say what it waits for.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use color_eyre::eyre::{eyre, Result, WrapErr};
use tracing::{info, warn};

use crate::bus;
use crate::cache::{self, CacheWriter, WriterThread};
use crate::changelog::{Changelog, FollowHealth, Follower};
use crate::config::{
    self, DbArgs, NatsArgs, ReadArgs, DEFAULT_ADMIN_ADDR, DEFAULT_DURABLE, DEFAULT_HTTP_ADDR,
};
use crate::health::{self, Health};
use crate::http::{self as web, AppState, Endpoint, HttpServer, Limits, Token};
use crate::ingest::{Ingest, IngestHealth};
use crate::lag::LagPoller;
use crate::metrics::Metrics;
use crate::shutdown::{self, Shutdown, StopBudget, Trigger};
use crate::store::Store;

/// Settings of `ordersvc serve`.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Where PostgreSQL is.
    #[command(flatten)]
    pub db: DbArgs,
    /// Where the restore and the listings read.
    #[command(flatten)]
    pub reads: ReadArgs,
    /// Where the stream is.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Durable consumer name: restarts resume where this consumer left off.
    #[arg(long, env = "ORDERSVC_DURABLE", default_value = DEFAULT_DURABLE)]
    pub durable: String,
    /// HTTP listen address (port 0 picks a free port; the chosen address is logged).
    #[arg(long, env = "ORDERSVC_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// HTTP worker threads answering requests from the cache. On 2 cores, more is not faster.
    #[arg(long, env = "ORDERSVC_HTTP_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub http_workers: u16,
    /// Most HTTP connections open at once; one more is answered 503 and closed.
    #[arg(long, env = "ORDERSVC_HTTP_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub http_max_connections: u32,
    /// How long a client has to send a request head, and that a connection may stay idle or
    /// stalled (moving no bytes) before it is closed: e.g. 10s, 500ms, 2m (a bare number is seconds).
    #[arg(long, env = "ORDERSVC_HTTP_TIMEOUT", default_value = "10s", value_parser = config::parse_duration)]
    pub http_timeout: Duration,
    /// Admin listen address: `/metrics`, `/rejected`, `/healthz`, `/readyz` (port 0 picks a free
    /// port; the chosen address is logged). An address other than loopback needs --admin-token.
    #[arg(long, env = "ORDERSVC_ADMIN_ADDR", default_value = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    /// When set, `/metrics` and `/rejected` answer only requests with
    /// `Authorization: Bearer <token>` (401 otherwise).
    #[arg(long, env = "ORDERSVC_ADMIN_TOKEN", hide_env_values = true, value_parser = Token::new)]
    pub admin_token: Option<Token>,
    /// Most connections open at once on the admin listener, apart from the public ones.
    #[arg(long, env = "ORDERSVC_ADMIN_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub admin_max_connections: u32,
    /// Most messages written to PostgreSQL in one transaction (a batch also holds at most 16 MiB
    /// of payload).
    #[arg(long, env = "ORDERSVC_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub batch_size: u16,
    /// Keep at most this many bytes of order documents in memory (e.g. 512MiB); orders beyond it
    /// are read from PostgreSQL on demand. Default: no bound, every order in memory.
    #[arg(long, env = "ORDERSVC_CACHE_MAX_BYTES", value_parser = cache::parse_size)]
    pub cache_max_bytes: Option<u64>,
    /// The whole stop budget after SIGTERM or SIGINT: finishing the batch in flight, sending
    /// its acks, answering the HTTP requests in flight and closing connections all fit in it
    /// (docs/OPERATIONS.md says how it is shared). Set a supervisor's kill timeout above it.
    #[arg(long, env = "ORDERSVC_SHUTDOWN_TIMEOUT", default_value = "15s", value_parser = config::parse_duration)]
    pub shutdown_timeout: Duration,
}

impl ServeArgs {
    /// The public listener and the admin one, with their limits.
    fn endpoints(&self) -> (Endpoint, Endpoint) {
        let public = Endpoint {
            addr: self.http_addr,
            limits: Limits {
                max_connections: self.http_max_connections,
                timeout: self.http_timeout,
            },
        };
        let admin = Endpoint {
            addr: self.admin_addr,
            limits: Limits {
                max_connections: self.admin_max_connections,
                timeout: self.http_timeout,
            },
        };
        (public, admin)
    }

    /// `--database-read-url` when it names another server than `--database-url`.
    fn read_url(&self) -> Option<&str> {
        self.reads
            .database_read_url
            .as_deref()
            .filter(|url| *url != self.db.database_url)
    }
}

/// Runs the service until SIGTERM or SIGINT.
pub fn run(settings: ServeArgs) -> Result<()> {
    let app = App::build(settings)?;
    info!(addr = %app.local_addr(), "listening on http://{}", app.local_addr());
    info!(addr = %app.admin_addr(), "admin listening on http://{}", app.admin_addr());
    announce(&app);
    app.run_until_stopped(signalled())
}

/// Prints the one line `serve` writes on standard output: the addresses bound, as JSON
/// (`{"http_addr":"…","admin_addr":"…"}`). A supervisor or a test that starts the service on
/// port 0 reads it instead of the log, whose wording and format are not a contract. A closed
/// standard output only loses the line; the service runs on.
fn announce(app: &App) {
    use std::io::Write;
    let line = serde_json::json!({
        "http_addr": app.local_addr().to_string(),
        "admin_addr": app.admin_addr().to_string(),
    });
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        warn!(error = %e, "cannot print the bound addresses on standard output");
    }
}

/// The service, built and serving HTTP, not yet restored or ingesting.
pub struct App {
    settings: ServeArgs,
    /// The ingest runtime: one worker thread for ingest and the monitor; `block_on` runs the
    /// restore on the calling thread.
    runtime: tokio::runtime::Runtime,
    /// Ingest's pool (restore and batches); HTTP has a pool of its own.
    store: Store,
    /// The NATS connection; its buffered acks are flushed at stop.
    client: async_nats::Client,
    /// The one way into the cache: ingest, the follower (and its restores) and HTTP's misses
    /// each get a clone.
    cache: CacheWriter,
    /// The thread behind `cache`, stopped last.
    writer: WriterThread,
    metrics: Arc<Metrics>,
    http: HttpServer,
    /// Ingest's health facts, and the follower's (the monitor already has its own).
    ingest_health: IngestHealth,
    follow_health: FollowHealth,
    trigger: Trigger,
    shutdown: Shutdown,
}

impl App {
    /// Connects to PostgreSQL (creating and migrating the database if needed) and NATS, starts
    /// the cache writer, the health monitor and HTTP.
    pub fn build(settings: ServeArgs) -> Result<App> {
        web::check_exposure(settings.admin_addr, settings.admin_token.as_ref())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ingest")
            .enable_all()
            .build()
            .wrap_err("cannot start the async runtime")?;
        let (store, client) = runtime.block_on(async {
            let store = Store::open(&settings.db.database_url).await?;
            let client = bus::connect(&settings.nats, "ordersvc serve").await?;
            Ok::<_, color_eyre::Report>((store, client))
        })?;

        let (cache, writer) = cache::start(settings.cache_max_bytes)?;
        let (health, reporters) = Health::new();
        let metrics = Arc::new(Metrics::new(cache.cache()));
        let state = AppState {
            cache: cache.clone(),
            health,
            metrics: metrics.clone(),
            admin_token: settings.admin_token.clone(),
        };
        let (public, admin) = settings.endpoints();
        let http = HttpServer::start(
            public,
            admin,
            usize::from(settings.http_workers),
            // After `Store::open`: the HTTP side's own pools expect a migrated database.
            web::Databases {
                primary: &settings.db.database_url,
                reads: settings.read_url(),
            },
            state,
        )?;

        let (trigger, shutdown) = shutdown::channel();
        let nats = client.clone();
        runtime.spawn(health::monitor(
            store.probe(),
            move || match nats.connection_state() {
                async_nats::connection::State::Connected => None,
                other => Some(format!("connection {other}")),
            },
            reporters.database,
            reporters.connection,
            shutdown.clone(),
        ));
        Ok(App {
            settings,
            runtime,
            store,
            client,
            cache,
            writer,
            metrics,
            http,
            ingest_health: IngestHealth {
                commit: reporters.commit,
                subscription: reporters.subscription,
                fanout: reporters.fanout,
            },
            follow_health: FollowHealth {
                follow: reporters.follow,
                catching_up: reporters.catching_up,
            },
            trigger,
            shutdown,
        })
    }

    /// The HTTP address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// The admin listener's address actually bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.http.admin_addr()
    }

    /// Restores the cache, then ingests until `stop` resolves (or ingest fails), then stops
    /// within `--shutdown-timeout`.
    pub fn run_until_stopped(self, stop: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let budget = StopBudget::of(self.settings.shutdown_timeout);
        let shutdown = self.shutdown.clone();
        let trigger = self.trigger;
        // The JetStream context spawns a task, so it must be made inside the runtime.
        let js = {
            let _in_runtime = self.runtime.enter();
            async_nats::jetstream::new(self.client.clone())
        };
        let changelog = Changelog::new(js.clone(), &self.settings.nats, &self.settings.durable);
        let applied = Arc::new(AtomicU64::new(0));
        let lag = LagPoller {
            js: js.clone(),
            stream: self.settings.nats.stream.clone(),
            durable: self.settings.durable.clone(),
            changelog: changelog.name().to_owned(),
            applied: applied.clone(),
            metrics: self.metrics.clone(),
        };
        self.runtime.spawn(lag.run(self.shutdown.clone()));
        let follower = Follower {
            changelog: changelog.clone(),
            applied,
            source: cache::Source {
                primary: self.store.clone(),
                database_url: self.settings.db.database_url.clone(),
                read_url: self.settings.read_url().map(str::to_owned),
                catch_up: self.settings.reads.read_catch_up_timeout,
                connections: self.settings.reads.restore_connections,
            },
            cache: self.cache.clone(),
            restored: self.metrics.restored_orders.clone(),
            health: self.follow_health,
        };
        let ingest = Ingest {
            js,
            nats: self.settings.nats.clone(),
            durable: self.settings.durable.clone(),
            batch_size: usize::from(self.settings.batch_size),
            store: self.store.clone(),
            cache: self.cache,
            changelog,
            health: self.ingest_health,
            grace: budget.batch,
            metrics: self.metrics.clone(),
        };
        let ran = self.runtime.block_on(async {
            let stopping = tokio::spawn(async move {
                stop.await;
                trigger.trigger();
            });
            let ran = restore_then_ingest(follower, ingest, &shutdown).await;
            // Whatever ended the run, the other tasks (the monitor) stop too: the aborted task
            // drops the trigger, which every `Shutdown` takes as a stop request.
            stopping.abort();
            ran
        });
        Stopping {
            runtime: self.runtime,
            client: self.client,
            http: self.http,
            writer: self.writer,
            store: self.store,
        }
        .stop(budget);
        ran
    }
}

/// The service's work between build and stop: the cache restored from PostgreSQL (with the
/// changelog hand-off), then ingest and the changelog follower until a stop is requested (either
/// step ends early on one).
async fn restore_then_ingest(
    follower: Follower,
    ingest: Ingest,
    shutdown: &Shutdown,
) -> Result<()> {
    let Some(next) = follower.restore(shutdown).await else {
        info!("stopped while restoring the cache");
        return Ok(());
    };
    let following = tokio::spawn(follower.run(next, shutdown.clone()));
    // On the runtime's worker thread, not on this one: that is the ingest thread.
    let ingested = tokio::spawn(ingest.run(shutdown.clone())).await;
    // Ingest ended (a stop, or a failure that stops the service): the follower goes too.
    following.abort();
    let totals = ingested.map_err(|e| eyre!("the ingest task failed: {e}"))??;
    info!(
        received = totals.received,
        stored = totals.stored,
        duplicates = totals.duplicates,
        rejected = totals.rejected,
        "ingest stopped"
    );
    Ok(())
}

/// What is left to stop once ingest has ended: each step within its share of the budget.
struct Stopping {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    http: HttpServer,
    writer: WriterThread,
    store: Store,
}

impl Stopping {
    fn stop(self, budget: StopBudget) {
        // Acks are buffered by the client: send them before the connection goes away (but do
        // not wait on a NATS that is gone: unsent acks only mean redeliveries).
        let flushed = self
            .runtime
            .block_on(async { tokio::time::timeout(budget.acks, self.client.flush()).await });
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "could not flush the last acks; those messages will be redelivered")
            }
            Err(_) => {
                warn!("NATS did not take the last acks in time; those messages will be redelivered")
            }
        }
        self.http.shutdown(budget.http);
        // Nothing writes to the cache any more: ingest and the follower have ended, and HTTP too.
        self.writer.stop();
        // A connection whose statement was abandoned (stuck on a lock, say) would keep close()
        // waiting for PostgreSQL; exiting closes it anyway, and PostgreSQL rolls it back.
        let closed = self
            .runtime
            .block_on(async { tokio::time::timeout(budget.database, self.store.close()).await });
        if closed.is_err() {
            warn!("PostgreSQL connections did not close in time; exiting anyway");
        }
        self.runtime.shutdown_timeout(budget.runtime);
    }
}

/// Resolves on the first SIGINT or SIGTERM (never, if the handlers cannot be installed).
async fn signalled() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            warn!("cannot install signal handlers; stop the service with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: finishing the batch in flight, then stopping"),
        _ = int.recv() => info!("SIGINT: finishing the batch in flight, then stopping"),
    }
}
