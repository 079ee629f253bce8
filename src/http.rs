//! The HTTP front: a tiny_http server whose worker threads answer from the cache.
//!
//! Routes (the design's contract): `GET /order/{order_uid}`, `GET /orders`, `GET /`, `GET /healthz`,
//! `GET /readyz`. HEAD works wherever GET does; other methods get 405.

use std::future::Future;
use std::io::Cursor;
use std::net::{SocketAddr, TcpListener};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use color_eyre::eyre::{eyre, Result, WrapErr};
use percent_encoding::percent_decode_str;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tiny_http::{Header, Method, Request, Response, ResponseBox, StatusCode};
use tracing::{debug, error};

use crate::cache::{Body, Cache, Entry};
use crate::health::Health;
use crate::metrics::{HttpLabels, Metrics, RouteLabels};
use crate::order::OrderUid;
use crate::page;
use crate::store::Store;

/// Default page size of the listings, and the largest of each.
const LIST_DEFAULT_LIMIT: i64 = 20;
const ORDERS_MAX_LIMIT: i64 = 1000;
const REJECTED_MAX_LIMIT: i64 = 200;
/// How much of a rejected payload `/rejected` shows (the whole is in PostgreSQL).
const REJECTED_PAYLOAD_SHOWN: usize = 4096;
/// Longest an HTTP worker waits for PostgreSQL (a listing, or an order missing from memory).
const DB_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the connection pool is kicked (see `kick_connection_pool`).
const KICK_EVERY: Duration = Duration::from_millis(100);
/// Longest id echoed back in an error body.
const ECHO_MAX: usize = 128;

/// What the request handlers read.
pub struct AppState {
    /// The read model.
    pub cache: Arc<Cache>,
    /// Dependency health for `/readyz`.
    pub health: Arc<Health>,
    /// For the recent-orders list, which is read from PostgreSQL's index.
    pub store: Store,
    /// The async runtime that owns the database pool.
    pub runtime: tokio::runtime::Handle,
    /// Where requests are counted and timed.
    pub metrics: Arc<Metrics>,
}

/// A running HTTP server and its worker threads.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` and starts `workers` threads answering requests.
    pub fn start(addr: SocketAddr, workers: usize, state: Arc<AppState>) -> Result<HttpServer> {
        let listener = listen(addr).wrap_err_with(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| eyre!("cannot start the HTTP server: {e}"))?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let (server, stop, state) = (server.clone(), stop.clone(), state.clone());
            let handle = std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || worker(&server, &stop, &state))
                .wrap_err("cannot start an HTTP worker thread")?;
            handles.push(handle);
        }
        let kicker = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("http-kicker".into())
                .spawn(move || kick_connection_pool(addr, &stop))
                .wrap_err("cannot start the HTTP kicker thread")?
        };
        handles.push(kicker);
        Ok(HttpServer {
            server,
            addr,
            stop,
            workers: handles,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets every worker finish the request it is answering, then stops them.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Release);
        for _ in &self.workers {
            self.server.unblock();
        }
        for handle in self.workers {
            let _ = handle.join();
        }
    }
}

/// Works around a lost wake-up in tiny_http 0.12's connection pool (`util::TaskPool::spawn`
/// reads its count of idle threads while a thread it just woke still counts as idle): when
/// connections arrive in a burst, one can be queued with nobody to take it, and its requests wait
/// until some other connection closes (seen in `bench http` as a single request taking the whole
/// run). A pool thread takes queued connections when its own connection ends, so a short-lived
/// connection to ourselves every `KICK_EVERY` bounds such a wait to about that long.
fn kick_connection_pool(addr: SocketAddr, stop: &AtomicBool) {
    let target = match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    };
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(KICK_EVERY);
        // Connect and close at once: the pool thread that takes it finishes immediately.
        let _ = std::net::TcpStream::connect_timeout(&target, KICK_EVERY);
    }
}

