//! The web page (`GET /` and its script): look an order up by id. Embedded in the binary, no CDN.
//!
//! Every string from an order is inserted as text (`textContent`), never as HTML, and the
//! Content-Security-Policy allows only this page's own script, so hostile order data cannot run.

use tiny_http::{Response, ResponseBox};

use crate::http::header;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");
/// Only our own script and styles; no inline script, no framing, no other origins.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The page itself.
pub fn html() -> ResponseBox {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// The page's script.
pub fn script() -> ResponseBox {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

/// The page's style sheet.
pub fn style() -> ResponseBox {
    asset(APP_CSS, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &str) -> ResponseBox {
    Response::from_data(body.as_bytes())
        .with_header(header("Content-Type", content_type))
        .with_header(header("Content-Security-Policy", CSP))
        .with_header(header("X-Content-Type-Options", "nosniff"))
        .with_header(header("Referrer-Policy", "no-referrer"))
        .with_header(header("Cache-Control", "no-cache"))
        .boxed()
}
