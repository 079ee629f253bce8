//! `ordersvc bench ingest`: how fast published orders become stored and servable.
//!
//! The publisher (a single-threaded tokio runtime on the calling thread) puts generated orders on
//! the stream with publish acks pipelined, like `ordersvc publish`. Every `--sample-every`-th
//! valid order, and always the last one, is watched: a watcher thread asks `GET /order/{id}` until
//! it answers 200. Two modes:
//! - live: the service is already running; latency runs from each sampled order's publish ack to
//!   its first 200, and the end-to-end rate from the first publish to the last valid order visible;
//! - backlog: everything is published first, then this command starts `ordersvc serve` itself and
//!   times the drain, from the first 200 of `/readyz` to the last valid order visible.
//!
//! The watcher probes the oldest pending samples first and stops a round at the first few that are
//! not visible yet, because the service ingests the stream in order: that keeps its own load on the
//! service small. Its resolution is about one `POLL_PAUSE` plus a request; an order that becomes
//! visible out of order is noticed when those ahead of it are, so latencies can only be overstated.

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use clap::{Args, ValueEnum};
use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use hdrhistogram::Histogram;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::client::{Client, ClientError, Target};
use super::reference::{self, CopyTimed};
use super::report::{self, IngestSummary, RateStep};
use super::targets;
use super::{parse_ratio, DEFAULT_URL};
use crate::child::{self, OnDrop, ServeProcess, ServeSettings, Stopped};
use crate::generate::{self, Rng};
use crate::publisher::{Outcome, Pipeline, RetryArgs};
use ordersvc_service::bus;
use ordersvc_service::config::{self, DbArgs, NatsArgs, DEFAULT_DURABLE};

/// Random stream of the kind of each message.
const STREAM_KIND: u64 = 20;
/// Random stream of the original that a duplicate repeats.
const STREAM_DUPLICATE: u64 = 21;
/// Longest wait for one HTTP answer of the watcher.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between the watcher's rounds when the oldest samples are not visible yet.
const POLL_PAUSE: Duration = Duration::from_millis(1);
/// Samples not yet visible that end a round of the watcher.
const LOOKAHEAD: usize = 3;
/// Pause between `/readyz` probes of the spawned service.
const READY_POLL: Duration = Duration::from_millis(5);
/// How long the spawned service may take to stop after SIGTERM before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(30);
/// Lines of the spawned service's log shown when it fails.
const LOG_TAIL: usize = 20;

/// Settings of `ordersvc bench ingest`.
#[derive(Args, Clone, Debug)]
pub struct IngestArgs {
    /// Where the stream is.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Backlog mode: the database of the service this command starts.
    #[command(flatten)]
    pub db: DbArgs,
    /// Backlog mode: the durable consumer of the service this command starts.
    #[arg(long, env = "ORDERSVC_DURABLE", default_value = DEFAULT_DURABLE)]
    pub durable: String,
    /// Base URL of the service, to see orders appear (backlog mode starts the service there).
    /// Live mode takes several (replicas of one service), comma-separated: an order counts as
    /// visible once every one of them serves it.
    #[arg(long, env = "ORDERSVC_BENCH_URL", default_value = DEFAULT_URL, value_delimiter = ',', value_name = "URL[,URL...]")]
    pub url: Vec<String>,
    /// Messages to publish (valid, invalid and duplicates together).
    #[arg(long, env = "ORDERSVC_BENCH_ORDERS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub orders: u64,
    /// Share of messages (0 to 1) that break a rule (bad JSON, a missing field, a wrong type, a bad value).
    #[arg(long, env = "ORDERSVC_BENCH_INVALID_RATIO", default_value = "0", value_parser = parse_ratio)]
    pub invalid_ratio: f64,
    /// Share of messages (0 to 1) that repeat an earlier valid order, without `Nats-Msg-Id`, so that
    /// the service's own duplicate detection sees them. Without an id, a repeat whose ack was lost
    /// can be stored twice by its retry.
    #[arg(long, env = "ORDERSVC_BENCH_DUPLICATE_RATIO", default_value = "0", value_parser = parse_ratio)]
    pub duplicate_ratio: f64,
    /// live: the service is running and ingests while this publishes; backlog: publish everything
    /// first (nothing may consume the stream meanwhile), then start the service and time the drain.
    #[arg(long, env = "ORDERSVC_BENCH_MODE", value_enum, default_value_t = Mode::Live)]
    pub mode: Mode,
    /// Live mode: publish open loop at this many messages per second, each message due at its
    /// own time and its latency counted from then (scheduled → visible), so that neither a slow
    /// publisher nor a stalled service can hide. A list (`--rate 5000,10000`) runs one step of
    /// --orders messages per rate, seeds `seed`, `seed + 1`, ..., and prints the latency-vs-load
    /// curve with the consumer's backlog at the end of each step.
    #[arg(long, env = "ORDERSVC_BENCH_INGEST_RATE", value_delimiter = ',', value_parser = parse_rate, value_name = "R[,R...]")]
    pub rate: Vec<f64>,
    /// Seed of the generated orders (their ids are `bench-<seed>-<n>`): the same seed gives the
    /// same messages. A fresh one is chosen when not given; ids must not be stored already.
    #[arg(long, env = "ORDERSVC_BENCH_SEED")]
    pub seed: Option<u64>,
    /// Watch every N-th valid order (and always the last one) until it is visible over HTTP.
    #[arg(long, env = "ORDERSVC_BENCH_SAMPLE_EVERY", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub sample_every: u64,
    /// Publish acks awaited at once (the pipelining window).
    #[arg(long, env = "ORDERSVC_BENCH_IN_FLIGHT", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub in_flight: u32,
    /// How long each message may be retried.
    #[command(flatten)]
    pub retry: RetryArgs,
    /// Give up when no watched order has become visible for this long (and, in backlog mode,
    /// when the service is not ready within it). E.g. 60s, 2m (a bare number is seconds).
    #[arg(long, env = "ORDERSVC_BENCH_STALL_TIMEOUT", default_value = "60s", value_parser = config::parse_duration)]
    pub stall_timeout: Duration,
    /// Backlog mode: one more flag for the service this command starts (repeatable), e.g.
    /// `--serve-arg=--batch-size=2000`.
    #[arg(long = "serve-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub serve_args: Vec<String>,
    /// Backlog mode: after the drain, time PostgreSQL's own binary `COPY` of the rows this run
    /// stored into a scratch table of the same schema (dropped afterwards), and print the drain
    /// rate's ratio to it.
    #[arg(long, env = "ORDERSVC_BENCH_REFERENCE_COPY")]
    pub reference_copy: bool,
    /// Print the report as one JSON object instead of text.
    #[arg(long, env = "ORDERSVC_BENCH_JSON")]
    pub json: bool,
}

