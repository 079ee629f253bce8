//! Erasure in PostgreSQL: an order's row goes and a tombstone takes its place (one transaction),
//! then the rejected messages that carry it lose their payload (another).

use std::collections::HashSet;

use sqlx::PgConnection;

use super::Store;
use crate::order::carried_order;

impl Store {
    /// Erases the orders: deletes their rows and keeps a tombstone for each id (known or not,
    /// so that it can never be stored later). Returns the ids that had a stored order.
    /// Idempotent: a second run finds nothing more to do.
    pub(crate) async fn erase(
        &self,
        uids: &[String],
        reason: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        let erased = self.try_erase(uids, reason).await;
        self.retired.note(erased)
    }

    async fn try_erase(&self, uids: &[String], reason: &str) -> Result<Vec<String>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Held to the commit: an ingest INSERT waits, then sees the tombstone (`offer_orders`),
        // and one that committed before is deleted here. Inserts wait for a delete by primary
        // key and an insert; reads do not wait.
        sqlx::query("LOCK TABLE orders IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let found: Vec<String> =
            sqlx::query_scalar("DELETE FROM orders WHERE order_uid = ANY($1) RETURNING order_uid")
                .bind(uids)
                .fetch_all(&mut *tx)
                .await?;
        // The first erasure's time and reason stay: it is the audit record.
        sqlx::query(
            "INSERT INTO erased_orders (order_uid, reason) SELECT u, $2 FROM UNNEST($1::text[]) AS u \
             ON CONFLICT (order_uid) DO NOTHING",
        )
        .bind(uids)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(found)
    }

    /// Empties the payload of every rejected message that carries one of the orders; returns
    /// how many. Apart from `erase`, so that ingest waits only for the delete (this searches
    /// every rejected payload); run after it, since a rejection that ingest commits once the
    /// tombstones are there is recorded without its payload (`batch::refuse_as_erased`).
    pub(crate) async fn erase_rejected_payloads(
        &self,
        uids: &[String],
    ) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let erased = erase_rejected_payloads(&mut tx, uids).await?;
        tx.commit().await?;
        Ok(erased)
    }

    /// Marks the erasures complete: every copy ordersvc knows of is gone.
    pub(crate) async fn complete_erasures(&self, uids: &[String]) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE erased_orders SET completed_at = coalesce(completed_at, now()) \
             WHERE order_uid = ANY($1)",
        )
        .bind(uids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that `erase` is deleting the changelog message `seq` (before it does).
    pub(crate) async fn record_changelog_deletion(
        &self,
        changelog: &str,
        created_ns: i64,
        seq: u64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO erased_changelog_messages (changelog, created_ns, seq) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(changelog)
        .bind(created_ns)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether `erase` deleted every changelog message from `from` up to `to` (excluded).
    pub(crate) async fn changelog_deletions_cover(
        &self,
        changelog: &str,
        created_ns: i64,
        from: u64,
        to: u64,
    ) -> Result<bool, sqlx::Error> {
        let (from, to) = (
            i64::try_from(from).unwrap_or(i64::MAX),
            i64::try_from(to).unwrap_or(i64::MAX),
        );
        let deleted: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM erased_changelog_messages \
             WHERE changelog = $1 AND created_ns = $2 AND seq >= $3 AND seq < $4",
        )
        .bind(changelog)
        .bind(created_ns)
        .bind(from)
        .bind(to)
        .fetch_one(&self.pool)
        .await?;
        Ok(deleted == to - from)
    }

    /// Every erased order's id.
    pub(crate) async fn tombstones(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT order_uid FROM erased_orders")
            .fetch_all(&self.pool)
            .await
    }
}

/// Empties the payload of every rejected message that carries one of `uids` (see
/// `order::carried_order`); returns how many. PostgreSQL narrows the rows down to those whose
/// bytes contain an id at all; which of them carry the order is decided here, with the same
/// rule as for the streams' messages.
async fn erase_rejected_payloads(
    tx: &mut PgConnection,
    uids: &[String],
) -> Result<u64, sqlx::Error> {
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT id, payload FROM rejected_messages \
         WHERE payload_erased_at IS NULL \
           AND EXISTS (SELECT 1 FROM UNNEST($1::text[]) AS u \
                       WHERE position(convert_to(u, 'UTF8') IN payload) > 0)",
    )
    .bind(uids)
    .fetch_all(&mut *tx)
    .await?;
    let wanted: HashSet<&str> = uids.iter().map(String::as_str).collect();
    let ids: Vec<i64> = rows
        .into_iter()
        .filter(|(_, payload)| carried_order(payload, &wanted).is_some())
        .map(|(id, _)| id)
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "UPDATE rejected_messages SET payload = ''::bytea, payload_erased_at = now() \
         WHERE id = ANY($1)",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected())
}
