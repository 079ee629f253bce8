//! Readiness: what `/readyz` reports. The async side (ingest, the health monitor) records what it
//! sees of PostgreSQL and NATS; the HTTP workers only read it, without blocking on either.

use std::sync::Mutex;

use crate::cache::Cache;

/// Last known state of the service's dependencies.
#[derive(Debug, Default)]
pub struct Health {
    db_problem: Mutex<Option<String>>,
    nats_problem: Mutex<Option<String>>,
}

impl Health {
    /// Everything unknown is assumed fine until a check says otherwise.
    pub fn new() -> Health {
        Health::default()
    }

    /// Records the outcome of the latest PostgreSQL operation or check.
    pub fn set_db(&self, problem: Option<String>) {
        *self.db_problem.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// Records the state of the NATS connection.
    pub fn set_nats(&self, problem: Option<String>) {
        *self.nats_problem.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// The last PostgreSQL problem seen, if it is not solved yet.
    pub fn db_problem(&self) -> Option<String> {
        self.db_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `Ok` when the service can do its whole job, else the reason it cannot.
    pub fn readiness(&self, cache: &Cache) -> Result<(), String> {
        if !cache.is_restored() {
            return Err(format!(
                "restoring the cache from PostgreSQL ({} orders so far)",
                cache.len()
            ));
        }
        if let Some(p) = self
            .db_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Err(format!("PostgreSQL unavailable: {p}"));
        }
        if let Some(p) = self
            .nats_problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Err(format!("NATS unavailable: {p}"));
        }
        Ok(())
    }
}
