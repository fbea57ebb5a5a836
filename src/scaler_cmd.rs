//! `weir scaler` and `weir partitions`: the command-line flags and subcommands of the
//! scaler (`weir_scaler`), converted into its [`Policy`] and launchers; `weir scaler status`
//! and `weir partitions list|move|rebalance` print what the metadata store holds.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use weir_metadata::membership as cluster;
use weir_metadata::NO_LEADER;
use weir_scaler::{
    move_and_wait, next_node_id, partition_views, plan_moves, EcsLauncher, KubernetesLauncher,
    Launcher, LocalLauncher, Move, Policy, Scaler, Status, STATUS_KEY, STATUS_NAMESPACE,
};

/// The scaling policy flags of `weir scaler` and `weir serve --gateways auto`
/// (converted into [`weir_scaler::Policy`]).
#[derive(Args, Debug, Clone)]
pub struct PolicyArgs {
    /// Fewest gateways.
    #[arg(long, env = "WEIR_MIN_GATEWAYS", default_value_t = 1)]
    pub min_gateways: usize,
    /// Most gateways.
    #[arg(long, env = "WEIR_MAX_GATEWAYS", default_value_t = 8)]
    pub max_gateways: usize,
    /// Target record bytes per second (in + out) per gateway.
    #[arg(
        long,
        env = "WEIR_TARGET_BYTES_PER_SEC",
        default_value_t = 50_000_000.0
    )]
    pub target_bytes_per_sec: f64,
    /// Target client connections per gateway.
    #[arg(long, env = "WEIR_TARGET_CONNECTIONS", default_value_t = 1000)]
    pub target_connections: u64,
    /// After a scale-out, the next one waits this long, in ms (scale out fast).
    #[arg(long, env = "WEIR_SCALE_OUT_COOLDOWN_MS", default_value_t = 5_000)]
    pub scale_out_cooldown_ms: u64,
    /// A scale-in needs the load low for this long, and this long since the last scaling,
    /// in ms (scale in slowly).
    #[arg(long, env = "WEIR_SCALE_IN_COOLDOWN_MS", default_value_t = 300_000)]
    pub scale_in_cooldown_ms: u64,
    /// Hysteresis: scale in only while the load would fill one gateway fewer to at most this
    /// fraction of the targets.
    #[arg(long, env = "WEIR_SCALE_IN_RATIO", default_value_t = 0.6)]
    pub scale_in_ratio: f64,
    /// How often the scaler decides, in ms.
    #[arg(long, env = "WEIR_SCALER_INTERVAL_MS", default_value_t = 1_000)]
    pub interval_ms: u64,
    /// Most partition moves per rebalance step.
    #[arg(long, env = "WEIR_MAX_MOVES", default_value_t = 4)]
    pub max_moves: usize,
    /// Rebalance when the busiest gateway carries more than the least busy one by this
    /// fraction of the mean gateway load.
    #[arg(long, env = "WEIR_IMBALANCE", default_value_t = 0.25)]
    pub imbalance: f64,
    /// Least time between two rebalance steps, in ms (the gateways' load reports catch up
    /// with the last moves meanwhile).
    #[arg(long, env = "WEIR_REBALANCE_INTERVAL_MS", default_value_t = 3_000)]
    pub rebalance_interval_ms: u64,
    /// A partition that moved stays put this long, in ms (no ping-pong).
    #[arg(
        long,
        env = "WEIR_PARTITION_MOVE_COOLDOWN_MS",
        default_value_t = 30_000
    )]
    pub partition_move_cooldown_ms: u64,
}

impl Default for PolicyArgs {
    fn default() -> Self {
        let p = Policy::default();
        PolicyArgs {
            min_gateways: p.min_gateways,
            max_gateways: p.max_gateways,
            target_bytes_per_sec: p.target_bytes_per_sec,
            target_connections: p.target_connections,
            scale_out_cooldown_ms: p.scale_out_cooldown_ms,
            scale_in_cooldown_ms: p.scale_in_cooldown_ms,
            scale_in_ratio: p.scale_in_ratio,
            interval_ms: p.interval_ms,
            max_moves: p.max_moves,
            imbalance: p.imbalance,
            rebalance_interval_ms: p.rebalance_interval_ms,
            partition_move_cooldown_ms: p.partition_move_cooldown_ms,
        }
    }
}

