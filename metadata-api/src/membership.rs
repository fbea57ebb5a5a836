//! Typed membership records: the gateways' registrations and heartbeats, and the partition
//! placements the scaler or an operator wrote.
//!
//! They are small JSON documents in the generic records namespaces of [`MetadataStore`]
//! ([`MEMBERS`], [`ASSIGNMENTS`]); this module is the one place that knows their keys and
//! format, so that gateways (which register and read them) and the scaler (which reads
//! members and writes placements) agree. The stored bytes are exactly what earlier versions
//! wrote: `serde_json` of these structs, keyed by the node id in ten digits or the topic id,
//! so existing data and gateways of mixed versions keep reading each other.

use crate::{MetadataError, MetadataStore, Result};
use std::collections::HashMap;
use std::time::Duration;
use weir_common::TopicId;

/// Records namespace of the gateway registrations (key: node id, ten digits; value:
/// [`Member`]).
pub const MEMBERS: &str = "gateways";
/// Records namespace of partition placements (key: topic id; value: [`Assignment`]).
pub const ASSIGNMENTS: &str = "assignments";

/// Load of one partition as its leader measured it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartitionLoad {
    pub topic: uuid::Uuid,
    pub partition: i32,
    pub bytes_in_per_sec: f64,
    pub bytes_out_per_sec: f64,
}

/// A gateway's load over its last heartbeat interval.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// One gateway's registration, rewritten by each of its heartbeats.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Whether the last heartbeat is at most `timeout` old at `now_ms`.
    pub fn is_live(&self, now_ms: i64, timeout: Duration) -> bool {
        now_ms.saturating_sub(self.heartbeat_ms) <= timeout.as_millis() as i64
    }
}

/// Placements of one topic's partitions: `leaders[p]` is the node id that should lead
/// partition p, or -1 (no placement: the gateways' hash decides).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    pub leaders: Vec<i32>,
}

/// The key of a gateway's registration in [`MEMBERS`].
pub fn member_key(node_id: i32) -> String {
    format!("{node_id:010}")
}

/// Writes a gateway's registration (its first one, or a heartbeat: the record is replaced).
pub async fn put_member(meta: &dyn MetadataStore, member: &Member) -> Result<()> {
    let value = serde_json::to_vec(member).map_err(|e| MetadataError::Invalid(e.to_string()))?;
    meta.record_put(MEMBERS, &member_key(member.node_id), value, false)
        .await
}

/// Removes a gateway's registration; returns whether there was one.
pub async fn delete_member(meta: &dyn MetadataStore, node_id: i32) -> Result<bool> {
    meta.record_delete(MEMBERS, &member_key(node_id)).await
}

/// Every registered gateway, live or not, by node id. Unreadable registrations are skipped
/// with a warning.
pub async fn members(meta: &dyn MetadataStore) -> Result<Vec<Member>> {
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

/// The gateways of `members` whose heartbeat is recent.
pub fn live(members: &[Member], now_ms: i64, timeout: Duration) -> Vec<Member> {
    members
        .iter()
        .filter(|m| m.is_live(now_ms, timeout))
        .cloned()
        .collect()
}

/// Every topic's placements. Unreadable ones are skipped with a warning.
pub async fn assignments(meta: &dyn MetadataStore) -> Result<HashMap<TopicId, Vec<i32>>> {
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
) -> Result<()> {
    let value = serde_json::to_vec(&Assignment { leaders })
        .map_err(|e| MetadataError::Invalid(e.to_string()))?;
    meta.record_put(ASSIGNMENTS, &topic.0.to_string(), value, false)
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
}
