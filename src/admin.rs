//! The admin HTTP API of a running `weir serve` (credentials, SCRAM users, policies) and the
//! `weir auth` commands that call it.
//!
//! The API listens on 127.0.0.1:9644 by default. Bound to anything but loopback it requires a
//! bearer token (`--admin-token`); with a token set, every request must carry it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle_eq::constant_time_eq;
use weir_auth::scram::ScramMechanism;
use weir_auth::{Auth, AuthError, PolicyDocument};

mod subtle_eq {
    /// Compares two byte strings in time independent of where they differ.
    pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[derive(Clone)]
struct AdminState {
    auth: Arc<Auth>,
    token: Option<String>,
    metrics: Arc<prometheus_client::registry::Registry>,
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = match &e {
            AuthError::Invalid(_) => StatusCode::BAD_REQUEST,
            AuthError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult = std::result::Result<Json<Value>, ApiError>;

fn authorize(state: &AdminState, headers: &HeaderMap) -> std::result::Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token".into(),
        ))
    }
}

fn to_value<T: serde::Serialize>(v: T) -> ApiResult {
    serde_json::to_value(v)
        .map(Json)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[derive(Deserialize)]
struct CreateKey {
    principal: String,
}

#[derive(Deserialize)]
struct KeyFilter {
    principal: Option<String>,
}

#[derive(Deserialize)]
struct SetScram {
    password: String,
    #[serde(default)]
    mechanisms: Vec<String>,
    iterations: Option<u32>,
}

async fn create_key(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Json(body): Json<CreateKey>,
) -> ApiResult {
    authorize(&s, &headers)?;
    let key = s.auth.store.create_key(&body.principal).await?;
    tracing::info!(target: "weir::audit", principal = %key.principal, access_key_id = %key.access_key_id, "access key created");
    to_value(key)
}

async fn list_keys(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Query(q): Query<KeyFilter>,
) -> ApiResult {
    authorize(&s, &headers)?;
    to_value(s.auth.store.list_keys(q.principal.as_deref()))
}

async fn rotate_key(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&s, &headers)?;
    let key = s.auth.store.rotate_key(&id).await?;
    tracing::info!(target: "weir::audit", old = %id, new = %key.access_key_id, "access key rotated");
    to_value(key)
}

async fn revoke_key(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&s, &headers)?;
    let info = s.auth.store.revoke_key(&id).await?;
    tracing::info!(target: "weir::audit", access_key_id = %id, "access key revoked");
    to_value(info)
}

