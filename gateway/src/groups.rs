//! The group coordinator: Kafka's classic rebalance protocol as a state machine.
//!
//! Group membership is soft state held here (it is rebuilt by clients rejoining after a
//! restart); committed offsets are durable in the metadata store. A group moves through
//! Empty -> PreparingRebalance -> CompletingRebalance -> Stable (and Dead once deleted), with
//! generation ids, MEMBER_ID_REQUIRED on a first dynamic join (JoinGroup v4+), static
//! membership (`group.instance.id`, a newer instance fences the older one), session and
//! rebalance timeouts, and the initial rebalance delay of a new group
//! (`group.initial.rebalance.delay.ms`).
//!
//! Nothing here holds a lock across an await: requests mutate the group under its mutex and,
//! when they must wait (JoinGroup until the rebalance completes, SyncGroup until the leader
//! sent the assignment), take a oneshot receiver and await it unlocked. A ticker drives the
//! timeouts.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use weir_common::clock::{Clock, SystemClock};

/// Coordinator settings.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Delay before the first rebalance of a new group completes, so that members starting
    /// together land in one generation.
    pub initial_rebalance_delay: Duration,
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    /// Largest metadata string accepted with a committed offset.
    pub max_metadata_bytes: usize,
    /// An Empty group that never had offsets committed is forgotten after this long (Kafka
    /// removes such groups at its next offsets-retention check). Groups with committed offsets
    /// stay until their offsets expire (`offsets.retention.minutes`).
    pub empty_group_expiry: Duration,
    /// Committed offsets of a group without members expire after this long (Kafka's
    /// `offsets.retention.minutes`, 7 days).
    pub offsets_retention: Duration,
    /// How often offsets are checked for expiry (`offsets.retention.check.interval.ms`).
    pub offsets_retention_check_interval: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay: Duration::from_millis(3000),
            min_session_timeout: Duration::from_millis(1000),
            max_session_timeout: Duration::from_millis(1_800_000),
            max_metadata_bytes: 4096,
            empty_group_expiry: Duration::from_secs(60),
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
            offsets_retention_check_interval: Duration::from_secs(600),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka uses in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// What a JoinGroup gets back.
#[derive(Clone, Debug, Default)]
pub struct JoinResult {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// (member id, group instance id, metadata): only for the leader.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    fn error(e: ResponseError, member_id: &str) -> Self {
        JoinResult {
            error: Some(e),
            generation: -1,
            member_id: member_id.to_string(),
            ..Default::default()
        }
    }
}

/// What a SyncGroup gets back.
#[derive(Clone, Debug, Default)]
pub struct SyncResult {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    fn error(e: ResponseError) -> Self {
        SyncResult {
            error: Some(e),
            ..Default::default()
        }
    }
}

/// An answer now, or later.
#[derive(Debug)]
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

/// A JoinGroup request in coordinator terms.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new dynamic member first gets MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

#[derive(Debug)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    last_seen: Instant,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
    /// Join order, for choosing a leader.
    order: u64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

#[derive(Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, valid until the deadline.
    pending: HashMap<String, Instant>,
    /// group.instance.id -> member id
    statics: HashMap<String, String>,
    rebalance_deadline: Option<Instant>,
    /// A new group's first rebalance completes no earlier than this.
    join_not_before: Option<Instant>,
    next_order: u64,
    /// Since when the group has had no members and no pending joins.
    empty_since: Option<Instant>,
    /// Whether a member of this group was allowed to commit offsets here.
    committed: bool,
}

