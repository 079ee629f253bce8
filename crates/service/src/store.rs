//! PostgreSQL: the durable copy of every order and of every rejected message.
//!
//! Used by the ingest thread (batched writes), by start-up (streamed cache restore) and by the
//! HTTP side (listings, orders missing from a bounded cache), each through a pool of its own (see
//! `Role`). Nothing here knows about NATS or HTTP.

pub(crate) mod erase;
mod isolate;
pub(crate) mod reprocess;
mod retire;
pub(crate) mod scan;
pub(crate) mod standby;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use color_eyre::eyre::{bail, Report, Result, WrapErr};
use futures::stream::BoxStream;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use time::OffsetDateTime;

use crate::batch::{self, Incoming, Rejected, Written};
use crate::config::redact_url as redact;
use crate::order::Order;

/// The migrations under `migrations/`, embedded in the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// The id of `probe_write`'s order, which is always rolled back.
const PROBE_UID: &str = "ordersvc-write-probe";
/// A valid order like the producers' (the model's shape), for `probe_write`.
const PROBE_DOCUMENT: &str = include_str!("../../../testdata/model.json");

/// The `kind` label of a message PostgreSQL refused on its own (a trigger, a constraint).
pub(crate) const STORE_ERROR_KIND: &str = "store_error";

/// What a write records of the messages it does not store as new orders.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Record<'a> {
    /// A row of `rejected_messages` for each refused message (ingest).
    Rejections,
    /// The outcome of each message on the `rejected_messages` row it was read from
    /// (`rejected reprocess`): message `i` is row `rows[i]`.
    Outcomes(&'a [i64]),
    /// As `Outcomes`, but rolled back: what would happen (`--dry-run`).
    DryRun(&'a [i64]),
}

impl Record<'_> {
    /// Keeps what became of a batch's messages that were not stored as new orders: a row of
    /// `rejected_messages` for each refused one, or every outcome on the row it was read from.
    async fn keep(
        self,
        tx: &mut PgConnection,
        stream: &str,
        batch: &[Incoming],
        outcomes: &[batch::Outcome],
        rejected: &[Rejected],
    ) -> Result<(), sqlx::Error> {
        match self {
            Record::Rejections => insert_rejections(tx, stream, batch, rejected).await,
            Record::Outcomes(rows) | Record::DryRun(rows) => {
                reprocess::mark(tx, rows, outcomes, rejected).await
            }
        }
    }

    /// Ends a write's transaction: committed, or rolled back in a dry run.
    async fn end(self, tx: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), sqlx::Error> {
        match self {
            Record::DryRun(_) => tx.rollback().await,
            Record::Rejections | Record::Outcomes(_) => tx.commit().await,
        }
    }
}

/// A handle on the service's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    /// When the server behind the pool turned read-only: connections opened before are closed
    /// rather than reused (see `retire`).
    retired: Arc<retire::Retired>,
}

/// Which part of the service a pool serves. Each part has connections of its own, so that a storm
/// of readers cannot make ingest's commits wait for a connection, and its own `application_name`,
/// so that `pg_stat_activity` tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Ingest's commits and the restore at start (the health probe has a connection of its own).
    Ingest,
    /// The HTTP handlers' reads.
    Http,
    /// A command that only reads (`replay-from-db`), never the service.
    Client,
    /// The cache's restore: this many connections, each scanning its share of the table.
    Restore { connections: u16 },
}

impl Role {
    /// The pool's `application_name` in PostgreSQL.
    pub fn application_name(self) -> &'static str {
        match self {
            Role::Ingest => "ordersvc-ingest",
            Role::Http => "ordersvc-http",
            Role::Client => "ordersvc-client",
            Role::Restore { .. } => "ordersvc-restore",
        }
    }
}

/// One row of the recent-orders list.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Summary {
    /// The order's id.
    pub(crate) order_uid: String,
    /// When the producer says it was created.
    pub(crate) date_created: OffsetDateTime,
    /// The customer's id.
    pub(crate) customer_id: String,
    /// The order's track number.
    pub(crate) track_number: String,
}

