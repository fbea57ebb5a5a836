//! Partition leadership: which gateway leads which partition and coordinates which group.
//!
//! This is the gateway's cluster brain, kept apart from the Kafka front end: it speaks no
//! Kafka, only the metadata store's leadership calls and the typed membership records of
//! [`weir_metadata_api::membership`]. The front end asks it [`Cluster::view`] (who is live, for
//! Metadata responses), [`Cluster::coordinator`] (for FindCoordinator) and whether a
//! partition log is led here.
//!
//! Every gateway registers in the metadata store ([`members`]) and heartbeats its address,
//! rack and load there ([`load`]). Each sync ([`sync`]) it reads the members, the topics
//! ([`topics`]), the placements the scaler or an operator wrote ([`ASSIGNMENTS`]) and every
//! partition's recorded leader and epoch, and then:
//!
//! - takes a partition placed on it once the recorded leader released it, is itself (a
//!   restart), or stopped heartbeating: [`MetadataStore::take_leadership`] is conditional on
//!   the epoch it read and bumps it, which fences every commit of the previous leader;
//! - hands over a partition placed elsewhere ([`handover`]): it stops accepting appends
//!   (clients get the retriable `NOT_LEADER_OR_FOLLOWER` and refresh their metadata), waits
//!   until its appends in flight are committed, then releases the partition in the metadata
//!   store.
//!
//! A partition without a placement, or placed on a gateway that is gone or draining, goes
//! to the gateway chosen by rendezvous hashing over the live gateways ([`hashing`]), so that
//! gateways balance partition counts without a scaler and a joining gateway moves only its
//! share. Group coordinators are chosen by the same hash over the group id.
//!
//! Liveness compares heartbeat wall-clock times, so gateways need synchronized clocks (NTP):
//! a clock running ahead by more than the member timeout could make a live gateway look
//! dead. That costs availability (a needless move), never data: every take is fenced.
//!
//! [`MetadataStore::take_leadership`]: weir_metadata_api::MetadataStore::take_leadership

mod handover;
mod hashing;
mod load;
mod members;
mod sync;
mod topics;

pub use hashing::{desired_leader, rendezvous};
pub use load::Stats;
pub use topics::{AdminGuard, AdminLock};
pub use weir_metadata_api::membership::{
    Assignment, Load, Member, PartitionLoad, ASSIGNMENTS, MEMBERS,
};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use weir_common::{TopicId, TopicPartition};
use weir_metadata_api::PartitionState;

/// How often a gateway alone in its cluster reads topics and leaders.
pub const ALONE_FULL_SYNC: Duration = Duration::from_secs(2);

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
    sample: Mutex<Option<load::Sample>>,
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
}

/// Partition states read for a new topic: the same shape the store returns.
pub fn empty_states(partitions: i32) -> Vec<PartitionState> {
    (0..partitions).map(PartitionState::empty).collect()
}