impl Group {
    fn new(id: &str) -> Self {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            statics: HashMap::new(),
            rebalance_deadline: None,
            join_not_before: None,
            next_order: 0,
            empty_since: None,
            committed: false,
        }
    }

    /// Whether the group holds nothing: no members, no pending joins, no rebalance.
    fn is_idle(&self) -> bool {
        self.state == GroupState::Empty && self.members.is_empty() && self.pending.is_empty()
    }

    /// Checks a (member id, instance id) pair: Err when the member is unknown or fenced.
    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        if let Some(iid) = instance_id {
            match self.statics.get(iid) {
                Some(current) if current != member_id => {
                    return Err(ResponseError::FencedInstanceId)
                }
                None if !self.members.contains_key(member_id) => {
                    return Err(ResponseError::UnknownMemberId)
                }
                _ => {}
            }
        }
        if self.members.contains_key(member_id) {
            Ok(())
        } else {
            Err(ResponseError::UnknownMemberId)
        }
    }

    fn touch(&mut self, member_id: &str, now: Instant) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_seen = now;
        }
    }

    /// Protocols every member supports, in the order of `first`'s preference.
    fn common_protocols(&self, extra: Option<&[(String, Bytes)]>) -> Vec<String> {
        let mut lists: Vec<Vec<&str>> = self
            .members
            .values()
            .map(|m| m.protocols.iter().map(|(n, _)| n.as_str()).collect())
            .collect();
        if let Some(extra) = extra {
            lists.push(extra.iter().map(|(n, _)| n.as_str()).collect());
        }
        let Some(first) = lists.first() else {
            return Vec::new();
        };
        first
            .iter()
            .filter(|p| lists.iter().all(|l| l.contains(p)))
            .map(|p| p.to_string())
            .collect()
    }

    /// Kafka's protocol choice: each member votes for its most preferred common protocol.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.common_protocols(None);
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        candidates
            .iter()
            .max_by_key(|c| {
                (
                    votes.get(c.as_str()).copied().unwrap_or(0),
                    std::cmp::Reverse(candidates.iter().position(|x| x == *c)),
                )
            })
            .cloned()
    }

    fn join_result_for(&self, member_id: &str) -> JoinResult {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .values()
                .map(|m| {
                    (
                        m.id.clone(),
                        m.instance_id.clone(),
                        m.metadata_for(&protocol),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader,
            member_id: member_id.to_string(),
            members,
        }
    }

    fn prepare_rebalance(&mut self, config: &GroupConfig, now: Instant) {
        match self.state {
            GroupState::PreparingRebalance => {
                // Another member arrived while a new group waits: wait a little more for the
                // rest, never past the rebalance deadline.
                if let Some(nb) = self.join_not_before {
                    let deadline = self.rebalance_deadline.unwrap_or(now);
                    self.join_not_before =
                        Some((now + config.initial_rebalance_delay).max(nb).min(deadline));
                }
                return;
            }
            GroupState::CompletingRebalance => {
                for m in self.members.values_mut() {
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send(SyncResult::error(ResponseError::RebalanceInProgress));
                    }
                }
            }
            _ => {}
        }
        let longest = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::from_secs(60));
        let deadline = now + longest;
        self.join_not_before = (self.state == GroupState::Empty
            && !config.initial_rebalance_delay.is_zero())
        .then(|| (now + config.initial_rebalance_delay).min(deadline));
        self.state = GroupState::PreparingRebalance;
        self.rebalance_deadline = Some(deadline);
    }

    fn remove_member(&mut self, member_id: &str, why: ResponseError) {
        if let Some(mut m) = self.members.remove(member_id) {
            if let Some(iid) = &m.instance_id {
                if self.statics.get(iid).map(String::as_str) == Some(member_id) {
                    self.statics.remove(iid);
                }
            }
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinResult::error(why, member_id));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncResult::error(why));
            }
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.order)
                .map(|m| m.id.clone());
        }
    }

    /// Completes the join phase when every member rejoined (or at the deadline, without
    /// those that did not).
    fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        if self.join_not_before.is_some_and(|t| now < t) {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some());
        let expired = self.rebalance_deadline.is_some_and(|d| now >= d);
        if !all_joined && !expired {
            return;
        }
        if expired {
            let late: Vec<String> = self
                .members
                .values()
                .filter(|m| m.join_waiter.is_none())
                .map(|m| m.id.clone())
                .collect();
            for id in late {
                tracing::info!(group = %self.id, member = %id, "member did not rejoin in time; removed");
                self.remove_member(&id, ResponseError::UnknownMemberId);
            }
        }
        self.generation += 1;
        self.rebalance_deadline = None;
        self.join_not_before = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            tracing::info!(group = %self.id, generation = self.generation, "group is empty");
            return;
        }
        self.protocol = self.select_protocol();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.contains_key(l))
        {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.order)
                .map(|m| m.id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        tracing::info!(group = %self.id, generation = self.generation, members = self.members.len(),
            protocol = ?self.protocol, leader = ?self.leader, "rebalance: join complete");
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let result = self.join_result_for(&id);
            if let Some(w) = self.members.get_mut(&id).and_then(|m| m.join_waiter.take()) {
                let _ = w.send(result);
            }
        }
    }

    fn expire(&mut self, config: &GroupConfig, now: Instant) {
        self.pending.retain(|_, deadline| *deadline > now);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.join_waiter.is_none()
                    && m.sync_waiter.is_none()
                    && now.duration_since(m.last_seen) > m.session_timeout
            })
            .map(|m| m.id.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        for id in &expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            self.remove_member(id, ResponseError::UnknownMemberId);
        }
        self.state_after_removal(config, now);
    }

    /// After members left: the rest rebalance; an emptied group becomes Empty.
    fn state_after_removal(&mut self, config: &GroupConfig, now: Instant) {
        if self.state == GroupState::PreparingRebalance {
            self.maybe_complete_join(now);
            return;
        }
        if self.members.is_empty() {
            self.generation += 1;
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.prepare_rebalance(config, now);
        self.maybe_complete_join(now);
    }
}