/// Which orders a recent-orders listing holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Matching {
    /// Every order.
    All,
    /// Those whose `track_number` is exactly this (at most `SEARCH_MAX_CHARS` characters).
    TrackNumber(String),
    /// Those whose `customer_id` is exactly this (at most `SEARCH_MAX_CHARS` characters).
    CustomerId(String),
    /// Those with both: read from the track number's index (a track number names a few orders,
    /// a customer may have thousands).
    Both {
        track_number: String,
        customer_id: String,
    },
}

/// The longest track number or customer id the search indexes hold (migration
/// `20261201000001_orders_search.sql` says why they are partial). Validation sets no maximum, so
/// a longer value is stored but cannot be searched for.
pub(crate) const SEARCH_MAX_CHARS: usize = 256;

/// A row of `rejected_messages`, for operators and tests.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct RejectedRow {
    /// The row's id (newest is highest): the paging cursor.
    pub(crate) id: i64,
    /// The stream the message came from.
    pub(crate) stream: String,
    /// Stream sequence number of the message.
    pub(crate) stream_seq: i64,
    /// When it was recorded.
    pub(crate) received_at: OffsetDateTime,
    /// `RejectKind` label or `conflicting_duplicate`.
    pub(crate) kind: String,
    /// Human-readable reason naming the rule and the field path.
    pub(crate) reason: String,
    /// The payload exactly as received (empty once erased).
    pub(crate) payload: Vec<u8>,
    /// When its payload was erased (`ordersvc erase`).
    pub(crate) payload_erased_at: Option<OffsetDateTime>,
    /// What `rejected reprocess` made of it: `stored`, `duplicate` or `refused`.
    pub(crate) outcome: Option<String>,
    /// When refused again: the kind and the reason.
    pub(crate) outcome_kind: Option<String>,
    pub(crate) outcome_reason: Option<String>,
    /// When its reprocessing finished.
    pub(crate) reprocessed_at: Option<OffsetDateTime>,
}

impl Store {
    /// Creates the database if it does not exist, connects, and applies pending migrations.
    pub async fn open(database_url: &str) -> Result<Store> {
        let options = connect_options(database_url)?;
        create_database_if_missing(&options).await?;
        let retired = Arc::new(retire::Retired::default());
        let (pool_options, options) = pool_for(Role::Ingest, &options);
        let pool = retired
            .guard(pool_options)
            .connect_with(options)
            .await
            .map_err(|e| connect_failed(e, redact(database_url)))?;
        MIGRATOR
            .run(&pool)
            .await
            .wrap_err("cannot apply the database migrations")?;
        Ok(Store { pool, retired })
    }

    /// A probe for the health monitor, on a connection of its own: never waiting in the pool's
    /// queue, it tells an outage at once, however busy or stuck the pool is.
    pub(crate) fn probe(&self) -> DbProbe {
        DbProbe {
            options: (*self.pool.connect_options())
                .clone()
                .application_name("ordersvc-probe"),
            conn: None,
        }
    }

    /// A pool of `role`'s own on a database that `open` has already created and migrated. It
    /// connects on first use, so call it, and use the store, only on the runtime that is to own
    /// its connections: sqlx registers each connection's socket, and the pool's reaper task, with
    /// the current tokio runtime, and they stop working once that runtime is gone.
    pub(crate) fn open_pool(database_url: &str, role: Role) -> Result<Store> {
        // sqlx would panic without one (it spawns the reaper at once): say so instead.
        tokio::runtime::Handle::try_current()
            .wrap_err("a PostgreSQL pool must be opened on the tokio runtime that will use it")?;
        let options = connect_options(database_url)?;
        let retired = Arc::new(retire::Retired::default());
        let (pool_options, options) = pool_for(role, &options);
        Ok(Store {
            pool: retired.guard(pool_options).connect_lazy_with(options),
            retired,
        })
    }

