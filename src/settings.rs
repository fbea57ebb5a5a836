//! One `Settings` for every command: the TOML file users write (`--config`), the flags and
//! environment variables of `weir serve` / `weir gateway` (the same struct, as clap args), the
//! storage keys `weir storage` shares, and the file a `weir serve --gateways auto` hands to its
//! child gateways.
//!
//! Resolution is generic: flags over the file over the defaults ([`Settings::over`]), then one
//! validation ([`ServeSettings::new`], [`Settings::storage_config`]) turns the effective
//! settings into the components' configs, with an error naming the key when a value is refused.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weir_gateway::listener::{ListenerSpec, SecurityProtocol};
use weir_storage::StorageConfig;

/// Default data directory of `serve`, `gateway` and `storage`.
pub(crate) const DEFAULT_DATA_DIR: &str = "weir-data";
/// Default largest request, in bytes.
const DEFAULT_MAX_REQUEST_BYTES: usize = 100 << 20;
/// The least `max_buffered_bytes` (or the largest request if smaller): an append of the
/// largest request must fit in the buffer.
const MIN_BUFFERED_BYTES: usize = 16 << 20;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Every setting of `weir serve` and `weir gateway`, as flags, environment variables and TOML
/// keys (the flag names with underscores); every key optional. The same struct holds a partial
/// set (what one source gives) and the effective set (after [`Settings::effective`]).
#[derive(Args, Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// Kafka listener address [default: 127.0.0.1:9092].
    #[arg(long, env = "WEIR_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// host:port clients are told to connect to [default: the listen address].
    #[arg(long, env = "WEIR_ADVERTISE")]
    pub(crate) advertise: Option<String>,
    /// Directory for data and metadata [default: ./weir-data].
    #[arg(long, env = "WEIR_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Object store URL: file:///path or memory:// [default: file://<data-dir>/objects].
    #[arg(long, env = "WEIR_OBJECT_STORE")]
    pub(crate) object_store: Option<String>,
    /// Storage nodes to use instead of the in-process storage service:
    /// quic://host:port[,host:port...]?ca=PATH (`weir storage` processes; they own the
    /// object store, and --object-store is then unused) [default: in-process].
    #[arg(long, env = "WEIR_STORAGE")]
    pub(crate) storage: Option<String>,
    /// Metadata store URL: embedded://path, dynamodb://table-prefix[?region=R&endpoint=URL]
    /// (tables created if missing) or quic://host:port?ca=PATH (a `weir metadata` service)
    /// [default: embedded://<data-dir>/metadata].
    #[arg(long, env = "WEIR_METADATA")]
    pub(crate) metadata: Option<String>,
    /// Flush an object once this many bytes are buffered [default: 4194304].
    #[arg(long, env = "WEIR_FLUSH_BYTES")]
    pub(crate) flush_bytes: Option<usize>,
    /// Flush an object at most this many ms after its first batch arrived; 0 flushes as soon
    /// as the previous flush is done (group commit) [default: 0].
    #[arg(long, env = "WEIR_FLUSH_INTERVAL_MS")]
    pub(crate) flush_interval_ms: Option<u64>,
    /// Bytes buffered or flushing before producers are slowed down [default: 33554432].
    #[arg(long, env = "WEIR_MAX_BUFFERED_BYTES")]
    pub(crate) max_buffered_bytes: Option<usize>,
    /// Bytes of recently written or read objects kept in memory [default: 33554432].
    #[arg(long, env = "WEIR_CACHE_BYTES")]
    pub(crate) cache_bytes: Option<u64>,
    /// Bytes of object chunks kept on local disk (in <data-dir>/cache) when the object store
    /// is remote (s3://); 0 turns the disk tier off [default: 1073741824].
    #[arg(long, env = "WEIR_DISK_CACHE_BYTES")]
    pub(crate) disk_cache_bytes: Option<u64>,
    /// Create unknown topics when a client asks for them (off by default).
    #[arg(long, env = "WEIR_AUTO_CREATE_TOPICS", num_args = 0..=1, default_missing_value = "true")]
    pub(crate) auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics and of CreateTopics with -1 [default: 1].
    #[arg(long, env = "WEIR_DEFAULT_PARTITIONS")]
    pub(crate) default_partitions: Option<i32>,
    /// Largest request accepted, in bytes [default: 104857600].
    #[arg(long, env = "WEIR_MAX_REQUEST_BYTES")]
    pub(crate) max_request_bytes: Option<usize>,
    /// Request bytes held across all connections (frames being read and requests not yet
    /// answered); a frame waits for room instead of growing memory. At least
    /// max-request-bytes [default: 268435456].
    #[arg(long, env = "WEIR_REQUEST_MEMORY_BYTES")]
    pub(crate) request_memory_bytes: Option<usize>,
    /// Committed offsets of a group without members expire after this many minutes
    /// (Kafka's offsets.retention.minutes) [default: 10080].
    #[arg(long, env = "WEIR_OFFSETS_RETENTION_MINUTES")]
    pub(crate) offsets_retention_minutes: Option<u64>,
    /// How often retention (retention.ms, retention.bytes) is applied, in ms [default: 30000].
    #[arg(long, env = "WEIR_RETENTION_CHECK_INTERVAL_MS")]
    pub(crate) retention_check_interval_ms: Option<u64>,
    /// How often small flush objects are compacted into per-partition segments, in ms; 0
    /// turns compaction off [default: 60000].
    #[arg(long, env = "WEIR_COMPACTION_INTERVAL_MS")]
    pub(crate) compaction_interval_ms: Option<u64>,
    /// Target size of compacted segments, in bytes, at most 33554432 [default: 8388608].
    #[arg(long, env = "WEIR_SEGMENT_BYTES")]
    pub(crate) segment_bytes: Option<usize>,
    /// Only objects at least this old are compacted, in ms [default: 60000].
    #[arg(long, env = "WEIR_COMPACTION_MIN_AGE_MS")]
    pub(crate) compaction_min_age_ms: Option<u64>,
    /// How long compacted-away objects stay readable before they are deleted, in ms
    /// [default: 60000].
    #[arg(long, env = "WEIR_COMPACTION_GRACE_MS")]
    pub(crate) compaction_grace_ms: Option<u64>,
    /// Most record bytes one Fetch response returns, whatever the client asks (Kafka's broker
    /// fetch.max.bytes) [default: 16777216].
    #[arg(long, env = "WEIR_FETCH_MAX_BYTES")]
    pub(crate) fetch_max_bytes: Option<usize>,
    /// Delay before a new consumer group's first rebalance completes, in ms (Kafka's
    /// group.initial.rebalance.delay.ms) [default: 3000].
    #[arg(long, env = "WEIR_GROUP_INITIAL_REBALANCE_DELAY_MS")]
    pub(crate) group_initial_rebalance_delay_ms: Option<u64>,
    /// Log format: text or json [default: text]. Levels come from RUST_LOG (default info).
    #[arg(long, env = "WEIR_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
    /// A Kafka listener, repeatable: PROTOCOL://HOST:PORT[?mechanisms=A+B&advertise=H:P] with
    /// PROTOCOL one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL. Given alone, these are the
    /// only listeners; with --listen, that one is an extra PLAINTEXT listener.
    #[arg(long = "listener", env = "WEIR_LISTENERS", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) listeners: Vec<String>,
    /// PEM certificate chain for TLS listeners [default: a self-signed set generated under
    /// <data-dir>/tls].
    #[arg(long, env = "WEIR_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key for TLS listeners.
    #[arg(long, env = "WEIR_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Admin API address (used by `weir auth`) [default: 127.0.0.1:9644].
    #[arg(long, env = "WEIR_ADMIN_LISTEN")]
    pub(crate) admin_listen: Option<SocketAddr>,
    /// Bearer token the admin API requires (required if it listens beyond loopback).
    #[arg(long, env = "WEIR_ADMIN_TOKEN")]
    pub(crate) admin_token: Option<String>,
    /// Region IAM tokens must be signed for, and of the ARNs [default: us-east-1].
    #[arg(long, env = "WEIR_AUTH_REGION")]
    pub(crate) auth_region: Option<String>,
    /// Account id in the ARNs policies name [default: 000000000000].
    #[arg(long, env = "WEIR_ACCOUNT_ID")]
    pub(crate) account_id: Option<String>,
    /// Cluster name in the ARNs policies name [default: weir].
    #[arg(long, env = "WEIR_CLUSTER_NAME")]
    pub(crate) cluster_name: Option<String>,
    /// Ports of tenant clusters, START-END: each cluster the MSK API creates gets one
    /// (SASL_SSL, IAM), bound on the first listener's host; `off` serves none
    /// [default: 19100-20099].
    #[arg(long, env = "WEIR_CLUSTER_PORTS")]
    pub(crate) cluster_ports: Option<String>,
    /// Host name tenant clusters' bootstrap strings give (and the TLS certificate covers)
    /// [default: the first listener's advertised host].
    #[arg(long, env = "WEIR_CLUSTER_ADVERTISE_HOST")]
    pub(crate) cluster_advertise_host: Option<String>,
    /// Base64 of the 32-byte key that encrypts secret access keys at rest [default: read from
    /// (or generated into) <data-dir>/auth/master.key].
    #[arg(long, env = "WEIR_AUTH_MASTER_KEY", hide_env_values = true)]
    pub(crate) auth_master_key: Option<String>,
    /// Session lifetime of SCRAM/PLAIN logins in ms, after which clients re-authenticate
    /// (KIP-368); 0: unlimited. IAM sessions end when their token expires [default: 0].
    #[arg(long, env = "WEIR_SESSION_LIFETIME_MS")]
    pub(crate) session_lifetime_ms: Option<u64>,
    /// Most open client connections [default: 10000].
    #[arg(long, env = "WEIR_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// Most new client connections per second [default: 1000].
    #[arg(long, env = "WEIR_MAX_CONNECTIONS_PER_SECOND")]
    pub(crate) max_connections_per_second: Option<u32>,
    /// This gateway's broker id, unique in the cluster [default: 0 for `serve`, a random
    /// id for `gateway`].
    #[arg(long, env = "WEIR_NODE_ID")]
    pub(crate) node_id: Option<i32>,
    /// Rack (availability zone) clients see for this gateway.
    #[arg(long, env = "WEIR_RACK")]
    pub(crate) rack: Option<String>,
    /// How often the gateway heartbeats in the metadata store, in ms [default: 500].
    #[arg(long, env = "WEIR_HEARTBEAT_INTERVAL_MS")]
    pub(crate) heartbeat_interval_ms: Option<u64>,
    /// A gateway silent this long is gone and its partitions move, in ms [default: 3000].
    #[arg(long, env = "WEIR_MEMBER_TIMEOUT_MS")]
    pub(crate) member_timeout_ms: Option<u64>,
    /// How often a gateway reads members, topics and leaders and takes or hands over
    /// partitions, in ms [default: 250].
    #[arg(long, env = "WEIR_SYNC_INTERVAL_MS")]
    pub(crate) sync_interval_ms: Option<u64>,
}

