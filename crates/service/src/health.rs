//! Readiness: what `/readyz` reports, and the monitor that keeps it honest while ingest is idle.
//!
//! Each fact has one slot and one writer, handed out once as a `Reporter` (not `Clone`): the
//! monitor owns PostgreSQL reachability and the NATS connection, ingest owns commit health and
//! the subscription. Two writers of one slot would overwrite each other's news (a monitor that
//! sees the connection up would hide that ingest cannot subscribe). Readiness is the conjunction
//! of every slot and the restored cache; the HTTP workers only read, without waiting on either
//! dependency.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cache::Cache;
use crate::shutdown::Shutdown;
use crate::store::DbProbe;

/// Between two rounds of the monitor.
const MONITOR_EVERY: Duration = Duration::from_millis(500);
/// Longest one PostgreSQL probe (connecting included) may take before it counts as a failure.
/// With `MONITOR_EVERY`, an outage shows within 1.25 s, whatever the pool is doing.
const PROBE_TIMEOUT: Duration = Duration::from_millis(750);

/// The facts `/readyz` is made of, in the order its reasons are listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fact {
    Database,
    Commit,
    Connection,
    Subscription,
    Fanout,
    Follow,
    CatchingUp,
}

const FACTS: [Fact; 7] = [
    Fact::Database,
    Fact::Commit,
    Fact::Connection,
    Fact::Subscription,
    Fact::Fanout,
    Fact::Follow,
    Fact::CatchingUp,
];

impl Fact {
    /// How a problem with this fact reads in `/readyz`.
    fn reason(self, problem: &str) -> String {
        match self {
            Fact::Database => format!("PostgreSQL unavailable: {problem}"),
            Fact::Commit => format!("cannot commit to PostgreSQL: {problem}"),
            Fact::Connection => format!("NATS unavailable: {problem}"),
            Fact::Subscription => format!("cannot consume the stream: {problem}"),
            Fact::Fanout => format!("cannot publish committed orders to the changelog: {problem}"),
            Fact::Follow => format!("cannot follow the changelog: {problem}"),
            Fact::CatchingUp => problem.to_owned(),
        }
    }
}

/// Last known state of the service's dependencies: `None` is fine, `Some` says what is wrong.
#[derive(Debug, Default)]
pub struct Health {
    slots: [Mutex<Option<String>>; 7],
}

/// The one writer of one fact.
#[derive(Debug)]
pub struct Reporter {
    health: Arc<Health>,
    fact: Fact,
}

/// Every writer, handed out once by `Health::new`.
#[derive(Debug)]
pub struct Reporters {
    /// The monitor's probe: PostgreSQL does not answer.
    pub database: Reporter,
    /// Ingest: PostgreSQL answers but does not take batches (kept until one commits, so a probe
    /// that succeeds cannot hide it).
    pub commit: Reporter,
    /// The monitor: the NATS connection is down.
    pub connection: Reporter,
    /// Ingest: the stream or its consumer cannot be subscribed to or stopped delivering.
    pub subscription: Reporter,
    /// Ingest: committed orders cannot be published to the changelog (their messages wait).
    pub fanout: Reporter,
    /// The changelog follower: it cannot read the changelog now (reads stay correct: a miss
    /// asks PostgreSQL).
    pub follow: Reporter,
    /// The changelog follower: this replica has not yet applied what the changelog held when it
    /// (re)started following, or found a gap and is restoring afresh. Reads wait for it too.
    pub catching_up: Reporter,
}

impl Health {
    /// Health where everything is assumed fine until a check says otherwise, and its writers.
    pub fn new() -> (Arc<Health>, Reporters) {
        let health = Arc::new(Health::default());
        let reporter = |fact| Reporter {
            health: health.clone(),
            fact,
        };
        let reporters = Reporters {
            database: reporter(Fact::Database),
            commit: reporter(Fact::Commit),
            connection: reporter(Fact::Connection),
            subscription: reporter(Fact::Subscription),
            fanout: reporter(Fact::Fanout),
            follow: reporter(Fact::Follow),
            catching_up: reporter(Fact::CatchingUp),
        };
        (health, reporters)
    }