    /// Writes one batch in one transaction: new orders, and what `record` says for every
    /// message that is not stored. Duplicates of stored orders are recognised and not written
    /// again; an order with a tombstone (erased) is refused. Nothing is visible (and nothing may
    /// be acked) unless this returns `Ok`.
    pub(crate) async fn write_batch(
        &self,
        stream: &str,
        batch: &[Incoming],
        record: Record<'_>,
    ) -> Result<Written, sqlx::Error> {
        let written = self.try_write_batch(stream, batch, record).await;
        self.retired.note(written)
    }

    async fn try_write_batch(
        &self,
        stream: &str,
        batch: &[Incoming],
        record: Record<'_>,
    ) -> Result<Written, sqlx::Error> {
        let first = batch::candidates(batch);
        let mut candidates: Vec<&Order> = first
            .values()
            .filter_map(|&i| batch[i].parsed.as_ref().ok())
            .collect();
        candidates.sort_by_key(|o| o.uid().as_str());

        let mut tx = self.pool.begin().await?;
        let found = offer_orders(&mut tx, batch, &first, &candidates).await?;
        let (mut written, mut rejected) = batch::decide(batch, &first, &found);
        let named = batch::ids_named_by_refused(batch, &rejected);
        if !named.is_empty() {
            let erased = erased_among(&mut tx, &named).await?;
            batch::refuse_as_erased(batch, &mut written, &mut rejected, &erased);
        }
        record
            .keep(&mut tx, stream, batch, &written.outcomes, &rejected)
            .await?;
        record.end(tx).await?;
        Ok(written)
    }

    /// Writes a known-good order (testdata/model.json under a reserved id) and rolls it back:
    /// tells whether PostgreSQL takes orders at all, when every message of a batch is refused.
    pub(crate) async fn probe_write(&self) -> Result<(), sqlx::Error> {
        let probed = self.try_probe_write().await;
        self.retired.note(probed)
    }

