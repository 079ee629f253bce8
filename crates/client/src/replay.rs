//! `ordersvc replay-from-db`: streams every stored order out of PostgreSQL, in creation order,
//! and republishes it to the stream. For rebuilding a lost stream or seeding a new environment;
//! `--dry-run` instead re-validates every stored document without publishing.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use clap::Args;
use color_eyre::eyre::{bail, Result, WrapErr};
use futures::StreamExt;
use time::OffsetDateTime;

use crate::publisher::{self, Outcome, Pipeline, RetryArgs, Watermark};
use ordersvc_service::bus;
use ordersvc_service::config::{parse_date_time, DbArgs, NatsArgs};
use ordersvc_service::order::Order;
use ordersvc_service::store::Store;

/// A progress bar is shown from this many orders on.
const PROGRESS_FROM: u64 = 100;

/// Settings of `ordersvc replay-from-db`.
#[derive(Args, Clone, Debug)]
pub struct ReplayArgs {
    /// Where PostgreSQL is.
    #[command(flatten)]
    pub db: DbArgs,
    /// Where the stream is.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Only orders created at or after this RFC 3339 date-time (e.g. 2021-11-26T00:00:00Z).
    #[arg(long, value_parser = parse_date_time)]
    pub since: Option<OffsetDateTime>,
    /// Resume after this order_uid (the last one a previous, interrupted run reported).
    #[arg(long, value_name = "ORDER_UID")]
    pub after: Option<String>,
    /// Read and re-validate every stored document; publish nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Publish acks awaited at once (the pipelining window).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub in_flight: u32,
    /// How long each order may be retried.
    #[command(flatten)]
    pub retry: RetryArgs,
}

/// Time spent in each part of a run, to tell which one is the bottleneck.
#[derive(Debug, Default)]
struct Timing {
    reading: Duration,
    validating: Duration,
    publishing: Duration,
}

impl Timing {
    fn slowest(&self) -> &'static str {
        let parts = [
            (self.reading, "reading from PostgreSQL"),
            (self.validating, "validating"),
            (self.publishing, "publishing"),
        ];
        parts
            .iter()
            .max_by_key(|p| p.0)
            .map_or("reading from PostgreSQL", |p| p.1)
    }
}

/// Runs the replay (or the dry run) and prints a summary.
pub fn run(args: ReplayArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .wrap_err("cannot start the async runtime")?;
    runtime.block_on(replay(args))
}

async fn replay(args: ReplayArgs) -> Result<()> {
    // Only reading: a database that does not exist is an error, never created (nor migrated).
    let store = Store::connect(&args.db.database_url).await?;
    let after = args.after.as_deref();
    if let Some(uid) = after {
        if !store
            .contains(uid)
            .await
            .wrap_err("cannot look the --after order up")?
        {
            bail!("--after {uid:?}: no such order is stored");
        }
    }
    let total = store
        .count_in_order(args.since, after)
        .await
        .wrap_err("cannot count the orders to replay")?;
    let progress = publisher::progress_bar(u64::try_from(total).unwrap_or(0), PROGRESS_FROM);
    // The last order of the longest acknowledged run from the start: where to resume.
    let mut resume: Watermark<String> = Watermark::default();
    let on_outcome = |outcome: Outcome<String>| match &outcome.result {
        Ok(_) => resume.acknowledged(outcome.index, outcome.tag),
        Err(failure) => {
            progress.suspend(|| eprintln!("{}: {failure}", outcome.tag));
            resume.failed(outcome.index);
        }
    };
    let mut pipeline = if args.dry_run {
        None
    } else {
        let client = bus::connect(&args.nats, "ordersvc replay-from-db").await?;
        let js = jetstream::new(client);
        let stream = bus::ensure_stream_within(&js, &args.nats, args.retry.publish_timeout).await?;
        let last_sequence = stream.cached_info().state.last_sequence;
        Some(
            Pipeline::new(js, &args.nats.subject, args.in_flight as usize, on_outcome)
                .with_progress(progress.clone())
                .with_publish_timeout(args.retry.publish_timeout)
                .with_last_sequence_before(last_sequence),
        )
    };

    let started = Instant::now();
    let mut timing = Timing::default();
    let (mut orders, mut bytes, mut invalid) = (0u64, 0u64, 0u64);
    let mut rows = store.documents_in_order(args.since, after);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut was_interrupted = false;
    loop {
        let t = Instant::now();
        let row = tokio::select! {
            row = rows.next() => row,
            _ = &mut interrupted => {
                // Stop reading, but let what was sent be acknowledged, and say where to resume.
                was_interrupted = true;
                None
            }
        };
        let Some(row) = row else { break };
        timing.reading += t.elapsed();
        let (uid, document) = row.wrap_err("cannot read stored orders")?;
        orders += 1;
        bytes += document.len() as u64;

        let t = Instant::now();
        // Within the bus's limit too: ingest would refuse a larger document as too_large.
        if let Err(rejection) = Order::parse_within(document.as_bytes(), bus::MAX_DOCUMENT) {
            invalid += 1;
            progress.suspend(|| eprintln!("{uid}: stored document no longer valid: {rejection}"));
        }
        timing.validating += t.elapsed();

        match pipeline.as_mut() {
            None => progress.inc(1),
            Some(pipeline) => {
                let t = Instant::now();
                let payload = Bytes::from(document);
                pipeline.send(uid.clone(), payload, Some(&uid)).await;
                timing.publishing += t.elapsed();
            }
        }
    }
    drop(rows);

    let summary = match pipeline {
        Some(pipeline) => {
            let t = Instant::now();
            let summary = pipeline.finish().await;
            timing.publishing += t.elapsed();
            Some(summary)
        }
        None => None,
    };
    progress.finish_and_clear();
    store.close().await;
    let elapsed = started.elapsed();
    let rate = orders as f64 / elapsed.as_secs_f64().max(f64::EPSILON);

    println!(
        "read {orders} orders ({bytes} bytes) in {:.2} s ({rate:.0} orders/s); {invalid} no longer valid; slowest part: {}",
        elapsed.as_secs_f64(),
        timing.slowest()
    );
    println!(
        "time reading {:.2} s, validating {:.2} s, publishing {:.2} s",
        timing.reading.as_secs_f64(),
        timing.validating.as_secs_f64(),
        timing.publishing.as_secs_f64()
    );
    if let Some(summary) = summary {
        println!("{summary}");
        if summary.failed > 0 || was_interrupted {
            match resume.last() {
                Some(uid) => {
                    eprintln!("every order up to {uid} was acknowledged: resume with --after {uid}")
                }
                None => eprintln!("no order was acknowledged: run again with the same arguments"),
            }
        }
        if summary.failed > 0 {
            bail!("{} order(s) could not be published", summary.failed);
        }
    }
    if was_interrupted {
        bail!("interrupted");
    }
    if invalid > 0 && args.dry_run {
        bail!("{invalid} stored document(s) no longer pass validation");
    }
    Ok(())
}
