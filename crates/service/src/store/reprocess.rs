//! `rejected reprocess` in PostgreSQL: which rejected messages to send through today's rules
//! again, and what became of each, marked on its own row (which is otherwise kept as recorded).

use sqlx::PgConnection;
use time::OffsetDateTime;

use super::Store;
use crate::batch::{Outcome, Rejected};

/// Which rejected messages to reprocess: every condition given must hold.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    /// Of one of these kinds (any, if empty).
    pub(crate) kinds: Vec<String>,
    /// With one of these ids (any, if empty).
    pub(crate) ids: Vec<i64>,
    /// Received at or after this.
    pub(crate) since: Option<OffsetDateTime>,
}

/// A rejected message to reprocess.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Candidate {
    pub(crate) id: i64,
    pub(crate) stream_seq: i64,
    pub(crate) subject: String,
    pub(crate) payload: Vec<u8>,
}

/// Rows that still hold what arrived: not emptied by `erase`, nor refused as an erased order's
/// (recorded without it). Only those can be reprocessed. (A macro, so that the statements below
/// are single literals.)
macro_rules! with_payload {
    () => {
        "payload_erased_at IS NULL AND kind <> 'erased'"
    };
}

/// The rows a `Selection` takes, given as $1 (kinds), $2 (ids) and $3 (since): those with a
/// payload, and not those already stored or found duplicate by an earlier run that finished
/// (running twice changes nothing). Those refused again are taken again: the rules may have
/// changed since.
macro_rules! selected {
    () => {
        concat!(
            "(cardinality($1::text[]) = 0 OR kind = ANY($1)) \
             AND (cardinality($2::int8[]) = 0 OR id = ANY($2)) \
             AND ($3::timestamptz IS NULL OR received_at >= $3) AND ",
            with_payload!(),
            " AND NOT (outcome IN ('stored', 'duplicate') AND reprocessed_at IS NOT NULL)"
        )
    };
}

impl Store {
    /// The selected rows (`selected!`), oldest first, after the row `after`.
    pub(crate) async fn reprocess_candidates(
        &self,
        selection: &Selection,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Candidate>, sqlx::Error> {
        sqlx::query_as(concat!(
            "SELECT id, stream_seq, subject, payload FROM rejected_messages WHERE ",
            selected!(),
            " AND id > $4 ORDER BY id LIMIT $5"
        ))
        .bind(&selection.kinds)
        .bind(&selection.ids)
        .bind(selection.since)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// How many rows `reprocess_candidates` selects in all.
    pub(crate) async fn count_reprocess_candidates(
        &self,
        selection: &Selection,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(concat!(
            "SELECT count(*) FROM rejected_messages WHERE ",
            selected!()
        ))
        .bind(&selection.kinds)
        .bind(&selection.ids)
        .bind(selection.since)
        .fetch_one(&self.pool)
        .await
    }

    /// Of the ids asked for by `--id`, those that no row has, or whose payload was erased.
    pub(crate) async fn unprocessable_ids(&self, ids: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
        sqlx::query_scalar(concat!(
            "SELECT i FROM UNNEST($1::int8[]) AS i \
             WHERE NOT EXISTS (SELECT 1 FROM rejected_messages WHERE id = i AND ",
            with_payload!(),
            ") ORDER BY i"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
    }

    /// Marks rows whose stored orders have reached the changelog: their reprocessing is over.
    pub(crate) async fn reprocessed(&self, ids: &[i64]) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE rejected_messages SET reprocessed_at = now() WHERE id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Marks each reprocessed row with its message's outcome, in the transaction that stored the
/// orders: message `i` of the batch is row `rows[i]`. A row stored by an earlier run whose
/// fan-out did not finish keeps `stored` (its order is now found as a duplicate of itself).
/// Refused ones are done now; stored and duplicate ones once they are on the changelog
/// (`Store::reprocessed`).
pub(super) async fn mark(
    tx: &mut PgConnection,
    rows: &[i64],
    outcomes: &[Outcome],
    rejected: &[Rejected],
) -> Result<(), sqlx::Error> {
    let n = rows.len().min(outcomes.len());
    let mut outcome = Vec::with_capacity(n);
    let (mut kinds, mut reasons) = (vec![None; n], vec![None; n]);
    for o in &outcomes[..n] {
        outcome.push(match o {
            Outcome::Stored => "stored",
            Outcome::Duplicate => "duplicate",
            Outcome::Rejected(_) => "refused",
        });
    }
    for r in rejected.iter().filter(|r| r.index < n) {
        kinds[r.index] = Some(r.kind);
        reasons[r.index] = Some(r.reason.as_str());
    }
    sqlx::query(
        "UPDATE rejected_messages r SET \
             outcome = CASE WHEN r.outcome = 'stored' AND u.outcome = 'duplicate' \
                            THEN 'stored' ELSE u.outcome END, \
             outcome_kind = u.kind, outcome_reason = u.reason, \
             reprocessed_at = CASE WHEN u.outcome = 'refused' THEN now() END \
         FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[]) AS u(id, outcome, kind, reason) \
         WHERE r.id = u.id",
    )
    .bind(&rows[..n])
    .bind(&outcome)
    .bind(&kinds)
    .bind(&reasons)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
