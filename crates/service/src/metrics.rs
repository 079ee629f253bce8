//! Prometheus metrics (`GET /metrics`): what ingest did with every message, how batches commit,
//! how far the consumer lags, what the cache holds, and how HTTP answers.
//!
//! Written by the ingest thread and the HTTP workers (atomics, no locks on the hot path but the
//! label lookup), read by whoever scrapes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};
use std::sync::atomic::AtomicU64;

use crate::cache::Cache;
use crate::health::Health;

/// Labels of `ordersvc_messages_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MessageLabels {
    /// `stored`, `duplicate` or `rejected`.
    pub(crate) outcome: &'static str,
    /// For rejections, why (a `RejectKind` label, `conflicting_duplicate` or `store_error`); else empty.
    pub(crate) reason: &'static str,
}

/// Labels of the HTTP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    /// The route, not the path (ids would make the label set unbounded).
    pub(crate) route: &'static str,
    /// The status code sent.
    pub(crate) status: u16,
}

/// Labels of the HTTP latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    /// The route.
    pub(crate) route: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
/// A gauge of a fraction (seconds, a Unix time).
pub(crate) type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric of the service.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Messages by outcome.
    pub(crate) messages: Family<MessageLabels, Counter>,
    /// Messages per committed batch.
    pub(crate) batch_size: Histogram,
    /// Seconds from the start of a batch's transaction to its commit.
    pub(crate) commit_seconds: Histogram,
    /// Failed attempts to commit a batch (each failed batch is kept and retried in place).
    pub(crate) commit_failures: Counter,
    /// Messages the consumer still has to deliver, polled from the consumer's own state
    /// (`lag`), so that it rises while ingest is stalled.
    pub(crate) consumer_pending: Gauge,
    /// Messages delivered to the consumer and not yet acked, polled likewise.
    pub(crate) consumer_ack_pending: Gauge,
    /// Changelog messages this replica has not applied yet, polled.
    pub(crate) changelog_lag_messages: Gauge,
    /// How long ago the oldest changelog message this replica has not applied was published
    /// (0 when it has applied them all), polled.
    pub(crate) changelog_lag_seconds: FloatGauge,
    /// Unix time of the last batch committed (0 before the first).
    pub(crate) last_commit_timestamp: FloatGauge,
    /// Batches pulled and not yet acked or handed back (ingest's pipeline holds up to three).
    pub(crate) batches_in_flight: Gauge,
    /// Orders loaded into the cache by the restore so far.
    pub(crate) restored_orders: Gauge,
    cache_orders: Gauge,
    cache_bytes: Gauge,
    ready: Gauge,
    restoring: Gauge,
    /// HTTP responses by route and status.
    pub(crate) http_requests: Family<HttpLabels, Counter>,
    /// HTTP handling time by route (from the request being read to the response being ready).
    pub(crate) http_seconds: HistogramFamily<RouteLabels>,
    /// Connections open now on the public listener…
    pub(crate) http_connections: Gauge,
    /// …and its cap (`--http-max-connections`, or less if the open-file limit says so).
    pub(crate) http_max_connections: Gauge,
    /// Connections open now on the admin listener, and its cap.
    pub(crate) admin_connections: Gauge,
    pub(crate) admin_max_connections: Gauge,
    /// Connections answered 503 and closed because `--http-max-connections` were already open.
    pub(crate) http_connections_refused: Counter,
    /// Connections closed because they sent or took nothing for `--http-timeout`, or did not
    /// send a request head within it.
    pub(crate) http_connections_timed_out: Counter,
}

fn latency_histogram() -> Histogram {
    // 10 µs to ~5 s.
    Histogram::new(exponential_buckets(0.000_01, 2.5, 15))
}

/// Registers `metric` under `name` and hands it back: the registry keeps one handle for the
/// exposition, `Metrics` the other for its writers.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// The cache counts its own hits, misses and evictions (see `cache::Stats`): they are only
/// registered here.
fn register_cache_counters(registry: &mut Registry, cache: &Cache) {
    for (name, help, counter) in [
        (
            "cache_hits",
            "Order lookups answered from memory",
            &cache.stats.hits,
        ),
        (
            "cache_misses",
            "Order lookups that went to PostgreSQL (only with --cache-max-bytes)",
            &cache.stats.misses,
        ),
        (
            "cache_evictions",
            "Orders dropped from memory to stay within --cache-max-bytes",
            &cache.stats.evictions,
        ),
        (
            "erased_orders",
            "Order ids this replica learnt were erased from an erasure notice of `ordersvc erase` (dropped from memory if it held them)",
            &cache.stats.erasures,
        ),
    ] {
        registry.register(name, help, counter.clone());
    }
}

