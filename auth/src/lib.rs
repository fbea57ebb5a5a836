//! Authentication and authorization for Weir: who a client is, and what it may do.
//!
//! This crate owns, with no Kafka types:
//! - [`iam`]: verifying AWS MSK IAM tokens (OAUTHBEARER and AWS_MSK_IAM), SigV4 presigned
//!   `kafka-cluster:Connect` requests signed with Weir-issued keys;
//! - [`scram`]: the SCRAM-SHA-256/512 server;
//! - [`policy`]: IAM policy documents and their evaluation (Deny wins, default deny);
//! - [`store`]: access keys (secrets encrypted at rest), SCRAM users and policies, kept in
//!   the metadata store;
//! - [`tls`]: the rustls server configuration and self-signed certificates for local use;
//! - [`Sasl`]: the per-connection SASL exchange over these, and [`Auth`], which decides
//!   [`Action`]s on MSK-format resource ARNs.

pub mod iam;
pub mod policy;
pub mod scram;
pub mod sigv4;
pub mod store;
pub mod tenants;
pub use weir_rpc::tls;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
pub use policy::{Decision, PolicyDocument};
pub use store::{AuthStore, MasterKey};

use iam::{SignedRequest, TokenError};
use scram::{ScramCredential, ScramMechanism, ScramServer};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("metadata: {0}")]
    Metadata(#[from] weir_metadata_api::MetadataError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Invalid(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("limit: {0}")]
    Limit(String),
    #[error("encryption failed (wrong master key?)")]
    Crypto,
    #[error("tls: {0}")]
    Tls(String),
}

/// The SASL mechanisms Weir speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    OauthBearer,
    AwsMskIam,
    ScramSha256,
    ScramSha512,
    Plain,
}

impl Mechanism {
    pub const ALL: [Mechanism; 5] = [
        Mechanism::OauthBearer,
        Mechanism::AwsMskIam,
        Mechanism::ScramSha256,
        Mechanism::ScramSha512,
        Mechanism::Plain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::OauthBearer => "OAUTHBEARER",
            Mechanism::AwsMskIam => "AWS_MSK_IAM",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::Plain => "PLAIN",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// What a SASL listener offers unless told otherwise (PLAIN is opt-in).
    pub fn defaults() -> Vec<Mechanism> {
        vec![
            Mechanism::OauthBearer,
            Mechanism::AwsMskIam,
            Mechanism::ScramSha256,
            Mechanism::ScramSha512,
        ]
    }
}

/// The `kafka-cluster` actions MSK authorizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Connect,
    DescribeCluster,
    AlterCluster,
    DescribeClusterDynamicConfiguration,
    AlterClusterDynamicConfiguration,
    WriteDataIdempotently,
    CreateTopic,
    DescribeTopic,
    AlterTopic,
    DeleteTopic,
    DescribeTopicDynamicConfiguration,
    AlterTopicDynamicConfiguration,
    ReadData,
    WriteData,
    DescribeGroup,
    AlterGroup,
    DeleteGroup,
    DescribeTransactionalId,
    AlterTransactionalId,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Connect => "kafka-cluster:Connect",
            Action::DescribeCluster => "kafka-cluster:DescribeCluster",
            Action::AlterCluster => "kafka-cluster:AlterCluster",
            Action::DescribeClusterDynamicConfiguration => {
                "kafka-cluster:DescribeClusterDynamicConfiguration"
            }
            Action::AlterClusterDynamicConfiguration => {
                "kafka-cluster:AlterClusterDynamicConfiguration"
            }
            Action::WriteDataIdempotently => "kafka-cluster:WriteDataIdempotently",
            Action::CreateTopic => "kafka-cluster:CreateTopic",
            Action::DescribeTopic => "kafka-cluster:DescribeTopic",
            Action::AlterTopic => "kafka-cluster:AlterTopic",
            Action::DeleteTopic => "kafka-cluster:DeleteTopic",
            Action::DescribeTopicDynamicConfiguration => {
                "kafka-cluster:DescribeTopicDynamicConfiguration"
            }
            Action::AlterTopicDynamicConfiguration => {
                "kafka-cluster:AlterTopicDynamicConfiguration"
            }
            Action::ReadData => "kafka-cluster:ReadData",
            Action::WriteData => "kafka-cluster:WriteData",
            Action::DescribeGroup => "kafka-cluster:DescribeGroup",
            Action::AlterGroup => "kafka-cluster:AlterGroup",
            Action::DeleteGroup => "kafka-cluster:DeleteGroup",
            Action::DescribeTransactionalId => "kafka-cluster:DescribeTransactionalId",
            Action::AlterTransactionalId => "kafka-cluster:AlterTransactionalId",
        }
    }
}

