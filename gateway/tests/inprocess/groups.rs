//! A classic consumer group's whole cycle on one member: find the coordinator, join (member id
//! required, then the first generation), sync, heartbeat, commit and fetch offsets, leave.

use crate::support::{create_topic, topic_name, Client, TestGateway};
use anyhow::{ensure, Result};
use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
use kafka_protocol::messages::join_group_response::JoinGroupResponse;
use kafka_protocol::messages::leave_group_request::{LeaveGroupRequest, MemberIdentity};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequest, OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::{SyncGroupRequest, SyncGroupRequestAssignment};
use kafka_protocol::messages::GroupId;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

const GROUP: &str = "readers";

fn group() -> GroupId {
    GroupId(StrBytes::from_static_str(GROUP))
}

fn s(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

async fn join(c: &mut Client, member_id: &str) -> Result<JoinGroupResponse> {
    let req = JoinGroupRequest::default()
        .with_group_id(group())
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(5_000)
        .with_member_id(s(member_id))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(Bytes::from_static(b"subscription"))]);
    c.call(9, &req).await
}

async fn heartbeat(c: &mut Client, generation: i32, member_id: &str) -> Result<i16> {
    let req = HeartbeatRequest::default()
        .with_group_id(group())
        .with_generation_id(generation)
        .with_member_id(s(member_id));
    Ok(c.call(4, &req).await?.error_code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_sync_heartbeat_commit_fetch_and_leave() -> Result<()> {
    let gw = TestGateway::start().await?;
    let mut c = gw.client().await?;
    ensure!(create_topic(&mut c, "input", 2).await?.error_code == 0);

    let found = c
        .call(
            4,
            &FindCoordinatorRequest::default().with_coordinator_keys(vec![s(GROUP)]),
        )
        .await?;
    let coordinator = &found.coordinators[0];
    assert_eq!(coordinator.error_code, 0);
    assert_eq!(coordinator.port, i32::from(gw.addr.port()));

    // v4+: the first join only hands out a member id.
    let first = join(&mut c, "").await?;
    assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
    let member = first.member_id.to_string();
    assert!(!member.is_empty());

    let joined = join(&mut c, &member).await?;
    assert_eq!(joined.error_code, 0, "{joined:?}");
    assert_eq!(joined.generation_id, 1);
    assert_eq!(joined.leader.as_str(), member);
    assert_eq!(joined.protocol_name.as_deref(), Some("range"));
    assert_eq!(joined.members.len(), 1);
    assert_eq!(joined.members[0].metadata.as_ref(), b"subscription");
    let generation = joined.generation_id;

    let synced = c
        .call(
            5,
            &SyncGroupRequest::default()
                .with_group_id(group())
                .with_generation_id(generation)
                .with_member_id(s(&member))
                .with_protocol_type(Some(s("consumer")))
                .with_protocol_name(Some(s("range")))
                .with_assignments(vec![SyncGroupRequestAssignment::default()
                    .with_member_id(s(&member))
                    .with_assignment(Bytes::from_static(b"input-0,input-1"))]),
        )
        .await?;
    assert_eq!(synced.error_code, 0);
    assert_eq!(synced.assignment.as_ref(), b"input-0,input-1");

    assert_eq!(heartbeat(&mut c, generation, &member).await?, 0);
    assert_eq!(
        heartbeat(&mut c, generation + 1, &member).await?,
        ResponseError::IllegalGeneration.code()
    );
    assert_eq!(
        heartbeat(&mut c, generation, "someone-else").await?,
        ResponseError::UnknownMemberId.code()
    );

    let committed = c
        .call(
            8,
            &OffsetCommitRequest::default()
                .with_group_id(group())
                .with_generation_id_or_member_epoch(generation)
                .with_member_id(s(&member))
                .with_topics(vec![OffsetCommitRequestTopic::default()
                    .with_name(topic_name("input"))
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(42)
                            .with_committed_metadata(Some(s("meta"))),
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(1)
                            .with_committed_offset(7),
                    ])]),
        )
        .await?;
    let codes: Vec<i16> = committed.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, [0, 0]);

    let fetched = c
        .call(
            8,
            &OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                .with_group_id(group())
                .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                    .with_name(topic_name("input"))
                    .with_partition_indexes(vec![0, 1])]))]),
        )
        .await?;
    let g = &fetched.groups[0];
    assert_eq!(g.error_code, 0);
    let offsets: Vec<(i32, i64, Option<String>)> = g.topics[0]
        .partitions
        .iter()
        .map(|p| {
            (
                p.partition_index,
                p.committed_offset,
                p.metadata.as_ref().map(|m| m.to_string()),
            )
        })
        .collect();
    assert_eq!(
        offsets,
        [
            (0, 42, Some("meta".to_string())),
            (1, 7, Some(String::new()))
        ]
    );

    let left = c
        .call(
            5,
            &LeaveGroupRequest::default()
                .with_group_id(group())
                .with_members(vec![MemberIdentity::default().with_member_id(s(&member))]),
        )
        .await?;
    assert_eq!(left.error_code, 0);
    assert_eq!(left.members[0].error_code, 0);
    assert_eq!(
        heartbeat(&mut c, generation, &member).await?,
        ResponseError::UnknownMemberId.code()
    );
    gw.stop().await
}