    async fn try_probe_write(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO orders (order_uid, document, date_created, customer_id, track_number, stream_seq) \
             VALUES ($1, $2, '2021-11-26T06:22:19Z', 'test', 'WBILMTESTTRACK', 0) ON CONFLICT (order_uid) DO NOTHING",
        )
        .bind(PROBE_UID)
        .bind(PROBE_DOCUMENT)
        .execute(&mut *tx)
        .await?;
        tx.rollback().await
    }

    /// Records one message as rejected for a reason found while storing it (a row PostgreSQL
    /// refuses), so that it cannot block the messages behind it.
    pub(crate) async fn reject_one(
        &self,
        stream: &str,
        message: &Incoming,
        reason: &str,
        record: Record<'_>,
    ) -> Result<(), sqlx::Error> {
        let recorded = self.try_reject_one(stream, message, reason, record).await;
        self.retired.note(recorded)
    }

    async fn try_reject_one(
        &self,
        stream: &str,
        message: &Incoming,
        reason: &str,
        record: Record<'_>,
    ) -> Result<(), sqlx::Error> {
        let rejected = [Rejected {
            index: 0,
            kind: STORE_ERROR_KIND,
            reason: reason.to_owned(),
            keep_payload: true,
        }];
        let mut tx = self.pool.begin().await?;
        let outcome = [batch::Outcome::Rejected(STORE_ERROR_KIND)];
        let message = std::slice::from_ref(message);
        record
            .keep(&mut tx, stream, message, &outcome, &rejected)
            .await?;
        record.end(tx).await
    }

    /// Every stored (order_uid, document), streamed from the server rather than loaded at once.
    pub fn documents(&self) -> BoxStream<'_, Result<(String, String), sqlx::Error>> {
        sqlx::query_as("SELECT order_uid, document FROM orders").fetch(&self.pool)
    }

    /// Every stored (order_uid, document), newest first (for a restore that stops when memory is full).
    pub(crate) fn documents_newest_first(
        &self,
    ) -> BoxStream<'_, Result<(String, String), sqlx::Error>> {
        sqlx::query_as(
            "SELECT order_uid, document FROM orders ORDER BY date_created DESC, order_uid DESC",
        )
        .fetch(&self.pool)
    }

    /// Stored orders in creation order (`date_created`, then `order_uid`), streamed: the ones
    /// created at or after `since`, and after the order `after` (to resume an interrupted run).
    pub fn documents_in_order<'a>(
        &'a self,
        since: Option<OffsetDateTime>,
        after: Option<&'a str>,
    ) -> BoxStream<'a, Result<(String, String), sqlx::Error>> {
        sqlx::query_as(
            "SELECT order_uid, document FROM orders \
             WHERE ($1::timestamptz IS NULL OR date_created >= $1) \
               AND ($2::text IS NULL OR (date_created, order_uid) > \
                    (SELECT date_created, order_uid FROM orders WHERE order_uid = $2)) \
             ORDER BY date_created, order_uid",
        )
        .bind(since)
        .bind(after)
        .fetch(&self.pool)
    }

    /// How many orders `documents_in_order` would return.
    pub async fn count_in_order(
        &self,
        since: Option<OffsetDateTime>,
        after: Option<&str>,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM orders \
             WHERE ($1::timestamptz IS NULL OR date_created >= $1) \
               AND ($2::text IS NULL OR (date_created, order_uid) > \
                    (SELECT date_created, order_uid FROM orders WHERE order_uid = $2))",
        )
        .bind(since)
        .bind(after)
        .fetch_one(&self.pool)
        .await
    }

    /// Whether an order is stored.
    pub async fn contains(&self, uid: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders WHERE order_uid = $1)")
            .bind(uid)
            .fetch_one(&self.pool)
            .await
    }

    /// One stored document by id.
    pub(crate) async fn document(&self, uid: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT document FROM orders WHERE order_uid = $1")
            .bind(uid)
            .fetch_optional(&self.pool)
            .await
    }

    /// Recent orders that match, newest first, strictly older than `before` (keyset pagination
    /// on an index).
    pub(crate) async fn recent(
        &self,
        limit: i64,
        matching: &Matching,
        before: Option<(OffsetDateTime, String)>,
    ) -> Result<Vec<Summary>, sqlx::Error> {
        // Plain statements rather than one with `$2 IS NULL OR …`: each is a plain scan of one
        // index, (date_created DESC, order_uid DESC) for all orders, or the column's search
        // index, which holds the same order after the equality.
        let filters: Vec<(&str, &str)> = match matching {
            Matching::All => Vec::new(),
            Matching::TrackNumber(value) => vec![("track_number", value)],
            Matching::CustomerId(value) => vec![("customer_id", value)],
            Matching::Both {
                track_number,
                customer_id,
            } => vec![("track_number", track_number), ("customer_id", customer_id)],
        };
        let columns: Vec<&str> = filters.iter().map(|&(column, _)| column).collect();
        let sql = recent_sql(&columns, before.is_some());
        let mut query = sqlx::query_as(&sql).bind(limit);
        for (_, value) in filters {
            query = query.bind(value);
        }
        let query = match before {
            None => query,
            Some((date, uid)) => query.bind(date).bind(uid),
        };
        query.fetch_all(&self.pool).await
    }

    /// The most recent rejected messages, newest first, older than the row `before` if given.
    pub(crate) async fn rejected(
        &self,
        limit: i64,
        before: Option<i64>,
    ) -> Result<Vec<RejectedRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, stream, stream_seq, received_at, kind, reason, payload, payload_erased_at, \
                    outcome, outcome_kind, outcome_reason, reprocessed_at FROM rejected_messages \
             WHERE ($2::int8 IS NULL OR id < $2) ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .bind(before)
        .fetch_all(&self.pool)
        .await
    }

    /// Closes every connection (so that the database can be dropped right after).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies pending migrations (for a command that changes data in a database that must
    /// already exist: `connect`, then this).
    pub(crate) async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .wrap_err("cannot apply the database migrations")
    }

    /// Connects to a database that must already exist, for commands that read it or change
    /// what is there (unlike `open`, no database is created, and nothing is migrated unless the
    /// command calls `migrate`): a mistyped name is an error naming it, not a new empty database
    /// that a replay would "successfully" read nothing from.
    pub async fn connect(database_url: &str) -> Result<Store> {
        let options = connect_options(database_url)?;
        // Without a name in the URL, PostgreSQL takes the user's.
        let name = options
            .get_database()
            .unwrap_or(options.get_username())
            .to_owned();
        let server = format!("{}:{}", options.get_host(), options.get_port());
        let (pool_options, options) = pool_for(Role::Client, &options);
        let connected = pool_options.connect_with(options).await;
        match connected {
            Ok(pool) => Ok(Store {
                pool,
                retired: Arc::default(),
            }),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_DATABASE) => {
                Err(sqlx::Error::Database(e)).wrap_err_with(|| {
                    format!(
                        "database {name} does not exist on PostgreSQL at {server} (this command \
                         creates no database: check the name in DATABASE_URL)"
                    )
                })
            }
            Err(e) => Err(connect_failed(e, redact(database_url))),
        }
    }
}

