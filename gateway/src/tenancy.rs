//! Serving tenant clusters: one listener per cluster, opened and closed as the cluster
//! records come and go.
//!
//! Every gateway with a cluster port range binds, for each cluster, the port
//! `first_port + port_index` on its listen host: SASL_SSL offering the IAM mechanisms only
//! (OAUTHBEARER and AWS_MSK_IAM, as MSK Serverless), with the gateway's TLS set. A cluster in
//! CREATING becomes ACTIVE once its listener is bound. A cluster in DELETING has its listener
//! closed, its connections ended, its topics deleted (their objects reclaimed as any deleted
//! topic's), its groups' committed offsets deleted, and then its record removed. The
//! reconciler runs when the records change here and every few seconds otherwise (other
//! gateways' admin APIs write the shared store). An idle cluster costs one listening socket
//! and one accept task; nothing else is per cluster.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_auth::tenants::{ClusterRecord, ClusterState};
use weir_auth::Mechanism;

use crate::listener::{Listener, SecurityProtocol};
use crate::namespace::{prefix_of, VirtualCluster};
use crate::Gateway;

/// How often the records are re-read when nothing changed here.
const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// Where and how tenant clusters are served.
#[derive(Clone)]
pub struct TenancyConfig {
    pub listen_host: IpAddr,
    pub advertised_host: String,
    pub first_port: u16,
    pub ports: u32,
    pub tls: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TenancyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenancyConfig")
            .field("listen_host", &self.listen_host)
            .field("advertised_host", &self.advertised_host)
            .field("first_port", &self.first_port)
            .field("ports", &self.ports)
            .finish()
    }
}

/// An accepted socket, its listener, and the token that ends its connection.
pub type Accepted = (TcpStream, SocketAddr, Arc<Listener>);

struct Served {
    cluster: Arc<VirtualCluster>,
}

/// Keeps one listener per live cluster until `shutdown`.
pub async fn serve(
    gateway: Arc<Gateway>,
    config: TenancyConfig,
    accepted: mpsc::Sender<Accepted>,
    shutdown: CancellationToken,
) {
    let Some(auth) = gateway.auth.clone() else {
        return;
    };
    let tenants = auth.tenants.clone();
    let mut changed = tenants.changed();
    let mut served: HashMap<String, Served> = HashMap::new();
    let mut refresh = tokio::time::interval(REFRESH_EVERY);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        reconcile(&gateway, &config, &mut served, &accepted, &shutdown).await;
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = refresh.tick() => {
                if let Err(e) = tenants.refresh().await {
                    tracing::warn!(error = %e, "reading the tenant clusters failed");
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    for s in served.values() {
        s.cluster.closed.cancel();
    }
}

async fn reconcile(
    gateway: &Arc<Gateway>,
    config: &TenancyConfig,
    served: &mut HashMap<String, Served>,
    accepted: &mpsc::Sender<Accepted>,
    shutdown: &CancellationToken,
) {
    let Some(auth) = gateway.auth.clone() else {
        return;
    };
    let records = auth.tenants.all_clusters();
    let live: std::collections::HashSet<&str> = records
        .iter()
        .filter(|c| c.state != ClusterState::Deleting)
        .map(|c| c.arn.as_str())
        .collect();
    served.retain(|arn, s| {
        let keep = live.contains(arn.as_str());
        if !keep {
            s.cluster.closed.cancel();
            tracing::info!(cluster = %arn, "cluster listener closed");
        }
        keep
    });
    for record in &records {
        match record.state {
            ClusterState::Deleting => delete(gateway, record).await,
            _ if served.contains_key(&record.arn) => {}
            _ => {
                let Some(port) = u16::try_from(u32::from(config.first_port) + record.port_index)
                    .ok()
                    .filter(|_| record.port_index < config.ports)
                else {
                    tracing::error!(cluster = %record.arn, index = record.port_index,
                        "the cluster's port is outside this gateway's cluster port range");
                    continue;
                };
                match bind(gateway, config, record, port, accepted, shutdown).await {
                    Ok(cluster) => {
                        served.insert(record.arn.clone(), Served { cluster });
                        if record.state == ClusterState::Creating {
                            let r = auth
                                .tenants
                                .update_cluster(&record.arn, |c| {
                                    if c.state == ClusterState::Creating {
                                        c.state = ClusterState::Active;
                                    }
                                    Ok(())
                                })
                                .await;
                            if let Err(e) = r {
                                tracing::warn!(cluster = %record.arn, error = %e, "marking the cluster ACTIVE failed");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(cluster = %record.arn, port, error = %e,
                            "binding the cluster's listener failed; retrying")
                    }
                }
            }
        }
    }
}

async fn bind(
    gateway: &Arc<Gateway>,
    config: &TenancyConfig,
    record: &ClusterRecord,
    port: u16,
    accepted: &mpsc::Sender<Accepted>,
    shutdown: &CancellationToken,
) -> std::io::Result<Arc<VirtualCluster>> {
    let socket = TcpListener::bind(SocketAddr::new(config.listen_host, port)).await?;
    let mut cluster = VirtualCluster::from_record(record, port);
    // Ends with the gateway too.
    cluster.closed = shutdown.child_token();
    let cluster = Arc::new(cluster);
    let listener = Arc::new(Listener {
        protocol: SecurityProtocol::SaslSsl,
        advertised_host: config.advertised_host.clone(),
        advertised_port: i32::from(port),
        mechanisms: vec![Mechanism::OauthBearer, Mechanism::AwsMskIam],
        tls: Some(config.tls.clone()),
        cluster: Some(cluster.clone()),
    });
    tracing::info!(cluster = %record.arn, port, "cluster listener open");
    let tx = accepted.clone();
    let closed = cluster.closed.clone();
    let _ = gateway;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                a = socket.accept() => match a {
                    Ok((stream, peer)) => {
                        if tx.send((stream, peer, listener.clone())).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = closed.cancelled() => return,
            }
        }
    });
    Ok(cluster)
}

/// Deletes a DELETING cluster's topics and offsets, then its record.
async fn delete(gateway: &Arc<Gateway>, record: &ClusterRecord) {
    let Some(auth) = gateway.auth.clone() else {
        return;
    };
    let prefix = prefix_of(&record.namespace);
    for topic in gateway.registry.all() {
        if topic.name.starts_with(&prefix) {
            if let Err((code, msg)) = crate::handlers::admin::delete_topic(gateway, &topic).await {
                tracing::warn!(cluster = %record.arn, code, error = %msg, "deleting a cluster's topic failed");
                return;
            }
        }
    }
    match gateway.meta.offset_groups().await {
        Ok(groups) => {
            for g in groups.iter().filter(|g| g.starts_with(&prefix)) {
                if let Err(e) = gateway.meta.delete_offsets(g, None).await {
                    tracing::warn!(cluster = %record.arn, error = %e, "deleting a cluster's offsets failed");
                    return;
                }
            }
        }
        Err(e) => {
            tracing::warn!(cluster = %record.arn, error = %e, "listing groups failed");
            return;
        }
    }
    match auth.tenants.remove_cluster(&record.arn).await {
        Ok(()) => tracing::info!(cluster = %record.arn, "cluster deleted"),
        Err(e) => tracing::warn!(cluster = %record.arn, error = %e, "removing the cluster failed"),
    }
}
