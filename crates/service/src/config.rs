//! Settings shared by the subcommands: every one is a flag with an environment variable and a
//! default (the design's contract table), parsed once in `main` and passed down.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Default PostgreSQL URL: the service's own role, never the superuser, in plaintext on loopback.
/// `sslmode=disable` is explicit because libpq's and sqlx's default, `prefer`, would silently
/// start TLS wherever the server offers it (Debian's does, with a self-signed certificate) and
/// pay for encryption that loopback does not need.
pub(crate) const DEFAULT_DATABASE_URL: &str =
    "postgres://ordersvc:ordersvc@127.0.0.1:5432/orders?sslmode=disable";
/// Default NATS server.
pub(crate) const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// Default JetStream stream name.
pub(crate) const DEFAULT_STREAM: &str = "ORDERS";
/// Default subject the stream captures and `publish` writes to.
pub(crate) const DEFAULT_SUBJECT: &str = "orders";
/// Default durable consumer name.
pub const DEFAULT_DURABLE: &str = "ordersvc";
/// Default HTTP listen address (loopback: put a proxy in front to expose it).
pub(crate) const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// Default admin listen address (`/metrics`, `/rejected`, the health endpoints): loopback only.
pub(crate) const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:8081";

/// Where PostgreSQL is.
#[derive(Args, Clone)]
pub struct DbArgs {
    /// PostgreSQL URL. `serve` and `migrate` create the database if it does not exist;
    /// `replay-from-db`, which only reads, refuses a missing one.
    // `--help` would print the environment's value, password and all.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
}

/// Default of `--read-catch-up-timeout`.
pub(crate) const DEFAULT_READ_CATCH_UP_TIMEOUT: &str = "30s";
/// Default of `--restore-connections`: on 2 cores, two scans keep both busy (docs/BENCHMARKS.md).
pub(crate) const DEFAULT_RESTORE_CONNECTIONS: u16 = 2;

/// Where `serve` reads what it does not write: the cache's restore, `/orders` listings and search.
#[derive(Args, Clone)]
pub struct ReadArgs {
    /// PostgreSQL URL the restore, `/orders` listings and search read: a standby, or a proxy's
    /// read port in front of standbys. Default: --database-url. Writes and cache misses (an
    /// order another replica has just stored) always go to --database-url. TLS parameters as
    /// in --database-url.
    #[arg(long, env = "DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,
    /// How long a restore from --database-read-url waits for that server to replay everything
    /// the primary had committed when the restore began; after it, the restore reads the
    /// primary instead (and says so in the log).
    #[arg(long, env = "ORDERSVC_READ_CATCH_UP_TIMEOUT", value_name = "DURATION",
          default_value = DEFAULT_READ_CATCH_UP_TIMEOUT, value_parser = parse_duration)]
    pub read_catch_up_timeout: Duration,
    /// Connections the restore reads the orders over, each scanning its share of the table.
    #[arg(long, env = "ORDERSVC_RESTORE_CONNECTIONS", default_value_t = DEFAULT_RESTORE_CONNECTIONS,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub restore_connections: u16,
}

/// How long a command keeps trying to reach a NATS server that is not up yet.
pub(crate) const DEFAULT_NATS_CONNECT_TIMEOUT: &str = "10s";

/// Where the JetStream stream is, and how to log in to NATS.
#[derive(Args, Clone)]
pub struct NatsArgs {
    /// NATS server URL, or several separated by commas (the client moves to another when one
    /// fails). `nats://` or `tls://`; credentials as `nats://user:password@host` or
    /// `nats://token@host` (one set, sent to every server).
    // `--help` would print the environment's value, password or token and all.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL, hide_env_values = true)]
    pub nats_url: String,
    /// NATS token (instead of credentials in the URL).
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// PEM file of the CA that signed the NATS servers' certificates, trusted beside the public
    /// CAs built in; giving one makes TLS required.
    #[arg(long, env = "NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// How long to keep trying while no NATS server answers (one that is not up yet). A refused
    /// login or certificate fails at once.
    #[arg(long, env = "ORDERSVC_NATS_CONNECT_TIMEOUT", value_name = "DURATION",
          default_value = DEFAULT_NATS_CONNECT_TIMEOUT, value_parser = parse_duration)]
    pub nats_connect_timeout: Duration,
    /// Replicas of every stream ordersvc creates (3 on a 3-node cluster, so that a stream
    /// survives a lost node). An existing stream is used as it is.
    #[arg(long, env = "ORDERSVC_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
    /// JetStream stream name (created if missing).
    #[arg(long, env = "ORDERSVC_STREAM", default_value = DEFAULT_STREAM)]
    pub stream: String,
    /// Subject the orders are published on.
    #[arg(long, env = "ORDERSVC_SUBJECT", default_value = DEFAULT_SUBJECT)]
    pub subject: String,
}

