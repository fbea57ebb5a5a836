//! `weir`: the command line. Parses settings, builds the components, runs them.

mod admin;
mod metadata_cmd;
mod scaler_cmd;
mod storage_cmd;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use weir_gateway::listener::{Listener, ListenerSpec, SecurityProtocol};
use weir_gateway::{Gateway, GatewayConfig, HighWatermarks, Registry};
use weir_metadata::MetadataStore;
use weir_storage::{ObjectStorage, Storage, StorageConfig};

/// Weir: a serverless, autoscaling, Kafka-compatible streaming service.
///
/// Every setting can be given as a flag, as an environment variable (named in each flag's
/// help), or in a TOML file passed with --config (keys are the flag names with underscores,
/// e.g. `flush_interval_ms = 5`). Flags and environment variables win over the file.
#[derive(Parser, Debug)]
#[command(name = "weir", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run everything in one process: a Kafka gateway, the storage service and the metadata
    /// service. With no flags: listens on 127.0.0.1:9092, keeps data under ./weir-data.
    Serve(Box<ServeArgs>),
    /// Show consumer lag (log end offset minus committed offset) per group and partition,
    /// as a running Weir (or any Kafka-compatible broker) reports it.
    Lag(LagArgs),
    /// Manage access keys, SCRAM users and IAM policies of a running weir (admin API).
    Auth(admin::AuthArgs),
    /// TLS helpers.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Run the metadata service as its own process, serving a backend (embedded or DynamoDB)
    /// over QUIC to other weir processes (`--metadata quic://...`); `weir metadata init`
    /// creates a backend's tables.
    Metadata(metadata_cmd::MetadataArgs),
    /// Run a storage node as its own process: writes objects for gateways (`weir serve
    /// --storage quic://...`), commits them to the shared metadata store and serves reads
    /// through its memory and disk caches, over QUIC.
    Storage(Box<storage_cmd::StorageArgs>),
    /// Run one Kafka gateway of a cluster: it shares the metadata store (dynamodb:// or
    /// quic://) and the object store or storage nodes with the other gateways, registers,
    /// heartbeats, and leads the partitions that fall to it. Same flags as `serve`.
    Gateway(Box<ServeArgs>),
    /// Run the scaler: starts and stops gateways with the load (local processes or an ECS
    /// service) and moves partition leadership by measured load; `weir scaler status` shows
    /// its decisions.
    Scaler(Box<scaler_cmd::ScalerArgs>),
    /// List partition leaders, move a partition to a gateway, or rebalance now.
    Partitions(scaler_cmd::PartitionsArgs),
}

