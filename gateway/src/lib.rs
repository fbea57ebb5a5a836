//! The gateway: Weir's Kafka front end.
//!
//! It owns the Kafka listener and everything Kafka-shaped: framing ([`conn`]), the request
//! guard that keeps hostile frames from reaching the decoder ([`guard`]), the handlers
//! ([`handlers`]) for each API, record batch validation and offset assignment ([`batch`]),
//! topic configs ([`config`]), the tail state of the partitions it leads ([`broker`]), the
//! consumer group coordinators (classic: [`groups`], KIP-848: [`consumer_groups`]), the
//! lag report ([`lag`]), and security on the Kafka side: listeners and connection limits
//! ([`listener`]), each connection's SASL state ([`session`]) and the authorization of each
//! API ([`authz`]) over the `weir-auth` crate.
//! Every Kafka message is decoded and encoded with the `kafka-protocol` crate; Kafka types
//! never leave this crate: storage and metadata are reached through their traits with
//! Weir's own types.
//!
//! The gateway holds no durable state: an append is acknowledged only after the storage
//! service wrote the object and the metadata service committed its index entries.

pub mod authz;
pub mod batch;
pub mod broker;
pub mod budget;
pub mod compaction;
pub mod config;
pub mod conn;
pub mod consumer_groups;
pub mod groups;
pub mod guard;
pub mod handlers;
pub mod key_compaction;
pub mod lag;
pub mod leadership;
pub mod listener;
pub mod namespace;
pub mod session;
pub mod tasks;
pub mod tenancy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_metadata_api::{MetadataStore, RetentionLimits};
use weir_storage::Storage;

pub use broker::{HighWatermarks, Registry};

/// Errors of the gateway's own set-up (request errors become Kafka error codes instead).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("metadata: {0}")]
    Metadata(#[from] weir_metadata_api::MetadataError),
    #[error("storage: {0}")]
    Storage(#[from] weir_storage::StorageError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This gateway's broker id in Metadata responses.
    pub node_id: i32,
    /// Host and port clients are told to connect to.
    pub advertised_host: String,
    pub advertised_port: i32,
    /// Create unknown topics on Metadata/Produce requests that allow it.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics with -1.
    pub default_partitions: i32,
    /// Largest request frame accepted; larger ones close the connection before any allocation.
    pub max_request_bytes: usize,
    /// Request bytes held across all connections at once (frames being read and requests
    /// not yet answered); a frame waits for budget instead of growing memory past it.
    pub request_memory_bytes: usize,
    /// How often retention is applied.
    pub retention_check_interval: Duration,
    /// Fetch sessions kept (least recently used evicted beyond).
    pub max_fetch_sessions: usize,
    /// Group coordinator settings.
    pub groups: groups::GroupConfig,
    /// Most record bytes one Fetch response returns (Kafka's broker `fetch.max.bytes`).
    pub fetch_max_bytes: usize,
    /// Open connections over all listeners; more are closed at once.
    pub max_connections: usize,
    /// New connections per second over all listeners; more are closed at once.
    pub max_connections_per_second: u32,
    /// Background compaction of small flush objects into per-partition segments.
    pub compaction: compaction::CompactionConfig,
    /// Membership and partition hand-over among gateways.
    pub cluster: leadership::ClusterConfig,
    /// The time source of what decides by time (group sessions and expiry, offset
    /// expiry, compaction ages); tests hand in a [`weir_common::clock::ManualClock`].
    pub clock: Arc<dyn weir_common::clock::Clock>,
    /// Serve tenant clusters, one port each (None: only the default cluster).
    pub tenancy: Option<tenancy::TenancyConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            node_id: 0,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            auto_create_topics: false,
            default_partitions: 1,
            max_request_bytes: 100 << 20,
            request_memory_bytes: 256 << 20,
            retention_check_interval: Duration::from_secs(30),
            max_fetch_sessions: 1000,
            groups: groups::GroupConfig::default(),
            fetch_max_bytes: 16 << 20,
            max_connections: 10_000,
            max_connections_per_second: 1_000,
            compaction: compaction::CompactionConfig::default(),
            cluster: leadership::ClusterConfig::default(),
            clock: Arc::new(weir_common::clock::SystemClock),
            tenancy: None,
        }
    }
}