/// The service a command changes data of (`erase`, `rejected reprocess`): its database, its
/// stream, and the durable consumer that names its changelog, which every replica follows.
#[derive(Args, Clone, Debug)]
pub struct ServiceArgs {
    /// Where PostgreSQL is.
    #[command(flatten)]
    pub db: DbArgs,
    /// Where the stream is.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Durable consumer name of the service: it names the changelog its replicas follow.
    #[arg(long, env = "ORDERSVC_DURABLE", default_value = DEFAULT_DURABLE)]
    pub durable: String,
}

// By hand, not derived: a `{:?}` of the settings must not print a password or token.
impl std::fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbArgs")
            .field("database_url", &redact_url(&self.database_url))
            .finish()
    }
}

impl std::fmt::Debug for ReadArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadArgs")
            .field(
                "database_read_url",
                &self.database_read_url.as_deref().map(redact_url),
            )
            .field("read_catch_up_timeout", &self.read_catch_up_timeout)
            .field("restore_connections", &self.restore_connections)
            .finish()
    }
}

impl std::fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsArgs")
            .field("nats_url", &redact_url(&self.nats_url))
            .field("nats_token", &self.nats_token.as_ref().map(|_| "***"))
            .field("nats_tls_ca", &self.nats_tls_ca)
            .field("nats_connect_timeout", &self.nats_connect_timeout)
            .field("stream_replicas", &self.stream_replicas)
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .finish()
    }
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

/// The longest duration any flag takes: a day. Longer is a typo, and bounding it keeps every
/// `Instant + duration` far from overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// How a duration flag is written, for help texts and error messages.
const DURATION_SYNTAX: &str = "a number with a unit: 250ms, 10s, 2m, 1h (a bare number is seconds)";

/// Parses a duration flag: a number and a unit, `250ms`, `10s`, `1.5s`, `2m` or `1h`, or a bare
/// number of seconds (`10`, `0.5`), which is what the older flags took. No spaces, no exponents;
/// A flag's RFC 3339 date-time (e.g. 2021-11-26T00:00:00Z).
pub fn parse_date_time(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("expected an RFC 3339 date-time: {e}"))
}

/// more than zero and at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let nanos_per_unit: u128 = match unit {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        _ => return Err(format!("{s:?} is not a duration: write {DURATION_SYNTAX}")),
    };
    // Decimal arithmetic on the digits, not f64: `0.1s` is exactly 100ms, and NaN, infinities
    // and exponents never get in.
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty()
        || !all_digits(whole)
        || !all_digits(fraction)
        || fraction.len() > 9
    {
        return Err(format!("{s:?} is not a duration: write {DURATION_SYNTAX}"));
    }
    let too_large = || {
        format!(
            "{s:?} is too long: at most {}h",
            MAX_DURATION.as_secs() / 3600
        )
    };
    let whole: u128 = match whole {
        "" => 0,
        digits => digits.parse().map_err(|_| too_large())?,
    };
    let fraction_nanos = match fraction {
        "" => 0,
        digits => {
            let value: u128 = digits.parse().map_err(|_| too_large())?;
            value * nanos_per_unit / 10u128.pow(digits.len() as u32)
        }
    };
    let nanos = whole
        .checked_mul(nanos_per_unit)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or_else(too_large)?;
    if nanos == 0 {
        return Err(format!("{s:?} must be more than zero"));
    }
    if nanos > MAX_DURATION.as_nanos() {
        return Err(too_large());
    }
    // At most a day in nanoseconds: far below u64::MAX.
    Ok(Duration::from_nanos(
        u64::try_from(nanos).map_err(|_| too_large())?,
    ))
}

