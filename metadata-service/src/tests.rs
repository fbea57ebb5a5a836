//! The conformance suite of [`MetadataStore`]: each scenario is a function over
//! `&dyn MetadataStore`, and the `suite!` macro runs every scenario against every backend:
//! the embedded store, the embedded store served over QUIC by the metadata service, and
//! DynamoDB (a DynamoDB-compatible server at `WEIR_TEST_DYNAMODB_ENDPOINT`, which
//! `scripts/test.sh` starts; without it those tests are skipped, unless
//! `WEIR_TEST_REQUIRE_DYNAMODB=1` makes that a failure).

use super::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_common::{
    CommitRefused, IndexEntry, PartitionCommit, ProducerBatchState, TopicId, TopicPartition,
};

fn entry(
    tp: TopicPartition,
    base: i64,
    last: i64,
    ts: i64,
    object: &str,
    length: u32,
) -> IndexEntry {
    IndexEntry {
        tp,
        base_offset: base,
        last_offset: last,
        max_timestamp: ts,
        object: object.to_string(),
        position: 0,
        length,
        batches: 1,
    }
}

fn commit(epoch: i32, e: IndexEntry) -> PartitionCommit {
    PartitionCommit {
        leader_epoch: epoch,
        entry: e,
        producers: vec![],
    }
}

async fn topics_lifecycle(store: &dyn MetadataStore) -> anyhow::Result<()> {
    let mut configs = BTreeMap::new();
    configs.insert("retention.ms".to_string(), "1000".to_string());
    let t = store.create_topic("orders", 3, configs.clone()).await?;
    assert_eq!((t.name.as_str(), t.partitions), ("orders", 3));
    assert!(matches!(
        store.create_topic("orders", 1, BTreeMap::new()).await,
        Err(MetadataError::TopicExists(_))
    ));
    assert_eq!(store.get_topic("orders").await?, Some(t.clone()));
    let grown = store.create_partitions("orders", 5).await?;
    assert_eq!(grown.partitions, 5);
    assert!(store.create_partitions("orders", 5).await.is_err());
    let tails = store.acquire_partitions(t.id, 3).await?;
    assert_eq!(
        tails.iter().map(|t| t.state.partition).collect::<Vec<_>>(),
        vec![3, 4]
    );
    configs.insert("cleanup.policy".to_string(), "compact".to_string());
    assert_eq!(
        store
            .set_topic_configs("orders", configs.clone())
            .await?
            .configs,
        configs
    );
    assert_eq!(store.list_topics().await?.len(), 1);
    let (deleted, _) = store.delete_topic("orders").await?;
    assert_eq!(deleted.id, t.id);
    assert_eq!(store.get_topic("orders").await?, None);
    // A re-created topic is a new topic.
    let again = store.create_topic("orders", 1, BTreeMap::new()).await?;
    assert_ne!(again.id, t.id);
    Ok(())
}

async fn index_commits_are_fenced(store: &dyn MetadataStore) -> anyhow::Result<()> {
    let t = store.create_topic("log", 2, BTreeMap::new()).await?;
    let tails = store.acquire_partitions(t.id, 0).await?;
    let epoch = tails[0].state.leader_epoch;
    let p0 = TopicPartition {
        topic_id: t.id,
        partition: 0,
    };
    let p1 = TopicPartition {
        topic_id: t.id,
        partition: 1,
    };
    // One object, two partitions, one transaction.
    let out = store
        .commit_index(vec![
            commit(epoch, entry(p0, 0, 9, 100, "a", 10)),
            commit(epoch, entry(p1, 0, 4, 100, "a", 5)),
        ])
        .await?;
    assert_eq!(out, vec![Ok(()), Ok(())]);
    // Wrong next offset (a gap or a rewrite) is refused; the other partition still commits.
    let out = store
        .commit_index(vec![
            commit(epoch, entry(p0, 5, 12, 200, "b", 10)),
            commit(epoch, entry(p1, 5, 9, 200, "b", 5)),
        ])
        .await?;
    assert_eq!(
        out[0],
        Err(CommitRefused::OffsetMismatch {
            current: 10,
            expected: 5
        })
    );
    assert_eq!(out[1], Ok(()));
    // A new leader (epoch + 1) fences the old one.
    let newer = store.acquire_partitions(t.id, 0).await?;
    assert_eq!(newer[0].state.leader_epoch, epoch + 1);
    assert_eq!(newer[0].state.next_offset, 10);
    let out = store
        .commit_index(vec![commit(epoch, entry(p0, 10, 11, 300, "c", 2))])
        .await?;
    assert!(matches!(out[0], Err(CommitRefused::EpochFenced { .. })));
    // Index lookups find the entry holding an offset and those after it.
    let found = store.index_from(p1, 7, 10).await?;
    assert_eq!(
        found.iter().map(|e| e.base_offset).collect::<Vec<_>>(),
        vec![5]
    );
    let found = store.index_from(p1, 0, 10).await?;
    assert_eq!(found.len(), 2);
    assert_eq!(store.index_from(p1, 10, 10).await?, vec![]);
    assert_eq!(
        store
            .index_for_timestamp(p1, 150)
            .await?
            .map(|e| e.base_offset),
        Some(5)
    );
    assert_eq!(store.index_for_timestamp(p1, 250).await?, None);
    assert_eq!(
        store.index_max_timestamp(p1).await?.map(|e| e.base_offset),
        Some(5)
    );
    let mut live = store.live_objects().await?;
    live.sort();
    assert_eq!(live, vec!["a".to_string(), "b".to_string()]);
    Ok(())
}