impl From<PolicyArgs> for Policy {
    fn from(a: PolicyArgs) -> Self {
        Policy {
            min_gateways: a.min_gateways,
            max_gateways: a.max_gateways,
            target_bytes_per_sec: a.target_bytes_per_sec,
            target_connections: a.target_connections,
            scale_out_cooldown_ms: a.scale_out_cooldown_ms,
            scale_in_cooldown_ms: a.scale_in_cooldown_ms,
            scale_in_ratio: a.scale_in_ratio,
            interval_ms: a.interval_ms,
            max_moves: a.max_moves,
            imbalance: a.imbalance,
            rebalance_interval_ms: a.rebalance_interval_ms,
            partition_move_cooldown_ms: a.partition_move_cooldown_ms,
        }
    }
}

/// `weir scaler`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ScalerArgs {
    #[command(subcommand)]
    pub command: Option<ScalerCommand>,
    /// Metadata store the gateways share: dynamodb://... or quic://...
    #[arg(long, env = "WEIR_METADATA")]
    pub metadata: Option<String>,
    /// How gateways are started: local (processes on 127.0.0.1), ecs (an ECS service) or
    /// kubernetes (a StatefulSet's replicas).
    #[arg(long, env = "WEIR_LAUNCHER", default_value = "local")]
    pub launcher: String,
    /// ECS cluster of the gateway service (--launcher ecs).
    #[arg(long, env = "WEIR_ECS_CLUSTER")]
    pub ecs_cluster: Option<String>,
    /// ECS service of the gateways (--launcher ecs).
    #[arg(long, env = "WEIR_ECS_SERVICE")]
    pub ecs_service: Option<String>,
    /// Namespace of the gateway StatefulSet (--launcher kubernetes) [default: the scaler
    /// pod's namespace, else the kubeconfig context's, else default].
    #[arg(long, env = "WEIR_K8S_NAMESPACE")]
    pub k8s_namespace: Option<String>,
    /// StatefulSet of the gateways (--launcher kubernetes), as in infra/kubernetes/weir.yaml.
    #[arg(long, env = "WEIR_K8S_STATEFULSET", default_value = "weir-gateway")]
    pub k8s_statefulset: String,
    /// Arguments for each `weir gateway` the local launcher starts (one string, split on
    /// whitespace), e.g. "--metadata quic://... --object-store file:///...".
    #[arg(long, env = "WEIR_GATEWAY_ARGS", default_value = "")]
    pub gateway_args: String,
    /// Directory for local gateways' data and logs.
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "weir-data/scaler")]
    pub data_dir: PathBuf,
    /// Gateways' member timeout, in ms (as the gateways use).
    #[arg(long, env = "WEIR_MEMBER_TIMEOUT_MS", default_value_t = 3000)]
    pub member_timeout_ms: u64,
    /// Prometheus metrics address.
    #[arg(long, env = "WEIR_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Subcommand, Debug)]
pub enum ScalerCommand {
    /// Shows the scaler's last status: gateways, their load, recent decisions.
    Status {
        #[arg(long, env = "WEIR_METADATA")]
        metadata: String,
        /// The raw JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ScalerArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.command {
        Some(ScalerCommand::Status { metadata, json }) => runtime.block_on(status(&metadata, json)),
        None => {
            crate::init_logging(crate::LogFormat::Text);
            runtime.block_on(run_scaler(args))
        }
    }
}