/// The ingest thread's metrics (see the fields of the same names on `Metrics`).
struct IngestMetrics {
    messages: Family<MessageLabels, Counter>,
    batch_size: Histogram,
    commit_seconds: Histogram,
    commit_failures: Counter,
    consumer_pending: Gauge,
    consumer_ack_pending: Gauge,
    changelog_lag_messages: Gauge,
    changelog_lag_seconds: FloatGauge,
    last_commit_timestamp: FloatGauge,
    batches_in_flight: Gauge,
}

impl IngestMetrics {
    fn register(registry: &mut Registry) -> IngestMetrics {
        IngestMetrics {
            messages: registered(
                registry,
                "messages",
                "Messages received from the stream, by outcome",
                Family::<MessageLabels, Counter>::default(),
            ),
            batch_size: registered(
                registry,
                "batch_size",
                "Messages per committed batch",
                Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            ),
            commit_seconds: registered(
                registry,
                "commit_seconds",
                "Time to write and commit one batch",
                Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            ),
            commit_failures: registered(
                registry,
                "commit_failures",
                "Failed attempts to commit a batch; the batch stays unacked and is retried in \
                 place, with backoff, until PostgreSQL takes it",
                Counter::default(),
            ),
            consumer_pending: registered(
                registry,
                "consumer_pending_messages",
                "Messages waiting in the stream for the durable consumer (lag), from the \
                 consumer's state, polled every few seconds",
                Gauge::default(),
            ),
            consumer_ack_pending: registered(
                registry,
                "consumer_ack_pending_messages",
                "Messages delivered to the durable consumer and not yet acked, polled",
                Gauge::default(),
            ),
            changelog_lag_messages: registered(
                registry,
                "changelog_lag_messages",
                "Changelog messages this replica has not applied yet, polled",
                Gauge::default(),
            ),
            changelog_lag_seconds: registered(
                registry,
                "changelog_lag_seconds",
                "Age of the oldest changelog message this replica has not applied (0 when none)",
                FloatGauge::default(),
            ),
            last_commit_timestamp: registered(
                registry,
                "last_commit_timestamp_seconds",
                "Unix time of the last batch committed to PostgreSQL (0 before the first)",
                FloatGauge::default(),
            ),
            batches_in_flight: registered(
                registry,
                "ingest_batches_in_flight",
                "Batches pulled and not yet acked or handed back: one being parsed, one \
                 committing, one being fanned out and acked",
                Gauge::default(),
            ),
        }
    }
}

/// What the service holds and whether it is ready: the restore's progress, and the gauges that
/// `Metrics::encode` reads at each scrape.
struct StateGauges {
    restored_orders: Gauge,
    cache_orders: Gauge,
    cache_bytes: Gauge,
    ready: Gauge,
    restoring: Gauge,
}

impl StateGauges {
    fn register(registry: &mut Registry) -> StateGauges {
        StateGauges {
            restored_orders: registered(
                registry,
                "restored_orders",
                "Orders loaded into the cache at start",
                Gauge::default(),
            ),
            cache_orders: registered(
                registry,
                "cache_orders",
                "Orders in the cache",
                Gauge::default(),
            ),
            cache_bytes: registered(
                registry,
                "cache_bytes",
                "Bytes of order documents in the cache",
                Gauge::default(),
            ),
            ready: registered(
                registry,
                "ready",
                "1 when /readyz answers 200",
                Gauge::default(),
            ),
            restoring: registered(
                registry,
                "restoring",
                "1 until the cache's restore at start has ended",
                Gauge::default(),
            ),
        }
    }
}

/// The HTTP side's metrics (see the `http_` fields of `Metrics`).
struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    seconds: HistogramFamily<RouteLabels>,
    connections: Gauge,
    max_connections: Gauge,
    admin_connections: Gauge,
    admin_max_connections: Gauge,
    connections_refused: Counter,
    connections_timed_out: Counter,
}

