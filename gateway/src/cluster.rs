//! Gateways as one cluster: membership, partition leadership and group coordinators.
//!
//! Every gateway registers in the metadata store (records namespace [`MEMBERS`]) and
//! heartbeats its address, rack and load there. Each sync it reads the members, the topics,
//! the placements the scaler or an operator wrote (namespace [`ASSIGNMENTS`]) and every
//! partition's recorded leader and epoch, and then:
//!
//! - takes a partition placed on it once the recorded leader released it, is itself (a
//!   restart), or stopped heartbeating: [`MetadataStore::take_leadership`] is conditional on
//!   the epoch it read and bumps it, which fences every commit of the previous leader;
//! - hands over a partition placed elsewhere: it stops accepting appends (clients get the
//!   retriable `NOT_LEADER_OR_FOLLOWER` and refresh their metadata), waits until its
//!   appends in flight are committed, then releases the partition in the metadata store.
//!
//! A partition without a placement, or placed on a gateway that is gone or draining, goes
//! to the gateway chosen by rendezvous hashing over the live gateways, so that gateways
//! balance partition counts without a scaler and a joining gateway moves only its share.
//! Group coordinators are chosen by the same hash over the group id.
//!
//! Liveness compares heartbeat wall-clock times, so gateways need synchronized clocks (NTP):
//! a clock running ahead by more than the member timeout could make a live gateway look
//! dead. That costs availability (a needless move), never data: every take is fenced.

use crate::broker::PartitionLog;
use crate::Gateway;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use weir_common::{TopicId, TopicPartition};
use weir_metadata::{MetadataError, MetadataStore, PartitionState, NO_LEADER};

/// How often a gateway alone in its cluster reads topics and leaders.
pub const ALONE_FULL_SYNC: Duration = Duration::from_secs(2);

/// Records namespace of the gateway registrations (key: node id, ten digits).
pub const MEMBERS: &str = "gateways";
/// Records namespace of partition placements (key: topic id; value: [`Assignment`]).
pub const ASSIGNMENTS: &str = "assignments";

/// How gateways find each other and hand partitions over.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// How often a gateway writes its heartbeat.
    pub heartbeat_interval: Duration,
    /// A gateway whose heartbeat is older than this is gone: its partitions move.
    pub member_timeout: Duration,
    /// How often a gateway reads members, topics and leaders and acts on them.
    pub sync_interval: Duration,
    /// The longest a hand-over waits for appends in flight before it releases anyway (the
    /// epoch still fences them).
    pub drain_timeout: Duration,
    /// Rack (availability zone) reported to clients.
    pub rack: Option<String>,
    /// The metadata store belongs to this process alone (embedded): no other gateway can
    /// share it, so an earlier registration of this node id is a previous run of this one.
    pub exclusive: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            heartbeat_interval: Duration::from_millis(500),
            member_timeout: Duration::from_secs(3),
            sync_interval: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(5),
            rack: None,
            exclusive: false,
        }
    }
}

/// Load of one partition as its leader measured it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionLoad {
    pub topic: uuid::Uuid,
    pub partition: i32,
    pub bytes_in_per_sec: f64,
    pub bytes_out_per_sec: f64,
}

/// A gateway's load over its last heartbeat interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub bytes_in_per_sec: f64,
    pub bytes_out_per_sec: f64,
    pub connections: u64,
    pub requests_per_sec: f64,
    /// Mean request latency, milliseconds.
    pub request_latency_ms: f64,
    /// CPU used by the process, percent of one core.
    pub cpu_percent: f64,
    pub partitions_led: u32,
    /// Partitions with traffic (others have none).
    pub partitions: Vec<PartitionLoad>,
}

/// One gateway's registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    /// Differs for every process start.
    pub incarnation: String,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
    /// Shutting down: it hands its partitions over and takes none.
    pub draining: bool,
    pub load: Load,
}

