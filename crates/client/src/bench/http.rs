//! `ordersvc bench http`: a load generator for `GET /order/{id}`, one OS thread per connection.
//!
//! Open loop (`--rate N`): request `i` is due at `start + i/N`. A connection takes the next
//! request, sleeps until it is due if it is early, and its latency is counted from the moment it
//! was due to the last byte of the response. When the server stalls, every connection is busy,
//! later requests are sent late and their latency includes the wait: a stall shows in the
//! percentiles instead of silently lowering the request rate ("coordinated omission").
//! Closed loop (`--rate max`): each connection sends back to back; latency counts from the send.
//!
//! Which id request `i` asks for is a pure function of the seed and `i`, so a run is repeatable
//! whatever thread happens to send which request.
//!
//! With several `--url`s the connections are dealt out over them (see `targets`); each
//! connection's counts are kept with its target, so the report has a line per target beside the
//! totals.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use clap::Args;
use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::json;

use super::client::{Client, Target};
use super::report::{self, HttpSummary, TargetSummary};
use super::targets;
use super::{parse_ratio, DEFAULT_URL};
use crate::generate::Rng;
use ordersvc_service::config;
use ordersvc_service::order::OrderUid;

/// Random stream for the hit-or-miss and id choice of each request.
const STREAM_PICK: u64 = 10;
/// Random stream for the unknown ids.
const STREAM_MISS_IDS: u64 = 11;
/// Distinct unknown ids used for misses.
const MISS_IDS: u64 = 1024;
/// Ids asked of `GET /orders` per page (its maximum).
const PAGE_LIMIT: usize = 1000;
/// Distinct error texts kept per connection; more are counted under one line.
const MAX_DISTINCT_ERRORS: usize = 32;
/// Stack of the connection threads: they only hold a buffer on the heap.
const THREAD_STACK: usize = 256 * 1024;

/// Settings of `ordersvc bench http`.
#[derive(Args, Clone, Debug)]
pub struct HttpArgs {
    /// Base URL of the service. Several (replicas) as a comma-separated list or by repeating
    /// the flag: the connections are dealt out over them round-robin and the report breaks the
    /// numbers down per URL. Without --ids, ids are read from the first one.
    #[arg(long, env = "ORDERSVC_BENCH_URL", default_value = DEFAULT_URL, value_delimiter = ',', value_name = "URL[,URL...]")]
    pub url: Vec<String>,
    /// Requests per second (open loop: each request has a due time and its latency counts from
    /// it), or `max` (closed loop: every connection sends back to back).
    #[arg(long, env = "ORDERSVC_BENCH_RATE", default_value = "max")]
    pub rate: Rate,
    /// How long to send requests: e.g. 500ms, 10s, 2m (a bare number is seconds).
    #[arg(long, env = "ORDERSVC_BENCH_DURATION", default_value = "30s", value_parser = config::parse_duration)]
    pub duration: Duration,
    /// Keep-alive connections, each driven by its own thread (in all, over every URL).
    #[arg(long, env = "ORDERSVC_BENCH_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub connections: u16,
    /// File of order ids to request, one per line. Without it, ids are read from the service's
    /// `GET /orders`, newest first.
    #[arg(long, env = "ORDERSVC_BENCH_IDS", value_name = "FILE")]
    pub ids: Option<PathBuf>,
    /// Most ids to read from `GET /orders`.
    #[arg(long, env = "ORDERSVC_BENCH_MAX_IDS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_ids: u64,
    /// Share of requests (0 to 1) for random unknown ids; for those, 404 is the right answer.
    #[arg(long, env = "ORDERSVC_BENCH_MISS_RATIO", default_value = "0", value_parser = parse_ratio)]
    pub miss_ratio: f64,
    /// Search instead of looking orders up by id: each request is
    /// `GET /orders?track_number=V` (or `customer_id=V`), V taken from --ids (a file of values)
    /// or from the service's `GET /orders`; a miss is a value no order has (an empty page).
    #[arg(long, env = "ORDERSVC_BENCH_SEARCH", value_enum)]
    pub search: Option<SearchBy>,
    /// Print the report as one JSON object instead of text.
    #[arg(long, env = "ORDERSVC_BENCH_JSON")]
    pub json: bool,
    /// Seed of the id choice; the same seed, ids and rate ask for the same ids in the same order.
    #[arg(long, env = "ORDERSVC_BENCH_SEED")]
    pub seed: Option<u64>,
    /// Longest wait for one response (and for connecting); a slower one counts as an error.
    /// E.g. 5s, 500ms (a bare number is seconds).
    #[arg(long, env = "ORDERSVC_BENCH_TIMEOUT", default_value = "5s", value_parser = config::parse_duration)]
    pub timeout: Duration,
}