/// A listening socket with TCP_NODELAY set: Linux copies it to every accepted connection, and
/// tiny_http never sets it itself (without it, keep-alive responses over ~1 KB wait ~40 ms).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn worker(server: &tiny_http::Server, stop: &AtomicBool, state: &AppState) {
    while !stop.load(Ordering::Acquire) {
        match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(request)) => {
                let started = Instant::now();
                let (name, response) = route(&request, state);
                let status = response.status_code().0;
                if let Err(e) = request.respond(response) {
                    // The client went away: nothing to do.
                    debug!(error = %e, "could not send a response");
                }
                let metrics = &state.metrics;
                metrics
                    .http_requests
                    .get_or_create(&HttpLabels {
                        route: name,
                        status,
                    })
                    .inc();
                metrics
                    .http_seconds
                    .get_or_create(&RouteLabels { route: name })
                    .observe(started.elapsed().as_secs_f64());
            }
            Ok(None) => {}
            Err(e) => {
                if !stop.load(Ordering::Acquire) {
                    error!(error = %e, "the HTTP server stopped accepting connections");
                }
                return;
            }
        }
    }
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
    /// `/healthz`.
    Healthz,
    /// `/readyz`.
    Readyz,
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
    pub reason: String,
    /// The id as received (lossily decoded), for the error body.
    pub id: String,
}

impl Route<'_> {
    /// The route's name in the metrics (never the path itself: ids would make labels unbounded).
    pub fn name(&self) -> &'static str {
        match self {
            Route::Page | Route::Script | Route::Style => "page",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Orders(_) => "orders",
            Route::Rejected(_) => "rejected",
            Route::Order(_) => "order",
            Route::NotFound => "other",
        }
    }
}

/// Resolves a request target (path and query, as tiny_http gives it).
pub fn resolve(target: &str) -> Route<'_> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/" => Route::Page,
        "/app.js" => Route::Script,
        "/app.css" => Route::Style,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
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

/// Answers one request; also names its route for the metrics.
fn route(request: &Request, state: &AppState) -> (&'static str, ResponseBox) {
    let route = resolve(request.url());
    let name = route.name();
    if route == Route::NotFound {
        return (
            name,
            json_response(404, &json!({ "error": "no such path" })),
        );
    }
    if !matches!(request.method(), Method::Get | Method::Head) {
        let response = json_response(405, &json!({ "error": "method not allowed" }))
            .with_header(header("Allow", "GET, HEAD"));
        return (name, response);
    }
    let response = match route {
        Route::Page => page::html(),
        Route::Script => page::script(),
        Route::Style => page::style(),
        Route::Healthz => json_response(200, &json!({ "status": "ok" })),
        Route::Readyz => match state.health.readiness(&state.cache) {
            Ok(()) => json_response(
                200,
                &json!({ "status": "ready", "orders": state.cache.len() }),
            ),
            Err(reason) => json_response(503, &json!({ "status": "not ready", "reason": reason })),
        },
        Route::Metrics => Response::from_data(state.metrics.encode(&state.cache, &state.health))
            .with_header(header(
                "Content-Type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ))
            .boxed(),
        Route::Orders(query) => recent_orders(query, state),
        Route::Rejected(query) => rejected(query, state),
        Route::Order(Ok(uid)) => order(request, &uid, state),
        Route::Order(Err(bad)) => id_error(400, &bad.reason, &bad.id),
        Route::NotFound => json_response(404, &json!({ "error": "no such path" })),
    };
    (name, response)
}

/// `GET /order/{order_uid}`.
fn order(request: &Request, uid: &OrderUid, state: &AppState) -> ResponseBox {
    if !state.cache.is_restored() {
        // Serve what is already loaded, but never a false 404 while the rest is on its way.
        return match state.cache.get(uid.as_str()) {
            Some(entry) => order_response(request, &entry),
            None => id_error(
                503,
                "the service is starting: orders are being restored",
                uid.as_str(),
            )
            .with_header(header("Retry-After", "1")),
        };
    }
    // With a byte bound, an order not in memory may still be stored: ask PostgreSQL (once per
    // id, however many requests want it), within a short deadline.
    let loaded = state
        .cache
        .get_or_load(uid, || db_call(state, state.store.document(uid.as_str())));
    match loaded {
        Ok(Some(entry)) => order_response(request, &entry),
        Ok(None) => id_error(404, "order not found", uid.as_str()),
        Err(e) => id_error(503, &e, uid.as_str()).with_header(header("Retry-After", "1")),
    }
}

/// 200 with the cached body, or 304 when the client already has it.
fn order_response(request: &Request, entry: &Arc<Entry>) -> ResponseBox {
    let tag = entry.etag();
    let etag = header("ETag", &tag);
    if if_none_match(request, &tag) {
        return Response::empty(304).with_header(etag).boxed();
    }
    let len = entry.body().len();
    Response::new(
        StatusCode(200),
        vec![
            header("Content-Type", "application/json"),
            etag,
            header("Cache-Control", "no-cache"),
            // The body holds untrusted text: never let a browser sniff it as HTML.
            header("X-Content-Type-Options", "nosniff"),
        ],
        Cursor::new(Body(entry.clone())),
        Some(len),
        None,
    )
    // Always send a Content-Length, even for large orders, rather than chunking.
    .with_chunked_threshold(usize::MAX)
    .boxed()
}

/// `limit` and `before` of a listing; any other parameter is refused.
struct Paging {
    limit: i64,
    before: Option<String>,
}

fn paging(query: &str, max: i64) -> Result<Paging, ResponseBox> {
    let mut paging = Paging {
        limit: LIST_DEFAULT_LIMIT.min(max),
        before: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value).decode_utf8_lossy();
        match key {
            "limit" => match value.parse::<i64>() {
                Ok(n) if (1..=max).contains(&n) => paging.limit = n,
                _ => {
                    return Err(bad_request(&format!(
                        "limit must be an integer from 1 to {max}"
                    )))
                }
            },
            "before" => paging.before = Some(value.into_owned()),
            _ => return Err(bad_request(&format!("unknown parameter {key:?}"))),
        }
    }
    Ok(paging)
}

fn bad_request(message: &str) -> ResponseBox {
    json_response(400, &json!({ "error": message }))
}

/// Runs a PostgreSQL query for an HTTP worker: refused at once while PostgreSQL is known to be
/// down, and bounded in time, because order lookups queue behind a worker that waits.
fn db_call<T>(
    state: &AppState,
    query: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, String> {
    if let Some(problem) = state.health.db_problem() {
        return Err(format!("PostgreSQL unavailable: {problem}"));
    }
    match state
        .runtime
        .block_on(async { tokio::time::timeout(DB_TIMEOUT, query).await })
    {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("PostgreSQL unavailable: {e}")),
        Err(_) => Err("PostgreSQL did not answer in time".to_owned()),
    }
}

/// `GET /orders?limit=N&before=CURSOR`: newest first, read from PostgreSQL's index.
fn recent_orders(query: &str, state: &AppState) -> ResponseBox {
    let paging = match paging(query, ORDERS_MAX_LIMIT) {
        Ok(paging) => paging,
        Err(response) => return response,
    };
    let before = match paging.before.as_deref().map(PageCursor::decode) {
        None => None,
        Some(Some(cursor)) => Some((cursor.date, cursor.uid)),
        Some(None) => return bad_request("before is not a cursor returned by /orders"),
    };
    let limit = paging.limit;
    let mut rows = match db_call(state, state.store.recent(limit + 1, before)) {
        Ok(rows) => rows,
        Err(e) => return json_response(503, &json!({ "error": e })),
    };
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|r| {
            PageCursor {
                date: r.date_created,
                uid: r.order_uid.clone(),
            }
            .encode()
        })
    } else {
        None
    };
    let orders: Vec<_> = rows
        .iter()
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

