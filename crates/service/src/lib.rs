//! ordersvc's service: orders from a NATS JetStream stream, stored in PostgreSQL, served over
//! HTTP from memory (`serve`), and the database set-up it needs (`migrate`).
//!
//! Data flows one way: bus → ingest → store → channel → cache → http. The modules other crates
//! use are public: the settings (`config`), the order model (`order`), JetStream set-up (`bus`)
//! and the store (`store`) for the client commands; `http`'s pure routing for the fuzzer;
//! `cache` for the bare-hyper baseline. Everything else is this crate's own.

pub(crate) mod batch;
pub mod bus;
pub mod cache;
pub mod changelog;
pub mod config;
pub mod erase;
pub(crate) mod health;
pub mod http;
pub(crate) mod ingest;
pub(crate) mod lag;
pub mod logging;
pub(crate) mod metrics;
pub mod migrate;
pub mod openapi;
pub mod order;
pub(crate) mod page;
pub mod reprocess;
pub(crate) mod retry;
pub mod serve;
pub(crate) mod shutdown;
pub mod store;
pub(crate) mod tls;