/// All groups this gateway coordinates.
#[derive(Debug)]
pub struct Coordinator {
    pub config: GroupConfig,
    groups: Mutex<HashMap<String, Arc<Mutex<Group>>>>,
    clock: Arc<dyn Clock>,
}

fn lock(g: &Mutex<Group>) -> std::sync::MutexGuard<'_, Group> {
    g.lock().unwrap_or_else(|e| e.into_inner())
}

impl Coordinator {
    pub fn new(config: GroupConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// A coordinator whose timeouts run on `clock`.
    pub fn with_clock(config: GroupConfig, clock: Arc<dyn Clock>) -> Self {
        Coordinator {
            config,
            groups: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<Group>>>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Arc<Mutex<Group>>> {
        self.map().get(id).cloned()
    }

    fn get_or_create(&self, id: &str) -> Arc<Mutex<Group>> {
        self.map()
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Group::new(id))))
            .clone()
    }

    /// Every group in memory: (id, state, protocol type, member count).
    pub fn list(&self) -> Vec<(String, GroupState, String, usize)> {
        let groups: Vec<Arc<Mutex<Group>>> = self.map().values().cloned().collect();
        groups
            .iter()
            .map(|g| {
                let g = lock(g);
                (
                    g.id.clone(),
                    g.state,
                    g.protocol_type.clone().unwrap_or_default(),
                    g.members.len(),
                )
            })
            .collect()
    }

    /// Runs timeouts: rebalance deadlines, initial delays, session expiry; and forgets
    /// groups idle past `empty_group_expiry` that never had offsets committed.
    pub fn tick(&self) {
        let now = self.clock.instant();
        let groups: Vec<Arc<Mutex<Group>>> = self.map().values().cloned().collect();
        let mut forget = Vec::new();
        for group in groups {
            let mut g = lock(&group);
            g.expire(&self.config, now);
            g.maybe_complete_join(now);
            if g.is_idle() {
                let since = *g.empty_since.get_or_insert(now);
                if !g.committed && now.duration_since(since) >= self.config.empty_group_expiry {
                    forget.push(group.clone());
                }
            } else {
                g.empty_since = None;
            }
        }
        if !forget.is_empty() {
            let mut map = self.map();
            for group in forget {
                let mut g = lock(&group);
                // Re-checked under the map lock: a join may have arrived meanwhile.
                if g.is_idle() && map.get(&g.id).is_some_and(|m| Arc::ptr_eq(m, &group)) {
                    g.state = GroupState::Dead;
                    map.remove(&g.id);
                }
            }
        }
    }

    /// Forgets idle groups whose offsets expired (the caller deleted them); a group
    /// with members is kept.
    pub fn forget_idle(&self, group_id: &str) {
        let mut map = self.map();
        let Some(group) = map.get(group_id).cloned() else {
            return;
        };
        let mut g = lock(&group);
        if g.is_idle() {
            g.state = GroupState::Dead;
            map.remove(group_id);
        }
    }