impl Member {
    pub fn is_live(&self, now_ms: i64, timeout: Duration) -> bool {
        now_ms.saturating_sub(self.heartbeat_ms) <= timeout.as_millis() as i64
    }
}

/// Placements of one topic's partitions: `leaders[p]` is the node id that should lead
/// partition p, or -1 (no placement: the hash decides).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub leaders: Vec<i32>,
}

fn member_key(node_id: i32) -> String {
    format!("{node_id:010}")
}

/// Every registered gateway, live or not, by node id.
pub async fn members(meta: &dyn MetadataStore) -> Result<Vec<Member>, MetadataError> {
    let mut out = Vec::new();
    for (key, value) in meta.record_list(MEMBERS).await? {
        match serde_json::from_slice::<Member>(&value) {
            Ok(m) => out.push(m),
            Err(e) => {
                tracing::warn!(key, error = %e, "ignoring an unreadable gateway registration")
            }
        }
    }
    out.sort_by_key(|m| m.node_id);
    Ok(out)
}

/// The gateways whose heartbeat is recent.
pub fn live(members: &[Member], now_ms: i64, timeout: Duration) -> Vec<Member> {
    members
        .iter()
        .filter(|m| m.is_live(now_ms, timeout))
        .cloned()
        .collect()
}

/// Every topic's placements.
pub async fn assignments(
    meta: &dyn MetadataStore,
) -> Result<HashMap<TopicId, Vec<i32>>, MetadataError> {
    let mut out = HashMap::new();
    for (key, value) in meta.record_list(ASSIGNMENTS).await? {
        let (Ok(id), Ok(a)) = (
            key.parse::<uuid::Uuid>(),
            serde_json::from_slice::<Assignment>(&value),
        ) else {
            tracing::warn!(key, "ignoring an unreadable partition assignment");
            continue;
        };
        out.insert(TopicId(id), a.leaders);
    }
    Ok(out)
}

/// Writes one topic's placements.
pub async fn write_assignment(
    meta: &dyn MetadataStore,
    topic: TopicId,
    leaders: Vec<i32>,
) -> Result<(), MetadataError> {
    let value = serde_json::to_vec(&Assignment { leaders })
        .map_err(|e| MetadataError::Invalid(e.to_string()))?;
    meta.record_put(ASSIGNMENTS, &topic.0.to_string(), value, false)
        .await
}

/// Rendezvous (highest random weight) choice of a node for `key`: stable while the node
/// set is, and a node joining or leaving moves only the keys it gains or held.
pub fn rendezvous(key: &[u8], nodes: &[i32]) -> Option<i32> {
    nodes
        .iter()
        .copied()
        .max_by_key(|n| (weir_common::stable_hash(&[key, &n.to_be_bytes()]), *n))
}

fn partition_key(tp: TopicPartition) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..16].copy_from_slice(tp.topic_id.0.as_bytes());
    key[16..].copy_from_slice(&tp.partition.to_be_bytes());
    key
}

/// Who should lead `tp`: its placement if that gateway is eligible, else the hash's choice.
pub fn desired_leader(assigned: Option<i32>, tp: TopicPartition, eligible: &[i32]) -> Option<i32> {
    match assigned {
        Some(n) if eligible.contains(&n) => Some(n),
        _ => rendezvous(&partition_key(tp), eligible),
    }
}

/// The cluster as this gateway last saw it.
#[derive(Debug, Default)]
pub struct View {
    /// Live gateways by node id (this one included).
    pub members: Vec<Member>,
    /// Node ids that take partitions and groups: live and not draining.
    pub eligible: Vec<i32>,
}

impl View {
    pub fn member(&self, node_id: i32) -> Option<&Member> {
        self.members.iter().find(|m| m.node_id == node_id)
    }
}

/// Counters the heartbeat turns into rates.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub request_micros: AtomicU64,
}

#[derive(Debug)]
struct Sample {
    at: Instant,
    requests: u64,
    request_micros: u64,
    cpu_ticks: Option<u64>,
    partitions: HashMap<TopicPartition, (u64, u64)>,
}

