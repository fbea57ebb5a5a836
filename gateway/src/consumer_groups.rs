//! The consumer group protocol of KIP-848 (`group.protocol=consumer`): members heartbeat
//! their subscription and owned partitions; the coordinator computes the target assignment
//! (server-side `uniform` or `range` assignor) and hands each member its partitions in steps
//! that never give a partition to a member while another still owns it.
//!
//! Per member: its epoch, its subscription, the partitions it reported owning, and the
//! assignment last sent. A member first loses the partitions it must give up (its epoch stays
//! behind); once it reports them released it receives the partitions freed for it, and when
//! it holds exactly its target it reaches the group epoch.

use kafka_protocol::ResponseError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_common::clock::{Clock, SystemClock};

/// A partition by topic id.
pub type Tp = (uuid::Uuid, i32);

/// How the coordinator sees a topic: id and partition count, by name.
pub type TopicLookup<'a> = &'a dyn Fn(&str) -> Option<(uuid::Uuid, i32)>;

#[derive(Debug)]
struct Member {
    instance_id: Option<String>,
    rack_id: Option<String>,
    client_id: String,
    client_host: String,
    subscribed: Vec<String>,
    assignor: Option<String>,
    epoch: i32,
    /// What the member was last told to own.
    assigned: BTreeSet<Tp>,
    /// What the member says it owns.
    owned: BTreeSet<Tp>,
    last_seen: Instant,
    /// Whether the next response must carry the assignment.
    send_assignment: bool,
}

#[derive(Debug, Default)]
struct Group {
    epoch: i32,
    assignment_epoch: i32,
    members: BTreeMap<String, Member>,
    target: HashMap<String, BTreeSet<Tp>>,
    /// The subscribed topics' partition counts the target was computed for.
    topology: BTreeMap<String, (uuid::Uuid, i32)>,
    assignor: String,
}

/// What a heartbeat gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval: Duration,
    /// The member's full assignment, when it changed (or on join).
    pub assignment: Option<Vec<Tp>>,
}

/// A ConsumerGroupHeartbeat in coordinator terms.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub subscribed: Option<Vec<String>>,
    pub assignor: Option<String>,
    pub owned: Option<Vec<Tp>>,
}

/// A member as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone)]
pub struct MemberView {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub member_epoch: i32,
    pub client_id: String,
    pub client_host: String,
    pub subscribed: Vec<String>,
    pub assignment: Vec<Tp>,
    pub target: Vec<Tp>,
}

/// A group as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub state: &'static str,
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: Vec<MemberView>,
}

/// Every KIP-848 group of this gateway.
#[derive(Debug)]
pub struct ConsumerGroups {
    groups: Mutex<HashMap<String, Group>>,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    clock: Arc<dyn Clock>,
}

const ASSIGNORS: &[&str] = &["uniform", "range"];

impl ConsumerGroups {
    pub fn new(session_timeout: Duration, heartbeat_interval: Duration) -> Self {
        Self::with_clock(session_timeout, heartbeat_interval, Arc::new(SystemClock))
    }

