//! `weir scaler`: the control loop that starts and stops gateways with the load and moves
//! partition leadership by measured load; `weir partitions`: list, move and rebalance by hand.
//!
//! The scaler reads what every gateway heartbeats into the metadata store (bytes in and out
//! per second, per partition too, and connections), decides how many gateways the load needs
//! ([`Autoscaler`]), asks a [`Launcher`] for that many, and writes partition placements
//! ([`plan_moves`]) that the gateways follow (`weir_gateway::cluster`). Every decision is
//! logged with its inputs, counted in metrics, and kept in the metadata store for
//! `weir scaler status`.

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use clap::{Args, Subcommand};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use weir_common::{TopicId, TopicPartition};
use weir_gateway::cluster::{self, Member};
use weir_metadata::{MetadataStore, NO_LEADER};

/// Records namespace and key of the scaler's status.
const STATUS_NAMESPACE: &str = "scaler";
const STATUS_KEY: &str = "status";
/// Registrations silent this long are removed.
const STALE_MEMBER: Duration = Duration::from_secs(60);
/// Decisions kept in the status.
const DECISIONS_KEPT: usize = 50;

/// The scaling policy (every knob is a flag of `weir scaler` and `weir serve --gateways auto`).
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct Policy {
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

impl Default for Policy {
    fn default() -> Self {
        Policy {
            min_gateways: 1,
            max_gateways: 8,
            target_bytes_per_sec: 50_000_000.0,
            target_connections: 1000,
            scale_out_cooldown_ms: 5_000,
            scale_in_cooldown_ms: 300_000,
            scale_in_ratio: 0.6,
            interval_ms: 1_000,
            max_moves: 4,
            imbalance: 0.25,
            rebalance_interval_ms: 3_000,
            partition_move_cooldown_ms: 30_000,
        }
    }
}

/// What the autoscaler decided in one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Action {
    Hold,
    ScaleOut { from: usize, to: usize },
    ScaleIn { from: usize, to: usize },
}

/// Decides the number of gateways: out as soon as the load needs more (after a short
/// cool-down), in one at a time once the load has stayed low for the long cool-down.
#[derive(Debug)]
pub struct Autoscaler {
    pub policy: Policy,
    last_scaled: Option<Instant>,
    last_scaled_out: Option<Instant>,
    low_since: Option<Instant>,
}

impl Autoscaler {
    pub fn new(policy: Policy) -> Self {
        Autoscaler {
            policy,
            last_scaled: None,
            last_scaled_out: None,
            low_since: None,
        }
    }

    /// The gateways the load needs, within min and max.
    pub fn needed(&self, bytes_per_sec: f64, connections: u64) -> usize {
        let p = &self.policy;
        let by_bytes = (bytes_per_sec / p.target_bytes_per_sec.max(1.0)).ceil() as usize;
        let by_connections = connections.div_ceil(p.target_connections.max(1)) as usize;
        by_bytes.max(by_connections).clamp(
            p.min_gateways.max(1),
            p.max_gateways.max(p.min_gateways).max(1),
        )
    }

    /// One step: `current` gateways carry the load; returns the action and a reason.
    pub fn decide(
        &mut self,
        now: Instant,
        current: usize,
        bytes_per_sec: f64,
        connections: u64,
    ) -> (Action, String) {
        let p = self.policy.clone();
        let needed = self.needed(bytes_per_sec, connections);
        let inputs = format!(
            "{current} gateways, {:.0} B/s (target {:.0}/gateway), {connections} connections (target {}/gateway)",
            bytes_per_sec, p.target_bytes_per_sec, p.target_connections
        );
        let since = |t: Option<Instant>| t.map(|t| now.duration_since(t));
        if needed > current {
            self.low_since = None;
            let cooldown = Duration::from_millis(p.scale_out_cooldown_ms);
            if since(self.last_scaled_out).is_some_and(|d| d < cooldown) {
                return (
                    Action::Hold,
                    format!("needs {needed}; scale-out cool-down: {inputs}"),
                );
            }
            self.last_scaled = Some(now);
            self.last_scaled_out = Some(now);
            return (
                Action::ScaleOut {
                    from: current,
                    to: needed,
                },
                format!("load needs {needed}: {inputs}"),
            );
        }
        // Hysteresis: one gateway fewer must stay well below the targets.
        let fewer = current.saturating_sub(1);
        let low = current > p.min_gateways.max(1)
            && fewer > 0
            && bytes_per_sec / fewer as f64 <= p.scale_in_ratio * p.target_bytes_per_sec
            && connections as f64 / fewer as f64 <= p.scale_in_ratio * p.target_connections as f64;
        if !low {
            self.low_since = None;
            return (Action::Hold, format!("load fits: {inputs}"));
        }
        let low_since = *self.low_since.get_or_insert(now);
        let cooldown = Duration::from_millis(p.scale_in_cooldown_ms);
        if now.duration_since(low_since) < cooldown
            || since(self.last_scaled).is_some_and(|d| d < cooldown)
        {
            return (
                Action::Hold,
                format!(
                    "load low for {:?}; scale-in waits for the cool-down: {inputs}",
                    now.duration_since(low_since)
                ),
            );
        }
        self.last_scaled = Some(now);
        self.low_since = None;
        (
            Action::ScaleIn {
                from: current,
                to: fewer,
            },
            format!("load low for {:?}: {inputs}", cooldown),
        )
    }
}

