//! The cluster sync: every [`ClusterConfig::sync_interval`](super::ClusterConfig) a
//! gateway reads the members, the topics ([`super::topics`]), the placements and every
//! partition's recorded leader and epoch, then takes the partitions that fall to it and
//! hands over those that fall elsewhere ([`super::handover`]).

use super::{desired_leader, Cluster, View, ALONE_FULL_SYNC};
use crate::broker::PartitionLog;
use crate::Gateway;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Instant;
use weir_common::TopicId;
use weir_metadata_api::membership::{assignments, live, members};
use weir_metadata_api::{MetadataError, NO_LEADER};

/// A partition to take: its log, the epoch read, the leader recorded then.
type Take = (Arc<PartitionLog>, i32, i32);

impl Cluster {
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

    /// Acts on one topic's recorded leaders; returns the partitions to take.
    pub(super) async fn reconcile(
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
}