async fn truncation_releases_objects(store: &dyn MetadataStore) -> anyhow::Result<()> {
    let t = store.create_topic("trunc", 2, BTreeMap::new()).await?;
    let epoch = store.acquire_partitions(t.id, 0).await?[0]
        .state
        .leader_epoch;
    let p0 = TopicPartition {
        topic_id: t.id,
        partition: 0,
    };
    let p1 = TopicPartition {
        topic_id: t.id,
        partition: 1,
    };
    store
        .commit_index(vec![
            commit(epoch, entry(p0, 0, 9, 100, "o1", 100)),
            commit(epoch, entry(p1, 0, 9, 100, "o1", 100)),
        ])
        .await?;
    store
        .commit_index(vec![commit(epoch, entry(p0, 10, 19, 200, "o2", 100))])
        .await?;
    store
        .commit_index(vec![commit(epoch, entry(p0, 20, 29, 300, "o3", 100))])
        .await?;
    // DeleteRecords inside the second entry: the first goes, o1 is still used by p1.
    let tr = store.delete_records(p0, 15).await?;
    assert_eq!((tr.log_start_offset, tr.removed_entries), (15, 1));
    assert!(tr.dead_objects.is_empty());
    assert!(store.delete_records(p0, 31).await.is_err());
    // Retention by time drops whole entries older than the limit.
    let limits = RetentionLimits {
        min_timestamp: Some(250),
        max_bytes: None,
    };
    let tr = store.apply_retention(p0, limits).await?;
    assert_eq!(
        (tr.log_start_offset, tr.dead_objects.clone()),
        (20, vec!["o2".to_string()])
    );
    // Retention by size drops the oldest entries while the rest still hold max_bytes (as
    // Kafka deletes segments): 200 bytes with a 100-byte limit lose the first entry.
    store
        .commit_index(vec![commit(epoch, entry(p1, 10, 19, 400, "o4", 100))])
        .await?;
    let limit = RetentionLimits {
        min_timestamp: None,
        max_bytes: Some(150),
    };
    assert_eq!(store.apply_retention(p1, limit).await?.removed_entries, 0);
    let tr = store
        .apply_retention(
            p1,
            RetentionLimits {
                min_timestamp: None,
                max_bytes: Some(100),
            },
        )
        .await?;
    assert_eq!(
        (tr.log_start_offset, tr.dead_objects),
        (10, vec!["o1".to_string()])
    );
    // Everything expired: the log start reaches the log end.
    let tr = store
        .apply_retention(
            p0,
            RetentionLimits {
                min_timestamp: Some(i64::MAX),
                max_bytes: None,
            },
        )
        .await?;
    assert_eq!(
        (tr.log_start_offset, tr.dead_objects),
        (30, vec!["o3".to_string()])
    );
    let tails = store.acquire_partitions(t.id, 0).await?;
    assert_eq!(
        (
            tails[0].state.log_start_offset,
            tails[0].state.next_offset,
            tails[0].state.log_bytes
        ),
        (30, 30, 0)
    );
    // Deleting the topic releases what is left.
    let (_, dead) = store.delete_topic("trunc").await?;
    assert_eq!(dead, vec!["o4".to_string()]);
    assert!(store.live_objects().await?.is_empty());
    Ok(())
}

