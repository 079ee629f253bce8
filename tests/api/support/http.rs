//! HTTP requests of the tests: a bounded client that follows no redirects, answers as
//! `(status, headers, body)`, and readers of what a replica reports.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Between two polls.
const POLL: Duration = Duration::from_millis(25);

/// How long a published order may take to be served.
pub const ORDER_DEADLINE: Duration = Duration::from_secs(30);

/// An HTTP answer: status, headers (lower-case names), body.
pub type Reply = (u16, HashMap<String, String>, Vec<u8>);

/// The tests' HTTP client: bounded requests, no redirects followed.
pub fn http_agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(15))
        .redirects(0)
        .build()
}

/// Any method at `addr`, with extra headers; 4xx and 5xx are answers, not errors.
pub fn http_request(
    http: &ureq::Agent,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let url = format!("http://{addr}{path}");
    let mut request = http.request(method, &url);
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let response = match request.call() {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("{method} {url} failed: {e}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .map(|name| {
            let value = response.header(&name).unwrap_or_default().to_owned();
            (name.to_ascii_lowercase(), value)
        })
        .collect();
    let mut body = Vec::new();
    response
        .into_reader()
        .read_to_end(&mut body)
        .unwrap_or_else(|e| panic!("cannot read the body of {method} {url}: {e}"));
    (status, headers, body)
}

/// Polls `GET /order/{uid}` at `addr` until it is 200 and returns the body.
pub fn wait_for_order_at(http: &ureq::Agent, addr: SocketAddr, uid: &str) -> Vec<u8> {
    let deadline = Instant::now() + ORDER_DEADLINE;
    loop {
        let (status, _, body) = http_request(http, addr, "GET", &format!("/order/{uid}"), &[]);
        if status == 200 {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "order {uid} was not served within {ORDER_DEADLINE:?}; the last answer was {status} {}",
            String::from_utf8_lossy(&body)
        );
        std::thread::sleep(POLL);
    }
}

/// The status code of a raw HTTP answer.
pub fn status_of(answer: &[u8]) -> u16 {
    let line = answer.split(|&b| b == b'\r').next().unwrap_or_default();
    std::str::from_utf8(line)
        .ok()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(answer)))
}

/// The count of orders in a replica's cache, from its `/readyz` answer (0 if it has none).
pub fn cached_orders(readyz: &Reply) -> u64 {
    serde_json::from_slice::<serde_json::Value>(&readyz.2)
        .ok()
        .and_then(|json| json["orders"].as_u64())
        .unwrap_or(0)
}

/// New orders a replica stored itself, from its `/metrics` answer.
pub fn stored_here(metrics: &Reply) -> f64 {
    let text = std::str::from_utf8(&metrics.2).expect("the metrics are UTF-8");
    text.lines()
        .filter(|line| {
            line.starts_with("ordersvc_messages_total{") && line.contains("outcome=\"stored\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