/// `--search`: which column a search request matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SearchBy {
    /// `GET /orders?track_number=V`.
    TrackNumber,
    /// `GET /orders?customer_id=V`.
    CustomerId,
}

impl SearchBy {
    /// The query parameter.
    fn param(self) -> &'static str {
        match self {
            SearchBy::TrackNumber => "track_number",
            SearchBy::CustomerId => "customer_id",
        }
    }
}

/// The path of a request for `value`: an order by id, or a search.
fn request_path(search: Option<SearchBy>, value: &str) -> String {
    match search {
        // Ids are URL-safe (`OrderUid::parse`, or ours).
        None => format!("/order/{value}"),
        Some(by) => format!(
            "/orders?{}={}",
            by.param(),
            percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
        ),
    }
}

/// `--rate`: a constant request rate, or as fast as the connections go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// Closed loop.
    Max,
    /// Open loop, requests per second.
    PerSecond(u64),
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        if s.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        match s.trim_end_matches("/s").parse::<u64>() {
            Ok(n) if n > 0 => Ok(Rate::PerSecond(n)),
            _ => Err(format!(
                "{s:?} is not a rate: give requests per second (e.g. 5000) or max"
            )),
        }
    }
}

/// When request `i` is due, counted from the start, at `rate` requests per second.
pub(crate) fn due(i: u64, rate: u64) -> Duration {
    let nanos = u128::from(i) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// What request `i` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pick {
    /// The known id at this index.
    Hit(usize),
    /// The unknown id at this index.
    Miss(usize),
}

/// The id of request `i`: a miss with probability `miss_ratio`, else a known id, uniformly.
pub(crate) fn pick(seed: u64, i: u64, miss_ratio: f64, hits: usize, misses: usize) -> Pick {
    let mut rng = Rng::for_item(seed, i, STREAM_PICK);
    let miss = hits == 0 || rng.chance(miss_ratio);
    if miss {
        Pick::Miss(rng.below(misses as u64) as usize)
    } else {
        Pick::Hit(rng.below(hits as u64) as usize)
    }
}

/// The success rule: a known id must be answered 2xx, an unknown id (a deliberate miss) 404.
pub(crate) fn is_success(pick: Pick, status: u16) -> bool {
    match pick {
        Pick::Hit(_) => (200..300).contains(&status),
        Pick::Miss(_) => status == 404,
    }
}

