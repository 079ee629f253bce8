//! Stopping `serve`: one signal that every long-running part waits on, and the stop budget.
//!
//! A `Trigger` is held by whoever decides to stop (the signal handler, or a test); each task gets
//! a `Shutdown` and asks it `is_requested()` between steps or awaits `requested()` beside its
//! work, instead of checking a shared flag by hand. Every step that runs after the request gets a
//! share of one budget, `--shutdown-timeout`, so that the whole stop is bounded by the one number
//! an operator sets (and a supervisor's kill timeout can be set just above it).

use std::time::Duration;

use tokio::sync::watch;

/// Requests the stop (once; later calls change nothing).
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

/// Tells its holder whether, and when, a stop was requested. Cheap to clone: one per task.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// A trigger and the first `Shutdown` listening to it.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    /// Asks every `Shutdown` to stop.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

impl Shutdown {
    /// Whether a stop was requested (or its trigger is gone: nothing could ask for one any more,
    /// and the owner that held it has already stopped).
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow() || self.rx.has_changed().is_err()
    }

    /// Resolves once a stop is requested (at once if it already was).
    pub async fn requested(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger was dropped: treated as a request, as in `is_requested`.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// How `--shutdown-timeout` is shared out among the steps of a stop, which run one after the
/// other in this order. The shares add up to the whole, so the process exits within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopBudget {
    /// The batch in flight may still commit and be acked; past this it is handed back (nak'd).
    pub batch: Duration,
    /// The client sends the acks it buffered.
    pub acks: Duration,
    /// HTTP requests in flight are answered (idle connections are closed at once).
    pub http: Duration,
    /// PostgreSQL connections are closed politely (a stuck one is simply dropped on exit).
    pub database: Duration,
    /// What is left for the runtime's own tasks to end.
    pub runtime: Duration,
}

impl StopBudget {
    /// The shares of `total`: a third each for the batch and for HTTP, two fifteenths each for
    /// the acks and the database, and the rest for the runtime. With the default 15 s that is
    /// 5 s, 2 s, 5 s, 2 s and 1 s.
    pub fn of(total: Duration) -> StopBudget {
        let share = |n: u32, d: u32| total * n / d;
        let (batch, acks, http, database) = (share(1, 3), share(2, 15), share(1, 3), share(2, 15));
        StopBudget {
            batch,
            acks,
            http,
            database,
            runtime: total.saturating_sub(batch + acks + http + database),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_is_shared_as_documented_and_adds_up() {
        let budget = StopBudget::of(Duration::from_secs(15));
        assert_eq!(budget.batch, Duration::from_secs(5));
        assert_eq!(budget.acks, Duration::from_secs(2));
        assert_eq!(budget.http, Duration::from_secs(5));
        assert_eq!(budget.database, Duration::from_secs(2));
        assert_eq!(budget.runtime, Duration::from_secs(1));
        let sum = |b: StopBudget| b.batch + b.acks + b.http + b.database + b.runtime;
        for total in [1, 7, 15, 60, 3600].map(Duration::from_secs) {
            assert_eq!(sum(StopBudget::of(total)), total, "{total:?}");
        }
        assert!(sum(StopBudget::of(Duration::from_millis(100))) <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_shutdown_is_seen_by_every_clone_and_resolves_at_once_once_requested() {
        let (trigger, shutdown) = channel();
        let other = shutdown.clone();
        assert!(!shutdown.is_requested());
        let waiting = tokio::spawn(async move { other.requested().await });
        trigger.trigger();
        waiting.await.expect("the waiter ends");
        assert!(shutdown.is_requested());
        // Already requested: resolves without waiting.
        shutdown.requested().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_counts_as_a_request() {
        let (trigger, shutdown) = channel();
        drop(trigger);
        assert!(shutdown.is_requested());
        shutdown.requested().await;
    }
}
