//! One client connection: framing, the decode pipeline, and in-order responses.
//!
//! Frames are `i32 length | request`. A length below the smallest header or above
//! `max_request_bytes` closes the connection before anything of that size is allocated. A
//! frame is decoded only if its API key and version are ones Weir advertises and the
//! [`crate::guard`] walker found every array count within the frame, so hostile counts can
//! never reach `kafka-protocol`'s `Vec::with_capacity`. Anything malformed closes this one
//! connection with a log line; the server goes on.
//!
//! Ordering: like a Kafka broker, requests of one connection are answered in order. Produce
//! requests are pipelined (offsets are assigned as each request is read, and the responses
//! wait for durability in order); every other request runs alone, after what precedes it.

use crate::budget::{BudgetPermit, RequestBudget};
use crate::handlers;
use crate::listener::{ConnectionPermit, Listener};
use crate::session::Session;
use crate::Gateway;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Requests read ahead of their responses on one connection.
const MAX_IN_FLIGHT: usize = 64;

/// A response on its way: resolves to the encoded frame (None: nothing to send, acks=0).
struct InFlight {
    response: BoxFuture<'static, Option<Bytes>>,
    written: Option<oneshot::Sender<()>>,
}

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    #[error("frame length {0} is invalid")]
    BadLength(i64),
    #[error("frame length {len} exceeds the maximum request size {max}")]
    TooLarge { len: usize, max: usize },
    #[error("unknown api key {0}")]
    UnknownApi(i16),
    #[error("unsupported version {version} of {key:?}")]
    UnsupportedVersion { key: ApiKey, version: i16 },
    #[error("malformed request header: {0}")]
    BadHeader(String),
    #[error("request rejected by guard: {0}")]
    Guard(#[from] crate::guard::GuardError),
    #[error("malformed {key:?} v{version} request: {reason}")]
    BadRequest {
        key: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("{api:?}: {reason}")]
    NotAuthenticated { api: ApiKey, reason: &'static str },
}

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves one accepted socket: the TLS handshake first if the listener has TLS.
pub async fn accept(
    socket: TcpStream,
    peer: SocketAddr,
    id: u64,
    gateway: Arc<Gateway>,
    listener: Arc<Listener>,
    permit: ConnectionPermit,
    shutdown: CancellationToken,
) {
    match listener.tls.clone() {
        None => serve(socket, peer, id, gateway, listener, shutdown).await,
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => serve(stream, peer, id, gateway, listener, shutdown).await,
                Ok(Err(e)) => {
                    tracing::info!(conn = id, %peer, error = %e, "TLS handshake failed")
                }
                Err(_) => tracing::info!(conn = id, %peer, "TLS handshake timed out"),
            }
        }
    }
    drop(permit);
}

