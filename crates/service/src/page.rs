//! The web page (`GET /` and its script): look an order up by id, or list the orders with a track
//! number or of a customer. Embedded in the binary, no CDN.
//!
//! Every string from an order is inserted as text (`textContent`), never as HTML, and the
//! Content-Security-Policy allows only this page's own script, so hostile order data cannot run.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::Response;

/// A whole asset response. Built here with hyper alone, so that the page needs nothing of the
/// `http` module that serves it.
pub(crate) type Asset = Response<Full<Bytes>>;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");
/// Only our own script and styles; no inline script, no framing, no other origins.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The page itself.
pub(crate) fn html() -> Asset {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// The page's script.
pub(crate) fn script() -> Asset {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

/// The page's style sheet.
pub(crate) fn style() -> Asset {
    asset(APP_CSS, "text/css; charset=utf-8")
}

/// A static asset built into the binary (the page's files, the API document), with the headers
/// every one of them gets: no sniffing, no framing, nothing from other origins.
pub(crate) fn asset(body: &'static str, content_type: &'static str) -> Asset {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
