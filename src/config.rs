//! Settings shared by the subcommands: every one is a flag with an environment variable and a
//! default (the design's contract table), parsed once in `main` and passed down.

use clap::{Args, ValueEnum};

/// Default PostgreSQL URL: the service's own role, never the superuser.
pub const DEFAULT_DATABASE_URL: &str = "postgres://ordersvc:ordersvc@127.0.0.1:5432/orders";
/// Default NATS server.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default JetStream stream name.
pub const DEFAULT_STREAM: &str = "ORDERS";
/// Default subject the stream captures and `publish` writes to.
pub const DEFAULT_SUBJECT: &str = "orders";
/// Default durable consumer name.
pub const DEFAULT_DURABLE: &str = "ordersvc";
/// Default HTTP listen address (loopback: put a proxy in front to expose it).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

/// Where PostgreSQL is.
#[derive(Args, Clone, Debug)]
pub struct DbArgs {
    /// PostgreSQL URL; the database is created if it does not exist.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
}

/// Where the JetStream stream is.
#[derive(Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,
    /// JetStream stream name (created if missing).
    #[arg(long, env = "ORDERSVC_STREAM", default_value = DEFAULT_STREAM)]
    pub stream: String,
    /// Subject the orders are published on.
    #[arg(long, env = "ORDERSVC_SUBJECT", default_value = DEFAULT_SUBJECT)]
    pub subject: String,
}

/// How log lines look.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Parses a positive number of seconds, such as `10` or `0.5`.
pub fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!(
            "{s:?} must be more than 0 and at most 86400 seconds"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parse_as_positive_durations_only() {
        assert_eq!(parse_seconds("10"), Ok(std::time::Duration::from_secs(10)));
        assert_eq!(
            parse_seconds("0.5"),
            Ok(std::time::Duration::from_millis(500))
        );
        for bad in ["", "0", "-1", "abc", "NaN", "inf", "1e9"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }
}
