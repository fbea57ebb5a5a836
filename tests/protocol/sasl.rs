//! SASL state handling on the wire: what an unauthenticated connection may do, and how
//! refusals look (codes, the OAUTHBEARER error challenge, closing the connection).

use crate::support::*;
use anyhow::{ensure, Result};
use bytes::Bytes;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::net::{SocketAddr, TcpListener};

/// A server with a SASL_PLAINTEXT listener (SCRAM-SHA-256 and OAUTHBEARER) besides the
/// plaintext one; returns the SASL address.
fn sasl_server() -> Result<(Server, SocketAddr)> {
    let sasl = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let admin = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let spec = format!("SASL_PLAINTEXT://{sasl}?mechanisms=SCRAM-SHA-256+OAUTHBEARER");
    let mut server = Server::start(&["--listener", &spec, "--admin-listen", &admin.to_string()])?;
    server.admin = Some(admin);
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

/// Runs `weir auth` against a server's admin API.
fn weir_auth(admin: SocketAddr, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("auth")
        .arg("--admin")
        .arg(format!("http://{admin}"))
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "weir auth {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// A SCRAM-SHA-256 client exchange (RFC 5802) on `c`; returns the final SaslAuthenticate
/// error code.
fn scram_login(c: &mut Client, user: &str, password: &str) -> Result<i16> {
    use base64::Engine;
    use sha2::Digest;
    let b64 = base64::engine::general_purpose::STANDARD;
    ensure!(c.call(1, &handshake("SCRAM-SHA-256"))?.error_code == 0);
    let nonce = format!("{:x}", rand::random::<u64>());
    let first_bare = format!("n={user},r={nonce}");
    let r = c.call(
        2,
        &SaslAuthenticateRequest::default()
            .with_auth_bytes(Bytes::from(format!("n,,{first_bare}"))),
    )?;
    ensure!(
        r.error_code == 0,
        "server-first refused: {:?}",
        r.error_message
    );
    let server_first = String::from_utf8(r.auth_bytes.to_vec())?;
    let mut server_nonce = "";
    let mut salt = Vec::new();
    let mut iterations = 0u32;
    for attr in server_first.split(',') {
        if let Some(v) = attr.strip_prefix("r=") {
            server_nonce = v;
        } else if let Some(v) = attr.strip_prefix("s=") {
            salt = b64.decode(v)?;
        } else if let Some(v) = attr.strip_prefix("i=") {
            iterations = v.parse()?;
        }
    }
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = sha2::Sha256::digest(&client_key);
    let without_proof = format!("c=biws,r={server_nonce}");
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let r = c.call(
        2,
        &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(format!(
            "{without_proof},p={}",
            b64.encode(proof)
        ))),
    )?;
    if r.error_code == 0 {
        // The server's signature proves it knows the credential too.
        let server_key = hmac_sha256(&salted, b"Server Key");
        let expected = format!(
            "v={}",
            b64.encode(hmac_sha256(&server_key, auth_message.as_bytes()))
        );
        ensure!(
            r.auth_bytes.as_ref() == expected.as_bytes(),
            "bad server signature"
        );
    }
    Ok(r.error_code)
}

/// A principal allowed only to connect sends every advertised request in every version: each
/// is answered (the authorization errors fit each version's layout) on a connection that
/// stays open; a wrong password is refused.
#[test]
fn denied_requests_are_answered_in_every_version() -> Result<()> {
    use crate::frames::body_with;
    use weir_gateway::handlers::SUPPORTED;
    let (server, sasl) = sasl_server()?;
    let admin = server
        .admin
        .ok_or_else(|| anyhow::anyhow!("no admin address"))?;
    weir_auth(admin, &["scram", "set", "connect-only", "--password", "pw"])?;
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("p.json");
    std::fs::write(
        &policy,
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kafka-cluster:Connect","Resource":"*"}]}"#,
    )?;
    weir_auth(
        admin,
        &[
            "policy",
            "put",
            "connect-only",
            "p",
            "--file",
            policy.to_str().unwrap_or(""),
        ],
    )?;

    let mut wrong = Client::connect(sasl)?;
    ensure!(
        scram_login(&mut wrong, "connect-only", "not-pw")?
            == code(ResponseError::SaslAuthenticationFailed)
    );
    wrong.expect_closed()?;

    let mut c = Client::connect(sasl)?;
    ensure!(scram_login(&mut c, "connect-only", "pw")? == 0);
    let mut correlation = 1000;
    for &(key, min, max) in SUPPORTED {
        if matches!(
            key,
            ApiKey::SaslHandshake | ApiKey::SaslAuthenticate | ApiKey::ApiVersions
        ) {
            continue;
        }
        for version in min..=max {
            correlation += 1;
            let body = body_with(key, version, 1)?;
            let head = header_bytes(key, version, correlation)?;
            c.write_raw(&framed(&[&head, &body]))?;
            let mut answer = c
                .read_frame()?
                .ok_or_else(|| anyhow::anyhow!("{key:?} v{version}: connection closed"))?;
            use bytes::Buf;
            ensure!(
                answer.get_i32() == correlation,
                "{key:?} v{version}: wrong correlation id"
            );
        }
    }
    Ok(())
}