/// A resource an action applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    Cluster,
    Topic(String),
    Group(String),
    TransactionalId(String),
}

/// Builds MSK-format ARNs for this cluster.
#[derive(Debug, Clone)]
pub struct Arns {
    prefix: String,
    cluster_path: String,
    account: String,
}

impl Arns {
    pub fn new(region: &str, account: &str, cluster_name: &str, cluster_uuid: &str) -> Self {
        Arns {
            prefix: format!("arn:aws:kafka:{region}:{account}:"),
            cluster_path: format!("{cluster_name}/{cluster_uuid}"),
            account: account.to_string(),
        }
    }

    /// The account the cluster belongs to.
    pub fn account(&self) -> &str {
        &self.account
    }

    pub fn arn(&self, resource: &Resource) -> String {
        let (kind, name) = match resource {
            Resource::Cluster => return format!("{}cluster/{}", self.prefix, self.cluster_path),
            Resource::Topic(t) => ("topic", t),
            Resource::Group(g) => ("group", g),
            Resource::TransactionalId(t) => ("transactional-id", t),
        };
        format!("{}{kind}/{}/{name}", self.prefix, self.cluster_path)
    }
}

/// Authentication settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The region IAM tokens must be signed for.
    pub region: String,
    /// Host names an AWS_MSK_IAM payload may be signed for (the advertised hosts).
    pub hosts: Vec<String>,
    /// Session lifetime for SCRAM and PLAIN (KIP-368 re-authentication); None: unlimited.
    pub max_session: Option<Duration>,
}

/// The shared authentication and authorization service.
#[derive(Debug)]
pub struct Auth {
    pub store: Arc<AuthStore>,
    /// Tenants (accounts) and their serverless clusters.
    pub tenants: Arc<tenants::TenantStore>,
    /// The ARNs of the default cluster (tenant clusters have their own, [`tenants::ClusterRecord::arns`]).
    pub arns: Arns,
    pub config: AuthConfig,
    /// Keys the fake salts of unknown SCRAM users (so their existence is not revealed).
    dummy_salt_key: [u8; 32],
}

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub mechanism: Mechanism,
    /// The access key used (IAM mechanisms).
    pub access_key_id: Option<String>,
}

impl Auth {
    pub fn new(store: Arc<AuthStore>, arns: Arns, config: AuthConfig) -> Self {
        Auth {
            tenants: Arc::new(tenants::TenantStore::new(store.meta())),
            store,
            arns,
            config,
            dummy_salt_key: rand::random(),
        }
    }

    /// Evaluates the principal's policies for `action` on `resource`.
    pub fn decide(&self, principal: &str, action: Action, resource: &Resource) -> Decision {
        self.decide_in(&self.arns, principal, action, resource)
    }

    /// Decides `action` on `resource` of the cluster `arns` names. An account's root
    /// principal may do everything inside its own account (as on AWS) while the account is
    /// active; everyone else needs a policy.
    pub fn decide_in(
        &self,
        arns: &Arns,
        principal: &str,
        action: Action,
        resource: &Resource,
    ) -> Decision {
        let arn = arns.arn(resource);
        if let Some(account) = tenants::account_of(principal) {
            if principal == tenants::root_principal(account)
                && arns.account() == account
                && self.tenants.active(account)
            {
                return Decision::Allow;
            }
        }
        let policies = self.store.policies(principal);
        policy::evaluate(policies.iter().map(|p| p.as_ref()), action.name(), &arn)
    }
}

/// What one SaslAuthenticate step produced.
#[derive(Debug)]
pub enum Step {
    /// Send these bytes and wait for the client's next message.
    Continue(Vec<u8>),
    /// Authenticated: send `reply`; the session ends at `expires_at` (if any).
    Done {
        principal: Principal,
        reply: Vec<u8>,
        expires_at: Option<SystemTime>,
    },
    /// Refused. `reason` is for the audit log only.
    Failed { reason: String },
}

#[derive(Debug)]
enum SaslState {
    Start,
    ScramFinal {
        server: ScramServer,
        user: String,
        known: bool,
    },
    /// OAUTHBEARER failure sent as an error challenge; the client's `\x01` ends it.
    OauthFailed {
        reason: String,
    },
    Finished,
}

/// One SASL exchange on one connection.
#[derive(Debug)]
pub struct Sasl {
    mechanism: Mechanism,
    state: SaslState,
    /// The host the connection was accepted for (AWS_MSK_IAM signs it).
    request_id: String,
}

