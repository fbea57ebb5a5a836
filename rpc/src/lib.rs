//! The QUIC transport between Weir's processes (gateways, the metadata service, storage
//! nodes): TLS certificates ([`tls`]), server and client endpoints, and one request/response
//! exchange per QUIC stream.
//!
//! A service is named and versioned by its ALPN protocol id (for example `weir-metadata/2`):
//! a client and a server that speak different versions fail the TLS handshake with a clear
//! error instead of misreading each other's messages. Messages are `serde` values encoded with
//! `postcard`. A stream starts with one byte saying what it carries:
//! - a call ([`Client::call`]): the request, the send side finished, the response read to the
//!   end; every call has a timeout;
//! - a session ([`Client::open_session`]): an ordered, long-lived exchange of length-delimited
//!   messages in both directions (`tokio_util`'s `LengthDelimitedCodec`), for traffic whose
//!   order matters, such as a gateway's appends to a storage node.
//!
//! Messages are bounded by [`MAX_MESSAGE_BYTES`].

pub mod tls;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

/// The largest request, response or session message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// First byte of a stream that carries one call.
const KIND_CALL: u8 = 0;
/// First byte of a stream that carries a session.
const KIND_SESSION: u8 = 1;

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("call to {addr} failed: {reason}")]
    Call { addr: String, reason: String },
    #[error("call to {addr} timed out after {ms} ms")]
    Timeout { addr: String, ms: u128 },
    #[error("message encoding: {0}")]
    Codec(String),
    #[error("session with {addr} ended: {reason}")]
    Session { addr: String, reason: String },
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_MESSAGE_BYTES)
        .new_codec()
}

/// The sending half of a session: messages arrive at the peer in the order they were sent.
#[derive(Debug)]
pub struct SessionSender<T> {
    sink: FramedWrite<quinn::SendStream, LengthDelimitedCodec>,
    peer: String,
    _message: PhantomData<fn(T)>,
}

impl<T: Serialize> SessionSender<T> {
    fn new(send: quinn::SendStream, peer: String) -> Self {
        SessionSender {
            sink: FramedWrite::new(send, codec()),
            peer,
            _message: PhantomData,
        }
    }

    /// Sends one message (waits while the peer's flow control window is full).
    pub async fn send(&mut self, message: &T) -> Result<(), RpcError> {
        let body = postcard::to_allocvec(message).map_err(|e| RpcError::Codec(e.to_string()))?;
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(RpcError::Codec(format!(
                "message of {} bytes is over the {MAX_MESSAGE_BYTES}-byte limit",
                body.len()
            )));
        }
        self.sink
            .send(Bytes::from(body))
            .await
            .map_err(|e| RpcError::Session {
                addr: self.peer.clone(),
                reason: e.to_string(),
            })
    }

    /// Ends the sending direction (the peer's receiver then sees the end of the session).
    pub async fn finish(mut self) {
        let _ = SinkExt::<Bytes>::flush(&mut self.sink).await;
        let _ = self.sink.get_mut().finish();
    }
}