async fn compaction_replaces_entries(store: &dyn MetadataStore) -> anyhow::Result<()> {
    let t = store.create_topic("compact", 2, BTreeMap::new()).await?;
    let epoch = store.acquire_partitions(t.id, 0).await?[0]
        .state
        .leader_epoch;
    let p0 = TopicPartition {
        topic_id: t.id,
        partition: 0,
    };
    let p1 = TopicPartition {
        topic_id: t.id,
        partition: 1,
    };
    // Five flushes of p0; the first object also holds p1.
    store
        .commit_index(vec![
            commit(epoch, entry(p0, 0, 9, 100, "f1", 100)),
            commit(epoch, entry(p1, 0, 9, 100, "f1", 100)),
        ])
        .await?;
    for (i, object) in ["f2", "f3", "f4", "f5"].iter().enumerate() {
        let base = 10 * (i as i64 + 1);
        store
            .commit_index(vec![commit(
                epoch,
                entry(p0, base, base + 9, 100 + base, object, 100),
            )])
            .await?;
    }
    let old = store.index_from(p0, 0, 100).await?;
    assert_eq!(old.len(), 5);
    // A replacement must cover the run exactly.
    let mut wrong = entry(p0, 0, 38, 140, "seg1", 400);
    wrong.batches = 4;
    assert!(store
        .replace_index(p0, old[..4].to_vec(), wrong)
        .await
        .is_err());
    let mut segment = entry(p0, 0, 39, 130, "seg1", 400);
    segment.batches = 4;
    let dead = store
        .replace_index(p0, old[..4].to_vec(), segment.clone())
        .await?
        .ok_or_else(|| anyhow::anyhow!("replacement refused"))?;
    // f1 is still used by p1; f2..f4 are free.
    let mut dead = dead;
    dead.sort();
    assert_eq!(dead, vec!["f2", "f3", "f4"]);
    let now = store.index_from(p0, 0, 100).await?;
    assert_eq!(now, vec![segment.clone(), old[4].clone()]);
    assert_eq!(store.index_from(p0, 25, 100).await?[0], segment);
    // The same replacement again finds other entries: refused, nothing changes.
    let mut again = segment.clone();
    again.object = "seg2".into();
    assert_eq!(
        store.replace_index(p0, old[..4].to_vec(), again).await?,
        None
    );
    assert_eq!(store.index_from(p0, 0, 100).await?, now);
    let live = store.live_objects().await?;
    assert!(live.contains(&"seg1".to_string()) && !live.contains(&"f2".to_string()));
    // Appends go on after the segment; retention then drops it whole.
    store
        .commit_index(vec![commit(epoch, entry(p0, 50, 59, 500, "f6", 100))])
        .await?;
    let tr = store
        .apply_retention(
            p0,
            RetentionLimits {
                min_timestamp: Some(135),
                max_bytes: None,
            },
        )
        .await?;
    assert_eq!(tr.log_start_offset, 40);
    assert_eq!(tr.dead_objects, vec!["seg1".to_string()]);

    // Key compaction: the same offsets in fewer bytes; the partition's byte count follows.
    let bytes = |t: Option<PartitionTail>| t.map(|t| t.state.log_bytes).unwrap_or(0);
    let before = bytes(store.partition_tail(p0).await?);
    let run = store.index_from(p0, 40, 100).await?;
    assert_eq!(run.len(), 2);
    let mut bigger = entry(p0, 40, 59, 500, "k0", 201);
    bigger.batches = 1;
    assert!(store.replace_index(p0, run.clone(), bigger).await.is_err());
    let clean = entry(p0, 40, 59, 500, "k1", 50);
    let mut dead = store
        .replace_index(p0, run, clean.clone())
        .await?
        .ok_or_else(|| anyhow::anyhow!("key compaction refused"))?;
    dead.sort();
    assert_eq!(dead, vec!["f5", "f6"]);
    assert_eq!(before - bytes(store.partition_tail(p0).await?), 150);
    assert_eq!(store.index_from(p0, 0, 100).await?, vec![clean]);
    Ok(())
}

async fn producer_state_is_kept(store: &dyn MetadataStore) -> anyhow::Result<()> {
    let a = store.allocate_producer_id().await?;
    let b = store.allocate_producer_id().await?;
    assert!(b > a);
    let t = store.create_topic("idem", 1, BTreeMap::new()).await?;
    let epoch = store.acquire_partitions(t.id, 0).await?[0]
        .state
        .leader_epoch;
    let tp = TopicPartition {
        topic_id: t.id,
        partition: 0,
    };
    for i in 0..7i64 {
        let p = ProducerBatchState {
            producer_id: a,
            producer_epoch: 0,
            first_sequence: (i * 2) as i32,
            last_sequence: (i * 2 + 1) as i32,
            base_offset: i * 2,
            last_offset: i * 2 + 1,
        };
        let c = PartitionCommit {
            leader_epoch: epoch,
            entry: entry(tp, i * 2, i * 2 + 1, 1, "x", 1),
            producers: vec![p],
        };
        assert_eq!(store.commit_index(vec![c]).await?, vec![Ok(())]);
    }
    let tail = store.acquire_partitions(t.id, 0).await?.remove(0);
    assert_eq!(tail.producers.len(), PRODUCER_BATCHES_KEPT);
    assert_eq!(tail.producers.last().map(|p| p.last_sequence), Some(13));
    Ok(())
}