#[derive(Subcommand, Debug)]
enum TlsCommand {
    /// Generates a CA and a server certificate it signed, for local use: ca.pem (give it to
    /// clients), server.pem (chain) and server.key, in --out.
    Generate {
        #[arg(long)]
        out: PathBuf,
        /// Host names or IP addresses the certificate is valid for [default: localhost,
        /// 127.0.0.1].
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

#[derive(Args, Debug)]
struct LagArgs {
    /// Address of a gateway.
    #[arg(long, env = "WEIR_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap_server: String,
    /// Only this group (default: every group).
    #[arg(long)]
    group: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

async fn lag(args: LagArgs) -> Result<()> {
    let rows = weir_gateway::lag::consumer_lag(&args.bootstrap_server, args.group.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    if args.json {
        for r in &rows {
            let line = serde_json::json!({
                "group": r.group, "topic": r.topic, "partition": r.partition,
                "committed": r.committed, "log_end": r.log_end, "lag": r.lag,
            });
            println!("{line}");
        }
        return Ok(());
    }
    println!(
        "{:<30} {:<30} {:>9} {:>14} {:>14} {:>10}",
        "GROUP", "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"
    );
    let mut totals: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for r in &rows {
        println!(
            "{:<30} {:<30} {:>9} {:>14} {:>14} {:>10}",
            r.group, r.topic, r.partition, r.committed, r.log_end, r.lag
        );
        *totals.entry(&r.group).or_default() += r.lag.max(0);
    }
    for (group, total) in totals {
        println!("group {group}: total lag {total}");
    }
    Ok(())
}

#[derive(Args, Debug, Default)]
struct ServeArgs {
    /// TOML file with settings (same names as the flags, with underscores).
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka listener address [default: 127.0.0.1:9092].
    #[arg(long, env = "WEIR_LISTEN")]
    listen: Option<SocketAddr>,
    /// host:port clients are told to connect to [default: the listen address].
    #[arg(long, env = "WEIR_ADVERTISE")]
    advertise: Option<String>,
    /// Directory for data and metadata [default: ./weir-data].
    #[arg(long, env = "WEIR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Object store URL: file:///path or memory:// [default: file://<data-dir>/objects].
    #[arg(long, env = "WEIR_OBJECT_STORE")]
    object_store: Option<String>,
    /// Storage nodes to use instead of the in-process storage service:
    /// quic://host:port[,host:port...]?ca=PATH (`weir storage` processes; they own the
    /// object store, and --object-store is then unused) [default: in-process].
    #[arg(long, env = "WEIR_STORAGE")]
    storage: Option<String>,
    /// Metadata store URL: embedded://path, dynamodb://table-prefix[?region=R&endpoint=URL]
    /// (tables created if missing) or quic://host:port?ca=PATH (a `weir metadata` service)
    /// [default: embedded://<data-dir>/metadata].
    #[arg(long, env = "WEIR_METADATA")]
    metadata: Option<String>,
    /// Flush an object once this many bytes are buffered [default: 4194304].
    #[arg(long, env = "WEIR_FLUSH_BYTES")]
    flush_bytes: Option<usize>,
    /// Flush an object at most this many ms after its first batch arrived; 0 flushes as soon
    /// as the previous flush is done (group commit) [default: 0].
    #[arg(long, env = "WEIR_FLUSH_INTERVAL_MS")]
    flush_interval_ms: Option<u64>,
    /// Bytes buffered or flushing before producers are slowed down [default: 33554432].
    #[arg(long, env = "WEIR_MAX_BUFFERED_BYTES")]
    max_buffered_bytes: Option<usize>,
    /// Bytes of recently written or read objects kept in memory [default: 33554432].
    #[arg(long, env = "WEIR_CACHE_BYTES")]
    cache_bytes: Option<u64>,
    /// Bytes of object chunks kept on local disk (in <data-dir>/cache) when the object store
    /// is remote (s3://); 0 turns the disk tier off [default: 1073741824].
    #[arg(long, env = "WEIR_DISK_CACHE_BYTES")]
    disk_cache_bytes: Option<u64>,
    /// Create unknown topics when a client asks for them (off by default).
    #[arg(long, env = "WEIR_AUTO_CREATE_TOPICS", num_args = 0..=1, default_missing_value = "true")]
    auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics and of CreateTopics with -1 [default: 1].
    #[arg(long, env = "WEIR_DEFAULT_PARTITIONS")]
    default_partitions: Option<i32>,
    /// Largest request accepted, in bytes [default: 104857600].
    #[arg(long, env = "WEIR_MAX_REQUEST_BYTES")]
    max_request_bytes: Option<usize>,
    /// Request bytes held across all connections (frames being read and requests not yet
    /// answered); a frame waits for room instead of growing memory. At least
    /// max-request-bytes [default: 268435456].
    #[arg(long, env = "WEIR_REQUEST_MEMORY_BYTES")]
    request_memory_bytes: Option<usize>,
    /// Committed offsets of a group without members expire after this many minutes
    /// (Kafka's offsets.retention.minutes) [default: 10080].
    #[arg(long, env = "WEIR_OFFSETS_RETENTION_MINUTES")]
    offsets_retention_minutes: Option<u64>,
    /// How often retention (retention.ms, retention.bytes) is applied, in ms [default: 30000].
    #[arg(long, env = "WEIR_RETENTION_CHECK_INTERVAL_MS")]
    retention_check_interval_ms: Option<u64>,
    /// How often small flush objects are compacted into per-partition segments, in ms; 0
    /// turns compaction off [default: 60000].
    #[arg(long, env = "WEIR_COMPACTION_INTERVAL_MS")]
    compaction_interval_ms: Option<u64>,
    /// Target size of compacted segments, in bytes, at most 33554432 [default: 8388608].
    #[arg(long, env = "WEIR_SEGMENT_BYTES")]
    segment_bytes: Option<usize>,
    /// Only objects at least this old are compacted, in ms [default: 60000].
    #[arg(long, env = "WEIR_COMPACTION_MIN_AGE_MS")]
    compaction_min_age_ms: Option<u64>,
    /// How long compacted-away objects stay readable before they are deleted, in ms
    /// [default: 60000].
    #[arg(long, env = "WEIR_COMPACTION_GRACE_MS")]
    compaction_grace_ms: Option<u64>,
    /// Most record bytes one Fetch response returns, whatever the client asks (Kafka's broker
    /// fetch.max.bytes) [default: 16777216].
    #[arg(long, env = "WEIR_FETCH_MAX_BYTES")]
    fetch_max_bytes: Option<usize>,
    /// Delay before a new consumer group's first rebalance completes, in ms (Kafka's
    /// group.initial.rebalance.delay.ms) [default: 3000].
    #[arg(long, env = "WEIR_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    group_initial_rebalance_delay_ms: Option<u64>,
    /// Log format: text or json [default: text]. Levels come from RUST_LOG (default info).
    #[arg(long, env = "WEIR_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// A Kafka listener, repeatable: PROTOCOL://HOST:PORT[?mechanisms=A+B&advertise=H:P] with
    /// PROTOCOL one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL. Given alone, these are the
    /// only listeners; with --listen, that one is an extra PLAINTEXT listener.
    #[arg(long = "listener", env = "WEIR_LISTENERS", value_delimiter = ',')]
    listeners: Vec<String>,
    /// PEM certificate chain for TLS listeners [default: a self-signed set generated under
    /// <data-dir>/tls].
    #[arg(long, env = "WEIR_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS listeners.
    #[arg(long, env = "WEIR_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Admin API address (used by `weir auth`) [default: 127.0.0.1:9644].
    #[arg(long, env = "WEIR_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Bearer token the admin API requires (required if it listens beyond loopback).
    #[arg(long, env = "WEIR_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Region IAM tokens must be signed for, and of the ARNs [default: us-east-1].
    #[arg(long, env = "WEIR_AUTH_REGION")]
    auth_region: Option<String>,
    /// Account id in the ARNs policies name [default: 000000000000].
    #[arg(long, env = "WEIR_ACCOUNT_ID")]
    account_id: Option<String>,
    /// Cluster name in the ARNs policies name [default: weir].
    #[arg(long, env = "WEIR_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// Base64 of the 32-byte key that encrypts secret access keys at rest [default: read from
    /// (or generated into) <data-dir>/auth/master.key].
    #[arg(long, env = "WEIR_AUTH_MASTER_KEY", hide_env_values = true)]
    auth_master_key: Option<String>,
    /// Session lifetime of SCRAM/PLAIN logins in ms, after which clients re-authenticate
    /// (KIP-368); 0: unlimited. IAM sessions end when their token expires [default: 0].
    #[arg(long, env = "WEIR_SESSION_LIFETIME_MS")]
    session_lifetime_ms: Option<u64>,
    /// Most open client connections [default: 10000].
    #[arg(long, env = "WEIR_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most new client connections per second [default: 1000].
    #[arg(long, env = "WEIR_MAX_CONNECTIONS_PER_SECOND")]
    max_connections_per_second: Option<u32>,
    /// This gateway's broker id, unique in the cluster [default: 0 for `serve`, a random
    /// id for `gateway`].
    #[arg(long, env = "WEIR_NODE_ID")]
    node_id: Option<i32>,
    /// Rack (availability zone) clients see for this gateway.
    #[arg(long, env = "WEIR_RACK")]
    rack: Option<String>,
    /// How often the gateway heartbeats in the metadata store, in ms [default: 500].
    #[arg(long, env = "WEIR_HEARTBEAT_INTERVAL_MS")]
    heartbeat_interval_ms: Option<u64>,
    /// A gateway silent this long is gone and its partitions move, in ms [default: 3000].
    #[arg(long, env = "WEIR_MEMBER_TIMEOUT_MS")]
    member_timeout_ms: Option<u64>,
    /// How often a gateway reads members, topics and leaders and takes or hands over
    /// partitions, in ms [default: 250].
    #[arg(long, env = "WEIR_SYNC_INTERVAL_MS")]
    sync_interval_ms: Option<u64>,
    /// `serve` only: 1 runs this process as the only gateway; auto also runs the scaler,
    /// which starts and stops `weir gateway` processes on 127.0.0.1 with the load (policy
    /// flags below) [default: 1].
    #[arg(long, env = "WEIR_GATEWAYS")]
    gateways: Option<String>,
    #[command(flatten)]
    scaling: scaler_cmd::PolicyArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Settings as the TOML file holds them; every key optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    object_store: Option<String>,
    storage: Option<String>,
    metadata: Option<String>,
    flush_bytes: Option<usize>,
    flush_interval_ms: Option<u64>,
    max_buffered_bytes: Option<usize>,
    cache_bytes: Option<u64>,
    disk_cache_bytes: Option<u64>,
    auto_create_topics: Option<bool>,
    default_partitions: Option<i32>,
    max_request_bytes: Option<usize>,
    request_memory_bytes: Option<usize>,
    offsets_retention_minutes: Option<u64>,
    retention_check_interval_ms: Option<u64>,
    compaction_interval_ms: Option<u64>,
    segment_bytes: Option<usize>,
    compaction_min_age_ms: Option<u64>,
    compaction_grace_ms: Option<u64>,
    fetch_max_bytes: Option<usize>,
    group_initial_rebalance_delay_ms: Option<u64>,
    log_format: Option<LogFormat>,
    listeners: Option<Vec<String>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    admin_listen: Option<SocketAddr>,
    admin_token: Option<String>,
    auth_region: Option<String>,
    account_id: Option<String>,
    cluster_name: Option<String>,
    auth_master_key: Option<String>,
    session_lifetime_ms: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_second: Option<u32>,
    node_id: Option<i32>,
    rack: Option<String>,
    heartbeat_interval_ms: Option<u64>,
    member_timeout_ms: Option<u64>,
    sync_interval_ms: Option<u64>,
}

/// Resolved settings of `weir serve`.
#[derive(Debug)]
struct ServeSettings {
    listeners: Vec<ListenerSpec>,
    data_dir: PathBuf,
    object_store: String,
    /// Remote storage nodes (None: the storage service runs in this process).
    storage_nodes: Option<String>,
    metadata: String,
    storage: StorageConfig,
    auto_create_topics: bool,
    default_partitions: i32,
    max_request_bytes: usize,
    request_memory_bytes: usize,
    offsets_retention: Duration,
    retention_check_interval: Duration,
    compaction: weir_gateway::compaction::CompactionConfig,
    fetch_max_bytes: usize,
    group_initial_rebalance_delay: Duration,
    log_format: LogFormat,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    admin_listen: SocketAddr,
    /// Whether the admin address was configured (else a busy default port falls back to
    /// an ephemeral one).
    admin_listen_explicit: bool,
    admin_token: Option<String>,
    auth_region: String,
    account_id: String,
    cluster_name: String,
    auth_master_key: Option<String>,
    session_lifetime: Option<Duration>,
    max_connections: usize,
    max_connections_per_second: u32,
    node_id: Option<i32>,
    cluster: weir_gateway::leadership::ClusterConfig,
    /// Whether the scaler runs local gateways beside this one.
    gateways_auto: bool,
    scaling: weir_scaler::Policy,
}

impl ServeArgs {
    fn resolve(self) -> Result<ServeSettings> {
        let file: FileSettings = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => FileSettings::default(),
        };
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("weir-data"));
        let defaults = StorageConfig::default();
        let storage = StorageConfig {
            flush_bytes: self
                .flush_bytes
                .or(file.flush_bytes)
                .unwrap_or(defaults.flush_bytes)
                .max(1),
            flush_interval: Duration::from_millis(
                self.flush_interval_ms
                    .or(file.flush_interval_ms)
                    .unwrap_or(defaults.flush_interval.as_millis() as u64),
            ),
            max_buffered_bytes: self
                .max_buffered_bytes
                .or(file.max_buffered_bytes)
                .unwrap_or(defaults.max_buffered_bytes),
            cache_bytes: self
                .cache_bytes
                .or(file.cache_bytes)
                .unwrap_or(defaults.cache_bytes),
            disk_cache: match self
                .disk_cache_bytes
                .or(file.disk_cache_bytes)
                .unwrap_or(1 << 30)
            {
                0 => None,
                bytes => Some((data_dir.join("cache"), bytes)),
            },
            ..defaults
        };
        let max_request_bytes = self
            .max_request_bytes
            .or(file.max_request_bytes)
            .unwrap_or(100 << 20);
        let request_memory_bytes = self
            .request_memory_bytes
            .or(file.request_memory_bytes)
            .unwrap_or(256 << 20);
        if request_memory_bytes < max_request_bytes {
            bail!(
                "request-memory-bytes ({request_memory_bytes}) must be at least max-request-bytes \
                 ({max_request_bytes}): a request of the largest allowed size must fit"
            );
        }
        let offsets_retention_minutes = self
            .offsets_retention_minutes
            .or(file.offsets_retention_minutes)
            .unwrap_or(7 * 24 * 60);
        if offsets_retention_minutes == 0 {
            bail!("offsets-retention-minutes must be at least 1");
        }
        if storage.max_buffered_bytes < max_request_bytes.min(16 << 20) {
            bail!(
                "max-buffered-bytes must be at least 16 MiB (or the max request size if smaller)"
            );
        }
        let default_partitions = self
            .default_partitions
            .or(file.default_partitions)
            .unwrap_or(1);
        if default_partitions < 1 {
            bail!("default-partitions must be at least 1");
        }
        let listen = self.listen.or(file.listen);
        let advertise = self.advertise.or(file.advertise);
        let extra: Vec<String> = if self.listeners.is_empty() {
            file.listeners.unwrap_or_default()
        } else {
            self.listeners
        };
        let mut listeners = Vec::new();
        if listen.is_some() || extra.is_empty() {
            listeners.push(ListenerSpec {
                protocol: SecurityProtocol::Plaintext,
                addr: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9092))),
                advertise: advertise.clone(),
                mechanisms: Vec::new(),
            });
        } else if advertise.is_some() {
            bail!("--advertise applies to --listen; give each --listener its own ?advertise=host:port");
        }
        for spec in extra {
            listeners.push(spec.parse().map_err(|e: String| anyhow::anyhow!(e))?);
        }
        let tls_cert = self.tls_cert.or(file.tls_cert);
        let tls_key = self.tls_key.or(file.tls_key);
        if tls_cert.is_some() != tls_key.is_some() {
            bail!("--tls-cert and --tls-key go together");
        }
        let admin_token = self
            .admin_token
            .or(file.admin_token)
            .filter(|t| !t.is_empty());
        let admin_listen_explicit = self.admin_listen.or(file.admin_listen);
        let admin_listen =
            admin_listen_explicit.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9644)));
        admin::check_admin_bind(admin_listen, admin_token.as_deref())?;
        Ok(ServeSettings {
            listeners,
            tls_cert,
            tls_key,
            admin_listen,
            admin_listen_explicit: admin_listen_explicit.is_some(),
            admin_token,
            auth_region: self
                .auth_region
                .or(file.auth_region)
                .unwrap_or_else(|| "us-east-1".into()),
            account_id: self
                .account_id
                .or(file.account_id)
                .unwrap_or_else(|| "000000000000".into()),
            cluster_name: self
                .cluster_name
                .or(file.cluster_name)
                .unwrap_or_else(|| "weir".into()),
            auth_master_key: self.auth_master_key.or(file.auth_master_key),
            session_lifetime: self
                .session_lifetime_ms
                .or(file.session_lifetime_ms)
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis),
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(10_000)
                .max(1),
            max_connections_per_second: self
                .max_connections_per_second
                .or(file.max_connections_per_second)
                .unwrap_or(1_000)
                .max(1),
            object_store: self.object_store.or(file.object_store).unwrap_or_else(|| {
                format!("file://{}", absolute(&data_dir.join("objects")).display())
            }),
            storage_nodes: self.storage.or(file.storage),
            metadata: self
                .metadata
                .or(file.metadata)
                .unwrap_or_else(|| format!("embedded://{}", data_dir.join("metadata").display())),
            data_dir,
            storage,
            auto_create_topics: self
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(false),
            default_partitions,
            max_request_bytes,
            request_memory_bytes,
            offsets_retention: Duration::from_secs(offsets_retention_minutes.saturating_mul(60)),
            retention_check_interval: Duration::from_millis(
                self.retention_check_interval_ms
                    .or(file.retention_check_interval_ms)
                    .unwrap_or(30_000)
                    .max(10),
            ),
            compaction: {
                let d = weir_gateway::compaction::CompactionConfig::default();
                let ms = |flag: Option<u64>, file: Option<u64>, default: Duration| {
                    flag.or(file).map(Duration::from_millis).unwrap_or(default)
                };
                weir_gateway::compaction::CompactionConfig {
                    interval: ms(
                        self.compaction_interval_ms,
                        file.compaction_interval_ms,
                        d.interval,
                    ),
                    segment_bytes: self
                        .segment_bytes
                        .or(file.segment_bytes)
                        .unwrap_or(d.segment_bytes)
                        .clamp(1 << 10, 32 << 20),
                    min_age: ms(
                        self.compaction_min_age_ms,
                        file.compaction_min_age_ms,
                        d.min_age,
                    ),
                    grace: ms(self.compaction_grace_ms, file.compaction_grace_ms, d.grace),
                    ..d
                }
            },
            fetch_max_bytes: self
                .fetch_max_bytes
                .or(file.fetch_max_bytes)
                .unwrap_or(16 << 20)
                .max(1024),
            group_initial_rebalance_delay: Duration::from_millis(
                self.group_initial_rebalance_delay_ms
                    .or(file.group_initial_rebalance_delay_ms)
                    .unwrap_or(3000),
            ),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            node_id: self.node_id.or(file.node_id),
            gateways_auto: match self.gateways.as_deref() {
                None | Some("1") => false,
                Some("auto") => true,
                Some(other) => bail!("--gateways {other}: use 1 or auto"),
            },
            scaling: self.scaling.clone().into(),
            cluster: {
                let d = weir_gateway::leadership::ClusterConfig::default();
                let ms = |flag: Option<u64>, file: Option<u64>, default: Duration| {
                    flag.or(file)
                        .map(|v| Duration::from_millis(v.max(10)))
                        .unwrap_or(default)
                };
                weir_gateway::leadership::ClusterConfig {
                    heartbeat_interval: ms(
                        self.heartbeat_interval_ms,
                        file.heartbeat_interval_ms,
                        d.heartbeat_interval,
                    ),
                    member_timeout: ms(
                        self.member_timeout_ms,
                        file.member_timeout_ms,
                        d.member_timeout,
                    ),
                    sync_interval: ms(
                        self.sync_interval_ms,
                        file.sync_interval_ms,
                        d.sync_interval,
                    ),
                    rack: self.rack.or(file.rack),
                    ..d
                }
            },
        })
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn open_metadata(url: &str) -> Result<Arc<dyn MetadataStore>> {
    let store = weir_metadata::open(url, true)
        .await
        .with_context(|| format!("opening the metadata store {url}"))?;
    // Fail at start-up, not on the first request, when the store is unreachable.
    store
        .cluster_id()
        .await
        .with_context(|| format!("reading the cluster id from {url}"))?;
    Ok(store)
}