async fn run_scaler(args: ScalerArgs) -> Result<()> {
    let metadata = args
        .metadata
        .clone()
        .context("--metadata is required (dynamodb://... or quic://...)")?;
    if metadata.starts_with("embedded://") {
        bail!("the scaler shares the gateways' metadata store: --metadata dynamodb://... or quic://...");
    }
    let meta = crate::open_metadata(&metadata).await?;
    let launcher: Arc<dyn Launcher> = match args.launcher.as_str() {
        "local" => {
            let exe = std::env::current_exe()?;
            let gateway_args: Vec<String> = args
                .gateway_args
                .split_whitespace()
                .map(String::from)
                .collect();
            if !gateway_args.iter().any(|a| a == "--metadata") {
                bail!("--launcher local needs --gateway-args with at least --metadata and the storage settings of the gateways");
            }
            let first = next_node_id(meta.as_ref()).await?;
            Arc::new(LocalLauncher::new(
                exe,
                gateway_args,
                Vec::new(),
                args.data_dir.clone(),
                first,
            ))
        }
        "ecs" => {
            let (Some(cluster), Some(service)) =
                (args.ecs_cluster.clone(), args.ecs_service.clone())
            else {
                bail!("--launcher ecs needs --ecs-cluster and --ecs-service");
            };
            Arc::new(EcsLauncher::connect(cluster, service, None).await)
        }
        "kubernetes" => Arc::new(
            KubernetesLauncher::connect(args.k8s_namespace.clone(), args.k8s_statefulset.clone())
                .await?,
        ),
        other => bail!("unknown launcher '{other}': local, ecs or kubernetes"),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::signal_shutdown(shutdown.clone()));
    let scaler = Scaler::new(
        meta,
        launcher.clone(),
        Policy::from(args.policy.clone()),
        0,
        Duration::from_millis(args.member_timeout_ms),
    );
    if let Some(addr) = args.metrics_listen {
        let mut registry = prometheus_client::registry::Registry::default();
        scaler.register_metrics(&mut registry);
        let socket = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
        tracing::info!(addr = %socket.local_addr()?, "scaler metrics");
        tokio::spawn(weir_admin::serve_metrics(
            socket,
            Arc::new(registry),
            shutdown.clone(),
        ));
    }
    tracing::info!(launcher = %launcher.name(), policy = ?args.policy, "scaler running");
    println!("weir scaler is running (launcher {})", launcher.name());
    let local = args.launcher == "local";
    scaler.run(shutdown, local).await;
    Ok(())
}

async fn status(metadata: &str, json: bool) -> Result<()> {
    let meta = crate::open_metadata(metadata).await?;
    let Some(raw) = meta.record_get(STATUS_NAMESPACE, STATUS_KEY).await? else {
        bail!("no scaler has run against {metadata}");
    };
    if json {
        println!("{}", String::from_utf8_lossy(&raw));
        return Ok(());
    }
    let s: Status = serde_json::from_slice(&raw)?;
    let age = weir_common::now_ms().saturating_sub(s.updated_ms);
    println!(
        "launcher {}  desired gateways {}  (updated {} ms ago)",
        s.launcher, s.desired_gateways, age
    );
    println!(
        "policy: {}..{} gateways, target {:.0} B/s and {} connections per gateway, scale-out cool-down {} ms, scale-in cool-down {} ms",
        s.policy.min_gateways,
        s.policy.max_gateways,
        s.policy.target_bytes_per_sec,
        s.policy.target_connections,
        s.policy.scale_out_cooldown_ms,
        s.policy.scale_in_cooldown_ms
    );
    println!(
        "{:>10} {:<24} {:>12} {:>12} {:>6} {:>6} {:>8} {:>6}",
        "NODE", "ADDRESS", "IN B/S", "OUT B/S", "CONNS", "PARTS", "LAT MS", "CPU%"
    );
    for m in &s.gateways {
        println!(
            "{:>10} {:<24} {:>12.0} {:>12.0} {:>6} {:>6} {:>8.2} {:>6.1}{}",
            m.node_id,
            format!("{}:{}", m.host, m.port),
            m.load.bytes_in_per_sec,
            m.load.bytes_out_per_sec,
            m.load.connections,
            m.load.partitions_led,
            m.load.request_latency_ms,
            m.load.cpu_percent,
            if m.draining { " draining" } else { "" }
        );
    }
    println!("recent decisions:");
    for d in s.decisions.iter().rev().take(10) {
        println!(
            "  {} {:?} ({} moves): {}",
            d.at_ms,
            d.action,
            d.moves.len(),
            d.reason
        );
    }
    Ok(())
}

/// `weir partitions`.
#[derive(Args, Debug)]
pub struct PartitionsArgs {
    #[command(subcommand)]
    pub command: PartitionsCommand,
}