    /// Groups whose sessions run on `clock`.
    pub fn with_clock(
        session_timeout: Duration,
        heartbeat_interval: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        ConsumerGroups {
            groups: Mutex::new(HashMap::new()),
            session_timeout,
            heartbeat_interval,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn exists(&self, group: &str) -> bool {
        self.lock().contains_key(group)
    }

    /// (group id, state, member count) of every group.
    pub fn list(&self) -> Vec<(String, &'static str, usize)> {
        self.lock()
            .iter()
            .map(|(id, g)| (id.clone(), g.state(), g.members.len()))
            .collect()
    }

    /// Whether an offset commit by (member, epoch) may proceed.
    pub fn check_commit(
        &self,
        group: &str,
        member_id: &str,
        epoch: i32,
    ) -> Option<Result<(), ResponseError>> {
        let groups = self.lock();
        let g = groups.get(group)?;
        Some(match g.members.get(member_id) {
            None if member_id.is_empty() && epoch < 0 && g.members.is_empty() => Ok(()),
            None => Err(ResponseError::UnknownMemberId),
            Some(m) if epoch != m.epoch => Err(ResponseError::StaleMemberEpoch),
            Some(_) => Ok(()),
        })
    }

    pub fn delete(&self, group: &str) -> Result<bool, ResponseError> {
        let mut groups = self.lock();
        match groups.get(group) {
            None => Ok(false),
            Some(g) if !g.members.is_empty() => Err(ResponseError::NonEmptyGroup),
            Some(_) => {
                groups.remove(group);
                Ok(true)
            }
        }
    }

    /// Removes members whose session expired.
    pub fn tick(&self, topics: TopicLookup<'_>) {
        let now = self.clock.instant();
        let mut groups = self.lock();
        for (id, g) in groups.iter_mut() {
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| now.duration_since(m.last_seen) > self.session_timeout)
                .map(|(k, _)| k.clone())
                .collect();
            if !expired.is_empty() {
                for m in &expired {
                    tracing::info!(group = %id, member = %m, "consumer group member session expired");
                    g.members.remove(m);
                    g.target.remove(m);
                }
                g.epoch += 1;
                g.compute_target(topics);
            }
        }
    }

    pub fn heartbeat(
        &self,
        req: HeartbeatRequest,
        topics: TopicLookup<'_>,
    ) -> Result<Heartbeat, ResponseError> {
        if req.group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        if let Some(a) = &req.assignor {
            if !ASSIGNORS.contains(&a.as_str()) {
                return Err(ResponseError::UnsupportedAssignor);
            }
        }
        let now = self.clock.instant();
        let mut groups = self.lock();
        let g = groups.entry(req.group_id.clone()).or_default();
        let mut member_id = req.member_id.clone();
        match req.member_epoch {
            -1 | -2 => {
                // Leaving (-2: a static member leaving for a moment; treated the same here).
                if g.members.remove(&member_id).is_some() {
                    g.target.remove(&member_id);
                    g.epoch += 1;
                    g.compute_target(topics);
                    tracing::info!(group = %req.group_id, member = %member_id, "consumer group member left");
                }
                return Ok(Heartbeat {
                    member_id,
                    member_epoch: req.member_epoch,
                    heartbeat_interval: self.heartbeat_interval,
                    assignment: None,
                });
            }
            0 => {
                let Some(subscribed) = req.subscribed.clone() else {
                    return Err(ResponseError::InvalidRequest);
                };
                if member_id.is_empty() {
                    member_id = uuid::Uuid::new_v4().to_string();
                }
                // A static member rejoining replaces its previous incarnation.
                if let Some(iid) = &req.instance_id {
                    let previous: Vec<String> = g
                        .members
                        .iter()
                        .filter(|(k, m)| m.instance_id.as_deref() == Some(iid) && **k != member_id)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for p in previous {
                        g.members.remove(&p);
                        g.target.remove(&p);
                    }
                }
                let rejoin = g.members.contains_key(&member_id);
                g.members.insert(
                    member_id.clone(),
                    Member {
                        instance_id: req.instance_id.clone(),
                        rack_id: req.rack_id.clone(),
                        client_id: req.client_id.clone(),
                        client_host: req.client_host.clone(),
                        subscribed,
                        assignor: req.assignor.clone(),
                        epoch: 0,
                        assigned: BTreeSet::new(),
                        owned: req.owned.clone().unwrap_or_default().into_iter().collect(),
                        last_seen: now,
                        send_assignment: true,
                    },
                );
                g.epoch += 1;
                g.compute_target(topics);
                tracing::info!(group = %req.group_id, member = %member_id, rejoin, epoch = g.epoch, "consumer group member joined");
            }
            epoch => {
                let Some(m) = g.members.get_mut(&member_id) else {
                    return Err(ResponseError::UnknownMemberId);
                };
                if epoch != m.epoch {
                    return Err(ResponseError::FencedMemberEpoch);
                }
                m.last_seen = now;
                if let Some(owned) = &req.owned {
                    m.owned = owned.iter().copied().collect();
                }
                if let Some(a) = &req.assignor {
                    m.assignor = Some(a.clone());
                }
                let mut changed = false;
                if let Some(s) = &req.subscribed {
                    if *s != m.subscribed {
                        m.subscribed = s.clone();
                        changed = true;
                    }
                }
                if changed || g.topology_changed(topics) {
                    g.epoch += 1;
                    g.compute_target(topics);
                }
            }
        }
        Ok(g.reconcile(&member_id, self.heartbeat_interval))
    }

    pub fn describe(&self, group: &str) -> Option<GroupView> {
        let groups = self.lock();
        let g = groups.get(group)?;
        Some(GroupView {
            state: g.state(),
            epoch: g.epoch,
            assignment_epoch: g.assignment_epoch,
            assignor: g.assignor.clone(),
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberView {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    rack_id: m.rack_id.clone(),
                    member_epoch: m.epoch,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    subscribed: m.subscribed.clone(),
                    assignment: m.assigned.iter().copied().collect(),
                    target: g
                        .target
                        .get(id)
                        .map(|t| t.iter().copied().collect())
                        .unwrap_or_default(),
                })
                .collect(),
        })
    }
}

