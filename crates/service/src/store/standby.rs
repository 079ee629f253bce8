//! Reading from a standby without missing a commit: before a restore reads the read URL's
//! server, it waits until that server has replayed everything the primary had written when the
//! restore began.
//!
//! Why the order of the steps cannot miss an order. The caller reads the changelog's position P
//! first; ingest fans an order out only after its commit, so every order at or before P was
//! committed before P was read. Then the primary's `pg_current_wal_lsn()` is read, after a
//! commit of its own with `synchronous_commit` on has flushed the WAL past every commit record
//! inserted before it (a session with `synchronous_commit` off returns from a commit before its
//! record is written): every such commit lies before that position. Once the standby's
//! `pg_last_wal_replay_lsn()` is at or past it, every such commit is replayed there, and a
//! snapshot taken on the standby from then on sees it. Orders committed later, whose fan-out
//! comes after P, reach the cache through the changelog. Taken the other way round (the LSN
//! before P), a commit made between the two reads, fanned out before P, could be missing from
//! both the standby's snapshot and the part of the changelog that is followed.

use std::time::{Duration, Instant};

use color_eyre::eyre::{bail, Result, WrapErr};
use tracing::{info, warn};

use super::Store;
use crate::shutdown::Shutdown;

/// Between two looks at the standby's replay position.
const POLL: Duration = Duration::from_millis(20);

/// Which server a restore reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFrom {
    /// The read URL's: a standby that has replayed everything needed, or a primary.
    ReadServer,
    /// The primary: the standby did not catch up in time, or could not be asked.
    Primary,
    /// Nowhere: a stop was requested meanwhile.
    Stopped,
}

/// Waits, at most `timeout`, until the server behind `reads` holds every commit the primary
/// (behind `primary`) had made when this was called; see the module's documentation.
pub(crate) async fn catch_up(
    primary: &Store,
    reads: &Store,
    timeout: Duration,
    shutdown: &Shutdown,
) -> Result<ReadFrom> {
    let standby = match in_recovery(reads).await {
        Ok(standby) => standby,
        Err(e) => {
            warn!(error = %e, "cannot ask the --database-read-url server whether it is a standby; restoring from the primary");
            return Ok(ReadFrom::Primary);
        }
    };
    if !standby {
        // A primary (a read port falling back to the primary, say) holds every commit.
        return Ok(ReadFrom::ReadServer);
    }
    if in_recovery(primary)
        .await
        .wrap_err("cannot ask the --database-url server whether it is the primary")?
    {
        bail!("the --database-url server is a standby: it must be the primary, which takes the writes");
    }
    let target = wal_position_past_every_commit(primary)
        .await
        .wrap_err("cannot read the primary's WAL position")?;
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        match replayed_past(reads, &target).await {
            Ok(true) => {
                info!(lsn = %target, waited_ms = started.elapsed().as_millis() as u64, "the read server has replayed the primary's commits; restoring from it");
                return Ok(ReadFrom::ReadServer);
            }
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "cannot read the standby's replay position; restoring from the primary");
                return Ok(ReadFrom::Primary);
            }
        }
        if Instant::now() >= deadline {
            warn!(lsn = %target, timeout_s = timeout.as_secs_f64(), "the read server has not replayed the primary's commits within --read-catch-up-timeout; restoring from the primary");
            return Ok(ReadFrom::Primary);
        }
        tokio::select! {
            _ = shutdown.requested() => return Ok(ReadFrom::Stopped),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// The primary's WAL position (`pg_current_wal_lsn()`), once it is past the commit record of
/// every transaction committed so far. A session with `synchronous_commit` off sees its commit
/// return (and fans it out) before the record is written, so the position read at once could
/// lie before it. So an empty transaction is given an id and committed with `synchronous_commit`
/// on first: its commit flushes the WAL up to its own record, past every record inserted before.
async fn wal_position_past_every_commit(primary: &Store) -> Result<String, sqlx::Error> {
    let mut tx = primary.pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit TO on")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&primary.pool)
        .await
}

async fn in_recovery(store: &Store) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&store.pool)
        .await
}

/// Whether the standby has replayed WAL up to `lsn` (after a promotion, its last replay
/// position stays where recovery ended).
async fn replayed_past(reads: &Store, lsn: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)")
        .bind(lsn)
        .fetch_one(&reads.pool)
        .await
}
