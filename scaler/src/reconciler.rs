//! The reconciler: the [`Scaler`] loop that compares the gateways the load needs and the
//! placements the rebalancer plans with what the metadata store shows, and closes the gap
//! (a [`Launcher`] starts or stops gateways; placements are written for the gateways to
//! follow). Also the placement helpers `weir partitions` uses by hand.

use crate::launcher::Launcher;
use crate::placement::{plan_moves_around, reported_loads, Move, PartitionView};
use crate::policy::{Action, Autoscaler, Policy};
use anyhow::{bail, Result};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use weir_common::{TopicId, TopicPartition};
use weir_metadata_api::membership::{self as cluster, Member};
use weir_metadata_api::{MetadataStore, NO_LEADER};

/// Records namespace of the scaler's status ([`Status`] as JSON).
pub const STATUS_NAMESPACE: &str = "scaler";
/// Records key of the scaler's status.
pub const STATUS_KEY: &str = "status";
/// Registrations silent this long are removed.
const STALE_MEMBER: Duration = Duration::from_secs(60);
/// Decisions kept in the status.
const DECISIONS_KEPT: usize = 50;

/// Every partition with its recorded leader and its load as its leader reported it.
pub async fn partition_views(
    meta: &dyn MetadataStore,
    live: &[Member],
) -> Result<(Vec<PartitionView>, HashMap<TopicId, (String, Vec<i32>)>)> {
    partition_views_with(meta, &reported_loads(live)).await
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

/// Whether every move is carried out: each partition is led by its new gateway.
pub async fn moves_done(meta: &dyn MetadataStore, moves: &[Move]) -> Result<bool> {
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
pub async fn move_and_wait(
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
