//! Single flight: one load from PostgreSQL per missing order, however many requests want it.
//!
//! The load runs as a tokio task of its own, not inside the request that started it: a request
//! whose client goes away (its future dropped) cannot take the load down with it, and a load that
//! panics ends only that task. Every request, the first included, waits for the task's result on a
//! `watch` channel; a task that ends without sending one (a panic, a runtime shutting down) closes
//! the channel, and every waiter gets an error instead of waiting out its deadline. Whatever way
//! the task ends, a guard it owns removes the flight from the table, so the next request for that
//! order starts a fresh load.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{LoadError, Loaded};
use crate::order::OrderUid;

/// Longest a request waits for the load of the order it wants.
pub(super) const FLIGHT_WAIT: Duration = Duration::from_secs(5);
/// Loads of distinct orders at once. A flood of unknown ids becomes at most this many queries
/// in flight; the requests beyond it are answered 503 at once (never a false 404) instead of
/// queueing on PostgreSQL. Far above the HTTP pool's connections, so that a burst of misses waits
/// for a connection briefly rather than being refused.
pub(super) const MAX_FLIGHTS: usize = 64;
/// How long an id PostgreSQL did not have is answered "not found" without asking again: short
/// enough that an order stored a moment later is found well within a second.
pub(crate) const NEGATIVE_TTL: Duration = Duration::from_millis(500);
/// Ids remembered as missing at most; beyond it, none more is remembered until some expire.
const MISSING_MAX: usize = 65_536;

/// A load's result, once it has one.
type Outcome = watch::Receiver<Option<Loaded>>;

/// The loads in flight, by order.
#[derive(Debug, Default)]
pub(super) struct Flights {
    /// Shared with each load's task, whose guard removes its own entry.
    table: Arc<Mutex<HashMap<OrderUid, Outcome>>>,
}

impl Flights {
    /// Waits for the load of `uid` already in flight, or starts `load` as a task of its own and
    /// waits for that: at most `FLIGHT_WAIT` either way. Must be awaited on a tokio runtime (the
    /// load is spawned on the current one).
    pub(super) async fn join<F>(&self, uid: &OrderUid, load: impl FnOnce() -> F) -> Loaded
    where
        F: Future<Output = Loaded> + Send + 'static,
    {
        let started = {
            let mut table = lock(&self.table);
            match table.get(uid) {
                Some(outcome) => Err(outcome.clone()),
                None if table.len() >= MAX_FLIGHTS => return Err(LoadError::TooManyLoads),
                None => {
                    let (send, outcome) = watch::channel(None);
                    table.insert(uid.clone(), outcome.clone());
                    Ok((send, outcome))
                }
            }
        };
        let mut outcome = match started {
            Err(in_flight) => in_flight,
            Ok((send, outcome)) => {
                // Made with the table unlocked: its drop locks the table, and `load()` or the
                // spawn may panic.
                let guard = Landing {
                    table: self.table.clone(),
                    uid: uid.clone(),
                    outcome: outcome.clone(),
                };
                let load = load();
                tokio::spawn(async move {
                    // Dropped when the task ends, also when `load` panics or the task is cancelled.
                    let _guard = guard;
                    let _ = send.send(Some(load.await));
                });
                outcome
            }
        };
        let waited = tokio::time::timeout(FLIGHT_WAIT, outcome.wait_for(Option::is_some)).await;
        match waited {
            // `wait_for` only returns a value that is `Some`.
            Ok(Ok(result)) => result.clone().unwrap_or(Err(LoadError::Lost)),
            // The task ended without sending (a panic, a runtime going away).
            Ok(Err(_)) => Err(LoadError::Lost),
            Err(_) => Err(LoadError::TimedOut),
        }
    }

    /// Loads in flight (for tests: none must be left behind).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.table).len()
    }
}

/// Ids PostgreSQL answered "no such order" for, each for `NEGATIVE_TTL`: the same unknown id
/// asked again and again becomes one query per `NEGATIVE_TTL`, not one per request.
#[derive(Debug, Default)]
pub(super) struct RecentlyMissing {
    since: Mutex<HashMap<OrderUid, Instant>>,
}

impl RecentlyMissing {
    /// Whether `uid` was found missing less than `NEGATIVE_TTL` ago.
    pub(super) fn contains(&self, uid: &OrderUid) -> bool {
        lock(&self.since)
            .get(uid)
            .is_some_and(|at| at.elapsed() < NEGATIVE_TTL)
    }

    /// Remembers that PostgreSQL does not have `uid` now.
    pub(super) fn insert(&self, uid: OrderUid) {
        let mut since = lock(&self.since);
        if since.len() >= MISSING_MAX {
            since.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
        }
        if since.len() < MISSING_MAX {
            since.insert(uid, Instant::now());
        }
    }
}

/// A poisoned lock only means a thread panicked while it held it; every operation on the table
/// is a single insert, lookup or remove, so the table is still whole.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Owned by a load's task: removes the flight from the table when the task ends, however it ends.
struct Landing {
    table: Arc<Mutex<HashMap<OrderUid, Outcome>>>,
    uid: OrderUid,
    /// To recognise its own entry.
    outcome: Outcome,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut table = lock(&self.table);
        if table
            .get(&self.uid)
            .is_some_and(|entry| entry.same_channel(&self.outcome))
        {
            table.remove(&self.uid);
        }
    }
}