/// `GET /rejected?limit=N&before=ID`: the latest rejected messages, newest first, for operators.
fn rejected(query: &str, state: &AppState) -> ResponseBox {
    let paging = match paging(query, REJECTED_MAX_LIMIT) {
        Ok(paging) => paging,
        Err(response) => return response,
    };
    let before = match paging.before.as_deref().map(str::parse::<i64>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return bad_request("before must be the id of a rejected message"),
    };
    let rows = match db_call(state, state.store.rejected(paging.limit, before)) {
        Ok(rows) => rows,
        Err(e) => return json_response(503, &json!({ "error": e })),
    };
    let next = if rows.len() as i64 == paging.limit {
        rows.last().map(|r| r.id)
    } else {
        None
    };
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
fn if_none_match(request: &Request, etag: &str) -> bool {
    request
        .headers()
        .iter()
        .filter(|h| h.field.equiv("If-None-Match"))
        .flat_map(|h| h.value.as_str().split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// The design's error body: `{"error": "...", "order_uid": "..."}`.
fn id_error(status: u16, message: &str, id: &str) -> ResponseBox {
    let echoed: String = id.chars().take(ECHO_MAX).collect();
    json_response(status, &json!({ "error": message, "order_uid": echoed }))
}

fn json_response(status: u16, body: &serde_json::Value) -> ResponseBox {
    Response::from_data(body.to_string())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
        .with_header(header("Cache-Control", "no-store"))
        .with_header(header("X-Content-Type-Options", "nosniff"))
        .boxed()
}

/// A header from trusted, ASCII-only parts.
pub(crate) fn header(name: &str, value: &str) -> Header {
    // Names and values here are constants or generated ASCII (ETags, numbers), never client input.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("header parts are constant ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
