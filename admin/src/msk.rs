//! The Amazon MSK control plane (REST, `rest-json`, SigV4 service `kafka`) as the AWS SDKs
//! and CLI call it: CreateClusterV2 (Serverless), ListClustersV2, DescribeClusterV2,
//! ListClusters, DescribeCluster, GetBootstrapBrokers, DeleteCluster, TagResource,
//! UntagResource and ListTagsForResource. Every request is signed with a tenant's access key
//! and sees only that tenant's clusters: another account's ARN is a NotFoundException.
//! Errors carry `x-amzn-ErrorType` and `{"message"}` so SDKs raise the modelled exception.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};
use weir_auth::tenants::{self, ClusterRecord, ClusterState};
use weir_auth::{AuthError, Decision};

use crate::AdminState;

/// Where clients reach tenant clusters: `host:(first_port + port index)`.
#[derive(Debug, Clone)]
pub struct ClusterEndpoints {
    pub advertised_host: String,
    pub first_port: u16,
    pub ports: u32,
}

pub(crate) struct MskError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn fail(status: StatusCode, code: &'static str, message: impl Into<String>) -> MskError {
    MskError {
        status,
        code,
        message: message.into(),
    }
}

fn bad_request(message: impl Into<String>) -> MskError {
    fail(StatusCode::BAD_REQUEST, "BadRequestException", message)
}

fn not_found(arn: &str) -> MskError {
    fail(
        StatusCode::NOT_FOUND,
        "NotFoundException",
        format!("The cluster {arn} does not exist"),
    )
}

impl From<AuthError> for MskError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Invalid(m) => bad_request(m),
            AuthError::NotFound(m) => fail(StatusCode::NOT_FOUND, "NotFoundException", m),
            AuthError::Conflict(m) => fail(StatusCode::CONFLICT, "ConflictException", m),
            AuthError::Limit(m) => {
                fail(StatusCode::TOO_MANY_REQUESTS, "TooManyRequestsException", m)
            }
            other => {
                tracing::error!(error = %other, "control-plane request failed");
                fail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerErrorException",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for MskError {
    fn into_response(self) -> Response {
        let mut body = json!({"message": self.message});
        if self.code == "BadRequestException" {
            body["invalidParameter"] = json!("request");
        }
        (
            self.status,
            [("x-amzn-ErrorType", self.code)],
            axum::Json(body),
        )
            .into_response()
    }
}

type MskResult = std::result::Result<Response, MskError>;

fn ok(v: Value) -> MskResult {
    Ok((StatusCode::OK, axum::Json(v)).into_response())
}

/// The caller: its account and principal, after the signature checked out.
struct Caller {
    account: String,
    principal: String,
}

fn authenticate(
    s: &AdminState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> std::result::Result<Caller, MskError> {
    let pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let signer = weir_auth::sigv4::verify(
        &s.auth.store,
        "kafka",
        method.as_str(),
        uri.path(),
        uri.query().unwrap_or(""),
        &pairs,
        body,
        SystemTime::now(),
    )
    .map_err(|e| {
        tracing::info!(target: "weir::audit", reason = %e.message, "control-plane request refused");
        fail(StatusCode::UNAUTHORIZED, "UnauthorizedException", e.message)
    })?;
    let Some(account) = tenants::account_of(&signer.principal) else {
        return Err(fail(
            StatusCode::FORBIDDEN,
            "ForbiddenException",
            "this key does not belong to an account",
        ));
    };
    if !s.auth.tenants.active(account) {
        return Err(fail(
            StatusCode::FORBIDDEN,
            "ForbiddenException",
            "the account is suspended or does not exist",
        ));
    }
    Ok(Caller {
        account: account.to_string(),
        principal: signer.principal.clone(),
    })
}

/// Root may do everything in its account; other principals need `kafka:<Operation>` on the
/// resource (or `*`).
fn allow(s: &AdminState, caller: &Caller, operation: &str, resource: &str) -> Result<(), MskError> {
    if caller.principal == tenants::root_principal(&caller.account) {
        return Ok(());
    }
    let policies = s.auth.store.policies(&caller.principal);
    let action = format!("kafka:{operation}");
    match weir_auth::policy::evaluate(policies.iter().map(|p| p.as_ref()), &action, resource) {
        Decision::Allow => Ok(()),
        _ => Err(fail(
            StatusCode::FORBIDDEN,
            "ForbiddenException",
            format!(
                "User: {} is not authorized to perform: {action} on resource: {resource}",
                caller.principal
            ),
        )),
    }
}

fn iso8601(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn bootstrap(s: &AdminState, c: &ClusterRecord) -> Option<String> {
    let e = s.clusters.as_ref()?;
    let port = u32::from(e.first_port) + c.port_index;
    Some(format!("{}:{port}", e.advertised_host))
}

fn v2_info(c: &ClusterRecord) -> Value {
    json!({
        "clusterArn": c.arn,
        "clusterName": c.name,
        "clusterType": "SERVERLESS",
        "state": c.state.name(),
        "creationTime": iso8601(c.created_ms),
        "currentVersion": c.current_version,
        "tags": c.tags,
        "serverless": {
            "vpcConfigs": c.vpc_configs,
            "clientAuthentication": {"sasl": {"iam": {"enabled": c.iam_enabled}}},
        },
    })
}

fn v1_info(c: &ClusterRecord) -> Value {
    json!({
        "clusterArn": c.arn,
        "clusterName": c.name,
        "state": c.state.name(),
        "creationTime": iso8601(c.created_ms),
        "currentVersion": c.current_version,
        "tags": c.tags,
        "clientAuthentication": {"sasl": {"iam": {"enabled": c.iam_enabled}}},
    })
}

fn parse_body(body: &[u8]) -> std::result::Result<Value, MskError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| bad_request(format!("the body is not JSON: {e}")))
}

