//! `GET /openapi.json`: the public API's OpenAPI 3 document, embedded in the binary so that it
//! always describes the build that serves it. `tests/api/openapi.rs` checks it against the
//! routes the server answers, and schemathesis checks the live answers against it.

/// The document.
pub const DOCUMENT: &str = include_str!("openapi.json");