/// See `Store::probe`.
pub(crate) struct DbProbe {
    options: PgConnectOptions,
    /// Kept between probes (a connect per probe would be most of its cost), dropped on any error.
    conn: Option<PgConnection>,
}

impl DbProbe {
    /// `Ok` when PostgreSQL answers a `SELECT 1` now (connecting first if needed). Unbounded
    /// here: the health monitor bounds it.
    pub(crate) async fn check(&mut self) -> Result<(), sqlx::Error> {
        // Taken out first: if the caller's timeout drops this future mid-query, the half-used
        // connection is gone with it and never reused.
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.options.connect().await?,
        };
        sqlx::query("SELECT 1").execute(&mut conn).await?;
        self.conn = Some(conn);
        Ok(())
    }
}

/// The options in a database URL, with libpq's meaning of `sslmode=require`: also for a command
/// that needs a connection of its own (the bench's reference COPY), so that a `DATABASE_URL`
/// means the same there.
pub fn connect_options(database_url: &str) -> Result<PgConnectOptions> {
    if database_url.contains("sslpassword=") {
        // sqlx cannot decrypt a client key, and its parser would log the unknown parameter with
        // its value: refuse it before parsing.
        bail!("DATABASE_URL: sslpassword is not supported (give sslkey an unencrypted key file)");
    }
    let options = PgConnectOptions::from_str(database_url)
        .wrap_err("DATABASE_URL is not a valid PostgreSQL URL")?;
    let url = options.to_url_lossy();
    let given = |key: &str| url.query_pairs().any(|(k, _)| k == key);
    // libpq verifies the server's certificate against a root certificate given with `require`
    // (as `verify-ca` does); sqlx would accept any certificate. Do what libpq does.
    if matches!(options.get_ssl_mode(), PgSslMode::Require) && given("sslrootcert") {
        return Ok(options.ssl_mode(PgSslMode::VerifyCa));
    }
    Ok(options)
}