/// A partition as the rebalancer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionView {
    pub tp: TopicPartition,
    pub leader: i32,
    /// Bytes per second in and out.
    pub load: f64,
}

/// One leadership move.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Move {
    pub topic: uuid::Uuid,
    pub partition: i32,
    pub from: i32,
    pub to: i32,
    pub bytes_per_sec: f64,
}

/// Plans at most `max_moves` moves that even out the gateways' loads (by bytes per second;
/// by partition count when there is no traffic). Hot partitions go first to the least busy
/// gateway, and a move is made only if it narrows the gap.
pub fn plan_moves(
    partitions: &[PartitionView],
    gateways: &[i32],
    max_moves: usize,
    imbalance: f64,
) -> Vec<Move> {
    plan_moves_around(partitions, &[], gateways, max_moves, imbalance)
}

/// [`plan_moves`] where the `fixed` partitions count towards their gateways' loads but do
/// not move.
pub fn plan_moves_around(
    partitions: &[PartitionView],
    fixed: &[PartitionView],
    gateways: &[i32],
    max_moves: usize,
    imbalance: f64,
) -> Vec<Move> {
    if gateways.len() < 2 {
        return Vec::new();
    }
    let mut owned: BTreeMap<i32, Vec<PartitionView>> =
        gateways.iter().map(|g| (*g, Vec::new())).collect();
    // Per gateway: load and count of its partitions that stay put.
    let mut base: BTreeMap<i32, (f64, usize)> = gateways.iter().map(|g| (*g, (0.0, 0))).collect();
    for p in partitions {
        if let Some(list) = owned.get_mut(&p.leader) {
            list.push(p.clone());
        }
    }
    for p in fixed {
        if let Some(b) = base.get_mut(&p.leader) {
            b.0 += p.load;
            b.1 += 1;
        }
    }
    let total: f64 = owned.values().flatten().map(|p| p.load).sum::<f64>()
        + base.values().map(|b| b.0).sum::<f64>();
    let mut moves = Vec::new();
    while moves.len() < max_moves {
        let load = |g: i32| {
            owned[&g].iter().map(|p| p.load).sum::<f64>() + base.get(&g).map_or(0.0, |b| b.0)
        };
        let count = |g: i32| owned[&g].len() + base.get(&g).map_or(0, |b| b.1);
        let ids: Vec<i32> = owned.keys().copied().collect();
        let (hi, lo) = if total > 0.0 {
            let hi = ids
                .iter()
                .copied()
                .max_by(|a, b| load(*a).total_cmp(&load(*b)));
            let lo = ids
                .iter()
                .copied()
                .min_by(|a, b| load(*a).total_cmp(&load(*b)));
            (hi, lo)
        } else {
            let hi = ids.iter().copied().max_by_key(|g| count(*g));
            let lo = ids.iter().copied().min_by_key(|g| count(*g));
            (hi, lo)
        };
        let (Some(hi), Some(lo)) = (hi, lo) else {
            break;
        };
        if hi == lo {
            break;
        }
        let chosen = if total > 0.0 {
            let gap = load(hi) - load(lo);
            let mean = total / owned.len() as f64;
            if gap <= imbalance * mean {
                break;
            }
            // The hottest partition whose move narrows the gap (load below the gap).
            owned[&hi]
                .iter()
                .enumerate()
                .filter(|(_, p)| p.load < gap)
                .max_by(|a, b| a.1.load.total_cmp(&b.1.load))
                .map(|(i, _)| i)
        } else {
            if count(hi) <= count(lo) + 1 || owned[&hi].is_empty() {
                break;
            }
            Some(owned[&hi].len() - 1)
        };
        let Some(i) = chosen else { break };
        let Some(list) = owned.get_mut(&hi) else {
            break;
        };
        let p = list.remove(i);
        moves.push(Move {
            topic: p.tp.topic_id.0,
            partition: p.tp.partition,
            from: hi,
            to: lo,
            bytes_per_sec: p.load,
        });
        if let Some(list) = owned.get_mut(&lo) {
            list.push(PartitionView { leader: lo, ..p });
        }
    }
    moves
}