/// Everything a connection needs, shared by all connections.
#[derive(Debug)]
pub struct Gateway {
    pub config: GatewayConfig,
    pub meta: Arc<dyn MetadataStore>,
    pub storage: Arc<dyn Storage>,
    pub registry: Arc<Registry>,
    pub cluster_id: String,
    pub sessions: handlers::fetch::FetchSessions,
    /// The consumer groups this gateway coordinates.
    pub groups: groups::Coordinator,
    /// The KIP-848 consumer groups this gateway coordinates.
    pub consumer_groups: consumer_groups::ConsumerGroups,
    /// Serializes topic mutations (create, delete, partitions, configs), and tells the
    /// cluster sync whether one happened while it read the metadata store.
    pub admin: leadership::AdminLock,
    /// Authentication and authorization (None: no SASL listener, nobody authenticates).
    pub auth: Option<Arc<weir_auth::Auth>>,
    /// Connection caps shared by every listener.
    pub limits: Arc<listener::ConnectionLimits>,
    /// Request bytes buffered across all connections.
    pub request_budget: Arc<budget::RequestBudget>,
    /// The other gateways, and which partitions and groups this one leads.
    pub cluster: leadership::Cluster,
}

impl Gateway {
    /// Registers with the other gateways, loads every topic from the metadata store and
    /// takes leadership of the partitions that fall to this gateway. Objects nothing refers
    /// to (left by a crash between an object write and its index commit) are deleted.
    pub async fn start(
        config: GatewayConfig,
        meta: Arc<dyn MetadataStore>,
        storage: Arc<dyn Storage>,
        registry: Arc<Registry>,
        auth: Option<Arc<weir_auth::Auth>>,
    ) -> Result<Arc<Self>, GatewayError> {
        let cluster_id = meta.cluster_id().await?;
        // The budget always admits the largest frame allowed.
        let (config_request_memory, config_max_request) =
            (config.request_memory_bytes, config.max_request_bytes);
        let limits = Arc::new(listener::ConnectionLimits::new(
            config.max_connections,
            config.max_connections_per_second,
        ));
        let cluster = leadership::Cluster::new(
            config.node_id,
            config.advertised_host.clone(),
            config.advertised_port,
            config.cluster.clone(),
        );
        Ok(Arc::new(Gateway {
            cluster,
            sessions: handlers::fetch::FetchSessions::new(config.max_fetch_sessions),
            groups: groups::Coordinator::with_clock(config.groups.clone(), config.clock.clone()),
            consumer_groups: consumer_groups::ConsumerGroups::with_clock(
                Duration::from_secs(45),
                Duration::from_millis(1000),
                config.clock.clone(),
            ),
            config,
            meta,
            storage,
            registry,
            cluster_id,
            admin: leadership::AdminLock::default(),
            auth,
            limits,
            request_budget: budget::RequestBudget::new(
                config_request_memory.max(config_max_request),
            ),
        }))
    }

    /// Joins the cluster: registers, takes this gateway's share of the partitions, and
    /// sweeps orphaned objects. Call once, before serving.
    pub async fn join(self: &Arc<Self>) -> Result<(), GatewayError> {
        self.cluster.register(self.meta.as_ref()).await?;
        self.cluster.sync(self, true).await?;
        // With a store of its own and in-process storage, nothing is in flight yet: every
        // unreferenced object is an orphan. Other writers (gateways, storage nodes) may be
        // between an object write and its commit: only old objects are swept.
        let grace = if self.config.cluster.exclusive {
            self.storage.orphan_grace()
        } else {
            self.storage.orphan_grace().max(ORPHAN_MIN_AGE)
        };
        sweep_orphans(self.meta.as_ref(), self.storage.as_ref(), grace).await?;
        Ok(())
    }