impl Sasl {
    pub fn new(mechanism: Mechanism, request_id: String) -> Self {
        Sasl {
            mechanism,
            state: SaslState::Start,
            request_id,
        }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Consumes one client message.
    pub fn step(&mut self, auth: &Auth, msg: &[u8]) -> Step {
        let state = std::mem::replace(&mut self.state, SaslState::Finished);
        match (state, self.mechanism) {
            (SaslState::Start, Mechanism::OauthBearer) => match self.oauth(auth, msg) {
                Ok(done) => done,
                Err(reason) => {
                    self.state = SaslState::OauthFailed { reason };
                    Step::Continue(br#"{"status":"invalid_token"}"#.to_vec())
                }
            },
            (SaslState::OauthFailed { reason }, _) => Step::Failed { reason },
            (SaslState::Start, Mechanism::AwsMskIam) => match self.msk_iam(auth, msg) {
                Ok(done) => done,
                Err(reason) => Step::Failed { reason },
            },
            (SaslState::Start, Mechanism::Plain) => self.plain(auth, msg),
            (SaslState::Start, Mechanism::ScramSha256 | Mechanism::ScramSha512) => {
                self.scram_first(auth, msg)
            }
            (
                SaslState::ScramFinal {
                    server,
                    user,
                    known,
                },
                _,
            ) => match server.finish(msg) {
                Ok(reply) if known => Step::Done {
                    principal: Principal {
                        name: user,
                        mechanism: self.mechanism,
                        access_key_id: None,
                    },
                    reply,
                    expires_at: auth.config.max_session.map(|d| SystemTime::now() + d),
                },
                Ok(_) => Step::Failed {
                    reason: format!("unknown user {user}"),
                },
                Err(e) => Step::Failed {
                    reason: format!("user {user}: {e}"),
                },
            },
            (SaslState::Finished, _) => Step::Failed {
                reason: "SASL exchange already finished".into(),
            },
        }
    }

    fn verify_token(
        &self,
        auth: &Auth,
        req: &SignedRequest,
    ) -> Result<(Principal, SystemTime), TokenError> {
        let claims = req.claims(SystemTime::now())?;
        if claims.region != auth.config.region {
            return Err(TokenError::WrongRegion {
                got: claims.region,
                want: auth.config.region.clone(),
            });
        }
        let (principal, secret) = auth
            .store
            .secret_for(&claims.access_key_id)
            .ok_or_else(|| TokenError::UnknownKey(claims.access_key_id.clone()))?;
        req.verify_signature(&claims, &secret)?;
        Ok((
            Principal {
                name: principal,
                mechanism: self.mechanism,
                access_key_id: Some(claims.access_key_id),
            },
            claims.expires_at,
        ))
    }

    fn oauth(&mut self, auth: &Auth, msg: &[u8]) -> Result<Step, String> {
        let token = parse_oauth_message(msg)?;
        let req = SignedRequest::from_oauth_token(&token).map_err(|e| e.to_string())?;
        if req.host != iam::oauth_host(&auth.config.region) {
            return Err(TokenError::WrongHost(req.host.clone()).to_string());
        }
        let (principal, expires_at) = self.verify_token(auth, &req).map_err(|e| e.to_string())?;
        Ok(Step::Done {
            principal,
            reply: Vec::new(),
            expires_at: Some(expires_at),
        })
    }

    fn msk_iam(&mut self, auth: &Auth, msg: &[u8]) -> Result<Step, String> {
        let req = SignedRequest::from_msk_iam_json(msg).map_err(|e| e.to_string())?;
        if !auth
            .config
            .hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&req.host))
        {
            return Err(TokenError::WrongHost(req.host.clone()).to_string());
        }
        let (principal, expires_at) = self.verify_token(auth, &req).map_err(|e| e.to_string())?;
        let reply = serde_json::json!({"version": "2020_10_22", "request-id": self.request_id});
        Ok(Step::Done {
            principal,
            reply: reply.to_string().into_bytes(),
            expires_at: Some(expires_at),
        })
    }

