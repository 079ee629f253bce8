//! Readiness: what `/readyz` reports. The async side (ingest, the health monitor) records what it
//! sees of PostgreSQL and NATS; the HTTP workers only read it, without blocking on either.

use std::sync::Mutex;

use crate::cache::Cache;

/// Last known state of the service's dependencies.
#[derive(Debug, Default)]
pub struct Health {
    /// From the monitor's ping: PostgreSQL does not answer.
    db_problem: Mutex<Option<String>>,
    /// From ingest: PostgreSQL answers but does not take batches (kept until one commits, so a
    /// ping that succeeds cannot hide it).
    commit_problem: Mutex<Option<String>>,
    /// From the monitor and ingest: the NATS connection or the pull stream is down.
    nats_problem: Mutex<Option<String>>,
}

fn read(slot: &Mutex<Option<String>>) -> Option<String> {
    // A poisoned lock only means a writer panicked; the value is a plain Option, still valid.
    slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn write(slot: &Mutex<Option<String>>, problem: Option<String>) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = problem;
}

impl Health {
    /// Everything unknown is assumed fine until a check says otherwise.
    pub fn new() -> Health {
        Health::default()
    }

    /// Records the outcome of the latest PostgreSQL ping.
    pub fn set_db(&self, problem: Option<String>) {
        write(&self.db_problem, problem);
    }

    /// Whether PostgreSQL did not answer the latest ping, and why.
    pub fn db_problem(&self) -> Option<String> {
        read(&self.db_problem)
    }

    /// Records why the last batch could not be committed (`None` once one commits again).
    pub fn set_commit(&self, problem: Option<String>) {
        write(&self.commit_problem, problem);
    }

    /// Why batches cannot be committed at the moment, if they cannot.
    pub fn commit_problem(&self) -> Option<String> {
        read(&self.commit_problem)
    }

    /// Records the state of the NATS connection.
    pub fn set_nats(&self, problem: Option<String>) {
        write(&self.nats_problem, problem);
    }

    /// `Ok` when the service can do its whole job, else the reason it cannot.
    pub fn readiness(&self, cache: &Cache) -> Result<(), String> {
        if !cache.is_restored() {
            return Err(format!(
                "restoring the cache from PostgreSQL ({} orders so far)",
                cache.len()
            ));
        }
        if let Some(p) = self.db_problem() {
            return Err(format!("PostgreSQL unavailable: {p}"));
        }
        if let Some(p) = self.commit_problem() {
            return Err(format!("cannot commit to PostgreSQL: {p}"));
        }
        if let Some(p) = self.nats_problem() {
            return Err(format!("NATS unavailable: {p}"));
        }
        Ok(())
    }

    fn nats_problem(&self) -> Option<String> {
        read(&self.nats_problem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_failure_keeps_the_service_unready_until_cleared_even_if_pings_succeed() {
        let cache = Cache::new(None);
        cache.mark_restored();
        let health = Health::new();
        assert!(health.readiness(&cache).is_ok());
        health.set_commit(Some("relation \"orders\" does not exist".into()));
        health.set_db(None);
        let reason = health.readiness(&cache).expect_err("not ready");
        assert!(reason.contains("cannot commit"), "{reason}");
        health.set_commit(None);
        assert!(health.readiness(&cache).is_ok());
    }

    #[test]
    fn the_service_is_not_ready_while_the_cache_is_restoring() {
        let health = Health::new();
        let reason = health.readiness(&Cache::new(None)).expect_err("not ready");
        assert!(reason.contains("restoring"), "{reason}");
    }
}