    /// Applies retention to every partition once.
    pub async fn apply_retention(&self) {
        let now = self.config.clock.now_ms();
        for topic in self.registry.all() {
            let settings = topic.settings();
            if !settings.delete_policy {
                continue;
            }
            let limits = RetentionLimits {
                min_timestamp: (settings.retention_ms >= 0)
                    .then(|| now.saturating_sub(settings.retention_ms)),
                max_bytes: u64::try_from(settings.retention_bytes).ok(),
            };
            if limits.min_timestamp.is_none() && limits.max_bytes.is_none() {
                continue;
            }
            for p in 0..topic.partition_count() {
                // Retention of each partition is applied by its leader only.
                if !topic.partition(p).is_some_and(|l| l.lock().led) {
                    continue;
                }
                let tp = weir_common::TopicPartition {
                    topic_id: topic.id,
                    partition: p,
                };
                let (meta, storage) = (self.meta.as_ref(), self.storage.as_ref());
                let truncated = |log_start| self.registry.truncated(tp, log_start);
                match weir_storage::maintenance::apply_retention(
                    meta, storage, tp, limits, &truncated,
                )
                .await
                {
                    Ok(t) if t.removed_entries > 0 => {
                        tracing::debug!(topic = %topic.name, partition = p,
                            log_start = t.log_start, removed = t.removed_entries, "retention applied");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(topic = %topic.name, partition = p, error = %e, "retention failed")
                    }
                }
            }
        }
    }
}

/// How often a gateway sharing its metadata store re-reads credentials and policies.
const AUTH_REFRESH: Duration = Duration::from_secs(2);

/// How often a running gateway looks for orphaned objects, and how old they must be.
const ORPHAN_SWEEP_EVERY: Duration = Duration::from_secs(3600);
const ORPHAN_MIN_AGE: Duration = Duration::from_secs(15 * 60);

/// Deletes objects no index entry refers to that are older than `min_age` (see
/// [`weir_storage::maintenance::sweep_orphans`]); returns how many.
pub async fn sweep_orphans(
    meta: &dyn MetadataStore,
    storage: &dyn Storage,
    min_age: Duration,
) -> Result<usize, GatewayError> {
    let now = weir_common::now_ms();
    Ok(weir_storage::maintenance::sweep_orphans(meta, storage, min_age, now).await?)
}