/// The receiving half of a session.
#[derive(Debug)]
pub struct SessionReceiver<T> {
    stream: FramedRead<quinn::RecvStream, LengthDelimitedCodec>,
    peer: String,
    _message: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> SessionReceiver<T> {
    fn new(recv: quinn::RecvStream, peer: String) -> Self {
        SessionReceiver {
            stream: FramedRead::new(recv, codec()),
            peer,
            _message: PhantomData,
        }
    }

    /// The next message; `None` when the peer finished the session.
    pub async fn recv(&mut self) -> Result<Option<T>, RpcError> {
        match self.stream.next().await {
            None => Ok(None),
            Some(Ok(frame)) => postcard::from_bytes(&frame)
                .map(Some)
                .map_err(|e| RpcError::Codec(e.to_string())),
            Some(Err(e)) => Err(RpcError::Session {
                addr: self.peer.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(256u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(10)) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// A QUIC server endpoint on `listen` speaking protocol `alpn`, with the PEM certificate
/// chain `cert` and key `key`.
pub fn server_endpoint(
    listen: SocketAddr,
    cert: &Path,
    key: &Path,
    alpn: &[u8],
) -> Result<quinn::Endpoint, RpcError> {
    let mut config = (*tls::server_config(cert, key)?).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(config)
        .map_err(|e| RpcError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport()));
    Ok(quinn::Endpoint::server(server, listen)?)
}

/// A client of one QUIC service: keeps one connection and reconnects when it is lost.
#[derive(Debug)]
pub struct Client {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: String,
    timeout: Duration,
    /// The shared connection, or the one connect in progress. A plain mutex, held only to
    /// read or swap the state, never across an await: callers with a live connection never
    /// wait behind a reconnect, and concurrent reconnects share one handshake.
    conn: std::sync::Mutex<ConnState>,
}

/// A connect in progress, awaited by every caller that needs it.
type SharedConnect =
    futures::future::Shared<futures::future::BoxFuture<'static, Result<quinn::Connection, String>>>;

#[derive(Default)]
enum ConnState {
    #[default]
    None,
    Connecting(SharedConnect),
    Ready(quinn::Connection),
}

impl std::fmt::Debug for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnState::None => "None",
            ConnState::Connecting(_) => "Connecting",
            ConnState::Ready(_) => "Ready",
        })
    }
}

impl Client {
    /// A client of the service at `addr` speaking `alpn`, trusting the CA certificates in
    /// `ca`; `server_name` is the name (or IP address) the server's certificate must carry.
    pub fn new(
        addr: SocketAddr,
        server_name: &str,
        ca: &Path,
        alpn: &[u8],
        timeout: Duration,
    ) -> Result<Self, RpcError> {
        let mut tls = (*tls::client_config(ca)?).clone();
        tls.alpn_protocols = vec![alpn.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| RpcError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport()));
        let bind: SocketAddr = if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let endpoint = quinn::Endpoint::client(bind)?;
        Ok(Client {
            endpoint,
            config,
            addr,
            server_name: server_name.to_string(),
            timeout,
            conn: std::sync::Mutex::new(ConnState::None),
        })
    }

    /// The service's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn connection(&self) -> Result<quinn::Connection, RpcError> {
        use futures::FutureExt;
        let connect_err = |reason: String| RpcError::Connect {
            addr: self.addr.to_string(),
            reason,
        };
        let pending = {
            let mut state = self.state();
            match &*state {
                ConnState::Ready(conn) if conn.close_reason().is_none() => return Ok(conn.clone()),
                ConnState::Connecting(pending) => pending.clone(),
                _ => {
                    let connecting = self
                        .endpoint
                        .connect_with(self.config.clone(), self.addr, &self.server_name)
                        .map_err(|e| connect_err(e.to_string()))?;
                    let pending = async move { connecting.await.map_err(|e| e.to_string()) }
                        .boxed()
                        .shared();
                    *state = ConnState::Connecting(pending.clone());
                    pending
                }
            }
        };
        let outcome = pending.await;
        let mut state = self.state();
        if matches!(&*state, ConnState::Connecting(_)) {
            *state = match &outcome {
                Ok(conn) => ConnState::Ready(conn.clone()),
                Err(_) => ConnState::None,
            };
        }
        outcome.map_err(connect_err)
    }

    /// Forgets the shared connection if it is `dead` (the next call connects afresh).
    fn forget(&self, dead: &quinn::Connection) {
        let mut state = self.state();
        if matches!(&*state, ConnState::Ready(c) if c.stable_id() == dead.stable_id()) {
            *state = ConnState::None;
        }
    }

    /// Sends `request` and waits for the response. A request is sent at most once: when a
    /// call fails after the request may have reached the server, the error says so and the
    /// caller decides (the server may or may not have acted on it).
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        request: &Req,
    ) -> Result<Resp, RpcError> {
        let body = postcard::to_allocvec(request).map_err(|e| RpcError::Codec(e.to_string()))?;
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(RpcError::Codec(format!(
                "request of {} bytes is over the {MAX_MESSAGE_BYTES}-byte limit",
                body.len()
            )));
        }
        let exchange = async {
            let (mut send, mut recv) = self.open_stream().await?;
            send.write_all(&[KIND_CALL])
                .await
                .map_err(|e| self.call_err(e))?;
            send.write_all(&body).await.map_err(|e| self.call_err(e))?;
            send.finish().map_err(|e| self.call_err(e))?;
            let response = recv
                .read_to_end(MAX_MESSAGE_BYTES)
                .await
                .map_err(|e| self.call_err(e))?;
            postcard::from_bytes(&response).map_err(|e| RpcError::Codec(e.to_string()))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::Timeout {
                addr: self.addr.to_string(),
                ms: self.timeout.as_millis(),
            }),
        }
    }

    /// Opens a stream on the shared connection (reconnecting once if it died).
    async fn open_stream(&self) -> Result<(quinn::SendStream, quinn::RecvStream), RpcError> {
        let conn = self.connection().await?;
        match conn.open_bi().await {
            Ok(streams) => Ok(streams),
            Err(_) => {
                // The connection died before anything was sent: one fresh connection.
                self.forget(&conn);
                let conn = self.connection().await?;
                conn.open_bi().await.map_err(|e| self.call_err(e))
            }
        }
    }

    /// Opens a session: an ordered exchange of `Out` messages to the server and `In`
    /// messages back, until either side finishes or the connection is lost.
    pub async fn open_session<Out: Serialize, In: DeserializeOwned>(
        &self,
    ) -> Result<(SessionSender<Out>, SessionReceiver<In>), RpcError> {
        let open = async {
            let (mut send, recv) = self.open_stream().await?;
            send.write_all(&[KIND_SESSION])
                .await
                .map_err(|e| self.call_err(e))?;
            Ok::<_, RpcError>((send, recv))
        };
        let (send, recv) = tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| RpcError::Timeout {
                addr: self.addr.to_string(),
                ms: self.timeout.as_millis(),
            })??;
        let peer = self.addr.to_string();
        Ok((
            SessionSender::new(send, peer.clone()),
            SessionReceiver::new(recv, peer),
        ))
    }

    fn call_err(&self, e: impl std::fmt::Display) -> RpcError {
        RpcError::Call {
            addr: self.addr.to_string(),
            reason: e.to_string(),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"client closed");
    }
}

