//! The arithmetic and the layout of benchmark reports, as pure functions: rates, ratios,
//! percentiles from an HDR histogram, and Vegeta's text layout, so that each can be checked on
//! made-up numbers without running a benchmark.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::reference::CopyTimed;

/// Largest latency the histograms hold, in microseconds (one hour); larger values are clamped.
pub(crate) const MAX_MICROS: u64 = 3_600_000_000;
/// Width of a report line's label column, then of its `[names]` column (Vegeta's layout).
const LABEL_WIDTH: usize = 14;
const NAMES_WIDTH: usize = 40;

/// A latency histogram in microseconds with 3 significant figures.
pub(crate) fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, MAX_MICROS, 3) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts: this cannot happen.
        Err(e) => unreachable!("histogram bounds rejected: {e}"),
    }
}

/// Records a duration in microseconds, clamped to the histogram's range.
pub(crate) fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.min(MAX_MICROS));
}

/// `count` per second over `over`; 0 for an empty interval.
pub(crate) fn per_second(count: u64, over: Duration) -> f64 {
    let seconds = over.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// `part / whole`; 0 when `whole` is 0.
pub(crate) fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The latency summary of a histogram, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Latencies {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The columns of a latency line, in Vegeta's order.
const LATENCY_HEADER: &str = "[min, mean, 50, 90, 95, 99, 99.9, max]";

impl Latencies {
    /// The values of a latency line, in `LATENCY_HEADER`'s order, each with its unit.
    fn row(&self) -> String {
        [self.min as f64, self.mean, self.p50 as f64, self.p90 as f64]
            .into_iter()
            .chain([self.p95, self.p99, self.p999, self.max].map(|v| v as f64))
            .map(micros)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Reads the summary from a histogram (all zeros when it is empty).
    pub(crate) fn of(h: &Histogram<u64>) -> Latencies {
        if h.is_empty() {
            return Latencies {
                min: 0,
                mean: 0.0,
                p50: 0,
                p90: 0,
                p95: 0,
                p99: 0,
                p999: 0,
                max: 0,
            };
        }
        Latencies {
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// As a JSON object of microseconds.
    pub(crate) fn json(&self) -> Value {
        json!({
            "min": self.min, "mean": round2(self.mean), "p50": self.p50, "p90": self.p90,
            "p95": self.p95, "p99": self.p99, "p99_9": self.p999, "max": self.max,
        })
    }
}

/// A duration in microseconds with a unit a person reads at a glance: `812µs`, `1.234ms`, `2.500s`.
pub(crate) fn micros(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 1_000_000.0 {
        format!("{:.3}ms", us / 1_000.0)
    } else {
        format!("{:.3}s", us / 1_000_000.0)
    }
}

/// A `Duration` the same way as [`micros`].
pub(crate) fn duration(d: Duration) -> String {
    micros(d.as_secs_f64() * 1_000_000.0)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One report line: label, `[names]`, values.
pub(crate) fn line(out: &mut String, label: &str, names: &str, values: &str) {
    let _ = writeln!(out, "{label:<LABEL_WIDTH$}{names:<NAMES_WIDTH$}{values}");
}

/// Everything `bench http` counted, merged over its connections.
#[derive(Clone, Debug)]
pub(crate) struct HttpSummary {
    /// Requests sent (including those that failed).
    pub requests: u64,
    /// Requests that got the answer their id called for (see `http::is_success`).
    pub successes: u64,
    /// From the start to the last request sent.
    pub attack: Duration,
    /// From the last request sent to the last response received.
    pub wait: Duration,
    /// Latencies in microseconds.
    pub latencies: Histogram<u64>,
    /// Open loop: how late requests were sent after their due time, in microseconds. It is part
    /// of their latency; a large one means every connection was busy (or this client starved).
    pub send_lag: Option<Histogram<u64>>,
    /// Response body bytes.
    pub bytes_in: u64,
    /// Responses by status code; requests without a response count as code 0 (as in Vegeta).
    pub status_codes: BTreeMap<u16, u64>,
    /// Distinct errors and how often each happened.
    pub errors: BTreeMap<String, u64>,
    /// The same counts per target, in `--url` order; they add up to the totals above.
    pub targets: Vec<TargetSummary>,
}

/// What one target of `bench http` got: its share of the totals, so that a slow or failing
/// replica shows on its own line instead of disappearing into the average.
#[derive(Clone, Debug)]
pub(crate) struct TargetSummary {
    /// The target's base URL.
    pub url: String,
    /// Connections dealt to it.
    pub connections: usize,
    /// Requests its connections sent, and how many of them succeeded.
    pub requests: u64,
    pub successes: u64,
    /// Latencies in microseconds.
    pub latencies: Histogram<u64>,
    /// Responses by status code (0: no response).
    pub status_codes: BTreeMap<u16, u64>,
    /// Distinct errors and how often each happened.
    pub errors: BTreeMap<String, u64>,
}

impl TargetSummary {
    /// Share of its requests that succeeded.
    pub(crate) fn success_ratio(&self) -> f64 {
        ratio(self.successes, self.requests)
    }

    /// Its lines of the text report; `n` counts from 1.
    fn text(&self, n: usize, out: &mut String) {
        line(
            out,
            &format!("Target {n}"),
            "[url, connections]",
            &format!("{}, {}", self.url, self.connections),
        );
        line(
            out,
            "  Requests",
            "[total, successes, ratio]",
            &format!(
                "{}, {}, {:.2}%",
                self.requests,
                self.successes,
                self.success_ratio() * 100.0
            ),
        );
        let l = Latencies::of(&self.latencies);
        let values = [l.p50, l.p99, l.max].map(|v| micros(v as f64));
        line(out, "  Latencies", "[50, 99, max]", &values.join(", "));
        line(
            out,
            "  Codes",
            "[code:count]",
            &codes_text(&self.status_codes),
        );
        if !self.errors.is_empty() {
            let errors: Vec<String> = self
                .errors
                .iter()
                .map(|(error, count)| format!("{error} (×{count})"))
                .collect();
            line(out, "  Errors", "[error (×count)]", &errors.join("; "));
        }
    }

    /// The same numbers as a JSON object.
    fn json(&self) -> Value {
        json!({
            "url": self.url,
            "connections": self.connections,
            "requests": self.requests,
            "successes": self.successes,
            "success_ratio": self.success_ratio(),
            "latencies_us": Latencies::of(&self.latencies).json(),
            "status_codes": codes_json(&self.status_codes),
            "errors": errors_json(&self.errors),
        })
    }
}

/// Status codes as `200:900  404:90`.
fn codes_text(codes: &BTreeMap<u16, u64>) -> String {
    let codes: Vec<String> = codes
        .iter()
        .map(|(code, count)| format!("{code}:{count}"))
        .collect();
    codes.join("  ")
}

/// Status codes as a JSON object keyed by the code.
fn codes_json(codes: &BTreeMap<u16, u64>) -> Value {
    let codes: serde_json::Map<String, Value> = codes
        .iter()
        .map(|(code, count)| (code.to_string(), json!(count)))
        .collect();
    Value::Object(codes)
}

/// An error set in the text layout: its header, then a line per error with its count.
fn error_set_text<'a>(out: &mut String, errors: impl IntoIterator<Item = (&'a str, u64)>) {
    out.push_str("Error Set:\n");
    for (error, count) in errors {
        let _ = writeln!(out, "{error} (×{count})");
    }
}

/// An error set as a JSON array of `{error, count}`.
fn errors_json(errors: &BTreeMap<String, u64>) -> Value {
    errors
        .iter()
        .map(|(error, count)| json!({ "error": error, "count": count }))
        .collect()
}

impl HttpSummary {
    /// attack + wait.
    pub(crate) fn total(&self) -> Duration {
        self.attack + self.wait
    }

    /// Requests sent per second of attack.
    pub(crate) fn rate(&self) -> f64 {
        per_second(self.requests, self.attack)
    }

    /// Successful requests per second of the whole run.
    pub(crate) fn throughput(&self) -> f64 {
        per_second(self.successes, self.total())
    }

    /// Share of requests that succeeded.
    pub(crate) fn success_ratio(&self) -> f64 {
        ratio(self.successes, self.requests)
    }

    /// Mean body size.
    pub(crate) fn mean_bytes_in(&self) -> f64 {
        ratio(self.bytes_in, self.requests)
    }

    /// Vegeta's text layout.
    pub(crate) fn text(&self) -> String {
        let l = Latencies::of(&self.latencies);
        let mut out = String::new();
        line(
            &mut out,
            "Requests",
            "[total, rate, throughput]",
            &format!(
                "{}, {:.2}, {:.2}",
                self.requests,
                self.rate(),
                self.throughput()
            ),
        );
        line(
            &mut out,
            "Duration",
            "[total, attack, wait]",
            &format!(
                "{}, {}, {}",
                duration(self.total()),
                duration(self.attack),
                duration(self.wait)
            ),
        );
        line(&mut out, "Latencies", LATENCY_HEADER, &l.row());
        if let Some(lag) = &self.send_lag {
            let l = Latencies::of(lag);
            let values = [l.mean, l.p50 as f64, l.p99 as f64, l.max as f64].map(micros);
            line(
                &mut out,
                "Send lag",
                "[mean, 50, 99, max]",
                &values.join(", "),
            );
        }
        line(
            &mut out,
            "Bytes In",
            "[total, mean]",
            &format!("{}, {:.2}", self.bytes_in, self.mean_bytes_in()),
        );
        line(
            &mut out,
            "Success",
            "[ratio]",
            &format!("{:.2}%", self.success_ratio() * 100.0),
        );
        line(
            &mut out,
            "Status Codes",
            "[code:count]",
            &codes_text(&self.status_codes),
        );
        error_set_text(&mut out, self.errors.iter().map(|(e, &n)| (e.as_str(), n)));
        // With one target the breakdown would only repeat the totals: the report stays as it was.
        if self.targets.len() > 1 {
            for (n, target) in self.targets.iter().enumerate() {
                target.text(n + 1, &mut out);
            }
        }
        out
    }

    /// The same numbers as one JSON object (latencies in microseconds, durations in seconds).
    /// `targets` is there for one target too, so that a reader needs no special case.
    pub(crate) fn json(&self) -> Value {
        let targets: Vec<Value> = self.targets.iter().map(TargetSummary::json).collect();
        json!({
            "requests": self.requests,
            "rate": round2(self.rate()),
            "throughput": round2(self.throughput()),
            "duration_s": { "total": self.total().as_secs_f64(), "attack": self.attack.as_secs_f64(), "wait": self.wait.as_secs_f64() },
            "latencies_us": Latencies::of(&self.latencies).json(),
            "send_lag_us": self.send_lag.as_ref().map(|h| Latencies::of(h).json()),
            "bytes_in": { "total": self.bytes_in, "mean": round2(self.mean_bytes_in()) },
            "success_ratio": self.success_ratio(),
            "status_codes": codes_json(&self.status_codes),
            "errors": errors_json(&self.errors),
            "targets": targets,
        })
    }
}

/// Everything `bench ingest` counted.
#[derive(Clone, Debug)]
pub(crate) struct IngestSummary {
    /// `live` or `backlog`.
    pub mode: &'static str,
    /// The seed of the generated orders.
    pub seed: u64,
    /// Messages published, by kind.
    pub messages: u64,
    pub valid: u64,
    pub invalid: u64,
    pub duplicates: u64,
    /// Publish acks received, of which repeats the server dropped (same `Nats-Msg-Id`).
    pub acked: u64,
    pub server_duplicates: u64,
    /// Messages that were not acknowledged.
    pub failed: u64,
    /// Messages sent more than once (a publish or ack failed in a way that can pass).
    pub retried: u64,
    /// From the first publish to the last ack.
    pub publish_time: Duration,
    /// Live: from the first publish to the last valid order visible over HTTP.
    pub end_to_end: Option<Duration>,
    /// Backlog: from starting the service to its first `/readyz` 200.
    pub spawn_to_ready: Option<Duration>,
    /// Backlog: from ready to the last valid order visible over HTTP.
    pub drain: Option<Duration>,
    /// Backlog: messages waiting for the service's consumer when it started.
    pub pending_at_start: Option<u64>,
    /// Watched orders, and how many became visible.
    pub sampled: u64,
    pub seen: u64,
    pub missing: u64,
    /// Live: publish ack to first 200, in microseconds.
    pub latencies: Histogram<u64>,
    /// Distinct errors and how often each happened.
    pub errors: BTreeMap<String, u64>,
    /// Backlog: where the started service logged.
    pub service_log: Option<PathBuf>,
    /// Backlog with `--reference-copy`: PostgreSQL's own COPY of the rows this run stored.
    pub reference_copy: Option<CopyTimed>,
}

impl IngestSummary {
    /// Adds an error to the error set.
    pub(crate) fn error(&mut self, text: String) {
        *self.errors.entry(text).or_default() += 1;
    }

    /// Acknowledged messages per second of publishing.
    pub(crate) fn publish_rate(&self) -> f64 {
        per_second(self.acked, self.publish_time)
    }

    /// Live: valid orders per second from the first publish to the last one visible.
    pub(crate) fn end_to_end_rate(&self) -> Option<f64> {
        self.end_to_end.map(|d| per_second(self.valid, d))
    }

    /// Backlog: valid orders per second of draining.
    pub(crate) fn drain_orders_rate(&self) -> Option<f64> {
        self.drain.map(|d| per_second(self.valid, d))
    }

    /// Backlog: pending messages (all kinds, earlier ones too) per second of draining.
    pub(crate) fn drain_messages_rate(&self) -> Option<f64> {
        Some(per_second(self.pending_at_start?, self.drain?))
    }

    /// Backlog with `--reference-copy`: rows per second of PostgreSQL's own COPY.
    pub(crate) fn reference_copy_rate(&self) -> Option<f64> {
        self.reference_copy
            .map(|copy| per_second(copy.rows, copy.time))
    }

    /// Backlog with `--reference-copy`: the drain's orders per second over the COPY's rows per
    /// second, the figure the ingest target is set in.
    pub(crate) fn drain_to_copy(&self) -> Option<f64> {
        let copy = self.reference_copy_rate()?;
        (copy > 0.0).then(|| self.drain_orders_rate().unwrap_or(0.0) / copy)
    }

    /// The report in Vegeta's text layout.
    pub(crate) fn text(&self) -> String {
        let or_na = |v: Option<String>| v.unwrap_or_else(|| "n/a".to_owned());
        let mut out = String::new();
        line(
            &mut out,
            "Run",
            "[mode, seed]",
            &format!("{}, {}", self.mode, self.seed),
        );
        line(
            &mut out,
            "Messages",
            "[total, valid, invalid, duplicates]",
            &format!(
                "{}, {}, {}, {}",
                self.messages, self.valid, self.invalid, self.duplicates
            ),
        );
        line(
            &mut out,
            "Publish",
            "[acked, repeats, failed, time, rate]",
            &format!(
                "{}, {}, {}, {}, {:.2}/s",
                self.acked,
                self.server_duplicates,
                self.failed,
                duration(self.publish_time),
                self.publish_rate()
            ),
        );
        if self.retried > 0 {
            line(&mut out, "Retried", "[messages]", &self.retried.to_string());
        }
        if self.mode == "live" {
            line(
                &mut out,
                "End to end",
                "[time, valid orders/s]",
                &or_na(
                    self.end_to_end
                        .zip(self.end_to_end_rate())
                        .map(|(d, r)| format!("{}, {r:.2}", duration(d))),
                ),
            );
        } else {
            line(
                &mut out,
                "Start",
                "[spawn to ready]",
                &or_na(self.spawn_to_ready.map(duration)),
            );
            let drain = self.drain.map(|d| {
                format!(
                    "{}, {}, {:.2}, {:.2}",
                    self.pending_at_start.unwrap_or(0),
                    duration(d),
                    self.drain_orders_rate().unwrap_or(0.0),
                    self.drain_messages_rate().unwrap_or(0.0)
                )
            });
            line(
                &mut out,
                "Drain",
                "[pending, time, orders/s, messages/s]",
                &or_na(drain),
            );
            if let Some(copy) = self.reference_copy {
                line(
                    &mut out,
                    "COPY",
                    "[rows, time, rows/s, drain ÷ COPY]",
                    &format!(
                        "{}, {}, {:.2}, {:.3}",
                        copy.rows,
                        duration(copy.time),
                        self.reference_copy_rate().unwrap_or(0.0),
                        self.drain_to_copy().unwrap_or(0.0)
                    ),
                );
            }
        }
        line(
            &mut out,
            "Visible",
            "[watched, seen, missing]",
            &format!("{}, {}, {}", self.sampled, self.seen, self.missing),
        );
        if self.mode == "live" {
            let l = Latencies::of(&self.latencies);
            line(&mut out, "Ack→visible", LATENCY_HEADER, &l.row());
        }
        if let Some(log) = &self.service_log {
            line(
                &mut out,
                "Service log",
                "[path]",
                &log.display().to_string(),
            );
        }
        error_set_text(&mut out, self.errors.iter().map(|(e, &n)| (e.as_str(), n)));
        out
    }

    /// The same numbers as one JSON object (latencies in microseconds, durations in seconds).
    pub(crate) fn json(&self) -> Value {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let errors = errors_json(&self.errors);
        let mut value = json!({
            "mode": self.mode,
            "seed": self.seed,
            "messages": { "total": self.messages, "valid": self.valid, "invalid": self.invalid, "duplicates": self.duplicates },
            "publish": {
                "acked": self.acked, "dropped_repeats": self.server_duplicates, "failed": self.failed,
                "retried": self.retried,
                "time_s": self.publish_time.as_secs_f64(), "rate": round2(self.publish_rate()),
            },
            "visible": { "watched": self.sampled, "seen": self.seen, "missing": self.missing },
            "errors": errors,
        });
        if self.mode == "live" {
            value["end_to_end"] = json!({
                "time_s": secs(self.end_to_end),
                "orders_per_s": self.end_to_end_rate().map(round2),
            });
            value["ack_to_visible_us"] = Latencies::of(&self.latencies).json();
        } else {
            value["spawn_to_ready_s"] = json!(secs(self.spawn_to_ready));
            value["drain"] = json!({
                "pending": self.pending_at_start,
                "time_s": secs(self.drain),
                "orders_per_s": self.drain_orders_rate().map(round2),
                "messages_per_s": self.drain_messages_rate().map(round2),
            });
            value["service_log"] =
                json!(self.service_log.as_ref().map(|p| p.display().to_string()));
            if let Some(copy) = self.reference_copy {
                value["reference_copy"] = json!({
                    "rows": copy.rows,
                    "time_s": copy.time.as_secs_f64(),
                    "rows_per_s": self.reference_copy_rate().map(round2),
                    "drain_to_copy": self.drain_to_copy().map(|r| (r * 1000.0).round() / 1000.0),
                });
            }
        }
        value
    }
}

/// One step of `bench ingest --mode live --rate R,...`: messages published open loop at `rate`.
pub(crate) struct RateStep {
    /// Messages per second asked for.
    pub rate: f64,
    /// The step's seed (its ids are `bench-<seed>-<n>`).
    pub seed: u64,
    /// Publish acks received, and messages that were never acknowledged.
    pub acked: u64,
    pub failed: u64,
    /// From the first message's due time to the last ack.
    pub publish_time: Duration,
    /// Watched orders, and how many every target served.
    pub sampled: u64,
    pub seen: u64,
    /// From each watched message's due time until every target served it, in microseconds.
    pub latencies: Histogram<u64>,
    /// Messages pending or unacked for the consumer once the last publish was acked: a backlog
    /// that grows from step to step is a rate the service does not keep up with.
    pub backlog_at_end: Option<u64>,
    /// Distinct errors and how often each happened.
    pub errors: BTreeMap<String, u64>,
}

impl RateStep {
    /// Acknowledged messages per second actually published.
    pub(crate) fn sent_rate(&self) -> f64 {
        per_second(self.acked, self.publish_time)
    }
}

/// The latency-vs-load curve of a `--rate` run, one block per step.
pub(crate) fn rate_curve_text(steps: &[RateStep], urls: &[&str]) -> String {
    let mut out = String::new();
    line(
        &mut out,
        "Run",
        "[mode, URLs]",
        &format!("live at fixed rates, {}", urls.join(" ")),
    );
    for step in steps {
        let backlog = step
            .backlog_at_end
            .map_or_else(|| "n/a".to_owned(), |b| b.to_string());
        line(
            &mut out,
            &format!("Rate {}/s", step.rate),
            "[sent/s, failed, seen/watched, backlog]",
            &format!(
                "{:.2}, {}, {}/{}, {backlog}",
                step.sent_rate(),
                step.failed,
                step.seen,
                step.sampled
            ),
        );
        let l = Latencies::of(&step.latencies);
        line(&mut out, "  Due→visible", LATENCY_HEADER, &l.row());
    }
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for step in steps {
        for (error, count) in &step.errors {
            *errors.entry(error).or_default() += count;
        }
    }
    error_set_text(&mut out, errors);
    out
}

/// The same curve as one JSON object (latencies in microseconds).
pub(crate) fn rate_curve_json(steps: &[RateStep], urls: &[&str]) -> Value {
    let steps: Vec<Value> = steps
        .iter()
        .map(|step| {
            json!({
                "rate": step.rate,
                "seed": step.seed,
                "acked": step.acked,
                "failed": step.failed,
                "publish_time_s": step.publish_time.as_secs_f64(),
                "sent_per_s": round2(step.sent_rate()),
                "watched": step.sampled,
                "seen": step.seen,
                "backlog_at_end": step.backlog_at_end,
                "due_to_visible_us": Latencies::of(&step.latencies).json(),
                "errors": errors_json(&step.errors),
            })
        })
        .collect();
    json!({ "mode": "live", "urls": urls, "steps": steps })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = histogram();
        for v in values {
            h.record(v).expect("in range");
        }
        h
    }

    #[test]
    fn percentiles_of_one_to_a_thousand_microseconds_are_exact() {
        let l = Latencies::of(&histogram_of(1..=1000));
        assert_eq!(
            (l.min, l.p50, l.p90, l.p95, l.p99, l.p999, l.max),
            (1, 500, 900, 950, 990, 999, 1000)
        );
        assert!((l.mean - 500.5).abs() < 1e-9);
    }

    #[test]
    fn large_latencies_keep_three_significant_figures() {
        let l = Latencies::of(&histogram_of([1_234_567, 2_000_000]));
        assert!(l.min.abs_diff(1_234_567) * 1000 <= 1_234_567, "{}", l.min);
        assert!(l.max.abs_diff(2_000_000) * 1000 <= 2_000_000, "{}", l.max);
    }

    #[test]
    fn one_slow_request_in_a_thousand_shows_in_p99_9_but_not_p99() {
        let l = Latencies::of(&histogram_of((0..999).map(|_| 100).chain([50_000])));
        assert_eq!(l.p99, 100);
        assert!(l.p999 >= 100 && l.max >= 49_950, "{l:?}");
    }

    #[test]
    fn an_empty_histogram_reports_zeros() {
        assert_eq!(Latencies::of(&histogram()).max, 0);
    }

    #[test]
    fn recording_clamps_to_the_histogram_range() {
        let mut h = histogram();
        record(&mut h, Duration::from_secs(100_000));
        assert!(h.max() >= MAX_MICROS);
    }

    #[test]
    fn rates_and_ratios_guard_against_zero() {
        assert_eq!(per_second(1000, Duration::from_millis(500)), 2000.0);
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
        assert_eq!(ratio(1, 4), 0.25);
        assert_eq!(ratio(0, 0), 0.0);
    }

    #[test]
    fn durations_are_printed_with_a_unit_that_fits() {
        assert_eq!(micros(812.0), "812µs");
        assert_eq!(micros(1234.0), "1.234ms");
        assert_eq!(micros(2_500_000.0), "2.500s");
        assert_eq!(duration(Duration::from_micros(999)), "999µs");
        assert_eq!(duration(Duration::from_millis(30_000)), "30.000s");
    }

    fn summary() -> HttpSummary {
        HttpSummary {
            requests: 1000,
            successes: 990,
            attack: Duration::from_secs(1),
            wait: Duration::from_millis(100),
            latencies: histogram_of(1..=1000),
            send_lag: Some(histogram_of([10, 20, 30])),
            bytes_in: 850_000,
            status_codes: BTreeMap::from([(0, 10), (200, 900), (404, 90)]),
            errors: BTreeMap::from([("connect: Connection refused (os error 111)".to_owned(), 10)]),
            targets: vec![target(
                "http://127.0.0.1:8080",
                64,
                (1000, 990),
                1..=1000,
                &[(0, 10), (200, 900), (404, 90)],
            )],
        }
    }

    fn target(
        url: &str,
        connections: usize,
        (requests, successes): (u64, u64),
        latencies: impl IntoIterator<Item = u64>,
        codes: &[(u16, u64)],
    ) -> TargetSummary {
        let errors = codes
            .iter()
            .filter(|(code, _)| *code == 0)
            .map(|(_, n)| ("connect: Connection refused (os error 111)".to_owned(), *n))
            .collect();
        TargetSummary {
            url: url.to_owned(),
            connections,
            requests,
            successes,
            latencies: histogram_of(latencies),
            status_codes: codes.iter().copied().collect(),
            errors,
        }
    }

    /// Two replicas: a healthy one, and one that is 5 times slower and refused some connections.
    /// (Latencies below 2048 µs, which the histogram holds exactly.)
    fn two_targets() -> HttpSummary {
        HttpSummary {
            targets: vec![
                target(
                    "http://127.0.0.1:18081",
                    32,
                    (600, 600),
                    1..=600,
                    &[(200, 540), (404, 60)],
                ),
                target(
                    "http://127.0.0.1:18082",
                    32,
                    (400, 390),
                    (1..=400).map(|us| us * 5),
                    &[(0, 10), (200, 360), (404, 30)],
                ),
            ],
            ..summary()
        }
    }

    #[test]
    fn the_http_numbers_follow_the_documented_rules() {
        let s = summary();
        assert_eq!(s.total(), Duration::from_millis(1100));
        assert_eq!(s.rate(), 1000.0);
        assert!((s.throughput() - 900.0).abs() < 1e-9);
        assert_eq!(s.success_ratio(), 0.99);
        assert_eq!(s.mean_bytes_in(), 850.0);
    }

    #[test]
    fn the_text_report_has_vegetas_layout() {
        let expected = "\
Requests      [total, rate, throughput]               1000, 1000.00, 900.00
Duration      [total, attack, wait]                   1.100s, 1.000s, 100.000ms
Latencies     [min, mean, 50, 90, 95, 99, 99.9, max]  1µs, 500µs, 500µs, 900µs, 950µs, 990µs, 999µs, 1.000ms
Send lag      [mean, 50, 99, max]                     20µs, 20µs, 30µs, 30µs
Bytes In      [total, mean]                           850000, 850.00
Success       [ratio]                                 99.00%
Status Codes  [code:count]                            0:10  200:900  404:90
Error Set:
connect: Connection refused (os error 111) (×10)
";
        assert_eq!(summary().text(), expected);
    }

    #[test]
    fn the_json_report_has_the_same_numbers() {
        let j = summary().json();
        assert_eq!(j["requests"], 1000);
        assert_eq!(j["rate"], 1000.0);
        assert_eq!(j["throughput"], 900.0);
        assert_eq!(j["latencies_us"]["p99"], 990);
        assert_eq!(j["latencies_us"]["p99_9"], 999);
        assert_eq!(j["status_codes"]["404"], 90);
        assert_eq!(j["success_ratio"], 0.99);
        assert_eq!(j["errors"][0]["count"], 10);
        assert_eq!(j["send_lag_us"]["max"], 30);
    }

    #[test]
    fn with_several_targets_the_text_report_ends_with_a_block_per_target() {
        let text = two_targets().text();
        let (totals, breakdown) = text.split_once("Target 1").expect("a block per target");
        assert_eq!(
            totals,
            summary().text(),
            "the totals are laid out as before"
        );
        let expected = "\
Target 1      [url, connections]                      http://127.0.0.1:18081, 32
  Requests    [total, successes, ratio]               600, 600, 100.00%
  Latencies   [50, 99, max]                           300µs, 594µs, 600µs
  Codes       [code:count]                            200:540  404:60
Target 2      [url, connections]                      http://127.0.0.1:18082, 32
  Requests    [total, successes, ratio]               400, 390, 97.50%
  Latencies   [50, 99, max]                           1.000ms, 1.980ms, 2.000ms
  Codes       [code:count]                            0:10  200:360  404:30
  Errors      [error (×count)]                        connect: Connection refused (os error 111) (×10)
";
        assert_eq!(format!("Target 1{breakdown}"), expected);
    }

    #[test]
    fn the_json_report_lists_every_target_with_its_own_numbers() {
        let j = two_targets().json();
        let targets = j["targets"].as_array().expect("an array");
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0]["url"], "http://127.0.0.1:18081");
        assert_eq!(targets[0]["connections"], 32);
        assert_eq!(targets[0]["requests"], 600);
        assert_eq!(targets[0]["success_ratio"], 1.0);
        assert_eq!(targets[0]["errors"], json!([]));
        assert_eq!(targets[1]["successes"], 390);
        assert_eq!(targets[1]["latencies_us"]["p99"], 1980);
        assert_eq!(targets[1]["status_codes"]["0"], 10);
        assert_eq!(targets[1]["errors"][0]["count"], 10);
        // One target: the same `targets` array, with the totals' numbers.
        assert_eq!(summary().json()["targets"][0]["requests"], 1000);
    }

    fn ingest(mode: &'static str) -> IngestSummary {
        IngestSummary {
            mode,
            seed: 7,
            messages: 1000,
            valid: 900,
            invalid: 50,
            duplicates: 50,
            acked: 1000,
            server_duplicates: 0,
            failed: 0,
            retried: 0,
            publish_time: Duration::from_millis(250),
            end_to_end: Some(Duration::from_millis(500)),
            spawn_to_ready: Some(Duration::from_millis(300)),
            drain: Some(Duration::from_millis(100)),
            pending_at_start: Some(1000),
            sampled: 10,
            seen: 10,
            missing: 0,
            latencies: histogram_of([1000, 1500, 2000]),
            errors: BTreeMap::new(),
            service_log: Some(PathBuf::from("/tmp/serve.log")),
            reference_copy: None,
        }
    }

    #[test]
    fn the_backlog_report_sets_the_drain_beside_the_reference_copy() {
        // 900 orders drained in 100 ms (9,000/s); COPY took 900 rows in 75 ms (12,000/s).
        let s = IngestSummary {
            reference_copy: Some(CopyTimed {
                rows: 900,
                time: Duration::from_millis(75),
            }),
            ..ingest("backlog")
        };
        assert_eq!(s.reference_copy_rate(), Some(12_000.0));
        assert_eq!(s.drain_to_copy(), Some(0.75));
        let text = s.text();
        assert!(
            text.contains("COPY          [rows, time, rows/s, drain ÷ COPY]      900, 75.000ms, 12000.00, 0.750\n"),
            "{text}"
        );
        let j = s.json();
        assert_eq!(j["reference_copy"]["rows_per_s"], 12_000.0);
        assert_eq!(j["reference_copy"]["drain_to_copy"], 0.75);
        assert!(!ingest("backlog").text().contains("COPY"));
        assert!(ingest("backlog").json().get("reference_copy").is_none());
    }

    #[test]
    fn ingest_rates_count_valid_orders_and_pending_messages() {
        let s = ingest("backlog");
        assert_eq!(s.publish_rate(), 4000.0);
        assert_eq!(s.end_to_end_rate(), Some(1800.0));
        assert_eq!(s.drain_orders_rate(), Some(9000.0));
        assert_eq!(s.drain_messages_rate(), Some(10_000.0));
        let unfinished = IngestSummary {
            drain: None,
            end_to_end: None,
            ..s
        };
        assert_eq!(unfinished.drain_orders_rate(), None);
        assert_eq!(unfinished.end_to_end_rate(), None);
    }

    #[test]
    fn the_live_ingest_report_shows_end_to_end_and_latencies() {
        let text = ingest("live").text();
        assert!(
            text.contains(
                "End to end    [time, valid orders/s]                  500.000ms, 1800.00\n"
            ),
            "{text}"
        );
        assert!(text.contains("Ack→visible   [min, mean, 50, 90, 95, 99, 99.9, max]  1.000ms, 1.500ms, 1.500ms, 2.000ms, 2.000ms, 2.000ms, 2.000ms, 2.000ms\n"), "{text}");
        assert!(!text.contains("Drain"), "{text}");
        assert!(!text.contains("Retried"), "{text}");
        let j = ingest("live").json();
        assert_eq!(j["end_to_end"]["orders_per_s"], 1800.0);
        assert_eq!(j["ack_to_visible_us"]["p50"], 1500);
    }

    #[test]
    fn the_backlog_ingest_report_shows_start_and_drain() {
        let text = ingest("backlog").text();
        assert!(
            text.contains("Start         [spawn to ready]                        300.000ms\n"),
            "{text}"
        );
        assert!(text.contains("Drain         [pending, time, orders/s, messages/s]   1000, 100.000ms, 9000.00, 10000.00\n"), "{text}");
        assert!(!text.contains("Ack→visible"), "{text}");
        let j = ingest("backlog").json();
        assert_eq!(j["drain"]["orders_per_s"], 9000.0);
        assert_eq!(j["spawn_to_ready_s"], 0.3);
    }

    fn step(rate: f64, backlog: u64, latencies: &[u64]) -> RateStep {
        RateStep {
            rate,
            seed: 40,
            acked: 10_000,
            failed: 0,
            publish_time: Duration::from_secs(2),
            sampled: 100,
            seen: 100,
            latencies: histogram_of(latencies.iter().copied()),
            backlog_at_end: Some(backlog),
            errors: BTreeMap::new(),
        }
    }

    #[test]
    fn the_rate_curve_has_a_block_per_step_with_latencies_from_the_due_time() {
        let mut slow = step(10_000.0, 4_000, &[2_000, 150_000, 900_000]);
        slow.errors.insert("watching: timed out".into(), 2);
        let steps = [step(5_000.0, 0, &[1_000, 2_000, 3_000]), slow];
        let text = rate_curve_text(&steps, &["http://a", "http://b"]);
        assert!(text.starts_with("Run           [mode, URLs]                            live at fixed rates, http://a http://b\n"), "{text}");
        assert!(
            text.contains(
                "Rate 5000/s   [sent/s, failed, seen/watched, backlog] 5000.00, 0, 100/100, 0\n"
            ),
            "{text}"
        );
        assert!(text.contains("  Due→visible [min, mean, 50, 90, 95, 99, 99.9, max]  1.000ms, 2.000ms, 2.000ms, 3.00"), "{text}");
        assert!(
            text.contains(
                "Rate 10000/s  [sent/s, failed, seen/watched, backlog] 5000.00, 0, 100/100, 4000\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("Error Set:\nwatching: timed out (×2)\n"),
            "{text}"
        );
        let j = rate_curve_json(&steps, &["http://a"]);
        assert_eq!(j["steps"][1]["backlog_at_end"], 4000);
        assert_eq!(
            j["steps"][1]["due_to_visible_us"]["max"]
                .as_u64()
                .map(|m| m.abs_diff(900_000) < 1_000),
            Some(true)
        );
        assert_eq!(j["steps"][0]["sent_per_s"], 5000.0);
        assert_eq!(j["urls"][0], "http://a");
    }

    #[test]
    fn the_ingest_report_shows_retries_when_there_were_some() {
        let s = IngestSummary {
            retried: 12,
            ..ingest("live")
        };
        let text = s.text();
        assert!(
            text.contains("Retried       [messages]                              12\n"),
            "{text}"
        );
        assert_eq!(s.json()["publish"]["retried"], 12);
    }
}
