//! A gRPC client for [`crate::grpc_upstream`]'s `SayHello`, over a tonic `Channel`
//! (HTTP/2 without TLS) to Envoy's listener or straight to an upstream, sending the
//! user id as `x-user-id` metadata; and the load generator's gRPC sender.

use crate::grpc_upstream::{HelloReply, HelloRequest, SAY_HELLO, VERSION_METADATA};
use crate::load::{Load, LoadOptions, Outcome, Sender};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `Ok` for a reply, else the status the call failed with.
    pub code: Code,
    /// The `x-version` metadata of the answer (reply or failure); `None` when no upstream
    /// answered (Envoy's own reply, or no answer at all).
    pub version: Option<String>,
    /// The cohort header the upstream saw (replies only).
    pub cohort_header: Option<String>,
    /// The call failed in the transport (no gRPC answer at all).
    pub transport_error: bool,
}

/// A `SayHello` client; clones share the connection.
#[derive(Clone)]
pub struct GreeterClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl GreeterClient {
    /// A client of `addr` that connects on its first call; each call gives up after `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> GreeterClient {
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("a loopback URI").timeout(timeout);
        GreeterClient { grpc: tonic::client::Grpc::new(endpoint.connect_lazy()) }
    }

    /// Calls `SayHello` as `user` (`None`: without `x-user-id`).
    pub async fn say_hello(&self, user: Option<&str>) -> Call {
        let mut request = tonic::Request::new(HelloRequest { name: user.unwrap_or_default().to_string() });
        if let Some(id) = user {
            let value = MetadataValue::try_from(id).expect("a user id is ASCII metadata");
            request.metadata_mut().insert("x-user-id", value);
        }
        let mut grpc = self.grpc.clone();
        let answer = async {
            grpc.ready().await.map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
            let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
            grpc.unary(request, PathAndQuery::from_static(SAY_HELLO), codec).await
        };
        match answer.await {
            Ok(reply) => Call {
                code: Code::Ok,
                version: version(reply.metadata()),
                cohort_header: Some(reply.get_ref().cohort_header.clone()),
                transport_error: false,
            },
            Err(status) => Call {
                code: status.code(),
                version: version(status.metadata()),
                cohort_header: None,
                // tonic attaches the transport's error as the source; a gRPC answer has none.
                transport_error: std::error::Error::source(&status).is_some(),
            },
        }
    }

    /// One call per id, 16 in flight at once; the calls in the order of `ids`.
    pub async fn calls_for(&self, ids: &[String]) -> Vec<Call> {
        // As `traffic::Client`'s bulk requests: enough to keep Envoy busy on two cores.
        const PARALLEL: usize = 16;
        let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, id) in ids.iter().enumerate() {
            let permit = Arc::clone(&permits).acquire_owned().await.expect("semaphore open");
            let (client, id) = (self.clone(), id.clone());
            tasks.spawn(async move {
                let call = client.say_hello(Some(&id)).await;
                drop(permit);
                (i, call)
            });
        }
        let mut calls: Vec<Option<Call>> = vec![None; ids.len()];
        while let Some(done) = tasks.join_next().await {
            let (i, call) = done.expect("call task");
            calls[i] = Some(call);
        }
        calls.into_iter().map(|c| c.expect("every call answered")).collect()
    }
}

fn version(metadata: &MetadataMap) -> Option<String> {
    metadata.get(VERSION_METADATA).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// A load of `SayHello` calls through Envoy's `listener` (one HTTP/2 connection, calls
/// multiplexed on it), counted like the HTTP load: a call fails unless its status is OK.
pub fn start_grpc_load(listener: SocketAddr, options: LoadOptions) -> Load {
    let client = GreeterClient::new(listener, options.timeout);
    let send: Sender = Arc::new(move |user| {
        let client = client.clone();
        Box::pin(async move {
            let call = client.say_hello(user.as_deref()).await;
            if call.transport_error {
                Outcome::NoAnswer
            } else {
                Outcome::Answered { version: call.version, failed: call.code != Code::Ok }
            }
        })
    });
    Load::start_with(send, options)
}

/// Where a call's `grpc-status` travelled, read off the HTTP/2 frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireAnswer {
    /// `:status` of the response headers.
    pub http_status: u16,
    /// `grpc-status` in the response headers (a trailers-only answer).
    pub status_in_headers: Option<String>,
    /// Bytes of gRPC messages in the body.
    pub body_bytes: usize,
    /// `grpc-status` in the trailers.
    pub status_in_trailers: Option<String>,
}

/// One `SayHello` as `user` over a bare HTTP/2 connection to `addr`, to see how the
/// answer is framed (tonic's client hides where `grpc-status` came from).
pub async fn say_hello_on_the_wire(addr: SocketAddr, user: &str) -> WireAnswer {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use prost::Message;
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect for a raw gRPC call");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    let driver = tokio::spawn(connection);
    // A gRPC message: a compression flag (0: none), its length (u32, big endian), the bytes.
    let message = HelloRequest { name: user.to_string() }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("a short message").to_be_bytes());
    frame.extend_from_slice(&message);
    let request = hyper::Request::post(format!("http://{addr}{SAY_HELLO}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-user-id", user)
        .body(Full::new(Bytes::from(frame)))
        .expect("a raw gRPC request");
    let response = sender.send_request(request).await.expect("a raw gRPC answer");
    let grpc_status =
        |headers: &hyper::HeaderMap| headers.get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_string);
    let http_status = response.status().as_u16();
    let status_in_headers = grpc_status(response.headers());
    let (mut body_bytes, mut status_in_trailers) = (0, None);
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("a response frame");
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len();
        } else if let Some(trailers) = frame.trailers_ref() {
            status_in_trailers = grpc_status(trailers);
        }
    }
    driver.abort();
    WireAnswer { http_status, status_in_headers, body_bytes, status_in_trailers }
}
