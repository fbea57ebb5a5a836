//! Consumer group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, DescribeGroups, ListGroups, DeleteGroups, OffsetDelete.
//!
//! Membership goes through [`crate::groups::Coordinator`]; committed offsets through the
//! metadata store (durable before OffsetCommit is answered).

use super::{code, message, RequestContext};
use crate::groups::{GroupState, JoinRequest, Reply};
use crate::Gateway;
use bytes::Bytes;
use kafka_protocol::messages::consumer_group_describe_request::ConsumerGroupDescribeRequest;
use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as DescribeAssignment, ConsumerGroupDescribeResponse,
    DescribedGroup as ConsumerDescribedGroup, Member as ConsumerDescribedMember,
    TopicPartitions as DescribeTopicPartitions,
};
use kafka_protocol::messages::consumer_group_heartbeat_request::ConsumerGroupHeartbeatRequest;
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment as HeartbeatAssignment, ConsumerGroupHeartbeatResponse,
    TopicPartitions as HeartbeatTopicPartitions,
};
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_groups_response::{
    DeletableGroupResult, DeleteGroupsResponse,
};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::join_group_request::JoinGroupRequest;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_request::OffsetDeleteRequest;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::messages::{BrokerId, GroupId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;
use std::time::Duration;
use weir_metadata_api::CommittedOffset;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn opt(v: Option<&StrBytes>) -> Option<String> {
    v.map(|x| x.to_string())
}

pub fn find_coordinator(
    gw: &Gateway,
    version: i16,
    req: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    // Groups only: transactions and share groups are not implemented.
    let unsupported = req.key_type != 0;
    let coordinator = |key: &str| {
        let m = gw.cluster.coordinator(key);
        (BrokerId(m.node_id), s(m.host), m.port)
    };
    if version < 4 {
        let mut resp = FindCoordinatorResponse::default();
        if unsupported {
            resp = resp
                .with_error_code(code(ResponseError::InvalidRequest))
                .with_node_id(BrokerId(-1))
                .with_port(-1);
            if version >= 1 {
                resp = resp
                    .with_error_message(message("only consumer group coordinators are supported"));
            }
            return resp;
        }
        let (node, host, port) = coordinator(&req.key);
        return resp.with_node_id(node).with_host(host).with_port(port);
    }
    let coordinators = req
        .coordinator_keys
        .into_iter()
        .map(|key| {
            let c = Coordinator::default().with_key(key);
            if unsupported {
                c.with_error_code(code(ResponseError::InvalidRequest))
                    .with_error_message(message("only consumer group coordinators are supported"))
                    .with_node_id(BrokerId(-1))
                    .with_port(-1)
            } else {
                let (node, host, port) = coordinator(&c.key);
                c.with_node_id(node).with_host(host).with_port(port)
            }
        })
        .collect();
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}

fn ms(v: i32) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

pub async fn join_group(
    gw: &Gateway,
    ctx: &RequestContext,
    req: JoinGroupRequest,
) -> JoinGroupResponse {
    if !gw.cluster.is_coordinator(&req.group_id.0) {
        return JoinGroupResponse::default()
            .with_error_code(code(ResponseError::NotCoordinator))
            .with_generation_id(-1);
    }
    let version = ctx.version;
    let session_timeout = ms(req.session_timeout_ms);
    // v0 had no rebalance timeout: it was the session timeout.
    let rebalance_timeout = if version >= 1 {
        ms(req.rebalance_timeout_ms)
    } else {
        session_timeout
    };
    let join = JoinRequest {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        instance_id: opt(req.group_instance_id.as_ref()),
        client_id: ctx.client_id.clone(),
        client_host: ctx.client_host.clone(),
        session_timeout,
        rebalance_timeout,
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let member_id = join.member_id.clone();
    let result = match gw.groups.join(join) {
        Reply::Now(r) => r,
        Reply::Later(rx) => {
            let limit = rebalance_timeout + Duration::from_secs(5);
            match tokio::time::timeout(limit, rx).await {
                Ok(Ok(r)) => r,
                _ => crate::groups::JoinResult {
                    error: Some(ResponseError::RebalanceInProgress),
                    generation: -1,
                    member_id,
                    ..Default::default()
                },
            }
        }
    };
    let mut resp = JoinGroupResponse::default()
        .with_error_code(result.error.map_or(0, code))
        .with_generation_id(result.generation)
        .with_leader(s(result.leader))
        .with_member_id(s(result.member_id))
        .with_members(
            result
                .members
                .into_iter()
                .map(|(id, iid, metadata)| {
                    let m = JoinGroupResponseMember::default()
                        .with_member_id(s(id))
                        .with_metadata(metadata);
                    if version >= 5 {
                        m.with_group_instance_id(iid.map(s))
                    } else {
                        m
                    }
                })
                .collect(),
        );
    if version >= 7 {
        resp = resp.with_protocol_type(result.protocol_type.map(s));
    }
    resp.with_protocol_name(
        result
            .protocol_name
            .map(s)
            .or_else(|| (version < 7).then(|| s(""))),
    )
}

pub async fn sync_group(gw: &Gateway, version: i16, req: SyncGroupRequest) -> SyncGroupResponse {
    if !gw.cluster.is_coordinator(&req.group_id.0) {
        return SyncGroupResponse::default().with_error_code(code(ResponseError::NotCoordinator));
    }
    let assignments = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let reply = gw.groups.sync(
        &req.group_id.0,
        req.generation_id,
        &req.member_id,
        req.group_instance_id.as_deref(),
        (req.protocol_type.as_deref(), req.protocol_name.as_deref()),
        assignments,
    );
    let result = match reply {
        Reply::Now(r) => r,
        Reply::Later(rx) => match tokio::time::timeout(Duration::from_secs(300), rx).await {
            Ok(Ok(r)) => r,
            _ => crate::groups::SyncResult {
                error: Some(ResponseError::RebalanceInProgress),
                ..Default::default()
            },
        },
    };
    let mut resp = SyncGroupResponse::default()
        .with_error_code(result.error.map_or(0, code))
        .with_assignment(result.assignment);
    if version >= 5 {
        resp = resp
            .with_protocol_type(result.protocol_type.map(s))
            .with_protocol_name(result.protocol_name.map(s));
    }
    resp
}

pub fn heartbeat(gw: &Gateway, _version: i16, req: HeartbeatRequest) -> HeartbeatResponse {
    if !gw.cluster.is_coordinator(&req.group_id.0) {
        return HeartbeatResponse::default().with_error_code(code(ResponseError::NotCoordinator));
    }
    let error = gw.groups.heartbeat(
        &req.group_id.0,
        req.generation_id,
        &req.member_id,
        req.group_instance_id.as_deref(),
    );
    HeartbeatResponse::default().with_error_code(error.map_or(0, code))
}

pub fn leave_group(gw: &Gateway, version: i16, req: LeaveGroupRequest) -> LeaveGroupResponse {
    if !gw.cluster.is_coordinator(&req.group_id.0) {
        return LeaveGroupResponse::default().with_error_code(code(ResponseError::NotCoordinator));
    }
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| (m.member_id.to_string(), opt(m.group_instance_id.as_ref())))
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    match gw.groups.leave(&req.group_id.0, &members) {
        Err(e) => LeaveGroupResponse::default().with_error_code(code(e)),
        Ok(results) => {
            if version >= 3 {
                let members = members
                    .into_iter()
                    .zip(results)
                    .map(|((id, iid), e)| {
                        MemberResponse::default()
                            .with_member_id(s(id))
                            .with_group_instance_id(iid.map(s))
                            .with_error_code(e.map_or(0, code))
                    })
                    .collect();
                LeaveGroupResponse::default().with_members(members)
            } else {
                LeaveGroupResponse::default()
                    .with_error_code(results.first().copied().flatten().map_or(0, code))
            }
        }
    }
}

pub async fn offset_commit(
    gw: &Gateway,
    _version: i16,
    req: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    // Generations live in the coordinator's memory: only it can check a commit.
    let check = if !gw.cluster.is_coordinator(&group) {
        Err(ResponseError::NotCoordinator)
    } else {
        Ok(())
    };
    let check = check.and(
        match gw.consumer_groups.check_commit(
            &group,
            &req.member_id,
            req.generation_id_or_member_epoch,
        ) {
            Some(result) => result,
            None => gw.groups.check_commit(
                &group,
                req.generation_id_or_member_epoch,
                &req.member_id,
                req.group_instance_id.as_deref(),
            ),
        },
    );
    let now = gw.config.clock.now_ms();
    let mut to_store = Vec::new();
    // (topic index, partition index, error) to answer.
    let mut topics: Vec<OffsetCommitResponseTopic> = Vec::new();
    for t in &req.topics {
        let topic = gw.registry.topic(&t.name.0);
        let mut partitions = Vec::new();
        for p in &t.partitions {
            let error = if let Err(e) = check {
                Some(e)
            } else if topic
                .as_ref()
                .and_then(|tp| tp.partition(p.partition_index))
                .is_none()
            {
                Some(ResponseError::UnknownTopicOrPartition)
            } else if p
                .committed_metadata
                .as_ref()
                .is_some_and(|m| m.len() > gw.groups.config.max_metadata_bytes)
            {
                Some(ResponseError::OffsetMetadataTooLarge)
            } else {
                to_store.push(CommittedOffset {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: opt(p.committed_metadata.as_ref()),
                    commit_ms: now,
                });
                None
            };
            partitions.push(
                OffsetCommitResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(error.map_or(0, code)),
            );
        }
        topics.push(
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(partitions),
        );
    }
    if !to_store.is_empty() {
        if let Err(e) = gw.meta.commit_offsets(&group, to_store).await {
            tracing::warn!(group = %group, error = %e, "offset commit failed");
            for t in &mut topics {
                for p in &mut t.partitions {
                    if p.error_code == 0 {
                        p.error_code = code(ResponseError::CoordinatorNotAvailable);
                    }
                }
            }
        }
    }
    OffsetCommitResponse::default().with_topics(topics)
}

/// Committed offsets grouped by topic: (topic, [(partition, offset if committed)]).
type TopicOffsets = Vec<(String, Vec<(i32, Option<CommittedOffset>)>)>;

/// The committed offsets of `group` for the requested partitions (None: all committed).
async fn committed(
    gw: &Gateway,
    group: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> Result<TopicOffsets, ResponseError> {
    let stored = gw
        .meta
        .fetch_offsets(group)
        .await
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
    let mut by_key: BTreeMap<(String, i32), CommittedOffset> = stored
        .into_iter()
        .map(|o| ((o.topic.clone(), o.partition), o))
        .collect();
    Ok(match wanted {
        Some(list) => list
            .into_iter()
            .map(|(topic, parts)| {
                let parts = parts
                    .into_iter()
                    .map(|p| (p, by_key.remove(&(topic.clone(), p))))
                    .collect();
                (topic, parts)
            })
            .collect(),
        None => {
            let mut out: TopicOffsets = Vec::new();
            for ((topic, p), o) in by_key {
                match out.last_mut() {
                    Some((t, parts)) if *t == topic => parts.push((p, Some(o))),
                    _ => out.push((topic, vec![(p, Some(o))])),
                }
            }
            out
        }
    })
}

pub async fn offset_fetch(
    gw: &Gateway,
    version: i16,
    req: OffsetFetchRequest,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::new();
        for g in req.groups {
            let wanted = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let mut group = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            match committed(gw, &g.group_id.0, wanted).await {
                Ok(list) => {
                    group = group.with_topics(
                        list.into_iter()
                            .map(|(topic, parts)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(s(topic)))
                                    .with_partitions(
                                        parts
                                            .into_iter()
                                            .map(|(p, o)| {
                                                let (offset, epoch, meta) = fields(o);
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p)
                                                    .with_committed_offset(offset)
                                                    .with_committed_leader_epoch(epoch)
                                                    .with_metadata(Some(s(meta)))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    );
                }
                Err(e) => group = group.with_error_code(code(e)),
            }
            groups.push(group);
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    match committed(gw, &req.group_id.0, wanted).await {
        Ok(list) => {
            let topics = list
                .into_iter()
                .map(|(topic, parts)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(s(topic)))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, o)| {
                                    let (offset, epoch, meta) = fields(o);
                                    let mut part = OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(offset)
                                        .with_metadata(Some(s(meta)));
                                    if version >= 5 {
                                        part = part.with_committed_leader_epoch(epoch);
                                    }
                                    part
                                })
                                .collect(),
                        )
                })
                .collect();
            OffsetFetchResponse::default().with_topics(topics)
        }
        Err(e) => {
            let resp = OffsetFetchResponse::default();
            if version >= 2 {
                resp.with_error_code(code(e))
            } else {
                resp
            }
        }
    }
}

