//! The admin listener's rules: which routes each listener answers, and the bearer token that
//! guards operator data (`/metrics`, `/rejected`) when one is set.
//!
//! `/rejected` hands out the raw payloads of refused messages (names, phones and addresses
//! included), so it never sits on the public listener, and on an admin address other than
//! loopback it needs a token: `serve` refuses to start otherwise.

use std::net::SocketAddr;

use color_eyre::eyre::{bail, Result};
use hyper::header::{self, HeaderMap};

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listener {
    /// `--http-addr`: the page and the order API.
    Public,
    /// `--admin-addr`: metrics, rejected messages and the health endpoints.
    Admin,
}

/// The admin token (`--admin-token`): compared in constant time, never printed.
#[derive(Clone)]
pub struct Token(ring::digest::Digest);

impl Token {
    /// A token from its text; an empty one is refused (it would guard nothing).
    pub(crate) fn new(text: &str) -> Result<Token> {
        if text.is_empty() {
            bail!("--admin-token is empty: give a token, or leave the flag out");
        }
        Ok(Token(digest(text.as_bytes())))
    }

    /// True when `headers` carry `Authorization: Bearer <this token>`. Both sides are compared
    /// as SHA-256 digests, in constant time: neither the length nor the first differing byte of
    /// the token shows in the time an answer takes.
    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(presented) = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        let presented = digest(presented);
        // Every byte is looked at whatever the first difference; and a difference between two
        // digests says nothing an attacker can steer towards the token anyway.
        let difference = self
            .0
            .as_ref()
            .iter()
            .zip(presented.as_ref())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

fn digest(bytes: &[u8]) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA256, bytes)
}

/// Refuses an admin listener that the network can reach with nothing guarding operator data.
pub(crate) fn check_exposure(admin_addr: SocketAddr, token: Option<&Token>) -> Result<()> {
    if token.is_none() && !admin_addr.ip().is_loopback() {
        bail!(
            "--admin-addr {admin_addr} is not a loopback address, and no --admin-token is set: \
             /rejected would hand the raw payloads of refused messages (names, phones, addresses) \
             and /metrics to anyone who can reach it. Set --admin-token (ORDERSVC_ADMIN_TOKEN), \
             or bind the admin listener to 127.0.0.1"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("a valid header value"),
        );
        headers
    }

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let token = Token::new("s3cret").expect("a token");
        assert!(token.admits(&with_authorization("Bearer s3cret")));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret ",
            "Bearer S3CRET",
            "bearer s3cret",
            "Basic s3cret",
            "s3cret",
            "Bearer ",
        ] {
            assert!(!token.admits(&with_authorization(wrong)), "{wrong:?}");
        }
        assert!(!token.admits(&HeaderMap::new()));
        assert!(Token::new("").is_err());
        assert_eq!(format!("{token:?}"), "Token(***)");
    }

    #[test]
    fn a_reachable_admin_listener_needs_a_token() {
        let token = Token::new("t").expect("a token");
        let loopback: SocketAddr = "127.0.0.1:8081".parse().expect("an address");
        let loopback6: SocketAddr = "[::1]:8081".parse().expect("an address");
        let any: SocketAddr = "0.0.0.0:8081".parse().expect("an address");
        let lan: SocketAddr = "10.1.2.3:8081".parse().expect("an address");
        assert!(check_exposure(loopback, None).is_ok());
        assert!(check_exposure(loopback6, None).is_ok());
        assert!(check_exposure(any, Some(&token)).is_ok());
        let refused = check_exposure(any, None).expect_err("refused");
        assert!(refused.to_string().contains("--admin-token"), "{refused}");
        assert!(check_exposure(lan, None).is_err());
    }
}