/// Serves one connection until the client leaves, a frame is malformed, or shutdown.
pub async fn serve<S>(
    socket: S,
    peer: SocketAddr,
    id: u64,
    gateway: Arc<Gateway>,
    listener: Arc<Listener>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(socket);
    let mut session = Session::new(listener, id, peer);
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let (tx, mut rx) = mpsc::channel::<InFlight>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(async move {
        let mut out = BufWriter::with_capacity(64 * 1024, write_half);
        while let Some(item) = rx.recv().await {
            if let Some(frame) = item.response.await {
                if out.write_all(&frame).await.is_err() {
                    return;
                }
            }
            // Flush when no further response is ready, so pipelined ones share a syscall.
            if rx.is_empty() && out.flush().await.is_err() {
                return;
            }
            if let Some(done) = item.written {
                let _ = done.send(());
            }
        }
        let _ = out.flush().await;
    });
    tracing::debug!(conn = id, %peer, "connection opened");
    let max = gateway.config.max_request_bytes;
    let budget = gateway.request_budget.clone();
    loop {
        let frame = tokio::select! {
            f = read_frame(&mut reader, max, &budget) => f,
            _ = shutdown.cancelled() => break,
        };
        let (frame, permit) = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(FrameError::Io(e)) => {
                tracing::debug!(conn = id, %peer, error = %e, "connection read ended");
                break;
            }
            Err(FrameError::Close(reason)) => {
                tracing::warn!(conn = id, %peer, %reason, "closing connection");
                break;
            }
        };
        // The frame's budget is held until its response is ready (a produce request's
        // records live until they are durable).
        let dispatched = dispatch(&gateway, frame, peer, &mut session)
            .await
            .map(|d| d.holding(permit));
        match dispatched {
            Ok(Dispatched::Close(response, delay)) => {
                // Answer, let the answer reach the client, and only then close (after the
                // delay, as Kafka's connection.failed.authentication.delay.ms): a client that
                // reads the error and the end of the stream together may drop the error.
                let (done, written) = oneshot::channel();
                let sent = tx
                    .send(InFlight {
                        response,
                        written: Some(done),
                    })
                    .await;
                if sent.is_ok() {
                    let _ = written.await;
                    if let Some(delay) = delay {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.cancelled() => {}
                        }
                    }
                }
                break;
            }
            Ok(Dispatched::Go(response, barrier)) => {
                let (written, wait) = if barrier {
                    let (done, wait) = oneshot::channel();
                    (Some(done), Some(wait))
                } else {
                    (None, None)
                };
                if tx.send(InFlight { response, written }).await.is_err() {
                    break;
                }
                if let Some(wait) = wait {
                    // Not pipelined: the next request is read once this one is answered.
                    tokio::select! {
                        r = wait => if r.is_err() { break },
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
            Err(reason) => {
                tracing::warn!(conn = id, %peer, %reason, "closing connection");
                break;
            }
        }
    }
    // Let the responses already under way reach the client, then close.
    drop(tx);
    let _ = writer.await;
    tracing::debug!(conn = id, %peer, "connection closed");
}

enum FrameError {
    Io(std::io::Error),
    Close(CloseReason),
}

/// The smallest request: api key, api version, correlation id.
const MIN_FRAME: usize = 8;
/// A connection with no request for this long is closed (Kafka's connections.max.idle.ms).
const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// A request frame must arrive whole within this time once its length was read.
const FRAME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// How much more buffer a frame read reserves at a time.
const READ_CHUNK: usize = 1 << 20;
/// How long a frame may wait for request budget before the connection is closed.
const BUDGET_TIMEOUT: std::time::Duration = FRAME_TIMEOUT;

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
    budget: &Arc<RequestBudget>,
) -> Result<Option<(Bytes, BudgetPermit)>, FrameError> {
    let len = match tokio::time::timeout(IDLE_TIMEOUT, reader.read_i32()).await {
        Err(_) => {
            return Err(FrameError::Io(std::io::Error::other(
                "idle connection timed out",
            )))
        }
        Ok(Ok(len)) => len,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(Err(e)) => return Err(FrameError::Io(e)),
    };
    if len < MIN_FRAME as i32 {
        return Err(FrameError::Close(CloseReason::BadLength(i64::from(len))));
    }
    let len = len as usize;
    if len > max {
        return Err(FrameError::Close(CloseReason::TooLarge { len, max }));
    }
    // Reserve the whole frame before reading any of it: while the gateway's request budget
    // is spent, this connection reads nothing more (TCP pushes back on the client).
    let permit = match tokio::time::timeout(BUDGET_TIMEOUT, budget.acquire(len)).await {
        Ok(Some(permit)) => permit,
        Ok(None) => {
            return Err(FrameError::Close(CloseReason::TooLarge {
                len,
                max: budget.capacity(),
            }))
        }
        Err(_) => {
            return Err(FrameError::Io(std::io::Error::other(
                "no request memory became free in time",
            )))
        }
    };
    // Grow with the bytes that actually arrive: a client that announces a large frame and
    // then trickles (or stops) holds only what it sent.
    let mut buf = BytesMut::with_capacity(len.min(READ_CHUNK));
    let mut limited = reader.take(len as u64);
    let body = async {
        while buf.len() < len {
            buf.reserve((len - buf.len()).min(READ_CHUNK));
            if limited.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(FRAME_TIMEOUT, body).await {
        Ok(Ok(())) => Ok(Some((buf.freeze(), permit))),
        Ok(Err(e)) => Err(FrameError::Io(e)),
        Err(_) => Err(FrameError::Io(std::io::Error::other(
            "request frame not received in time",
        ))),
    }
}

/// What to do with a decoded request.
enum Dispatched {
    /// Send the response (its future), and whether the request is a barrier (runs alone).
    Go(BoxFuture<'static, Option<Bytes>>, bool),
    /// Send the response, wait the delay, then close the connection.
    Close(
        BoxFuture<'static, Option<Bytes>>,
        Option<std::time::Duration>,
    ),
}

impl Dispatched {
    /// Keeps `permit` until the response is ready.
    fn holding(self, permit: BudgetPermit) -> Self {
        let hold =
            |response: BoxFuture<'static, Option<Bytes>>| -> BoxFuture<'static, Option<Bytes>> {
                Box::pin(async move {
                    let frame = response.await;
                    drop(permit);
                    frame
                })
            };
        match self {
            Dispatched::Go(response, barrier) => Dispatched::Go(hold(response), barrier),
            Dispatched::Close(response, delay) => Dispatched::Close(hold(response), delay),
        }
    }
}

/// Decodes one frame, applies the connection's authentication and authorization, and
/// starts its handler.
async fn dispatch(
    gateway: &Arc<Gateway>,
    frame: Bytes,
    peer: SocketAddr,
    session: &mut Session,
) -> Result<Dispatched, CloseReason> {
    let mut peek = &frame[..];
    let key = peek.get_i16();
    let version = peek.get_i16();
    let correlation_id = peek.get_i32();
    let api_key = ApiKey::try_from(key).map_err(|_| CloseReason::UnknownApi(key))?;
    if api_key == ApiKey::ApiVersions && !handlers::is_supported(api_key, version) {
        // KIP-511: answer in the v0 layout with UNSUPPORTED_VERSION so the client retries lower.
        let body = handlers::api_versions::unsupported_version_response();
        let encoded = encode_response(api_key, 0, correlation_id, &body).map_err(|e| {
            CloseReason::BadRequest {
                key: api_key,
                version,
                reason: e,
            }
        })?;
        return Ok(Dispatched::Go(Box::pin(async move { Some(encoded) }), true));
    }
    if !handlers::is_supported(api_key, version) {
        return Err(CloseReason::UnsupportedVersion {
            key: api_key,
            version,
        });
    }
    let mut body = frame;
    let header = decode_request_header_from_buffer(&mut body)
        .map_err(|e| CloseReason::BadHeader(e.to_string()))?;
    crate::guard::check_request_body(key, version, &body)?;
    let request =
        RequestKind::decode(api_key, &mut body, version).map_err(|e| CloseReason::BadRequest {
            key: api_key,
            version,
            reason: e.to_string(),
        })?;
    session
        .check(api_key)
        .map_err(|reason| CloseReason::NotAuthenticated {
            api: api_key,
            reason,
        })?;
    let sasl_reply = match &request {
        RequestKind::SaslHandshake(req) => Some(session.handshake(req)),
        RequestKind::SaslAuthenticate(req) => {
            Some(session.authenticate(gateway, version, correlation_id, req))
        }
        _ => None,
    };
    if let Some(reply) = sasl_reply {
        let encoded =
            encode_response(api_key, version, correlation_id, &reply.response).map_err(|e| {
                CloseReason::BadRequest {
                    key: api_key,
                    version,
                    reason: e,
                }
            })?;
        let response: BoxFuture<'static, Option<Bytes>> = Box::pin(async move { Some(encoded) });
        return Ok(if reply.close {
            Dispatched::Close(response, reply.delay)
        } else {
            Dispatched::Go(response, true)
        });
    }
    let rid = session.request_id(correlation_id);
    // Stored names from here on (a tenant cluster's carry its prefix).
    let mut request = request;
    crate::namespace::inbound(
        crate::namespace::Namespace::of(&session.listener),
        &gateway.registry,
        &mut request,
    );
    let (request, fixup) =
        match &session.authorizer {
            Some(a) => match crate::authz::pre(gateway, a, &rid, request) {
                Ok(filtered) => filtered,
                Err(refusal) => {
                    let encoded = encode_response(api_key, version, correlation_id, &refusal)
                        .map_err(|e| CloseReason::BadRequest {
                            key: api_key,
                            version,
                            reason: e,
                        })?;
                    return Ok(Dispatched::Go(Box::pin(async move { Some(encoded) }), true));
                }
            },
            None => (request, crate::authz::Fixup::None),
        };
    let authorizer = session.authorizer.clone();
    let listener = session.listener.clone();
    let client_id = header
        .client_id
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default();
    let client_host = format!("/{}", peer.ip());
    let ctx = handlers::RequestContext {
        api_key,
        version,
        correlation_id,
        client_id,
        client_host,
    };
    let started = std::time::Instant::now();
    let (pending, barrier) = handlers::handle(gateway, &ctx, request).await;
    let gw = gateway.clone();
    let response = Box::pin(async move {
        let mut body = pending.await?;
        // Request latency for the scaler, without long-polling fetches (they wait on purpose).
        if ctx.api_key != ApiKey::Fetch {
            use std::sync::atomic::Ordering::Relaxed;
            let stats = &gw.cluster.stats;
            stats.requests.fetch_add(1, Relaxed);
            stats
                .request_micros
                .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        }
        if let Some(a) = &authorizer {
            fixup.apply(a, &rid, ctx.version, &mut body);
        }
        crate::namespace::outbound(
            crate::namespace::Namespace::of(&listener),
            &gw.registry,
            &mut body,
        );
        crate::authz::advertise_listener(&listener, gw.config.node_id, ctx.version, &mut body);
        match encode_response(ctx.api_key, ctx.version, ctx.correlation_id, &body) {
            Ok(frame) => Some(frame),
            Err(e) => {
                tracing::error!(api = ?ctx.api_key, version = ctx.version, error = %e, "response encoding failed");
                None
            }
        }
    });
    Ok(Dispatched::Go(response, barrier))
}

/// Encodes `i32 length | response header | body`.
pub fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
) -> Result<Bytes, String> {
    let header_version = response_header_version(api_key, version);
    // Fetch responses carry megabytes of records: size the buffer exactly, once.
    let capacity = match body {
        ResponseKind::Fetch(f) => f.compute_size(version).unwrap_or(0) + 64,
        _ => 128,
    };
    let mut buf = BytesMut::with_capacity(capacity);
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    body.encode(&mut buf, version).map_err(|e| e.to_string())?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

fn response_header_version(api_key: ApiKey, version: i16) -> i16 {
    if api_key == ApiKey::ApiVersions {
        // ApiVersions responses always use header v0 so any client can read them.
        return 0;
    }
    api_key.response_header_version(version)
}