/// Splits `host:port` (IPv6 hosts in brackets).
fn parse_host_port(s: &str) -> Result<(String, i32)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("'{s}' is not host:port"))?;
    let port: u16 = port.parse().with_context(|| format!("bad port in '{s}'"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("empty host in '{s}'");
    }
    Ok((host.to_string(), i32::from(port)))
}

/// Which command runs the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `weir serve`: alone with its store by default.
    Serve,
    /// `weir gateway`: one of several gateways sharing the stores.
    Gateway,
}

async fn serve(settings: ServeSettings, role: Role) -> Result<()> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    let embedded = settings.metadata.starts_with("embedded://");
    if role == Role::Gateway && settings.gateways_auto {
        bail!("--gateways auto is for `weir serve` (or run `weir scaler`)");
    }
    if role == Role::Gateway && embedded {
        bail!(
            "`weir gateway` shares its metadata with other gateways: give --metadata \
             dynamodb://... or quic://... (a `weir metadata` service); `weir serve` runs alone"
        );
    }
    let node_id = match (settings.node_id, role) {
        (Some(id), _) if id < 0 => bail!("--node-id must be 0 or more"),
        (Some(id), _) => id,
        (None, Role::Serve) => 0,
        // Unique with overwhelming odds; Kafka broker ids are any non-negative int32.
        (None, Role::Gateway) => (uuid::Uuid::new_v4().as_u128() % 1_000_000_000) as i32 + 1000,
    };
    let meta = open_metadata(&settings.metadata).await?;
    let registry = Arc::new(Registry::default());
    // The storage service owns "object durable -> index commit -> high watermark": it commits
    // (here, or in a storage node) and tells the gateway's high watermarks before it acks.
    let high_watermarks = Arc::new(HighWatermarks::new(registry.clone()));
    let storage: Arc<dyn Storage> = match &settings.storage_nodes {
        Some(url) => {
            if settings.metadata.starts_with("embedded://") {
                bail!(
                    "--storage {url} needs a metadata store the storage nodes share: \
                     --metadata dynamodb://... or quic://... (a `weir metadata` service)"
                );
            }
            let options = weir_storage::remote::RemoteOptions::parse(url).await?;
            Arc::new(weir_storage::remote::RemoteStorage::connect(
                &options,
                high_watermarks,
                settings.storage.max_buffered_bytes,
                settings.storage.cache_bytes,
            )?)
        }
        None => {
            let target = weir_storage::open(&settings.object_store)
                .await
                .with_context(|| format!("opening object store {}", settings.object_store))?;
            Arc::new(ObjectStorage::start_observed(
                target,
                settings.storage.clone(),
                Arc::new(weir_storage::MetadataSink::new(meta.clone())),
                high_watermarks,
            ))
        }
    };
    // Bind every listener first, so a port in use fails fast.
    let mut bound = Vec::new();
    for spec in &settings.listeners {
        let socket = tokio::net::TcpListener::bind(spec.addr)
            .await
            .with_context(|| {
                format!(
                    "binding the {} listener on {}",
                    spec.protocol.name(),
                    spec.addr
                )
            })?;
        let local = socket.local_addr()?;
        let (host, port) = match &spec.advertise {
            Some(a) => parse_host_port(a)?,
            None if local.ip().is_unspecified() => {
                tracing::warn!(listen = %local, "listening on all interfaces without an advertised \
                    address: clients are told 127.0.0.1; set one for remote clients");
                ("127.0.0.1".to_string(), i32::from(local.port()))
            }
            None => weir_gateway::advertise_from(local),
        };
        bound.push((socket, spec.clone(), host, port));
    }
    let mut tls_files: Option<(PathBuf, PathBuf)> = None;
    let tls = if settings.listeners.iter().any(|l| l.protocol.tls()) {
        let (cert, key) = match (&settings.tls_cert, &settings.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => {
                let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
                for (_, _, host, _) in &bound {
                    if !hosts.contains(host) {
                        hosts.push(host.clone());
                    }
                }
                let files =
                    weir_auth::tls::load_or_generate(&settings.data_dir.join("tls"), &hosts)?;
                tracing::info!(ca = %absolute(&files.ca).display(), "TLS listeners use the local CA; clients trust this file");
                (files.cert, files.key)
            }
        };
        tls_files = Some((cert.clone(), key.clone()));
        Some(tokio_rustls::TlsAcceptor::from(
            weir_auth::tls::server_config(&cert, &key)?,
        ))
    } else {
        None
    };
    let (host, port) = (bound[0].2.clone(), bound[0].3);
    let config = GatewayConfig {
        node_id,
        cluster: weir_gateway::leadership::ClusterConfig {
            // An embedded store is this process's alone unless it serves local gateways.
            exclusive: embedded && !settings.gateways_auto,
            ..settings.cluster.clone()
        },
        advertised_host: host,
        advertised_port: port,
        auto_create_topics: settings.auto_create_topics,
        default_partitions: settings.default_partitions,
        max_request_bytes: settings.max_request_bytes,
        request_memory_bytes: settings.request_memory_bytes,
        retention_check_interval: settings.retention_check_interval,
        compaction: settings.compaction.clone(),
        fetch_max_bytes: settings.fetch_max_bytes,
        groups: weir_gateway::groups::GroupConfig {
            initial_rebalance_delay: settings.group_initial_rebalance_delay,
            offsets_retention: settings.offsets_retention,
            ..Default::default()
        },
        max_connections: settings.max_connections,
        max_connections_per_second: settings.max_connections_per_second,
        ..GatewayConfig::default()
    };
    // Credentials and policies.
    let master = match &settings.auth_master_key {
        Some(k) => weir_auth::MasterKey::from_base64(k)?,
        None => weir_auth::MasterKey::load_or_create(
            &settings.data_dir.join("auth").join("master.key"),
        )?,
    };
    let auth_store = Arc::new(weir_auth::AuthStore::open(meta.clone(), master).await?);
    let cluster_id = meta.cluster_id().await?;
    let mut hosts: Vec<String> = bound.iter().map(|(_, _, h, _)| h.clone()).collect();
    hosts.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    let auth = Arc::new(weir_auth::Auth::new(
        auth_store,
        weir_auth::Arns::new(
            &settings.auth_region,
            &settings.account_id,
            &settings.cluster_name,
            &cluster_id,
        ),
        weir_auth::AuthConfig {
            region: settings.auth_region.clone(),
            hosts,
            max_session: settings.session_lifetime,
        },
    ));
    let admin_socket = match tokio::net::TcpListener::bind(settings.admin_listen).await {
        Ok(s) => s,
        Err(e) if !settings.admin_listen_explicit => {
            tracing::warn!(error = %e, default = %settings.admin_listen,
                "the default admin API port is busy; using an ephemeral port (logged below)");
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("binding the admin API on {}", settings.admin_listen))
        }
    };
    let admin_addr = admin_socket.local_addr()?;
    let gateway = Gateway::start(
        config,
        meta.clone(),
        storage.clone(),
        registry,
        Some(auth.clone()),
    )
    .await?;
    gateway.join().await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    let mut metrics = prometheus_client::registry::Registry::default();
    meta.register_metrics(&mut metrics);
    storage.register_metrics(&mut metrics);
    let autoscaling = if settings.gateways_auto {
        Some(
            start_local_gateways(
                &settings,
                &meta,
                tls_files.as_ref(),
                &mut metrics,
                &shutdown,
            )
            .await?,
        )
    } else {
        None
    };
    let admin_task = tokio::spawn(admin::serve_admin(
        admin_socket,
        auth,
        settings.admin_token.clone(),
        Arc::new(metrics),
        shutdown.clone(),
    ));
    let mut listeners = Vec::new();
    let mut described = Vec::new();
    for (socket, spec, host, port) in bound {
        let listener = Arc::new(Listener {
            protocol: spec.protocol,
            advertised_host: host,
            advertised_port: port,
            mechanisms: spec.mechanisms.clone(),
            tls: if spec.protocol.tls() {
                tls.clone()
            } else {
                None
            },
        });
        let mechanisms: Vec<&str> = spec.mechanisms.iter().map(|m| m.name()).collect();
        tracing::info!(protocol = spec.protocol.name(), listen = %spec.addr,
            advertised = %listener.bootstrap(), mechanisms = ?mechanisms, "listener");
        described.push(format!(
            "{}://{}",
            spec.protocol.name(),
            listener.bootstrap()
        ));
        listeners.push((socket, listener));
    }
    let bootstrap = weir_gateway::bootstrap(&gateway.config);
    tracing::info!(%bootstrap, data_dir = %settings.data_dir.display(),
        object_store = %settings.storage_nodes.as_deref().unwrap_or(&settings.object_store),
        metadata = %settings.metadata,
        admin = %admin_addr, node_id, "weir is ready");
    tracing::info!(admin = %format!("http://{admin_addr}"), listeners = %described.join(","), "admin API and listeners");
    println!("weir is ready: bootstrap.servers={bootstrap}");
    weir_gateway::run(listeners, gateway, shutdown).await;
    if let Some(auto) = autoscaling {
        // The scaler stops the local gateways (they hand their partitions over), then the
        // metadata service they used stops.
        let _ = auto.scaler.await;
        auto.metadata_stop.cancel();
        let _ = auto.metadata.await;
    }
    let _ = admin_task.await;
    tracing::info!("flushing and stopping");
    storage.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The scaler and its local gateways, for `weir serve --gateways auto`.