/// A failed connection to PostgreSQL at `place`, saying what to change when TLS is why.
fn connect_failed(error: sqlx::Error, place: impl std::fmt::Display) -> Report {
    let hint = match &error {
        // The server's own words for a `hostssl`-only pg_hba.conf met by a plaintext connection.
        sqlx::Error::Database(e)
            if e.code().as_deref() == Some(INVALID_AUTHORIZATION)
                && e.message().contains("no encryption") =>
        {
            ": the server takes only TLS connections here; set sslmode=require (or verify-full \
             with sslrootcert=FILE) in DATABASE_URL"
        }
        error if crate::tls::ca_used_as_end_entity(error) => {
            ": the server's certificate is a CA certificate used as the server's own (a \
             self-signed certificate made as a CA, as `openssl req -x509` makes it by default). \
             libpq accepts that; ordersvc's TLS (rustls) does not. Either give the server a \
             certificate signed by that CA and keep the CA as sslrootcert, or make its \
             self-signed certificate one that is not a CA and names the host, e.g. `openssl req \
             -x509 ... -addext basicConstraints=critical,CA:FALSE -addext \
             subjectAltName=DNS:HOST,IP:ADDRESS` (README, \"Secure connections\")"
        }
        // sqlx reports a refused certificate as an I/O error wrapping rustls's.
        error if matches!(error, sqlx::Error::Tls(_)) || crate::tls::caused_by_tls(error) => {
            ": TLS could not be set up; check sslmode, that sslrootcert names the CA that signed \
             the server's certificate, and that the certificate names the host in DATABASE_URL \
             (checked for verify-ca too)"
        }
        _ => "",
    };
    Report::new(error).wrap_err(format!("cannot connect to PostgreSQL at {place}{hint}"))
}

/// The pool settings of `role`, and `options` with the role's `application_name`.
fn pool_for(role: Role, options: &PgConnectOptions) -> (PgPoolOptions, PgConnectOptions) {
    let pool = match role {
        Role::Ingest => PgPoolOptions::new()
            .max_connections(8)
            // When PostgreSQL is down, callers must learn it quickly (and back off), not hang.
            .acquire_timeout(Duration::from_secs(5)),
        // Few: a reader's query is short, and a storm of them had better queue here than on
        // PostgreSQL's cores. A request gives up on PostgreSQL within about a second anyway, so
        // waiting longer for a connection would only keep it waiting for nothing.
        Role::Http => PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(1)),
        // A reader runs one query at a time; a second connection covers a query while a stream
        // of rows is still open.
        Role::Client => PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5)),
        // One connection per scan, held for the whole restore; none kept once it is over.
        Role::Restore { connections } => PgPoolOptions::new()
            .max_connections(u32::from(connections.max(1)))
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(10)),
    };
    (
        pool,
        options.clone().application_name(role.application_name()),
    )
}

/// PostgreSQL's SQLSTATE for a connection to a database that does not exist.
const UNDEFINED_DATABASE: &str = "3D000";
/// PostgreSQL's SQLSTATE for a login pg_hba.conf or the password refuses.
const INVALID_AUTHORIZATION: &str = "28000";

/// Offers the candidate orders for insertion with one statement, and finds what became of
/// each: new, stored before (its document), or erased.
///
/// An erased order is never inserted: the statement skips ids with a tombstone. `erase` locks
/// the orders table against inserts while it deletes and writes tombstones, and an INSERT takes
/// its snapshot only once it holds its lock (READ COMMITTED), so it either committed before the
/// erasure (which then deletes it) or sees the tombstone.
async fn offer_orders(
    tx: &mut PgConnection,
    batch: &[Incoming],
    first: &HashMap<&str, usize>,
    candidates: &[&Order],
) -> Result<batch::Found, sqlx::Error> {
    let mut found = batch::Found::default();
    if candidates.is_empty() {
        return Ok(found);
    }
    let n = candidates.len();
    let (mut uids, mut docs, mut dates, mut customers, mut tracks, mut seqs) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for order in candidates {
        let uid = order.uid().as_str();
        uids.push(uid);
        docs.push(order.document());
        dates.push(order.date_created());
        customers.push(column_text(order.customer_id()));
        tracks.push(column_text(order.track_number()));
        seqs.push(first.get(uid).map_or(0, |&i| seq_i64(batch[i].seq)));
    }
    let rows: Vec<String> = sqlx::query_scalar(
        "INSERT INTO orders (order_uid, document, date_created, customer_id, track_number, stream_seq) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::int8[]) \
             AS u(order_uid, document, date_created, customer_id, track_number, stream_seq) \
         WHERE NOT EXISTS (SELECT 1 FROM erased_orders e WHERE e.order_uid = u.order_uid) \
         ON CONFLICT (order_uid) DO NOTHING RETURNING order_uid",
    )
    .bind(&uids)
    .bind(&docs)
    .bind(&dates)
    .bind(&customers)
    .bind(&tracks)
    .bind(&seqs)
    .fetch_all(&mut *tx)
    .await?;
    found.inserted = rows.into_iter().collect();
    let not_inserted: Vec<&str> = uids
        .into_iter()
        .filter(|uid| !found.inserted.contains(*uid))
        .collect();
    if not_inserted.is_empty() {
        return Ok(found);
    }
    found.existing =
        sqlx::query_as("SELECT order_uid, document FROM orders WHERE order_uid = ANY($1)")
            .bind(&not_inserted)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
    let unexplained: Vec<&str> = not_inserted
        .into_iter()
        .filter(|uid| !found.existing.contains_key(*uid))
        .collect();
    if !unexplained.is_empty() {
        found.erased = erased_among(tx, &unexplained).await?;
    }
    Ok(found)
}