fn fields(o: Option<CommittedOffset>) -> (i64, i32, String) {
    match o {
        Some(o) => (o.offset, o.leader_epoch, o.metadata.unwrap_or_default()),
        None => (-1, -1, String::new()),
    }
}

/// Groups known to this gateway: in memory, or with committed offsets only (Empty).
async fn all_groups(gw: &Gateway) -> Vec<(String, GroupState, String, usize)> {
    let mut groups = gw.groups.list();
    for (id, state, members) in gw.consumer_groups.list() {
        let state = match state {
            "Empty" => GroupState::Empty,
            "Stable" => GroupState::Stable,
            _ => GroupState::PreparingRebalance,
        };
        groups.push((id, state, "consumer".to_string(), members));
    }
    if let Ok(stored) = gw.meta.offset_groups().await {
        for g in stored {
            if !groups.iter().any(|(id, ..)| *id == g) {
                groups.push((g, GroupState::Empty, String::new(), 0));
            }
        }
    }
    // Each gateway lists the groups it coordinates (clients ask every broker).
    groups.retain(|(id, ..)| gw.cluster.is_coordinator(id));
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    groups
}

pub async fn list_groups(gw: &Gateway, version: i16, req: ListGroupsRequest) -> ListGroupsResponse {
    let states: Vec<String> = req
        .states_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let types: Vec<String> = req
        .types_filter
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let groups = all_groups(gw)
        .await
        .into_iter()
        .filter(|(_, st, _, _)| {
            states.is_empty() || states.contains(&st.name().to_ascii_lowercase())
        })
        .filter(|(id, ..)| {
            let kind = if gw.consumer_groups.exists(id) {
                "consumer"
            } else {
                "classic"
            };
            types.is_empty() || types.iter().any(|t| t == kind)
        })
        .map(|(id, st, ptype, _)| {
            let id_for_type = id.clone();
            let mut g = ListedGroup::default()
                .with_group_id(GroupId(s(id)))
                .with_protocol_type(s(ptype));
            if version >= 4 {
                g = g.with_group_state(s(st.name()));
            }
            if version >= 5 {
                let kind = if gw.consumer_groups.exists(&id_for_type) {
                    "consumer"
                } else {
                    "classic"
                };
                g = g.with_group_type(s(kind));
            }
            g
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

pub async fn describe_groups(
    gw: &Gateway,
    version: i16,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let stored = gw.meta.offset_groups().await.unwrap_or_default();
    let mut out = Vec::new();
    for id in req.groups {
        let mut d = DescribedGroup::default().with_group_id(id.clone());
        if !gw.cluster.is_coordinator(&id.0) {
            out.push(d.with_error_code(code(ResponseError::NotCoordinator)));
            continue;
        }
        match gw.groups.get(&id.0) {
            Some(group) => {
                let g = group.lock().unwrap_or_else(|e| e.into_inner());
                let protocol = g.protocol.clone().unwrap_or_default();
                let members = g
                    .members
                    .values()
                    .map(|m| {
                        let mut dm = DescribedGroupMember::default()
                            .with_member_id(s(m.id.clone()))
                            .with_client_id(s(m.client_id.clone()))
                            .with_client_host(s(m.client_host.clone()))
                            .with_member_metadata(
                                m.protocols
                                    .iter()
                                    .find(|(n, _)| *n == protocol)
                                    .map(|(_, b)| b.clone())
                                    .unwrap_or_default(),
                            )
                            .with_member_assignment(m.assignment.clone());
                        if version >= 4 {
                            dm = dm.with_group_instance_id(m.instance_id.clone().map(s));
                        }
                        dm
                    })
                    .collect();
                d = d
                    .with_group_state(s(g.state.name()))
                    .with_protocol_type(s(g.protocol_type.clone().unwrap_or_default()))
                    .with_protocol_data(s(protocol))
                    .with_members(members);
            }
            None if stored.iter().any(|g| *g == *id.0) => {
                d = d.with_group_state(s("Empty"));
            }
            None => {
                d = d.with_group_state(s("Dead"));
                if version >= 6 {
                    d = d
                        .with_error_code(code(ResponseError::GroupIdNotFound))
                        .with_error_message(message(format!("group {} not found", id.0)));
                }
            }
        }
        out.push(d);
    }
    DescribeGroupsResponse::default().with_groups(out)
}

pub async fn delete_groups(
    gw: &Gateway,
    _version: i16,
    req: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::new();
    for id in req.groups_names {
        let error = if !gw.cluster.is_coordinator(&id.0) {
            Err(ResponseError::NotCoordinator)
        } else {
            Ok(())
        };
        let error = match error
            .and_then(|()| gw.consumer_groups.delete(&id.0))
            .and_then(|a| gw.groups.delete(&id.0).map(|b| a || b))
        {
            Err(e) => Some(e),
            Ok(in_memory) => match gw.meta.delete_offsets(&id.0, None).await {
                Ok(n) if n == 0 && !in_memory => Some(ResponseError::GroupIdNotFound),
                Ok(_) => None,
                Err(_) => Some(ResponseError::CoordinatorNotAvailable),
            },
        };
        if error.is_none() {
            tracing::info!(group = %id.0, "group deleted");
        }
        results.push(
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(error.map_or(0, code)),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

/// Whether an active member's subscription names `topic` (consumer protocol metadata holds
/// topics as int16 length + bytes; the bytes are searched, never decoded, as they are untrusted).
fn subscribed(metadata: &[Bytes], topic: &str) -> bool {
    let Ok(len) = i16::try_from(topic.len()) else {
        return false;
    };
    let mut pattern = len.to_be_bytes().to_vec();
    pattern.extend_from_slice(topic.as_bytes());
    metadata
        .iter()
        .any(|m| m.windows(pattern.len()).any(|w| w == pattern.as_slice()))
}

pub async fn offset_delete(
    gw: &Gateway,
    _version: i16,
    req: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let group = req.group_id.0.to_string();
    let member_metadata: Option<Vec<Bytes>> = gw.groups.get(&group).map(|g| {
        let g = g.lock().unwrap_or_else(|e| e.into_inner());
        g.members
            .values()
            .flat_map(|m| m.protocols.iter().map(|(_, b)| b.clone()))
            .collect()
    });
    let stored = gw.meta.fetch_offsets(&group).await.unwrap_or_default();
    if member_metadata.is_none() && stored.is_empty() {
        return OffsetDeleteResponse::default()
            .with_error_code(code(ResponseError::GroupIdNotFound));
    }
    let metadata = member_metadata.unwrap_or_default();
    let mut to_delete = Vec::new();
    let mut topics = Vec::new();
    for t in req.topics {
        let busy = subscribed(&metadata, &t.name.0);
        let partitions = t
            .partitions
            .iter()
            .map(|p| {
                let error = if busy {
                    Some(ResponseError::GroupSubscribedToTopic)
                } else if gw
                    .registry
                    .topic(&t.name.0)
                    .and_then(|tp| tp.partition(p.partition_index))
                    .is_none()
                {
                    Some(ResponseError::UnknownTopicOrPartition)
                } else {
                    to_delete.push((t.name.0.to_string(), p.partition_index));
                    None
                };
                OffsetDeleteResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(error.map_or(0, code))
            })
            .collect();
        topics.push(
            OffsetDeleteResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    if !to_delete.is_empty() {
        if let Err(e) = gw.meta.delete_offsets(&group, Some(to_delete)).await {
            tracing::warn!(group = %group, error = %e, "offset delete failed");
            return OffsetDeleteResponse::default()
                .with_error_code(code(ResponseError::CoordinatorNotAvailable));
        }
    }
    OffsetDeleteResponse::default().with_topics(topics)
}

/// Resolves a subscribed topic name to (topic id, partition count).
fn topic_info(gw: &Gateway) -> impl Fn(&str) -> Option<(uuid::Uuid, i32)> + '_ {
    move |name: &str| {
        gw.registry
            .topic(name)
            .map(|t| (t.id.0, t.partition_count()))
    }
}

pub fn consumer_group_heartbeat(
    gw: &Gateway,
    ctx: &RequestContext,
    req: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    let group = req.group_id.0.to_string();
    if !gw.cluster.is_coordinator(&group) {
        return ConsumerGroupHeartbeatResponse::default()
            .with_error_code(code(ResponseError::NotCoordinator));
    }
    let classic_busy = gw.groups.get(&group).is_some_and(|g| {
        !g.lock()
            .unwrap_or_else(|e| e.into_inner())
            .members
            .is_empty()
    });
    if classic_busy {
        return ConsumerGroupHeartbeatResponse::default()
            .with_error_code(code(ResponseError::GroupIdNotFound))
            .with_error_message(message(format!(
                "group {group} is a classic group with active members"
            )));
    }
    let hb = crate::consumer_groups::HeartbeatRequest {
        group_id: group,
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: opt(req.instance_id.as_ref()),
        rack_id: opt(req.rack_id.as_ref()),
        client_id: ctx.client_id.clone(),
        client_host: ctx.client_host.clone(),
        subscribed: req
            .subscribed_topic_names
            .map(|ts| ts.iter().map(|t| t.0.to_string()).collect()),
        assignor: opt(req.server_assignor.as_ref()),
        owned: req.topic_partitions.map(|ts| {
            ts.iter()
                .flat_map(|t| t.partitions.iter().map(move |p| (t.topic_id, *p)))
                .collect()
        }),
    };
    let lookup = topic_info(gw);
    match gw.consumer_groups.heartbeat(hb, &lookup) {
        Ok(r) => {
            let assignment = r.assignment.map(|tps| {
                let mut by_topic: BTreeMap<uuid::Uuid, Vec<i32>> = BTreeMap::new();
                for (t, p) in tps {
                    by_topic.entry(t).or_default().push(p);
                }
                HeartbeatAssignment::default().with_topic_partitions(
                    by_topic
                        .into_iter()
                        .map(|(t, ps)| {
                            HeartbeatTopicPartitions::default()
                                .with_topic_id(t)
                                .with_partitions(ps)
                        })
                        .collect(),
                )
            });
            ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(s(r.member_id)))
                .with_member_epoch(r.member_epoch)
                .with_heartbeat_interval_ms(
                    i32::try_from(r.heartbeat_interval.as_millis()).unwrap_or(5000),
                )
                .with_assignment(assignment)
        }
        Err(e) => ConsumerGroupHeartbeatResponse::default().with_error_code(code(e)),
    }
}

pub fn consumer_group_describe(
    gw: &Gateway,
    _version: i16,
    req: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let names = |tps: &[(uuid::Uuid, i32)]| -> DescribeAssignment {
        let mut by_topic: BTreeMap<uuid::Uuid, Vec<i32>> = BTreeMap::new();
        for (t, p) in tps {
            by_topic.entry(*t).or_default().push(*p);
        }
        DescribeAssignment::default().with_topic_partitions(
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    let name = gw
                        .registry
                        .topic_by_id(weir_common::TopicId(t))
                        .map(|x| x.name.clone())
                        .unwrap_or_default();
                    DescribeTopicPartitions::default()
                        .with_topic_id(t)
                        .with_topic_name(TopicName(s(name)))
                        .with_partitions(ps)
                })
                .collect(),
        )
    };
    let groups = req
        .group_ids
        .into_iter()
        .map(|id| match gw.consumer_groups.describe(&id.0) {
            Some(v) => ConsumerDescribedGroup::default()
                .with_group_id(id)
                .with_group_state(s(v.state))
                .with_group_epoch(v.epoch)
                .with_assignment_epoch(v.assignment_epoch)
                .with_assignor_name(s(v.assignor))
                .with_members(
                    v.members
                        .iter()
                        .map(|m| {
                            ConsumerDescribedMember::default()
                                .with_member_id(s(m.member_id.clone()))
                                .with_instance_id(m.instance_id.clone().map(s))
                                .with_rack_id(m.rack_id.clone().map(s))
                                .with_member_epoch(m.member_epoch)
                                .with_client_id(s(m.client_id.clone()))
                                .with_client_host(s(m.client_host.clone()))
                                .with_subscribed_topic_names(
                                    m.subscribed
                                        .iter()
                                        .map(|t| TopicName(s(t.clone())))
                                        .collect(),
                                )
                                .with_assignment(names(&m.assignment))
                                .with_target_assignment(names(&m.target))
                        })
                        .collect(),
                ),
            None => ConsumerDescribedGroup::default()
                .with_group_id(id.clone())
                .with_error_code(code(ResponseError::GroupIdNotFound))
                .with_error_message(message(format!("group {} is not a consumer group", id.0))),
        })
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}

/// Expires committed offsets as Kafka's `offsets.retention.minutes` does (KIP-211): a group
/// with members keeps them; an idle group in memory loses them all once it has been empty
/// for `retention` (and forgets the group); offsets of a group with no state here (manual
/// assignment, or a group from before a restart) expire one by one, `retention` after each
/// was committed. Only groups this gateway coordinates are looked at. Returns how many
/// offsets were deleted.
pub async fn expire_offsets(gw: &Gateway, retention: std::time::Duration) -> usize {
    let Ok(stored) = gw.meta.offset_groups().await else {
        return 0;
    };
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let now = gw.config.clock.now_ms();
    let mut deleted = 0;
    let active_848: std::collections::HashSet<String> = gw
        .consumer_groups
        .list()
        .into_iter()
        .filter(|(_, _, members)| *members > 0)
        .map(|(id, _, _)| id)
        .collect();
    for group in stored {
        if !gw.cluster.is_coordinator(&group) || active_848.contains(&group) {
            continue;
        }
        let outcome = match gw.groups.idle_for(&group) {
            // In memory with members or a rebalance: never expired.
            Some(None) => continue,
            Some(Some(idle)) if idle >= retention => {
                let deleted = gw.meta.delete_offsets(&group, None).await;
                if deleted.is_ok() {
                    gw.groups.forget_idle(&group);
                }
                deleted
            }
            Some(Some(_)) => continue,
            None => {
                let Ok(offsets) = gw.meta.fetch_offsets(&group).await else {
                    continue;
                };
                let old: Vec<(String, i32)> = offsets
                    .into_iter()
                    .filter(|o| now.saturating_sub(o.commit_ms) >= retention_ms)
                    .map(|o| (o.topic, o.partition))
                    .collect();
                if old.is_empty() {
                    continue;
                }
                gw.meta.delete_offsets(&group, Some(old)).await
            }
        };
        match outcome {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(group = %group, offsets = n, "committed offsets expired");
                }
                deleted += n;
            }
            Err(e) => tracing::warn!(group = %group, error = %e, "offset expiry failed"),
        }
    }
    deleted
}
