//! `World`: a test's own corner of the shared servers, its names (a random suffix), its database
//! on the shared PostgreSQL and its stream on the shared NATS, and the test's own connections to
//! them for publishing and checking. Every replica a test starts on it shares it (an `Arc`); the
//! last one to go drops the database and deletes the streams, also while a test panics.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use async_nats::jetstream::stream::RawMessageErrorKind;
use async_nats::jetstream::{self, consumer, message::StreamMessage, publish::PublishAck};
use ordersvc_client::child::serve_command;
use ordersvc_service::changelog;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::commands::ordersvc;
use super::isolation::Names;
use super::nats::{base_nats_url, Publisher, SharedStream};
use super::postgres::{base_database_url, with_database, SharedDatabase};
use super::urls::with_host;

/// A row of `rejected_messages`.
#[derive(Debug, Clone)]
pub struct RejectedRow {
    pub stream_seq: i64,
    pub kind: String,
    pub reason: String,
    pub payload: Vec<u8>,
}

/// The test's names, database and stream, and its own connections to them.
pub struct World {
    /// The random suffix, and the stream, subject and durable consumer named after it.
    pub names: Names,
    /// The test's database, as the test reaches it (directly).
    pub database_url: String,
    /// The shared NATS server, as the test reaches it (directly).
    pub nats_url: String,
    /// The URLs the service is given: the ones above, or a proxy's address in their place.
    pub(super) service_database_url: String,
    pub(super) service_nats_url: String,
    /// The test's pool, once the service has created the database.
    db: OnceLock<PgPool>,
    js: jetstream::Context,
    /// Dropped after the pool is closed: they delete the streams and drop the database.
    _streams: SharedStream,
    _database: SharedDatabase,
    /// Last, so that it is dropped after everything that runs on it.
    rt: tokio::runtime::Runtime,
}

impl World {
    /// Fresh names; the service reaches PostgreSQL and NATS through `db_via` and `nats_via`
    /// (proxies' addresses) when given. Nothing is created yet: the service creates the
    /// database and the streams.
    pub fn new(
        db_via: Option<std::net::SocketAddr>,
        nats_via: Option<std::net::SocketAddr>,
    ) -> World {
        let names = Names::fresh();
        let nats_url = base_nats_url();
        let database_url = with_database(
            &base_database_url(),
            &SharedDatabase::name_for(&names.suffix),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("cannot build the tests' tokio runtime");
        let js = rt.block_on(async {
            let client = async_nats::connect(&nats_url)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to NATS at {nats_url}: {e}"));
            jetstream::new(client)
        });
        World {
            service_database_url: db_via
                .map_or_else(|| database_url.clone(), |via| with_host(&database_url, via)),
            service_nats_url: nats_via
                .map_or_else(|| nats_url.clone(), |via| with_host(&nats_url, via)),
            _streams: SharedStream::of(&names),
            _database: SharedDatabase::for_suffix(&names.suffix),
            db: OnceLock::new(),
            js,
            rt,
            database_url,
            nats_url,
            names,
        }
    }

    /// Connects the test's pool to the database the service has created (once).
    pub(super) fn connect_database(&self) {
        if self.db.get().is_some() {
            return;
        }
        let pool = self.rt.block_on(
            PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(10))
                .connect(&self.database_url),
        );
        let pool = pool.expect("cannot connect to the test database that the service created");
        let _ = self.db.set(pool);
    }

    /// `serve` flags for this world, for an in-process `App`: every URL and name given
    /// explicitly, and free ports, except those that `extra` (the test's own flags) sets.
    pub(super) fn serve_flags(&self, extra: &[&str]) -> Vec<String> {
        let mut flags = vec![
            "--database-url",
            &self.service_database_url,
            "--http-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ];
        flags.extend(self.names.consumer_flags(&self.service_nats_url));
        flags
            .chunks(2)
            .filter(|flag| !extra.contains(&flag[0]))
            .flatten()
            .map(|&word| word.to_owned())
            .collect()
    }

    /// Publishes without `Nats-Msg-Id` (the server cannot drop repeats) and awaits the ack.
    pub fn publish(&self, payload: &[u8]) -> PublishAck {
        self.rt.block_on(async {
            self.js
                .publish(self.names.subject.clone(), payload.to_vec().into())
                .await
                .expect("cannot publish")
                .await
                .expect("the publish was not acknowledged")
        })
    }

    /// Publishes many messages with their acks pipelined; see `Publisher::publish_many`.
    pub fn publish_many<'m>(
        &self,
        messages: impl IntoIterator<Item = (Option<&'m str>, &'m [u8])>,
    ) -> Vec<u64> {
        self.publisher().publish_many(messages)
    }