/// Which of `uids` have a tombstone.
async fn erased_among(
    tx: &mut PgConnection,
    uids: &[&str],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let erased: Vec<String> =
        sqlx::query_scalar("SELECT order_uid FROM erased_orders WHERE order_uid = ANY($1)")
            .bind(uids)
            .fetch_all(&mut *tx)
            .await?;
    Ok(erased.into_iter().collect())
}

/// Records rejected messages (index into the batch, kind label, reason); a redelivered one is skipped.
async fn insert_rejections(
    tx: &mut PgConnection,
    stream: &str,
    batch: &[Incoming],
    rejected: &[Rejected],
) -> Result<(), sqlx::Error> {
    if rejected.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = rejected
        .iter()
        .map(|r| seq_i64(batch[r.index].seq))
        .collect();
    let subjects: Vec<&str> = rejected
        .iter()
        .map(|r| batch[r.index].subject.as_str())
        .collect();
    let kinds: Vec<&str> = rejected.iter().map(|r| r.kind).collect();
    let reasons: Vec<String> = rejected.iter().map(|r| column_text(&r.reason)).collect();
    let payloads: Vec<&[u8]> = rejected
        .iter()
        .map(|r| match r.keep_payload {
            true => batch[r.index].raw.as_ref(),
            false => &[],
        })
        .collect();
    sqlx::query(
        "INSERT INTO rejected_messages (stream, stream_seq, subject, kind, reason, payload) \
         SELECT $1, * FROM UNNEST($2::int8[], $3::text[], $4::text[], $5::text[], $6::bytea[]) \
         ON CONFLICT (stream, stream_seq, md5(payload)) WHERE payload_erased_at IS NULL DO NOTHING",
    )
    .bind(stream)
    .bind(&seqs)
    .bind(&subjects)
    .bind(&kinds)
    .bind(&reasons)
    .bind(&payloads)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The listing statement: all orders, or those whose `columns` (names from `Store::recent`,
/// never input) equal $2, $3, …, with or without a cursor (the next two parameters). The first
/// column is the one whose search index the scan reads, and the statement repeats that partial
/// index's predicate word for word: PostgreSQL uses a partial index only when the query's own
/// clauses imply its predicate, and it does not derive a length from `column = $2`.
fn recent_sql(columns: &[&str], with_cursor: bool) -> String {
    let mut conditions: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, column)| match i {
            0 => format!("{column} = $2 AND length({column}) <= {SEARCH_MAX_CHARS}"),
            _ => format!("{column} = ${}", i + 2),
        })
        .collect();
    if with_cursor {
        let next = columns.len() + 2;
        conditions.push(format!(
            "(date_created, order_uid) < (${next}, ${})",
            next + 1
        ));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {} ", conditions.join(" AND "))
    };
    format!(
        "SELECT order_uid, date_created, customer_id, track_number FROM orders \
         {filter}ORDER BY date_created DESC, order_uid DESC LIMIT $1"
    )
}

