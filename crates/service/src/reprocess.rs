//! `ordersvc rejected reprocess`: recorded rejections sent through today's rules again.
//!
//! Each selected message's raw payload goes through the path a message that has just arrived
//! takes: `Order::parse_within` with the NATS server's limit, then `Store::write` (idempotent on
//! order_uid, conflicting duplicates and erased orders refused, a message PostgreSQL refuses on
//! its own isolated), then the changelog, so that every replica serves what was stored. Instead
//! of a new rejection row, each message's outcome is written on its own row, in the
//! transaction that stores its order; the row is otherwise kept as recorded.
//!
//! Running it twice stores nothing twice: a row stored or found duplicate by a run that
//! finished is not selected again. A row refused again is: the rules may change again.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use clap::{Args, Subcommand};
use color_eyre::eyre::{bail, Result, WrapErr};
use indicatif::{ProgressBar, ProgressStyle};
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::batch::{Incoming, Outcome, Written};
use crate::bus;
use crate::changelog::Changelog;
use crate::config::{parse_date_time, ServiceArgs};
use crate::order::{Order, OrderUid};
use crate::retry::Backoff;
use crate::store::reprocess::{Candidate, Selection};
use crate::store::{Record, Store};

/// Rows per transaction.
const BATCH: i64 = 500;
/// Tries of a batch's write or fan-out before the run gives up on it.
const ATTEMPTS: u32 = 5;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// `ordersvc rejected`: the rejected messages.
#[derive(Args, Clone, Debug)]
pub struct RejectedArgs {
    #[command(subcommand)]
    pub command: RejectedCommand,
}

/// What to do with rejected messages.
#[derive(Subcommand, Clone, Debug)]
pub enum RejectedCommand {
    /// Send recorded rejections through today's validation and store path again, and mark each
    /// with its outcome (the admin listener's /rejected shows it).
    Reprocess(ReprocessArgs),
}

/// Settings of `ordersvc rejected reprocess`.
#[derive(Args, Clone, Debug)]
pub struct ReprocessArgs {
    /// Only rejections of this kind (e.g. store_error, too_large); may be given several times.
    #[arg(long = "kind", value_name = "KIND")]
    pub kinds: Vec<String>,
    /// Only the rejection with this id (/rejected's `id`); may be given several times.
    #[arg(long = "id", value_name = "N")]
    pub ids: Vec<i64>,
    /// Only rejections recorded at or after this RFC 3339 date-time.
    #[arg(long, value_parser = parse_date_time)]
    pub since: Option<OffsetDateTime>,
    /// Say what would happen to each; store and mark nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The service to reprocess for: NATS's max payload is a rule, and its changelog takes
    /// what is stored.
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// Runs `ordersvc rejected …`.
pub fn run(args: RejectedArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .wrap_err("cannot start the async runtime")?;
    match args.command {
        RejectedCommand::Reprocess(args) => runtime.block_on(reprocess(&args)),
    }
}

/// Counts by outcome.
#[derive(Debug, Default)]
struct Tally {
    stored: u64,
    duplicate: u64,
    /// Refused again, by kind.
    refused: BTreeMap<&'static str, u64>,
    /// Could not be processed (PostgreSQL or NATS failed).
    failed: u64,
    /// Selected, and left untried after a failure.
    not_reached: u64,
}

impl Tally {
    fn add(&mut self, outcomes: &[Outcome]) {
        for outcome in outcomes {
            match outcome {
                Outcome::Stored => self.stored += 1,
                Outcome::Duplicate => self.duplicate += 1,
                Outcome::Rejected(kind) => *self.refused.entry(kind).or_default() += 1,
            }
        }
    }

    /// One line per outcome, all four always, `would be …` in a dry run.
    fn print(&self, dry_run: bool) {
        let would = match dry_run {
            true => {
                println!("dry run: nothing was stored or marked; each batch of {BATCH} was tried on its own");
                "would be "
            }
            false => "",
        };
        let refused: u64 = self.refused.values().sum();
        let kinds: Vec<String> = self
            .refused
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        println!("{would}stored: {}", self.stored);
        println!("{would}duplicate: {}", self.duplicate);
        println!("{would}refused: {refused}");
        if !kinds.is_empty() {
            println!("  by kind: {}", kinds.join(", "));
        }
        println!("{would}failed: {}", self.failed);
        if self.not_reached > 0 {
            println!("not reached after the failure: {}", self.not_reached);
        }
    }
}

async fn reprocess(args: &ReprocessArgs) -> Result<()> {
    let store = Store::connect(&args.service.db.database_url).await?;
    store.migrate().await?;
    let selection = Selection {
        kinds: args.kinds.clone(),
        ids: args.ids.clone(),
        since: args.since,
    };
    let unprocessable = match args.ids.is_empty() {
        true => Vec::new(),
        false => store
            .unprocessable_ids(&args.ids)
            .await
            .wrap_err("cannot look the --id rows up")?,
    };
    let total = store
        .count_reprocess_candidates(&selection)
        .await
        .wrap_err("cannot count the rejected messages to reprocess")?;
    let client = bus::connect(&args.service.nats, "ordersvc-reprocess").await?;
    let max_document = bus::max_document(client.server_info().max_payload);
    let changelog = Changelog::new(
        jetstream::new(client),
        &args.service.nats,
        &args.service.durable,
    );
    let followed = changelog
        .exists()
        .await
        .wrap_err("cannot look the changelog up")?;
    let run = Run {
        store: &store,
        changelog: followed.then_some(&changelog),
        stream: &args.service.nats.stream,
        max_document,
        dry_run: args.dry_run,
    };
    let progress = progress_bar(u64::try_from(total).unwrap_or(0));
    let mut tally = Tally::default();
    let mut after = 0;
    let ended = loop {
        let rows = match store.reprocess_candidates(&selection, after, BATCH).await {
            Ok(rows) if rows.is_empty() => break Ok(()),
            Ok(rows) => rows,
            Err(e) => break Err(e).wrap_err("cannot read the rejected messages"),
        };
        after = rows.last().map_or(after, |row| row.id);
        let n = rows.len() as u64;
        let (outcomes, failed) = run.batch(rows).await;
        tally.add(&outcomes);
        if let Some(failed) = failed {
            tally.failed += failed.rows;
            tally.not_reached = u64::try_from(total)
                .unwrap_or(0)
                .saturating_sub(progress.position() + n);
            break Err(failed.error);
        }
        progress.inc(n);
    };
    progress.finish_and_clear();
    store.close().await;
    tally.print(args.dry_run);
    ended?;
    if !unprocessable.is_empty() {
        bail!(
            "no rejected message with a payload has the id(s) {unprocessable:?} (none, or erased)"
        );
    }
    Ok(())
}

/// What every batch of a run uses.
struct Run<'a> {
    store: &'a Store,
    /// None when there is no changelog: no replica has run, none needs the orders.
    changelog: Option<&'a Changelog>,
    stream: &'a str,
    max_document: usize,
    dry_run: bool,
}

