//! A connection's security state: the listener it came in on, its SASL exchange, and once
//! authenticated, its principal and session expiry (KIP-368 re-authentication).
//!
//! On a SASL listener nothing but ApiVersions, SaslHandshake and SaslAuthenticate is served
//! before authentication, and nothing but those once the session expired: such a request
//! closes the connection, as Kafka does. A failed authentication is answered with
//! SASL_AUTHENTICATION_FAILED at once and the connection is closed after a short delay.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use weir_auth::{Action, Mechanism, Resource, Sasl, Step};

use crate::authz::Authorizer;
use crate::listener::Listener;
use crate::Gateway;

/// How long a connection stays open after a failed authentication was answered (Kafka's
/// `connection.failed.authentication.delay.ms`): clients read the error before the close, and
/// one connection cannot retry quickly.
pub const FAILED_AUTH_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Session {
    pub listener: Arc<Listener>,
    pub conn_id: u64,
    pub peer: std::net::SocketAddr,
    handshake: Option<Mechanism>,
    sasl: Option<Sasl>,
    pub authorizer: Option<Arc<Authorizer>>,
    expires_at: Option<SystemTime>,
}

/// What the connection does after a SASL response.
pub struct SaslReply {
    pub response: kafka_protocol::messages::ResponseKind,
    pub close: bool,
    pub delay: Option<Duration>,
}

impl Session {
    pub fn new(listener: Arc<Listener>, conn_id: u64, peer: std::net::SocketAddr) -> Self {
        Session {
            listener,
            conn_id,
            peer,
            handshake: None,
            sasl: None,
            authorizer: None,
            expires_at: None,
        }
    }

    /// The id a client sees in error messages and the audit log shows.
    pub fn request_id(&self, correlation_id: i32) -> String {
        format!("{:x}-{}", self.conn_id, correlation_id)
    }