#[derive(Subcommand, Debug)]
pub enum PartitionsCommand {
    /// Lists partitions with their leader, epoch and placement.
    List {
        #[arg(long, env = "WEIR_METADATA")]
        metadata: String,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Moves a partition's leadership to a gateway and waits until it leads there.
    Move {
        #[arg(long, env = "WEIR_METADATA")]
        metadata: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        /// Node id of the new leader.
        #[arg(long)]
        to: i32,
        /// Give up waiting after this many ms.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
    /// Evens out leadership over the live gateways by load (or partition count) now.
    Rebalance {
        #[arg(long, env = "WEIR_METADATA")]
        metadata: String,
        /// Most moves.
        #[arg(long, default_value_t = 1000)]
        max_moves: usize,
        #[arg(long, default_value_t = 3000)]
        member_timeout_ms: u64,
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
    },
}

pub fn run_partitions(args: PartitionsArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(partitions(args.command))
}

async fn partitions(command: PartitionsCommand) -> Result<()> {
    match command {
        PartitionsCommand::List { metadata, topic } => {
            let meta = crate::open_metadata(&metadata).await?;
            let placed = cluster::assignments(meta.as_ref()).await?;
            println!(
                "{:<30} {:>9} {:>10} {:>7} {:>10} {:>14}",
                "TOPIC", "PARTITION", "LEADER", "EPOCH", "PLACED", "LOG-END"
            );
            for t in meta.list_topics().await? {
                if topic.as_ref().is_some_and(|n| *n != t.name) {
                    continue;
                }
                let placement = placed.get(&t.id).cloned().unwrap_or_default();
                for st in meta.partition_states(t.id).await? {
                    let p = placement
                        .get(st.partition as usize)
                        .copied()
                        .filter(|n| *n >= 0)
                        .map_or("-".to_string(), |n| n.to_string());
                    println!(
                        "{:<30} {:>9} {:>10} {:>7} {:>10} {:>14}",
                        t.name, st.partition, st.leader, st.leader_epoch, p, st.next_offset
                    );
                }
            }
            Ok(())
        }
        PartitionsCommand::Move {
            metadata,
            topic,
            partition,
            to,
            timeout_ms,
        } => {
            let meta = crate::open_metadata(&metadata).await?;
            let record = meta
                .get_topic(&topic)
                .await?
                .with_context(|| format!("unknown topic {topic}"))?;
            if partition < 0 || partition >= record.partitions {
                bail!("topic {topic} has partitions 0..{}", record.partitions - 1);
            }
            let live = cluster::live(
                &cluster::members(meta.as_ref()).await?,
                weir_common::now_ms(),
                Duration::from_secs(3),
            );
            if !live.iter().any(|m| m.node_id == to && !m.draining) {
                bail!(
                    "no live gateway has node id {to} (live: {:?})",
                    live.iter().map(|m| m.node_id).collect::<Vec<_>>()
                );
            }
            let (_, leaders) = partition_views(meta.as_ref(), &live).await?;
            let from = leaders
                .get(&record.id)
                .and_then(|(_, l)| l.get(partition as usize).copied())
                .unwrap_or(NO_LEADER);
            let moves = [Move {
                topic: record.id.0,
                partition,
                from,
                to,
                bytes_per_sec: 0.0,
            }];
            let ms = move_and_wait(meta.as_ref(), &moves, &leaders, timeout_ms).await?;
            println!(
                "{}",
                serde_json::json!({"topic": topic, "partition": partition, "from": from, "to": to, "moved_ms": ms})
            );
            Ok(())
        }
        PartitionsCommand::Rebalance {
            metadata,
            max_moves,
            member_timeout_ms,
            timeout_ms,
        } => {
            let meta = crate::open_metadata(&metadata).await?;
            let live = cluster::live(
                &cluster::members(meta.as_ref()).await?,
                weir_common::now_ms(),
                Duration::from_millis(member_timeout_ms),
            );
            let ids: Vec<i32> = live
                .iter()
                .filter(|m| !m.draining)
                .map(|m| m.node_id)
                .collect();
            let (views, leaders) = partition_views(meta.as_ref(), &live).await?;
            let moves = plan_moves(&views, &ids, max_moves, 0.0);
            let ms = move_and_wait(meta.as_ref(), &moves, &leaders, timeout_ms).await?;
            println!(
                "{}",
                serde_json::json!({"moves": moves.len(), "gateways": ids, "moved_ms": ms})
            );
            Ok(())
        }
    }
}
