//! The Kubernetes launcher against a small fake API server on 127.0.0.1 (port 0) that speaks
//! the StatefulSet `scale` subresource: GET reads the replicas, PATCH and PUT set them.
#![allow(clippy::unwrap_used)]

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::{Arc, Mutex};
use weir_scaler::{KubernetesLauncher, Launcher};

#[derive(Default)]
struct Fake {
    replicas: i32,
    /// Every replicas value a PATCH or PUT set, in order.
    set: Vec<i32>,
}

type Shared = Arc<Mutex<Fake>>;

fn scale(ns: &str, name: &str, replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": { "name": name, "namespace": ns },
        "spec": { "replicas": replicas },
        "status": { "replicas": replicas }
    })
}

async fn get_scale(
    State(fake): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, StatusCode> {
    if ns != "weir" || name != "weir-gateway" {
        return Err(StatusCode::NOT_FOUND);
    }
    let replicas = fake.lock().unwrap().replicas;
    Ok(Json(scale(&ns, &name, replicas)))
}

async fn set_scale(
    State(fake): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, StatusCode> {
    if ns != "weir" || name != "weir-gateway" {
        return Err(StatusCode::NOT_FOUND);
    }
    let body: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
    let replicas = body["spec"]["replicas"]
        .as_i64()
        .ok_or(StatusCode::UNPROCESSABLE_ENTITY)? as i32;
    let mut f = fake.lock().unwrap();
    f.replicas = replicas;
    f.set.push(replicas);
    Ok(Json(scale(&ns, &name, replicas)))
}

#[tokio::test]
async fn kubernetes_launcher_scales_the_statefulset() -> anyhow::Result<()> {
    let fake: Shared = Arc::new(Mutex::new(Fake {
        replicas: 1,
        set: Vec::new(),
    }));
    let app = Router::new()
        .route(
            "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/scale",
            get(get_scale).patch(set_scale).put(set_scale),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let config = kube::Config::new(format!("http://{addr}").parse()?);
    let client = kube::Client::try_from(config)?;
    let launcher = KubernetesLauncher::new(client, Some("weir".into()), "weir-gateway".into());
    assert_eq!(launcher.name(), "kubernetes:weir/weir-gateway");

    assert_eq!(launcher.current().await?, 1);
    launcher.set(3).await?;
    assert_eq!(fake.lock().unwrap().replicas, 3);
    assert_eq!(launcher.current().await?, 3);
    launcher.set(2).await?;
    assert_eq!(launcher.current().await?, 2);
    assert_eq!(fake.lock().unwrap().set, vec![3, 2]);

    // An unknown StatefulSet is an error, not zero gateways.
    let client = kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse()?))?;
    let missing = KubernetesLauncher::new(client, Some("weir".into()), "nope".into());
    assert!(missing.current().await.is_err());

    server.abort();
    Ok(())
}
