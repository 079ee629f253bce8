//! The HTTP front: routes and handlers, all async on the HTTP runtime. Orders are answered from
//! the cache; what needs PostgreSQL (a listing, an order missing from a bounded cache) goes
//! through the HTTP side's own small pool, never through ingest's, so readers cannot make a commit
//! wait for a connection. The connection layer and its limits are in `server`.
//!
//! Routes (the design's contract): on the public listener `GET /order/{order_uid}`,
//! `GET /orders`, `GET /`, `GET /openapi.json`, `GET /healthz`, `GET /readyz`; on the admin
//! listener `GET /metrics`, `GET /rejected`, `GET /healthz`, `GET /readyz`. `/readyz/reads` is
//! on both. A route of the other listener is a 404. HEAD works wherever GET does; other methods
//! get 405.

mod admin;
mod server;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::batch::ERASED_KIND;
use crate::cache::{Body, Cache, CacheWriter, Entry, LoadError};
use crate::health::Health;
use crate::metrics::{HttpLabels, Metrics, RouteLabels};
use crate::order::OrderUid;
use crate::page;
use crate::store::{Matching, Store, SEARCH_MAX_CHARS};

pub(crate) use self::admin::{check_exposure, Listener, Token};
pub use self::server::MAX_HEAD_BYTES;
pub(crate) use self::server::{Databases, Endpoint, HttpServer, Limits};

/// Default page size of the listings, and the largest of each.
const LIST_DEFAULT_LIMIT: i64 = 20;
const ORDERS_MAX_LIMIT: i64 = 1000;
const REJECTED_MAX_LIMIT: i64 = 200;
/// How much of a rejected payload `/rejected` shows (the whole is in PostgreSQL).
const REJECTED_PAYLOAD_SHOWN: usize = 4096;
/// Longest a request waits for PostgreSQL (a listing, or an order missing from memory).
const DB_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest id echoed back in an error body.
const ECHO_MAX: usize = 128;

/// A response, whole in memory (orders are shared with the cache, not copied).
pub(crate) type Reply = Response<Full<Bytes>>;

/// What serve shares with the request handlers.
pub(crate) struct AppState {
    /// The read model: read by every request, and written (through its one writer) by a miss
    /// loaded from PostgreSQL.
    pub(crate) cache: CacheWriter,
    /// Dependency health for `/readyz`.
    pub(crate) health: Arc<Health>,
    /// Where requests are counted and timed.
    pub(crate) metrics: Arc<Metrics>,
    /// When set, `/metrics` and `/rejected` need `Authorization: Bearer <token>`.
    pub(crate) admin_token: Option<Token>,
}

/// What every connection task reads: serve's state, and the HTTP side's own pools (made on the
/// HTTP runtime, which owns their connections: see `Store::open_pool`).
struct Shared {
    state: AppState,
    /// The primary: misses (an order another replica has just stored may not have reached a
    /// standby yet) and `/rejected`.
    store: Store,
    /// `--database-read-url`'s server (the primary's pool when there is none): listings and
    /// search, which may lag a moment behind the primary.
    reads: Store,
}

