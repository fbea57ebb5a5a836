//! The Kubernetes launcher: the gateways are a StatefulSet (`infra/kubernetes/weir.yaml`),
//! and the launcher sets and reads the replicas of its `scale` subresource
//! (`weir scaler --launcher kubernetes`).
//!
//! Kubernetes stops the pod with the highest ordinal first, with SIGTERM, so a gateway hands
//! its partitions over before it exits. The scaler needs `get` and `patch` on
//! `statefulsets/scale` in the StatefulSet's namespace (`infra/kubernetes/scaler.yaml`).

use super::Launcher;
use anyhow::{Context, Result};
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, Patch, PatchParams};

/// Scales a StatefulSet through its `scale` subresource.
#[derive(Clone)]
pub struct KubernetesLauncher {
    api: Api<StatefulSet>,
    namespace: String,
    statefulset: String,
}

impl std::fmt::Debug for KubernetesLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesLauncher")
            .field("namespace", &self.namespace)
            .field("statefulset", &self.statefulset)
            .finish_non_exhaustive()
    }
}

impl KubernetesLauncher {
    /// Connects with the in-cluster configuration (the pod's service account) or else the
    /// kubeconfig (`KUBECONFIG`, `~/.kube/config`). Without a `namespace`, the client's: the
    /// pod's namespace in a cluster, else the kubeconfig context's, else `default`.
    pub async fn connect(namespace: Option<String>, statefulset: String) -> Result<Self> {
        // rustls on ring (the only provider built in); a no-op when one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = kube::Client::try_default().await.context(
            "connecting to the Kubernetes API (in-cluster service account or kubeconfig)",
        )?;
        Ok(Self::new(client, namespace, statefulset))
    }

    /// A launcher on a client built by the caller (tests point one at a local server).
    pub fn new(client: kube::Client, namespace: Option<String>, statefulset: String) -> Self {
        let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
        KubernetesLauncher {
            api: Api::namespaced(client, &namespace),
            namespace,
            statefulset,
        }
    }
}

#[async_trait]
impl Launcher for KubernetesLauncher {
    fn name(&self) -> String {
        format!("kubernetes:{}/{}", self.namespace, self.statefulset)
    }

    async fn current(&self) -> Result<usize> {
        let scale = self
            .api
            .get_scale(&self.statefulset)
            .await
            .with_context(|| {
                format!(
                    "reading the scale of StatefulSet {}/{}",
                    self.namespace, self.statefulset
                )
            })?;
        let replicas = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
        Ok(replicas.max(0) as usize)
    }

    async fn set(&self, count: usize) -> Result<()> {
        let replicas = i32::try_from(count).unwrap_or(i32::MAX);
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        self.api
            .patch_scale(
                &self.statefulset,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .with_context(|| {
                format!(
                    "scaling StatefulSet {}/{} to {replicas}",
                    self.namespace, self.statefulset
                )
            })?;
        Ok(())
    }
}