async fn set_scram(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(user): Path<String>,
    Json(body): Json<SetScram>,
) -> ApiResult {
    authorize(&s, &headers)?;
    let mechanisms = if body.mechanisms.is_empty() {
        vec![ScramMechanism::Sha256, ScramMechanism::Sha512]
    } else {
        body.mechanisms
            .iter()
            .map(|m| {
                ScramMechanism::from_name(&m.to_ascii_uppercase()).ok_or_else(|| {
                    ApiError(
                        StatusCode::BAD_REQUEST,
                        format!("unknown mechanism {m}: SCRAM-SHA-256 or SCRAM-SHA-512"),
                    )
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?
    };
    let info = s
        .auth
        .store
        .set_scram(&user, &body.password, &mechanisms, body.iterations)
        .await?;
    tracing::info!(target: "weir::audit", user = %user, "SCRAM credentials set");
    to_value(info)
}

async fn list_scram(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers)?;
    to_value(s.auth.store.list_scram())
}

async fn delete_scram(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> ApiResult {
    authorize(&s, &headers)?;
    s.auth.store.delete_scram(&user).await?;
    tracing::info!(target: "weir::audit", user = %user, "SCRAM user deleted");
    to_value(json!({"deleted": user}))
}

async fn put_policy(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((principal, name)): Path<(String, String)>,
    body: String,
) -> ApiResult {
    authorize(&s, &headers)?;
    let doc = PolicyDocument::parse(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    s.auth.store.put_policy(&principal, &name, doc).await?;
    tracing::info!(target: "weir::audit", principal = %principal, policy = %name, "policy attached");
    to_value(json!({"principal": principal, "policy": name}))
}

async fn list_policies(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(principal): Path<String>,
) -> ApiResult {
    authorize(&s, &headers)?;
    to_value(s.auth.store.list_policies(&principal))
}

async fn delete_policy(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path((principal, name)): Path<(String, String)>,
) -> ApiResult {
    authorize(&s, &headers)?;
    s.auth.store.delete_policy(&principal, &name).await?;
    tracing::info!(target: "weir::audit", principal = %principal, policy = %name, "policy detached");
    to_value(json!({"deleted": name}))
}

async fn principals(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers)?;
    to_value(s.auth.store.principals())
}

async fn cluster(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers)?;
    to_value(json!({
        "cluster_arn": s.auth.arns.arn(&weir_auth::Resource::Cluster),
        "topic_arn_prefix": s.auth.arns.arn(&weir_auth::Resource::Topic(String::new())),
        "group_arn_prefix": s.auth.arns.arn(&weir_auth::Resource::Group(String::new())),
        "region": s.auth.config.region,
    }))
}

/// Prometheus metrics (OpenMetrics text format).
async fn metrics(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return e.into_response();
    }
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &s.metrics) {
        return ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    auth: Arc<Auth>,
    token: Option<String>,
    metrics_registry: Arc<prometheus_client::registry::Registry>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let state = AdminState {
        auth,
        token,
        metrics: metrics_registry,
    };
    let app = Router::new()
        .route("/v1/keys", post(create_key).get(list_keys))
        .route("/v1/keys/{id}/rotate", post(rotate_key))
        .route("/v1/keys/{id}/revoke", post(revoke_key))
        .route("/v1/scram", get(list_scram))
        .route("/v1/scram/{user}", put(set_scram).delete(delete_scram))
        .route("/v1/principals", get(principals))
        .route("/v1/policies/{principal}", get(list_policies))
        .route(
            "/v1/policies/{principal}/{name}",
            put(put_policy).delete(delete_policy),
        )
        .route("/v1/cluster", get(cluster))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .with_state(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin API stopped");
    }
}

/// Serves only `/metrics` (no token: bind it to loopback or a private network) on
/// `listener` until `shutdown`; used by processes without the admin API (`weir storage`).
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Arc<prometheus_client::registry::Registry>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut body = String::new();
                if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &registry) {
                    return ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                        .into_response();
                }
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    body,
                )
                    .into_response()
            }
        }),
    );
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "metrics endpoint stopped");
    }
}

/// Checks the admin listen address against the token rule.
pub fn check_admin_bind(addr: SocketAddr, token: Option<&str>) -> Result<()> {
    if !addr.ip().is_loopback() && token.is_none_or(str::is_empty) {
        bail!("the admin API on {addr} (not loopback) requires --admin-token");
    }
    Ok(())
}

// -- weir auth ------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct AuthArgs {
    /// URL of a running weir's admin API.
    #[arg(
        long,
        env = "WEIR_ADMIN_URL",
        default_value = "http://127.0.0.1:9644",
        global = true
    )]
    admin: String,
    /// Bearer token of the admin API, if it has one.
    #[arg(long, env = "WEIR_ADMIN_TOKEN", global = true)]
    admin_token: Option<String>,
    #[command(subcommand)]
    command: AuthCommand,
}

#[derive(Subcommand, Debug)]
enum AuthCommand {
    /// Access keys for the IAM mechanisms (OAUTHBEARER with an MSK IAM token, AWS_MSK_IAM).
    #[command(subcommand)]
    Key(KeyCommand),
    /// SCRAM-SHA-256/512 users (and PLAIN, which checks the same credentials).
    #[command(subcommand)]
    Scram(ScramCommand),
    /// IAM policy documents attached to principals.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Every principal that has keys, SCRAM credentials or policies.
    Principals,
    /// The cluster's ARNs, for writing policies.
    Cluster,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Issues an access key pair for a principal (the secret is shown only now).
    Create {
        #[arg(long)]
        principal: String,
    },
    /// Lists access keys (never their secrets).
    List {
        #[arg(long)]
        principal: Option<String>,
    },
    /// Issues a new key for the same principal and revokes the old one.
    Rotate { access_key_id: String },
    /// Revokes a key: it no longer authenticates new connections.
    Revoke { access_key_id: String },
}