    /// How long the group has been idle (None: not in memory, or not idle).
    pub fn idle_for(&self, group_id: &str) -> Option<Option<Duration>> {
        let group = self.get(group_id)?;
        let g = lock(&group);
        Some(if g.is_idle() {
            let now = self.clock.instant();
            Some(
                g.empty_since
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
            )
        } else {
            None
        })
    }

    /// Groups in memory.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    pub fn join(&self, req: JoinRequest) -> Reply<JoinResult> {
        let cfg = &self.config;
        if req.group_id.is_empty() {
            return Reply::Now(JoinResult::error(
                ResponseError::InvalidGroupId,
                &req.member_id,
            ));
        }
        if req.session_timeout < cfg.min_session_timeout
            || req.session_timeout > cfg.max_session_timeout
        {
            return Reply::Now(JoinResult::error(
                ResponseError::InvalidSessionTimeout,
                &req.member_id,
            ));
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Reply::Now(JoinResult::error(
                ResponseError::InconsistentGroupProtocol,
                &req.member_id,
            ));
        }
        let mut group = self.get_or_create(&req.group_id);
        if lock(&group).state == GroupState::Dead {
            // Forgotten as idle between the lookup and now: it is out of the map, so this
            // makes a fresh one.
            group = self.get_or_create(&req.group_id);
        }
        let mut g = lock(&group);
        let now = self.clock.instant();
        if g.state == GroupState::Dead {
            return Reply::Now(JoinResult::error(
                ResponseError::CoordinatorNotAvailable,
                &req.member_id,
            ));
        }
        if !g.members.is_empty() {
            let type_ok = g
                .protocol_type
                .as_deref()
                .is_none_or(|t| t == req.protocol_type);
            if !type_ok || g.common_protocols(Some(&req.protocols)).is_empty() {
                return Reply::Now(JoinResult::error(
                    ResponseError::InconsistentGroupProtocol,
                    &req.member_id,
                ));
            }
        }
        let mut member_id = req.member_id.clone();
        if member_id.is_empty() {
            member_id = format!(
                "{}-{}",
                if req.client_id.is_empty() {
                    "member"
                } else {
                    &req.client_id
                },
                uuid::Uuid::new_v4()
            );
            if let Some(iid) = &req.instance_id {
                if let Some(old) = g.statics.get(iid).cloned() {
                    // A new instance of a static member takes over; the old one is fenced.
                    let was_leader = g.leader.as_deref() == Some(old.as_str());
                    // The group's protocol choice survives if the new instance supports it.
                    let unchanged = g
                        .protocol
                        .as_ref()
                        .is_some_and(|p| req.protocols.iter().any(|(n, _)| n == p));
                    if let Some(mut m) = g.members.remove(&old) {
                        if let Some(w) = m.join_waiter.take() {
                            let _ =
                                w.send(JoinResult::error(ResponseError::FencedInstanceId, &old));
                        }
                        if let Some(w) = m.sync_waiter.take() {
                            let _ = w.send(SyncResult::error(ResponseError::FencedInstanceId));
                        }
                        m.id = member_id.clone();
                        m.last_seen = now;
                        m.client_host = req.client_host.clone();
                        m.session_timeout = req.session_timeout;
                        m.rebalance_timeout = req.rebalance_timeout;
                        m.protocols = req.protocols.clone();
                        g.members.insert(member_id.clone(), m);
                    }
                    g.statics.insert(iid.clone(), member_id.clone());
                    if was_leader {
                        g.leader = Some(member_id.clone());
                    }
                    tracing::info!(group = %g.id, instance = %iid, old = %old, new = %member_id, "static member replaced");
                    if g.state == GroupState::Stable && unchanged {
                        // As Kafka: no rebalance. The answer names the old leader id, so a
                        // restarted leader does not compute (and cannot broadcast) a new
                        // assignment; SyncGroup returns the member's current one.
                        let mut result = g.join_result_for(&member_id);
                        result.members.clear();
                        if was_leader {
                            result.leader = old.clone();
                        }
                        return Reply::Now(result);
                    }
                    return self.wait_join(&mut g, &member_id, now);
                }
            } else if req.require_known_member_id {
                let deadline = now + req.session_timeout;
                g.pending.insert(member_id.clone(), deadline);
                return Reply::Now(JoinResult::error(
                    ResponseError::MemberIdRequired,
                    &member_id,
                ));
            }
            self.add_member(&mut g, &member_id, &req, now);
            return self.wait_join(&mut g, &member_id, now);
        }
        if let Some(iid) = &req.instance_id {
            if g.statics.get(iid).is_some_and(|m| *m != member_id) {
                return Reply::Now(JoinResult::error(
                    ResponseError::FencedInstanceId,
                    &member_id,
                ));
            }
        }
        if g.pending.remove(&member_id).is_some() {
            self.add_member(&mut g, &member_id, &req, now);
            return self.wait_join(&mut g, &member_id, now);
        }
        let Some(m) = g.members.get_mut(&member_id) else {
            return Reply::Now(JoinResult::error(
                ResponseError::UnknownMemberId,
                &member_id,
            ));
        };
        let changed = m.protocols != req.protocols;
        m.protocols = req.protocols.clone();
        m.session_timeout = req.session_timeout;
        m.rebalance_timeout = req.rebalance_timeout;
        m.last_seen = now;
        let is_leader = g.leader.as_deref() == Some(member_id.as_str());
        match g.state {
            GroupState::Stable if !is_leader && !changed => {
                Reply::Now(g.join_result_for(&member_id))
            }
            GroupState::CompletingRebalance if !changed => {
                Reply::Now(g.join_result_for(&member_id))
            }
            _ => self.wait_join(&mut g, &member_id, now),
        }
    }

    fn add_member(&self, g: &mut Group, member_id: &str, req: &JoinRequest, now: Instant) {
        let order = g.next_order;
        g.next_order += 1;
        if g.members.is_empty() {
            g.protocol_type = Some(req.protocol_type.clone());
        }
        if let Some(iid) = &req.instance_id {
            g.statics.insert(iid.clone(), member_id.to_string());
        }
        g.members.insert(
            member_id.to_string(),
            Member {
                id: member_id.to_string(),
                instance_id: req.instance_id.clone(),
                client_id: req.client_id.clone(),
                client_host: req.client_host.clone(),
                session_timeout: req.session_timeout,
                rebalance_timeout: req.rebalance_timeout,
                protocol_type: req.protocol_type.clone(),
                protocols: req.protocols.clone(),
                assignment: Bytes::new(),
                last_seen: now,
                join_waiter: None,
                sync_waiter: None,
                order,
            },
        );
    }

    fn wait_join(&self, g: &mut Group, member_id: &str, now: Instant) -> Reply<JoinResult> {
        let (tx, rx) = oneshot::channel();
        if let Some(m) = g.members.get_mut(member_id) {
            if let Some(old) = m.join_waiter.replace(tx) {
                let _ = old.send(JoinResult::error(
                    ResponseError::RebalanceInProgress,
                    member_id,
                ));
            }
        }
        g.prepare_rebalance(&self.config, now);
        g.maybe_complete_join(now);
        Reply::Later(rx)
    }

    pub fn sync(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        protocol: (Option<&str>, Option<&str>),
        assignments: Vec<(String, Bytes)>,
    ) -> Reply<SyncResult> {
        let Some(group) = self.get(group_id) else {
            return Reply::Now(SyncResult::error(ResponseError::UnknownMemberId));
        };
        let mut g = lock(&group);
        if let Err(e) = g.check_member(member_id, instance_id) {
            return Reply::Now(SyncResult::error(e));
        }
        if generation != g.generation {
            return Reply::Now(SyncResult::error(ResponseError::IllegalGeneration));
        }
        let (ptype, pname) = protocol;
        if ptype.is_some_and(|t| Some(t) != g.protocol_type.as_deref())
            || pname.is_some_and(|n| Some(n) != g.protocol.as_deref())
        {
            return Reply::Now(SyncResult::error(ResponseError::InconsistentGroupProtocol));
        }
        g.touch(member_id, self.clock.instant());
        match g.state {
            GroupState::PreparingRebalance => {
                Reply::Now(SyncResult::error(ResponseError::RebalanceInProgress))
            }
            GroupState::Stable => {
                let assignment = g
                    .members
                    .get(member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                Reply::Now(SyncResult {
                    error: None,
                    protocol_type: g.protocol_type.clone(),
                    protocol_name: g.protocol.clone(),
                    assignment,
                })
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = g.members.get_mut(member_id) {
                    m.sync_waiter = Some(tx);
                }
                if g.leader.as_deref() == Some(member_id) {
                    let mut map: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for m in g.members.values_mut() {
                        m.assignment = map.remove(&m.id).unwrap_or_default();
                    }
                    g.state = GroupState::Stable;
                    tracing::info!(group = %g.id, generation = g.generation, "rebalance: assignment received, group stable");
                    let (ptype, pname) = (g.protocol_type.clone(), g.protocol.clone());
                    for m in g.members.values_mut() {
                        if let Some(w) = m.sync_waiter.take() {
                            let _ = w.send(SyncResult {
                                error: None,
                                protocol_type: ptype.clone(),
                                protocol_name: pname.clone(),
                                assignment: m.assignment.clone(),
                            });
                        }
                    }
                }
                Reply::Later(rx)
            }
            GroupState::Empty | GroupState::Dead => {
                Reply::Now(SyncResult::error(ResponseError::UnknownMemberId))
            }
        }
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Option<ResponseError> {
        let Some(group) = self.get(group_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        let mut g = lock(&group);
        if let Err(e) = g.check_member(member_id, instance_id) {
            return Some(e);
        }
        g.touch(member_id, self.clock.instant());
        match g.state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance | GroupState::Stable if generation != g.generation => {
                Some(ResponseError::IllegalGeneration)
            }
            GroupState::CompletingRebalance | GroupState::Stable => None,
            GroupState::Empty | GroupState::Dead => Some(ResponseError::UnknownMemberId),
        }
    }

    /// Removes members; returns one error (or None) per (member id, instance id) given.
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        let Some(group) = self.get(group_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        let mut g = lock(&group);
        let now = self.clock.instant();
        let mut out = Vec::new();
        let mut removed = false;
        for (member_id, instance_id) in members {
            // A static member may leave by instance id alone.
            let id = match (member_id.is_empty(), instance_id) {
                (true, Some(iid)) => g.statics.get(iid).cloned().unwrap_or_default(),
                _ => member_id.clone(),
            };
            match g.check_member(&id, instance_id.as_deref()) {
                Ok(()) => {
                    tracing::info!(group = %g.id, member = %id, "member left");
                    g.remove_member(&id, ResponseError::UnknownMemberId);
                    removed = true;
                    out.push(None);
                }
                Err(e) => out.push(Some(e)),
            }
        }
        if removed {
            g.state_after_removal(&self.config, now);
        }
        Ok(out)
    }

    /// Checks that an offset commit may proceed: Ok(()) or the error for every partition.
    pub fn check_commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        let group = match self.get(group_id) {
            Some(g) => g,
            None if generation < 0 => return Ok(()),
            None => return Err(ResponseError::IllegalGeneration),
        };
        let mut g = lock(&group);
        if generation < 0 && member_id.is_empty() {
            // A commit outside group management (manual assignment).
            return if g.members.is_empty() {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId)
            };
        }
        g.check_member(member_id, instance_id)?;
        g.touch(member_id, self.clock.instant());
        if generation != g.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        if g.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        g.committed = true;
        Ok(())
    }

    /// Deletes a group that has no members: Err(NON_EMPTY_GROUP) otherwise.
    pub fn delete(&self, group_id: &str) -> Result<bool, ResponseError> {
        let mut map = self.map();
        let Some(group) = map.get(group_id).cloned() else {
            return Ok(false);
        };
        let mut g = lock(&group);
        if !g.members.is_empty() {
            return Err(ResponseError::NonEmptyGroup);
        }
        g.state = GroupState::Dead;
        map.remove(group_id);
        Ok(true)
    }
}

#[cfg(test)]
#[path = "groups_tests.rs"]
mod tests;
