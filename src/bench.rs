//! `ordersvc bench`: measures the service the way a user meets it, from outside.
//!
//! - `bench http` is a load generator for `GET /order/{id}` (our own Vegeta: open-loop constant
//!   rate with latency counted from the moment each request was due, or closed-loop maximum
//!   throughput), with its own minimal HTTP/1.1 client so that the client's cost stays small.
//! - `bench ingest` publishes generated orders and measures how soon they are stored and
//!   servable: while the service runs (live), or as a backlog that a freshly started service drains.
//!
//! Each run happens on the calling thread plus a few threads of its own; nothing is shared with
//! the service's code except the order model and the JetStream setup.

mod client;
mod http;
mod ingest;
mod report;

use std::time::Duration;

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
    Ingest(IngestArgs),
}

/// Runs the chosen benchmark and prints its report on stdout.
pub fn run(args: BenchArgs) -> Result<()> {
    match args.command {
        BenchCommand::Http(args) => http::run(args),
        BenchCommand::Ingest(args) => ingest::run(args),
    }
}

/// Parses `500ms`, `10s`, `1.5s`, `2m` or `1h` (a number and a unit, no spaces).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit: write e.g. 500ms, 10s, 2m or 1h"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let seconds_per_unit = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(value * seconds_per_unit)
        .map_err(|_| format!("{text:?} is out of range"))
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
    fn durations_take_the_units_people_write() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_without_a_known_unit_or_number_are_refused() {
        for bad in ["10", "", "s", "10 s", "10sec", "-1s", "1e3s", "ms10"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

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