/// Runs the benchmark and prints the report.
pub fn run(args: HttpArgs) -> Result<()> {
    let targets = targets::parse(&args.url)?;
    let shares = targets::split(usize::from(args.connections), targets.len())?;
    // `targets::parse` returns at least one.
    let first = &targets[0];
    let seed = args.seed.unwrap_or_else(crate::generate::random_seed);
    let ids = match &args.ids {
        Some(path) => read_ids(path)?,
        None => fetch_ids(first, args.max_ids, args.search, args.timeout)
            .wrap_err_with(|| format!("cannot read order ids from {}/orders", first.url()))?,
    };
    if ids.is_empty() && args.miss_ratio < 1.0 {
        bail!(
            "no order ids to request: the service has no orders yet (publish some, e.g. with \
             `ordersvc bench ingest`) or pass --ids FILE, or use --miss-ratio 1"
        );
    }
    let miss_ids: Vec<String> = (0..MISS_IDS)
        .map(|n| {
            let mut rng = Rng::for_item(seed, n, STREAM_MISS_IDS);
            format!("bench-miss-{:016x}", rng.next_u64())
        })
        .collect();
    let requests = targets
        .iter()
        .map(|target| Requests::new(target, &ids, &miss_ids, args.search))
        .collect();
    // Every target is tried before the run, so that a wrong URL fails at once, by name.
    for target in &targets {
        Client::new(target.addr(), args.timeout)
            .connect()
            .wrap_err_with(|| format!("cannot connect to the service at {}", target.url()))?;
    }

    let mode = match args.rate {
        Rate::Max => "closed loop at maximum rate".to_owned(),
        Rate::PerSecond(n) => format!("open loop at {n} requests/s"),
    };
    let over = match shares.as_slice() {
        [_] => String::new(),
        shares => {
            let shares: Vec<String> = shares.iter().map(usize::to_string).collect();
            format!(" ({} over {} URLs)", shares.join("/"), targets.len())
        }
    };
    let what = match args.search {
        None => "ids".to_owned(),
        Some(by) => format!("{} values to search", by.param()),
    };
    eprintln!(
        "bench http: {} for {}, {} connections{over}, {} {what}, miss ratio {}, seed {seed}",
        mode,
        report::duration(args.duration),
        args.connections,
        ids.len(),
        args.miss_ratio
    );
    if let Rate::PerSecond(_) = args.rate {
        precise_sleep();
    }
    let plan = Arc::new(Plan {
        rate: args.rate,
        duration: args.duration,
        seed,
        miss_ratio: args.miss_ratio,
        requests,
        next: AtomicU64::new(0),
        start: OnceLock::new(),
    });
    let summary = attack(&plan, &targets, &shares, args.timeout)?;
    if args.json {
        let mut value = summary.json();
        value["settings"] = json!({
            // As with one URL: the first one, where ids are read from; `urls` has them all.
            "url": first.url(),
            "urls": targets.iter().map(Target::url).collect::<Vec<_>>(),
            "rate": match args.rate { Rate::Max => json!("max"), Rate::PerSecond(n) => json!(n) },
            "latency_from": match args.rate { Rate::Max => "send", Rate::PerSecond(_) => "due" },
            "duration_s": args.duration.as_secs_f64(),
            "connections": args.connections,
            "ids": ids.len(),
            "miss_ratio": args.miss_ratio,
            "search": args.search.map(SearchBy::param),
            "seed": seed,
        });
        println!("{value}");
    } else {
        print!("{}", summary.text());
    }
    Ok(())
}

/// What every connection thread reads.
struct Plan {
    rate: Rate,
    duration: Duration,
    seed: u64,
    miss_ratio: f64,
    /// The requests, per target in `--url` order.
    requests: Vec<Requests>,
    /// The index of the next request to send, shared by all connections.
    next: AtomicU64,
    /// Set by the first thread past the start line, once every connection is open.
    start: OnceLock<Instant>,
}

/// The pre-formatted requests for one target: the same ids for every target, but each with its
/// own `Host` header. Formatted once, before the run, so that sending costs one write.
struct Requests {
    /// `GET /order/{id}` (or the search) for each known id (or value).
    hits: Vec<Box<[u8]>>,
    /// The same for each unknown one.
    misses: Vec<Box<[u8]>>,
}

impl Requests {
    fn new(
        target: &Target,
        ids: &[String],
        miss_ids: &[String],
        search: Option<SearchBy>,
    ) -> Requests {
        let get = |id: &String| target.get(&request_path(search, id));
        Requests {
            hits: ids.iter().map(get).collect(),
            misses: miss_ids.iter().map(get).collect(),
        }
    }
}

/// One connection's counts; merged into the report at the end.
struct Tally {
    latencies: Histogram<u64>,
    /// Open loop: how late each request was sent (sleep overshoot, or every connection busy).
    send_lag: Histogram<u64>,
    requests: u64,
    successes: u64,
    bytes_in: u64,
    status_codes: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    last_send: Option<Instant>,
    last_done: Option<Instant>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latencies: report::histogram(),
            send_lag: report::histogram(),
            requests: 0,
            successes: 0,
            bytes_in: 0,
            status_codes: BTreeMap::new(),
            errors: BTreeMap::new(),
            last_send: None,
            last_done: None,
        }
    }

    fn error(&mut self, text: String) {
        let key = if self.errors.len() < MAX_DISTINCT_ERRORS || self.errors.contains_key(&text) {
            text
        } else {
            "(other errors)".to_owned()
        };
        *self.errors.entry(key).or_default() += 1;
    }

    /// Adds `other`'s counts (borrowed: one connection's tally counts in its target and in the
    /// totals).
    fn merge(&mut self, other: &Tally) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latencies.add(&other.latencies);
        let _ = self.send_lag.add(&other.send_lag);
        self.requests += other.requests;
        self.successes += other.successes;
        self.bytes_in += other.bytes_in;
        for (&code, &n) in &other.status_codes {
            *self.status_codes.entry(code).or_default() += n;
        }
        for (error, &n) in &other.errors {
            *self.errors.entry(error.clone()).or_default() += n;
        }
        self.last_send = self.last_send.max(other.last_send);
        self.last_done = self.last_done.max(other.last_done);
    }
}

