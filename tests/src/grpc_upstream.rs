//! A gRPC test upstream: a tonic server on loopback serving one unary method,
//! `canary.test.Greeter/SayHello`, that says which version answered (`x-version`
//! metadata and the reply) and fails a chosen fraction of calls with a chosen status
//! code, the gRPC twin of [`crate::upstream::Upstream`].
//!
//! No protoc on the build machines, so there is no generated code: the messages derive
//! `prost::Message` and the service routes the method path to tonic's own handler the
//! way generated code does.
//!
//! Failures are spread by a call counter (the same spread as the HTTP upstream's,
//! [`crate::upstream::spread_failure`]): 5 % fails 5 of every 100 calls to within one,
//! whichever users make them. A hash of the user id would fail the same users every time
//! and put the whole error rate on the few users of a cohort that happen to hash there,
//! which makes the canary's error rate depend on which users the load drew.
//!
//! A failed call ends in one of two shapes, both of which the filter must read:
//! trailers-only (HTTP 200 headers carrying `grpc-status`, no body: what tonic sends for
//! an `Err(Status)`), or a reply message followed by trailers carrying `grpc-status`.

use crate::upstream::spread_failure;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::codegen::{BoxFuture, BoxStream, Service, http};
use tonic::metadata::MetadataValue;
use tonic::server::{NamedService, ServerStreamingService};
use tonic::{Code, Status};

/// The service's full name (`package.Service`).
pub const SERVICE: &str = "canary.test.Greeter";
/// The one method's path: `/package.Service/Method`.
pub const SAY_HELLO: &str = "/canary.test.Greeter/SayHello";
/// Response metadata naming the version that answered (as the HTTP upstream's header).
pub const VERSION_METADATA: &str = "x-version";

/// `message HelloRequest { string name = 1; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `message HelloReply { string version = 1; string cohort_header = 2; }`
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// `stable` or `canary`.
    #[prost(string, tag = "1")]
    pub version: String,
    /// The `x-canary-cohort` request header the upstream saw ("" if none).
    #[prost(string, tag = "2")]
    pub cohort_header: String,
}

/// How a failed call ends on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureShape {
    /// Response headers with `grpc-status` and nothing else (tonic's answer to `Err(Status)`).
    TrailersOnly,
    /// A reply message, then trailers with `grpc-status`.
    AfterMessage,
}

/// How calls are answered; the test can change it while traffic flows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpcBehaviour {
    /// Fraction of calls that fail with `code` (0.0..=1.0).
    pub fail_fraction: f64,
    /// The status code of a failed call.
    pub code: Code,
    pub shape: FailureShape,
}

impl Default for GrpcBehaviour {
    /// Healthy: no failures (trailers-only UNAVAILABLE if failures are switched on).
    fn default() -> Self {
        GrpcBehaviour { fail_fraction: 0.0, code: Code::Unavailable, shape: FailureShape::TrailersOnly }
    }
}

/// State shared by the server task and the test's handle.
#[derive(Default)]
struct Shared {
    behaviour: Mutex<GrpcBehaviour>,
    /// Calls received: the index that decides whether one fails.
    calls: AtomicU64,
    /// Calls failed on purpose.
    failed: AtomicU64,
}

/// The service as tonic's server sees it: routes `SAY_HELLO` to its handler.
#[derive(Clone)]
struct Greeter {
    version: &'static str,
    shared: Arc<Shared>,
}

impl NamedService for Greeter {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<tonic::body::Body>> for Greeter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path() != SAY_HELLO {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let handler = SayHello(self.clone());
        Box::pin(async move {
            // The server-streaming handler, because it alone can end a call with a status
            // after a message; a stream of one reply is a unary answer on the wire.
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.server_streaming(handler, request).await)
        })
    }
}

struct SayHello(Greeter);

impl ServerStreamingService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type ResponseStream = BoxStream<HelloReply>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
        let Greeter { version, shared } = self.0.clone();
        Box::pin(async move {
            let behaviour = *shared.behaviour.lock().expect("grpc upstream behaviour lock");
            let n = shared.calls.fetch_add(1, Ordering::Relaxed);
            let cohort_header =
                request.metadata().get("x-canary-cohort").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let reply = HelloReply { version: version.to_string(), cohort_header };
            let version_value = MetadataValue::from_static(version);
            let mut items: Vec<Result<HelloReply, Status>> = vec![Ok(reply)];
            if spread_failure(behaviour.fail_fraction, n) {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                let mut status = Status::new(behaviour.code, format!("{version} fails this call on purpose"));
                status.metadata_mut().insert(VERSION_METADATA, version_value.clone());
                match behaviour.shape {
                    FailureShape::TrailersOnly => return Err(status),
                    FailureShape::AfterMessage => items.push(Err(status)),
                }
            }
            let stream: Self::ResponseStream = Box::pin(tonic::codegen::tokio_stream::iter(items));
            let mut response = tonic::Response::new(stream);
            response.metadata_mut().insert(VERSION_METADATA, version_value);
            Ok(response)
        })
    }
}

/// A running gRPC upstream; stops when dropped.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcUpstream {
    /// Starts a healthy upstream on a free loopback port (h2c: HTTP/2 without TLS).
    pub async fn start(version: &'static str) -> GrpcUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("grpc upstream address");
        let shared = Arc::new(Shared::default());
        let greeter = Greeter { version, shared: Arc::clone(&shared) };
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder().add_service(greeter).serve_with_incoming(incoming);
            if let Err(e) = served.await {
                eprintln!("grpc upstream {version} stopped: {e}");
            }
        });
        GrpcUpstream { addr, shared, task }
    }

    /// Changes how calls are answered, from the next call on.
    pub fn set_behaviour(&self, behaviour: GrpcBehaviour) {
        *self.shared.behaviour.lock().expect("grpc upstream behaviour lock") = behaviour;
    }

    /// Calls received so far.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }

    /// Calls failed on purpose so far.
    pub fn failed_calls(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }
}