/// A key of the effective settings (every key with a default has a value there).
macro_rules! get {
    ($s:expr, $key:ident) => {
        $s.$key
            .clone()
            .with_context(|| format!("setting {} has no value", stringify!($key)))?
    };
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The settings as a TOML table (keys without a value are left out).
fn table(s: &Settings) -> Result<toml::Table> {
    match toml::Value::try_from(s)
        .context("a setting is out of range (TOML integers are at most 9223372036854775807)")?
    {
        toml::Value::Table(t) => Ok(t),
        other => bail!("settings are not a table: {other}"),
    }
}

impl Settings {
    /// Reads a TOML settings file (unknown keys are refused).
    pub(crate) fn load(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// The settings as a TOML file holds them.
    pub(crate) fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("rendering the settings as TOML")
    }

    /// Writes the settings as a TOML file only its owner can read (it may hold the admin
    /// token).
    pub(crate) fn write_private(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let text = self.to_toml()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // A fresh file, so that the mode applies (an existing one keeps its mode).
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => {}
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// `self` over `lower`: each key `self` gives wins, the others come from `lower` (flags
    /// and environment over the file, anything over the defaults).
    pub(crate) fn over(&self, lower: &Settings) -> Result<Settings> {
        let mut merged = table(lower)?;
        merged.extend(table(self)?);
        toml::Value::Table(merged)
            .try_into()
            .context("merging settings")
    }

    /// The defaults of every key that has one; the others (listen, advertise, listeners,
    /// storage, tls_cert, tls_key, admin_listen, admin_token, auth_master_key, node_id, rack)
    /// mean something when absent.
    pub(crate) fn defaults(data_dir: &Path) -> Settings {
        let storage = StorageConfig::default();
        let compaction = weir_gateway::compaction::CompactionConfig::default();
        let cluster = weir_gateway::leadership::ClusterConfig::default();
        Settings {
            data_dir: Some(data_dir.to_path_buf()),
            object_store: Some(format!(
                "file://{}",
                crate::absolute(&data_dir.join("objects")).display()
            )),
            metadata: Some(format!(
                "embedded://{}",
                data_dir.join("metadata").display()
            )),
            flush_bytes: Some(storage.flush_bytes),
            flush_interval_ms: Some(millis(storage.flush_interval)),
            max_buffered_bytes: Some(storage.max_buffered_bytes),
            cache_bytes: Some(storage.cache_bytes),
            disk_cache_bytes: Some(1 << 30),
            auto_create_topics: Some(false),
            default_partitions: Some(1),
            max_request_bytes: Some(DEFAULT_MAX_REQUEST_BYTES),
            request_memory_bytes: Some(256 << 20),
            offsets_retention_minutes: Some(7 * 24 * 60),
            retention_check_interval_ms: Some(30_000),
            compaction_interval_ms: Some(millis(compaction.interval)),
            segment_bytes: Some(compaction.segment_bytes),
            compaction_min_age_ms: Some(millis(compaction.min_age)),
            compaction_grace_ms: Some(millis(compaction.grace)),
            fetch_max_bytes: Some(16 << 20),
            group_initial_rebalance_delay_ms: Some(3000),
            log_format: Some(LogFormat::Text),
            auth_region: Some("us-east-1".into()),
            account_id: Some("000000000000".into()),
            cluster_name: Some("weir".into()),
            cluster_ports: Some("19100-20099".into()),
            cluster_advertise_host: None,
            session_lifetime_ms: Some(0),
            max_connections: Some(10_000),
            max_connections_per_second: Some(1_000),
            heartbeat_interval_ms: Some(millis(cluster.heartbeat_interval)),
            member_timeout_ms: Some(millis(cluster.member_timeout)),
            sync_interval_ms: Some(millis(cluster.sync_interval)),
            ..Settings::default()
        }
    }

    /// These settings over the defaults (of their data dir): every key that has a default
    /// has a value.
    pub(crate) fn effective(&self) -> Result<Settings> {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        self.over(&Settings::defaults(&data_dir))
    }

    /// The storage service's config from the effective settings: the keys `serve`, `gateway`
    /// and `storage` share, validated the same way for the three.
    pub(crate) fn storage_config(&self) -> Result<StorageConfig> {
        let data_dir: PathBuf = get!(self, data_dir);
        let max_request_bytes: usize = get!(self, max_request_bytes);
        let max_buffered_bytes: usize = get!(self, max_buffered_bytes);
        if max_buffered_bytes < max_request_bytes.min(MIN_BUFFERED_BYTES) {
            bail!(
                "max-buffered-bytes must be at least 16 MiB (or the max request size if \
                 smaller): {max_buffered_bytes} given, an append of {} bytes must fit",
                max_request_bytes.min(MIN_BUFFERED_BYTES)
            );
        }
        Ok(StorageConfig {
            flush_bytes: get!(self, flush_bytes).max(1),
            flush_interval: Duration::from_millis(get!(self, flush_interval_ms)),
            max_buffered_bytes,
            cache_bytes: get!(self, cache_bytes),
            disk_cache: match get!(self, disk_cache_bytes) {
                0 => None,
                bytes => Some((data_dir.join("cache"), bytes)),
            },
            ..StorageConfig::default()
        })
    }
}

/// Resolved settings of `weir serve` and `weir gateway`.
#[derive(Debug)]
pub(crate) struct ServeSettings {
    /// The effective settings these were resolved from (what child gateways get).
    pub(crate) settings: Settings,
    pub(crate) listeners: Vec<ListenerSpec>,
    pub(crate) data_dir: PathBuf,
    pub(crate) object_store: String,
    /// Remote storage nodes (None: the storage service runs in this process).
    pub(crate) storage_nodes: Option<String>,
    pub(crate) metadata: String,
    pub(crate) storage: StorageConfig,
    pub(crate) auto_create_topics: bool,
    pub(crate) default_partitions: i32,
    pub(crate) max_request_bytes: usize,
    pub(crate) request_memory_bytes: usize,
    pub(crate) offsets_retention: Duration,
    pub(crate) retention_check_interval: Duration,
    pub(crate) compaction: weir_gateway::compaction::CompactionConfig,
    pub(crate) fetch_max_bytes: usize,
    pub(crate) group_initial_rebalance_delay: Duration,
    pub(crate) log_format: LogFormat,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    pub(crate) admin_listen: SocketAddr,
    /// Whether the admin address was configured (else a busy default port falls back to
    /// an ephemeral one).
    pub(crate) admin_listen_explicit: bool,
    pub(crate) admin_token: Option<String>,
    pub(crate) auth_region: String,
    pub(crate) account_id: String,
    pub(crate) cluster_name: String,
    /// Tenant cluster ports: the first and how many (None: no tenant clusters).
    pub(crate) cluster_ports: Option<(u16, u32)>,
    pub(crate) cluster_advertise_host: Option<String>,
    pub(crate) auth_master_key: Option<String>,
    pub(crate) session_lifetime: Option<Duration>,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_second: u32,
    pub(crate) node_id: Option<i32>,
    pub(crate) cluster: weir_gateway::leadership::ClusterConfig,
    /// Whether the scaler runs local gateways beside this one.
    pub(crate) gateways_auto: bool,
    pub(crate) scaling: weir_scaler::Policy,
}

impl ServeSettings {
    /// Flags (and environment) over the file over the defaults, validated.
    pub(crate) fn resolve(
        flags: &Settings,
        config: Option<&Path>,
        gateways: Option<&str>,
        scaling: weir_scaler::Policy,
    ) -> Result<ServeSettings> {
        let file = match config {
            Some(path) => Settings::load(path)?,
            None => Settings::default(),
        };
        ServeSettings::new(flags.over(&file)?.effective()?, gateways, scaling)
    }

    /// Validates the effective settings `s` and builds the components' configs from them.
    pub(crate) fn new(
        s: Settings,
        gateways: Option<&str>,
        scaling: weir_scaler::Policy,
    ) -> Result<ServeSettings> {
        let max_request_bytes: usize = get!(s, max_request_bytes);
        let request_memory_bytes: usize = get!(s, request_memory_bytes);
        if request_memory_bytes < max_request_bytes {
            bail!(
                "request-memory-bytes ({request_memory_bytes}) must be at least max-request-bytes \
                 ({max_request_bytes}): a request of the largest allowed size must fit"
            );
        }
        let offsets_retention_minutes: u64 = get!(s, offsets_retention_minutes);
        if offsets_retention_minutes == 0 {
            bail!("offsets-retention-minutes must be at least 1");
        }
        let storage = s.storage_config()?;
        let default_partitions: i32 = get!(s, default_partitions);
        if default_partitions < 1 {
            bail!("default-partitions must be at least 1");
        }
        let mut listeners = Vec::new();
        if s.listen.is_some() || s.listeners.is_empty() {
            listeners.push(ListenerSpec {
                protocol: SecurityProtocol::Plaintext,
                addr: s
                    .listen
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9092))),
                advertise: s.advertise.clone(),
                mechanisms: Vec::new(),
            });
        } else if s.advertise.is_some() {
            bail!("--advertise applies to --listen; give each --listener its own ?advertise=host:port");
        }
        for spec in &s.listeners {
            listeners.push(spec.parse().map_err(|e: String| anyhow::anyhow!(e))?);
        }
        if s.tls_cert.is_some() != s.tls_key.is_some() {
            bail!("--tls-cert and --tls-key go together");
        }
        let admin_token = s.admin_token.clone().filter(|t| !t.is_empty());
        let admin_listen = s
            .admin_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9644)));
        weir_admin::check_admin_bind(admin_listen, admin_token.as_deref())?;
        let gateways_auto = match gateways {
            None | Some("1") => false,
            Some("auto") => true,
            Some(other) => bail!("--gateways {other}: use 1 or auto"),
        };
        let compaction = {
            let d = weir_gateway::compaction::CompactionConfig::default();
            weir_gateway::compaction::CompactionConfig {
                interval: Duration::from_millis(get!(s, compaction_interval_ms)),
                segment_bytes: get!(s, segment_bytes).clamp(1 << 10, 32 << 20),
                min_age: Duration::from_millis(get!(s, compaction_min_age_ms)),
                grace: Duration::from_millis(get!(s, compaction_grace_ms)),
                ..d
            }
        };
        let cluster = {
            let ms = |v: u64| Duration::from_millis(v.max(10));
            weir_gateway::leadership::ClusterConfig {
                heartbeat_interval: ms(get!(s, heartbeat_interval_ms)),
                member_timeout: ms(get!(s, member_timeout_ms)),
                sync_interval: ms(get!(s, sync_interval_ms)),
                rack: s.rack.clone(),
                ..weir_gateway::leadership::ClusterConfig::default()
            }
        };
        Ok(ServeSettings {
            listeners,
            tls_cert: s.tls_cert.clone(),
            tls_key: s.tls_key.clone(),
            admin_listen,
            admin_listen_explicit: s.admin_listen.is_some(),
            admin_token,
            auth_region: get!(s, auth_region),
            account_id: get!(s, account_id),
            cluster_name: get!(s, cluster_name),
            cluster_ports: parse_port_range(&get!(s, cluster_ports))?,
            cluster_advertise_host: s.cluster_advertise_host.clone(),
            auth_master_key: s.auth_master_key.clone(),
            session_lifetime: Some(get!(s, session_lifetime_ms))
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis),
            max_connections: get!(s, max_connections).max(1),
            max_connections_per_second: get!(s, max_connections_per_second).max(1),
            object_store: get!(s, object_store),
            storage_nodes: s.storage.clone(),
            metadata: get!(s, metadata),
            data_dir: get!(s, data_dir),
            storage,
            auto_create_topics: get!(s, auto_create_topics),
            default_partitions,
            max_request_bytes,
            request_memory_bytes,
            offsets_retention: Duration::from_secs(offsets_retention_minutes.saturating_mul(60)),
            retention_check_interval: Duration::from_millis(
                get!(s, retention_check_interval_ms).max(10),
            ),
            compaction,
            fetch_max_bytes: get!(s, fetch_max_bytes).max(1024),
            group_initial_rebalance_delay: Duration::from_millis(get!(
                s,
                group_initial_rebalance_delay_ms
            )),
            log_format: get!(s, log_format),
            node_id: s.node_id,
            gateways_auto,
            scaling,
            cluster,
            settings: s,
        })
    }

    /// The settings file a local child gateway gets: these effective settings, with the
    /// metadata service this process serves them, one listener on an ephemeral loopback port
    /// of the first listener's protocol and mechanisms, and this process's TLS files. What
    /// differs per child comes as flags from the launcher (--node-id, --data-dir,
    /// --admin-listen); the auth master key comes in the environment, not in the file.
    pub(crate) fn child_settings(
        &self,
        metadata_url: &str,
        tls_files: Option<&(PathBuf, PathBuf)>,
    ) -> Settings {
        let mut listener = "PLAINTEXT://127.0.0.1:0".to_string();
        if let Some(spec) = self.listeners.first() {
            listener = format!("{}://127.0.0.1:0", spec.protocol.name());
            if spec.protocol.sasl() {
                let names: Vec<&str> = spec.mechanisms.iter().map(|m| m.name()).collect();
                listener.push_str(&format!("?mechanisms={}", names.join("+")));
            }
        }
        Settings {
            metadata: Some(metadata_url.to_string()),
            listen: None,
            advertise: None,
            listeners: vec![listener],
            tls_cert: tls_files.map(|(cert, _)| crate::absolute(cert)),
            tls_key: tls_files.map(|(_, key)| crate::absolute(key)),
            data_dir: None,
            node_id: None,
            admin_listen: None,
            auth_master_key: None,
            // Gateways on one host cannot share the cluster ports: the parent serves them.
            cluster_ports: Some("off".into()),
            ..self.settings.clone()
        }
    }
}