    fn read(&self, fact: Fact) -> Option<String> {
        // A poisoned lock only means a writer panicked; the value is a plain Option, still valid.
        self.slots[fact as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether PostgreSQL did not answer the latest probe, and why: readers ask before they
    /// query, so that a request fails at once instead of waiting for a dead database.
    pub fn db_problem(&self) -> Option<String> {
        self.read(Fact::Database)
    }

    /// Why the service cannot do its whole job now; empty when it can.
    pub fn readiness(&self, cache: &Cache) -> Vec<String> {
        self.reasons(cache, &FACTS)
    }

    /// Why this replica cannot answer reads correctly now (`/readyz/reads`): only the restore
    /// and catching up with the changelog count. PostgreSQL or NATS being down does not: the
    /// cache still answers, and a miss that needs PostgreSQL is a 503, never a false 404.
    pub fn reads_readiness(&self, cache: &Cache) -> Vec<String> {
        self.reasons(cache, &[Fact::CatchingUp])
    }

    fn reasons(&self, cache: &Cache, facts: &[Fact]) -> Vec<String> {
        let mut reasons = Vec::new();
        if !cache.is_restored() {
            reasons.push(format!(
                "restoring the cache from PostgreSQL ({} orders so far)",
                cache.len()
            ));
        }
        for &fact in facts {
            if let Some(problem) = self.read(fact) {
                reasons.push(fact.reason(&problem));
            }
        }
        reasons
    }
}

impl Reporter {
    /// Records the latest state of this fact (`None`: fine).
    pub fn set(&self, problem: Option<String>) {
        *self.health.slots[self.fact as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// What this writer last recorded.
    pub fn problem(&self) -> Option<String> {
        self.health.read(self.fact)
    }
}

/// A check of PostgreSQL that is bounded on its own, not through a pool (whose acquire keeps
/// retrying a refused connect until its own, much longer, timeout).
pub trait Probe {
    /// `Ok` when PostgreSQL answers now.
    fn check(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

impl Probe for DbProbe {
    fn check(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        DbProbe::check(self)
    }
}

/// Keeps the monitor's two facts current until shutdown: probes PostgreSQL (each probe bounded
/// by `PROBE_TIMEOUT`) and reads the NATS connection's state, every `MONITOR_EVERY`.
pub async fn monitor(
    mut probe: impl Probe,
    nats: impl Fn() -> Option<String>,
    database: Reporter,
    connection: Reporter,
    shutdown: Shutdown,
) {
    loop {
        let checked = tokio::select! {
            _ = shutdown.requested() => return,
            checked = tokio::time::timeout(PROBE_TIMEOUT, probe.check()) => checked,
        };
        database.set(match checked {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {} ms", PROBE_TIMEOUT.as_millis())),
        });
        connection.set(nats());
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(MONITOR_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::shutdown;

    fn restored() -> Cache {
        Cache::empty(true)
    }

    #[test]
    fn a_commit_failure_keeps_the_service_unready_until_cleared_even_if_probes_succeed() {
        let cache = restored();
        let (health, reporters) = Health::new();
        assert!(health.readiness(&cache).is_empty());
        reporters
            .commit
            .set(Some("relation \"orders\" does not exist".into()));
        reporters.database.set(None);
        let reasons = health.readiness(&cache);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains("cannot commit"), "{reasons:?}");
        reporters.commit.set(None);
        assert!(health.readiness(&cache).is_empty());
    }

    #[test]
    fn the_service_is_not_ready_while_the_cache_is_restoring() {
        let (health, _reporters) = Health::new();
        let reasons = health.readiness(&Cache::empty(false));
        assert!(reasons[0].contains("restoring"), "{reasons:?}");
    }

    #[test]
    fn every_problem_is_listed_not_only_the_first() {
        let (health, reporters) = Health::new();
        reporters.connection.set(Some("disconnected".into()));
        reporters.subscription.set(Some("no stream".into()));
        let reasons = health.readiness(&Cache::empty(false));
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[1].starts_with("NATS unavailable"), "{reasons:?}");
        assert!(reasons[2].starts_with("cannot consume"), "{reasons:?}");
    }

    /// A PostgreSQL that stops answering at once: connects that hang, as behind a lost network.
    struct Hangs(Arc<AtomicBool>);

    impl Probe for Hangs {
        fn check(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
            let hang = self.0.load(Ordering::SeqCst);
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_database_that_stops_answering_shows_within_one_and_a_half_seconds() {
        let hang = Arc::new(AtomicBool::new(false));
        let (health, reporters) = Health::new();
        let (trigger, stop) = shutdown::channel();
        let monitor = tokio::spawn(monitor(
            Hangs(hang.clone()),
            || None,
            reporters.database,
            reporters.connection,
            stop,
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(health.db_problem().is_none());

        hang.store(true, Ordering::SeqCst);
        let stopped = tokio::time::Instant::now();
        while health.db_problem().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            stopped.elapsed() <= Duration::from_millis(1500),
            "seen after {:?}",
            stopped.elapsed()
        );

        hang.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(health.db_problem().is_none(), "recovered");
        trigger.trigger();
        monitor.await.expect("the monitor stops on shutdown");
    }
}