#[derive(Subcommand, Debug)]
enum ScramCommand {
    /// Sets a user's password (salted credentials are stored, never the password).
    Set {
        user: String,
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// SCRAM-SHA-256 or SCRAM-SHA-512 [default: both].
        #[arg(long)]
        mechanism: Vec<String>,
        /// PBKDF2 iterations [default: 4096].
        #[arg(long)]
        iterations: Option<u32>,
    },
    List,
    Delete {
        user: String,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Attaches (or replaces) a named policy document on a principal.
    Put {
        principal: String,
        name: String,
        /// Policy JSON file ("-" for standard input).
        #[arg(long)]
        file: String,
    },
    /// Shows a principal's policies.
    List { principal: String },
    /// Detaches a policy.
    Delete { principal: String, name: String },
}

fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<Value> {
        let url = format!("{}{}", self.base.trim_end_matches('/'), path);
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(body.unwrap_or_default())
            .context("building the request")?;
        let mut resp = self
            .agent
            .run(req)
            .with_context(|| format!("calling the admin API at {url} (is weir serve running?)"))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .context("reading the admin API response")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            let msg = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            bail!("{status}: {msg}");
        }
        Ok(value)
    }
}

pub fn run_auth(args: AuthArgs) -> Result<()> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .new_agent();
    let client = Client {
        base: args.admin,
        token: args.admin_token,
        agent,
    };
    let out = match args.command {
        AuthCommand::Key(KeyCommand::Create { principal }) => client.call(
            "POST",
            "/v1/keys",
            Some(json!({ "principal": principal }).to_string()),
        )?,
        AuthCommand::Key(KeyCommand::List { principal }) => {
            let q = principal
                .map(|p| format!("?principal={}", seg(&p)))
                .unwrap_or_default();
            client.call("GET", &format!("/v1/keys{q}"), None)?
        }
        AuthCommand::Key(KeyCommand::Rotate { access_key_id }) => client.call(
            "POST",
            &format!("/v1/keys/{}/rotate", seg(&access_key_id)),
            None,
        )?,
        AuthCommand::Key(KeyCommand::Revoke { access_key_id }) => client.call(
            "POST",
            &format!("/v1/keys/{}/revoke", seg(&access_key_id)),
            None,
        )?,
        AuthCommand::Scram(ScramCommand::Set {
            user,
            password,
            password_stdin,
            mechanism,
            iterations,
        }) => {
            let password = match (password, password_stdin) {
                (Some(p), _) => p,
                (None, true) => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the password from standard input")?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
                (None, false) => bail!("give --password or --password-stdin"),
            };
            client.call(
                "PUT",
                &format!("/v1/scram/{}", seg(&user)),
                Some(
                    json!({"password": password, "mechanisms": mechanism, "iterations": iterations})
                        .to_string(),
                ),
            )?
        }
        AuthCommand::Scram(ScramCommand::List) => client.call("GET", "/v1/scram", None)?,
        AuthCommand::Scram(ScramCommand::Delete { user }) => {
            client.call("DELETE", &format!("/v1/scram/{}", seg(&user)), None)?
        }
        AuthCommand::Policy(PolicyCommand::Put {
            principal,
            name,
            file,
        }) => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("reading the policy from standard input")?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading policy file {file}"))?
            };
            client.call(
                "PUT",
                &format!("/v1/policies/{}/{}", seg(&principal), seg(&name)),
                Some(text),
            )?
        }
        AuthCommand::Policy(PolicyCommand::List { principal }) => {
            client.call("GET", &format!("/v1/policies/{}", seg(&principal)), None)?
        }
        AuthCommand::Policy(PolicyCommand::Delete { principal, name }) => client.call(
            "DELETE",
            &format!("/v1/policies/{}/{}", seg(&principal), seg(&name)),
            None,
        )?,
        AuthCommand::Principals => client.call("GET", "/v1/principals", None)?,
        AuthCommand::Cluster => client.call("GET", "/v1/cluster", None)?,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