/// How the service meets the published orders.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The service is running and ingests while orders are published.
    Live,
    /// Orders wait on the stream; then the service is started and drains them.
    Backlog,
}

impl Mode {
    /// The mode's name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Backlog => "backlog",
        }
    }
}

/// What message `n` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A new valid order, published with `Nats-Msg-Id`.
    Valid,
    /// A message that breaks a rule.
    Invalid,
    /// An earlier valid order again, without `Nats-Msg-Id`.
    Duplicate,
}

/// The kind of every message: a pure function of the seed and the ratios. A duplicate needs an
/// earlier valid order to repeat, so until there is one it is a valid order instead.
pub(crate) fn kinds(seed: u64, count: u64, invalid_ratio: f64, duplicate_ratio: f64) -> Vec<Kind> {
    let mut any_valid = false;
    (0..count)
        .map(|n| {
            let roll = Rng::for_item(seed, n, STREAM_KIND).unit();
            let kind = if roll < invalid_ratio {
                Kind::Invalid
            } else if roll < invalid_ratio + duplicate_ratio && any_valid {
                Kind::Duplicate
            } else {
                Kind::Valid
            };
            any_valid |= kind == Kind::Valid;
            kind
        })
        .collect()
}

/// Whether the valid order with ordinal `ordinal` (0 for the first valid one), message `n`, is
/// watched: every `every`-th, and always the last valid one, which ends the measurement.
pub(crate) fn is_sampled(ordinal: u64, n: u64, every: u64, last_valid: u64) -> bool {
    ordinal % every.max(1) == 0 || n == last_valid
}

/// The messages of a run and what is known of them before publishing.
struct Plan {
    seed: u64,
    kinds: Vec<Kind>,
    valid: u64,
    invalid: u64,
    duplicates: u64,
    first_valid: u64,
    last_valid: u64,
    sample_every: u64,
    samples: u64,
}

impl Plan {
    fn new(seed: u64, args: &IngestArgs) -> Result<Plan> {
        if args.invalid_ratio + args.duplicate_ratio >= 1.0 {
            bail!(
                "--invalid-ratio plus --duplicate-ratio must be below 1: some orders must be valid"
            );
        }
        let kinds = kinds(seed, args.orders, args.invalid_ratio, args.duplicate_ratio);
        let count = |k: Kind| kinds.iter().filter(|&&x| x == k).count() as u64;
        let first_valid = kinds.iter().position(|&k| k == Kind::Valid);
        let last_valid = kinds.iter().rposition(|&k| k == Kind::Valid);
        let (Some(first_valid), Some(last_valid)) = (first_valid, last_valid) else {
            bail!("with these ratios no valid order would be published: lower --invalid-ratio");
        };
        let valid = count(Kind::Valid);
        // Every `every`-th ordinal from 0, plus the last one if it is not among them.
        let every = args.sample_every;
        let samples = (valid - 1) / every + 1 + u64::from((valid - 1) % every != 0);
        Ok(Plan {
            seed,
            valid,
            invalid: count(Kind::Invalid),
            duplicates: count(Kind::Duplicate),
            kinds,
            first_valid: first_valid as u64,
            last_valid: last_valid as u64,
            sample_every: every,
            samples,
        })
    }
}

