//! The one HTTP server loop the test servers share. Aborting its task also aborts
//! every connection it accepted, so a stopped server really refuses and drops
//! Envoy's keep-alive connections.

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub type HttpResult = Result<Response<Full<Bytes>>, std::io::Error>;

/// Serves `handler` on `listener`. A handler error closes the connection without a
/// response, which Envoy sees as an upstream reset.
pub fn spawn<H, F>(listener: TcpListener, handler: H) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResult> + Send + 'static,
{
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            connections.spawn(async move {
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service_fn(handler)).await;
            });
            while connections.try_join_next().is_some() {}
        }
    })
}

/// A response with a body and headers.
pub fn response(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> HttpResult {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body.into())).map_err(std::io::Error::other)
}