/// The server side of a service: turns each request into a response, and serves sessions.
pub trait Handler: Send + Sync + 'static {
    type Request: DeserializeOwned + Send;
    type Response: Serialize + Send;
    /// Messages a client sends in a session.
    type SessionIn: DeserializeOwned + Send;
    /// Messages the server sends back in a session.
    type SessionOut: Serialize + Send;
    /// Answers one request.
    fn handle(&self, request: Self::Request) -> impl Future<Output = Self::Response> + Send;
    /// The response to a request that could not be decoded.
    fn malformed(&self, error: String) -> Self::Response;
    /// Serves one session until it ends (a service without sessions drops both halves,
    /// which ends the session at once).
    fn session(
        self: Arc<Self>,
        send: SessionSender<Self::SessionOut>,
        recv: SessionReceiver<Self::SessionIn>,
    ) -> impl Future<Output = ()> + Send;
}

/// Serves `handler` on `endpoint` until `shutdown` is cancelled; each stream is one request.
pub async fn serve<H: Handler>(
    endpoint: quinn::Endpoint,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(error = %e, "QUIC handshake failed");
                    return;
                }
            };
            let peer = conn.remote_address().to_string();
            loop {
                let (send, recv) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    stream = conn.accept_bi() => match stream {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                };
                tokio::spawn(stream(handler.clone(), send, recv, peer.clone()));
            }
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
    // Let the peers learn that the connections closed (bounded), so that they fail fast.
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
}

async fn stream<H: Handler>(
    handler: Arc<H>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: String,
) {
    let mut kind = [0u8; 1];
    if let Err(e) = recv.read_exact(&mut kind).await {
        tracing::debug!(error = %e, "reading a stream's kind failed");
        return;
    }
    match kind[0] {
        KIND_CALL => answer(handler, send, recv).await,
        KIND_SESSION => {
            handler
                .session(
                    SessionSender::new(send, peer.clone()),
                    SessionReceiver::new(recv, peer),
                )
                .await
        }
        other => tracing::debug!(kind = other, "stream of an unknown kind"),
    }
}