struct Autoscaling {
    scaler: tokio::task::JoinHandle<()>,
    metadata: tokio::task::JoinHandle<()>,
    metadata_stop: CancellationToken,
}

/// Serves this process's metadata store to local gateways over QUIC (when it is embedded)
/// and starts the scaler with a local launcher whose gateways share this process's stores
/// and settings.
async fn start_local_gateways(
    settings: &ServeSettings,
    meta: &Arc<dyn MetadataStore>,
    tls_files: Option<&(PathBuf, PathBuf)>,
    metrics: &mut prometheus_client::registry::Registry,
    shutdown: &CancellationToken,
) -> Result<Autoscaling> {
    let metadata_stop = CancellationToken::new();
    let (metadata_url, metadata) = if settings.metadata.starts_with("embedded://") {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let (cert, key, ca) = metadata_cmd::service_tls(
            &settings.data_dir.join("metadata-tls"),
            loopback,
            &[],
            None,
        )?;
        let endpoint =
            weir_rpc::server_endpoint(loopback, &cert, &key, weir_metadata::remote::ALPN)
                .context("starting the metadata service for local gateways")?;
        let addr = endpoint.local_addr()?;
        let url = format!("quic://{addr}{}", metadata_cmd::ca_param(ca.as_deref())?);
        let task = tokio::spawn(weir_rpc::serve(
            endpoint,
            Arc::new(weir_metadata::remote::MetadataServer::new(meta.clone())),
            metadata_stop.clone(),
        ));
        (url, task)
    } else {
        (settings.metadata.clone(), tokio::spawn(async {}))
    };
    let spec = &settings.listeners[0];
    let mut listener = format!("{}://127.0.0.1:0", spec.protocol.name());
    if spec.protocol.sasl() {
        let names: Vec<&str> = spec.mechanisms.iter().map(|m| m.name()).collect();
        listener.push_str(&format!("?mechanisms={}", names.join("+")));
    }
    let s = settings;
    let ms = |d: Duration| d.as_millis().to_string();
    let mut args: Vec<String> = vec![
        "--metadata".into(),
        metadata_url.clone(),
        "--listener".into(),
        listener,
        "--flush-bytes".into(),
        s.storage.flush_bytes.to_string(),
        "--flush-interval-ms".into(),
        ms(s.storage.flush_interval),
        "--max-buffered-bytes".into(),
        s.storage.max_buffered_bytes.to_string(),
        "--cache-bytes".into(),
        s.storage.cache_bytes.to_string(),
        "--disk-cache-bytes".into(),
        s.storage
            .disk_cache
            .as_ref()
            .map_or(0, |(_, b)| *b)
            .to_string(),
        "--auto-create-topics".into(),
        s.auto_create_topics.to_string(),
        "--default-partitions".into(),
        s.default_partitions.to_string(),
        "--max-request-bytes".into(),
        s.max_request_bytes.to_string(),
        "--request-memory-bytes".into(),
        s.request_memory_bytes.to_string(),
        "--offsets-retention-minutes".into(),
        (s.offsets_retention.as_secs() / 60).to_string(),
        "--retention-check-interval-ms".into(),
        ms(s.retention_check_interval),
        "--compaction-interval-ms".into(),
        ms(s.compaction.interval),
        "--segment-bytes".into(),
        s.compaction.segment_bytes.to_string(),
        "--compaction-min-age-ms".into(),
        ms(s.compaction.min_age),
        "--compaction-grace-ms".into(),
        ms(s.compaction.grace),
        "--fetch-max-bytes".into(),
        s.fetch_max_bytes.to_string(),
        "--group-initial-rebalance-delay-ms".into(),
        ms(s.group_initial_rebalance_delay),
        "--heartbeat-interval-ms".into(),
        ms(s.cluster.heartbeat_interval),
        "--member-timeout-ms".into(),
        ms(s.cluster.member_timeout),
        "--sync-interval-ms".into(),
        ms(s.cluster.sync_interval),
        "--auth-region".into(),
        s.auth_region.clone(),
        "--account-id".into(),
        s.account_id.clone(),
        "--cluster-name".into(),
        s.cluster_name.clone(),
        "--max-connections".into(),
        s.max_connections.to_string(),
        "--max-connections-per-second".into(),
        s.max_connections_per_second.to_string(),
        "--log-format".into(),
        match s.log_format {
            LogFormat::Text => "text".into(),
            LogFormat::Json => "json".into(),
        },
    ];
    match &s.storage_nodes {
        Some(nodes) => args.extend(["--storage".into(), nodes.clone()]),
        None => args.extend(["--object-store".into(), s.object_store.clone()]),
    }
    if let Some(lifetime) = s.session_lifetime {
        args.extend(["--session-lifetime-ms".into(), ms(lifetime)]);
    }
    if let Some((cert, key)) = tls_files {
        args.extend([
            "--tls-cert".into(),
            absolute(cert).display().to_string(),
            "--tls-key".into(),
            absolute(key).display().to_string(),
        ]);
    }
    // The same master key, so that every gateway reads the credentials (not on the command
    // line: other users could read it there).
    let master = match &s.auth_master_key {
        Some(k) => k.clone(),
        None => std::fs::read_to_string(s.data_dir.join("auth").join("master.key"))
            .context("reading the auth master key for local gateways")?,
    };
    let env = vec![(
        "WEIR_AUTH_MASTER_KEY".to_string(),
        master.trim().to_string(),
    )];
    let first_id = weir_scaler::next_node_id(meta.as_ref()).await?;
    let launcher = Arc::new(weir_scaler::LocalLauncher::new(
        std::env::current_exe()?,
        args,
        env,
        absolute(&s.data_dir.join("gateways")),
        first_id,
    ));
    let scaler = weir_scaler::Scaler::new(
        meta.clone(),
        launcher,
        s.scaling.clone(),
        1,
        s.cluster.member_timeout,
    );
    scaler.register_metrics(metrics);
    tracing::info!(metadata = %metadata_url, policy = ?s.scaling, "autoscaling: local gateways share this metadata service");
    println!("weir cluster metadata: {metadata_url}");
    let scaler = tokio::spawn(scaler.run(shutdown.clone(), true));
    Ok(Autoscaling {
        scaler,
        metadata,
        metadata_stop,
    })
}