/// A partition to take: its log, the epoch read, the leader recorded then.
type Take = (Arc<PartitionLog>, i32, i32);

/// This gateway's membership and leadership duties.
#[derive(Debug)]
pub struct Cluster {
    pub node_id: i32,
    pub config: ClusterConfig,
    host: String,
    port: i32,
    incarnation: String,
    started_ms: i64,
    view: RwLock<Arc<View>>,
    assigned: RwLock<Arc<HashMap<TopicId, Vec<i32>>>>,
    pub stats: Stats,
    draining: AtomicBool,
    /// Partitions being handed over right now.
    releasing: Mutex<HashSet<TopicPartition>>,
    sample: Mutex<Option<Sample>>,
    last_load: Mutex<Load>,
    /// Wakes the sync loop early (a topic was created here).
    pub wake: tokio::sync::Notify,
    /// When topics and leaders were last read (alone, a gateway reads them less often).
    last_full: Mutex<Option<Instant>>,
}

impl Cluster {
    pub fn new(node_id: i32, host: String, port: i32, config: ClusterConfig) -> Self {
        let me = Member {
            node_id,
            host: host.clone(),
            port,
            rack: config.rack.clone(),
            incarnation: uuid::Uuid::new_v4().simple().to_string(),
            started_ms: weir_common::now_ms(),
            heartbeat_ms: weir_common::now_ms(),
            draining: false,
            load: Load::default(),
        };
        Cluster {
            node_id,
            host,
            port,
            incarnation: me.incarnation.clone(),
            started_ms: me.started_ms,
            view: RwLock::new(Arc::new(View {
                eligible: vec![node_id],
                members: vec![me],
            })),
            assigned: RwLock::new(Arc::new(HashMap::new())),
            config,
            stats: Stats::default(),
            draining: AtomicBool::new(false),
            releasing: Mutex::new(HashSet::new()),
            sample: Mutex::new(None),
            last_load: Mutex::new(Load::default()),
            wake: tokio::sync::Notify::new(),
            last_full: Mutex::new(None),
        }
    }

    pub fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The gateway that coordinates `group`.
    pub fn coordinator(&self, group: &str) -> Member {
        let view = self.view();
        rendezvous(group.as_bytes(), &view.eligible)
            .and_then(|n| view.member(n).cloned())
            .unwrap_or_else(|| self.me(Load::default()))
    }

    /// Whether this gateway coordinates `group`.
    pub fn is_coordinator(&self, group: &str) -> bool {
        self.coordinator(group).node_id == self.node_id
    }

    fn me(&self, load: Load) -> Member {
        Member {
            node_id: self.node_id,
            host: self.host.clone(),
            port: self.port,
            rack: self.config.rack.clone(),
            incarnation: self.incarnation.clone(),
            started_ms: self.started_ms,
            heartbeat_ms: weir_common::now_ms(),
            draining: self.is_draining(),
            load,
        }
    }

