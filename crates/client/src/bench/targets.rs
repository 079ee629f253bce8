//! The services one `bench http` run loads: the `--url` list parsed into targets, and which
//! connection goes to which target.
//!
//! Several targets are for replicas behind no load balancer (or to compare them under the same
//! load): connections are dealt out round-robin, so each target gets an equal share of them and
//! the report can break the numbers down per target. A connection stays on its target for the
//! whole run; in open loop, requests go to whichever connection is free, so a slow target takes
//! fewer of them and its own latencies show why.

use std::collections::HashSet;

use color_eyre::eyre::{bail, Result};

use super::client::Target;

/// Parses every `--url` into a target: at least one, none empty, none twice.
///
/// A URL given twice would be two rows of the same service in the breakdown (and twice its share
/// of connections), which is far more likely a slip than a wish; it is refused.
pub(crate) fn parse(urls: &[String]) -> Result<Vec<Target>> {
    if urls.is_empty() {
        bail!("no --url: give at least one service URL");
    }
    let mut seen = HashSet::new();
    let mut targets = Vec::with_capacity(urls.len());
    for (n, url) in urls.iter().enumerate() {
        let url = url.trim();
        if url.is_empty() {
            bail!(
                "--url entry {} is empty (two commas in a row, or a comma at the end?)",
                n + 1
            );
        }
        let target = Target::parse(url)?;
        if !seen.insert(target.url().to_owned()) {
            bail!("--url {} is given twice", target.url());
        }
        targets.push(target);
    }
    Ok(targets)
}

/// The target of connection `n` of a run over `targets` targets: round-robin, so that the
/// shares differ by at most one and the first targets get the extra connections.
pub(crate) fn target_of(n: usize, targets: usize) -> usize {
    n % targets.max(1)
}

/// How many of `connections` each of `targets` targets gets (as dealt out by [`target_of`]), or
/// an error when some target would get none: a target without a connection would not be
/// measured at all, while the report would still list it.
pub(crate) fn split(connections: usize, targets: usize) -> Result<Vec<usize>> {
    if connections < targets {
        bail!(
            "--connections {connections} is fewer than the {targets} URLs: every URL needs at \
             least one connection"
        );
    }
    let mut shares = vec![0; targets];
    for n in 0..connections {
        shares[target_of(n, targets)] += 1;
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|u| (*u).to_owned()).collect()
    }

    #[test]
    fn sixty_four_connections_over_three_targets_are_22_21_21() {
        assert_eq!(split(64, 3).expect("enough"), vec![22, 21, 21]);
        assert_eq!(split(64, 1).expect("enough"), vec![64]);
        assert_eq!(split(3, 3).expect("enough"), vec![1, 1, 1]);
    }

    #[test]
    fn connections_are_dealt_out_round_robin() {
        let order: Vec<usize> = (0..7).map(|n| target_of(n, 3)).collect();
        assert_eq!(order, vec![0, 1, 2, 0, 1, 2, 0]);
        assert!((0..10).all(|n| target_of(n, 1) == 0));
    }

    #[test]
    fn fewer_connections_than_targets_is_refused() {
        let err = split(2, 3).expect_err("a target would get no connection");
        assert!(err.to_string().contains("fewer than the 3 URLs"), "{err}");
    }

    #[test]
    fn targets_keep_the_order_of_the_urls() {
        let targets = parse(&urls(&[
            "http://127.0.0.1:18081",
            "http://127.0.0.1:18082/",
            " http://127.0.0.1:18083",
        ]))
        .expect("valid");
        let parsed: Vec<&str> = targets.iter().map(Target::url).collect();
        assert_eq!(
            parsed,
            [
                "http://127.0.0.1:18081",
                "http://127.0.0.1:18082",
                "http://127.0.0.1:18083"
            ]
        );
    }

    #[test]
    fn empty_repeated_and_invalid_urls_are_refused() {
        let err = parse(&urls(&["http://127.0.0.1:1", ""])).expect_err("empty");
        assert!(err.to_string().contains("entry 2 is empty"), "{err}");
        let err = parse(&urls(&["http://127.0.0.1:1", "http://127.0.0.1:1/"])).expect_err("twice");
        assert!(err.to_string().contains("given twice"), "{err}");
        assert!(parse(&urls(&["http://127.0.0.1:1", "https://127.0.0.1:2"])).is_err());
        assert!(parse(&[]).is_err());
    }
}