/// Every partition with its recorded leader and its load as its leader reported it.
pub async fn partition_views(
    meta: &dyn MetadataStore,
    live: &[Member],
) -> Result<(Vec<PartitionView>, HashMap<TopicId, (String, Vec<i32>)>)> {
    partition_views_with(meta, &reported_loads(live)).await
}

/// Per-partition loads as the leaders reported them.
pub fn reported_loads(live: &[Member]) -> HashMap<TopicPartition, f64> {
    let mut load = HashMap::new();
    for m in live {
        for p in &m.load.partitions {
            load.insert(
                TopicPartition {
                    topic_id: TopicId(p.topic),
                    partition: p.partition,
                },
                p.bytes_in_per_sec + p.bytes_out_per_sec,
            );
        }
    }
    load
}

async fn partition_views_with(
    meta: &dyn MetadataStore,
    load: &HashMap<TopicPartition, f64>,
) -> Result<(Vec<PartitionView>, HashMap<TopicId, (String, Vec<i32>)>)> {
    let mut views = Vec::new();
    let mut leaders = HashMap::new();
    for topic in meta.list_topics().await? {
        let states = meta.partition_states(topic.id).await?;
        let mut by_partition = vec![NO_LEADER; topic.partitions.max(0) as usize];
        for st in states {
            let tp = TopicPartition {
                topic_id: topic.id,
                partition: st.partition,
            };
            if let Some(slot) = by_partition.get_mut(st.partition as usize) {
                *slot = st.leader;
            }
            views.push(PartitionView {
                tp,
                leader: st.leader,
                load: load.get(&tp).copied().unwrap_or(0.0),
            });
        }
        leaders.insert(topic.id, (topic.name, by_partition));
    }
    Ok((views, leaders))
}

/// Places every partition that has no placement where it is led now, so that gateways
/// joining later take partitions only when the rebalancer moves them (not by the hash).
pub async fn pin_unplaced(
    meta: &dyn MetadataStore,
    leaders: &HashMap<TopicId, (String, Vec<i32>)>,
) -> Result<()> {
    let current = cluster::assignments(meta).await?;
    for (id, (_, now)) in leaders {
        let old = current.get(id).cloned().unwrap_or_default();
        let placed: Vec<i32> = now
            .iter()
            .enumerate()
            .map(|(p, leader)| match old.get(p) {
                Some(n) if *n >= 0 => *n,
                _ => *leader,
            })
            .collect();
        if placed != old && placed.iter().any(|n| *n >= 0) {
            cluster::write_assignment(meta, *id, placed).await?;
        }
    }
    Ok(())
}

/// Writes placements for `moves`; every other partition of a touched topic is placed where
/// it is led now, so that the rebalancer, not the hash, decides from here on.
pub async fn apply_moves(
    meta: &dyn MetadataStore,
    moves: &[Move],
    leaders: &HashMap<TopicId, (String, Vec<i32>)>,
) -> Result<()> {
    let current = cluster::assignments(meta).await?;
    let mut by_topic: BTreeMap<uuid::Uuid, Vec<&Move>> = BTreeMap::new();
    for m in moves {
        by_topic.entry(m.topic).or_default().push(m);
    }
    for (topic, list) in by_topic {
        let id = TopicId(topic);
        let now = leaders.get(&id).map(|(_, l)| l.clone()).unwrap_or_default();
        let old = current.get(&id).cloned().unwrap_or_default();
        let mut placed: Vec<i32> = now
            .iter()
            .enumerate()
            .map(|(p, leader)| match old.get(p) {
                Some(n) if *n >= 0 && *leader == NO_LEADER => *n,
                _ => *leader,
            })
            .collect();
        for m in list {
            if let Some(slot) = placed.get_mut(m.partition as usize) {
                *slot = m.to;
            }
        }
        cluster::write_assignment(meta, id, placed).await?;
    }
    Ok(())
}

/// A node id above every registered gateway's: where a local launcher starts counting.
pub async fn next_node_id(meta: &dyn MetadataStore) -> Result<i32> {
    Ok(cluster::members(meta)
        .await?
        .iter()
        .map(|m| m.node_id.saturating_add(1))
        .max()
        .unwrap_or(1)
        .max(1))
}

/// Starts and stops gateways for the scaler.
#[async_trait]
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// The launcher's name, for logs and status.
    fn name(&self) -> String;
    /// How many gateways this launcher runs (or was asked to run).
    async fn current(&self) -> Result<usize>;
    /// Runs `count` gateways; stopping one lets it hand its partitions over first.
    async fn set(&self, count: usize) -> Result<()>;
}