async fn answer<H: Handler>(
    handler: Arc<H>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let response = match recv.read_to_end(MAX_MESSAGE_BYTES).await {
        Ok(bytes) => match postcard::from_bytes::<H::Request>(&bytes) {
            Ok(request) => handler.handle(request).await,
            Err(e) => handler.malformed(format!("undecodable request: {e}")),
        },
        Err(e) => {
            tracing::debug!(error = %e, "reading a request failed");
            return;
        }
    };
    match postcard::to_allocvec(&response) {
        Ok(bytes) => {
            if send.write_all(&bytes).await.is_ok() {
                let _ = send.finish();
                // Wait until the peer has the whole response before the stream is dropped.
                let _ = send.stopped().await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "encoding a response failed"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Echo;

    impl Handler for Echo {
        type Request = (u32, String);
        type Response = Result<String, String>;
        type SessionIn = u64;
        type SessionOut = u64;
        async fn handle(&self, (n, s): (u32, String)) -> Self::Response {
            Ok(s.repeat(n as usize))
        }
        fn malformed(&self, error: String) -> Self::Response {
            Err(error)
        }
        /// Answers each number with its double, in order.
        async fn session(
            self: Arc<Self>,
            mut send: SessionSender<u64>,
            mut recv: SessionReceiver<u64>,
        ) {
            while let Ok(Some(n)) = recv.recv().await {
                if send.send(&(n * 2)).await.is_err() {
                    return;
                }
            }
            send.finish().await;
        }
    }

    #[tokio::test]
    async fn calls_round_trip_and_versions_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let files = tls::generate(dir.path(), &["127.0.0.1".into()]).unwrap();
        let server = server_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &files.cert,
            &files.key,
            b"echo/1",
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(server, Arc::new(Echo), shutdown.clone()));

        let client = Client::new(
            addr,
            "127.0.0.1",
            &files.ca,
            b"echo/1",
            Duration::from_secs(5),
        )
        .unwrap();
        let answer: Result<String, String> = client.call(&(3u32, "ab".to_string())).await.unwrap();
        assert_eq!(answer.unwrap(), "ababab");
        // Many concurrent calls share one connection.
        let requests: Vec<(u32, String)> = (0..50u32).map(|i| (i, "x".to_string())).collect();
        let calls = requests
            .iter()
            .map(|r| client.call::<_, Result<String, String>>(r));
        for (i, r) in futures::future::join_all(calls)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(r.unwrap().unwrap().len(), i);
        }
        // A session carries messages in order, both ways, next to calls.
        let (mut tx, mut rx) = client.open_session::<u64, u64>().await.unwrap();
        let writer = tokio::spawn(async move {
            for n in 0..1000u64 {
                tx.send(&n).await.unwrap();
            }
            tx.finish().await;
        });
        for n in 0..1000u64 {
            assert_eq!(rx.recv().await.unwrap(), Some(n * 2));
        }
        assert_eq!(rx.recv().await.unwrap(), None);
        writer.await.unwrap();

        // A malformed request gets the handler's error, not a hang.
        let bad: Result<String, String> = client.call(&"not a tuple".to_string()).await.unwrap();
        assert!(bad.is_err());

        // A client of another protocol version is refused at the handshake.
        let old = Client::new(
            addr,
            "127.0.0.1",
            &files.ca,
            b"echo/0",
            Duration::from_secs(5),
        )
        .unwrap();
        let refused = old
            .call::<_, Result<String, String>>(&(1u32, "a".to_string()))
            .await;
        assert!(
            matches!(refused, Err(RpcError::Connect { .. })),
            "{refused:?}"
        );

        // A client that does not trust the server's CA is refused too.
        let other = tempfile::tempdir().unwrap();
        let other_files = tls::generate(other.path(), &["127.0.0.1".into()]).unwrap();
        let stranger = Client::new(
            addr,
            "127.0.0.1",
            &other_files.ca,
            b"echo/1",
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(stranger
            .call::<_, Result<String, String>>(&(1u32, "a".to_string()))
            .await
            .is_err());

        shutdown.cancel();
        task.await.unwrap();
        // With the server gone, a call fails within its timeout.
        let gone = Client::new(
            addr,
            "127.0.0.1",
            &files.ca,
            b"echo/1",
            Duration::from_millis(500),
        )
        .unwrap();
        assert!(gone
            .call::<_, Result<String, String>>(&(1u32, "a".to_string()))
            .await
            .is_err());
    }
}