    fn plain(&mut self, auth: &Auth, msg: &[u8]) -> Step {
        let mut parts = msg.split(|&b| b == 0);
        let (Some(authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Step::Failed {
                reason: "malformed PLAIN message".into(),
            };
        };
        let (Ok(authzid), Ok(user), Ok(password)) = (
            std::str::from_utf8(authzid),
            std::str::from_utf8(user),
            std::str::from_utf8(password),
        ) else {
            return Step::Failed {
                reason: "PLAIN message is not UTF-8".into(),
            };
        };
        if !authzid.is_empty() && authzid != user {
            return Step::Failed {
                reason: format!("user {user} may not act as {authzid}"),
            };
        }
        let ok = auth
            .store
            .scram_credentials(user)
            .iter()
            .any(|c| c.matches_password(password));
        if ok {
            Step::Done {
                principal: Principal {
                    name: user.to_string(),
                    mechanism: Mechanism::Plain,
                    access_key_id: None,
                },
                reply: Vec::new(),
                expires_at: auth.config.max_session.map(|d| SystemTime::now() + d),
            }
        } else {
            Step::Failed {
                reason: format!("user {user}: wrong password or unknown user"),
            }
        }
    }

    fn scram_first(&mut self, auth: &Auth, msg: &[u8]) -> Step {
        let mech = match self.mechanism {
            Mechanism::ScramSha256 => ScramMechanism::Sha256,
            _ => ScramMechanism::Sha512,
        };
        let first = match scram::parse_client_first(msg) {
            Ok(f) => f,
            Err(e) => {
                return Step::Failed {
                    reason: e.to_string(),
                }
            }
        };
        let (credential, known) = match auth.store.scram_credential(&first.username, mech) {
            Some(c) => (c, true),
            None => (dummy_credential(auth, &first.username, mech), false),
        };
        let (server, reply) = ScramServer::start(&first, credential);
        self.state = SaslState::ScramFinal {
            server,
            user: first.username,
            known,
        };
        Step::Continue(reply)
    }
}

/// A credential nobody can match, with a salt stable per user name, so an unknown user
/// goes through the same exchange as a known one.
fn dummy_credential(auth: &Auth, user: &str, mech: ScramMechanism) -> ScramCredential {
    use hmac::{Hmac, Mac};
    let salt = match <Hmac<sha2::Sha256> as Mac>::new_from_slice(&auth.dummy_salt_key) {
        Ok(mut mac) => {
            mac.update(user.as_bytes());
            mac.finalize().into_bytes()[..24].to_vec()
        }
        Err(_) => vec![0; 24],
    };
    let random_key: [u8; 32] = rand::random();
    let b64 = base64::engine::general_purpose::STANDARD;
    let key_len = match mech {
        ScramMechanism::Sha256 => 32,
        ScramMechanism::Sha512 => 64,
    };
    let key: Vec<u8> = random_key.iter().cycle().take(key_len).copied().collect();
    ScramCredential {
        mechanism: mech,
        salt: b64.encode(salt),
        iterations: scram::DEFAULT_ITERATIONS,
        stored_key: b64.encode(&key),
        server_key: b64.encode(&key),
    }
}

/// Extracts the bearer token of an RFC 7628 client message: `gs2-header \x01 kvpairs \x01`.
pub fn parse_oauth_message(msg: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(msg).map_err(|_| "OAUTHBEARER message is not UTF-8")?;
    let (gs2, rest) = text
        .split_once('\x01')
        .ok_or("OAUTHBEARER message has no key/value section")?;
    if !(gs2.starts_with("n,") || gs2.starts_with("y,")) {
        return Err("OAUTHBEARER channel binding is not supported".into());
    }
    for kv in rest.split('\x01') {
        if let Some(value) = kv.strip_prefix("auth=") {
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or("auth value is not a Bearer token")?;
            return Ok(token.trim().to_string());
        }
    }
    Err("OAUTHBEARER message has no auth=Bearer token".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn oauth_message_parsing() {
        assert_eq!(
            parse_oauth_message(b"n,,\x01auth=Bearer abc.def\x01\x01").unwrap(),
            "abc.def"
        );
        assert_eq!(
            parse_oauth_message(b"n,a=user,\x01host=x\x01auth=Bearer t\x01\x01").unwrap(),
            "t"
        );
        assert!(parse_oauth_message(b"n,,\x01\x01").is_err());
        assert!(parse_oauth_message(b"p=x,,\x01auth=Bearer t\x01\x01").is_err());
        assert!(parse_oauth_message(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn arns_have_msk_format() {
        let arns = Arns::new("us-east-1", "123456789012", "weir", "abc-123");
        assert_eq!(
            arns.arn(&Resource::Cluster),
            "arn:aws:kafka:us-east-1:123456789012:cluster/weir/abc-123"
        );
        assert_eq!(
            arns.arn(&Resource::Topic("orders".into())),
            "arn:aws:kafka:us-east-1:123456789012:topic/weir/abc-123/orders"
        );
        assert_eq!(
            arns.arn(&Resource::TransactionalId("tx".into())),
            "arn:aws:kafka:us-east-1:123456789012:transactional-id/weir/abc-123/tx"
        );
    }
}
