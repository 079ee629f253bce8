//! `ordersvc serve`: wires the threads together and runs them until SIGINT or SIGTERM.
//!
//! Threads: the tokio runtime's single worker ("ingest": the ingest loop and the health monitor),
//! the cache writer, and the HTTP workers. Start-up order: migrations, HTTP (answering 503 for
//! orders until the cache is restored), cache restore, ready, ingest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use color_eyre::eyre::{eyre, Result, WrapErr};
use futures::StreamExt;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::bus;
use crate::cache::{self, Cache};
use crate::config::{self, DbArgs, NatsArgs, DEFAULT_DURABLE, DEFAULT_HTTP_ADDR};
use crate::health::Health;
use crate::http::{AppState, HttpServer, Limits};
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::order::OrderUid;
use crate::store::Store;

/// Restored orders are handed to the cache in chunks of this many.
const RESTORE_CHUNK: usize = 10_000;
/// Longest wait for each step of a shutdown that depends on PostgreSQL or NATS.
const STOP_WAIT: Duration = Duration::from_secs(2);
/// Batches waiting for the cache writer before ingest waits for it.
const CACHE_QUEUE: usize = 64;

/// Settings of `ordersvc serve`.
#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    /// Where PostgreSQL is.
    #[command(flatten)]
    pub db: DbArgs,
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
    #[arg(long, env = "ORDERSVC_HTTP_TIMEOUT", default_value = "10", value_parser = config::parse_duration)]
    pub http_timeout: Duration,
    /// Most messages written to PostgreSQL in one transaction (a batch also holds at most 16 MiB
    /// of payload).
    #[arg(long, env = "ORDERSVC_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub batch_size: u16,
    /// Keep at most this many bytes of order documents in memory (e.g. 512MiB); orders beyond it
    /// are read from PostgreSQL on demand. Default: no bound, every order in memory.
    #[arg(long, env = "ORDERSVC_CACHE_MAX_BYTES", value_parser = cache::parse_size)]
    pub cache_max_bytes: Option<u64>,
}

/// Runs the service.
pub fn run(args: ServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ingest")
        .enable_all()
        .build()
        .wrap_err("cannot start the async runtime")?;

    let (store, client) = runtime.block_on(async {
        let store = Store::open(&args.db.database_url).await?;
        let client = bus::connect(&args.nats.nats_url, "ordersvc serve").await?;
        Ok::<_, color_eyre::Report>((store, client))
    })?;

    let cache = Arc::new(Cache::new(args.cache_max_bytes));
    let health = Arc::new(Health::new());
    let metrics = Arc::new(Metrics::new(&cache));
    let (cache_tx, cache_rx) = crossbeam_channel::bounded(CACHE_QUEUE);
    let writer = cache::spawn_writer(cache.clone(), cache_rx)?;

    let state = Arc::new(AppState {
        cache: cache.clone(),
        health: health.clone(),
        store: store.clone(),
        runtime: runtime.handle().clone(),
        metrics: metrics.clone(),
    });
    let limits = Limits {
        max_connections: args.http_max_connections,
        timeout: args.http_timeout,
    };
    let http = HttpServer::start(
        args.http_addr,
        usize::from(args.http_workers),
        limits,
        state,
    )?;
    info!(addr = %http.local_addr(), "listening on http://{}", http.local_addr());

    let (stop_tx, stop_rx) = watch::channel(false);
    // The JetStream context spawns a task, so it must be made inside the runtime.
    let _in_runtime = runtime.enter();
    let ingest = Ingest {
        js: async_nats::jetstream::new(client.clone()),
        nats: args.nats.clone(),
        durable: args.durable.clone(),
        batch_size: usize::from(args.batch_size),
        store: store.clone(),
        cache_tx: cache_tx.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
    };
    let result = runtime.block_on(async {
        let signals = tokio::spawn(wait_for_signal(stop_tx));
        restore(&store, &cache, &metrics).await?;
        drop(cache_tx);
        tokio::spawn(monitor(
            store.clone(),
            client.clone(),
            health.clone(),
            stop_rx.clone(),
        ));
        // On the runtime's worker thread, not on this one: that is the ingest thread.
        let totals = tokio::spawn(ingest.run(stop_rx))
            .await
            .map_err(|e| eyre!("the ingest task failed: {e}"))??;
        info!(
            received = totals.received,
            stored = totals.stored,
            duplicates = totals.duplicates,
            rejected = totals.rejected,
            "ingest stopped"
        );
        // Acks are buffered by the client: send them before the connection goes away (but do
        // not wait on a NATS that is gone: unsent acks only mean redeliveries).
        match tokio::time::timeout(STOP_WAIT, client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not flush the last acks; those messages will be redelivered"),
            Err(_) => warn!("NATS did not take the last acks in time; those messages will be redelivered"),
        }
        signals.abort();
        Ok::<_, color_eyre::Report>(())
    });

    http.shutdown();
    let _ = writer.join();
    // A connection whose statement was abandoned at shutdown (stuck on a lock, say) would keep
    // close() waiting for PostgreSQL; exiting closes it anyway, and PostgreSQL rolls it back.
    let closed = runtime.block_on(async { tokio::time::timeout(STOP_WAIT, store.close()).await });
    if closed.is_err() {
        warn!("PostgreSQL connections did not close in time; exiting anyway");
    }
    runtime.shutdown_timeout(STOP_WAIT);
    result
}

