//! The web page (`GET /` and its script): look an order up by id. Embedded in the binary, no CDN.
//!
//! Every string from an order is inserted as text (`textContent`), never as HTML, and the
//! Content-Security-Policy allows only this page's own script, so hostile order data cannot run.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header;
use hyper::Response;

use crate::http::{set, Reply};

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");
/// Only our own script and styles; no inline script, no framing, no other origins.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The page itself.
pub fn html() -> Reply {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// The page's script.
pub fn script() -> Reply {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

/// The page's style sheet.
pub fn style() -> Reply {
    asset(APP_CSS, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    set(&mut response, header::CONTENT_TYPE, content_type);
    set(&mut response, header::CONTENT_SECURITY_POLICY, CSP);
    set(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(&mut response, header::REFERRER_POLICY, "no-referrer");
    set(&mut response, header::CACHE_CONTROL, "no-cache");
    response
}