/// Runs `weir gateway` processes on 127.0.0.1: the single-machine autoscaling mode.
#[derive(Debug)]
pub struct LocalLauncher {
    exe: PathBuf,
    /// Arguments every gateway gets (metadata, storage, settings).
    args: Vec<String>,
    /// Extra environment (the auth master key).
    env: Vec<(String, String)>,
    dir: PathBuf,
    children: tokio::sync::Mutex<Vec<LocalGateway>>,
    next_id: std::sync::atomic::AtomicI32,
}

#[derive(Debug)]
struct LocalGateway {
    node_id: i32,
    child: tokio::process::Child,
}

impl LocalLauncher {
    pub fn new(
        exe: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        dir: PathBuf,
        first_id: i32,
    ) -> Self {
        LocalLauncher {
            exe,
            args,
            env,
            dir,
            children: tokio::sync::Mutex::new(Vec::new()),
            next_id: std::sync::atomic::AtomicI32::new(first_id),
        }
    }

    async fn start_one(&self) -> Result<LocalGateway> {
        use tokio::io::AsyncBufReadExt;
        let node_id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = self.dir.join(format!("gateway-{node_id}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("gateway.log"))?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("gateway")
            .args(&self.args)
            .arg("--node-id")
            .arg(node_id.to_string())
            .arg("--data-dir")
            .arg(&dir)
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .envs(self.env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} gateway", self.exe.display()))?;
        let stdout = child.stdout.take().context("gateway stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(b) = line.strip_prefix("weir is ready: bootstrap.servers=") {
                    return Some(b.to_string());
                }
            }
            None
        })
        .await;
        let bootstrap = match ready {
            Ok(Some(b)) => b,
            _ => {
                let _ = child.start_kill();
                bail!(
                    "gateway {node_id} did not become ready (log: {})",
                    dir.join("gateway.log").display()
                );
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        tracing::info!(node_id, %bootstrap, ready_ms = started.elapsed().as_millis() as u64,
            "local launcher: gateway started");
        Ok(LocalGateway { node_id, child })
    }
}

/// Asks the kernel to stop a child when this process dies (Linux), so that a killed
/// `weir serve --gateways auto` leaves no gateways behind.
fn die_with_parent(cmd: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    {
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and only calls prctl,
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

#[async_trait]
impl Launcher for LocalLauncher {
    fn name(&self) -> String {
        "local".into()
    }

    async fn current(&self) -> Result<usize> {
        let mut children = self.children.lock().await;
        children.retain_mut(|g| match g.child.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!(node_id = g.node_id, %status, "local launcher: gateway exited");
                false
            }
            _ => true,
        });
        Ok(children.len())
    }

    async fn set(&self, count: usize) -> Result<()> {
        let running = self.current().await?;
        if count > running {
            let started =
                futures::future::join_all((running..count).map(|_| self.start_one())).await;
            let mut children = self.children.lock().await;
            for g in started {
                children.push(g?);
            }
            return Ok(());
        }
        loop {
            let victim = {
                let mut children = self.children.lock().await;
                if children.len() <= count {
                    return Ok(());
                }
                children.pop()
            };
            let Some(mut g) = victim else { return Ok(()) };
            // SIGTERM: the gateway hands its partitions over and deregisters, then exits.
            if let Some(pid) = g.child.id() {
                #[allow(unsafe_code)]
                // SAFETY: kill(2) on the pid of a child this launcher started and has not
                // reaped yet, so the pid cannot have been reused.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
            match tokio::time::timeout(Duration::from_secs(30), g.child.wait()).await {
                Ok(_) => tracing::info!(node_id = g.node_id, "local launcher: gateway stopped"),
                Err(_) => {
                    tracing::warn!(
                        node_id = g.node_id,
                        "local launcher: gateway did not stop in 30 s; killing it"
                    );
                    let _ = g.child.kill().await;
                }
            }
        }
    }
}

/// Scales an ECS service: the desired count is the number of gateways; ECS stops tasks
/// with SIGTERM, so a gateway hands its partitions over before it exits.
#[derive(Debug)]
pub struct EcsLauncher {
    client: aws_sdk_ecs::Client,
    cluster: String,
    service: String,
}

impl EcsLauncher {
    pub async fn connect(cluster: String, service: String, endpoint: Option<String>) -> Self {
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let mut config = loader.load().await;
        if config.region().is_none() {
            config = config
                .into_builder()
                .region(aws_config::Region::from_static("us-east-1"))
                .build();
        }
        EcsLauncher {
            client: aws_sdk_ecs::Client::new(&config),
            cluster,
            service,
        }
    }
}

#[async_trait]
impl Launcher for EcsLauncher {
    fn name(&self) -> String {
        format!("ecs:{}/{}", self.cluster, self.service)
    }

    async fn current(&self) -> Result<usize> {
        let out = self
            .client
            .describe_services()
            .cluster(&self.cluster)
            .services(&self.service)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "ECS DescribeServices: {}",
                    aws_sdk_ecs::error::DisplayErrorContext(&e)
                )
            })?;
        let service = out.services().first().with_context(|| {
            format!("ECS service {} not found in {}", self.service, self.cluster)
        })?;
        Ok(service.desired_count().max(0) as usize)
    }

    async fn set(&self, count: usize) -> Result<()> {
        self.client
            .update_service()
            .cluster(&self.cluster)
            .service(&self.service)
            .desired_count(i32::try_from(count).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "ECS UpdateService: {}",
                    aws_sdk_ecs::error::DisplayErrorContext(&e)
                )
            })?;
        Ok(())
    }
}