/// `START-END` (inclusive) as (first port, count); `off` as None.
fn parse_port_range(text: &str) -> Result<Option<(u16, u32)>> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let parsed = text
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)));
    match parsed {
        Some((start, end)) if start > 0 && start <= end => {
            Ok(Some((start, u32::from(end - start) + 1)))
        }
        _ => bail!("--cluster-ports {text}: expected START-END (e.g. 19100-20099) or off"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn cluster_port_ranges() {
        assert_eq!(
            parse_port_range("19100-20099").ok(),
            Some(Some((19100, 1000)))
        );
        assert_eq!(parse_port_range("off").ok(), Some(None));
        for bad in ["", "5", "10-5", "0-3", "a-b", "1-70000"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }

    /// `weir serve`'s resolution of these flags and this file.
    fn resolve(flags: &Settings, config: Option<&Path>) -> Result<ServeSettings> {
        ServeSettings::resolve(flags, config, None, weir_scaler::Policy::default())
    }

    /// The settings a child gateway must share with its parent, as text.
    fn shared(s: &ServeSettings) -> String {
        format!(
            "{:?}",
            (
                (
                    s.storage.flush_bytes,
                    s.storage.flush_interval,
                    s.storage.max_buffered_bytes,
                    s.storage.cache_bytes,
                    s.storage.disk_cache.as_ref().map(|(_, bytes)| *bytes),
                ),
                (&s.object_store, &s.storage_nodes, s.auto_create_topics),
                (
                    s.default_partitions,
                    s.max_request_bytes,
                    s.request_memory_bytes
                ),
                (
                    s.offsets_retention,
                    s.retention_check_interval,
                    &s.compaction
                ),
                (
                    s.fetch_max_bytes,
                    s.group_initial_rebalance_delay,
                    s.log_format
                ),
                (
                    &s.admin_token,
                    &s.auth_region,
                    &s.account_id,
                    &s.cluster_name
                ),
                (
                    s.session_lifetime,
                    s.max_connections,
                    s.max_connections_per_second
                ),
                &s.cluster,
            )
        )
    }

    /// Settings away from every default.
    fn custom() -> Settings {
        Settings {
            data_dir: Some(PathBuf::from("/tmp/weir-parent")),
            flush_bytes: Some(1 << 20),
            flush_interval_ms: Some(7),
            max_buffered_bytes: Some(20 << 20),
            cache_bytes: Some(5 << 20),
            disk_cache_bytes: Some(3 << 20),
            auto_create_topics: Some(true),
            default_partitions: Some(4),
            max_request_bytes: Some(8 << 20),
            request_memory_bytes: Some(64 << 20),
            offsets_retention_minutes: Some(90),
            retention_check_interval_ms: Some(1234),
            compaction_interval_ms: Some(0),
            segment_bytes: Some(2 << 20),
            compaction_min_age_ms: Some(11),
            compaction_grace_ms: Some(12),
            fetch_max_bytes: Some(4 << 20),
            group_initial_rebalance_delay_ms: Some(13),
            log_format: Some(LogFormat::Json),
            listeners: vec!["SASL_PLAINTEXT://127.0.0.1:0?mechanisms=SCRAM-SHA-512".into()],
            admin_token: Some("sekrit-token".into()),
            auth_region: Some("eu-west-3".into()),
            account_id: Some("123456789012".into()),
            cluster_name: Some("prod".into()),
            auth_master_key: Some("bWFzdGVyLWtleS1tYXN0ZXIta2V5LW1hc3Rlci1rZXk=".into()),
            session_lifetime_ms: Some(60_000),
            max_connections: Some(77),
            max_connections_per_second: Some(88),
            node_id: Some(5),
            rack: Some("az-1".into()),
            heartbeat_interval_ms: Some(100),
            member_timeout_ms: Some(1000),
            sync_interval_ms: Some(50),
            ..Settings::default()
        }
    }

    #[test]
    fn defaults_match_the_readme() -> Result<()> {
        let s = resolve(&Settings::default(), None)?;
        assert_eq!(s.listeners.len(), 1);
        assert_eq!(s.listeners[0].addr.to_string(), "127.0.0.1:9092");
        assert_eq!(s.listeners[0].protocol, SecurityProtocol::Plaintext);
        assert_eq!(s.data_dir, PathBuf::from("weir-data"));
        assert!(
            s.object_store.starts_with("file://") && s.object_store.ends_with("weir-data/objects")
        );
        assert_eq!(s.metadata, "embedded://weir-data/metadata");
        assert!(!s.auto_create_topics);
        // The rest of the README's table.
        assert_eq!(s.storage.flush_bytes, 4194304);
        assert_eq!(s.storage.flush_interval, Duration::ZERO);
        assert_eq!(s.storage.max_buffered_bytes, 33554432);
        assert_eq!(s.storage.cache_bytes, 33554432);
        assert_eq!(
            s.storage.disk_cache,
            Some((PathBuf::from("weir-data/cache"), 1073741824))
        );
        assert_eq!(s.fetch_max_bytes, 16777216);
        assert_eq!(s.default_partitions, 1);
        assert_eq!(s.max_request_bytes, 104857600);
        assert_eq!(s.request_memory_bytes, 268435456);
        assert_eq!(s.offsets_retention, Duration::from_secs(10080 * 60));
        assert_eq!(s.retention_check_interval, Duration::from_millis(30000));
        assert_eq!(s.compaction.interval, Duration::from_millis(60000));
        assert_eq!(s.compaction.segment_bytes, 8388608);
        assert_eq!(s.compaction.min_age, Duration::from_millis(60000));
        assert_eq!(s.compaction.grace, Duration::from_millis(60000));
        assert_eq!(s.group_initial_rebalance_delay, Duration::from_millis(3000));
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.admin_listen.to_string(), "127.0.0.1:9644");
        assert!(!s.admin_listen_explicit);
        assert_eq!(s.admin_token, None);
        assert_eq!(
            (&*s.auth_region, &*s.account_id, &*s.cluster_name),
            ("us-east-1", "000000000000", "weir")
        );
        assert_eq!(s.session_lifetime, None);
        assert_eq!(
            (s.max_connections, s.max_connections_per_second),
            (10000, 1000)
        );
        assert_eq!(s.cluster.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(s.cluster.member_timeout, Duration::from_millis(3000));
        assert_eq!(s.cluster.sync_interval, Duration::from_millis(250));
        assert_eq!(s.node_id, None);
        assert!(!s.gateways_auto);
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
        let flags = Settings {
            default_partitions: Some(6),
            ..Default::default()
        };
        let s = resolve(&flags, Some(&path))?;
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
        let err = resolve(&Settings::default(), Some(&path))
            .err()
            .context("an unknown key must be refused")?;
        let text = format!("{err:#}");
        assert!(text.contains("flush_intervall_ms"), "{text}");
        assert!(text.contains("weir.toml"), "{text}");
        Ok(())
    }

    #[test]
    fn the_files_users_write_keep_working() -> Result<()> {
        // The README's example, and every key the file took before `Settings`.
        let readme = "listen = \"0.0.0.0:9092\"\nadvertise = \"kafka.internal:9092\"\n\
            data_dir = \"/var/lib/weir\"\nflush_interval_ms = 5\nauto_create_topics = true\n\
            default_partitions = 6\n";
        let s: Settings = toml::from_str(readme)?;
        assert_eq!(s.listen, Some("0.0.0.0:9092".parse()?));
        assert_eq!(s.advertise.as_deref(), Some("kafka.internal:9092"));
        assert_eq!(s.flush_interval_ms, Some(5));
        let every_key = r#"
            listen = "127.0.0.1:9092"
            advertise = "h:1"
            data_dir = "d"
            object_store = "memory://"
            storage = "quic://127.0.0.1:1"
            metadata = "dynamodb://t"
            flush_bytes = 1
            flush_interval_ms = 1
            max_buffered_bytes = 16777216
            cache_bytes = 1
            disk_cache_bytes = 0
            auto_create_topics = false
            default_partitions = 1
            max_request_bytes = 1
            request_memory_bytes = 1
            offsets_retention_minutes = 1
            retention_check_interval_ms = 1
            compaction_interval_ms = 1
            segment_bytes = 1
            compaction_min_age_ms = 1
            compaction_grace_ms = 1
            fetch_max_bytes = 1
            group_initial_rebalance_delay_ms = 1
            log_format = "json"
            listeners = ["PLAINTEXT://127.0.0.1:9093"]
            tls_cert = "c"
            tls_key = "k"
            admin_listen = "127.0.0.1:1"
            admin_token = "t"
            auth_region = "r"
            account_id = "a"
            cluster_name = "c"
            auth_master_key = "m"
            session_lifetime_ms = 1
            max_connections = 1
            max_connections_per_second = 1
            node_id = 1
            rack = "r"
            heartbeat_interval_ms = 1
            member_timeout_ms = 1
            sync_interval_ms = 1
        "#;
        let s: Settings = toml::from_str(every_key)?;
        assert_eq!(toml::from_str::<Settings>(&s.to_toml()?)?, s);
        assert_eq!(s.to_toml()?.lines().count(), 41);
        Ok(())
    }

    #[test]
    fn resolved_settings_survive_a_round_trip_through_the_file() -> Result<()> {
        for flags in [Settings::default(), custom()] {
            let effective = flags.effective()?;
            let text = effective.to_toml()?;
            let parsed: Settings = toml::from_str(&text)?;
            assert_eq!(parsed, effective, "{text}");
            // Resolving the file again changes nothing.
            assert_eq!(parsed.effective()?, effective);
            let direct = resolve(&flags, None)?;
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("s.toml");
            effective.write_private(&path)?;
            let from_file = resolve(&Settings::default(), Some(&path))?;
            assert_eq!(format!("{from_file:?}"), format!("{direct:?}"));
        }
        Ok(())
    }

    #[test]
    fn the_merge_takes_each_key_from_the_highest_source() -> Result<()> {
        let high = Settings {
            flush_bytes: Some(1),
            listeners: vec!["SSL://127.0.0.1:0".into()],
            ..Settings::default()
        };
        let low = Settings {
            flush_bytes: Some(2),
            cache_bytes: Some(3),
            listeners: vec!["PLAINTEXT://127.0.0.1:0".into()],
            ..Settings::default()
        };
        let merged = high.over(&low)?;
        assert_eq!(merged.flush_bytes, Some(1));
        assert_eq!(merged.cache_bytes, Some(3));
        assert_eq!(merged.listeners, high.listeners);
        // No listener flags: the file's listeners.
        assert_eq!(Settings::default().over(&low)?.listeners, low.listeners);
        Ok(())
    }

    #[test]
    fn the_file_a_child_gets_yields_the_parents_settings() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let parent = resolve(
            &Settings {
                storage: Some("quic://127.0.0.1:9094?ca=/x/ca.pem".into()),
                ..custom()
            },
            None,
        )?;
        let tls = (
            PathBuf::from("tls/server.pem"),
            PathBuf::from("tls/server.key"),
        );
        let path = dir.path().join("gateway-settings.toml");
        let child_file = parent.child_settings("quic://127.0.0.1:4000?ca=/m/ca.pem", Some(&tls));
        child_file.write_private(&path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path)?.permissions().mode() & 0o777,
                0o600
            );
        }
        let text = std::fs::read_to_string(&path)?;
        assert!(
            !text.contains("bWFzdGVy"),
            "the master key stays out of the file"
        );
        // As the launcher runs it: --config plus the per-child flags.
        let child_dir = dir.path().join("gateway-9");
        let child = resolve(
            &Settings {
                node_id: Some(9),
                data_dir: Some(child_dir.clone()),
                admin_listen: Some("127.0.0.1:0".parse()?),
                ..Settings::default()
            },
            Some(&path),
        )?;
        assert_eq!(shared(&child), shared(&parent));
        assert_eq!(child.metadata, "quic://127.0.0.1:4000?ca=/m/ca.pem");
        assert_eq!(child.node_id, Some(9));
        assert_eq!(child.data_dir, child_dir);
        assert_eq!(
            child.storage.disk_cache,
            Some((child_dir.join("cache"), 3 << 20))
        );
        assert_eq!(child.listeners.len(), 1);
        assert_eq!(child.listeners[0].addr.to_string(), "127.0.0.1:0");
        assert_eq!(child.listeners[0].protocol, parent.listeners[0].protocol);
        assert_eq!(
            child.listeners[0].mechanisms,
            parent.listeners[0].mechanisms
        );
        assert_eq!(child.tls_cert, Some(crate::absolute(&tls.0)));
        assert_eq!(child.tls_key, Some(crate::absolute(&tls.1)));
        assert!(child.admin_listen_explicit);
        assert_eq!(child.auth_master_key, None);
        Ok(())
    }

    /// The flags `start_local_gateways` gave each child before the settings file, verbatim.
    fn legacy_child_args(s: &ServeSettings, metadata_url: &str) -> Vec<String> {
        let spec = &s.listeners[0];
        let mut listener = format!("{}://127.0.0.1:0", spec.protocol.name());
        if spec.protocol.sasl() {
            let names: Vec<&str> = spec.mechanisms.iter().map(|m| m.name()).collect();
            listener.push_str(&format!("?mechanisms={}", names.join("+")));
        }
        let ms = |d: Duration| d.as_millis().to_string();
        let mut args: Vec<String> = vec![
            "--metadata".into(),
            metadata_url.into(),
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
        args
    }

    #[derive(Parser, Debug)]
    struct Gateway {
        #[command(flatten)]
        args: crate::ServeArgs,
    }

    #[test]
    fn a_child_gets_what_the_old_flags_gave_it() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let url = "quic://127.0.0.1:4000?ca=/m/ca.pem";
        for flags in [Settings::default(), custom()] {
            let parent = resolve(&flags, None)?;
            let per_child = [
                "--node-id",
                "9",
                "--data-dir",
                "/tmp/weir-child-9",
                "--admin-listen",
                "127.0.0.1:0",
            ]
            .map(String::from);
            let mut legacy = vec!["weir".to_string()];
            legacy.extend(legacy_child_args(&parent, url));
            legacy.extend(per_child.clone());
            // Deliberate: the parent's rack and admin token reach the child now; before, only
            // when they came from the environment or the --config file (which the child
            // inherited), not from a flag.
            if let Some(rack) = &parent.cluster.rack {
                legacy.extend(["--rack".into(), rack.clone()]);
            }
            if let Some(token) = &parent.admin_token {
                legacy.extend(["--admin-token".into(), token.clone()]);
            }
            let before = Gateway::try_parse_from(&legacy)?.args.resolve()?;
            let path = dir.path().join("gateway-settings.toml");
            parent.child_settings(url, None).write_private(&path)?;
            let mut now = vec!["weir".to_string(), "--config".into()];
            now.push(path.display().to_string());
            now.extend(per_child);
            let after = Gateway::try_parse_from(&now)?.args.resolve()?;
            assert_eq!(shared(&after), shared(&before));
            assert_eq!(after.metadata, before.metadata);
            assert_eq!(
                format!("{:?}", after.listeners),
                format!("{:?}", before.listeners)
            );
            assert_eq!(after.storage.disk_cache, before.storage.disk_cache);
            assert_eq!(
                (after.node_id, &after.data_dir, after.admin_listen),
                (before.node_id, &before.data_dir, before.admin_listen)
            );
            assert_eq!(after.cluster.rack, parent.cluster.rack);
            assert_eq!(after.admin_token, parent.admin_token);
        }
        Ok(())
    }

    fn refused(flags: Settings) -> String {
        match resolve(&flags, None) {
            Ok(_) => format!("accepted: {flags:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn refused_values_say_which_key_and_why() {
        let cases: [(Settings, &str); 6] = [
            (
                Settings {
                    max_buffered_bytes: Some(1 << 20),
                    ..Settings::default()
                },
                "max-buffered-bytes must be at least 16 MiB",
            ),
            (
                Settings {
                    request_memory_bytes: Some(1 << 20),
                    ..Settings::default()
                },
                "request-memory-bytes (1048576) must be at least max-request-bytes",
            ),
            (
                Settings {
                    default_partitions: Some(0),
                    ..Settings::default()
                },
                "default-partitions must be at least 1",
            ),
            (
                Settings {
                    offsets_retention_minutes: Some(0),
                    ..Settings::default()
                },
                "offsets-retention-minutes must be at least 1",
            ),
            (
                Settings {
                    tls_cert: Some("c.pem".into()),
                    ..Settings::default()
                },
                "--tls-cert and --tls-key go together",
            ),
            (
                Settings {
                    advertise: Some("h:1".into()),
                    listeners: vec!["PLAINTEXT://127.0.0.1:0".into()],
                    ..Settings::default()
                },
                "--advertise applies to --listen",
            ),
        ];
        for (flags, message) in cases {
            let got = refused(flags);
            assert!(got.contains(message), "{got:?} should say {message:?}");
        }
        let err = ServeSettings::resolve(
            &Settings::default(),
            None,
            Some("3"),
            weir_scaler::Policy::default(),
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("--gateways 3: use 1 or auto"));
    }

    #[derive(Parser, Debug)]
    struct Storage {
        #[command(flatten)]
        args: crate::storage_cmd::StorageArgs,
    }

    fn storage_config(args: &[&str]) -> Result<StorageConfig> {
        let mut argv = vec!["weir"];
        argv.extend(args);
        Storage::try_parse_from(argv)?
            .args
            .settings()?
            .storage_config()
    }

    #[test]
    fn storage_and_serve_agree_on_the_same_values() -> Result<()> {
        let keys = [
            "--data-dir",
            "/tmp/weir-node",
            "--flush-bytes",
            "0",
            "--flush-interval-ms",
            "9",
            "--max-buffered-bytes",
            "16777216",
            "--cache-bytes",
            "1000",
            "--disk-cache-bytes",
            "2000",
        ];
        let mut node_args = vec!["--metadata", "quic://127.0.0.1:1"];
        node_args.extend(keys);
        let node = storage_config(&node_args)?;
        let mut serve_args = vec!["weir"];
        serve_args.extend(keys);
        let serve = Gateway::try_parse_from(serve_args)?.args.resolve()?.storage;
        assert_eq!(format!("{node:?}"), format!("{serve:?}"));
        assert_eq!(node.flush_bytes, 1);
        // Defaults agree too.
        let node = storage_config(&["--metadata", "quic://127.0.0.1:1"])?;
        let serve = resolve(&Settings::default(), None)?.storage;
        assert_eq!(format!("{node:?}"), format!("{serve:?}"));
        // A value serve refuses, the node refuses with the same words (it used to raise it to
        // 16 MiB silently).
        let small = [
            "--metadata",
            "quic://127.0.0.1:1",
            "--max-buffered-bytes",
            "1048576",
        ];
        let node_err = storage_config(&small).err().map(|e| format!("{e:#}"));
        let serve_err = refused(Settings {
            max_buffered_bytes: Some(1 << 20),
            ..Settings::default()
        });
        assert_eq!(node_err, Some(serve_err));
        // The node reads serve's file: its storage keys, and ignores the gateway's.
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("weir.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9092\"\nmetadata = \"quic://127.0.0.1:1\"\nflush_bytes = 77\n\
             default_partitions = 3\n",
        )?;
        let p = path.display().to_string();
        let node = storage_config(&["--config", &p, "--cache-bytes", "5"])?;
        assert_eq!((node.flush_bytes, node.cache_bytes), (77, 5));
        let missing = storage_config(&[]).err().map(|e| format!("{e:#}"));
        assert!(
            missing
                .as_deref()
                .is_some_and(|e| e.contains("--metadata is required")),
            "{missing:?}"
        );
        Ok(())
    }
}
