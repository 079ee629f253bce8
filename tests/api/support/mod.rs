//! What the tests start and use, one module for each: the service (`service`: `spawn_app`,
//! `TestApp`) on a `world` of the test's own, servers of the test's own (`postgres`, `standby`:
//! a primary and its hot standby, `nats`, `nats_cluster`, and a PostgreSQL cluster under Patroni,
//! `patroni`) with their `certs`, a fault-injecting `proxy`, a headless `browser`, the `ordersvc`
//! command line (`commands`), HTTP requests (`http`) and test orders (`orders`).

pub mod browser;
pub mod certs;
pub mod commands;
pub mod http;
pub mod isolation;
pub mod nats;
pub mod nats_cluster;
pub mod orders;
pub mod own_server;
pub mod patroni;
pub mod postgres;
pub mod proxy;
pub mod service;
pub mod standby;
pub mod urls;
pub mod world;