impl Run<'_> {
    /// Reprocesses one batch of rows: writes (with their outcomes), then fans out what is
    /// stored and marks those rows done. The outcomes of the rows that are done, in the order of
    /// the rows, and what failed, if anything did.
    async fn batch(&self, rows: Vec<Candidate>) -> (Vec<Outcome>, Option<Failed>) {
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        let incoming: Vec<Incoming> = rows
            .into_iter()
            .map(|row| {
                let parsed = Order::parse_within(&row.payload, self.max_document);
                Incoming {
                    seq: u64::try_from(row.stream_seq).unwrap_or(0),
                    subject: row.subject,
                    raw: Bytes::from(row.payload),
                    parsed,
                }
            })
            .collect();
        let record = match self.dry_run {
            true => Record::DryRun(&ids),
            false => Record::Outcomes(&ids),
        };
        let written = match self.write(&incoming, record).await {
            Ok(written) => written,
            Err(error) => {
                let rows = ids.len() as u64;
                return (Vec::new(), Some(Failed { rows, error }));
            }
        };
        if self.dry_run {
            return (written.outcomes, None);
        }
        // Refused ones are done with their commit; the others once on the changelog.
        let (refused, others): (Vec<_>, Vec<_>) = ids
            .iter()
            .zip(written.outcomes)
            .partition(|(_, outcome)| matches!(outcome, Outcome::Rejected(_)));
        let refused: Vec<Outcome> = refused.into_iter().map(|(_, outcome)| outcome).collect();
        let done = match self.fan_out(&written.to_cache).await {
            Ok(()) => {
                let done: Vec<i64> = others.iter().map(|(&id, _)| id).collect();
                self.store.reprocessed(&done).await.wrap_err(
                    "the orders are stored and fanned out, but their rows could not be marked \
                     done; run the same command again",
                )
            }
            Err(e) => Err(e),
        };
        if let Err(error) = done {
            let rows = others.len() as u64;
            return (refused, Some(Failed { rows, error }));
        }
        for (id, outcome) in &others {
            info!(rejected_id = id, ?outcome, "reprocessed a rejected message");
        }
        let mut outcomes = refused;
        outcomes.extend(others.into_iter().map(|(_, outcome)| outcome));
        (outcomes, None)
    }

    /// `Store::write`, retried a few times while PostgreSQL is unavailable. After a first
    /// refusal, any refusal that is not about the server is looked for message by message, as
    /// ingest does after several (a run by hand has fewer tries to spend).
    async fn write(&self, incoming: &[Incoming], record: Record<'_>) -> Result<Written> {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let isolate = attempt > 1;
            match self
                .store
                .write(self.stream, incoming, record, isolate)
                .await
            {
                Ok(written) => return Ok(written),
                Err(e) if attempt < ATTEMPTS => {
                    warn!(error = %e, "cannot write a batch; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e).wrap_err("cannot write a batch to PostgreSQL"),
            }
        }
    }

    /// Publishes the stored orders to the changelog, retried a few times. Until it succeeds,
    /// their rows are not marked done, so a run after a failure publishes them again.
    async fn fan_out(&self, orders: &[(OrderUid, String)]) -> Result<()> {
        let Some(changelog) = self.changelog.filter(|_| !orders.is_empty()) else {
            return Ok(());
        };
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match changelog.publish(orders).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < ATTEMPTS => {
                    warn!(error = %format!("{e:#}"), "cannot publish to the changelog; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => {
                    return Err(e.wrap_err(
                        "the orders are stored, but not on the changelog: replicas answer them \
                         from PostgreSQL until they restart; run the same command again",
                    ))
                }
            }
        }
    }
}

/// A batch that could not be finished: how many of its rows, and why.
struct Failed {
    rows: u64,
    error: color_eyre::Report,
}

/// A progress bar for `total` rows (drawn only on a terminal).
fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rejected messages, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