/// One logged decision.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Decision {
    pub at_ms: i64,
    pub action: Action,
    pub reason: String,
    pub gateways: usize,
    pub bytes_per_sec: f64,
    pub connections: u64,
    pub moves: Vec<Move>,
}

/// What `weir scaler status` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub updated_ms: i64,
    pub launcher: String,
    pub policy: Policy,
    pub desired_gateways: usize,
    pub gateways: Vec<Member>,
    pub decisions: Vec<Decision>,
}

#[derive(Debug, Default)]
struct Metrics {
    gateways: Gauge,
    desired: Gauge,
    bytes_per_sec: Gauge<f64, AtomicU64>,
    connections: Gauge,
    scale_outs: Counter,
    scale_ins: Counter,
    moves: Counter,
}

impl Metrics {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "weir_scaler_gateways",
            "Live gateways",
            self.gateways.clone(),
        );
        registry.register(
            "weir_scaler_desired_gateways",
            "Gateways the scaler asked the launcher for",
            self.desired.clone(),
        );
        registry.register(
            "weir_scaler_load_bytes_per_second",
            "Record bytes in and out per second over all gateways",
            self.bytes_per_sec.clone(),
        );
        registry.register(
            "weir_scaler_connections",
            "Client connections over all gateways",
            self.connections.clone(),
        );
        registry.register(
            "weir_scaler_scale_outs",
            "Scale-out decisions",
            self.scale_outs.clone(),
        );
        registry.register(
            "weir_scaler_scale_ins",
            "Scale-in decisions",
            self.scale_ins.clone(),
        );
        registry.register(
            "weir_scaler_partition_moves",
            "Partition leadership moves the rebalancer made",
            self.moves.clone(),
        );
    }
}

/// The control loop.
#[derive(Debug)]
pub struct Scaler {
    meta: Arc<dyn MetadataStore>,
    launcher: Arc<dyn Launcher>,
    autoscaler: Autoscaler,
    /// Gateways the launcher does not run (the `weir serve` process's own).
    fixed: usize,
    member_timeout: Duration,
    metrics: Metrics,
    decisions: VecDeque<Decision>,
    /// Moves written and not yet carried out, with when they were written.
    pending: Option<(Vec<Move>, Instant)>,
    /// The last load each partition's leader reported: a partition in the middle of a move
    /// is reported by nobody for a heartbeat or two.
    known_load: HashMap<TopicPartition, (f64, Instant)>,
    /// When each partition last moved, and when the last rebalance step ran.
    moved_at: HashMap<TopicPartition, Instant>,
    last_rebalance: Option<Instant>,
}

