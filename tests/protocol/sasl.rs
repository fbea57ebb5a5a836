//! SASL state handling on the wire: what an unauthenticated connection may do, and how
//! refusals look (codes, the OAUTHBEARER error challenge, closing the connection).

use crate::support::*;
use anyhow::{ensure, Result};
use bytes::Bytes;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::{ApiVersionsRequest, SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::net::{SocketAddr, TcpListener};

/// A server with a SASL_PLAINTEXT listener (SCRAM-SHA-256 and OAUTHBEARER) besides the
/// plaintext one; returns the SASL address.
fn sasl_server() -> Result<(Server, SocketAddr)> {
    let sasl = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let admin = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let spec = format!("SASL_PLAINTEXT://{sasl}?mechanisms=SCRAM-SHA-256+OAUTHBEARER");
    let server = Server::start(&["--listener", &spec, "--admin-listen", &admin.to_string()])?;
    Ok((server, sasl))
}

fn handshake(mechanism: &'static str) -> SaslHandshakeRequest {
    SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism))
}

fn authenticate(bytes: &'static [u8]) -> SaslAuthenticateRequest {
    SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from_static(bytes))
}

#[test]
fn sasl_listener_refuses_everything_before_authentication() -> Result<()> {
    let (mut server, sasl) = sasl_server()?;

    // ApiVersions is always answered and advertises the SASL APIs.
    let mut c = Client::connect(sasl)?;
    let versions = c.call(3, &ApiVersionsRequest::default())?;
    ensure!(versions
        .api_keys
        .iter()
        .any(|k| k.api_key == 17 && k.max_version == 1));
    ensure!(versions
        .api_keys
        .iter()
        .any(|k| k.api_key == 36 && k.max_version == 2));
    // Anything else before authenticating closes the connection.
    c.send(12, &MetadataRequest::default())?;
    c.expect_closed()?;

    // A mechanism the listener does not offer: UNSUPPORTED_SASL_MECHANISM with the list.
    let mut c = Client::connect(sasl)?;
    let r = c.call(1, &handshake("GSSAPI"))?;
    ensure!(r.error_code == code(ResponseError::UnsupportedSaslMechanism));
    let offered: Vec<&str> = r.mechanisms.iter().map(|m| m.as_str()).collect();
    ensure!(offered == ["SCRAM-SHA-256", "OAUTHBEARER"], "{offered:?}");
    c.expect_closed()?;

    // SaslAuthenticate without a handshake: ILLEGAL_SASL_STATE.
    let mut c = Client::connect(sasl)?;
    let r = c.call(2, &authenticate(b"n,,n=u,r=abc"))?;
    ensure!(r.error_code == code(ResponseError::IllegalSaslState));
    c.expect_closed()?;

    // A forged OAUTHBEARER token: the RFC 7628 error challenge, then failure on "\x01".
    let mut c = Client::connect(sasl)?;
    ensure!(c.call(1, &handshake("OAUTHBEARER"))?.error_code == 0);
    let r = c.call(2, &authenticate(b"n,,\x01auth=Bearer aGVsbG8\x01\x01"))?;
    ensure!(r.error_code == 0);
    ensure!(r.auth_bytes.as_ref() == br#"{"status":"invalid_token"}"#);
    let r = c.call(2, &authenticate(b"\x01"))?;
    ensure!(r.error_code == code(ResponseError::SaslAuthenticationFailed));
    let message = r.error_message.map(|m| m.to_string()).unwrap_or_default();
    ensure!(message.contains("Access denied"), "{message}");
    c.expect_closed()?;

    // SCRAM for an unknown user goes through the exchange and then fails.
    let mut c = Client::connect(sasl)?;
    ensure!(c.call(1, &handshake("SCRAM-SHA-256"))?.error_code == 0);
    let r = c.call(2, &authenticate(b"n,,n=nobody,r=clientnonce"))?;
    ensure!(r.error_code == 0);
    let first = String::from_utf8(r.auth_bytes.to_vec())?;
    ensure!(
        first.starts_with("r=clientnonce") && first.contains(",s=") && first.contains(",i=4096")
    );
    // Garbage in place of the client-final message.
    let r = c.call(2, &authenticate(b"not a scram message"))?;
    ensure!(r.error_code == code(ResponseError::SaslAuthenticationFailed));
    c.expect_closed()?;

    // The plaintext listener has no SASL: ILLEGAL_SASL_STATE, and it keeps serving.
    let mut c = server.client()?;
    let r = c.call(1, &handshake("PLAIN"))?;
    ensure!(r.error_code == code(ResponseError::IllegalSaslState));
    server.assert_alive()?;
    let mut c = server.client()?;
    c.call(12, &MetadataRequest::default())?;
    Ok(())
}
