//! Reaching NATS: which servers, how to log in, which certificates to trust, and what to do
//! when the first attempt fails.
//!
//! async-nats sends only the credentials given to `ConnectOptions`, not those inside a URL, so
//! they are taken out of `--nats-url` here; every URL that is printed or handed to the client
//! afterwards is the bare server address.

use std::fmt;
use std::time::{Duration, Instant};

use async_nats::{ConnectErrorKind, ConnectOptions};
use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use percent_encoding::percent_decode_str;

use crate::config::NatsArgs;
use crate::tls::{self, caused_by_tls};

/// The longest a single attempt may wait for a server's answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first pause between attempts; it doubles up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// How ordersvc logs in to NATS.
#[derive(Clone, PartialEq, Eq)]
enum Credentials {
    None,
    UserPassword { user: String, password: String },
    Token(String),
}

// Never the secret itself, wherever a `Debug` ends up.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::UserPassword { user, .. } => write!(f, "UserPassword({user}, ***)"),
            Credentials::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// `--nats-url` taken apart: the servers without credentials, and the credentials.
#[derive(Debug)]
struct Target {
    /// Each server's URL without its user information, as given otherwise.
    servers: Vec<String>,
    credentials: Credentials,
    /// Any `tls://` (or `wss://`) URL: TLS is required.
    tls: bool,
}

impl Target {
    /// Parses the comma-separated `urls` and combines them with `token`.
    fn parse(urls: &str, token: Option<&str>) -> Result<Target> {
        let mut servers = Vec::new();
        let mut credentials = Credentials::None;
        for address in urls.split(',').map(str::trim) {
            if address.is_empty() {
                bail!("NATS_URL has an empty server address (two commas, or one at an end)");
            }
            let (server, given) = strip_credentials(address)?;
            if given != Credentials::None {
                if credentials != Credentials::None && credentials != given {
                    bail!(
                        "the NATS URLs carry different credentials; the client logs in to every \
                         server with the same ones: give them once"
                    );
                }
                credentials = given;
            }
            servers.push(server);
        }
        if let Some(token) = token {
            if credentials != Credentials::None {
                bail!("NATS credentials are given twice: in NATS_URL and as --nats-token (NATS_TOKEN)");
            }
            if token.is_empty() {
                bail!("--nats-token (NATS_TOKEN) is empty");
            }
            credentials = Credentials::Token(token.to_owned());
        }
        let tls = servers.iter().any(|s| {
            let scheme = s.split_once("://").map_or("", |(scheme, _)| scheme);
            scheme.eq_ignore_ascii_case("tls") || scheme.eq_ignore_ascii_case("wss")
        });
        Ok(Target {
            servers,
            credentials,
            tls,
        })
    }

    /// The servers as one list, for messages: nothing secret is left in them.
    fn shown(&self) -> String {
        self.servers.join(",")
    }
}

/// One URL without its `user:password@` or `token@`, and what that part said. The user
/// information runs to the last `@` (a password may hold an `@`), as in `config::redact_url`.
fn strip_credentials(address: &str) -> Result<(String, Credentials)> {
    let start = address.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = address.split_at(start);
    let Some(at) = rest.rfind('@') else {
        return Ok((address.to_owned(), Credentials::None));
    };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    let decode = |part: &str| {
        percent_decode_str(part)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| {
                eyre!("the NATS credentials in {scheme}…@{host} are not UTF-8 once decoded")
            })
    };
    let credentials = match userinfo.split_once(':') {
        Some((user, password)) => Credentials::UserPassword {
            user: decode(user)?,
            password: decode(password)?,
        },
        None if userinfo.is_empty() => Credentials::None,
        None => Credentials::Token(decode(userinfo)?),
    };
    Ok((format!("{scheme}{host}"), credentials))
}

