//! Who should lead what: rendezvous hashing over the eligible gateways, for partitions
//! (unless a placement names an eligible gateway) and for group coordinators.
//! The functions are pure; [`Cluster::coordinator`] applies them to the current view.

use super::{Cluster, Member};
use weir_common::TopicPartition;
use weir_metadata_api::membership::Load;

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

impl Cluster {
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use weir_common::TopicId;

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
}
