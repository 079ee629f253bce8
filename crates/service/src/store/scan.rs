//! Reading every stored order in parts: the `orders` table's blocks cut into ranges, each read by
//! a TID range scan (PostgreSQL 14 and later), so that several connections can read one table at
//! once, each part sequentially, with no index and no sort.
//!
//! Physical ranges rather than ranges of `order_uid`: ids are producers' strings, so key ranges
//! of equal size would first need a sample of the keys, and an index range scan reads the heap in
//! key order, which is random order on disk. A range is also where a read resumes: rows of a TID
//! range scan come in `ctid` order, so after an error (a standby cancelling the statement) the
//! read goes on after the last row it got. Orders are immutable (an erasure aside, which reaches
//! a replica through the changelog), so a row read in one statement is the row a later statement
//! would have read.

use futures::stream::BoxStream;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, Row};

use super::Store;

/// A row's place in the table: PostgreSQL's `ctid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tid {
    pub(crate) block: u32,
    pub(crate) offset: u16,
}

impl Tid {
    /// The first place in `block`.
    pub(crate) fn start_of(block: u32) -> Tid {
        Tid { block, offset: 0 }
    }

    /// The place right after this one (a read resumes there).
    pub(crate) fn after(self) -> Tid {
        match self.offset.checked_add(1) {
            Some(offset) => Tid { offset, ..self },
            None => Tid::start_of(self.block.saturating_add(1)),
        }
    }

    /// PostgreSQL's text form, `(block,offset)`.
    fn literal(self) -> String {
        format!("({},{})", self.block, self.offset)
    }

    /// From PostgreSQL's binary form: the block number and the offset, big-endian.
    fn from_binary(bytes: &[u8]) -> Option<Tid> {
        let (block, offset) = bytes.split_first_chunk::<4>()?;
        let offset: &[u8; 2] = offset.try_into().ok()?;
        Some(Tid {
            block: u32::from_be_bytes(*block),
            offset: u16::from_be_bytes(*offset),
        })
    }
}

/// One stored order as a scan reads it: where it is, its id, and its document's bytes as
/// PostgreSQL sent them (UTF-8 if the database's encoding is UTF8: `utf8_database`), borrowed
/// from the row (a restore copies them once, straight into the cache's entry).
pub(crate) fn decode(row: &PgRow) -> Result<(Tid, &str, &[u8]), sqlx::Error> {
    let tid = row
        .try_get_raw(0)?
        .as_bytes()
        .ok()
        .and_then(Tid::from_binary)
        .ok_or_else(|| sqlx::Error::Decode("a ctid that is not 6 bytes".into()))?;
    let document = row
        .try_get_raw(2)?
        .as_bytes()
        .map_err(sqlx::Error::Decode)?;
    Ok((tid, row.try_get(1)?, document))
}

impl Store {
    /// How many blocks the `orders` table has now (rows added later are in blocks after these).
    pub(crate) async fn order_blocks(&self) -> Result<u32, sqlx::Error> {
        let blocks: i64 = sqlx::query_scalar(
            "SELECT pg_relation_size('orders') / current_setting('block_size')::int8",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(u32::try_from(blocks).unwrap_or(u32::MAX))
    }

    /// PostgreSQL's estimate of the number of stored orders (for progress lines: `count(*)`
    /// would read the whole table once more before the restore reads it).
    pub(crate) async fn estimated_orders(&self) -> Result<i64, sqlx::Error> {
        let estimate: f32 =
            sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE oid = 'orders'::regclass")
                .fetch_one(&self.pool)
                .await?;
        // -1 until the table was first vacuumed or analyzed.
        Ok(estimate.max(0.0) as i64)
    }

    /// Whether the database's encoding is UTF8, so that its text is valid UTF-8 (PostgreSQL
    /// checks what it stores): a restore then need not check two gigabytes again. `migrate`
    /// creates the database so; one made by hand as SQL_ASCII, say, holds any bytes.
    pub(crate) async fn utf8_database(&self) -> Result<bool, sqlx::Error> {
        let encoding: String = sqlx::query_scalar("SELECT current_setting('server_encoding')")
            .fetch_one(&self.pool)
            .await?;
        Ok(encoding == "UTF8")
    }

    /// A connection of the pool's for a scan.
    pub(crate) async fn scan_connection(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        self.pool.acquire().await
    }
}

/// The orders stored at `from` and after, before block `end` (to the table's end if `None`),
/// in `ctid` order, streamed (`decode` reads a row).
pub(crate) fn orders_between(
    conn: &mut PgConnection,
    from: Tid,
    end: Option<u32>,
) -> BoxStream<'_, Result<PgRow, sqlx::Error>> {
    let query = match end {
        Some(end) => sqlx::query(
            "SELECT ctid, order_uid, document FROM orders WHERE ctid >= $1::tid AND ctid < $2::tid",
        )
        .bind(from.literal())
        .bind(Tid::start_of(end).literal()),
        None => sqlx::query("SELECT ctid, order_uid, document FROM orders WHERE ctid >= $1::tid")
            .bind(from.literal()),
    };
    query.fetch(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_resumes_right_after_the_last_row_it_got() {
        let tid = Tid {
            block: 7,
            offset: 3,
        };
        assert_eq!(
            tid.after(),
            Tid {
                block: 7,
                offset: 4
            }
        );
        assert!(tid.after() > tid);
        let last_of_block = Tid {
            block: 7,
            offset: u16::MAX,
        };
        assert_eq!(last_of_block.after(), Tid::start_of(8));
        assert_eq!(tid.literal(), "(7,3)");
    }

    #[test]
    fn a_ctid_is_read_from_its_binary_form() {
        assert_eq!(
            Tid::from_binary(&[0, 0, 1, 2, 0, 9]),
            Some(Tid {
                block: 258,
                offset: 9
            })
        );
        assert_eq!(Tid::from_binary(&[0, 0, 1]), None);
        assert_eq!(Tid::from_binary(&[0, 0, 1, 2, 0, 9, 1]), None);
    }
}