    /// Whether `api` may be served now; `Err` says why the connection must close.
    pub fn check(&self, api: ApiKey) -> Result<(), &'static str> {
        if matches!(
            api,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        ) || !self.listener.protocol.sasl()
        {
            return Ok(());
        }
        let Some(authorizer) = &self.authorizer else {
            return Err("request before SASL authentication");
        };
        if !authorizer.credential_valid() {
            return Err("the credential of this session was revoked");
        }
        if let Some(cluster) = &self.listener.cluster {
            if !authorizer.auth.tenants.active(&cluster.account_id) {
                return Err("the account was suspended");
            }
        }
        if self.expires_at.is_some_and(|t| SystemTime::now() > t) {
            return Err("SASL session expired without re-authentication");
        }
        Ok(())
    }

    pub fn handshake(&mut self, req: &SaslHandshakeRequest) -> SaslReply {
        let offered: Vec<StrBytes> = self
            .listener
            .mechanisms
            .iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect();
        let reply = |code: i16, close: bool| SaslReply {
            response: kafka_protocol::messages::ResponseKind::SaslHandshake(
                SaslHandshakeResponse::default()
                    .with_error_code(code)
                    .with_mechanisms(offered.clone()),
            ),
            close,
            delay: None,
        };
        if !self.listener.protocol.sasl() || self.sasl.is_some() {
            return reply(ResponseError::IllegalSaslState.code(), true);
        }
        match Mechanism::from_name(req.mechanism.as_str()) {
            Some(m) if self.listener.mechanisms.contains(&m) => {
                self.handshake = Some(m);
                reply(0, false)
            }
            _ => {
                tracing::info!(target: "weir::audit", conn = self.conn_id, peer = %self.peer,
                    mechanism = %req.mechanism.as_str(), "authentication refused: mechanism not enabled");
                reply(ResponseError::UnsupportedSaslMechanism.code(), true)
            }
        }
    }

    pub fn authenticate(
        &mut self,
        gateway: &Gateway,
        version: i16,
        correlation_id: i32,
        req: &SaslAuthenticateRequest,
    ) -> SaslReply {
        let rid = self.request_id(correlation_id);
        let fail = |session: &Session, reason: &str, mechanism: Option<Mechanism>| {
            tracing::warn!(target: "weir::audit", conn = session.conn_id, peer = %session.peer,
                mechanism = mechanism.map(|m| m.name()).unwrap_or("none"),
                request_id = %rid, reason, "authentication failed");
            SaslReply {
                response: kafka_protocol::messages::ResponseKind::SaslAuthenticate(
                    SaslAuthenticateResponse::default()
                        .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                        .with_error_message(Some(StrBytes::from_string(format!(
                            "[{rid}]: Access denied"
                        )))),
                ),
                close: true,
                delay: Some(FAILED_AUTH_DELAY),
            }
        };
        let Some(auth) = gateway.auth.clone() else {
            return fail(self, "authentication is not configured", None);
        };
        let mut sasl = match (self.sasl.take(), self.handshake.take()) {
            (Some(s), _) => s,
            (None, Some(m)) => Sasl::new(m, rid.clone()),
            (None, None) => {
                return SaslReply {
                    response: kafka_protocol::messages::ResponseKind::SaslAuthenticate(
                        SaslAuthenticateResponse::default()
                            .with_error_code(ResponseError::IllegalSaslState.code())
                            .with_error_message(Some(StrBytes::from_static_str(
                                "SaslAuthenticate before SaslHandshake",
                            ))),
                    ),
                    close: true,
                    delay: None,
                }
            }
        };
        let mechanism = sasl.mechanism();
        match sasl.step(&auth, &req.auth_bytes) {
            Step::Continue(bytes) => {
                self.sasl = Some(sasl);
                SaslReply {
                    response: kafka_protocol::messages::ResponseKind::SaslAuthenticate(
                        SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(bytes)),
                    ),
                    close: false,
                    delay: None,
                }
            }
            Step::Failed { reason } => fail(self, &reason, Some(mechanism)),
            Step::Done {
                principal,
                reply,
                expires_at,
            } => {
                if let Some(previous) = &self.authorizer {
                    if previous.principal != principal.name {
                        return fail(
                            self,
                            &format!(
                                "re-authentication as {} on a connection of {}",
                                principal.name, previous.principal
                            ),
                            Some(mechanism),
                        );
                    }
                }
                let mut authorizer = Authorizer::new(
                    auth.clone(),
                    principal.name.clone(),
                    principal.access_key_id.clone(),
                );
                if let Some(cluster) = &self.listener.cluster {
                    // A tenant cluster admits only its own account's principals, while the
                    // account is active.
                    let account = weir_auth::tenants::account_of(&principal.name);
                    if account != Some(cluster.account_id.as_str()) {
                        return fail(
                            self,
                            &format!(
                                "{} is not a principal of this cluster's account",
                                principal.name
                            ),
                            Some(mechanism),
                        );
                    }
                    if !auth.tenants.active(&cluster.account_id) {
                        return fail(self, "the account is suspended", Some(mechanism));
                    }
                    authorizer = authorizer.in_cluster(cluster.arns.clone());
                }
                let authorizer = Arc::new(authorizer);
                if !authorizer.allowed(&rid, Action::Connect, Resource::Cluster) {
                    return fail(
                        self,
                        &format!("{} is not allowed kafka-cluster:Connect", principal.name),
                        Some(mechanism),
                    );
                }
                tracing::info!(target: "weir::audit", conn = self.conn_id, peer = %self.peer,
                    principal = %principal.name, mechanism = mechanism.name(),
                    access_key_id = principal.access_key_id.as_deref().unwrap_or(""),
                    request_id = %rid, "authenticated");
                let lifetime_ms = expires_at
                    .and_then(|t| t.duration_since(SystemTime::now()).ok())
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1))
                    .unwrap_or(0);
                self.authorizer = Some(authorizer);
                self.expires_at = expires_at;
                let mut response =
                    SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(reply));
                if version >= 1 {
                    response = response.with_session_lifetime_ms(lifetime_ms);
                }
                SaslReply {
                    response: kafka_protocol::messages::ResponseKind::SaslAuthenticate(response),
                    close: false,
                    delay: None,
                }
            }
        }
    }
}
