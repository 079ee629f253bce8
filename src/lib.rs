//! ordersvc: orders from a NATS JetStream stream, stored in PostgreSQL, served over HTTP from memory.
//!
//! Data flows one way: bus → ingest → store → cache → http. Each subcommand has its own module.

pub mod batch;
pub mod bench;
pub mod bus;
pub mod cache;
pub mod child;
pub mod config;
pub mod generate;
pub mod health;
pub mod http;
pub mod ingest;
pub mod logging;
pub mod metrics;
pub mod migrate;
pub mod order;
pub mod page;
pub mod publish;
pub mod publisher;
pub mod replay;
pub mod samples;
pub mod serve;
pub mod shutdown;
pub mod store;
