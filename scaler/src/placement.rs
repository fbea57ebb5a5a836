//! Partition placement: where partition leadership should move to even out the gateways'
//! loads.
//!
//! Pure: partitions with their leaders and loads in, at most a given number of [`Move`]s
//! out. The reconciler writes the moves as placements; the gateways carry them out.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use weir_common::{TopicId, TopicPartition};
use weir_metadata_api::membership::Member;

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

#[cfg(test)]
mod tests {
    use super::*;

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