/// PostgreSQL text cannot hold U+0000, which a JSON string may (as `\u0000`). The document keeps it
/// (it stays escaped there); the listing columns get a replacement character instead.
fn column_text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// JetStream sequences are u64; PostgreSQL's bigint is i64. 2^63 messages will not happen, but
/// saturate rather than wrap.
fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Creates the database named in `options` if it does not exist yet, through the `postgres`
/// maintenance database with the same credentials (the role needs CREATEDB).
async fn create_database_if_missing(options: &PgConnectOptions) -> Result<()> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut conn = options
        .clone()
        .database("postgres")
        .connect()
        .await
        .map_err(|e| {
            let place = format!(
                "{}:{} (its maintenance database `postgres`)",
                options.get_host(),
                options.get_port()
            );
            connect_failed(e, place)
        })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await
            .wrap_err("cannot look up the database")?;
    if !exists {
        let sql = format!(
            "CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0",
            quote_ident(&name)
        );
        match sqlx::query(&sql).execute(&mut conn).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and our CREATE: fine.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).wrap_err_with(|| format!("cannot create database {name}")),
        }
    }
    conn.close().await.ok();
    Ok(())
}

/// Quotes an SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_listing_is_one_statement_on_its_index_with_the_partial_predicate() {
        const SELECT: &str =
            "SELECT order_uid, date_created, customer_id, track_number FROM orders ";
        const ORDER: &str = "ORDER BY date_created DESC, order_uid DESC LIMIT $1";
        for (columns, cursor, filter) in [
            (&[][..], false, ""),
            (&[][..], true, "WHERE (date_created, order_uid) < ($2, $3) "),
            (
                &["customer_id"][..],
                false,
                "WHERE customer_id = $2 AND length(customer_id) <= 256 ",
            ),
            (
                &["track_number", "customer_id"][..],
                true,
                "WHERE track_number = $2 AND length(track_number) <= 256 AND customer_id = $3 \
                 AND (date_created, order_uid) < ($4, $5) ",
            ),
        ] {
            assert_eq!(
                recent_sql(columns, cursor),
                format!("{SELECT}{filter}{ORDER}"),
                "{columns:?}, cursor {cursor}"
            );
        }
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_ca_as_libpq_does() {
        let mode = |url: &str| connect_options(url).map(|o| o.get_ssl_mode());
        assert!(matches!(
            mode("postgres://h/db?sslmode=require&sslrootcert=/ca.pem"),
            Ok(PgSslMode::VerifyCa)
        ));
        assert!(matches!(
            mode("postgres://h/db?sslmode=require"),
            Ok(PgSslMode::Require)
        ));
        assert!(matches!(
            mode("postgres://h/db?sslmode=verify-full&sslrootcert=/ca.pem"),
            Ok(PgSslMode::VerifyFull)
        ));
        assert!(matches!(
            mode("postgres://h/db?sslmode=disable&sslrootcert=/ca.pem"),
            Ok(PgSslMode::Disable)
        ));
        assert!(matches!(
            mode(crate::config::DEFAULT_DATABASE_URL),
            Ok(PgSslMode::Disable)
        ));
    }

    #[test]
    fn sslpassword_is_refused_without_showing_it() {
        let error = connect_options("postgres://h/db?sslkey=/k.pem&sslpassword=s3cret")
            .expect_err("sslpassword is refused");
        assert!(!format!("{error:#}").contains("s3cret"), "{error:#}");
    }

    #[test]
    fn nul_characters_are_replaced_in_listing_columns() {
        assert_eq!(column_text("a\0b"), "a\u{FFFD}b");
    }
}