/// A watched order: the path that fetches it and the instant its latency counts from.
struct Sample {
    path: String,
    since: Instant,
    last: bool,
}

/// When message `n` is due, publishing at `rate` messages per second from `start`.
pub(crate) fn due(start: Instant, n: u64, rate: f64) -> Instant {
    start + Duration::from_secs_f64(n as f64 / rate)
}

/// A `--rate` value: messages per second, above 0.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of messages per second"))?;
    if rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0 {
        Ok(rate)
    } else {
        Err(format!(
            "{text} is not a rate between 0 and 10,000,000 per second"
        ))
    }
}

/// What both modes work from.
struct Run<'a> {
    args: &'a IngestArgs,
    plan: &'a Plan,
    /// The service's addresses (one in backlog mode), for the watcher and the readiness checks.
    targets: &'a [Target],
    /// The publisher's runtime (the caller's thread runs it).
    runtime: &'a tokio::runtime::Runtime,
}

impl Run<'_> {
    fn live(&self) -> Result<IngestSummary> {
        self.check_ready()?;
        let (published, visibility, _) = self.live_step(self.plan, None)?;
        let end_to_end = visibility
            .last_seen_at
            .map(|at| at.saturating_duration_since(published.first_at));
        Ok(summary(self.args, self.plan, published, visibility, |s| {
            s.end_to_end = end_to_end;
        }))
    }

    /// Live mode at each `--rate` in turn: one step of the plan's size per rate, each with a seed
    /// of its own so that no step finds another's orders stored.
    fn live_at_rates(&self) -> Result<Vec<RateStep>> {
        self.check_ready()?;
        let mut steps = Vec::with_capacity(self.args.rate.len());
        for (k, &rate) in (0u64..).zip(&self.args.rate) {
            let plan = Plan::new(self.plan.seed.wrapping_add(k), self.args)?;
            eprintln!(
                "step {} of {}: {} messages at {rate}/s, seed {}",
                k + 1,
                self.args.rate.len(),
                self.args.orders,
                plan.seed
            );
            let (published, visibility, backlog) = self.live_step(&plan, Some(rate))?;
            let errors = merged(published.errors, visibility.errors);
            steps.push(RateStep {
                rate,
                seed: plan.seed,
                acked: published.acked,
                failed: published.failed,
                publish_time: published
                    .last_ack_at
                    .saturating_duration_since(published.first_at),
                sampled: plan.samples,
                seen: visibility.seen,
                latencies: visibility.latencies,
                backlog_at_end: backlog,
                errors,
            });
        }
        Ok(steps)
    }

    /// Every target answers `/readyz` 200, and the plan's first order is not stored yet.
    fn check_ready(&self) -> Result<()> {
        for target in self.targets {
            let mut client = Client::new(target.addr(), REQUEST_TIMEOUT);
            let (status, body) = get(&mut client, target, "/readyz").wrap_err_with(|| {
                format!(
                    "the service at {} does not answer: start `ordersvc serve` first, or use --mode backlog",
                    target.url()
                )
            })?;
            if status != 200 {
                bail!(
                    "the service at {} is not ready ({status}): {body}",
                    target.url()
                );
            }
        }
        Ok(())
    }

    /// Publishes `plan` to the running service (at `rate` messages per second, or as fast as
    /// acks allow) while a watcher waits for its samples on every target. Returns what was
    /// published, what became visible, and (at a fixed rate) the consumer's backlog once the
    /// last message was acked.
    fn live_step(
        &self,
        plan: &Plan,
        rate: Option<f64>,
    ) -> Result<(Published, Visibility, Option<u64>)> {
        let mut client = Client::new(self.targets[0].addr(), REQUEST_TIMEOUT);
        refuse_stored_ids(&mut client, &self.targets[0], plan)?;
        let bars = bars();
        let published_bar = bars.add(bar(self.args.orders, "published"));
        let visible_bar = bars.add(bar(plan.samples, "watched orders visible"));
        let (tx, rx) = crossbeam_channel::unbounded();
        let targets = self.targets.to_vec();
        let stall = self.args.stall_timeout;
        let watcher = std::thread::Builder::new()
            .name("bench-watch".into())
            .spawn(move || watch(&targets, &rx, stall, &visible_bar))
            .wrap_err("cannot start the watcher thread")?;
        let published = self.runtime.block_on(async {
            let published = publish(self.args, plan, rate, &published_bar, |sample| {
                // The watcher only ends once this sender is gone, so it cannot have hung up.
                let _ = tx.send(sample);
            })
            .await?;
            let backlog = match rate {
                Some(_) => Some(pending_messages(self.args).await?),
                None => None,
            };
            Ok::<_, color_eyre::Report>((published, backlog))
        });
        drop(tx);
        let visibility = watcher
            .join()
            .map_err(|_| eyre!("the watcher thread panicked"))?;
        bars.clear().ok();
        let (published, backlog) = published?;
        Ok((published, visibility, backlog))
    }

    fn backlog(&self) -> Result<IngestSummary> {
        // The service is started at --url: nothing may be there yet, and nothing should be consuming.
        let target = &self.targets[0];
        let mut client = Client::new(target.addr(), REQUEST_TIMEOUT);
        match client.connect() {
            Err(ClientError::Connect(_)) => {}
            _ => bail!(
                "something already answers at {}: backlog mode starts its own service there, and the \
                 backlog must wait unconsumed. Stop that service (or give another --url, and a fresh \
                 --stream or --durable)",
                target.url()
            ),
        }
        let bars = bars();
        let published_bar = bars.add(bar(self.args.orders, "published"));
        let mut samples = Vec::with_capacity(usize::try_from(self.plan.samples).unwrap_or(0));
        let published =
            self.runtime
                .block_on(publish(self.args, self.plan, None, &published_bar, |s| {
                    samples.push(s)
                }))?;
        let pending = self.runtime.block_on(pending_messages(self.args))?;
        if pending < published.acked.saturating_sub(published.server_duplicates) {
            eprintln!(
                "warning: the durable consumer {} has only {pending} messages pending of the {} just \
                 published: something else consumes the stream, and the drain rate will be wrong",
                self.args.durable, published.acked
            );
        }

        let log =
            std::env::temp_dir().join(format!("ordersvc-bench-serve-{}.log", std::process::id()));
        let spawned_at = Instant::now();
        let mut service = spawn_service(self.args, target.addr(), &log)?;
        let ready_at = loop {
            if let Some(status) = service
                .exited()
                .wrap_err("cannot check on the service process")?
            {
                bail!(
                    "the service exited ({status}) before it was ready; its log ({}):\n{}",
                    log.display(),
                    tail(&log)
                );
            }
            // The client's own error, not `get`'s report: a report captures a backtrace when
            // RUST_BACKTRACE is set, which took up to a second here on every refused probe,
            // and the drain would be timed from too late.
            let probe = client.request(&target.get("/readyz"), None);
            if probe.is_ok_and(|reply| reply.status == 200) {
                break Instant::now();
            }
            if spawned_at.elapsed() > self.args.stall_timeout {
                bail!(
                    "the service was not ready within {}; its log: {}",
                    report::duration(self.args.stall_timeout),
                    log.display()
                );
            }
            std::thread::sleep(READY_POLL);
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        for mut sample in samples {
            sample.since = ready_at;
            let _ = tx.send(sample);
        }
        drop(tx);
        let visible_bar = bars.add(bar(self.plan.samples, "watched orders visible"));
        let visibility = watch(
            std::slice::from_ref(target),
            &rx,
            self.args.stall_timeout,
            &visible_bar,
        );
        bars.clear().ok();
        let stopped = stop_service(&mut service);

        let drain = visibility
            .last_seen_at
            .map(|at| at.saturating_duration_since(ready_at));
        let mut summary = summary(self.args, self.plan, published, visibility, |s| {
            s.spawn_to_ready = Some(ready_at - spawned_at);
            s.drain = drain;
            s.pending_at_start = Some(pending);
            s.service_log = Some(log.clone());
        });
        match stopped {
            Ok(status) if status.success() => {}
            Ok(status) => summary.error(format!("the service stopped with {status}")),
            Err(e) => summary.error(format!("stopping the service: {e:#}")),
        }
        if self.args.reference_copy {
            let copy = self
                .runtime
                .block_on(reference_copy(self.args, self.plan))?;
            if copy.rows != self.plan.valid {
                summary.error(format!(
                    "the reference COPY found {} stored orders of this run, not {}",
                    copy.rows, self.plan.valid
                ));
            }
            summary.reference_copy = Some(copy);
        }
        Ok(summary)
    }
}