/// Answers one request that came in on `listener`, and counts and times it.
async fn handle<B>(request: Request<B>, listener: Listener, shared: &Shared) -> Reply {
    let started = Instant::now();
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", |target| target.as_str());
    let route = match resolve(target) {
        route if route.served_on(listener) => route,
        _ => Route::NotFound,
    };
    let name = route.name();
    let response = answer(route, &request, shared).await;
    let metrics = &shared.state.metrics;
    metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route: name,
            status: response.status().as_u16(),
        })
        .inc();
    metrics
        .http_seconds
        .get_or_create(&RouteLabels { route: name })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Where a request target leads. Pure (no I/O), so that it can be fuzzed on its own.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/`: the web page.
    Page,
    /// `/app.js`.
    Script,
    /// `/app.css`.
    Style,
    /// `/openapi.json`: the public API's document.
    OpenApi,
    /// `/healthz`.
    Healthz,
    /// `/readyz`.
    Readyz,
    /// `/readyz/reads`.
    ReadyzReads,
    /// `/metrics`.
    Metrics,
    /// `/orders?…`, with its query string.
    Orders(&'a str),
    /// `/rejected?…`, with its query string.
    Rejected(&'a str),
    /// `/order/{id}`: the decoded, validated id, or why it is not one.
    Order(Result<OrderUid, BadId>),
    /// Anything else.
    NotFound,
}

/// An `/order/{id}` whose id breaks the order_uid rule.
#[derive(Debug, PartialEq, Eq)]
pub struct BadId {
    /// The rule it breaks.
    pub(crate) reason: String,
    /// The id as received (lossily decoded), for the error body.
    pub(crate) id: String,
}

impl Route<'_> {
    /// Whether `listener` answers this route: operator data only on the admin listener, the
    /// page and the order API only on the public one, the health endpoints on both.
    pub(crate) fn served_on(&self, listener: Listener) -> bool {
        match self {
            Route::Healthz | Route::Readyz | Route::ReadyzReads | Route::NotFound => true,
            Route::Metrics | Route::Rejected(_) => listener == Listener::Admin,
            Route::Page
            | Route::Script
            | Route::Style
            | Route::OpenApi
            | Route::Orders(_)
            | Route::Order(_) => listener == Listener::Public,
        }
    }

    /// The route's name in the metrics (never the path itself: ids would make labels unbounded).
    pub fn name(&self) -> &'static str {
        match self {
            Route::Page | Route::Script | Route::Style => "page",
            Route::OpenApi => "openapi",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::ReadyzReads => "readyz_reads",
            Route::Metrics => "metrics",
            Route::Orders(_) => "orders",
            Route::Rejected(_) => "rejected",
            Route::Order(_) => "order",
            Route::NotFound => "other",
        }
    }
}

/// Resolves a request target (path and query, as sent).
pub fn resolve(target: &str) -> Route<'_> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/" => Route::Page,
        "/app.js" => Route::Script,
        "/app.css" => Route::Style,
        "/openapi.json" => Route::OpenApi,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        "/readyz/reads" => Route::ReadyzReads,
        "/metrics" => Route::Metrics,
        "/orders" => Route::Orders(query),
        "/rejected" => Route::Rejected(query),
        _ => match path.strip_prefix("/order/") {
            Some(raw_id) => Route::Order(decode_id(raw_id)),
            None => Route::NotFound,
        },
    }
}

/// Percent-decodes and validates the id of `/order/{id}`.
fn decode_id(raw_id: &str) -> Result<OrderUid, BadId> {
    let id = percent_decode_str(raw_id)
        .decode_utf8()
        .map_err(|_| BadId {
            reason: "order_uid must be valid UTF-8".to_owned(),
            id: raw_id.to_owned(),
        })?;
    OrderUid::parse(&id).map_err(|e| BadId {
        reason: e.to_string(),
        id: id.into_owned(),
    })
}

/// The response for a resolved route.
async fn answer<B>(route: Route<'_>, request: &Request<B>, shared: &Shared) -> Reply {
    let state = &shared.state;
    let allowed = matches!(*request.method(), Method::GET | Method::HEAD);
    // One arm per route, in one match, so that the compiler checks that none is answered twice:
    // an unknown path is a 404 whatever the method, a known one takes only GET and HEAD.
    match route {
        Route::NotFound => json_response(404, &json!({ "error": "no such path" })),
        _ if !allowed => {
            let mut response = json_response(405, &json!({ "error": "method not allowed" }));
            set(&mut response, header::ALLOW, "GET, HEAD");
            response
        }
        Route::Page => page::html(),
        Route::Script => page::script(),
        Route::Style => page::style(),
        Route::OpenApi => page::asset(crate::openapi::DOCUMENT, "application/json"),
        Route::Healthz => json_response(200, &json!({ "status": "ok" })),
        Route::Readyz => {
            let cache = state.cache.cache();
            readiness(state.health.readiness(cache), cache)
        }
        Route::ReadyzReads => {
            let cache = state.cache.cache();
            readiness(state.health.reads_readiness(cache), cache)
        }
        Route::Metrics | Route::Rejected(_) if !admitted(state, request) => unauthorized(),
        Route::Metrics => {
            let text = state.metrics.encode(state.cache.cache(), &state.health);
            let mut response = Response::new(Full::new(Bytes::from(text)));
            set(
                &mut response,
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            );
            response
        }
        Route::Orders(query) => recent_orders(query, shared).await,
        Route::Rejected(query) => rejected(query, shared).await,
        Route::Order(Ok(uid)) => order(request, uid, shared).await,
        Route::Order(Err(bad)) => id_error(400, &bad.reason, &bad.id),
    }
}

/// True when no admin token is set, or the request carries it.
fn admitted<B>(state: &AppState, request: &Request<B>) -> bool {
    state
        .admin_token
        .as_ref()
        .is_none_or(|token| token.admits(request.headers()))
}

/// 401: operator data needs the admin token.
fn unauthorized() -> Reply {
    let mut response = json_response(
        401,
        &json!({ "error": "this needs the admin token: Authorization: Bearer <token>" }),
    );
    set(
        &mut response,
        header::WWW_AUTHENTICATE,
        "Bearer realm=\"ordersvc admin\"",
    );
    response
}

/// `/readyz` and `/readyz/reads`: 200 without reasons, 503 with them. One shape for both
/// answers, so that a client reads `reasons` without a branch.
fn readiness(reasons: Vec<String>, cache: &Cache) -> Reply {
    let (status, word) = if reasons.is_empty() {
        (200, "ready")
    } else {
        (503, "not ready")
    };
    json_response(
        status,
        &json!({ "status": word, "orders": cache.len(), "reasons": reasons }),
    )
}

/// `GET /order/{order_uid}`.
async fn order<B>(request: &Request<B>, uid: OrderUid, shared: &Shared) -> Reply {
    let writer = &shared.state.cache;
    let cache = writer.cache();
    if let Some(entry) = cache.get(uid.as_str()) {
        return order_response(request, &entry);
    }
    if cache.is_erased(uid.as_str()) {
        return id_error(404, "order not found", uid.as_str());
    }
    if !cache.is_restored() {
        // Serve what is already loaded, but never a false 404 while the rest is on its way.
        let mut response = id_error(
            503,
            "the service is starting: orders are being restored",
            uid.as_str(),
        );
        set(&mut response, header::RETRY_AFTER, "1");
        return response;
    }
    // Not in memory is not proof of absence: evicted from a bounded cache, or stored a moment
    // ago by another replica whose fan-out has not arrived. Ask PostgreSQL (once per id however
    // many requests want it, a bounded number of ids at once), within a short deadline.
    let (health, store, key) = (
        shared.state.health.clone(),
        shared.store.clone(),
        uid.clone(),
    );
    let loaded = writer
        .get_or_load(&uid, move || async move {
            db_call(&health, store.document(key.as_str()))
                .await
                .map_err(LoadError::Unavailable)
        })
        .await;
    match loaded {
        // A load that raced an erasure: the cache drops it; so does the answer.
        Ok(Some(_)) if cache.is_erased(uid.as_str()) => {
            id_error(404, "order not found", uid.as_str())
        }
        Ok(Some(entry)) => order_response(request, &entry),
        Ok(None) => id_error(404, "order not found", uid.as_str()),
        Err(e) => {
            let mut response = id_error(503, &e.to_string(), uid.as_str());
            set(&mut response, header::RETRY_AFTER, "1");
            response
        }
    }
}

/// 200 with the cached body, or 304 when the client already has it.
fn order_response<B>(request: &Request<B>, entry: &Arc<Entry>) -> Reply {
    let tag = entry.etag();
    let not_modified = if_none_match(request, &tag);
    let mut response = if not_modified {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        // The cache's bytes, shared: no copy per request.
        let mut response = Response::new(Full::new(Bytes::from_owner(Body(entry.clone()))));
        set(&mut response, header::CONTENT_TYPE, "application/json");
        set(&mut response, header::CACHE_CONTROL, "no-cache");
        // The body holds untrusted text: never let a browser sniff it as HTML.
        set(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        response
    };
    // An ETag is a quoted hex digest, always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&tag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// `limit` and `before` of a listing; any other parameter is refused.
struct Paging {
    limit: i64,
    before: Option<String>,
}

/// Reads the paging parameters, or says why they are wrong.
fn paging(query: &str, max: i64) -> Result<Paging, String> {
    paging_and(query, max, |key, _| Err(unknown_parameter(key)))
}

fn unknown_parameter(key: &str) -> String {
    format!("unknown parameter {key:?}")
}

/// Reads the paging parameters and hands every other one, with its raw (still encoded) value,
/// to `other`, which takes it or says why not.
fn paging_and(
    query: &str,
    max: i64,
    mut other: impl FnMut(&str, &str) -> Result<(), String>,
) -> Result<Paging, String> {
    let mut paging = Paging {
        limit: LIST_DEFAULT_LIMIT.min(max),
        before: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(raw).decode_utf8_lossy();
        match key {
            "limit" => match value.parse::<i64>() {
                Ok(n) if (1..=max).contains(&n) => paging.limit = n,
                _ => return Err(format!("limit must be an integer from 1 to {max}")),
            },
            "before" => paging.before = Some(value.into_owned()),
            _ => other(key, raw)?,
        }
    }
    Ok(paging)
}

/// The search that parameter `key` asks for with `raw`, its value as sent; `None` when `key`
/// is not a search parameter. Only this and `and_search` make a `Matching` from a request, so
/// the store always gets values its search indexes hold.
///
/// The value is form-decoded (`+` is a space, as every form encoder sends it; a literal `+`
/// comes as `%2B`) and must be 1 to `SEARCH_MAX_CHARS` characters. Validation only requires
/// these fields to be non-empty and sets no maximum; the bound is the search indexes' (see
/// the migration), and it also keeps an absurd value away from PostgreSQL. U+0000 cannot be
/// in a stored column (the store replaces it) nor be sent to PostgreSQL as text, so it is
/// refused rather than turned into a database error.
fn search(key: &str, raw: &str) -> Option<Result<Matching, String>> {
    let make: fn(String) -> Matching = match key {
        "track_number" => Matching::TrackNumber,
        "customer_id" => Matching::CustomerId,
        _ => return None,
    };
    let spaced = raw.replace('+', " ");
    let Ok(value) = percent_decode_str(&spaced).decode_utf8() else {
        return Some(Err(format!("{key} must be valid UTF-8")));
    };
    let chars = value.chars().count();
    Some(if !(1..=SEARCH_MAX_CHARS).contains(&chars) {
        Err(format!("{key} must be 1 to {SEARCH_MAX_CHARS} characters"))
    } else if value.contains('\0') {
        Err(format!("{key} must not contain U+0000"))
    } else {
        Ok(make(value.into_owned()))
    })
}

/// Two searches together (the orders with this track number of this customer); `Err` names a
/// parameter given twice.
fn and_search(earlier: Matching, more: Matching) -> Result<Matching, String> {
    match (earlier, more) {
        (Matching::TrackNumber(track_number), Matching::CustomerId(customer_id))
        | (Matching::CustomerId(customer_id), Matching::TrackNumber(track_number)) => {
            Ok(Matching::Both {
                track_number,
                customer_id,
            })
        }
        (_, Matching::TrackNumber(_)) => Err("give track_number only once".to_owned()),
        (_, _) => Err("give customer_id only once".to_owned()),
    }
}

/// The parameters of `/orders`: paging, and a search by track number, customer id, or both.
fn orders_query(query: &str) -> Result<(Paging, Matching), String> {
    let mut matching = Matching::All;
    let paging = paging_and(query, ORDERS_MAX_LIMIT, |key, raw| {
        let parsed = search(key, raw).unwrap_or_else(|| Err(unknown_parameter(key)))?;
        matching = match std::mem::replace(&mut matching, Matching::All) {
            Matching::All => parsed,
            earlier => and_search(earlier, parsed)?,
        };
        Ok(())
    })?;
    Ok((paging, matching))
}

fn bad_request(message: &str) -> Reply {
    json_response(400, &json!({ "error": message }))
}

/// Runs a PostgreSQL query for a request: refused at once while PostgreSQL is known to be down,
/// and bounded in time, so that a slow database cannot pile requests up.
async fn db_call<T>(
    health: &Health,
    query: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, String> {
    if let Some(problem) = health.db_problem() {
        return Err(format!("PostgreSQL unavailable: {problem}"));
    }
    match tokio::time::timeout(DB_TIMEOUT, query).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("PostgreSQL unavailable: {e}")),
        Err(_) => Err("PostgreSQL did not answer in time".to_owned()),
    }
}

/// `GET /orders?limit=N&before=CURSOR`, optionally with `track_number=T` or `customer_id=C`:
/// newest first, read from PostgreSQL's indexes.
async fn recent_orders(query: &str, shared: &Shared) -> Reply {
    let (paging, matching) = match orders_query(query) {
        Ok(parsed) => parsed,
        Err(message) => return bad_request(&message),
    };
    let before = match paging.before.as_deref().map(PageCursor::decode) {
        None => None,
        Some(Some(cursor)) => Some((cursor.date, cursor.uid)),
        Some(None) => return bad_request("before is not a cursor returned by /orders"),
    };
    let limit = paging.limit;
    let (health, reads) = (&shared.state.health, &shared.reads);
    let rows = match db_call(health, reads.recent(limit + 1, &matching, before)).await {
        Ok(rows) => rows,
        Err(e) => return json_response(503, &json!({ "error": e })),
    };
    let (rows, next) = page_of(rows, limit, |r| {
        PageCursor {
            date: r.date_created,
            uid: r.order_uid.clone(),
        }
        .encode()
    });
    // A standby may not have replayed an erasure yet; this replica knows of it already. (The
    // page may come out a row short, never with the order.)
    let cache = shared.state.cache.cache();
    let orders: Vec<_> = rows
        .iter()
        .filter(|r| !cache.is_erased(&r.order_uid))
        .map(|r| {
            json!({
                "order_uid": r.order_uid,
                "date_created": r.date_created.format(&Rfc3339).unwrap_or_default(),
                "customer_id": r.customer_id,
                "track_number": r.track_number,
            })
        })
        .collect();
    json_response(200, &json!({ "orders": orders, "next": next }))
}

/// A listing's page from a query for `limit + 1` rows: the first `limit`, and the next page's
/// cursor (from the last row kept) only when the extra row shows that an older page exists. A
/// last page exactly `limit` long therefore says `next: null`.
fn page_of<T, C>(mut rows: Vec<T>, limit: i64, cursor: impl Fn(&T) -> C) -> (Vec<T>, Option<C>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more { rows.last().map(cursor) } else { None };
    (rows, next)
}

/// `GET /rejected?limit=N&before=ID`: the latest rejected messages, newest first, for operators.
async fn rejected(query: &str, shared: &Shared) -> Reply {
    let paging = match paging(query, REJECTED_MAX_LIMIT) {
        Ok(paging) => paging,
        Err(message) => return bad_request(&message),
    };
    let before = match paging.before.as_deref().map(str::parse::<i64>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return bad_request("before must be the id of a rejected message"),
    };
    let limit = paging.limit;
    let (health, store) = (&shared.state.health, &shared.store);
    let rows = match db_call(health, store.rejected(limit + 1, before)).await {
        Ok(rows) => rows,
        Err(e) => return json_response(503, &json!({ "error": e })),
    };
    let (rows, next) = page_of(rows, limit, |r| r.id);
    let messages: Vec<_> = rows
        .iter()
        .map(|r| {
            let shown = &r.payload[..r.payload.len().min(REJECTED_PAYLOAD_SHOWN)];
            json!({
                "id": r.id,
                "stream": r.stream,
                "stream_seq": r.stream_seq,
                "received_at": r.received_at.format(&Rfc3339).unwrap_or_default(),
                "kind": r.kind,
                "reason": r.reason,
                "payload_bytes": r.payload.len(),
                // As text for reading; the exact bytes stay in PostgreSQL.
                "payload": String::from_utf8_lossy(shown),
                // Erased since, or refused as an erased order's and never kept.
                "payload_erased": r.payload_erased_at.is_some() || r.kind == ERASED_KIND,
                "outcome": r.outcome.as_ref().map(|outcome| json!({
                    "outcome": outcome,
                    "kind": r.outcome_kind,
                    "reason": r.outcome_reason,
                    "at": r.reprocessed_at.and_then(|at| at.format(&Rfc3339).ok()),
                })),
            })
        })
        .collect();
    json_response(200, &json!({ "rejected": messages, "next": next }))
}

/// A position in the recent-orders list: the last row of a page.
struct PageCursor {
    date: OffsetDateTime,
    uid: String,
}

impl PageCursor {
    /// `<unix nanoseconds>.<order_uid>`: opaque to clients, exact, and URL-safe.
    fn encode(&self) -> String {
        format!("{}.{}", self.date.unix_timestamp_nanos(), self.uid)
    }

    fn decode(s: &str) -> Option<PageCursor> {
        let (nanos, uid) = s.split_once('.')?;
        let date = OffsetDateTime::from_unix_timestamp_nanos(i128::from_str(nanos).ok()?).ok()?;
        let uid = OrderUid::parse(uid).ok()?;
        Some(PageCursor {
            date,
            uid: uid.as_str().to_owned(),
        })
    }
}

/// True when the client already holds this version (`If-None-Match` lists the tag, or `*`).
fn if_none_match<B>(request: &Request<B>, etag: &str) -> bool {
    request
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// The design's error body: `{"error": "...", "order_uid": "..."}`.
fn id_error(status: u16, message: &str, id: &str) -> Reply {
    let echoed: String = id.chars().take(ECHO_MAX).collect();
    json_response(status, &json!({ "error": message, "order_uid": echoed }))
}

fn json_response(status: u16, body: &serde_json::Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    set(&mut response, header::CONTENT_TYPE, "application/json");
    set(&mut response, header::CACHE_CONTROL, "no-store");
    set(&mut response, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    response
}

/// Sets a header whose value is a constant.
pub(crate) fn set(response: &mut Reply, name: HeaderName, value: &'static str) {
    response
        .headers_mut()
        .insert(name, HeaderValue::from_static(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where each route is documented in `openapi.json`, by path template; `None` for routes
    /// outside the public API. A new `Route` does not compile here until it is placed.
    fn documented_as(route: &Route) -> Option<&'static str> {
        match route {
            Route::Page => Some("/"),
            Route::Script => Some("/app.js"),
            Route::Style => Some("/app.css"),
            Route::OpenApi => Some("/openapi.json"),
            Route::Healthz => Some("/healthz"),
            Route::Readyz => Some("/readyz"),
            Route::ReadyzReads => Some("/readyz/reads"),
            Route::Orders(_) => Some("/orders"),
            Route::Order(_) => Some("/order/{order_uid}"),
            Route::Metrics | Route::Rejected(_) | Route::NotFound => None,
        }
    }

    /// A target for every route (keep in step with `documented_as`).
    const EVERY_ROUTE: [&str; 12] = [
        "/",
        "/app.js",
        "/app.css",
        "/openapi.json",
        "/healthz",
        "/readyz",
        "/readyz/reads",
        "/orders",
        "/order/x",
        "/metrics",
        "/rejected",
        "/nothing",
    ];

    #[test]
    fn the_openapi_document_and_the_public_routes_agree() {
        let document: serde_json::Value =
            serde_json::from_str(crate::openapi::DOCUMENT).expect("openapi.json is JSON");
        assert!(
            document["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.")),
            "not OpenAPI 3"
        );
        let paths = document["paths"].as_object().expect("paths");
        // Every route the public listener answers is documented, with GET and HEAD ...
        for target in EVERY_ROUTE {
            let route = resolve(target);
            let public = route.served_on(Listener::Public) && route != Route::NotFound;
            match (public, documented_as(&route)) {
                (true, Some(template)) => {
                    let path = &paths
                        .get(template)
                        .unwrap_or_else(|| panic!("{template} is served but not documented"));
                    assert!(
                        path.get("get").is_some() && path.get("head").is_some(),
                        "{template}"
                    );
                }
                (true, None) => panic!("{target} is served publicly but placed nowhere"),
                (false, Some(template)) => panic!("{template} is documented but not public"),
                (false, None) => assert!(
                    !paths.contains_key(target),
                    "{target} is not public, but documented"
                ),
            }
        }
        // ... and every documented path is a public route that resolves to itself.
        for template in paths.keys() {
            let target = template.replace("{order_uid}", "x");
            let route = resolve(&target);
            assert!(
                route.served_on(Listener::Public) && route != Route::NotFound,
                "{template} is documented but not served"
            );
            assert_eq!(documented_as(&route), Some(template.as_str()));
        }
    }

    #[test]
    fn a_cursor_survives_encoding() {
        let date =
            OffsetDateTime::from_unix_timestamp_nanos(1_637_907_727_123_456_789).expect("valid");
        let c = PageCursor {
            date,
            uid: "a_b-1".into(),
        };
        let back = PageCursor::decode(&c.encode()).expect("decodes");
        assert_eq!(back.date, date);
        assert_eq!(back.uid, "a_b-1");
    }

    #[test]
    fn targets_resolve_to_their_routes() {
        assert_eq!(resolve("/"), Route::Page);
        assert_eq!(resolve("/?id=abc"), Route::Page);
        assert_eq!(resolve("/orders?limit=5"), Route::Orders("limit=5"));
        let uid = OrderUid::parse("abc-1").expect("a valid id");
        assert_eq!(resolve("/order/abc%2D1"), Route::Order(Ok(uid)));
        for other in [
            "",
            "/order",
            "/orders/x",
            "/metrics/",
            "//",
            "/app.js/x",
            "/../metrics",
        ] {
            assert_eq!(resolve(other), Route::NotFound, "{other:?}");
        }
    }

    #[test]
    fn ids_that_break_the_rule_are_refused_with_the_rule_and_echoed() {
        for (target, echoed) in [
            ("/order/", ""),
            // Not UTF-8 once decoded: echoed as received.
            ("/order/%FF%FE", "%FF%FE"),
            ("/order/../metrics", "../metrics"),
            ("/order/a%2Fb", "a/b"),
            ("/order/a b", "a b"),
            ("/order/x%00", "x\0"),
        ] {
            match resolve(target) {
                Route::Order(Err(bad)) => {
                    assert_eq!(bad.id, echoed, "{target:?}");
                    assert!(!bad.reason.is_empty());
                }
                other => panic!("{target:?} resolved to {other:?}"),
            }
        }
        let long = format!("/order/{}", "a".repeat(65));
        assert!(matches!(resolve(&long), Route::Order(Err(_))));
    }

    #[test]
    fn a_page_has_a_next_cursor_only_when_an_older_row_exists() {
        assert_eq!(page_of(vec![5, 4, 3], 2, |r| *r), (vec![5, 4], Some(4)));
        assert_eq!(page_of(vec![5, 4], 2, |r| *r), (vec![5, 4], None));
        assert_eq!(page_of(vec![5], 2, |r| *r), (vec![5], None));
        assert_eq!(page_of(Vec::<i32>::new(), 2, |r| *r), (vec![], None));
    }

    #[test]
    fn garbage_is_not_a_cursor() {
        for bad in [
            "",
            "x",
            "1",
            "abc.def",
            "1.bad uid",
            "99999999999999999999999999999999999.a",
        ] {
            assert!(PageCursor::decode(bad).is_none(), "{bad:?}");
        }
    }

    fn filter_of(query: &str) -> Result<Matching, String> {
        orders_query(query).map(|(_, matching)| matching)
    }

    #[test]
    fn a_search_parameter_becomes_a_filter_and_keeps_the_paging() {
        let (paging, filter) = orders_query("track_number=WB1&limit=2&before=1.a").expect("valid");
        assert_eq!(filter, Matching::TrackNumber("WB1".into()));
        assert_eq!((paging.limit, paging.before.as_deref()), (2, Some("1.a")));
        assert_eq!(
            filter_of("customer_id=test"),
            Ok(Matching::CustomerId("test".into()))
        );
        assert_eq!(filter_of("limit=5"), Ok(Matching::All));
        assert_eq!(filter_of(""), Ok(Matching::All));
    }

    #[test]
    fn a_search_value_is_form_decoded_and_kept_exactly() {
        for (query, value) in [
            ("track_number=a%20b", "a b"),
            ("track_number=a+b", "a b"),
            ("track_number=a%2Bb", "a+b"),
            ("track_number=Ab%2F%26%3D%3F", "Ab/&=?"),
            ("track_number=%20x%20", " x "),
            ("track_number=%3Cimg%20src%3Dx%3E", "<img src=x>"),
            ("track_number=%D0%96", "Ж"),
        ] {
            assert_eq!(
                filter_of(query),
                Ok(Matching::TrackNumber(value.into())),
                "{query}"
            );
        }
    }

    #[test]
    fn a_search_value_must_be_1_to_256_characters_of_utf8_without_nul() {
        let longest = "Ж".repeat(SEARCH_MAX_CHARS);
        assert_eq!(
            filter_of(&format!("customer_id={longest}")),
            Ok(Matching::CustomerId(longest.clone()))
        );
        for (query, rule) in [
            ("track_number=", "track_number must be 1 to 256 characters"),
            ("track_number", "track_number must be 1 to 256 characters"),
            ("customer_id=", "customer_id must be 1 to 256 characters"),
            (
                &format!("customer_id={longest}x"),
                "customer_id must be 1 to 256 characters",
            ),
            ("track_number=%FF", "track_number must be valid UTF-8"),
            ("customer_id=a%00b", "customer_id must not contain U+0000"),
        ] {
            assert_eq!(filter_of(query), Err(rule.to_owned()), "{query}");
        }
    }

    #[test]
    fn one_search_at_a_time_and_unknown_parameters_are_refused() {
        let both = Ok(Matching::Both {
            track_number: "a".to_owned(),
            customer_id: "b".to_owned(),
        });
        assert_eq!(filter_of("track_number=a&customer_id=b"), both);
        assert_eq!(filter_of("customer_id=b&limit=3&track_number=a"), both);
        assert_eq!(
            filter_of("customer_id=b&track_number=a&customer_id=c"),
            Err("give customer_id only once".to_owned())
        );
        assert_eq!(
            filter_of("track_number=a&track_number=b"),
            Err("give track_number only once".to_owned())
        );
        assert_eq!(
            filter_of("track_number=a&colour=red"),
            Err("unknown parameter \"colour\"".to_owned())
        );
        // The key is matched as sent, like the paging parameters'.
        assert!(filter_of("track%5Fnumber=a").is_err());
        // /rejected has no search.
        assert!(paging("track_number=a", REJECTED_MAX_LIMIT).is_err());
        assert!(paging("customer_id=a", REJECTED_MAX_LIMIT).is_err());
    }
}