impl Scaler {
    pub fn new(
        meta: Arc<dyn MetadataStore>,
        launcher: Arc<dyn Launcher>,
        policy: Policy,
        fixed: usize,
        member_timeout: Duration,
    ) -> Self {
        Scaler {
            meta,
            launcher,
            autoscaler: Autoscaler::new(policy),
            fixed,
            member_timeout,
            metrics: Metrics::default(),
            decisions: VecDeque::new(),
            pending: None,
            known_load: HashMap::new(),
            moved_at: HashMap::new(),
            last_rebalance: None,
        }
    }

    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    /// Runs until `shutdown`; then stops the gateways the launcher runs (a local launcher's
    /// children would otherwise outlive it).
    pub async fn run(mut self, shutdown: CancellationToken, stop_on_exit: bool) {
        let mut tick = tokio::time::interval(Duration::from_millis(
            self.autoscaler.policy.interval_ms.max(50),
        ));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // At least the minimum from the start.
        let min = self
            .autoscaler
            .policy
            .min_gateways
            .saturating_sub(self.fixed);
        match self.launcher.current().await {
            Ok(n) if n < min => {
                if let Err(e) = self.launcher.set(min).await {
                    tracing::warn!(error = %e, "scaler: starting the minimum of gateways failed");
                }
            }
            _ => {}
        }
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.step().await {
                        tracing::warn!(error = %e, "scaler step failed");
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        if stop_on_exit {
            if let Err(e) = self.launcher.set(0).await {
                tracing::warn!(error = %e, "stopping the launched gateways failed");
            }
        }
    }

    /// One decision: scale, else rebalance.
    pub async fn step(&mut self) -> Result<()> {
        let now_ms = weir_common::now_ms();
        let registered = cluster::members(self.meta.as_ref()).await?;
        // Registrations of gateways killed long ago (a clean stop deregisters).
        for m in &registered {
            if !m.is_live(now_ms, STALE_MEMBER) {
                tracing::info!(
                    node_id = m.node_id,
                    "scaler: removing a stale gateway registration"
                );
                self.meta
                    .record_delete(cluster::MEMBERS, &format!("{:010}", m.node_id))
                    .await?;
            }
        }
        let live = cluster::live(&registered, now_ms, self.member_timeout);
        let serving: Vec<&Member> = live.iter().filter(|m| !m.draining).collect();
        let bytes: f64 = serving
            .iter()
            .map(|m| m.load.bytes_in_per_sec + m.load.bytes_out_per_sec)
            .sum();
        let connections: u64 = serving.iter().map(|m| m.load.connections).sum();
        let launched = self.launcher.current().await?;
        let current = self.fixed + launched;
        let now = Instant::now();
        for (tp, load) in reported_loads(&live) {
            self.known_load.insert(tp, (load, now));
        }
        self.known_load
            .retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(10));
        let loads: HashMap<TopicPartition, f64> = self
            .known_load
            .iter()
            .map(|(tp, (l, _))| (*tp, *l))
            .collect();
        let (views, leaders) = partition_views_with(self.meta.as_ref(), &loads).await?;
        // Pin before gateways join, so that they get partitions by the plan, not the hash.
        pin_unplaced(self.meta.as_ref(), &leaders).await?;
        self.metrics.gateways.set(serving.len() as i64);
        self.metrics.bytes_per_sec.set(bytes);
        self.metrics.connections.set(connections as i64);
        let (action, reason) = self
            .autoscaler
            .decide(Instant::now(), current, bytes, connections);
        let mut moves = Vec::new();
        let mut desired = current;
        match &action {
            Action::ScaleOut { to, .. } | Action::ScaleIn { to, .. } => {
                desired = *to;
                tracing::info!(action = ?action, %reason, bytes_per_sec = bytes, connections,
                    gateways = current, "scaler decision");
                if matches!(action, Action::ScaleOut { .. }) {
                    self.metrics.scale_outs.inc();
                } else {
                    self.metrics.scale_ins.inc();
                }
                let started = Instant::now();
                self.launcher.set(to.saturating_sub(self.fixed)).await?;
                tracing::info!(
                    gateways = to,
                    took_ms = started.elapsed().as_millis() as u64,
                    "scaler: launcher done"
                );
            }
            Action::Hold => {
                tracing::debug!(%reason, "scaler holds");
                // Rebalance once every launched gateway serves and earlier moves are done.
                let p = self.autoscaler.policy.clone();
                let due = self.last_rebalance.is_none_or(|at| {
                    now.duration_since(at) >= Duration::from_millis(p.rebalance_interval_ms)
                });
                if due && serving.len() == current && self.moves_settled().await? {
                    let ids: Vec<i32> = serving.iter().map(|m| m.node_id).collect();
                    let cooldown = Duration::from_millis(p.partition_move_cooldown_ms);
                    self.moved_at
                        .retain(|_, at| now.duration_since(*at) < cooldown);
                    // Partitions that moved recently are left where they are.
                    let movable: Vec<PartitionView> = views
                        .iter()
                        .filter(|v| !self.moved_at.contains_key(&v.tp))
                        .cloned()
                        .collect();
                    let fixed: Vec<PartitionView> = views
                        .iter()
                        .filter(|v| self.moved_at.contains_key(&v.tp))
                        .cloned()
                        .collect();
                    moves = plan_moves_around(&movable, &fixed, &ids, p.max_moves, p.imbalance);
                    self.last_rebalance = Some(now);
                    for m in &moves {
                        self.moved_at.insert(
                            TopicPartition {
                                topic_id: TopicId(m.topic),
                                partition: m.partition,
                            },
                            now,
                        );
                    }
                    if !moves.is_empty() {
                        apply_moves(self.meta.as_ref(), &moves, &leaders).await?;
                        self.metrics.moves.inc_by(moves.len() as u64);
                        tracing::info!(moves = moves.len(), detail = ?moves, bytes_per_sec = bytes,
                            "scaler: rebalancing partitions");
                        self.pending = Some((moves.clone(), Instant::now()));
                    }
                }
            }
        }
        self.metrics.desired.set(desired as i64);
        if action != Action::Hold || !moves.is_empty() {
            self.decisions.push_back(Decision {
                at_ms: now_ms,
                action,
                reason,
                gateways: current,
                bytes_per_sec: bytes,
                connections,
                moves,
            });
            while self.decisions.len() > DECISIONS_KEPT {
                self.decisions.pop_front();
            }
        }
        let status = Status {
            updated_ms: now_ms,
            launcher: self.launcher.name(),
            policy: self.autoscaler.policy.clone(),
            desired_gateways: desired,
            gateways: live,
            decisions: self.decisions.iter().cloned().collect(),
        };
        self.meta
            .record_put(
                STATUS_NAMESPACE,
                STATUS_KEY,
                serde_json::to_vec(&status)?,
                false,
            )
            .await?;
        Ok(())
    }

