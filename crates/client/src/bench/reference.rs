//! PostgreSQL's own bulk load of rows that ordersvc stored, timed: the yardstick that
//! `bench ingest --mode backlog --reference-copy` sets beside the drain rate, in the same run, on
//! the same rows, into a table of the same schema.
//!
//! The bench's own, on a connection of its own: the service never runs it, so it is no part of
//! `Store`. Only the reading of `DATABASE_URL` is the service's (`store::connect_options`), so
//! that TLS settings mean the same here as in the service.

use std::time::{Duration, Instant};

use color_eyre::eyre::{bail, Result, WrapErr};
use futures::TryStreamExt;
use ordersvc_service::store::{self, Role};
use sqlx::{ConnectOptions, Connection, PgConnection};

/// Bytes of COPY data sent per message: one per row would cost a flush each, which a bulk
/// loader (psql among them) does not pay.
const SEND_CHUNK: usize = 1024 * 1024;

/// What the reference COPY did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CopyTimed {
    /// Rows copied.
    pub(crate) rows: u64,
    /// From the `COPY … FROM STDIN` statement to its completion (committed: autocommit).
    pub(crate) time: Duration,
}

/// Connects to the database at `database_url` (which must exist), exports the stored orders
/// whose order_uid starts with `uid_prefix` (untimed, into memory), then times a binary `COPY` of
/// them into a scratch table made `LIKE orders INCLUDING ALL` (the same primary key, index, check
/// constraint and lz4 compression), which is dropped afterwards, also when the copy fails.
pub(crate) async fn time_copy(database_url: &str, uid_prefix: &str) -> Result<CopyTimed> {
    let mut conn = store::connect_options(database_url)?
        .application_name(Role::Client.application_name())
        .connect()
        .await
        .wrap_err("cannot connect to PostgreSQL for the reference COPY")?;
    let timed = time_copy_on(&mut conn, uid_prefix).await;
    // Only a courtesy to the server: the copy's outcome is what matters.
    let _ = conn.close().await;
    timed
}

async fn time_copy_on(conn: &mut PgConnection, uid_prefix: &str) -> Result<CopyTimed> {
    let table = format!("ordersvc_bench_copy_{}", std::process::id());
    sqlx::raw_sql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (LIKE orders INCLUDING ALL)"
    ))
    .execute(&mut *conn)
    .await
    .wrap_err_with(|| format!("cannot create the scratch table {table}"))?;
    let timed = match same_compression(conn, &table).await {
        Ok(()) => export_and_copy(conn, uid_prefix, &table).await,
        Err(e) => Err(e),
    };
    let dropped = sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(&mut *conn)
        .await
        .wrap_err_with(|| format!("cannot drop the scratch table {table}"));
    let timed = timed?;
    dropped?;
    Ok(timed)
}

/// Makes sure the scratch table compresses documents as `orders` does (lz4 where the build has
/// it): with another method the COPY would measure the compressor, not the bulk load.
async fn same_compression(conn: &mut PgConnection, table: &str) -> Result<()> {
    let methods: (String, String) = sqlx::query_as(
        "SELECT a.attcompression::text, b.attcompression::text
           FROM pg_attribute a, pg_attribute b
          WHERE a.attrelid = 'orders'::regclass AND a.attname = 'document'
            AND b.attrelid = $1::regclass AND b.attname = 'document'",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await
    .wrap_err("cannot read the documents' compression")?;
    if methods.0 != methods.1 {
        bail!(
            "the scratch table compresses documents with {:?}, orders with {:?}",
            methods.1,
            methods.0
        );
    }
    Ok(())
}

async fn export_and_copy(
    conn: &mut PgConnection,
    uid_prefix: &str,
    table: &str,
) -> Result<CopyTimed> {
    let export = format!(
        "COPY (SELECT * FROM orders WHERE starts_with(order_uid, {})) TO STDOUT (FORMAT binary)",
        quote_literal(uid_prefix)
    );
    let mut data: Vec<Vec<u8>> = Vec::new();
    {
        let mut rows = conn
            .copy_out_raw(&export)
            .await
            .wrap_err("cannot export the stored orders")?;
        let mut chunk = Vec::with_capacity(SEND_CHUNK);
        while let Some(bytes) = rows
            .try_next()
            .await
            .wrap_err("cannot export the stored orders")?
        {
            chunk.extend_from_slice(&bytes);
            if chunk.len() >= SEND_CHUNK {
                data.push(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(SEND_CHUNK),
                ));
            }
        }
        data.push(chunk);
    }

    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
        .await
        .wrap_err("cannot start the reference COPY")?;
    for chunk in &data {
        if let Err(e) = copy.send(chunk.as_slice()).await {
            // Ends the COPY, so that the connection can drop the scratch table.
            let _ = copy.abort("the reference COPY failed").await;
            return Err(e).wrap_err("the reference COPY failed");
        }
    }
    let rows = copy.finish().await.wrap_err("the reference COPY failed")?;
    Ok(CopyTimed {
        rows,
        time: started.elapsed(),
    })
}

/// `text` as an SQL string literal (COPY takes no bind parameters).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_doubles_its_quotes() {
        assert_eq!(quote_literal("bench-7-"), "'bench-7-'");
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }
}