    /// Registers this gateway. Another live gateway with the same node id makes this fail
    /// (after waiting out its timeout, in case it is a previous run that was killed).
    pub async fn register(&self, meta: &dyn MetadataStore) -> Result<(), MetadataError> {
        if !self.config.exclusive {
            let deadline = Instant::now() + self.config.member_timeout + Duration::from_secs(1);
            loop {
                // A fresh registration at this gateway's own address is a previous run that
                // was killed: this process holds that port now.
                let other = members(meta).await?.into_iter().find(|m| {
                    m.node_id == self.node_id
                        && m.incarnation != self.incarnation
                        && !(m.host == self.host && m.port == self.port)
                        && m.is_live(weir_common::now_ms(), self.config.member_timeout)
                });
                let Some(other) = other else { break };
                if Instant::now() >= deadline {
                    return Err(MetadataError::Invalid(format!(
                        "node id {} is in use by a live gateway at {}:{}: give each gateway its own --node-id",
                        self.node_id, other.host, other.port
                    )));
                }
                tracing::info!(
                    node_id = self.node_id,
                    "a registration of this node id is still fresh; waiting for it to expire"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        self.heartbeat_with(meta, Load::default()).await
    }

    async fn heartbeat_with(
        &self,
        meta: &dyn MetadataStore,
        load: Load,
    ) -> Result<(), MetadataError> {
        let me = self.me(load);
        let value = serde_json::to_vec(&me).map_err(|e| MetadataError::Invalid(e.to_string()))?;
        meta.record_put(MEMBERS, &member_key(self.node_id), value, false)
            .await
    }

    /// Measures the load since the last heartbeat and writes the heartbeat.
    pub async fn heartbeat(&self, gw: &Gateway) -> Result<(), MetadataError> {
        let load = self.measure(gw);
        *self.last_load.lock().unwrap_or_else(|e| e.into_inner()) = load.clone();
        self.heartbeat_with(gw.meta.as_ref(), load).await
    }

    /// The load measured at the last heartbeat.
    pub fn load(&self) -> Load {
        self.last_load
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn measure(&self, gw: &Gateway) -> Load {
        let now = Instant::now();
        let mut partitions = HashMap::new();
        let mut led = 0u32;
        for topic in gw.registry.all() {
            for p in 0..topic.partition_count() {
                if let Some(log) = topic.partition(p) {
                    if log.lock().led {
                        led += 1;
                        partitions.insert(
                            log.tp,
                            (
                                log.bytes_in.load(Ordering::Relaxed),
                                log.bytes_out.load(Ordering::Relaxed),
                            ),
                        );
                    }
                }
            }
        }
        let current = Sample {
            at: now,
            requests: self.stats.requests.load(Ordering::Relaxed),
            request_micros: self.stats.request_micros.load(Ordering::Relaxed),
            cpu_ticks: cpu_ticks(),
            partitions,
        };
        let mut sample = self.sample.lock().unwrap_or_else(|e| e.into_inner());
        let mut load = Load {
            connections: gw.limits.open() as u64,
            partitions_led: led,
            ..Load::default()
        };
        if let Some(prev) = sample.as_ref() {
            let secs = now.duration_since(prev.at).as_secs_f64().max(0.001);
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            let requests = current.requests.saturating_sub(prev.requests);
            load.requests_per_sec = requests as f64 / secs;
            if requests > 0 {
                load.request_latency_ms = current.request_micros.saturating_sub(prev.request_micros)
                    as f64
                    / requests as f64
                    / 1000.0;
            }
            if let (Some(a), Some(b)) = (current.cpu_ticks, prev.cpu_ticks) {
                // Linux reports CPU time in clock ticks of 1/100 s.
                load.cpu_percent = a.saturating_sub(b) as f64 / secs;
            }
            for (tp, (bytes_in, bytes_out)) in &current.partitions {
                let (in0, out0) = prev
                    .partitions
                    .get(tp)
                    .copied()
                    .unwrap_or((*bytes_in, *bytes_out));
                let (i, o) = (rate(*bytes_in, in0), rate(*bytes_out, out0));
                load.bytes_in_per_sec += i;
                load.bytes_out_per_sec += o;
                if i > 0.0 || o > 0.0 {
                    load.partitions.push(PartitionLoad {
                        topic: tp.topic_id.0,
                        partition: tp.partition,
                        bytes_in_per_sec: i,
                        bytes_out_per_sec: o,
                    });
                }
            }
        }
        *sample = Some(current);
        load
    }

    /// Reads members, topics and placements, then takes and hands over partitions. A
    /// gateway alone in its cluster reads topics and leaders only every
    /// [`ALONE_FULL_SYNC`] unless `force`d: nobody else changes them but operators' tools.
    pub async fn sync(&self, gw: &Arc<Gateway>, force: bool) -> Result<(), MetadataError> {
        let meta = gw.meta.as_ref();
        let now = weir_common::now_ms();
        let registered = members(meta).await?;
        let mut live = live(&registered, now, self.config.member_timeout);
        live.retain(|m| m.node_id != self.node_id);
        live.push(self.me(self.load()));
        live.sort_by_key(|m| m.node_id);
        let mut eligible: Vec<i32> = live
            .iter()
            .filter(|m| !m.draining)
            .map(|m| m.node_id)
            .collect();
        if eligible.is_empty() {
            // Everyone is draining: partitions still need a leader.
            eligible = live.iter().map(|m| m.node_id).collect();
        }
        let alone = live.len() == 1;
        let was_alone = self.view().members.len() == 1;
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(View {
            members: live,
            eligible,
        });
        {
            let mut last = self.last_full.lock().unwrap_or_else(|e| e.into_inner());
            let recent = last.is_some_and(|at| at.elapsed() < ALONE_FULL_SYNC);
            if alone && was_alone && recent && !force {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        self.refresh_topics(gw).await?;
        *self.assigned.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(assignments(meta).await?);
        let mut takes = Vec::new();
        for topic in gw.registry.all() {
            takes.extend(self.reconcile(gw, topic.id).await?);
        }
        self.take_all(gw, takes).await;
        Ok(())
    }

    /// Takes or hands over the partitions of one topic now (a topic was just created here).
    pub async fn sync_topic(&self, gw: &Arc<Gateway>, topic: TopicId) -> Result<(), MetadataError> {
        let takes = self.reconcile(gw, topic).await?;
        self.take_all(gw, takes).await;
        Ok(())
    }

    /// Brings the registry's topics in line with the metadata store (topics created,
    /// deleted, grown or reconfigured through another gateway).
    async fn refresh_topics(&self, gw: &Arc<Gateway>) -> Result<(), MetadataError> {
        // Topic mutations of this gateway hold the same lock: a topic created here after the
        // list was read is not taken for one deleted elsewhere.
        let _admin = gw.admin.lock().await;
        let records = gw.meta.list_topics().await?;
        let ids: HashSet<TopicId> = records.iter().map(|r| r.id).collect();
        for topic in gw.registry.all() {
            if !ids.contains(&topic.id) {
                tracing::info!(topic = %topic.name, "topic deleted through another gateway");
                gw.registry.remove_id(topic.id);
            }
        }
        for record in records {
            match gw.registry.topic_by_id(record.id) {
                Some(topic) => {
                    let reconfigured = record.configs != topic.record().configs;
                    if record.partitions > topic.partition_count() {
                        let states = gw.meta.partition_states(record.id).await?;
                        gw.registry.add_partitions(&topic, record.clone(), &states);
                    }
                    if reconfigured {
                        gw.registry.update_configs(&topic, record);
                    }
                }
                None => {
                    let states = gw.meta.partition_states(record.id).await?;
                    if states.len() as i32 >= record.partitions {
                        gw.registry.insert(record, &states);
                    }
                }
            }
        }
        Ok(())
    }

    /// Acts on one topic's recorded leaders; returns the partitions to take.
    async fn reconcile(
        &self,
        gw: &Arc<Gateway>,
        topic_id: TopicId,
    ) -> Result<Vec<Take>, MetadataError> {
        let Some(topic) = gw.registry.topic_by_id(topic_id) else {
            return Ok(Vec::new());
        };
        let states = gw.meta.partition_states(topic_id).await?;
        let view = self.view();
        let assigned = self
            .assigned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&topic_id)
            .cloned()
            .unwrap_or_default();
        let live = |n: i32| view.member(n).is_some();
        let mut takes = Vec::new();
        for st in states {
            let Some(log) = topic.partition(st.partition) else {
                continue;
            };
            let tp = log.tp;
            let placed = assigned
                .get(st.partition as usize)
                .copied()
                .filter(|n| *n >= 0);
            let desired = desired_leader(placed, tp, &view.eligible);
            let releasing = self
                .releasing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&tp);
            let holds = {
                let mut s = log.lock();
                // Epochs only grow: a state read before this gateway's own take is older,
                // not a sign that someone else took the partition.
                if s.led && st.leader_epoch > s.leader_epoch {
                    tracing::warn!(%tp, epoch = s.leader_epoch, now = st.leader_epoch, leader = st.leader,
                        "another gateway took this partition; stepping down");
                    s.led = false;
                    s.generation += 1;
                    log.reset_to_durable(&mut s);
                }
                if !s.led {
                    s.leader_epoch = st.leader_epoch;
                    // Between leaders, point clients at the one about to take over: they
                    // retry there (NOT_LEADER_OR_FOLLOWER until it has) instead of waiting
                    // for a leader to appear.
                    s.leader = if st.leader != NO_LEADER && live(st.leader) {
                        st.leader
                    } else {
                        desired.unwrap_or(NO_LEADER)
                    };
                }
                s.led
            };
            if releasing {
                continue;
            }
            if holds && desired != Some(self.node_id) {
                self.release(gw, log, desired);
            } else if !holds
                && desired == Some(self.node_id)
                && (st.leader == NO_LEADER || st.leader == self.node_id || !live(st.leader))
            {
                takes.push((log, st.leader_epoch, st.leader));
            }
        }
        Ok(takes)
    }

    async fn take_all(&self, gw: &Arc<Gateway>, takes: Vec<Take>) {
        if takes.is_empty() {
            return;
        }
        let took = futures::stream::iter(takes)
            .map(|(log, epoch, from)| self.take(gw, log, epoch, from))
            .buffer_unordered(16)
            .filter(|ok| futures::future::ready(*ok))
            .count()
            .await;
        if took > 0 {
            gw.registry.notify();
        }
    }

    async fn take(&self, gw: &Arc<Gateway>, log: Arc<PartitionLog>, epoch: i32, from: i32) -> bool {
        let started = Instant::now();
        match gw.meta.take_leadership(log.tp, self.node_id, epoch).await {
            Ok(Some(tail)) => {
                gw.storage.discard(log.tp);
                log.install(&tail, self.node_id);
                let took_ms = started.elapsed().as_millis() as u64;
                if from == NO_LEADER || from == self.node_id {
                    tracing::debug!(tp = %log.tp, epoch = tail.state.leader_epoch,
                        next_offset = tail.state.next_offset, took_ms, "leading partition");
                } else {
                    tracing::info!(tp = %log.tp, epoch = tail.state.leader_epoch, from,
                        next_offset = tail.state.next_offset, took_ms, "took the partition over");
                }
                true
            }
            Ok(None) => {
                tracing::debug!(tp = %log.tp, "another gateway took the partition first");
                false
            }
            Err(e) => {
                tracing::warn!(tp = %log.tp, error = %e, "taking the partition failed; retrying next sync");
                false
            }
        }
    }

    /// Hands a partition over: stop appending, let appends in flight commit, release.
    fn release(&self, gw: &Arc<Gateway>, log: Arc<PartitionLog>, to: Option<i32>) {
        self.releasing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(log.tp);
        let gw = gw.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            release_partition(&gw, &log, to).await;
            gw.cluster
                .releasing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&log.tp);
            tracing::info!(tp = %log.tp, to = ?to, took_ms = started.elapsed().as_millis() as u64,
                "handed the partition over");
        });
    }

    /// Shutdown: hands every partition over and stops heartbeating, so that other gateways
    /// take over at once instead of after the member timeout.
    pub async fn leave(&self, gw: &Arc<Gateway>) {
        self.draining.store(true, Ordering::SeqCst);
        if let Err(e) = self.heartbeat(gw).await {
            tracing::warn!(error = %e, "could not announce the shutdown");
        }
        let mut handovers = Vec::new();
        for topic in gw.registry.all() {
            for p in 0..topic.partition_count() {
                if let Some(log) = topic.partition(p) {
                    if log.lock().led {
                        let gw = gw.clone();
                        handovers.push(async move { release_partition(&gw, &log, None).await });
                    }
                }
            }
        }
        let count = handovers.len();
        futures::stream::iter(handovers)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        if !self.config.exclusive {
            if let Err(e) = gw
                .meta
                .record_delete(MEMBERS, &member_key(self.node_id))
                .await
            {
                tracing::warn!(error = %e, "could not deregister");
            }
        }
        tracing::info!(partitions = count, "handed every partition over");
    }
}

async fn release_partition(gw: &Gateway, log: &PartitionLog, to: Option<i32>) {
    let (epoch, generation) = {
        let mut s = log.lock();
        if !s.led {
            return;
        }
        s.led = false;
        s.leader = to.unwrap_or(NO_LEADER);
        (s.leader_epoch, s.generation)
    };
    // Appends already admitted finish (or fail) at this epoch; wait for them.
    let mut changes = gw.registry.subscribe();
    let deadline = tokio::time::Instant::now() + gw.cluster.config.drain_timeout;
    loop {
        {
            let s = log.lock();
            if s.next_offset <= s.high_watermark || s.generation != generation || s.deleted {
                break;
            }
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            tracing::warn!(tp = %log.tp, "appends still in flight at the hand-over; the next leader's epoch fences them");
            break;
        }
    }
    match gw
        .meta
        .release_leadership(log.tp, gw.cluster.node_id, epoch)
        .await
    {
        Ok(_) => {}
        Err(e) => {
            // The next leader takes it after the member timeout instead.
            tracing::warn!(tp = %log.tp, error = %e, "releasing the partition failed")
        }
    }
    let mut s = log.lock();
    if !s.led {
        s.generation += 1;
        log.reset_to_durable(&mut s);
    }
}

/// CPU time of this process in clock ticks (Linux), None elsewhere.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Partition states read for a new topic: the same shape the store returns.
pub fn empty_states(partitions: i32) -> Vec<PartitionState> {
    (0..partitions).map(PartitionState::empty).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition {
            topic_id: TopicId(uuid::Uuid::from_u128(42)),
            partition: p,
        }
    }