    /// A handle that publishes to this test's subject from any thread, independently of the
    /// `TestApp` (so that the test can kill or stop the service meanwhile).
    pub fn publisher(&self) -> Publisher {
        Publisher {
            js: self.js.clone(),
            subject: self.names.subject.clone(),
            rt: self.rt.handle().clone(),
        }
    }

    /// `ordersvc publish` aimed at this test's NATS, stream and subject; add the arguments.
    pub fn publish_command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ordersvc"));
        command
            .arg("publish")
            .args(self.names.stream_flags(&self.nats_url))
            .env("RUST_LOG", "info");
        command
    }

    /// `ordersvc ARGS` on this test's database, NATS, stream, subject and durable consumer (the
    /// flags the data commands, `erase` and `rejected reprocess`, take); add more arguments.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = ordersvc(args);
        command
            .args(["--database-url", &self.database_url])
            .args(self.names.consumer_flags(&self.nats_url));
        command
    }

    /// The durable consumer's state as the server reports it.
    pub fn consumer_info(&self) -> consumer::Info {
        self.try_consumer_info()
            .unwrap_or_else(|e| panic!("cannot read the consumer's info: {e}"))
    }

    pub fn try_consumer_info(&self) -> Result<consumer::Info, String> {
        self.rt.block_on(async {
            let stream = self
                .js
                .get_stream(&self.names.stream)
                .await
                .map_err(|e| e.to_string())?;
            stream
                .consumer_info(&self.names.durable)
                .await
                .map_err(|e| e.to_string())
        })
    }

    /// How many messages this test's stream holds.
    pub fn stream_messages(&self) -> u64 {
        self.rt.block_on(async {
            let mut stream = self
                .js
                .get_stream(&self.names.stream)
                .await
                .expect("cannot get the stream");
            stream
                .info()
                .await
                .expect("cannot get the stream's info")
                .state
                .messages
        })
    }

    /// The name of the service's changelog stream.
    pub fn changelog_stream(&self) -> String {
        changelog::stream_name(&self.names.stream, &self.names.durable)
    }

    /// Every message `stream` holds now, in stream order, each got by its sequence: what a
    /// reader of the stream could still get, whatever the service does with it. The sequences
    /// of deleted or erased messages are gaps, skipped.
    pub fn stream_contents(&self, stream: &str) -> Vec<StreamMessage> {
        self.rt.block_on(async {
            let mut stream = self
                .js
                .get_stream(stream)
                .await
                .unwrap_or_else(|e| panic!("cannot get stream {stream}: {e}"));
            let state = stream
                .info()
                .await
                .expect("cannot get the stream's info")
                .state
                .clone();
            let mut messages = Vec::new();
            if state.messages == 0 {
                return messages;
            }
            for sequence in state.first_sequence..=state.last_sequence {
                match stream.get_raw_message(sequence).await {
                    Ok(message) => messages.push(message),
                    Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
                    Err(e) => panic!("cannot get message {sequence}: {e}"),
                }
            }
            messages
        })
    }

    /// Every `table.column` of the test database's public schema in which some row holds
    /// `needle`: a bytea column as bytes, any other column in its text form.
    pub fn columns_containing(&self, needle: &str) -> Vec<String> {
        let columns: Vec<(String, String, String)> = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT c.table_name::text, c.column_name::text, c.data_type::text \
                     FROM information_schema.columns c \
                     JOIN information_schema.tables t USING (table_schema, table_name) \
                     WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' \
                     ORDER BY 1, 2",
                )
                .fetch_all(self.db()),
            )
            .expect("cannot list the database's columns");
        assert!(!columns.is_empty(), "the database has no tables to search");
        let quoted = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
        columns
            .into_iter()
            .filter(|(table, column, data_type)| {
                let (table, column) = (quoted(table), quoted(column));
                let bytea = data_type == "bytea";
                let query = if bytea {
                    format!("SELECT count(*) FROM {table} WHERE position($1 IN {column}) > 0")
                } else {
                    format!("SELECT count(*) FROM {table} WHERE position($1 IN {column}::text) > 0")
                };
                let search = sqlx::query_scalar::<_, i64>(&query);
                let search = if bytea {
                    search.bind(needle.as_bytes())
                } else {
                    search.bind(needle)
                };
                let found = self
                    .rt
                    .block_on(search.fetch_one(self.db()))
                    .unwrap_or_else(|e| panic!("cannot run {query:?}: {e}"));
                found > 0
            })
            .map(|(table, column, _)| format!("{table}.{column}"))
            .collect()
    }

    /// Deletes the stream (and so the consumer) behind the service's back.
    pub fn delete_stream(&self) {
        self.rt
            .block_on(self.js.delete_stream(&self.names.stream))
            .expect("cannot delete the stream");
    }

    /// Every rejected message, in stream order.
    pub fn rejected(&self) -> Vec<RejectedRow> {
        let rows: Vec<(i64, String, String, Vec<u8>)> = self
            .rt
            .block_on(
                sqlx::query_as(
                    "SELECT stream_seq, kind, reason, payload FROM rejected_messages \
                     ORDER BY stream_seq, id",
                )
                .fetch_all(self.db()),
            )
            .expect("cannot read rejected_messages");
        rows.into_iter()
            .map(|(stream_seq, kind, reason, payload)| RejectedRow {
                stream_seq,
                kind,
                reason,
                payload,
            })
            .collect()
    }

    /// Number of stored orders.
    pub fn orders_count(&self) -> i64 {
        self.rt
            .block_on(sqlx::query_scalar("SELECT count(*) FROM orders").fetch_one(self.db()))
            .expect("cannot count the orders")
    }

    /// One integer from a query in the test database (e.g. `SELECT max(stream_seq) FROM orders`;
    /// NULL reads as 0).
    pub fn query_i64(&self, query: &str) -> i64 {
        let value: Option<i64> = self
            .rt
            .block_on(sqlx::query_scalar(query).fetch_one(self.db()))
            .unwrap_or_else(|e| panic!("cannot run {query:?}: {e}"));
        value.unwrap_or(0)
    }

    /// Runs one SQL statement in the test database as its owner (the service's role).
    pub fn execute_as_owner(&self, statement: &str) {
        self.rt
            .block_on(sqlx::query(statement).execute(self.db()))
            .unwrap_or_else(|e| panic!("cannot run {statement:?}: {e}"));
    }

    fn db(&self) -> &PgPool {
        self.db.get().expect("the test database is connected")
    }

    /// `ordersvc serve` on this test's names and a free port, then `extra` flags: the same
    /// command line as `bench ingest` starts (URLs in the environment). Standard I/O is the
    /// caller's to set.
    pub fn serve_command<S: AsRef<std::ffi::OsStr>>(&self, extra: &[S]) -> Command {
        let settings = self
            .names
            .serve_settings(&self.service_database_url, &self.service_nats_url);
        serve_command(Path::new(env!("CARGO_BIN_EXE_ordersvc")), &settings, extra)
    }

    /// captures `subject`, so that the service's stream cannot be made on it.
    pub fn take_subject_with_another_stream(&self, subject: &str) -> String {
        let name = format!("BLOCKER_{}", self.names.suffix);
        self.rt
            .block_on(self.js.create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![subject.to_owned()],
                ..Default::default()
            }))
            .expect("cannot create the blocking stream");
        name
    }

    /// Deletes the service's changelog stream (the service recreates it).
    pub fn delete_changelog(&self) {
        let name = changelog::stream_name(&self.names.stream, &self.names.durable);
        self.rt
            .block_on(self.js.delete_stream(&name))
            .expect("cannot delete the changelog stream");
    }

    /// Purges the service's changelog stream: it keeps its sequence numbers but no message.
    pub fn purge_changelog(&self) {
        let name = changelog::stream_name(&self.names.stream, &self.names.durable);
        self.rt
            .block_on(async {
                let stream = self.js.get_stream(&name).await?;
                stream.purge().await.map(|_| ()).map_err(Into::into)
            })
            .unwrap_or_else(|e: Box<dyn std::error::Error + Send + Sync>| {
                panic!("cannot purge the changelog stream: {e}")
            });
    }

    /// Deletes a stream made by `take_subject_with_another_stream`.
    pub fn delete_other_stream(&self, name: &str) {
        self.rt
            .block_on(self.js.delete_stream(name))
            .expect("cannot delete the blocking stream");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed test unwinds. The guards drop the
        // database and delete the streams after this.
        let bounded = Duration::from_secs(30);
        let pool = self.db.take();
        let blocker = format!("BLOCKER_{}", self.names.suffix);
        self.rt.block_on(async {
            if let Some(pool) = pool {
                let _ = tokio::time::timeout(bounded, pool.close()).await;
            }
            // Made only by some tests; usually absent.
            let _ = tokio::time::timeout(bounded, self.js.delete_stream(&blocker)).await;
        });
    }
}