async fn concurrent_commits(store: Arc<dyn MetadataStore>) -> anyhow::Result<()> {
    let t = store.create_topic("race", 1, BTreeMap::new()).await?;
    let epoch = store.acquire_partitions(t.id, 0).await?[0]
        .state
        .leader_epoch;
    let tp = TopicPartition {
        topic_id: t.id,
        partition: 0,
    };
    // Many writers race for the same next offset: exactly one wins each round.
    let mut wins = 0;
    for round in 0..5i64 {
        let mut tasks = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            let e = entry(
                tp,
                round * 10,
                round * 10 + 9,
                1,
                &format!("r{round}w{w}"),
                1,
            );
            tasks.push(tokio::spawn(async move {
                store.commit_index(vec![commit(epoch, e)]).await
            }));
        }
        for task in tasks {
            if task.await??[0].is_ok() {
                wins += 1;
            }
        }
    }
    assert_eq!(wins, 5);
    assert_eq!(
        store.acquire_partitions(t.id, 0).await?[0]
            .state
            .next_offset,
        50
    );
    Ok(())
}

async fn group_offsets(store: &dyn MetadataStore) -> anyhow::Result<()> {
    let o = |topic: &str, partition: i32, offset: i64| CommittedOffset {
        topic: topic.to_string(),
        partition,
        offset,
        leader_epoch: 3,
        metadata: Some(format!("m{offset}")),
        commit_ms: 1,
    };
    store.create_topic("t", 2, BTreeMap::new()).await?;
    store.create_topic("u", 1, BTreeMap::new()).await?;
    store
        .commit_offsets("g1", vec![o("t", 0, 5), o("t", 1, 7), o("u", 0, 1)])
        .await?;
    store.commit_offsets("g1", vec![o("t", 0, 9)]).await?;
    store.commit_offsets("g10", vec![o("t", 0, 2)]).await?;
    let got = store.fetch_offsets("g1").await?;
    assert_eq!(got, vec![o("t", 0, 9), o("t", 1, 7), o("u", 0, 1)]);
    // A group name that is a prefix of another does not see the other's offsets.
    assert_eq!(store.fetch_offsets("g10").await?, vec![o("t", 0, 2)]);
    assert_eq!(
        store.offset_groups().await?,
        vec!["g1".to_string(), "g10".to_string()]
    );
    assert_eq!(
        store
            .delete_offsets("g1", Some(vec![("t".to_string(), 1)]))
            .await?,
        1
    );
    // Deleting a topic deletes its committed offsets.
    store.delete_topic("u").await?;
    assert_eq!(store.fetch_offsets("g1").await?, vec![o("t", 0, 9)]);
    assert_eq!(store.delete_offsets("g1", None).await?, 1);
    assert_eq!(store.offset_groups().await?, vec!["g10".to_string()]);
    Ok(())
}

async fn records(store: &dyn MetadataStore) -> anyhow::Result<()> {
    store.record_put("a", "k1", b"one".to_vec(), true).await?;
    assert!(matches!(
        store.record_put("a", "k1", b"two".to_vec(), true).await,
        Err(MetadataError::RecordExists(_))
    ));
    assert_eq!(store.record_get("a", "k1").await?, Some(b"one".to_vec()));
    store.record_put("a", "k1", b"two".to_vec(), false).await?;
    store.record_put("a", "k0", b"zero".to_vec(), false).await?;
    // A namespace that is a prefix of another sees only its own records.
    store.record_put("ab", "k9", b"x".to_vec(), false).await?;
    assert_eq!(
        store.record_list("a").await?,
        vec![
            ("k0".to_string(), b"zero".to_vec()),
            ("k1".to_string(), b"two".to_vec())
        ]
    );
    assert!(store.record_delete("a", "k1").await?);
    assert!(!store.record_delete("a", "k1").await?);
    assert_eq!(store.record_get("a", "k1").await?, None);
    assert_eq!(store.record_list("ab").await?.len(), 1);
    Ok(())
}

