//! `weir`: the command line. Parses settings, builds the components, runs them.

mod auth_cmd;
mod metadata_cmd;
mod scaler_cmd;
mod settings;
mod storage_cmd;
mod tenants_cmd;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use settings::{LogFormat, ServeSettings, Settings};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use weir_gateway::listener::Listener;
use weir_gateway::{Gateway, GatewayConfig, HighWatermarks, Registry};
use weir_metadata::MetadataStore;
use weir_storage::{ObjectStorage, Storage};

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
    Auth(auth_cmd::AuthArgs),
    /// Manage tenants (accounts) of a running weir (admin API): create, list, describe,
    /// suspend, resume, delete.
    Tenants(tenants_cmd::TenantsArgs),
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
    #[command(flatten)]
    settings: Settings,
    /// `serve` only: 1 runs this process as the only gateway; auto also runs the scaler,
    /// which starts and stops `weir gateway` processes on 127.0.0.1 with the load (policy
    /// flags below) [default: 1].
    #[arg(long, env = "WEIR_GATEWAYS")]
    gateways: Option<String>,
    #[command(flatten)]
    scaling: scaler_cmd::PolicyArgs,
}

impl ServeArgs {
    fn resolve(self) -> Result<ServeSettings> {
        ServeSettings::resolve(
            &self.settings,
            self.config.as_deref(),
            self.gateways.as_deref(),
            self.scaling.into(),
        )
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
    // Tenant clusters are SASL_SSL: they need the TLS set as much as a TLS listener does.
    let tls = if settings.listeners.iter().any(|l| l.protocol.tls())
        || settings.cluster_ports.is_some()
    {
        let (cert, key) = match (&settings.tls_cert, &settings.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => {
                let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
                for host in bound
                    .iter()
                    .map(|(_, _, host, _)| host)
                    .chain(settings.cluster_advertise_host.iter())
                {
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
    let cluster_host = settings
        .cluster_advertise_host
        .clone()
        .unwrap_or_else(|| host.clone());
    let tenancy = match (settings.cluster_ports, &tls) {
        (Some((first_port, ports)), Some(tls)) => Some(weir_gateway::tenancy::TenancyConfig {
            listen_host: bound[0].1.addr.ip(),
            advertised_host: cluster_host.clone(),
            first_port,
            ports,
            tls: tls.clone(),
        }),
        _ => None,
    };
    let cluster_endpoints = tenancy.as_ref().map(|t| weir_admin::ClusterEndpoints {
        advertised_host: t.advertised_host.clone(),
        first_port: t.first_port,
        ports: t.ports,
    });
    let config = GatewayConfig {
        tenancy,
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
    hosts.extend([
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        cluster_host,
    ]);
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
    auth.tenants.refresh().await?;
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
    let admin_task = tokio::spawn(weir_admin::serve_admin(
        admin_socket,
        auth,
        settings.admin_token.clone(),
        Arc::new(metrics),
        cluster_endpoints,
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
            cluster: None,
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
    // The children get this process's effective settings as a file, and only what differs
    // per child (node id, data dir, admin address) as flags from the launcher.
    let s = settings;
    let settings_file = absolute(&s.data_dir.join("gateways").join("gateway-settings.toml"));
    s.child_settings(&metadata_url, tls_files)
        .write_private(&settings_file)?;
    let args: Vec<String> = vec!["--config".into(), settings_file.display().to_string()];
    // The same master key, so that every gateway reads the credentials (not on the command
    // line nor in the file: other users could read it there).
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
    let launcher = Arc::new(
        weir_scaler::LocalLauncher::new(
            std::env::current_exe()?,
            args,
            env,
            absolute(&s.data_dir.join("gateways")),
            first_id,
        )
        // The settings this process read from its environment are in the file; inherited,
        // they would win over it in a child (and a flag given here won over them).
        .without_env(settings_env()),
    );
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

/// The environment variables of `weir serve`'s and `weir gateway`'s settings.
fn settings_env() -> Vec<String> {
    <ServeArgs as clap::Args>::augment_args(clap::Command::new("gateway"))
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
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
        Command::Auth(args) => auth_cmd::run_auth(args),
        Command::Tenants(args) => tenants_cmd::run_tenants(args),
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
    fn children_do_not_inherit_the_settings_environment() {
        let env = settings_env();
        for name in [
            "WEIR_CONFIG",
            "WEIR_LISTEN",
            "WEIR_LISTENERS",
            "WEIR_METADATA",
            "WEIR_FLUSH_BYTES",
            "WEIR_SYNC_INTERVAL_MS",
            "WEIR_GATEWAYS",
            "WEIR_AUTH_MASTER_KEY",
            "WEIR_MIN_GATEWAYS",
        ] {
            assert!(env.iter().any(|e| e == name), "{name} missing from {env:?}");
        }
        assert!(env.iter().all(|e| e.starts_with("WEIR_")), "{env:?}");
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