fn tags_of(v: &Value) -> std::result::Result<BTreeMap<String, String>, MskError> {
    match v {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(bad_request(format!("tag {k}: the value must be a string"))),
            })
            .collect(),
        _ => Err(bad_request("tags must be an object")),
    }
}

fn query_params(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let d = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (d(k), d(v))
        })
        .collect()
}

fn decode_segment(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Serves every MSK route (the admin router's fallback).
pub(crate) async fn handle(
    s: AdminState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match route(&s, &method, &uri, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route(
    s: &AdminState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> MskResult {
    let segments: Vec<String> = uri
        .path()
        .trim_matches('/')
        .split('/')
        .map(decode_segment)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let known = matches!(
        segments[..],
        ["api", "v2", "clusters"]
            | ["api", "v2", "clusters", _]
            | ["v1", "clusters"]
            | ["v1", "clusters", _]
            | ["v1", "clusters", _, "bootstrap-brokers"]
            | ["v1", "tags", _]
    );
    if !known {
        return Err(fail(
            StatusCode::NOT_FOUND,
            "NotFoundException",
            format!("no such operation: {method} {}", uri.path()),
        ));
    }
    let caller = authenticate(s, method, uri, headers, body)?;
    let q = query_params(uri);
    let m = method.clone();
    match (m, &segments[..]) {
        (Method::POST, ["api", "v2", "clusters"]) => create_cluster(s, &caller, body).await,
        (Method::GET, ["api", "v2", "clusters"]) => list_clusters(s, &caller, &q, true),
        (Method::GET, ["v1", "clusters"]) => list_clusters(s, &caller, &q, false),
        (Method::GET, ["api", "v2", "clusters", arn]) => {
            let c = find(s, &caller, arn, "DescribeClusterV2")?;
            ok(json!({"clusterInfo": v2_info(&c)}))
        }
        (Method::GET, ["v1", "clusters", arn]) => {
            let c = find(s, &caller, arn, "DescribeCluster")?;
            ok(json!({"clusterInfo": v1_info(&c)}))
        }
        (Method::GET, ["v1", "clusters", arn, "bootstrap-brokers"]) => {
            let c = find(s, &caller, arn, "GetBootstrapBrokers")?;
            if c.state == ClusterState::Deleting {
                return Err(fail(
                    StatusCode::CONFLICT,
                    "ConflictException",
                    "the cluster is being deleted",
                ));
            }
            match bootstrap(s, &c) {
                Some(b) => ok(json!({"bootstrapBrokerStringSaslIam": b})),
                None => Err(fail(
                    StatusCode::CONFLICT,
                    "ConflictException",
                    "this gateway serves no cluster ports",
                )),
            }
        }
        (Method::DELETE, ["v1", "clusters", arn]) => {
            let c = find(s, &caller, arn, "DeleteCluster")?;
            if let Some((_, v)) = q.iter().find(|(k, _)| k == "currentVersion") {
                if *v != c.current_version {
                    return Err(bad_request(format!(
                        "currentVersion {v} is not the cluster's current version"
                    )));
                }
            }
            let c = s
                .auth
                .tenants
                .update_cluster(&c.arn, |c| {
                    c.state = ClusterState::Deleting;
                    Ok(())
                })
                .await?;
            tracing::info!(target: "weir::audit", account = %caller.account, cluster = %c.arn, "cluster deletion requested");
            ok(json!({"clusterArn": c.arn, "state": c.state.name()}))
        }
        (Method::GET, ["v1", "tags", arn]) => {
            let c = find(s, &caller, arn, "ListTagsForResource")?;
            ok(json!({"tags": c.tags}))
        }
        (Method::POST, ["v1", "tags", arn]) => {
            let c = find(s, &caller, arn, "TagResource")?;
            let body = parse_body(body)?;
            let add = tags_of(body.get("tags").unwrap_or(&Value::Null))?;
            if add.is_empty() {
                return Err(bad_request("tags must not be empty"));
            }
            s.auth
                .tenants
                .update_cluster(&c.arn, |c| {
                    c.tags.extend(add);
                    tenants::validate_tags(&c.tags)
                })
                .await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::DELETE, ["v1", "tags", arn]) => {
            let c = find(s, &caller, arn, "UntagResource")?;
            let keys: Vec<String> = q
                .iter()
                .filter(|(k, _)| k == "tagKeys")
                .map(|(_, v)| v.clone())
                .collect();
            if keys.is_empty() {
                return Err(bad_request("tagKeys is required"));
            }
            s.auth
                .tenants
                .update_cluster(&c.arn, |c| {
                    for k in &keys {
                        c.tags.remove(k);
                    }
                    Ok(())
                })
                .await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (m, _) => Err(fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "BadRequestException",
            format!("{m} is not supported on {}", uri.path()),
        )),
    }
}

/// A cluster of the caller's account (any other ARN is not found).
fn find(
    s: &AdminState,
    caller: &Caller,
    arn: &str,
    operation: &str,
) -> std::result::Result<ClusterRecord, MskError> {
    let c = s
        .auth
        .tenants
        .cluster(&caller.account, arn)
        .ok_or_else(|| not_found(arn))?;
    allow(s, caller, operation, &c.arn)?;
    Ok(c)
}

async fn create_cluster(s: &AdminState, caller: &Caller, body: &[u8]) -> MskResult {
    let Some(endpoints) = s.clusters.as_ref() else {
        return Err(fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "this Weir serves no tenant clusters (no --cluster-ports)",
        ));
    };
    allow(s, caller, "CreateClusterV2", "*")?;
    let body = parse_body(body)?;
    let name = body
        .get("clusterName")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_request("clusterName is required"))?;
    if body.get("provisioned").is_some_and(|v| !v.is_null()) {
        return Err(bad_request(
            "Weir serves Serverless clusters only: give `serverless`, not `provisioned`",
        ));
    }
    let serverless = body
        .get("serverless")
        .filter(|v| v.is_object())
        .ok_or_else(|| bad_request("serverless is required"))?;
    let vpc = serverless.get("vpcConfigs").cloned().unwrap_or(json!([]));
    if !vpc.is_array() {
        return Err(bad_request("serverless.vpcConfigs must be a list"));
    }
    let iam = serverless
        .pointer("/clientAuthentication/sasl/iam/enabled")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if !iam {
        return Err(bad_request(
            "Serverless clusters authenticate with IAM: clientAuthentication.sasl.iam.enabled must be true",
        ));
    }
    let tags = tags_of(body.get("tags").unwrap_or(&Value::Null))?;
    let c = s
        .auth
        .tenants
        .create_cluster(
            &caller.account,
            &s.auth.config.region,
            name,
            tags,
            vpc,
            endpoints.ports,
        )
        .await?;
    tracing::info!(target: "weir::audit", account = %caller.account, cluster = %c.arn, "cluster created");
    ok(json!({
        "clusterArn": c.arn,
        "clusterName": c.name,
        "state": c.state.name(),
        "clusterType": "SERVERLESS",
    }))
}

fn list_clusters(s: &AdminState, caller: &Caller, q: &[(String, String)], v2: bool) -> MskResult {
    allow(
        s,
        caller,
        if v2 { "ListClustersV2" } else { "ListClusters" },
        "*",
    )?;
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let filter = get("clusterNameFilter");
    if let Some(t) = get("clusterTypeFilter") {
        if !matches!(t, "SERVERLESS" | "PROVISIONED") {
            return Err(bad_request(
                "clusterTypeFilter must be SERVERLESS or PROVISIONED",
            ));
        }
    }
    let serverless_only = get("clusterTypeFilter") != Some("PROVISIONED");
    let max: usize = match get("maxResults") {
        None => 100,
        Some(m) => m
            .parse::<usize>()
            .ok()
            .filter(|m| (1..=100).contains(m))
            .ok_or_else(|| bad_request("maxResults must be 1-100"))?,
    };
    let start: usize = match get("nextToken") {
        None | Some("") => 0,
        Some(t) => t
            .parse()
            .map_err(|_| bad_request("nextToken is not one this API gave"))?,
    };
    let all: Vec<ClusterRecord> = s
        .auth
        .tenants
        .clusters(&caller.account)
        .into_iter()
        .filter(|c| serverless_only && filter.is_none_or(|f| c.name.starts_with(f)))
        .collect();
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(max)
        .map(|c| if v2 { v2_info(c) } else { v1_info(c) })
        .collect();
    let mut out = json!({"clusterInfoList": page});
    if start + max < all.len() {
        out["nextToken"] = json!((start + max).to_string());
    }
    ok(out)
}
