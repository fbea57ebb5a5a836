//! The QUIC transport between Weir's processes (gateways, the metadata service, storage
//! nodes): TLS certificates ([`tls`]), server and client endpoints, and one request/response
//! exchange per QUIC stream.
//!
//! A service is named and versioned by its ALPN protocol id (for example `weir-metadata/1`):
//! a client and a server that speak different versions fail the TLS handshake with a clear
//! error instead of misreading each other's messages. Messages are `serde` values encoded with
//! `postcard`; each request opens a bidirectional stream, writes the request, finishes the
//! send side and reads the response to the end. Messages are bounded by
//! [`MAX_MESSAGE_BYTES`]; every call has a timeout.

pub mod tls;

use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The largest request or response, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

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
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
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
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// The service's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn connection(&self) -> Result<quinn::Connection, RpcError> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let connect_err = |reason: String| RpcError::Connect {
            addr: self.addr.to_string(),
            reason,
        };
        let conn = self
            .endpoint
            .connect_with(self.config.clone(), self.addr, &self.server_name)
            .map_err(|e| connect_err(e.to_string()))?
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        *guard = Some(conn.clone());
        Ok(conn)
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
            let conn = self.connection().await?;
            let (mut send, mut recv) = match conn.open_bi().await {
                Ok(streams) => streams,
                Err(_) => {
                    // The connection died before anything was sent: one fresh connection.
                    self.conn.lock().await.take();
                    let conn = self.connection().await?;
                    conn.open_bi().await.map_err(|e| self.call_err(e))?
                }
            };
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

/// The server side of a service: turns each request into a response.
pub trait Handler: Send + Sync + 'static {
    type Request: DeserializeOwned + Send;
    type Response: Serialize + Send;
    /// Answers one request.
    fn handle(&self, request: Self::Request) -> impl Future<Output = Self::Response> + Send;
    /// The response to a request that could not be decoded.
    fn malformed(&self, error: String) -> Self::Response;
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
            loop {
                let (send, recv) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    stream = conn.accept_bi() => match stream {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                };
                tokio::spawn(answer(handler.clone(), send, recv));
            }
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
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
        async fn handle(&self, (n, s): (u32, String)) -> Self::Response {
            Ok(s.repeat(n as usize))
        }
        fn malformed(&self, error: String) -> Self::Response {
            Err(error)
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