/// Gives memory the allocator holds but does not use back to the system, once a second.
///
/// glibc keeps the freed blocks of the megabyte-sized request, object and response buffers in
/// its per-thread arenas: measured under load, the RSS stayed 150-250 MiB above the live heap
/// (heaptrack: 116 MiB peak live, RSS 300-500 MiB). `malloc_trim` returns those pages.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn start_allocator_trimmer() {
    #[allow(unsafe_code)]
    fn trim() {
        // SAFETY: malloc_trim only releases free memory that glibc's malloc holds; it takes no
        // pointers and may be called from any thread at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }
    let spawned = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
            trim();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the allocator trimmer");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn start_allocator_trimmer() {}

async fn signal_shutdown(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested");
    token.cancel();
}

/// `weir serve` and `weir gateway`.
fn run_gateway(args: ServeArgs, role: Role) -> Result<()> {
    let settings = args.resolve()?;
    init_logging(settings.log_format);
    start_allocator_trimmer();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // Few blocking threads: each thread that allocates large buffers keeps an allocator
        // arena of its own (measured: hundreds of MiB of RSS over the live heap), and the
        // blocking work (file and metadata I/O) is mostly serial.
        .max_blocking_threads(4)
        .enable_all()
        .build()?;
    runtime.block_on(serve(settings, role))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => run_gateway(*args, Role::Serve),
        Command::Gateway(args) => run_gateway(*args, Role::Gateway),
        Command::Lag(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(lag(args))
        }
        Command::Auth(args) => admin::run_auth(args),
        Command::Metadata(args) => metadata_cmd::run(args),
        Command::Storage(args) => storage_cmd::run(*args),
        Command::Scaler(args) => scaler_cmd::run(*args),
        Command::Partitions(args) => scaler_cmd::run_partitions(args),
        Command::Tls(TlsCommand::Generate { out, hosts }) => {
            let hosts = if hosts.is_empty() {
                vec!["localhost".to_string(), "127.0.0.1".to_string()]
            } else {
                hosts
            };
            let files = weir_auth::tls::generate(&out, &hosts)?;
            println!(
                "{}",
                serde_json::json!({
                    "ca": files.ca, "cert": files.cert, "key": files.key, "hosts": hosts
                })
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_readme() -> Result<()> {
        let s = ServeArgs::default().resolve()?;
        assert_eq!(s.listeners.len(), 1);
        assert_eq!(s.listeners[0].addr.to_string(), "127.0.0.1:9092");
        assert_eq!(s.listeners[0].protocol, SecurityProtocol::Plaintext);
        assert_eq!(s.data_dir, PathBuf::from("weir-data"));
        assert!(
            s.object_store.starts_with("file://") && s.object_store.ends_with("weir-data/objects")
        );
        assert_eq!(s.metadata, "embedded://weir-data/metadata");
        assert!(!s.auto_create_topics);
        Ok(())
    }

    #[test]
    fn flags_win_over_the_file() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("weir.toml");
        std::fs::write(
            &path,
            "flush_interval_ms = 50\ndefault_partitions = 3\nauto_create_topics = true\n",
        )?;
        let args = ServeArgs {
            config: Some(path),
            default_partitions: Some(6),
            ..Default::default()
        };
        let s = args.resolve()?;
        assert_eq!(s.storage.flush_interval, Duration::from_millis(50));
        assert_eq!(s.default_partitions, 6);
        assert!(s.auto_create_topics);
        Ok(())
    }

    #[test]
    fn unknown_file_keys_are_refused() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, "flush_intervall_ms = 50\n")?;
        assert!(ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .is_err());
        Ok(())
    }

    #[test]
    fn host_port_parsing() -> Result<()> {
        assert_eq!(
            parse_host_port("kafka.example.com:9098")?,
            ("kafka.example.com".to_string(), 9098)
        );
        assert_eq!(parse_host_port("[::1]:9092")?, ("::1".to_string(), 9092));
        assert!(parse_host_port("nohost").is_err());
        Ok(())
    }
}