impl HttpMetrics {
    fn register(registry: &mut Registry) -> HttpMetrics {
        HttpMetrics {
            requests: registered(
                registry,
                "http_requests",
                "HTTP responses by route and status",
                Family::<HttpLabels, Counter>::default(),
            ),
            seconds: registered(
                registry,
                "http_request_seconds",
                "HTTP handling time by route",
                Family::new_with_constructor(latency_histogram),
            ),
            connections: registered(
                registry,
                "http_connections",
                "Connections open on the public listener",
                Gauge::default(),
            ),
            max_connections: registered(
                registry,
                "http_max_connections",
                "Most connections the public listener keeps open (--http-max-connections)",
                Gauge::default(),
            ),
            admin_connections: registered(
                registry,
                "admin_connections",
                "Connections open on the admin listener",
                Gauge::default(),
            ),
            admin_max_connections: registered(
                registry,
                "admin_max_connections",
                "Most connections the admin listener keeps open (--admin-max-connections)",
                Gauge::default(),
            ),
            connections_refused: registered(
                registry,
                "http_connections_refused",
                "HTTP connections refused with 503 because --http-max-connections were open",
                Counter::default(),
            ),
            connections_timed_out: registered(
                registry,
                "http_connections_timed_out",
                "HTTP connections closed for sending or taking nothing within --http-timeout",
                Counter::default(),
            ),
        }
    }
}

impl Metrics {
    /// Registers every metric, including the cache's own counters. The order of registration is
    /// the order of the exposition.
    pub(crate) fn new(cache: &Cache) -> Metrics {
        let mut registry = Registry::with_prefix("ordersvc");
        register_cache_counters(&mut registry, cache);
        let ingest = IngestMetrics::register(&mut registry);
        let state = StateGauges::register(&mut registry);
        let http = HttpMetrics::register(&mut registry);
        Metrics {
            registry,
            messages: ingest.messages,
            batch_size: ingest.batch_size,
            commit_seconds: ingest.commit_seconds,
            commit_failures: ingest.commit_failures,
            consumer_pending: ingest.consumer_pending,
            consumer_ack_pending: ingest.consumer_ack_pending,
            changelog_lag_messages: ingest.changelog_lag_messages,
            changelog_lag_seconds: ingest.changelog_lag_seconds,
            last_commit_timestamp: ingest.last_commit_timestamp,
            batches_in_flight: ingest.batches_in_flight,
            restored_orders: state.restored_orders,
            cache_orders: state.cache_orders,
            cache_bytes: state.cache_bytes,
            ready: state.ready,
            restoring: state.restoring,
            http_requests: http.requests,
            http_seconds: http.seconds,
            http_connections: http.connections,
            http_max_connections: http.max_connections,
            admin_connections: http.admin_connections,
            admin_max_connections: http.admin_max_connections,
            http_connections_refused: http.connections_refused,
            http_connections_timed_out: http.connections_timed_out,
        }
    }

    /// Counts one message's outcome.
    pub(crate) fn count_message(&self, outcome: &'static str, reason: &'static str) {
        self.messages
            .get_or_create(&MessageLabels { outcome, reason })
            .inc();
    }

    /// The Prometheus text exposition, with the cache and readiness gauges read now.
    pub(crate) fn encode(&self, cache: &Cache, health: &Health) -> String {
        self.cache_orders
            .set(i64::try_from(cache.len()).unwrap_or(i64::MAX));
        self.cache_bytes
            .set(i64::try_from(cache.bytes()).unwrap_or(i64::MAX));
        self.ready
            .set(i64::from(health.readiness(cache).is_empty()));
        self.restoring.set(i64::from(!cache.is_restored()));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_messages_appear_in_the_exposition_with_their_labels() {
        let cache = Cache::empty(false);
        let metrics = Metrics::new(&cache);
        metrics.count_message("rejected", "bad_json");
        metrics.count_message("rejected", "bad_json");
        metrics.count_message("stored", "");
        let text = metrics.encode(&cache, &Health::new().0);
        assert!(
            text.contains(r#"ordersvc_messages_total{outcome="rejected",reason="bad_json"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ordersvc_messages_total{outcome="stored",reason=""} 1"#),
            "{text}"
        );
        assert!(text.contains("ordersvc_ready 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