impl Group {
    fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.members.values().all(|m| m.epoch == self.epoch) {
            "Stable"
        } else {
            "Reconciling"
        }
    }

    fn subscribed_topology(&self, topics: TopicLookup<'_>) -> BTreeMap<String, (uuid::Uuid, i32)> {
        let mut out = BTreeMap::new();
        for m in self.members.values() {
            for t in &m.subscribed {
                if let Some(info) = topics(t) {
                    out.insert(t.clone(), info);
                }
            }
        }
        out
    }

    fn topology_changed(&self, topics: TopicLookup<'_>) -> bool {
        self.subscribed_topology(topics) != self.topology
    }

    /// Recomputes every member's target assignment (sticky: a member keeps what it has up
    /// to its fair share).
    fn compute_target(&mut self, topics: TopicLookup<'_>) {
        self.topology = self.subscribed_topology(topics);
        self.assignor = self
            .members
            .values()
            .find_map(|m| m.assignor.clone())
            .unwrap_or_else(|| "uniform".to_string());
        let mut target: HashMap<String, BTreeSet<Tp>> = self
            .members
            .keys()
            .map(|k| (k.clone(), BTreeSet::new()))
            .collect();
        for (topic, (id, count)) in &self.topology {
            let mut subscribers: Vec<&String> = self
                .members
                .iter()
                .filter(|(_, m)| m.subscribed.contains(topic))
                .map(|(k, _)| k)
                .collect();
            subscribers.sort();
            if subscribers.is_empty() {
                continue;
            }
            let n = subscribers.len() as i32;
            if self.assignor == "range" {
                let per = count / n;
                let extra = count % n;
                let mut next = 0;
                for (i, member) in subscribers.iter().enumerate() {
                    let take = per + i32::from((i as i32) < extra);
                    let set = target.entry((*member).clone()).or_default();
                    for p in next..next + take {
                        set.insert((*id, p));
                    }
                    next += take;
                }
            } else {
                // Uniform, sticky: keep current holders up to the quota, then fill.
                let quota = |i: usize| count / n + i32::from((i as i32) < count % n);
                let mut free: Vec<i32> = Vec::new();
                let mut held: HashMap<&String, i32> = HashMap::new();
                for p in 0..*count {
                    let holder = subscribers.iter().position(|m| {
                        self.members
                            .get(*m)
                            .is_some_and(|mm| mm.assigned.contains(&(*id, p)))
                    });
                    match holder {
                        Some(i) if held.get(subscribers[i]).copied().unwrap_or(0) < quota(i) => {
                            *held.entry(subscribers[i]).or_default() += 1;
                            target
                                .entry(subscribers[i].clone())
                                .or_default()
                                .insert((*id, p));
                        }
                        _ => free.push(p),
                    }
                }
                let mut free = free.into_iter();
                for (i, member) in subscribers.iter().enumerate() {
                    let have = held.get(member).copied().unwrap_or(0);
                    for _ in have..quota(i) {
                        if let Some(p) = free.next() {
                            target
                                .entry((*member).clone())
                                .or_default()
                                .insert((*id, p));
                        }
                    }
                }
            }
        }
        self.target = target;
        self.assignment_epoch = self.epoch;
        for m in self.members.values_mut() {
            m.send_assignment = true;
        }
    }

    /// Moves a member one safe step toward its target and answers it.
    fn reconcile(&mut self, member_id: &str, interval: Duration) -> Heartbeat {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let group_epoch = self.epoch;
        // Partitions any other member still holds or was told to hold.
        let taken: BTreeSet<Tp> = self
            .members
            .iter()
            .filter(|(k, _)| k.as_str() != member_id)
            .flat_map(|(_, m)| m.assigned.iter().chain(m.owned.iter()).copied())
            .collect();
        let Some(m) = self.members.get_mut(member_id) else {
            return Heartbeat {
                member_id: member_id.to_string(),
                member_epoch: -1,
                heartbeat_interval: interval,
                assignment: None,
            };
        };
        let before = m.assigned.clone();
        let revoking = m.assigned.iter().any(|tp| !target.contains(tp));
        if revoking {
            // First give up what is no longer ours; our epoch waits until that is done.
            m.assigned.retain(|tp| target.contains(tp));
        } else if m.owned.iter().all(|tp| target.contains(tp)) {
            for tp in &target {
                if !taken.contains(tp) {
                    m.assigned.insert(*tp);
                }
            }
        }
        // Nothing left to give up: the member is at the group's epoch (partitions still
        // held by others reach it later, without an epoch change).
        if m.assigned.iter().all(|tp| target.contains(tp))
            && m.owned.iter().all(|tp| target.contains(tp))
        {
            m.epoch = group_epoch;
        }
        let send = m.send_assignment || m.assigned != before;
        m.send_assignment = false;
        Heartbeat {
            member_id: member_id.to_string(),
            member_epoch: m.epoch,
            heartbeat_interval: interval,
            assignment: send.then(|| m.assigned.iter().copied().collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<(uuid::Uuid, i32)> {
        (name == "t").then(|| (uuid::Uuid::from_u128(1), 6))
    }

    fn hb(member: &str, epoch: i32, owned: Option<Vec<Tp>>) -> HeartbeatRequest {
        HeartbeatRequest {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            subscribed: (epoch == 0).then(|| vec!["t".to_string()]),
            owned,
            ..Default::default()
        }
    }

    #[test]
    fn partitions_move_only_after_they_are_released() -> Result<(), ResponseError> {
        let c = ConsumerGroups::new(Duration::from_secs(45), Duration::from_secs(1));
        let a = c.heartbeat(hb("a", 0, None), &lookup)?;
        assert_eq!(a.assignment.as_ref().map(Vec::len), Some(6));
        assert_eq!(a.member_epoch, 1);
        let all = a.assignment.clone().unwrap_or_default();
        // b joins: a must give up three partitions before b gets them.
        let b = c.heartbeat(hb("b", 0, None), &lookup)?;
        assert_eq!(b.assignment, Some(vec![]), "nothing is free yet");
        assert_eq!(b.member_epoch, 2, "b has nothing to revoke");
        let a2 = c.heartbeat(hb("a", 1, Some(all.clone())), &lookup)?;
        let kept = a2.assignment.clone().unwrap_or_default();
        assert_eq!(kept.len(), 3);
        assert_eq!(
            a2.member_epoch, 1,
            "a still owns partitions it must release"
        );
        let b2 = c.heartbeat(hb("b", 2, Some(vec![])), &lookup)?;
        assert_eq!(b2.assignment, None, "a has not confirmed the release yet");
        // a confirms; now b gets the other three.
        let a3 = c.heartbeat(hb("a", 1, Some(kept.clone())), &lookup)?;
        assert_eq!(a3.member_epoch, 2);
        let b3 = c.heartbeat(hb("b", 2, Some(vec![])), &lookup)?;
        let got = b3.assignment.unwrap_or_default();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|tp| !kept.contains(tp)));
        // Stale epochs are fenced; leaving frees the partitions.
        assert_eq!(
            c.heartbeat(hb("b", 1, None), &lookup),
            Err(ResponseError::FencedMemberEpoch)
        );
        c.heartbeat(hb("b", -1, None), &lookup)?;
        let a4 = c.heartbeat(hb("a", 2, Some(kept)), &lookup)?;
        assert_eq!(a4.assignment.map(|v| v.len()), Some(6));
        Ok(())
    }

    #[test]
    fn an_expired_session_frees_its_partitions_on_the_injected_clock() -> Result<(), ResponseError>
    {
        let clock = Arc::new(weir_common::clock::ManualClock::default());
        let c = ConsumerGroups::with_clock(
            Duration::from_secs(45),
            Duration::from_secs(1),
            clock.clone(),
        );
        let a = c.heartbeat(hb("a", 0, None), &lookup)?;
        let all = a.assignment.clone().unwrap_or_default();
        let b = c.heartbeat(hb("b", 0, None), &lookup)?;
        assert_eq!(b.assignment, Some(vec![]));
        // a goes silent; b keeps heartbeating. At 45 s a is still a member.
        clock.advance(Duration::from_secs(44));
        c.heartbeat(hb("b", b.member_epoch, Some(vec![])), &lookup)?;
        c.tick(&lookup);
        assert!(c.heartbeat(hb("a", 1, Some(all.clone())), &lookup).is_ok());
        clock.advance(Duration::from_secs(46));
        c.heartbeat(hb("b", b.member_epoch, Some(vec![])), &lookup)?;
        c.tick(&lookup);
        assert_eq!(
            c.heartbeat(hb("a", 1, Some(all)), &lookup).err(),
            Some(ResponseError::UnknownMemberId),
            "a expired 45 s after its last heartbeat"
        );
        let b2 = c.heartbeat(hb("b", b.member_epoch, Some(vec![])), &lookup)?;
        let got = b2.assignment.map(|v| v.len());
        assert_eq!(got, Some(6), "b owns every partition");
        Ok(())
    }
}