/// Loads stored orders into the cache, streamed, then marks the cache restored. With a byte
/// bound, the newest orders are loaded until the bound is reached; the rest is read on demand.
async fn restore(store: &Store, cache: &Cache, metrics: &Metrics) -> Result<()> {
    let started = Instant::now();
    let total = store
        .count_orders()
        .await
        .wrap_err("cannot count stored orders")?;
    info!(
        orders = total,
        max_bytes = cache.max_bytes(),
        "restoring the cache from PostgreSQL"
    );
    let mut rows = match cache.max_bytes() {
        None => store.documents(),
        Some(_) => store.documents_newest_first(),
    };
    let mut chunk = Vec::with_capacity(RESTORE_CHUNK);
    let mut loaded = 0u64;
    // Counted here, not read from the cache: the cache evicts to stay within its bound, so its
    // own byte count never says "full".
    let mut loaded_bytes = 0u64;
    let mut last_log = Instant::now();
    let mut stopped_early = false;
    while let Some(row) = rows.next().await {
        let (uid, document) = row.wrap_err("cannot read stored orders")?;
        match OrderUid::parse(&uid) {
            Ok(uid) => {
                loaded_bytes += document.len() as u64;
                chunk.push((uid, document));
            }
            // The table's CHECK constraint makes this impossible; skip rather than refuse to start.
            Err(e) => warn!(error = %e, "skipping a stored order with an invalid id"),
        }
        if chunk.len() == RESTORE_CHUNK {
            loaded += chunk.len() as u64;
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(RESTORE_CHUNK));
            // Nothing else runs on the runtime yet; inserting here keeps at most one chunk in flight.
            tokio::task::block_in_place(|| cache.insert_batch(full));
            metrics
                .restored_orders
                .set(i64::try_from(loaded).unwrap_or(i64::MAX));
            if last_log.elapsed() > Duration::from_secs(2) {
                info!(loaded, total, "restoring the cache");
                last_log = Instant::now();
            }
            if cache.max_bytes().is_some_and(|max| loaded_bytes >= max) {
                stopped_early = true;
                break;
            }
        }
    }
    drop(rows);
    loaded += chunk.len() as u64;
    tokio::task::block_in_place(|| cache.insert_batch(chunk));
    metrics
        .restored_orders
        .set(i64::try_from(loaded).unwrap_or(i64::MAX));
    if stopped_early || (cache.len() as u64) < loaded {
        cache.mark_incomplete();
    }
    cache.mark_restored();
    info!(
        orders = cache.len(),
        bytes = cache.bytes(),
        complete = cache.is_complete(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "cache restored; ready"
    );
    Ok(())
}

/// Keeps `/readyz` honest while ingest is idle: checks PostgreSQL and the NATS connection every second.
async fn monitor(
    store: Store,
    client: async_nats::Client,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
            Ok(Ok(())) => health.set_db(None),
            Ok(Err(e)) => health.set_db(Some(e.to_string())),
            Err(_) => health.set_db(Some("no answer within 2 s".into())),
        }
        match client.connection_state() {
            async_nats::connection::State::Connected => health.set_nats(None),
            other => health.set_nats(Some(format!("connection {other}"))),
        }
    }
}

/// Turns the first SIGINT or SIGTERM into a stop request.
async fn wait_for_signal(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            warn!("cannot install signal handlers; stop the service with SIGKILL");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: finishing the batch in flight, then stopping"),
        _ = int.recv() => info!("SIGINT: finishing the batch in flight, then stopping"),
    }
    let _ = stop.send(true);
}