/// Connects to NATS as `name`; from then on the client reconnects by itself for as long as the
/// process lives. While no server answers (a node not up yet), tries again until
/// `--nats-connect-timeout`; a refused login or a failed certificate check fails at once, since
/// trying again cannot change it.
pub async fn connect(args: &NatsArgs, name: &str) -> Result<async_nats::Client> {
    let target = Target::parse(&args.nats_url, args.nats_token.as_deref())?;
    let tls = tls::client_config(args.nats_tls_ca.as_deref())?;
    let require_tls = target.tls || args.nats_tls_ca.is_some();
    let deadline = Instant::now() + args.nats_connect_timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut options = ConnectOptions::new()
            .name(name)
            .max_reconnects(None)
            .connection_timeout(ATTEMPT_TIMEOUT.min(left).max(Duration::from_millis(100)))
            .require_tls(require_tls)
            .tls_client_config(tls.clone());
        options = match &target.credentials {
            Credentials::None => options,
            Credentials::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            Credentials::Token(token) => options.token(token.clone()),
        };
        let error = match options.connect(target.servers.as_slice()).await {
            Ok(client) => return Ok(client),
            Err(error) => error,
        };
        let servers = target.shown();
        match Failure::of(&error) {
            Failure::Login => {
                return Err(error).wrap_err_with(|| {
                    format!(
                        "NATS at {servers} refused to log in ordersvc: check the credentials \
                         (user and password, or token) and that they are authorized"
                    )
                })
            }
            Failure::Tls => {
                return Err(error).wrap_err_with(|| {
                    format!(
                        "cannot set up TLS with NATS at {servers}: check that the server has \
                         TLS on, and that --nats-tls-ca (NATS_TLS_CA) names the CA that signed \
                         its certificate unless that is a public one"
                    )
                })
            }
            Failure::Other => {
                return Err(error).wrap_err_with(|| format!("cannot connect to NATS at {servers}"))
            }
            Failure::Unreachable if Instant::now() + pause >= deadline => {
                return Err(error).wrap_err_with(|| {
                    format!(
                        "cannot connect to NATS at {servers} (no answer within \
                         --nats-connect-timeout {:?})",
                        args.nats_connect_timeout
                    )
                })
            }
            Failure::Unreachable => {
                tracing::warn!(%servers, %error, "NATS does not answer yet; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

/// Why a connection attempt failed, as far as trying again is concerned.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The server refused the credentials.
    Login,
    /// TLS could not be set up: a certificate, or TLS missing on one side.
    Tls,
    /// No server answered: it may be starting, or the network may come back.
    Unreachable,
    /// Anything else the server said no to (a malformed URL, an error it sent).
    Other,
}

impl Failure {
    fn of(error: &async_nats::ConnectError) -> Failure {
        match error.kind() {
            ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                Failure::Login
            }
            ConnectErrorKind::Tls => Failure::Tls,
            ConnectErrorKind::ServerParse => Failure::Other,
            // A failed handshake surfaces as an I/O error wrapping rustls's; an error the server
            // sent during the handshake as one wrapping the server's.
            _ if caused_by_tls(error) => Failure::Tls,
            _ if sent_by_server(error) => Failure::Other,
            _ => Failure::Unreachable,
        }
    }
}

/// Whether `error` carries an error message the server sent.
fn sent_by_server(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<async_nats::ServerError>() {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(urls: &str, token: Option<&str>) -> Target {
        Target::parse(urls, token).unwrap_or_else(|e| panic!("{urls}: {e:#}"))
    }

    #[test]
    fn credentials_are_taken_out_of_every_url() {
        let target = parsed("nats://user:pa%40ss:w@rd@h1:4222, nats://h2:4222", None);
        assert_eq!(target.servers, ["nats://h1:4222", "nats://h2:4222"]);
        assert_eq!(
            target.credentials,
            Credentials::UserPassword {
                user: "user".into(),
                password: "pa@ss:w@rd".into()
            }
        );
        assert!(!target.tls);

        let target = parsed("tls://t0ken@h:4222", None);
        assert_eq!(target.servers, ["tls://h:4222"]);
        assert_eq!(target.credentials, Credentials::Token("t0ken".into()));
        assert!(target.tls);

        let target = parsed("h:4222", Some("t0ken"));
        assert_eq!(target.servers, ["h:4222"]);
        assert_eq!(target.credentials, Credentials::Token("t0ken".into()));
    }

    #[test]
    fn the_same_credentials_in_several_urls_are_one_set() {
        let target = parsed("nats://u:p@h1,nats://u:p@h2,nats://h3", None);
        assert_eq!(target.servers, ["nats://h1", "nats://h2", "nats://h3"]);
        assert_eq!(
            target.credentials,
            Credentials::UserPassword {
                user: "u".into(),
                password: "p".into()
            }
        );
    }

    #[test]
    fn conflicting_or_empty_settings_are_refused_without_showing_a_secret() {
        for (urls, token) in [
            ("nats://u:s3cret1@h1,nats://u:s3cret2@h2", None),
            ("nats://u:s3cret1@h1", Some("s3cret2")),
            ("nats://h1,,nats://h2", None),
            ("nats://h1,", None),
            ("nats://h1", Some("")),
            ("nats://u:%FF%FEs3cret@h1", None),
        ] {
            let error = Target::parse(urls, token).expect_err(urls);
            let shown = format!("{error:#} {error:?}");
            assert!(!shown.contains("s3cret"), "{shown}");
        }
    }

    #[test]
    fn the_debug_form_hides_passwords_and_tokens() {
        let target = parsed("nats://u:s3cret@h1", None);
        assert!(!format!("{target:?}").contains("s3cret"));
        let target = parsed("nats://h1", Some("s3cret"));
        assert!(!format!("{target:?}").contains("s3cret"));
    }
}