/// Starts the connections (`shares[t]` of them to target `t`), waits for them, and sums up.
fn attack(
    plan: &Arc<Plan>,
    targets: &[Target],
    shares: &[usize],
    timeout: Duration,
) -> Result<HttpSummary> {
    let connections: usize = shares.iter().sum();
    // Every thread connects first, then all start together: connecting is not part of the run.
    let ready = Arc::new(Barrier::new(connections + 1));
    let mut threads = Vec::with_capacity(connections);
    for n in 0..connections {
        let (plan, ready) = (plan.clone(), ready.clone());
        let t = targets::target_of(n, targets.len());
        let mut client = Client::new(targets[t].addr(), timeout);
        let thread = std::thread::Builder::new()
            .name(format!("bench-{n}"))
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let mut tally = Tally::new();
                // A failure here is not counted: the first request tries again and counts its own.
                let _ = client.connect();
                ready.wait();
                let start = *plan.start.get_or_init(Instant::now);
                connection(&plan, &plan.requests[t], start, &mut client, &mut tally);
                (t, tally)
            })
            .wrap_err("cannot start a connection thread")?;
        threads.push(thread);
    }
    ready.wait();
    let start = *plan.start.get_or_init(Instant::now);

    let bar = progress(plan.duration);
    while !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let elapsed = start.elapsed().min(plan.duration);
        bar.set_position(elapsed.as_millis() as u64);
        bar.set_message(format!("{} requests", plan.next.load(Ordering::Relaxed)));
    }
    bar.finish_and_clear();

    let mut tallies = Vec::with_capacity(connections);
    for thread in threads {
        let tally = thread
            .join()
            .map_err(|_| eyre!("a connection thread panicked"))?;
        tallies.push(tally);
    }
    let (total, per_target) = sum_up(tallies, targets.len());
    let targets = targets
        .iter()
        .zip(shares)
        .zip(per_target)
        .map(|((target, &connections), tally)| TargetSummary {
            url: target.url().to_owned(),
            connections,
            requests: tally.requests,
            successes: tally.successes,
            latencies: tally.latencies,
            status_codes: tally.status_codes,
            errors: tally.errors,
        })
        .collect();
    let last_send = total.last_send.unwrap_or(start);
    let last_done = total.last_done.unwrap_or(last_send).max(last_send);
    Ok(HttpSummary {
        requests: total.requests,
        successes: total.successes,
        attack: last_send.saturating_duration_since(start),
        wait: last_done.saturating_duration_since(last_send),
        latencies: total.latencies,
        send_lag: match plan.rate {
            Rate::Max => None,
            Rate::PerSecond(_) => Some(total.send_lag),
        },
        bytes_in: total.bytes_in,
        status_codes: total.status_codes,
        errors: total.errors,
        targets,
    })
}

/// Sums the connections' tallies, each given with its target's index: the totals, and one
/// tally per target (of `targets`). Every tally counts in exactly one target and in the
/// totals, so the targets add up to the totals.
fn sum_up(
    tallies: impl IntoIterator<Item = (usize, Tally)>,
    targets: usize,
) -> (Tally, Vec<Tally>) {
    let mut total = Tally::new();
    let mut per_target: Vec<Tally> = (0..targets).map(|_| Tally::new()).collect();
    for (t, tally) in tallies {
        total.merge(&tally);
        // The index comes from `targets::target_of`, which is always below `targets`.
        if let Some(target) = per_target.get_mut(t) {
            target.merge(&tally);
        }
    }
    (total, per_target)
}