/// `url` without its secrets, for error messages and logs: the password of `user:password@`,
/// a NATS token (`nats://token@host`: a user name alone is a secret there, unlike in a PostgreSQL
/// URL) and `password=`/`sslpassword=` parameters become `***`. A NATS list (`nats://a,nats://b`)
/// is redacted address by address.
pub(crate) fn redact_url(url: &str) -> String {
    let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if postgres {
        // A PostgreSQL URL's commas separate hosts inside one authority: redact it whole.
        redact_one(url, true)
    } else {
        url.split(',')
            .map(|address| redact_one(address, false))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One URL: the user info up to the last `@` (a password may contain `@` or `/`, so a stray `@`
/// later on hides too much rather than too little), then the query parameters.
fn redact_one(url: &str, user_is_public: bool) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = url.split_at(start);
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => {
            let (userinfo, after) = rest.split_at(at);
            let userinfo = match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***"),
                None if user_is_public || userinfo.is_empty() => userinfo.to_owned(),
                None => "***".to_owned(),
            };
            (userinfo, after)
        }
        None => (String::new(), rest),
    };
    let after = match after.split_once('?') {
        Some((path, query)) => {
            let parameters: Vec<String> = query
                .split('&')
                .map(|parameter| match parameter.split_once('=') {
                    Some((key, _))
                        if key.eq_ignore_ascii_case("password")
                            || key.eq_ignore_ascii_case("sslpassword") =>
                    {
                        format!("{key}=***")
                    }
                    _ => parameter.to_owned(),
                })
                .collect();
            format!("{path}?{}", parameters.join("&"))
        }
        None => after.to_owned(),
    };
    format!("{scheme}{userinfo}{after}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords_and_tokens_but_not_where_the_server_is() {
        for (url, redacted) in [
            (
                "postgres://u:secret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
            ("postgres://h/db", "postgres://h/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://u:p@ss/w@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u:pw@h1:5432,h2:5433/db",
                "postgres://u:***@h1:5432,h2:5433/db",
            ),
            (
                "postgres://u@h/db?sslmode=require&password=secret",
                "postgres://u@h/db?sslmode=require&password=***",
            ),
            (
                "postgres://h/db?SSLPASSWORD=secret",
                "postgres://h/db?SSLPASSWORD=***",
            ),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats://user:secret@h:4222", "nats://user:***@h:4222"),
            ("nats://secret@h:4222", "nats://***@h:4222"),
            ("tls://secret@h", "tls://***@h"),
            ("user:secret@h:4222", "user:***@h:4222"),
            ("h:4222", "h:4222"),
            (
                "nats://a:secret@h1:4222,nats://secret@h2:4222,nats://h3",
                "nats://a:***@h1:4222,nats://***@h2:4222,nats://h3",
            ),
        ] {
            assert_eq!(redact_url(url), redacted, "{url}");
            assert!(!redact_url(url).contains("secret"), "{url}");
        }
    }

    #[test]
    fn the_debug_form_of_the_settings_shows_no_password_or_token() {
        let db = DbArgs {
            database_url: "postgres://u:s3cret@h/db".into(),
        };
        let nats = NatsArgs {
            nats_url: "nats://u:s3cret@h:4222".into(),
            nats_token: Some("s3cret".into()),
            nats_tls_ca: None,
            nats_connect_timeout: Duration::from_secs(1),
            stream_replicas: 1,
            stream: "S".into(),
            subject: "s".into(),
        };
        let reads = ReadArgs {
            database_read_url: Some("postgres://u:s3cret@standby/db".into()),
            read_catch_up_timeout: Duration::from_secs(1),
            restore_connections: 2,
        };
        let shown = format!("{db:?} {nats:?} {reads:?} {db:#?} {nats:#?} {reads:#?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("h:4222") && shown.contains("h/db") && shown.contains("standby/db"),
            "{shown}"
        );
    }

    #[test]
    fn durations_take_a_unit_or_a_bare_number_of_seconds() {
        for (text, expected) in [
            ("10", Duration::from_secs(10)),
            ("0.5", Duration::from_millis(500)),
            ("10s", Duration::from_secs(10)),
            ("1.5s", Duration::from_millis(1500)),
            ("250ms", Duration::from_millis(250)),
            ("0.1s", Duration::from_millis(100)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("24h", MAX_DURATION),
            (" 10s ", Duration::from_secs(10)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn durations_that_are_empty_zero_negative_odd_or_too_long_are_refused() {
        for bad in [
            "",
            " ",
            "0",
            "0s",
            "0.0ms",
            "-1",
            "-1s",
            "abc",
            "NaN",
            "inf",
            "infs",
            "10x",
            "10 s",
            "10sec",
            "1e3",
            "1e3s",
            "s",
            ".",
            "1.2.3",
            "ms10",
            "25h",
            "86401",
            "1.0000000001s",
            "99999999999999999999999999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_refused_duration_says_how_to_write_one() {
        let error = parse_duration("10x").expect_err("refused");
        assert!(error.contains("250ms, 10s, 2m, 1h"), "{error}");
    }
}
