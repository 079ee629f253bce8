//! `ordersvc bench`: measures the service the way a user meets it, from outside.
//!
//! - `bench http` is a load generator for `GET /order/{id}` (our own Vegeta: open-loop constant
//!   rate with latency counted from the moment each request was due, or closed-loop maximum
//!   throughput), with its own minimal HTTP/1.1 client so that the client's cost stays small.
//!   It can spread its connections over several replicas and report each one beside the totals.
//! - `bench ingest` publishes generated orders and measures how soon they are stored and
//!   servable: while the service runs (live), or as a backlog that a freshly started service drains.
//!
//! Each run happens on the calling thread plus a few threads of its own; nothing is shared with
//! the service's code except the order model and the JetStream setup.

mod client;
mod http;
mod ingest;
mod reference;
mod report;
mod targets;

use clap::{Args, Subcommand};
use color_eyre::eyre::Result;

pub use self::http::HttpArgs;
pub use self::ingest::{IngestArgs, Mode};

/// Default service URL of both benchmarks.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Settings of `ordersvc bench`.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Which benchmark.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The two benchmarks.
#[derive(Subcommand, Clone, Debug)]
pub enum BenchCommand {
    /// Load `GET /order/{id}`: open loop at a constant rate, or closed loop at maximum speed.
    Http(HttpArgs),
    /// Publish generated orders and measure how fast they become visible over HTTP.
    // Boxed: its flags make it several times the size of `Http`'s.
    Ingest(Box<IngestArgs>),
}

/// Runs the chosen benchmark and prints its report on stdout.
pub fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        BenchCommand::Http(args) => http::run(args),
        BenchCommand::Ingest(args) => ingest::run(*args),
    }
}

/// Parses a ratio in `0.0..=1.0`.
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{text} is not between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_between_zero_and_one() {
        assert_eq!(parse_ratio("0"), Ok(0.0));
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert_eq!(parse_ratio("1.0"), Ok(1.0));
        for bad in ["-0.1", "1.01", "half", "NaN"] {
            assert!(parse_ratio(bad).is_err(), "{bad:?}");
        }
    }
}