/// One connection's loop: take the next request, send it (from `requests`, its target's) when
/// due, record it.
fn connection(
    plan: &Plan,
    requests: &Requests,
    start: Instant,
    client: &mut Client,
    tally: &mut Tally,
) {
    let end = start + plan.duration;
    loop {
        let i = plan.next.fetch_add(1, Ordering::Relaxed);
        // Closed loop: the request is "due" when the connection is free; open loop: at its slot.
        let due_at = match plan.rate {
            Rate::Max => {
                let now = Instant::now();
                if now >= end {
                    return;
                }
                now
            }
            Rate::PerSecond(rate) => {
                let offset = due(i, rate);
                if offset >= plan.duration {
                    return;
                }
                let due_at = start + offset;
                let now = Instant::now();
                if due_at > now {
                    std::thread::sleep(due_at - now);
                }
                due_at
            }
        };
        let target = pick(
            plan.seed,
            i,
            plan.miss_ratio,
            requests.hits.len(),
            requests.misses.len(),
        );
        let request = match target {
            Pick::Hit(n) => &requests.hits[n],
            Pick::Miss(n) => &requests.misses[n],
        };
        let sent = Instant::now();
        let result = client.request(request, None);
        let done = Instant::now();
        report::record(&mut tally.latencies, done - due_at);
        if let Rate::PerSecond(_) = plan.rate {
            report::record(&mut tally.send_lag, sent.saturating_duration_since(due_at));
        }
        tally.requests += 1;
        tally.last_send = Some(sent);
        tally.last_done = Some(done);
        match result {
            Ok(reply) => {
                *tally.status_codes.entry(reply.status).or_default() += 1;
                tally.bytes_in += reply.body_len as u64;
                if is_success(target, reply.status) {
                    tally.successes += 1;
                } else {
                    let kind = match target {
                        Pick::Hit(_) => "a known",
                        Pick::Miss(_) => "an unknown",
                    };
                    tally.error(format!("status {} for {kind} id", reply.status));
                }
            }
            Err(e) => {
                *tally.status_codes.entry(0).or_default() += 1;
                tally.error(e.to_string());
            }
        }
    }
}

/// Asks Linux to wake sleeping threads on time. Its default timer slack lets a sleep overrun by up
/// to 50 µs; in open loop that overrun makes requests late, and the lateness counts as latency.
/// Threads inherit the slack of the thread that spawns them, so this is called before the
/// connection threads start. Best effort: without it the numbers are only a little pessimistic.
fn precise_sleep() {
    // `/proc/self` is the main thread, which is the one that runs `bench` and spawns the others.
    if let Err(e) = std::fs::write("/proc/self/timerslack_ns", "1") {
        eprintln!("note: cannot lower the timer slack ({e}); sleeps may overrun by up to 50 µs");
    }
}

/// A progress bar over the run's duration, on stderr, hidden when stderr is not a terminal.
fn progress(duration: Duration) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {elapsed} of {prefix}, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(report::duration(duration));
    bar
}

/// Reads ids, one per line; blank lines are skipped, an invalid id is an error.
fn read_ids(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .wrap_err_with(|| format!("cannot read ids from {}", path.display()))?;
    parse_ids(&text).wrap_err_with(|| format!("in {}", path.display()))
}

fn parse_ids(text: &str) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let id = line.trim();
        if id.is_empty() {
            continue;
        }
        // The id goes into the request line as it is: it must follow the order_uid rule.
        let uid = OrderUid::parse(id).map_err(|e| eyre!("line {}: {id:?}: {e}", n + 1))?;
        ids.push(uid.as_str().to_owned());
    }
    Ok(ids)
}

