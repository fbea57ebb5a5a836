//! The admin HTTP API of a running gateway (credentials, SCRAM users, policies, the cluster's
//! ARNs, Prometheus metrics), and the metrics-only endpoint of processes without it (storage
//! nodes, the scaler). The `weir auth` commands that call it are CLI wiring in `src/`.
//!
//! The API listens on 127.0.0.1:9644 by default. Bound to anything but loopback it requires a
//! bearer token (`--admin-token`); with a token set, every request must carry it.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Result};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use subtle_eq::constant_time_eq;
use weir_auth::scram::ScramMechanism;
use weir_auth::tenants::TenantState;
use weir_auth::{Auth, AuthError, PolicyDocument};

mod msk;
pub use msk::ClusterEndpoints;

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
    /// Where tenant clusters are reached (None: this gateway serves none).
    clusters: Option<ClusterEndpoints>,
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
            AuthError::Conflict(_) => StatusCode::CONFLICT,
            AuthError::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
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

#[derive(Deserialize)]
struct CreateTenant {
    name: String,
}

fn tenant_json(s: &AdminState, t: &weir_auth::tenants::Tenant) -> Value {
    json!({
        "account_id": t.account_id,
        "name": t.name,
        "state": t.state,
        "created_ms": t.created_ms,
        "max_clusters": t.max_clusters,
        "root_principal": weir_auth::tenants::root_principal(&t.account_id),
        "clusters": s.auth.tenants.clusters(&t.account_id).len(),
    })
}

async fn create_tenant(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Json(body): Json<CreateTenant>,
) -> ApiResult {
    authorize(&s, &headers)?;
    let tenant = s.auth.tenants.create_tenant(&body.name).await?;
    let root = weir_auth::tenants::root_principal(&tenant.account_id);
    let key = match s.auth.store.create_key(&root).await {
        Ok(k) => k,
        Err(e) => {
            // No tenant without its root key.
            let _ = s.auth.tenants.delete_tenant(&tenant.account_id).await;
            return Err(e.into());
        }
    };
    tracing::info!(target: "weir::audit", account = %tenant.account_id, name = %tenant.name,
        access_key_id = %key.access_key_id, "tenant created");
    let mut v = tenant_json(&s, &tenant);
    v["access_key_id"] = json!(key.access_key_id);
    v["secret_access_key"] = json!(key.secret_access_key);
    Ok(Json(v))
}

async fn list_tenants(State(s): State<AdminState>, headers: HeaderMap) -> ApiResult {
    authorize(&s, &headers)?;
    let list: Vec<Value> = s
        .auth
        .tenants
        .tenants()
        .iter()
        .map(|t| tenant_json(&s, t))
        .collect();
    Ok(Json(json!({ "tenants": list })))
}

fn tenant_of(
    s: &AdminState,
    account: &str,
) -> std::result::Result<weir_auth::tenants::Tenant, ApiError> {
    s.auth
        .tenants
        .tenant(account)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no tenant {account}")))
}

async fn describe_tenant(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(account): Path<String>,
) -> ApiResult {
    authorize(&s, &headers)?;
    let t = tenant_of(&s, &account)?;
    let mut v = tenant_json(&s, &t);
    let clusters: Vec<Value> = s
        .auth
        .tenants
        .clusters(&account)
        .iter()
        .map(|c| json!({"arn": c.arn, "name": c.name, "state": c.state.name()}))
        .collect();
    v["cluster_list"] = json!(clusters);
    let root = weir_auth::tenants::root_principal(&account);
    v["keys"] = serde_json::to_value(s.auth.store.list_keys(Some(&root))).unwrap_or_default();
    Ok(Json(v))
}

async fn set_tenant_state(s: &AdminState, account: &str, state: TenantState) -> ApiResult {
    tenant_of(s, account)?;
    let t = s.auth.tenants.set_tenant_state(account, state).await?;
    tracing::info!(target: "weir::audit", account = %account, state = ?state, "tenant state changed");
    Ok(Json(tenant_json(s, &t)))
}

async fn suspend_tenant(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(account): Path<String>,
) -> ApiResult {
    authorize(&s, &headers)?;
    set_tenant_state(&s, &account, TenantState::Suspended).await
}

async fn resume_tenant(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(account): Path<String>,
) -> ApiResult {
    authorize(&s, &headers)?;
    set_tenant_state(&s, &account, TenantState::Active).await
}

async fn delete_tenant(
    State(s): State<AdminState>,
    headers: HeaderMap,
    Path(account): Path<String>,
) -> ApiResult {
    authorize(&s, &headers)?;
    tenant_of(&s, &account)?;
    let t = s.auth.tenants.delete_tenant(&account).await?;
    // Its keys go with it: a deleted account authenticates nowhere.
    let prefix = format!("arn:aws:iam::{account}:");
    for key in s.auth.store.list_keys(None) {
        if key.principal.starts_with(&prefix) && key.status == weir_auth::store::KeyStatus::Active {
            s.auth.store.revoke_key(&key.access_key_id).await?;
        }
    }
    tracing::info!(target: "weir::audit", account = %account, "tenant deleted");
    Ok(Json(json!({"deleted": t.account_id, "name": t.name})))
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
    clusters: Option<ClusterEndpoints>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let state = AdminState {
        auth,
        token,
        metrics: metrics_registry,
        clusters,
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
        .route("/v1/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/v1/tenants/{account}",
            get(describe_tenant).delete(delete_tenant),
        )
        .route("/v1/tenants/{account}/suspend", post(suspend_tenant))
        .route("/v1/tenants/{account}/resume", post(resume_tenant))
        .fallback(
            |State(s): State<AdminState>,
             method: axum::http::Method,
             uri: axum::http::Uri,
             headers: HeaderMap,
             body: axum::body::Bytes| msk::handle(s, method, uri, headers, body),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_loopback_admin_api_needs_a_token() {
        let loopback: SocketAddr = ([127, 0, 0, 1], 9644).into();
        let any: SocketAddr = ([0, 0, 0, 0], 9644).into();
        assert!(check_admin_bind(loopback, None).is_ok());
        assert!(check_admin_bind(any, None).is_err());
        assert!(check_admin_bind(any, Some("")).is_err());
        assert!(check_admin_bind(any, Some("secret")).is_ok());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