    /// Whether the last moves were carried out (or given up on after 30 s).
    async fn moves_settled(&mut self) -> Result<bool> {
        let Some((moves, at)) = &self.pending else {
            return Ok(true);
        };
        if at.elapsed() > Duration::from_secs(30) {
            tracing::warn!("scaler: partition moves not carried out after 30 s; planning anew");
            self.pending = None;
            return Ok(true);
        }
        if !moves_done(self.meta.as_ref(), moves).await? {
            return Ok(false);
        }
        self.pending = None;
        Ok(true)
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
    /// How gateways are started: local (processes on 127.0.0.1) or ecs.
    #[arg(long, env = "WEIR_LAUNCHER", default_value = "local")]
    pub launcher: String,
    /// ECS cluster of the gateway service (--launcher ecs).
    #[arg(long, env = "WEIR_ECS_CLUSTER")]
    pub ecs_cluster: Option<String>,
    /// ECS service of the gateways (--launcher ecs).
    #[arg(long, env = "WEIR_ECS_SERVICE")]
    pub ecs_service: Option<String>,
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
    pub policy: Policy,
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
        other => bail!("unknown launcher '{other}': local or ecs"),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::signal_shutdown(shutdown.clone()));
    let scaler = Scaler::new(
        meta,
        launcher.clone(),
        args.policy.clone(),
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
        tokio::spawn(crate::admin::serve_metrics(
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

/// Whether every move is carried out: each partition is led by its new gateway.
async fn moves_done(meta: &dyn MetadataStore, moves: &[Move]) -> Result<bool> {
    for m in moves {
        let states = meta.partition_states(TopicId(m.topic)).await?;
        if states
            .iter()
            .any(|s| s.partition == m.partition && s.leader != m.to)
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes the placements of `moves` and waits until every move is carried out; returns the
/// milliseconds it took.
async fn move_and_wait(
    meta: &dyn MetadataStore,
    moves: &[Move],
    leaders: &HashMap<TopicId, (String, Vec<i32>)>,
    timeout_ms: u64,
) -> Result<u64> {
    let started = Instant::now();
    let timeout = Duration::from_millis(timeout_ms);
    apply_moves(meta, moves, leaders).await?;
    loop {
        if moves_done(meta, moves).await? {
            return Ok(started.elapsed().as_millis() as u64);
        }
        if started.elapsed() > timeout {
            bail!("the moves were not carried out within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min_gateways: 1,
            max_gateways: 4,
            target_bytes_per_sec: 1000.0,
            target_connections: 100,
            scale_out_cooldown_ms: 1000,
            scale_in_cooldown_ms: 10_000,
            scale_in_ratio: 0.6,
            ..Policy::default()
        }
    }

    #[test]
    fn scales_out_at_once_and_in_slowly() {
        let mut a = Autoscaler::new(policy());
        let t0 = Instant::now();
        let (action, _) = a.decide(t0, 1, 2500.0, 10);
        assert_eq!(action, Action::ScaleOut { from: 1, to: 3 });
        // Within the scale-out cool-down: hold even though more is needed.
        let (action, _) = a.decide(t0 + Duration::from_millis(500), 3, 3500.0, 10);
        assert_eq!(action, Action::Hold);
        let (action, _) = a.decide(t0 + Duration::from_millis(1500), 3, 3500.0, 10);
        assert_eq!(action, Action::ScaleOut { from: 3, to: 4 });
        // Capped at max.
        let (action, _) = a.decide(t0 + Duration::from_secs(3), 4, 99_000.0, 10);
        assert_eq!(action, Action::Hold);
        // Load drops: nothing until it stayed low for the cool-down.
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(a.decide(t1, 4, 100.0, 10).0, Action::Hold);
        assert_eq!(
            a.decide(t1 + Duration::from_secs(5), 4, 100.0, 10).0,
            Action::Hold
        );
        // A burst resets the low period (hysteresis).
        assert_eq!(
            a.decide(t1 + Duration::from_secs(6), 4, 2000.0, 10).0,
            Action::Hold
        );
        assert_eq!(
            a.decide(t1 + Duration::from_secs(12), 4, 100.0, 10).0,
            Action::Hold
        );
        let (action, _) = a.decide(t1 + Duration::from_secs(23), 4, 100.0, 10);
        assert_eq!(action, Action::ScaleIn { from: 4, to: 3 });
        // One at a time: the next scale-in waits a whole cool-down again.
        assert_eq!(
            a.decide(t1 + Duration::from_secs(24), 3, 100.0, 10).0,
            Action::Hold
        );
    }

    #[test]
    fn no_scale_in_while_one_fewer_would_be_too_busy() {
        let mut a = Autoscaler::new(policy());
        let t0 = Instant::now();
        // 2 gateways, 700 B/s: one gateway would run at 70% > 60%: stay.
        for s in 0..30 {
            assert_eq!(
                a.decide(t0 + Duration::from_secs(s), 2, 700.0, 0).0,
                Action::Hold
            );
        }
        // Connections count too.
        assert_eq!(a.needed(10.0, 250), 3);
    }

    fn tp(p: i32) -> TopicPartition {
        TopicPartition {
            topic_id: TopicId(uuid::Uuid::from_u128(1)),
            partition: p,
        }
    }

    #[test]
    fn rebalance_spreads_hot_partitions_with_few_moves() {
        // Gateway 1 leads everything; two hot partitions and six cold ones.
        let mut views: Vec<PartitionView> = (0..8)
            .map(|p| PartitionView {
                tp: tp(p),
                leader: 1,
                load: if p < 2 { 1000.0 } else { 10.0 },
            })
            .collect();
        let moves = plan_moves(&views, &[1, 2, 3], 4, 0.25);
        assert!(moves.len() <= 4);
        // Both hot partitions left gateway 1, to different gateways.
        let hot: Vec<&Move> = moves.iter().filter(|m| m.bytes_per_sec > 100.0).collect();
        assert_eq!(hot.len(), 2, "{moves:?}");
        assert_ne!(hot[0].to, hot[1].to);
        for m in &moves {
            views[m.partition as usize].leader = m.to;
        }
        // Balanced now within the threshold: nothing more to do.
        let again = plan_moves(&views, &[1, 2, 3], 4, 0.25);
        let load = |g: i32| {
            views
                .iter()
                .filter(|v| v.leader == g)
                .map(|v| v.load)
                .sum::<f64>()
        };
        assert!(again.is_empty() || load(1) > 1000.0, "{again:?}");
    }

    /// The ECS launcher against the AWS-compatible server of the test set-up (moto):
    /// a service's desired count follows `set`, and `current` reads it back.
    #[tokio::test]
    async fn ecs_launcher_sets_the_desired_count() -> anyhow::Result<()> {
        let Ok(endpoint) = std::env::var("WEIR_TEST_DYNAMODB_ENDPOINT") else {
            eprintln!("skipped: WEIR_TEST_DYNAMODB_ENDPOINT is not set (scripts/test.sh sets it)");
            return Ok(());
        };
        let cluster = format!("weir-{}", uuid::Uuid::new_v4().simple());
        let launcher =
            EcsLauncher::connect(cluster.clone(), "gateways".into(), Some(endpoint)).await;
        let c = &launcher.client;
        c.create_cluster().cluster_name(&cluster).send().await?;
        c.register_task_definition()
            .family("weir-gateway")
            .container_definitions(
                aws_sdk_ecs::types::ContainerDefinition::builder()
                    .name("weir")
                    .image("weir:latest")
                    .memory(512)
                    .build(),
            )
            .send()
            .await?;
        c.create_service()
            .cluster(&cluster)
            .service_name("gateways")
            .task_definition("weir-gateway")
            .desired_count(1)
            .send()
            .await?;
        assert_eq!(launcher.current().await?, 1);
        launcher.set(3).await?;
        assert_eq!(launcher.current().await?, 3);
        launcher.set(2).await?;
        assert_eq!(launcher.current().await?, 2);
        Ok(())
    }

    #[test]
    fn idle_partitions_are_spread_by_count() {
        let views: Vec<PartitionView> = (0..9)
            .map(|p| PartitionView {
                tp: tp(p),
                leader: 1,
                load: 0.0,
            })
            .collect();
        let moves = plan_moves(&views, &[1, 2, 3], 100, 0.25);
        assert_eq!(moves.len(), 6);
        for g in [2, 3] {
            assert_eq!(moves.iter().filter(|m| m.to == g).count(), 3);
        }
        assert!(plan_moves(&views, &[1], 100, 0.25).is_empty());
    }
}
