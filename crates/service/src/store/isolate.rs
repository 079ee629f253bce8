//! A batch that PostgreSQL refuses because of one message: written message by message, so that
//! the one it refuses is recorded as rejected (`store_error`) and blocks nothing. Ingest and
//! `rejected reprocess` write through here alike.

use tracing::warn;

use super::{Record, Store, STORE_ERROR_KIND};
use crate::batch::{Incoming, Outcome, Written};

impl Record<'_> {
    /// What to record of message `i` written on its own.
    fn one(self, i: usize) -> Self {
        match self {
            Record::Rejections => Record::Rejections,
            Record::Outcomes(rows) => Record::Outcomes(&rows[i..=i]),
            Record::DryRun(rows) => Record::DryRun(&rows[i..=i]),
        }
    }
}

impl Store {
    /// Writes a batch (`write_batch`). If PostgreSQL refuses it because of a message's data (or,
    /// with `isolate_refusals`, for any reason it answers with that is not about the server),
    /// writes the messages one by one so that the one it refuses is recorded as rejected.
    /// The outcomes are in the order of the batch.
    pub(crate) async fn write(
        &self,
        stream: &str,
        incoming: &[Incoming],
        record: Record<'_>,
        isolate_refusals: bool,
    ) -> Result<Written, sqlx::Error> {
        let error = match self.write_batch(stream, incoming, record).await {
            Ok(written) => return Ok(written),
            Err(e) => e,
        };
        let refusal =
            |e: &sqlx::Error| is_data_error(e) || (isolate_refusals && !is_server_state(e));
        if !refusal(&error) {
            return Err(error);
        }
        warn!(error = %error, "PostgreSQL refused a batch; writing it message by message");
        let mut all = Written::default();
        let mut outcomes = vec![None; incoming.len()];
        let mut refused = Vec::new();
        for (i, message) in incoming.iter().enumerate() {
            let one = std::slice::from_ref(message);
            match self.write_batch(stream, one, record.one(i)).await {
                Ok(written) => {
                    outcomes[i] = written.outcomes.into_iter().next();
                    all.to_cache.extend(written.to_cache);
                }
                Err(e) if refusal(&e) => refused.push((i, e)),
                Err(e) => return Err(e),
            }
        }
        // When no message escapes a refusal that is not about data, ask whether PostgreSQL takes
        // a known-good order at all: if not, it is the database's problem (a missing table, a
        // permission), and the batch is retried rather than every order in it rejected.
        if refused.len() == incoming.len()
            && !refused.iter().all(|(_, e)| is_data_error(e))
            && self.probe_write().await.is_err()
        {
            return Err(error);
        }
        for (i, e) in refused {
            let message = &incoming[i];
            warn!(seq = message.seq, error = %e, "PostgreSQL refused a message; recording it as rejected");
            let reason = format!("store error: {e}");
            self.reject_one(stream, message, &reason, record.one(i))
                .await?;
            outcomes[i] = Some(Outcome::Rejected(STORE_ERROR_KIND));
        }
        all.outcomes = outcomes.into_iter().flatten().collect();
        Ok(all)
    }
}

/// Errors that say something about the server, the connection or the settings rather than about
/// any message: a batch that meets one is retried whole, however often, and never taken apart to
/// record its messages as rejected. Only PostgreSQL's answers about a statement (a trigger, a
/// rule, a constraint added by hand) are left for the isolation to look into.
fn is_server_state(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        // No answer at all: a lost connection, a timeout, TLS, a pool with no connection.
        return true;
    };
    let Some(code) = db.code() else { return true };
    // 08 connection, 25 transaction state (25006: a read-only server), 28 login, 3D database,
    // 40 rolled back (serialization, deadlock, a standby's conflict), 42 a missing table or
    // permission, 53 resources (disk full, too many connections), 55 object state (a lock not
    // available), 57 operator intervention (shutdown, cancel), 58 system errors, XX internal.
    const SERVER_CLASSES: [&str; 11] = [
        "08", "25", "28", "3D", "40", "42", "53", "55", "57", "58", "XX",
    ];
    SERVER_CLASSES.iter().any(|class| code.starts_with(class))
}

/// Errors that come from the data of a row, not from PostgreSQL being unavailable: retrying the
/// same batch would fail forever, so the offending message must be isolated instead.
fn is_data_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 22: data exception, 23: integrity constraint violation, 54: program limit exceeded.
            code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
        }),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}