/// Serves Kafka clients on `listeners` until `shutdown` is cancelled, then stops accepting,
/// lets in-flight requests finish (bounded), and returns. The caller bound the sockets.
pub async fn run(
    listeners: Vec<(TcpListener, Arc<listener::Listener>)>,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    // Membership is joined before the partitions are handed over; the rest after the drain.
    let mut cluster = tasks::Tasks::new();
    let mut background = tasks::Tasks::new();
    {
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        background.spawn("offsets-expiry", async move {
            let groups = &gateway.config.groups;
            let mut tick = tokio::time::interval(groups.offsets_retention_check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        handlers::groups::expire_offsets(&gateway, groups.offsets_retention).await;
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
    {
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        background.spawn("retention-and-orphan-sweep", async move {
            let mut tick = tokio::time::interval(gateway.config.retention_check_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut swept = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        gateway.apply_retention().await;
                        if swept.elapsed() >= ORPHAN_SWEEP_EVERY {
                            swept = tokio::time::Instant::now();
                            let (meta, storage) = (gateway.meta.as_ref(), gateway.storage.as_ref());
                            if let Err(e) = sweep_orphans(meta, storage, ORPHAN_MIN_AGE).await {
                                tracing::warn!(error = %e, "orphan sweep failed");
                            }
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
    {
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        background.spawn("compaction", async move {
            let every = gateway.config.compaction.interval;
            if every.is_zero() {
                return;
            }
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let switched = tokio::select! {
                            n = gateway.compact() => n,
                            _ = shutdown.cancelled() => return,
                        };
                        if switched > 0 {
                            tracing::debug!(segments = switched, "compaction pass");
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
    {
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        cluster.spawn("membership", async move {
            let config = gateway.config.cluster.clone();
            let mut sync = tokio::time::interval(config.sync_interval);
            sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut beat = tokio::time::interval(config.heartbeat_interval);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Credentials and policies other gateways' admin APIs changed.
            let mut credentials = tokio::time::interval(AUTH_REFRESH);
            credentials.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let shared_auth = gateway.auth.clone().filter(|_| !config.exclusive);
            loop {
                tokio::select! {
                    _ = credentials.tick(), if shared_auth.is_some() => {
                        if let Some(auth) = &shared_auth {
                            match auth.store.refresh().await {
                                Ok(true) => tracing::info!("credentials or policies changed elsewhere; reloaded"),
                                Ok(false) => {}
                                Err(e) => tracing::warn!(error = %e, "reloading credentials failed"),
                            }
                        }
                    }
                    _ = beat.tick() => {
                        if let Err(e) = gateway.cluster.heartbeat(&gateway).await {
                            tracing::warn!(error = %e, "heartbeat failed");
                        }
                    }
                    _ = sync.tick() => {
                        if let Err(e) = gateway.cluster.sync(&gateway, false).await {
                            tracing::warn!(error = %e, "cluster sync failed");
                        }
                    }
                    _ = gateway.cluster.wake.notified() => {
                        if let Err(e) = gateway.cluster.sync(&gateway, true).await {
                            tracing::warn!(error = %e, "cluster sync failed");
                        }
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
    {
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        background.spawn("group-timers", async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        gateway.groups.tick();
                        let lookup = |name: &str| gateway.registry.topic(name).map(|t| (t.id.0, t.partition_count()));
                        gateway.consumer_groups.tick(&lookup);
                    }
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
    // One accept task per listener feeds accepted sockets here.
    let (accepted_tx, mut accepted_rx) =
        tokio::sync::mpsc::channel::<(tokio::net::TcpStream, SocketAddr, Arc<listener::Listener>)>(
            64,
        );
    let mut acceptors = JoinSet::new();
    for (socket, spec) in listeners {
        let tx = accepted_tx.clone();
        let shutdown = shutdown.clone();
        acceptors.spawn(async move {
            loop {
                tokio::select! {
                    accepted = socket.accept() => match accepted {
                        Ok((stream, peer)) => {
                            if tx.send((stream, peer, spec.clone())).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }
    if let Some(config) = gateway.config.tenancy.clone() {
        let (gateway, tx, shutdown) = (gateway.clone(), accepted_tx.clone(), shutdown.clone());
        background.spawn(
            "tenant-clusters",
            tenancy::serve(gateway, config, tx, shutdown),
        );
    }
    drop(accepted_tx);
    let mut next_id: u64 = 0;
    loop {
        tokio::select! {
            accepted = accepted_rx.recv() => match accepted {
                Some((socket, peer, spec)) => {
                    next_id += 1;
                    let permit = match gateway.limits.admit() {
                        Ok(p) => p,
                        Err(why) => {
                            tracing::warn!(%peer, open = gateway.limits.open(), "refusing a connection: {why}");
                            drop(socket);
                            continue;
                        }
                    };
                    let _ = socket.set_nodelay(true);
                    // A tenant cluster's connections also end when the cluster is deleted.
                    let ends = spec.cluster.as_ref().map(|c| c.closed.clone()).unwrap_or_else(|| shutdown.clone());
                    connections.spawn(conn::accept(socket, peer, next_id, gateway.clone(), spec, permit, ends));
                }
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    acceptors.abort_all();
    while acceptors.join_next().await.is_some() {}
    drop(accepted_rx);
    cluster.join_all().await;
    // Hand the partitions over while admitted requests finish: other gateways take them at
    // once instead of after the member timeout. A gateway alone with its store has no one
    // to hand them to.
    if !gateway.config.cluster.exclusive {
        gateway.cluster.leave(&gateway).await;
    }
    gateway.registry.close();
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s; closing them");
        connections.abort_all();
    }
    background.join_all().await;
}

/// The address clients should use, for logs and the ready line.
pub fn bootstrap(config: &GatewayConfig) -> String {
    format!("{}:{}", config.advertised_host, config.advertised_port)
}

/// Helper for callers that bind: the local address as the advertised one.
pub fn advertise_from(addr: SocketAddr) -> (String, i32) {
    (addr.ip().to_string(), i32::from(addr.port()))
}
