//! ordersvc's client side: the commands that put orders on the stream (`publish`,
//! `replay-from-db`) and the load tool (`bench`, with its generator of realistic orders).
//!
//! Kept out of the service's crate: none of it runs inside `serve`, and its progress bars,
//! histograms and child processes have no business there. It builds on the service's settings,
//! order model, JetStream set-up and store, so that producers and the service agree on them.

pub mod bench;
pub mod child;
pub(crate) mod generate;
pub mod publish;
pub mod publisher;
pub mod replay;
pub(crate) mod samples;

/// What several modules' unit tests build their settings from.
#[cfg(test)]
pub(crate) mod testing {
    use ordersvc_service::config::NatsArgs;

    /// NATS settings with nothing in them, for tests that never connect.
    pub(crate) fn nats_args() -> NatsArgs {
        NatsArgs {
            nats_url: String::new(),
            nats_token: None,
            nats_tls_ca: None,
            nats_connect_timeout: std::time::Duration::from_secs(1),
            stream_replicas: 1,
            stream: String::new(),
            subject: String::new(),
        }
    }
}
