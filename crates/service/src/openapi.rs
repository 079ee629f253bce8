//! `GET /openapi.json`: the public API's OpenAPI 3 document, embedded in the binary so that it
//! always describes the build that serves it. `tests/api/openapi.rs` checks it against the
//! routes the server answers, and schemathesis checks the live answers against it.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::Response;

/// The document.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// The whole response.
pub fn response() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(DOCUMENT.as_bytes())));
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "application/json"),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