/// Pages through `GET /orders` (newest first) until `max` ids or the end of the list.
fn fetch_ids(
    target: &Target,
    max: u64,
    search: Option<SearchBy>,
    timeout: Duration,
) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Page {
        orders: Vec<Entry>,
        next: Option<String>,
    }
    #[derive(Deserialize)]
    struct Entry {
        order_uid: String,
        track_number: String,
        customer_id: String,
    }
    // A search's values, once each (many orders share a customer).
    let mut seen = std::collections::HashSet::new();
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let mut client = Client::new(target.addr(), timeout);
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    while ids.len() < max {
        let limit = (max - ids.len()).min(PAGE_LIMIT);
        let path = match &cursor {
            // Cursors are `<digits>.<order_uid>`: URL-safe as they are.
            Some(c) => format!("/orders?limit={limit}&before={c}"),
            None => format!("/orders?limit={limit}"),
        };
        let mut body = Vec::new();
        let reply = client
            .request(&target.get(&path), Some(&mut body))
            .wrap_err_with(|| format!("GET {path}"))?;
        if reply.status != 200 {
            bail!(
                "GET {path} answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&body)
            );
        }
        let page: Page = serde_json::from_slice(&body)
            .wrap_err_with(|| format!("GET {path}: unexpected body"))?;
        for entry in page.orders {
            let value = match search {
                None if OrderUid::parse(&entry.order_uid).is_ok() => entry.order_uid,
                None => continue,
                Some(SearchBy::TrackNumber) => entry.track_number,
                Some(SearchBy::CustomerId) => entry.customer_id,
            };
            if search.is_none() || seen.insert(value.clone()) {
                ids.push(value);
            }
        }
        match page.next {
            Some(next) if !next.contains(|c: char| c.is_whitespace() || c == '&') => {
                cursor = Some(next)
            }
            _ => break,
        }
    }
    ids.truncate(max);
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_request_percent_encodes_its_value() {
        assert_eq!(request_path(None, "abc-1"), "/order/abc-1");
        assert_eq!(
            request_path(Some(SearchBy::TrackNumber), "WBIL TRACK"),
            "/orders?track_number=WBIL%20TRACK"
        );
        assert_eq!(
            request_path(Some(SearchBy::CustomerId), "a+b&c=Ж"),
            "/orders?customer_id=a%2Bb%26c%3D%D0%96"
        );
        let args = parse_args(&["--search", "customer-id"]);
        assert_eq!(args.search, Some(SearchBy::CustomerId));
        assert_eq!(parse_args(&[]).search, None);
    }

    #[test]
    fn a_rate_of_1000_over_one_second_has_1000_due_times_one_millisecond_apart() {
        let times: Vec<Duration> = (0..)
            .map(|i| due(i, 1000))
            .take_while(|d| *d < Duration::from_secs(1))
            .collect();
        assert_eq!(times.len(), 1000);
        assert_eq!(times[0], Duration::ZERO);
        assert!(times
            .windows(2)
            .all(|w| w[1] - w[0] == Duration::from_millis(1)));
    }

    #[test]
    fn due_times_do_not_drift_at_rates_that_do_not_divide_a_second() {
        assert_eq!(due(3, 3), Duration::from_secs(1));
        assert_eq!(due(7_000, 7), Duration::from_secs(1000));
        assert_eq!(due(1, 3), Duration::from_nanos(333_333_333));
    }

    #[test]
    fn rates_are_a_positive_number_or_max() {
        assert_eq!("max".parse(), Ok(Rate::Max));
        assert_eq!("5000".parse(), Ok(Rate::PerSecond(5000)));
        assert_eq!("5000/s".parse(), Ok(Rate::PerSecond(5000)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }

    #[test]
    fn picks_are_repeatable_and_the_miss_share_follows_the_ratio() {
        let picks: Vec<Pick> = (0..10_000).map(|i| pick(42, i, 0.1, 100, 10)).collect();
        let again: Vec<Pick> = (0..10_000).map(|i| pick(42, i, 0.1, 100, 10)).collect();
        assert_eq!(picks, again);
        let misses = picks.iter().filter(|p| matches!(p, Pick::Miss(_))).count();
        assert!((900..1100).contains(&misses), "{misses} misses in 10,000");
        assert!(picks.iter().all(|p| match p {
            Pick::Hit(n) => *n < 100,
            Pick::Miss(n) => *n < 10,
        }));
        assert!((0..1000).all(|i| matches!(pick(1, i, 0.0, 5, 5), Pick::Hit(_))));
        assert!((0..1000).all(|i| matches!(pick(1, i, 1.0, 5, 5), Pick::Miss(_))));
        assert!((0..1000).all(|i| matches!(pick(1, i, 0.0, 0, 5), Pick::Miss(_))));
    }

    #[test]
    fn a_known_id_needs_a_2xx_and_an_unknown_id_a_404() {
        assert!(is_success(Pick::Hit(0), 200));
        assert!(!is_success(Pick::Hit(0), 404));
        assert!(!is_success(Pick::Hit(0), 503));
        assert!(is_success(Pick::Miss(0), 404));
        assert!(!is_success(Pick::Miss(0), 200));
    }

    #[test]
    fn the_ids_file_skips_blank_lines_and_refuses_ids_that_break_the_rule() {
        assert_eq!(parse_ids("a\n\n  b-1 \n").expect("valid"), vec!["a", "b-1"]);
        let err = parse_ids("a\nbad id\n").expect_err("invalid");
        assert!(err.to_string().starts_with("line 2"), "{err}");
    }

    #[test]
    fn tallies_merge_counts_codes_errors_and_latencies() {
        let mut a = Tally::new();
        a.requests = 2;
        a.successes = 1;
        a.status_codes.insert(200, 1);
        a.error("x".into());
        report::record(&mut a.latencies, Duration::from_micros(100));
        let mut b = Tally::new();
        b.requests = 3;
        b.status_codes.insert(200, 2);
        b.error("x".into());
        b.error("y".into());
        report::record(&mut b.latencies, Duration::from_micros(300));
        a.merge(&b);
        assert_eq!(a.requests, 5);
        assert_eq!(a.status_codes[&200], 3);
        assert_eq!(a.errors["x"], 2);
        assert_eq!(a.errors["y"], 1);
        assert_eq!(a.latencies.len(), 2);
        assert_eq!(a.latencies.max(), 300);
    }

    fn tally(requests: u64, successes: u64, code: u16, latency_us: u64) -> Tally {
        let mut t = Tally::new();
        t.requests = requests;
        t.successes = successes;
        t.status_codes.insert(code, requests);
        if successes < requests {
            t.errors.insert(
                format!("status {code} for a known id"),
                requests - successes,
            );
        }
        for _ in 0..requests {
            report::record(&mut t.latencies, Duration::from_micros(latency_us));
        }
        t
    }

    #[test]
    fn each_connection_counts_in_its_target_and_the_targets_add_up_to_the_totals() {
        // Connections 0 and 2 on the first target, 1 on the second: as `target_of` deals them.
        let tallies = vec![
            (0, tally(10, 10, 200, 100)),
            (1, tally(4, 0, 503, 9_000)),
            (0, tally(6, 6, 200, 300)),
        ];
        let (total, targets) = sum_up(tallies, 2);
        assert_eq!(targets.len(), 2);
        assert_eq!((targets[0].requests, targets[0].successes), (16, 16));
        assert_eq!((targets[1].requests, targets[1].successes), (4, 0));
        assert_eq!(targets[0].status_codes, BTreeMap::from([(200, 16)]));
        assert_eq!(targets[1].status_codes, BTreeMap::from([(503, 4)]));
        assert!(targets[0].errors.is_empty());
        assert_eq!(targets[1].errors["status 503 for a known id"], 4);
        // The slow target's latencies stay its own.
        assert_eq!(targets[0].latencies.max(), 300);
        assert!(targets[1].latencies.min() >= 8_990);
        assert_eq!(
            total.requests,
            targets.iter().map(|t| t.requests).sum::<u64>()
        );
        assert_eq!(total.successes, 16);
        assert_eq!(total.status_codes, BTreeMap::from([(200, 16), (503, 4)]));
        assert_eq!(total.latencies.len(), 20);
    }

    #[test]
    fn a_target_without_requests_is_still_reported_with_zeros() {
        let (total, targets) = sum_up(vec![(0, tally(3, 3, 200, 100))], 2);
        assert_eq!(total.requests, 3);
        assert_eq!(targets[1].requests, 0);
        assert!(targets[1].latencies.is_empty());
    }

    /// `HttpArgs` on a command line of its own.
    fn parse_args(args: &[&str]) -> HttpArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            http: HttpArgs,
        }
        let argv = std::iter::once("bench-http").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv)
            .expect("valid arguments")
            .http
    }

    #[test]
    fn several_urls_are_a_comma_separated_list_or_a_repeated_flag() {
        let one = parse_args(&["--url", "http://127.0.0.1:18081"]);
        assert_eq!(one.url, ["http://127.0.0.1:18081"]);
        let listed = parse_args(&["--url", "http://127.0.0.1:18081,http://127.0.0.1:18082"]);
        let repeated = parse_args(&[
            "--url",
            "http://127.0.0.1:18081",
            "--url=http://127.0.0.1:18082",
        ]);
        assert_eq!(
            listed.url,
            ["http://127.0.0.1:18081", "http://127.0.0.1:18082"]
        );
        assert_eq!(repeated.url, listed.url);
        let both = parse_args(&["--url", "http://a:1,http://b:2", "--url", "http://c:3"]);
        assert_eq!(both.url, ["http://a:1", "http://b:2", "http://c:3"]);
    }

    #[test]
    fn distinct_errors_are_bounded_per_connection() {
        let mut t = Tally::new();
        for n in 0..100 {
            t.error(format!("error {n}"));
        }
        assert_eq!(t.errors.len(), MAX_DISTINCT_ERRORS + 1);
        assert_eq!(t.errors["(other errors)"], 100 - MAX_DISTINCT_ERRORS as u64);
    }
}