    #[test]
    fn rendezvous_moves_only_the_joiners_share() {
        let before: Vec<Option<i32>> = (0..600)
            .map(|p| desired_leader(None, tp(p), &[1, 2]))
            .collect();
        let after: Vec<Option<i32>> = (0..600)
            .map(|p| desired_leader(None, tp(p), &[1, 2, 3]))
            .collect();
        let moved: Vec<usize> = (0..600).filter(|&i| before[i] != after[i]).collect();
        // Every moved partition went to the new gateway; it got about a third.
        assert!(moved.iter().all(|&i| after[i] == Some(3)));
        assert!((150..250).contains(&moved.len()), "moved {}", moved.len());
        for n in [1, 2] {
            let count = after.iter().filter(|l| **l == Some(n)).count();
            assert!((150..250).contains(&count), "node {n} leads {count}");
        }
    }

    #[test]
    fn placement_wins_while_its_gateway_is_eligible() {
        assert_eq!(desired_leader(Some(7), tp(0), &[1, 7]), Some(7));
        let fallback = desired_leader(Some(7), tp(0), &[1, 2]);
        assert!(matches!(fallback, Some(1) | Some(2)));
        assert_eq!(desired_leader(None, tp(0), &[]), None);
    }

    #[test]
    fn liveness_follows_the_heartbeat_age() {
        let m = Member {
            node_id: 1,
            host: "h".into(),
            port: 1,
            rack: None,
            incarnation: "a".into(),
            started_ms: 0,
            heartbeat_ms: 10_000,
            draining: false,
            load: Load::default(),
        };
        assert!(m.is_live(12_000, Duration::from_secs(3)));
        assert!(!m.is_live(13_001, Duration::from_secs(3)));
    }

    #[test]
    fn cpu_ticks_are_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(cpu_ticks().is_some());
        }
    }
}
