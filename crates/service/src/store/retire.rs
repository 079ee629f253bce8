//! Connections to a server that has turned read-only are closed, not reused.
//!
//! After a failover behind a DNS name (RDS Multi-AZ, Cloud SQL, a name moved by hand), pooled
//! connections may still be open to the old primary, which now answers every write with
//! SQLSTATE 25006 ("cannot execute INSERT in a read-only transaction"). The server is not down,
//! so nothing else closes them: a retried batch would meet the same server on every attempt
//! while new connections would reach the new primary. So the first such error retires every
//! connection opened before it: each is closed when it is next taken from the pool, and the
//! retry gets a new one. A new connection that still reaches a read-only server fails its
//! write the same way and is retired in turn; nothing is ever acked on one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use tracing::warn;

/// PostgreSQL's SQLSTATE for a write in a read-only transaction (a standby, or
/// `default_transaction_read_only`).
pub(crate) const READ_ONLY_SQL_TRANSACTION: &str = "25006";

/// When connections were last retired, as time since `base`.
#[derive(Debug)]
pub(crate) struct Retired {
    base: Instant,
    /// Nanoseconds after `base`; 0: never.
    at: AtomicU64,
}

impl Default for Retired {
    fn default() -> Self {
        Retired {
            base: Instant::now(),
            at: AtomicU64::new(0),
        }
    }
}

impl Retired {
    /// `options` with a check, each time a connection is taken from the pool, that it was
    /// opened after the last retirement.
    pub(crate) fn guard(self: &std::sync::Arc<Self>, options: PgPoolOptions) -> PgPoolOptions {
        let retired = self.clone();
        options.before_acquire(move |_conn, meta| {
            let keep = retired.keeps(meta.age);
            Box::pin(async move { Ok(keep) })
        })
    }

    /// Passes `result` through; a read-only server's refusal retires every open connection.
    pub(crate) fn note<T>(&self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if let Err(e) = &result {
            if is_read_only(e) {
                if self.at.load(Ordering::Relaxed) == 0 || self.last_retired_long_ago() {
                    warn!(error = %e, "PostgreSQL refuses writes on this connection (read-only): closing the connections opened before, so that the retry gets a new one");
                }
                self.retire_now();
            }
        }
        result
    }

    fn retire_now(&self) {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.at.fetch_max(now.max(1), Ordering::Relaxed);
    }

    /// Whether the last retirement is a minute old or more (then it is worth a log line again).
    fn last_retired_long_ago(&self) -> bool {
        let at = Duration::from_nanos(self.at.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(at) > Duration::from_secs(60)
    }

    /// Whether a connection of this age was opened after the last retirement.
    fn keeps(&self, age: Duration) -> bool {
        let at = self.at.load(Ordering::Relaxed);
        if at == 0 {
            return true;
        }
        let opened = self.base.elapsed().saturating_sub(age);
        opened.as_nanos() > u128::from(at)
    }
}

/// Whether PostgreSQL refused a write because the server (or the session) is read-only.
pub(crate) fn is_read_only(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some(READ_ONLY_SQL_TRANSACTION))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_opened_before_a_retirement_are_closed_and_later_ones_kept() {
        let retired = Retired::default();
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            retired.keeps(Duration::from_millis(15)),
            "nothing retired yet"
        );
        retired.retire_now();
        assert!(!retired.keeps(Duration::from_millis(15)), "opened before");
        std::thread::sleep(Duration::from_millis(20));
        assert!(retired.keeps(Duration::from_millis(5)), "opened after");
        assert!(!retired.keeps(Duration::from_millis(30)), "opened before");
    }

    #[test]
    fn only_a_read_only_refusal_retires() {
        let retired = Retired::default();
        let other: Result<(), sqlx::Error> = Err(sqlx::Error::PoolTimedOut);
        assert!(retired.note(other).is_err());
        assert_eq!(retired.at.load(Ordering::Relaxed), 0);
    }
}