/// Gateway registrations and placements through the typed membership API: the stored bytes
/// are the JSON earlier versions wrote (so mixed versions read each other), a heartbeat
/// replaces the registration, unreadable records are skipped, deregistering removes it.
async fn membership(store: &dyn MetadataStore) -> anyhow::Result<()> {
    use crate::membership::{self, Load, Member, PartitionLoad};
    let topic = TopicId(uuid::Uuid::from_u128(42));
    let mut member = Member {
        node_id: 7,
        host: "10.0.0.7".into(),
        port: 9092,
        rack: Some("az1".into()),
        incarnation: "abc".into(),
        started_ms: 5,
        heartbeat_ms: 10_000,
        draining: false,
        load: Load {
            bytes_in_per_sec: 1.5,
            connections: 2,
            partitions_led: 1,
            partitions: vec![PartitionLoad {
                topic: topic.0,
                partition: 0,
                bytes_in_per_sec: 1.5,
                bytes_out_per_sec: 0.0,
            }],
            ..Load::default()
        },
    };
    membership::put_member(store, &member).await?;
    let stored = store
        .record_get(membership::MEMBERS, "0000000007")
        .await?
        .ok_or_else(|| anyhow::anyhow!("registration not stored"))?;
    assert_eq!(
        String::from_utf8(stored)?,
        concat!(
            r#"{"node_id":7,"host":"10.0.0.7","port":9092,"rack":"az1","incarnation":"abc","#,
            r#""started_ms":5,"heartbeat_ms":10000,"draining":false,"load":{"bytes_in_per_sec":1.5,"#,
            r#""bytes_out_per_sec":0.0,"connections":2,"requests_per_sec":0.0,"request_latency_ms":0.0,"#,
            r#""cpu_percent":0.0,"partitions_led":1,"partitions":[{"topic":"00000000-0000-0000-0000-00000000002a","#,
            r#""partition":0,"bytes_in_per_sec":1.5,"bytes_out_per_sec":0.0}]}}"#
        )
    );
    // A registration another version wrote, and one nobody can read.
    let other = r#"{"node_id":3,"host":"h3","port":1,"rack":null,"incarnation":"x","started_ms":1,"heartbeat_ms":12500,"draining":true,"load":{"bytes_in_per_sec":0.0,"bytes_out_per_sec":0.0,"connections":0,"requests_per_sec":0.0,"request_latency_ms":0.0,"cpu_percent":0.0,"partitions_led":0,"partitions":[]}}"#;
    store
        .record_put(
            membership::MEMBERS,
            "0000000003",
            other.as_bytes().to_vec(),
            false,
        )
        .await?;
    store
        .record_put(
            membership::MEMBERS,
            "0000000004",
            b"not json".to_vec(),
            false,
        )
        .await?;
    member.heartbeat_ms = 12_000;
    membership::put_member(store, &member).await?;
    let members = membership::members(store).await?;
    assert_eq!(
        members.iter().map(|m| m.node_id).collect::<Vec<_>>(),
        vec![3, 7]
    );
    assert_eq!(members[1], member);
    assert!(members[0].draining && members[0].rack.is_none());
    let live = membership::live(&members, 15_200, std::time::Duration::from_secs(3));
    assert_eq!(live.iter().map(|m| m.node_id).collect::<Vec<_>>(), vec![3]);
    assert!(membership::delete_member(store, 7).await?);
    assert!(!membership::delete_member(store, 7).await?);
    assert_eq!(membership::members(store).await?.len(), 1);

    // Placements.
    assert!(membership::assignments(store).await?.is_empty());
    membership::write_assignment(store, topic, vec![7, -1]).await?;
    assert_eq!(
        store
            .record_get(membership::ASSIGNMENTS, &topic.0.to_string())
            .await?,
        Some(br#"{"leaders":[7,-1]}"#.to_vec())
    );
    store
        .record_put(
            membership::ASSIGNMENTS,
            "not-a-topic-id",
            b"{}".to_vec(),
            false,
        )
        .await?;
    membership::write_assignment(store, topic, vec![3, 3]).await?;
    let placed = membership::assignments(store).await?;
    assert_eq!(placed.len(), 1);
    assert_eq!(placed.get(&topic), Some(&vec![3, 3]));
    Ok(())
}

/// Leadership of one partition moves between gateways: a take is conditional on the epoch,
/// bumps it, and fences the old leader's commits; a release clears the leader only for the
/// leader of that epoch; the new leader's tail carries the producer state.
async fn leadership_moves(store: &dyn MetadataStore) -> anyhow::Result<()> {
    let t = store.create_topic("moves", 2, BTreeMap::new()).await?;
    let tp = TopicPartition {
        topic_id: t.id,
        partition: 1,
    };
    let states = store.partition_states(t.id).await?;
    assert_eq!(states.len(), 2);
    assert!(states
        .iter()
        .all(|s| s.leader == crate::NO_LEADER && s.leader_epoch == 0));
    // Gateway 1 takes partition 1; a second take at the old epoch fails.
    let tail = store
        .take_leadership(tp, 1, 0)
        .await?
        .ok_or_else(|| anyhow::anyhow!("take refused"))?;
    assert_eq!((tail.state.leader, tail.state.leader_epoch), (1, 1));
    assert!(store.take_leadership(tp, 2, 0).await?.is_none());
    let mut c = commit(1, entry(tp, 0, 9, 10, "m1", 10));
    c.producers = vec![ProducerBatchState {
        producer_id: 7,
        producer_epoch: 0,
        first_sequence: 0,
        last_sequence: 9,
        base_offset: 0,
        last_offset: 9,
    }];
    assert_eq!(store.commit_index(vec![c]).await?, vec![Ok(())]);
    // Only the leader of the current epoch can release it.
    assert!(!store.release_leadership(tp, 2, 1).await?);
    assert!(!store.release_leadership(tp, 1, 0).await?);
    assert!(store.release_leadership(tp, 1, 1).await?);
    let states = store.partition_states(t.id).await?;
    assert_eq!(
        (states[1].leader, states[1].leader_epoch),
        (crate::NO_LEADER, 1)
    );
    assert_eq!(
        states[0].leader,
        crate::NO_LEADER,
        "the other partition is untouched"
    );
    // Gateway 2 takes over from the released state and inherits the tail.
    let tail = store
        .take_leadership(tp, 2, 1)
        .await?
        .ok_or_else(|| anyhow::anyhow!("take refused"))?;
    assert_eq!((tail.state.leader, tail.state.leader_epoch), (2, 2));
    assert_eq!(tail.state.next_offset, 10);
    assert_eq!(tail.producers.len(), 1);
    assert_eq!(tail.producers[0].last_sequence, 9);
    // The deposed leader's commit at epoch 1 is fenced; gateway 2's commit lands.
    let out = store
        .commit_index(vec![commit(1, entry(tp, 10, 19, 10, "m2", 10))])
        .await?;
    assert!(out[0].is_err(), "a deposed leader committed: {out:?}");
    let out = store
        .commit_index(vec![commit(2, entry(tp, 10, 19, 10, "m3", 10))])
        .await?;
    assert_eq!(out, vec![Ok(())]);
    // A take-over without a release (the leader died): conditional on the epoch only.
    let tail = store
        .take_leadership(tp, 3, 2)
        .await?
        .ok_or_else(|| anyhow::anyhow!("take refused"))?;
    assert_eq!((tail.state.leader, tail.state.next_offset), (3, 20));
    assert!(!store.release_leadership(tp, 2, 2).await?);
    let missing = TopicPartition {
        topic_id: t.id,
        partition: 9,
    };
    assert!(store.take_leadership(missing, 1, 0).await?.is_none());
    Ok(())
}

async fn leaders_race(store: Arc<dyn MetadataStore>) -> anyhow::Result<()> {
    let t = store.create_topic("fence", 1, BTreeMap::new()).await?;
    let tp = TopicPartition {
        topic_id: t.id,
        partition: 0,
    };
    // Two would-be leaders each take leadership and commit at the same offset, concurrently:
    // whatever the interleaving, exactly one commit wins.
    for round in 0..4i64 {
        let base = round * 10;
        let mut tasks = Vec::new();
        for leader in 0..2 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let epoch = store.acquire_partitions(tp.topic_id, 0).await?[0]
                    .state
                    .leader_epoch;
                let e = entry(tp, base, base + 9, 1, &format!("r{round}l{leader}"), 1);
                anyhow::Ok(store.commit_index(vec![commit(epoch, e)]).await?.remove(0))
            }));
        }
        let mut wins = 0;
        for task in tasks {
            match task.await?? {
                Ok(()) => wins += 1,
                Err(CommitRefused::EpochFenced { .. } | CommitRefused::OffsetMismatch { .. }) => {}
                Err(other) => anyhow::bail!("unexpected refusal {other:?}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    let entries = store.index_from(tp, 0, 100).await?;
    assert_eq!(
        entries.iter().map(|e| e.base_offset).collect::<Vec<_>>(),
        vec![0, 10, 20, 30]
    );
    Ok(())
}

async fn wide_flush(store: &dyn MetadataStore) -> anyhow::Result<()> {
    // One flushed object holding 150 partitions, each with an idempotent producer: more
    // than one backend transaction holds, committed as one call.
    let t = store.create_topic("wide", 150, BTreeMap::new()).await?;
    let epoch = store.acquire_partitions(t.id, 0).await?[0]
        .state
        .leader_epoch;
    let commits: Vec<PartitionCommit> = (0..150)
        .map(|p| {
            let tp = TopicPartition {
                topic_id: t.id,
                partition: p,
            };
            let mut c = commit(epoch, entry(tp, 0, i64::from(p), 7, "flush-1", 100));
            c.producers = vec![ProducerBatchState {
                producer_id: 4000,
                producer_epoch: 0,
                first_sequence: 0,
                last_sequence: p,
                base_offset: 0,
                last_offset: i64::from(p),
            }];
            c
        })
        .collect();
    let out = store.commit_index(commits).await?;
    assert!(out.iter().all(|o| o.is_ok()), "{out:?}");
    let tails = store.acquire_partitions(t.id, 0).await?;
    assert_eq!(tails.len(), 150);
    for tail in &tails {
        assert_eq!(tail.state.next_offset, i64::from(tail.state.partition) + 1);
        assert_eq!(tail.state.log_bytes, 100);
        assert_eq!(tail.producers.len(), 1);
        assert_eq!(tail.producers[0].last_sequence, tail.state.partition);
    }
    assert_eq!(store.live_objects().await?, vec!["flush-1".to_string()]);
    // Deleting the topic releases the object.
    let (_, dead) = store.delete_topic("wide").await?;
    assert_eq!(dead, vec!["flush-1".to_string()]);
    assert!(store.live_objects().await?.is_empty());
    Ok(())
}

async fn long_log(store: &dyn MetadataStore) -> anyhow::Result<()> {
    let t = store.create_topic("long", 1, BTreeMap::new()).await?;
    let epoch = store.acquire_partitions(t.id, 0).await?[0]
        .state
        .leader_epoch;
    let tp = TopicPartition {
        topic_id: t.id,
        partition: 0,
    };
    // 130 flushes of 10 records; objects shared by pairs of entries.
    for i in 0..130i64 {
        let e = entry(tp, i * 10, i * 10 + 9, 1000 + i, &format!("o{}", i / 2), 10);
        assert_eq!(
            store.commit_index(vec![commit(epoch, e)]).await?,
            vec![Ok(())]
        );
    }
    // Lookups: from the middle, across what a reader saw before and what came after.
    let first = store.index_from(tp, 255, 3).await?;
    assert_eq!(
        first.iter().map(|e| e.base_offset).collect::<Vec<_>>(),
        vec![250, 260, 270]
    );
    let more = store.index_from(tp, 1280, 10).await?;
    assert_eq!(more.len(), 2);
    let e = entry(tp, 1300, 1309, 5000, "late", 10);
    assert_eq!(
        store.commit_index(vec![commit(epoch, e)]).await?,
        vec![Ok(())]
    );
    let more = store.index_from(tp, 1280, 10).await?;
    assert_eq!(
        more.iter().map(|e| e.base_offset).collect::<Vec<_>>(),
        vec![1280, 1290, 1300]
    );
    assert_eq!(
        store
            .index_for_timestamp(tp, 1100)
            .await?
            .map(|e| e.base_offset),
        Some(1000)
    );
    // A truncation wider than one backend transaction.
    let cut = store.delete_records(tp, 1005).await?;
    assert_eq!(cut.log_start_offset, 1005);
    assert_eq!(cut.removed_entries, 100);
    let mut dead = cut.dead_objects.clone();
    dead.sort();
    let mut expected: Vec<String> = (0..50).map(|i| format!("o{i}")).collect();
    expected.sort();
    assert_eq!(dead, expected);
    // Nothing below the new start is served, even to a reader that read it before.
    assert_eq!(
        store.index_from(tp, 0, 2).await?[0].base_offset,
        1000,
        "the entry holding the log start is the first one left"
    );
    let tail = store.acquire_partitions(t.id, 0).await?.remove(0);
    assert_eq!(tail.state.log_start_offset, 1005);
    assert_eq!(tail.state.log_bytes, 310);
    Ok(())
}

type Guard = Box<dyn std::any::Any + Send>;

async fn embedded() -> anyhow::Result<Option<(Guard, Arc<dyn MetadataStore>)>> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn MetadataStore> = Arc::new(EmbeddedStore::open(dir.path())?);
    Ok(Some((Box::new(dir), store)))
}

/// The embedded store behind the metadata service, reached over QUIC.
async fn remote() -> anyhow::Result<Option<(Guard, Arc<dyn MetadataStore>)>> {
    let dir = tempfile::tempdir()?;
    let backend: Arc<dyn MetadataStore> = Arc::new(EmbeddedStore::open(&dir.path().join("db"))?);
    let certs = weir_rpc::tls::generate(&dir.path().join("tls"), &["127.0.0.1".into()])?;
    let endpoint = weir_rpc::server_endpoint(
        "127.0.0.1:0".parse()?,
        &certs.cert,
        &certs.key,
        crate::remote::ALPN,
    )?;
    let addr = endpoint.local_addr()?;
    let shutdown = weir_common::CancellationToken::new();
    tokio::spawn(weir_rpc::serve(
        endpoint,
        Arc::new(crate::remote::MetadataServer::new(backend)),
        shutdown.clone(),
    ));
    let url = format!("quic://{addr}?ca={}", certs.ca.display());
    let store = open(&url, false).await?;
    Ok(Some((Box::new((dir, shutdown.drop_guard())), store)))
}

/// A fresh pair of tables on the DynamoDB-compatible server of the test set-up.
async fn dynamodb() -> anyhow::Result<Option<(Guard, Arc<dyn MetadataStore>)>> {
    let Ok(endpoint) = std::env::var("WEIR_TEST_DYNAMODB_ENDPOINT") else {
        if std::env::var("WEIR_TEST_REQUIRE_DYNAMODB").is_ok_and(|v| v == "1") {
            anyhow::bail!(
                "WEIR_TEST_REQUIRE_DYNAMODB=1 but WEIR_TEST_DYNAMODB_ENDPOINT is not set"
            );
        }
        eprintln!("skipped: WEIR_TEST_DYNAMODB_ENDPOINT is not set (scripts/test.sh sets it)");
        return Ok(None);
    };
    let options = DynamoOptions {
        table_prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint),
    };
    let store = DynamoStore::connect(&options).await?;
    assert!(!store.tables_exist().await?);
    store.init().await?;
    // Idempotent.
    assert!(store.init().await?.is_empty());
    Ok(Some((Box::new(()), Arc::new(store))))
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn topics_lifecycle() -> anyhow::Result<()> {
                let Some((_g, s)) = super::$backend().await? else {
                    return Ok(());
                };
                super::topics_lifecycle(s.as_ref()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn index_commits_are_fenced() -> anyhow::Result<()> {
                let Some((_g, s)) = super::$backend().await? else {
                    return Ok(());
                };
                super::index_commits_are_fenced(s.as_ref()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn truncation_releases_objects() -> anyhow::Result<()> {
                let Some((_g, s)) = super::$backend().await? else {
                    return Ok(());
                };
                super::truncation_releases_objects(s.as_ref()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn compaction_replaces_entries() -> anyhow::Result<()> {
                let Some((_g, s)) = super::$backend().await? else {
                    return Ok(());
                };
                super::compaction_replaces_entries(s.as_ref()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn producer_state_is_kept() -> anyhow::Result<()> {
                let Some((_g, s)) = super::$backend().await? else {
                    return Ok(());
                };
                super::producer_state_is_kept(s.as_ref()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_commits() -> anyhow::Result<()> {
                let Some((_g, s)) = super::$backend().await? else {
                    return Ok(());
                };
                super::concurrent_commits(s).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn leadership_moves() -> anyhow::Result<()> {
                let Some((_g, s)) = super::$backend().await? else {
                    return Ok(());
                };
                super::leadership_moves(s.as_ref()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn leaders_race() -> anyhow::Result<()> {
                let Some((_g, s)) = super::$backend().await? else {
                    return Ok(());
                };
                super::leaders_race(s).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn wide_flush() -> anyhow::Result<()> {
                let Some((_g, s)) = super::$backend().await? else {
                    return Ok(());
                };
                super::wide_flush(s.as_ref()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn long_log() -> anyhow::Result<()> {
                let Some((_g, s)) = super::$backend().await? else {
                    return Ok(());
                };
                super::long_log(s.as_ref()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn group_offsets() -> anyhow::Result<()> {
                let Some((_g, s)) = super::$backend().await? else {
                    return Ok(());
                };
                super::group_offsets(s.as_ref()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn records() -> anyhow::Result<()> {
                let Some((_g, s)) = super::$backend().await? else {
                    return Ok(());
                };
                super::records(s.as_ref()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn membership() -> anyhow::Result<()> {
                let Some((_g, s)) = super::$backend().await? else {
                    return Ok(());
                };
                super::membership(s.as_ref()).await
            }
        }
    };
}

suite!(embedded);
suite!(remote);
suite!(dynamodb);

#[tokio::test]
async fn embedded_survives_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let id = {
        let store = EmbeddedStore::open(dir.path())?;
        let cluster = store.cluster_id().await?;
        let t = store.create_topic("durable", 1, BTreeMap::new()).await?;
        let epoch = store.acquire_partitions(t.id, 0).await?[0]
            .state
            .leader_epoch;
        let tp = TopicPartition {
            topic_id: t.id,
            partition: 0,
        };
        store
            .commit_index(vec![commit(epoch, entry(tp, 0, 41, 1, "obj", 10))])
            .await?;
        (cluster, t.id)
    };
    let store = EmbeddedStore::open(dir.path())?;
    assert_eq!(store.cluster_id().await?, id.0);
    let t = store
        .get_topic("durable")
        .await?
        .ok_or_else(|| anyhow::anyhow!("topic lost"))?;
    assert_eq!(t.id, id.1);
    assert_eq!(
        store.acquire_partitions(t.id, 0).await?[0]
            .state
            .next_offset,
        42
    );
    Ok(())
}