/// Times PostgreSQL's own COPY of the orders this run stored (their ids start with its seed's
/// prefix), on the service's database, once the service has stopped.
async fn reference_copy(args: &IngestArgs, plan: &Plan) -> Result<CopyTimed> {
    reference::time_copy(&args.db.database_url, &generate::uid_prefix(plan.seed)).await
}

/// Runs the benchmark and prints the report.
pub fn run(args: IngestArgs) -> Result<()> {
    if args.reference_copy && args.mode != Mode::Backlog {
        bail!("--reference-copy needs --mode backlog: it compares a drain with COPY");
    }
    if !args.rate.is_empty() && args.mode != Mode::Live {
        bail!("--rate needs --mode live: a backlog is published as fast as it can be");
    }
    let targets = targets::parse(&args.url)?;
    if targets.len() > 1 && args.mode != Mode::Live {
        bail!("backlog mode starts one service, at one --url");
    }
    let seed = args.seed.unwrap_or_else(crate::generate::random_seed);
    let plan = Plan::new(seed, &args)?;
    eprintln!(
        "bench ingest ({}): {} messages ({} valid, {} invalid, {} duplicates), seed {seed}, \
         stream {} subject {}",
        args.mode.as_str(),
        args.orders,
        plan.valid,
        plan.invalid,
        plan.duplicates,
        args.nats.stream,
        args.nats.subject
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .wrap_err("cannot start the async runtime")?;
    let run = Run {
        args: &args,
        plan: &plan,
        targets: &targets,
        runtime: &runtime,
    };
    if !args.rate.is_empty() {
        let urls: Vec<&str> = targets.iter().map(Target::url).collect();
        let steps = run.live_at_rates()?;
        if args.json {
            println!("{}", report::rate_curve_json(&steps, &urls));
        } else {
            print!("{}", report::rate_curve_text(&steps, &urls));
        }
        let missing: u64 = steps
            .iter()
            .map(|s| s.sampled - s.seen.min(s.sampled))
            .sum();
        let failed: u64 = steps.iter().map(|s| s.failed).sum();
        if missing > 0 {
            bail!(
                "{missing} watched orders did not become visible (none appeared for {})",
                report::duration(args.stall_timeout)
            );
        }
        if failed > 0 {
            bail!("{failed} message(s) could not be published");
        }
        return Ok(());
    }
    let summary = match args.mode {
        Mode::Live => run.live()?,
        Mode::Backlog => run.backlog()?,
    };
    if args.json {
        println!("{}", summary.json());
    } else {
        print!("{}", summary.text());
    }
    if summary.missing > 0 {
        bail!(
            "{} of {} watched orders did not become visible (none appeared for {})",
            summary.missing,
            summary.sampled,
            report::duration(args.stall_timeout)
        );
    }
    if summary.failed > 0 {
        bail!("{} message(s) could not be published", summary.failed);
    }
    Ok(())
}

/// Builds the report from what was counted; `fill` adds the mode's own numbers.
fn summary(
    args: &IngestArgs,
    plan: &Plan,
    published: Published,
    visibility: Visibility,
    fill: impl FnOnce(&mut IngestSummary),
) -> IngestSummary {
    let errors = merged(published.errors, visibility.errors);
    let mut s = IngestSummary {
        mode: args.mode.as_str(),
        seed: plan.seed,
        messages: args.orders,
        valid: plan.valid,
        invalid: plan.invalid,
        duplicates: plan.duplicates,
        acked: published.acked,
        failed: published.failed,
        server_duplicates: published.server_duplicates,
        retried: published.retried,
        publish_time: published
            .last_ack_at
            .saturating_duration_since(published.first_at),
        end_to_end: None,
        spawn_to_ready: None,
        drain: None,
        pending_at_start: None,
        sampled: plan.samples,
        seen: visibility.seen,
        missing: plan.samples - visibility.seen.min(plan.samples),
        latencies: visibility.latencies,
        errors,
        service_log: None,
        reference_copy: None,
    };
    fill(&mut s);
    s
}

/// The publisher's and the watcher's error sets as one.
fn merged(mut errors: BTreeMap<String, u64>, more: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    for (error, count) in more {
        *errors.entry(error).or_default() += count;
    }
    errors
}

/// Refuses to run when the first order of this seed is already stored: its ids would all be
/// duplicates, visible at once, and every number would be wrong.
fn refuse_stored_ids(client: &mut Client, target: &Target, plan: &Plan) -> Result<()> {
    let uid = generate::uid(plan.seed, plan.first_valid);
    let (status, _) = get(client, target, &format!("/order/{uid}"))?;
    if status == 200 {
        bail!(
            "order {uid} is already stored: seed {} was used before on this service; give another --seed",
            plan.seed
        );
    }
    Ok(())
}

/// A GET with the body as text (for messages).
fn get(client: &mut Client, target: &Target, path: &str) -> Result<(u16, String)> {
    let mut body = Vec::new();
    let reply = client
        .request(&target.get(path), Some(&mut body))
        .wrap_err_with(|| format!("GET {}{path}", target.url()))?;
    Ok((reply.status, String::from_utf8_lossy(&body).into_owned()))
}

/// What the publisher counted.
struct Published {
    first_at: Instant,
    last_ack_at: Instant,
    acked: u64,
    failed: u64,
    server_duplicates: u64,
    retried: u64,
    errors: BTreeMap<String, u64>,
}

/// Publishes every message of the plan with acks pipelined; hands each watched valid order to
/// `on_sample` the moment its publish ack arrives.
async fn publish(
    args: &IngestArgs,
    plan: &Plan,
    rate: Option<f64>,
    bar: &ProgressBar,
    mut on_sample: impl FnMut(Sample),
) -> Result<Published> {
    let client = bus::connect(&args.nats, "ordersvc bench ingest").await?;
    let js = jetstream::new(client.clone());
    let stream = bus::ensure_stream_within(&js, &args.nats, args.retry.publish_timeout).await?;
    let last_sequence = stream.cached_info().state.last_sequence;

    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let on_outcome = |outcome: Outcome<Option<Sample>>| match outcome.result {
        Ok(_) => {
            if let Some(mut sample) = outcome.tag {
                // Latency counts from the ack (the order cannot be visible before it is stored),
                // or at a fixed rate from when the message was due.
                if rate.is_none() {
                    sample.since = outcome.at;
                }
                on_sample(sample);
            }
        }
        Err(failure) => *errors.entry(failure.to_string()).or_default() += 1,
    };
    let first_at = Instant::now();
    let mut pipeline = Pipeline::new(js, &args.nats.subject, args.in_flight as usize, on_outcome)
        .with_progress(bar.clone())
        .with_publish_timeout(args.retry.publish_timeout)
        .with_last_sequence_before(last_sequence);
    let mut valid_so_far: Vec<u64> = Vec::new();
    for (n, &kind) in (0u64..).zip(&plan.kinds) {
        let due_at = match rate {
            Some(rate) => {
                let at = due(first_at, n, rate);
                tokio::time::sleep_until(at.into()).await;
                at
            }
            None => Instant::now(),
        };
        let mut payload = Vec::with_capacity(4096);
        let mut msg_id = None;
        let mut sample = None;
        match kind {
            Kind::Valid => {
                generate::order(plan.seed, n, &mut payload);
                let uid = generate::uid(plan.seed, n);
                if is_sampled(
                    valid_so_far.len() as u64,
                    n,
                    plan.sample_every,
                    plan.last_valid,
                ) {
                    sample = Some(Sample {
                        path: format!("/order/{uid}"),
                        since: due_at,
                        last: n == plan.last_valid,
                    });
                }
                msg_id = Some(uid);
                valid_so_far.push(n);
            }
            Kind::Invalid => {
                generate::invalid(plan.seed, n, &mut payload);
            }
            Kind::Duplicate => {
                let mut rng = Rng::for_item(plan.seed, n, STREAM_DUPLICATE);
                let at = rng.below(valid_so_far.len() as u64) as usize;
                generate::order(plan.seed, valid_so_far[at], &mut payload);
            }
        }
        pipeline
            .send(sample, payload.into(), msg_id.as_deref())
            .await;
    }
    let counts = pipeline.finish().await;
    let last_ack_at = Instant::now();
    // Nothing is buffered after the last ack, but be explicit before the connection goes away.
    client.flush().await.ok();
    bar.finish();
    Ok(Published {
        first_at,
        last_ack_at,
        acked: counts.acked(),
        failed: counts.failed,
        server_duplicates: counts.duplicates,
        retried: counts.retried,
        errors,
    })
}

/// Messages the service will have to process when it starts: those pending for the durable
/// consumer, or (for a durable that does not exist yet, which starts at the stream's beginning)
/// all the messages in the stream.
async fn pending_messages(args: &IngestArgs) -> Result<u64> {
    let client = bus::connect(&args.nats, "ordersvc bench ingest").await?;
    let js = jetstream::new(client);
    let mut stream = bus::ensure_stream_within(&js, &args.nats, args.retry.publish_timeout).await?;
    if let Ok(info) = stream.consumer_info(&args.durable).await {
        return Ok(info.num_pending + info.num_ack_pending as u64);
    }
    let info = stream
        .info()
        .await
        .wrap_err_with(|| format!("cannot read the state of the stream {}", args.nats.stream))?;
    Ok(info.state.messages)
}

/// What the watcher saw.
struct Visibility {
    latencies: Histogram<u64>,
    seen: u64,
    last_seen_at: Option<Instant>,
    errors: BTreeMap<String, u64>,
}

/// A sample being watched, and the targets that have served it so far.
struct Watched {
    sample: Sample,
    seen_by: Vec<bool>,
}

/// Asks every target for each sample until all of them answer 200, oldest first; returns when
/// every sample has been seen and the channel is closed, or when nothing has become visible for
/// `stall`. A sample's latency ends when the last target serves it.
fn watch(
    targets: &[Target],
    rx: &Receiver<Sample>,
    stall: Duration,
    bar: &ProgressBar,
) -> Visibility {
    let mut clients: Vec<Client> = targets
        .iter()
        .map(|t| Client::new(t.addr(), REQUEST_TIMEOUT))
        .collect();
    let mut out = Visibility {
        latencies: report::histogram(),
        seen: 0,
        last_seen_at: None,
        errors: BTreeMap::new(),
    };
    let watched = |sample| Watched {
        sample,
        seen_by: vec![false; targets.len()],
    };
    let mut pending: VecDeque<Watched> = VecDeque::new();
    let mut open = true;
    let mut progress_at = Instant::now();
    loop {
        while open {
            match rx.try_recv() {
                Ok(sample) => {
                    pending.push_back(watched(sample));
                    progress_at = Instant::now();
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if pending.is_empty() {
            if !open {
                break;
            }
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(sample) => {
                    pending.push_back(watched(sample));
                    progress_at = Instant::now();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
            continue;
        }
        let mut not_yet = 0;
        let mut i = 0;
        while i < pending.len() && not_yet < LOOKAHEAD {
            let entry = &mut pending[i];
            let everywhere = (0..targets.len()).all(|t| {
                entry.seen_by[t] || {
                    let request = targets[t].get(&entry.sample.path);
                    entry.seen_by[t] = probe(&mut clients[t], &request, &mut out.errors);
                    entry.seen_by[t]
                }
            });
            if !everywhere {
                not_yet += 1;
                i += 1;
                continue;
            }
            let now = Instant::now();
            if let Some(done) = pending.remove(i) {
                report::record(
                    &mut out.latencies,
                    now.saturating_duration_since(done.sample.since),
                );
                out.seen += 1;
                if done.sample.last {
                    out.last_seen_at = Some(now);
                }
            }
            progress_at = now;
            bar.inc(1);
        }
        if not_yet > 0 {
            if progress_at.elapsed() > stall {
                break;
            }
            std::thread::sleep(POLL_PAUSE);
        }
    }
    bar.finish();
    out
}

/// Whether one target serves a watched order yet; what is neither a 200 nor a "not yet" (404,
/// or 503 while the cache loads) is counted in `errors`.
fn probe(client: &mut Client, request: &[u8], errors: &mut BTreeMap<String, u64>) -> bool {
    match client.request(request, None) {
        Ok(reply) if reply.status == 200 => true,
        Ok(reply) if reply.status == 404 || reply.status == 503 => false,
        Ok(reply) => {
            *errors
                .entry(format!("status {} for a published order", reply.status))
                .or_default() += 1;
            false
        }
        Err(e) => {
            *errors.entry(format!("watching: {e}")).or_default() += 1;
            false
        }
    }
}

/// Starts the `ordersvc serve` of backlog mode, logging to `log`; dropped, it gets SIGTERM.
fn spawn_service(args: &IngestArgs, http_addr: SocketAddr, log: &Path) -> Result<ServeProcess> {
    let exe = std::env::current_exe().wrap_err("cannot find this program's own path")?;
    let log_file = std::fs::File::create(log)
        .wrap_err_with(|| format!("cannot create the service log {}", log.display()))?;
    let log_err = log_file
        .try_clone()
        .wrap_err("cannot share the service log file")?;
    let mut command = service_command(args, &exe, http_addr);
    command
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    ServeProcess::spawn(&mut command, OnDrop::Terminate(STOP_WAIT))
        .wrap_err_with(|| format!("cannot start {} serve", exe.display()))
}

/// Stops the service with SIGTERM, killing it if it has not stopped within `STOP_WAIT`.
fn stop_service(service: &mut ServeProcess) -> Result<ExitStatus> {
    match service
        .terminate(STOP_WAIT)
        .wrap_err("cannot stop the service")?
    {
        Stopped::Exited(status) => Ok(status),
        Stopped::Killed(_) => {
            bail!("the service did not stop within {STOP_WAIT:?} of SIGTERM and was killed")
        }
    }
}

/// The command line of the service that backlog mode starts (the URLs in its environment).
fn service_command(args: &IngestArgs, exe: &Path, http_addr: SocketAddr) -> Command {
    let http_addr = http_addr.to_string();
    let settings = ServeSettings {
        database_url: &args.db.database_url,
        nats_url: &args.nats.nats_url,
        nats_token: args.nats.nats_token.as_deref(),
        nats_tls_ca: args.nats.nats_tls_ca.as_deref(),
        stream: &args.nats.stream,
        subject: &args.nats.subject,
        durable: &args.durable,
        http_addr: &http_addr,
    };
    child::serve_command(exe, &settings, &args.serve_args)
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
}

fn bars() -> MultiProgress {
    if std::io::stderr().is_terminal() {
        MultiProgress::new()
    } else {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template = format!("{{bar:40}} {{pos}}/{{len}} {what}, {{per_sec}}, {{elapsed}}");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_ratios_and_never_start_with_a_duplicate() {
        let k = kinds(1, 100_000, 0.1, 0.2);
        let count = |kind| k.iter().filter(|&&x| x == kind).count();
        assert!(
            (9_000..11_000).contains(&count(Kind::Invalid)),
            "{}",
            count(Kind::Invalid)
        );
        assert!(
            (19_000..21_000).contains(&count(Kind::Duplicate)),
            "{}",
            count(Kind::Duplicate)
        );
        let first_valid = k
            .iter()
            .position(|&x| x == Kind::Valid)
            .expect("some valid");
        assert!(k[..first_valid].iter().all(|&x| x == Kind::Invalid));
        assert_eq!(k, kinds(1, 100_000, 0.1, 0.2));
        assert!(kinds(2, 1000, 0.0, 0.0).iter().all(|&x| x == Kind::Valid));
    }

    #[test]
    fn every_nth_valid_order_and_the_last_one_are_sampled() {
        let sampled: Vec<u64> = (0..25).filter(|&v| is_sampled(v, v, 10, 24)).collect();
        assert_eq!(sampled, vec![0, 10, 20, 24]);
    }

    fn args(orders: u64, every: u64) -> IngestArgs {
        IngestArgs {
            nats: crate::testing::nats_args(),
            db: DbArgs {
                database_url: String::new(),
            },
            durable: String::new(),
            url: vec![DEFAULT_URL.into()],
            rate: Vec::new(),
            orders,
            invalid_ratio: 0.0,
            duplicate_ratio: 0.0,
            mode: Mode::Live,
            seed: None,
            sample_every: every,
            in_flight: 1,
            retry: RetryArgs {
                publish_timeout: Duration::from_secs(1),
            },
            stall_timeout: Duration::from_secs(1),
            serve_args: Vec::new(),
            reference_copy: false,
            json: false,
        }
    }

    #[test]
    fn the_plan_counts_samples_including_the_last_valid_order() {
        for (orders, every, samples) in [
            (25, 10, 4),
            (21, 10, 3),
            (1, 100, 1),
            (100, 1, 100),
            (20_000, 100, 201),
        ] {
            let plan = Plan::new(3, &args(orders, every)).expect("valid plan");
            let counted = (0..orders)
                .filter(|&n| is_sampled(n, n, every, orders - 1))
                .count() as u64;
            assert_eq!(plan.samples, counted, "{orders} orders, every {every}");
            assert_eq!(plan.samples, samples, "{orders} orders, every {every}");
        }
    }

    #[test]
    fn the_started_service_gets_its_urls_through_the_environment_not_its_command_line() {
        // Arrange
        let mut a = args(10, 1);
        a.db.database_url = "postgres://ordersvc:dbs3cret@127.0.0.1:5432/orders".into();
        a.nats.nats_url = "nats://user:nats3cret@127.0.0.1:4222".into();
        a.nats.stream = "S".into();
        a.serve_args = vec!["--batch-size=10".into()];

        // Act
        let command = service_command(
            &a,
            Path::new("/bin/ordersvc"),
            SocketAddr::from(([127, 0, 0, 1], 8080)),
        );

        // Assert: `ps` shows no URL; the environment carries both.
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for arg in &args {
            assert!(
                !arg.contains("3cret") && !arg.contains("://"),
                "a URL on the command line: {args:?}"
            );
        }
        assert!(args.contains(&"--batch-size=10".to_owned()), "{args:?}");
        let env = |name: &str| {
            command
                .get_envs()
                .find(|(key, _)| *key == name)
                .and_then(|(_, value)| value)
                .map(|value| value.to_string_lossy().into_owned())
        };
        assert_eq!(
            env("DATABASE_URL").as_deref(),
            Some(a.db.database_url.as_str())
        );
        assert_eq!(env("NATS_URL").as_deref(), Some(a.nats.nats_url.as_str()));
    }

    #[test]
    fn at_a_fixed_rate_messages_are_due_at_even_intervals_from_the_start() {
        let start = Instant::now();
        assert_eq!(due(start, 0, 1000.0), start);
        assert_eq!(due(start, 1, 1000.0) - start, Duration::from_millis(1));
        assert_eq!(due(start, 2500, 5000.0) - start, Duration::from_millis(500));
        assert_eq!(due(start, 3, 3.0) - start, Duration::from_secs(1));
        // However far behind the publisher is, a message's due time does not move.
        assert_eq!(due(start, 30_000, 10_000.0) - start, Duration::from_secs(3));
    }

    #[test]
    fn a_rate_is_a_positive_number_of_messages_per_second() {
        assert_eq!(parse_rate("5000"), Ok(5000.0));
        assert_eq!(parse_rate(" 2.5 "), Ok(2.5));
        for bad in ["0", "-1", "abc", "inf", "NaN", "", "20000000"] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_plan_without_valid_orders_is_refused() {
        let mut a = args(10, 1);
        a.invalid_ratio = 0.6;
        a.duplicate_ratio = 0.4;
        assert!(Plan::new(1, &a).is_err());
    }
}
