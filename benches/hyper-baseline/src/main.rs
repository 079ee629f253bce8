//! A minimal hyper server with ordersvc's cache, for comparison only (not part of the product).
//!
//! It loads every stored order into `ordersvc::cache::Cache` from PostgreSQL, exactly as
//! `ordersvc serve` does, and answers `GET /order/{id}` with the same bytes and headers that
//! matter (Content-Type, ETag), on a 2-thread tokio runtime with TCP_NODELAY.
//!
//! cargo run --release --manifest-path benches/hyper-baseline/Cargo.toml -- DATABASE_URL ADDR

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ordersvc_service::cache::{self, Body, Cache, Change};
use ordersvc_service::order::OrderUid;
use ordersvc_service::store::Store;

fn answer(cache: &Cache, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let id = request.uri().path().strip_prefix("/order/").unwrap_or("");
    match cache.get(id) {
        Some(entry) => {
            let etag = entry.etag();
            let mut response = Response::new(Full::new(Bytes::from_owner(Body(entry))));
            let headers = response.headers_mut();
            headers.insert("content-type", "application/json".parse().expect("constant"));
            if let Ok(value) = etag.parse() {
                headers.insert("etag", value);
            }
            response
        }
        None => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"{\"error\":\"order not found\"}")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let database_url = args.next().ok_or("usage: hyper-baseline DATABASE_URL ADDR")?;
    let addr: SocketAddr = args.next().ok_or("usage: hyper-baseline DATABASE_URL ADDR")?.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let store = Store::open(&database_url).await.map_err(|e| e.to_string())?;
        let (writer, _thread) = cache::start(None).map_err(|e| e.to_string())?;
        let mut rows = store.documents();
        let mut chunk = Vec::new();
        while let Some(row) = rows.next().await {
            let (uid, document) = row?;
            if let Ok(uid) = OrderUid::parse(&uid) {
                chunk.push((uid, document));
            }
        }
        drop(rows);
        writer.send(Change::Orders(chunk)).await?;
        writer.apply(Change::Restored).await?;
        let cache = writer.cache().clone();
        eprintln!("{} orders loaded; listening on http://{addr}", cache.len());
        let listener = tokio::net::TcpListener::bind(addr).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let cache = cache.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = answer(&cache, &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
