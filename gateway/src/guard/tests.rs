//! The guard's tests: schemas checked against kafka-protocol's encoder and decoder at every
//! supported version, hostile counts and truncations, random and mutated bodies.

use super::schema::{all, schema, tagged, Elem, Field, Schema, Ty, I32, I32S, STR};
use super::walker::{CountSite, Walker};
use super::*;
use crate::handlers::{is_supported, SUPPORTED};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    alter_configs_request, api_versions_request::ApiVersionsRequest,
    consumer_group_describe_request::ConsumerGroupDescribeRequest,
    consumer_group_heartbeat_request, create_partitions_request, create_topics_request,
    delete_groups_request::DeleteGroupsRequest, delete_records_request, delete_topics_request,
    describe_cluster_request::DescribeClusterRequest, describe_configs_request,
    describe_groups_request::DescribeGroupsRequest, fetch_request,
    find_coordinator_request::FindCoordinatorRequest, heartbeat_request::HeartbeatRequest,
    incremental_alter_configs_request, init_producer_id_request::InitProducerIdRequest,
    join_group_request, leave_group_request, list_groups_request::ListGroupsRequest,
    list_offsets_request, metadata_request, offset_commit_request, offset_delete_request,
    offset_fetch_request, produce_request, sasl_authenticate_request::SaslAuthenticateRequest,
    sasl_handshake_request::SaslHandshakeRequest, sync_group_request, ApiKey, BrokerId, GroupId,
    ProducerId, RequestHeader, RequestKind, TopicName, TransactionalId,
};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable, Message, StrBytes};
use std::collections::{BTreeMap, BTreeSet};

// -- Building sample requests -------------------------------------------------------------

fn s(value: &'static str) -> StrBytes {
    StrBytes::from_static_str(value)
}

fn topic() -> TopicName {
    TopicName(s("topic-a"))
}

fn group() -> GroupId {
    GroupId(s("group-a"))
}

/// `Some(value)`, or `None` in the samples whose nullable fields are all null.
fn opt<T>(nulls: bool, value: T) -> Option<T> {
    (!nulls).then_some(value)
}

/// Unknown tagged fields, one with a multi-byte tag: written only in flexible versions.
fn tags() -> BTreeMap<i32, Bytes> {
    BTreeMap::from([
        (300, Bytes::from_static(b"x")),
        (100_000, Bytes::from_static(b"tagged")),
    ])
}

fn encodes<T: Encodable>(value: &T, version: i16) -> bool {
    value.encode(&mut BytesMut::new(), version).is_ok()
}

fn encode<T: Encodable>(value: &T, version: i16) -> Vec<u8> {
    let mut buf = BytesMut::new();
    if let Err(e) = value.encode(&mut buf, version) {
        panic!("encoding at version {version}: {e}");
    }
    buf.to_vec()
}

/// Builds a `$ty` assignment by assignment, keeping each only if the value still encodes at
/// version `$v` (kafka-protocol refuses set fields a version does not have), so one builder
/// serves every version and sets every field that version has.
macro_rules! fill {
    ($v:expr, $ty:path { $($field:ident: $value:expr),* $(,)? }) => {{
        let mut built = <$ty>::default();
        $(
            let mut next = built.clone();
            next.$field = $value;
            if encodes(&next, $v) {
                built = next;
            }
        )*
        built
    }};
}

fn api_versions(v: i16, _nulls: bool) -> ApiVersionsRequest {
    fill!(
        v,
        ApiVersionsRequest {
            client_software_name: s("weir-test"),
            client_software_version: s("1.0"),
            unknown_tagged_fields: tags(),
        }
    )
}

fn metadata(v: i16, nulls: bool) -> metadata_request::MetadataRequest {
    use metadata_request::*;
    let topic = fill!(
        v,
        MetadataRequestTopic {
            name: opt(nulls, topic()),
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        MetadataRequest {
            topics: opt(nulls, vec![topic]),
            allow_auto_topic_creation: false,
            include_cluster_authorized_operations: true,
            include_topic_authorized_operations: true,
            unknown_tagged_fields: tags(),
        }
    )
}

fn produce(v: i16, nulls: bool) -> produce_request::ProduceRequest {
    use produce_request::*;
    let partition = fill!(
        v,
        PartitionProduceData {
            index: 3,
            records: opt(nulls, Bytes::from_static(b"opaque record batch")),
            unknown_tagged_fields: tags(),
        }
    );
    let topic = fill!(
        v,
        TopicProduceData {
            name: topic(),
            partition_data: vec![partition],
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        ProduceRequest {
            transactional_id: opt(nulls, TransactionalId(s("txn"))),
            acks: -1,
            timeout_ms: 1000,
            topic_data: vec![topic],
            unknown_tagged_fields: tags(),
        }
    )
}

fn fetch(v: i16, nulls: bool) -> fetch_request::FetchRequest {
    use fetch_request::*;
    let partition = fill!(
        v,
        FetchPartition {
            partition: 1,
            current_leader_epoch: 2,
            fetch_offset: 3,
            last_fetched_epoch: 4,
            log_start_offset: 5,
            partition_max_bytes: 6,
            unknown_tagged_fields: tags(),
        }
    );
    let fetch_topic = fill!(
        v,
        FetchTopic {
            topic: topic(),
            partitions: vec![partition],
            unknown_tagged_fields: tags(),
        }
    );
    let forgotten = fill!(
        v,
        ForgottenTopic {
            topic: topic(),
            partitions: vec![7],
            unknown_tagged_fields: tags(),
        }
    );
    let replica_state = fill!(
        v,
        ReplicaState {
            replica_id: BrokerId(8),
            replica_epoch: 9,
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        FetchRequest {
            cluster_id: opt(nulls, s("cluster")),
            replica_id: BrokerId(10),
            replica_state: replica_state,
            max_wait_ms: 11,
            min_bytes: 12,
            max_bytes: 13,
            isolation_level: 1,
            session_id: 14,
            session_epoch: 15,
            topics: vec![fetch_topic],
            forgotten_topics_data: vec![forgotten],
            rack_id: s("rack"),
            unknown_tagged_fields: tags(),
        }
    )
}

fn list_offsets(v: i16, _nulls: bool) -> list_offsets_request::ListOffsetsRequest {
    use list_offsets_request::*;
    let partition = fill!(
        v,
        ListOffsetsPartition {
            partition_index: 1,
            current_leader_epoch: 2,
            timestamp: 3,
            unknown_tagged_fields: tags(),
        }
    );
    let topic = fill!(
        v,
        ListOffsetsTopic {
            name: topic(),
            partitions: vec![partition],
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        ListOffsetsRequest {
            replica_id: BrokerId(4),
            isolation_level: 1,
            topics: vec![topic],
            timeout_ms: 5,
            unknown_tagged_fields: tags(),
        }
    )
}

fn init_producer_id(v: i16, nulls: bool) -> InitProducerIdRequest {
    fill!(
        v,
        InitProducerIdRequest {
            transactional_id: opt(nulls, TransactionalId(s("txn"))),
            transaction_timeout_ms: 1,
            producer_id: ProducerId(2),
            producer_epoch: 3,
            unknown_tagged_fields: tags(),
        }
    )
}

fn create_topics(v: i16, nulls: bool) -> create_topics_request::CreateTopicsRequest {
    use create_topics_request::*;
    let assignment = fill!(
        v,
        CreatableReplicaAssignment {
            partition_index: 1,
            broker_ids: vec![BrokerId(2)],
            unknown_tagged_fields: tags(),
        }
    );
    let config = fill!(
        v,
        CreatableTopicConfig {
            name: s("retention.ms"),
            value: opt(nulls, s("1000")),
            unknown_tagged_fields: tags(),
        }
    );
    let topic = fill!(
        v,
        CreatableTopic {
            name: topic(),
            num_partitions: 3,
            replication_factor: 4,
            assignments: vec![assignment],
            configs: vec![config],
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        CreateTopicsRequest {
            topics: vec![topic],
            timeout_ms: 5,
            validate_only: true,
            unknown_tagged_fields: tags(),
        }
    )
}

fn delete_topics(v: i16, nulls: bool) -> delete_topics_request::DeleteTopicsRequest {
    use delete_topics_request::*;
    let state = fill!(
        v,
        DeleteTopicState {
            name: opt(nulls, topic()),
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        DeleteTopicsRequest {
            topics: vec![state],
            topic_names: vec![topic()],
            timeout_ms: 1,
            unknown_tagged_fields: tags(),
        }
    )
}

fn create_partitions(v: i16, nulls: bool) -> create_partitions_request::CreatePartitionsRequest {
    use create_partitions_request::*;
    let assignment = fill!(
        v,
        CreatePartitionsAssignment {
            broker_ids: vec![BrokerId(1)],
            unknown_tagged_fields: tags(),
        }
    );
    let topic = fill!(
        v,
        CreatePartitionsTopic {
            name: topic(),
            count: 2,
            assignments: opt(nulls, vec![assignment]),
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        CreatePartitionsRequest {
            topics: vec![topic],
            timeout_ms: 3,
            validate_only: true,
            unknown_tagged_fields: tags(),
        }
    )
}

fn describe_configs(v: i16, nulls: bool) -> describe_configs_request::DescribeConfigsRequest {
    use describe_configs_request::*;
    let resource = fill!(
        v,
        DescribeConfigsResource {
            resource_type: 2,
            resource_name: s("topic-a"),
            configuration_keys: opt(nulls, vec![s("retention.ms")]),
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        DescribeConfigsRequest {
            resources: vec![resource],
            include_synonyms: true,
            include_documentation: true,
            unknown_tagged_fields: tags(),
        }
    )
}

fn alter_configs(v: i16, nulls: bool) -> alter_configs_request::AlterConfigsRequest {
    use alter_configs_request::*;
    let config = fill!(
        v,
        AlterableConfig {
            name: s("retention.ms"),
            value: opt(nulls, s("1000")),
            unknown_tagged_fields: tags(),
        }
    );
    let resource = fill!(
        v,
        AlterConfigsResource {
            resource_type: 2,
            resource_name: s("topic-a"),
            configs: vec![config],
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        AlterConfigsRequest {
            resources: vec![resource],
            validate_only: true,
            unknown_tagged_fields: tags(),
        }
    )
}

fn incremental_alter_configs(
    v: i16,
    nulls: bool,
) -> incremental_alter_configs_request::IncrementalAlterConfigsRequest {
    use incremental_alter_configs_request::*;
    let config = fill!(
        v,
        AlterableConfig {
            name: s("retention.ms"),
            config_operation: 1,
            value: opt(nulls, s("1000")),
            unknown_tagged_fields: tags(),
        }
    );
    let resource = fill!(
        v,
        AlterConfigsResource {
            resource_type: 2,
            resource_name: s("topic-a"),
            configs: vec![config],
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        IncrementalAlterConfigsRequest {
            resources: vec![resource],
            validate_only: true,
            unknown_tagged_fields: tags(),
        }
    )
}

fn describe_cluster(v: i16, _nulls: bool) -> DescribeClusterRequest {
    fill!(
        v,
        DescribeClusterRequest {
            include_cluster_authorized_operations: true,
            endpoint_type: 2,
            include_fenced_brokers: true,
            unknown_tagged_fields: tags(),
        }
    )
}

fn delete_records(v: i16, _nulls: bool) -> delete_records_request::DeleteRecordsRequest {
    use delete_records_request::*;
    let partition = fill!(
        v,
        DeleteRecordsPartition {
            partition_index: 1,
            offset: 2,
            unknown_tagged_fields: tags(),
        }
    );
    let topic = fill!(
        v,
        DeleteRecordsTopic {
            name: topic(),
            partitions: vec![partition],
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        DeleteRecordsRequest {
            topics: vec![topic],
            timeout_ms: 3,
            unknown_tagged_fields: tags(),
        }
    )
}

fn find_coordinator(v: i16, _nulls: bool) -> FindCoordinatorRequest {
    fill!(
        v,
        FindCoordinatorRequest {
            key: s("group-a"),
            key_type: 1,
            coordinator_keys: vec![s("group-a")],
            unknown_tagged_fields: tags(),
        }
    )
}

fn join_group(v: i16, nulls: bool) -> join_group_request::JoinGroupRequest {
    use join_group_request::*;
    let protocol = fill!(
        v,
        JoinGroupRequestProtocol {
            name: s("range"),
            metadata: Bytes::from_static(b"subscription"),
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        JoinGroupRequest {
            group_id: group(),
            session_timeout_ms: 1,
            rebalance_timeout_ms: 2,
            member_id: s("member"),
            group_instance_id: opt(nulls, s("instance")),
            protocol_type: s("consumer"),
            protocols: vec![protocol],
            reason: opt(nulls, s("reason")),
            unknown_tagged_fields: tags(),
        }
    )
}

fn sync_group(v: i16, nulls: bool) -> sync_group_request::SyncGroupRequest {
    use sync_group_request::*;
    let assignment = fill!(
        v,
        SyncGroupRequestAssignment {
            member_id: s("member"),
            assignment: Bytes::from_static(b"assignment"),
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        SyncGroupRequest {
            group_id: group(),
            generation_id: 1,
            member_id: s("member"),
            group_instance_id: opt(nulls, s("instance")),
            protocol_type: opt(nulls, s("consumer")),
            protocol_name: opt(nulls, s("range")),
            assignments: vec![assignment],
            unknown_tagged_fields: tags(),
        }
    )
}

fn heartbeat(v: i16, nulls: bool) -> HeartbeatRequest {
    fill!(
        v,
        HeartbeatRequest {
            group_id: group(),
            generation_id: 1,
            member_id: s("member"),
            group_instance_id: opt(nulls, s("instance")),
            unknown_tagged_fields: tags(),
        }
    )
}

fn leave_group(v: i16, nulls: bool) -> leave_group_request::LeaveGroupRequest {
    use leave_group_request::*;
    let member = fill!(
        v,
        MemberIdentity {
            member_id: s("member"),
            group_instance_id: opt(nulls, s("instance")),
            reason: opt(nulls, s("reason")),
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        LeaveGroupRequest {
            group_id: group(),
            member_id: s("member"),
            members: vec![member],
            unknown_tagged_fields: tags(),
        }
    )
}

fn offset_commit(v: i16, nulls: bool) -> offset_commit_request::OffsetCommitRequest {
    use offset_commit_request::*;
    let partition = fill!(
        v,
        OffsetCommitRequestPartition {
            partition_index: 1,
            committed_offset: 2,
            committed_leader_epoch: 3,
            committed_metadata: opt(nulls, s("metadata")),
            unknown_tagged_fields: tags(),
        }
    );
    let topic = fill!(
        v,
        OffsetCommitRequestTopic {
            name: topic(),
            partitions: vec![partition],
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        OffsetCommitRequest {
            group_id: group(),
            generation_id_or_member_epoch: 4,
            member_id: s("member"),
            group_instance_id: opt(nulls, s("instance")),
            retention_time_ms: 5,
            topics: vec![topic],
            unknown_tagged_fields: tags(),
        }
    )
}

fn offset_fetch(v: i16, nulls: bool) -> offset_fetch_request::OffsetFetchRequest {
    use offset_fetch_request::*;
    let legacy_topic = fill!(
        v,
        OffsetFetchRequestTopic {
            name: topic(),
            partition_indexes: vec![1],
            unknown_tagged_fields: tags(),
        }
    );
    let group_topic = fill!(
        v,
        OffsetFetchRequestTopics {
            name: topic(),
            partition_indexes: vec![2],
            unknown_tagged_fields: tags(),
        }
    );
    let group_entry = fill!(
        v,
        OffsetFetchRequestGroup {
            group_id: group(),
            member_id: opt(nulls, s("member")),
            member_epoch: 3,
            topics: opt(nulls, vec![group_topic]),
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        OffsetFetchRequest {
            group_id: group(),
            topics: opt(nulls, vec![legacy_topic]),
            groups: vec![group_entry],
            require_stable: true,
            unknown_tagged_fields: tags(),
        }
    )
}

fn describe_groups(v: i16, _nulls: bool) -> DescribeGroupsRequest {
    fill!(
        v,
        DescribeGroupsRequest {
            groups: vec![group()],
            include_authorized_operations: true,
            unknown_tagged_fields: tags(),
        }
    )
}

fn list_groups(v: i16, _nulls: bool) -> ListGroupsRequest {
    fill!(
        v,
        ListGroupsRequest {
            states_filter: vec![s("Stable")],
            types_filter: vec![s("classic")],
            unknown_tagged_fields: tags(),
        }
    )
}

fn delete_groups(v: i16, _nulls: bool) -> DeleteGroupsRequest {
    fill!(
        v,
        DeleteGroupsRequest {
            groups_names: vec![group()],
            unknown_tagged_fields: tags(),
        }
    )
}

fn offset_delete(v: i16, _nulls: bool) -> offset_delete_request::OffsetDeleteRequest {
    use offset_delete_request::*;
    let partition = fill!(v, OffsetDeleteRequestPartition { partition_index: 1 });
    let topic = fill!(
        v,
        OffsetDeleteRequestTopic {
            name: topic(),
            partitions: vec![partition],
        }
    );
    fill!(
        v,
        OffsetDeleteRequest {
            group_id: group(),
            topics: vec![topic],
        }
    )
}

fn consumer_group_heartbeat(
    v: i16,
    nulls: bool,
) -> consumer_group_heartbeat_request::ConsumerGroupHeartbeatRequest {
    use consumer_group_heartbeat_request::*;
    let partitions = fill!(
        v,
        TopicPartitions {
            partitions: vec![1],
            unknown_tagged_fields: tags(),
        }
    );
    fill!(
        v,
        ConsumerGroupHeartbeatRequest {
            group_id: group(),
            member_id: s("member"),
            member_epoch: 2,
            instance_id: opt(nulls, s("instance")),
            rack_id: opt(nulls, s("rack")),
            rebalance_timeout_ms: 3,
            subscribed_topic_names: opt(nulls, vec![topic()]),
            subscribed_topic_regex: opt(nulls, s("topic-.*")),
            server_assignor: opt(nulls, s("uniform")),
            topic_partitions: opt(nulls, vec![partitions]),
            unknown_tagged_fields: tags(),
        }
    )
}

fn consumer_group_describe(v: i16, _nulls: bool) -> ConsumerGroupDescribeRequest {
    fill!(
        v,
        ConsumerGroupDescribeRequest {
            group_ids: vec![group()],
            include_authorized_operations: true,
            unknown_tagged_fields: tags(),
        }
    )
}

fn sasl_handshake(v: i16, _nulls: bool) -> SaslHandshakeRequest {
    fill!(
        v,
        SaslHandshakeRequest {
            mechanism: s("PLAIN")
        }
    )
}

fn sasl_authenticate(v: i16, _nulls: bool) -> SaslAuthenticateRequest {
    fill!(
        v,
        SaslAuthenticateRequest {
            auth_bytes: Bytes::from_static(b"\0user\0password"),
            unknown_tagged_fields: tags(),
        }
    )
}

/// The encodings of one guarded request at one version: the default value, a value with
/// one element in every array and every nullable field set, and the same with every
/// nullable field null.
fn samples(key: i16, v: i16) -> [Vec<u8>; 3] {
    fn three<T: Encodable + Message + Default>(v: i16, build: fn(i16, bool) -> T) -> [Vec<u8>; 3] {
        assert!(
            T::VERSIONS.min <= v && v <= T::VERSIONS.max,
            "kafka-protocol does not support version {v}"
        );
        [
            encode(&T::default(), v),
            encode(&build(v, false), v),
            encode(&build(v, true), v),
        ]
    }
    match key {
        0 => three(v, produce),
        1 => three(v, fetch),
        2 => three(v, list_offsets),
        3 => three(v, metadata),
        8 => three(v, offset_commit),
        9 => three(v, offset_fetch),
        10 => three(v, find_coordinator),
        11 => three(v, join_group),
        12 => three(v, heartbeat),
        13 => three(v, leave_group),
        14 => three(v, sync_group),
        15 => three(v, describe_groups),
        16 => three(v, list_groups),
        17 => three(v, sasl_handshake),
        18 => three(v, api_versions),
        19 => three(v, create_topics),
        20 => three(v, delete_topics),
        21 => three(v, delete_records),
        22 => three(v, init_producer_id),
        32 => three(v, describe_configs),
        33 => three(v, alter_configs),
        36 => three(v, sasl_authenticate),
        37 => three(v, create_partitions),
        42 => three(v, delete_groups),
        44 => three(v, incremental_alter_configs),
        47 => three(v, offset_delete),
        60 => three(v, describe_cluster),
        68 => three(v, consumer_group_heartbeat),
        69 => three(v, consumer_group_describe),
        _ => panic!("no samples for api key {key}"),
    }
}

fn each_guarded_version() -> impl Iterator<Item = (i16, i16)> {
    guarded_versions()
        .iter()
        .flat_map(|&(key, min, max)| (min..=max).map(move |v| (key, v)))
}

// -- Helpers around the walker and the real decoder ---------------------------------------

fn trace(key: i16, v: i16, body: &[u8]) -> (Result<usize, GuardError>, Vec<CountSite>) {
    let Ok((mut walker, fields)) = Walker::for_request(key, v, body) else {
        panic!("api key {key} version {v} is not guarded");
    };
    let result = walker.walk_struct(fields).map(|()| walker.pos);
    (result, walker.sites)
}

/// How many bytes kafka-protocol's decoder reads from `body`, or its error. Only call it on
/// bodies the guard accepted (anything else may abort the test process).
fn decoded_len(key: i16, v: i16, body: &[u8]) -> Result<usize, String> {
    let api_key = ApiKey::try_from(key).map_err(|()| format!("unknown api key {key}"))?;
    let mut bytes = Bytes::copy_from_slice(body);
    RequestKind::decode(api_key, &mut bytes, v).map_err(|e| e.root_cause().to_string())?;
    Ok(body.len() - bytes.len())
}

/// The number of arrays a value with one element in every array meets at `version`.
fn arrays_in(fields: &[Field], version: i16, flexible: bool) -> usize {
    fields
        .iter()
        .filter(|f| f.in_version(version) && (f.tag.is_none() || flexible))
        .map(|f| match f.ty {
            Ty::Array {
                elem: Elem::Struct(inner),
                ..
            } => 1 + arrays_in(inner, version, flexible),
            Ty::Array { .. } => 1,
            Ty::Struct(inner) => arrays_in(inner, version, flexible),
            Ty::Fixed(_) | Ty::Str { .. } | Ty::Bytes { .. } => 0,
        })
        .sum()
}

fn api_of(key: i16) -> Schema {
    let Some(api) = ApiKey::try_from(key).ok().and_then(schema) else {
        panic!("api key {key} is not guarded");
    };
    api
}

fn uvarint(mut value: u32) -> Vec<u8> {
    let mut out = Vec::new();
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
    out
}

// -- 1. Round trips -----------------------------------------------------------------------

#[test]
fn guarded_versions_list_each_api_once() {
    let keys: BTreeSet<i16> = guarded_versions().iter().map(|&(key, _, _)| key).collect();
    assert_eq!(keys.len(), guarded_versions().len());
    assert!(guarded_versions().iter().all(|&(_, min, max)| min <= max));
    assert_eq!(each_guarded_version().count(), 160);
}

#[test]
fn guarded_versions_are_exactly_the_supported_ones() {
    // One list: the guard guards what the gateway advertises, nothing more or less.
    let supported: Vec<(i16, i16, i16)> = SUPPORTED
        .iter()
        .map(|&(key, min, max)| (key as i16, min, max))
        .collect();
    assert_eq!(guarded_versions(), &supported[..]);
    // Every supported key has a schema, and every key with a schema is supported.
    for &(key, _, _) in SUPPORTED {
        assert!(
            schema(key).is_some(),
            "{key:?} is supported but has no guard schema"
        );
    }
    for raw in 0..=i16::from(u8::MAX) {
        let Ok(key) = ApiKey::try_from(raw) else {
            continue;
        };
        let listed = SUPPORTED.iter().any(|&(k, _, _)| k == key);
        assert_eq!(
            schema(key).is_some(),
            listed,
            "{key:?}: schema without support"
        );
    }
    // And the guard refuses exactly what the connection would not decode.
    for raw in -1..=i16::from(u8::MAX) {
        for v in -1..=20 {
            let supported = ApiKey::try_from(raw).is_ok_and(|key| is_supported(key, v));
            let refused = matches!(
                check_request_body(raw, v, &[]),
                Err(GuardError::UnknownApi { .. })
            );
            assert_eq!(supported, !refused, "api key {raw} v{v}");
        }
    }
}

#[test]
fn walker_consumes_exactly_what_kafka_protocol_encodes() {
    let mut checked = 0;
    for (key, v) in each_guarded_version() {
        let api = api_of(key);
        let flexible = v >= api.flexible_from;
        for (i, body) in samples(key, v).iter().enumerate() {
            let what = format!("api key {key} v{v} sample {i}");
            let (result, sites) = trace(key, v, body);
            assert_eq!(result, Ok(body.len()), "{what}");
            assert_eq!(request_body_len(key, v, body), Ok(body.len()), "{what}");
            assert_eq!(decoded_len(key, v, body), Ok(body.len()), "{what}");
            if i == 1 {
                // The populated sample meets every array the version has, once each.
                assert_eq!(sites.len(), arrays_in(api.body, v, flexible), "{what}");
                assert!(
                    sites.iter().all(|site| site.count == 1),
                    "{what}: {sites:?}"
                );
                assert!(body.len() > samples(key, v)[0].len() || sites.is_empty());
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 160 * 3);
}

#[test]
fn known_tagged_fields_are_walked_within_their_declared_size() {
    // Fetch v15 whose only top-level tagged field is cluster_id (tag 0): it ends the body.
    let mut request = fetch(15, false);
    request.unknown_tagged_fields.clear();
    request.replica_state = Default::default();
    let body = encode(&request, 15);
    let tail = [&[1, 0, 8, 8][..], b"cluster"].concat();
    assert!(body.ends_with(&tail), "{body:?}");
    assert_eq!(request_body_len(1, 15, &body), Ok(body.len()));
    let size_at = body.len() - tail.len() + 2;
    // Declaring more bytes than the value uses would desynchronise the decoder (it ignores
    // the size of known fields): refused.
    let mut longer = body.clone();
    longer[size_at] = 9;
    longer.push(0);
    assert!(matches!(
        check_request_body(1, 15, &longer),
        Err(GuardError::TaggedSizeMismatch {
            tag: 0,
            declared: 9,
            used: 8,
            ..
        })
    ));
    // Declaring fewer: the value does not fit in its declared size.
    let mut shorter = body.clone();
    shorter[size_at] = 7;
    assert!(check_request_body(1, 15, &shorter).is_err());
    // replica_state (tag 1) exists from v15; at v12 the decoder refuses it, and so do we.
    let mut request = fetch(12, true);
    request.unknown_tagged_fields.clear();
    let mut body = encode(&request, 12);
    assert_eq!(body.last(), Some(&0), "no top-level tagged fields");
    assert_eq!(request_body_len(1, 12, &body), Ok(body.len()));
    let last = body.len() - 1;
    body[last] = 1;
    body.extend_from_slice(&[1, 1, 0]);
    assert!(matches!(
        check_request_body(1, 12, &body),
        Err(GuardError::TagNotInVersion {
            tag: 1,
            version: 12,
            ..
        })
    ));
    assert!(decoded_len(1, 12, &body).is_err());
}

#[test]
fn tagged_arrays_are_count_checked_against_their_declared_size() {
    const SCHEMA: &[Field] = &[all(I32), tagged(5, 0, I32S), tagged(6, 1, STR)];
    fn walk(body: &[u8], version: i16) -> Result<usize, GuardError> {
        let mut walker = Walker::flexible(body, version);
        walker.walk_struct(SCHEMA).map(|()| walker.pos)
    }
    let fixed = [0, 0, 0, 1];
    // One tagged field, tag 5, size 5: a compact array of one int32.
    let ok = [&fixed[..], &[1, 5, 5, 2, 0, 0, 0, 9]].concat();
    assert_eq!(walk(&ok, 0), Ok(ok.len()));
    // Three elements claimed inside the 5 declared bytes, with plenty of body after them.
    let big = [&fixed[..], &[1, 5, 5, 4, 0, 0, 0, 9], &[0; 64]].concat();
    assert_eq!(
        walk(&big, 0),
        Err(GuardError::CountTooLarge {
            at: 7,
            count: 3,
            remaining: 4
        })
    );
    let huge = [&fixed[..], &[1, 5, 5], &uvarint(0x2600_2600)[..], &[0; 64]].concat();
    assert!(matches!(
        walk(&huge, 0),
        Err(GuardError::CountTooLarge { at: 7, .. })
    ));
    // A size past the end of the body.
    let past = [&fixed[..], &[1, 9, 100, 0]].concat();
    assert!(matches!(
        walk(&past, 0),
        Err(GuardError::LengthTooLarge {
            at: 6,
            len: 100,
            ..
        })
    ));
    // Tag 6 exists from version 1 only.
    let early = [&fixed[..], &[1, 6, 2, 2, b'a']].concat();
    assert_eq!(walk(&early, 1), Ok(early.len()));
    assert!(matches!(
        walk(&early, 0),
        Err(GuardError::TagNotInVersion { tag: 6, .. })
    ));
    // Unknown tags are skipped by size; a huge tagged-field count is refused up front.
    let unknown = [&fixed[..], &[2, 7, 1, 0xff, 8, 0]].concat();
    assert_eq!(walk(&unknown, 0), Ok(unknown.len()));
    let many = [&fixed[..], &uvarint(u32::MAX)[..], &[0; 8]].concat();
    assert!(matches!(
        walk(&many, 0),
        Err(GuardError::CountTooLarge { at: 4, .. })
    ));
}

// -- 2. Hostile frames --------------------------------------------------------------------

#[test]
fn alter_configs_v0_frame_from_the_abort_is_refused() {
    // i32 frame length stripped; header v1: key 33, version 0, correlation 1, null client
    // id; then a body whose first array count is 0x26002600.
    let frame = [
        0x00, 0x21, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0xff, 0x26, 0x00, 0x26, 0x00,
    ];
    assert_eq!(frame.len(), 14);
    let mut buf = Bytes::copy_from_slice(&frame);
    let header = match decode_request_header_from_buffer(&mut buf) {
        Ok(header) => header,
        Err(e) => panic!("header: {e}"),
    };
    assert_eq!(
        (header.request_api_key, header.request_api_version),
        (33, 0)
    );
    assert_eq!(
        check_request_body(33, 0, &buf),
        Err(GuardError::CountTooLarge {
            at: 0,
            count: 0x2600_2600,
            remaining: 0
        })
    );
}

#[test]
fn every_huge_or_negative_count_is_refused_where_it_is() {
    let mut replaced = 0;
    for (key, v) in each_guarded_version() {
        for (i, body) in samples(key, v).iter().enumerate() {
            let (result, sites) = trace(key, v, body);
            assert_eq!(result, Ok(body.len()));
            for site in sites {
                let what = format!("api key {key} v{v} sample {i} count at {}", site.at);
                let rest = body.len() - site.at - site.len;
                let rest_u32 = u32::try_from(rest).unwrap_or(u32::MAX);
                let (huge, bad): (Vec<Vec<u8>>, Vec<Vec<u8>>) = if site.compact {
                    (
                        vec![
                            uvarint(0x2600_2600),
                            uvarint(u32::MAX),
                            vec![0xff; 5],
                            uvarint(rest_u32 + 2),
                        ],
                        if site.nullable { vec![] } else { vec![vec![0]] },
                    )
                } else {
                    let mut bad = vec![(-2i32).to_be_bytes().to_vec()];
                    if !site.nullable {
                        bad.push((-1i32).to_be_bytes().to_vec());
                    }
                    (
                        vec![
                            0x2600_2600i32.to_be_bytes().to_vec(),
                            i32::MAX.to_be_bytes().to_vec(),
                            (rest_u32 as i32 + 1).to_be_bytes().to_vec(),
                        ],
                        bad,
                    )
                };
                let splice =
                    |count: &[u8]| [&body[..site.at], count, &body[site.at + site.len..]].concat();
                for count in &huge {
                    let hostile = splice(count);
                    assert!(
                        matches!(
                            check_request_body(key, v, &hostile),
                            Err(GuardError::CountTooLarge { at, .. }) if at == site.at
                        ),
                        "{what}: {:?}",
                        check_request_body(key, v, &hostile)
                    );
                    replaced += 1;
                }
                for count in &bad {
                    let hostile = splice(count);
                    assert!(
                        matches!(
                            check_request_body(key, v, &hostile),
                            Err(GuardError::BadLength { at, .. }) if at == site.at
                        ),
                        "{what}: {:?}",
                        check_request_body(key, v, &hostile)
                    );
                    replaced += 1;
                }
            }
        }
    }
    assert!(replaced > 1000, "only {replaced} hostile counts tried");
}

#[test]
fn every_truncation_is_refused() {
    for (key, v) in each_guarded_version() {
        for (i, body) in samples(key, v).iter().enumerate() {
            for cut in 0..body.len() {
                assert!(
                    check_request_body(key, v, &body[..cut]).is_err(),
                    "api key {key} v{v} sample {i} cut at {cut}"
                );
            }
        }
    }
}

#[test]
fn unguarded_versions_are_refused() {
    assert_eq!(
        check_request_body(0, 12, &[]),
        Err(GuardError::UnknownApi {
            key: 0,
            version: 12
        })
    );
    assert!(check_request_body(3, -1, &[]).is_err());
    assert!(check_request_body(1000, 0, &[]).is_err());
    // Trailing bytes are left alone, as kafka-protocol leaves them.
    let mut body = samples(12, 0)[1].clone();
    let len = body.len();
    body.extend_from_slice(&[1, 2, 3]);
    assert_eq!(request_body_len(12, 0, &body), Ok(len));
}

/// Writes every sample as a whole frame (header, then body) into the directory named by
/// `WEIR_FUZZ_CORPUS`, to seed `fuzz/fuzz_targets/request_frame.rs`.
#[test]
#[ignore = "writes files: run by hand to seed the fuzzer"]
fn write_fuzz_corpus() {
    let Some(dir) = std::env::var_os("WEIR_FUZZ_CORPUS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("creating {}: {e}", dir.display());
    }
    for (key, v) in each_guarded_version() {
        let Ok(api_key) = ApiKey::try_from(key) else {
            panic!("unknown api key {key}");
        };
        let mut header = RequestHeader::default();
        header.request_api_key = key;
        header.request_api_version = v;
        header.correlation_id = 7;
        header.client_id = Some(s("fuzz"));
        let header = encode(&header, api_key.request_header_version(v));
        for (i, body) in samples(key, v).iter().enumerate() {
            let path = dir.join(format!("{key}-{v}-{i}"));
            if let Err(e) = std::fs::write(&path, [&header[..], body].concat()) {
                panic!("writing {}: {e}", path.display());
            }
        }
    }
}

// -- 3. Random and mutated bodies, compared with the real decoder -------------------------

/// xorshift64*: deterministic, good enough to pick bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        const INTERESTING: [u8; 8] = [0x00, 0x01, 0x02, 0x7f, 0x80, 0xfe, 0xff, 0x26];
        if self.below(2) == 0 {
            INTERESTING[self.below(INTERESTING.len())]
        } else {
            self.next() as u8
        }
    }

    fn mutate(&mut self, body: &mut Vec<u8>) {
        for _ in 0..=self.below(3) {
            let at = self.below(body.len() + 1);
            match self.below(5) {
                0 if at < body.len() => body[at] = self.byte(),
                1 => body.insert(at, self.byte()),
                2 if at < body.len() => {
                    body.remove(at);
                }
                3 => body.truncate(at),
                _ if at + 4 <= body.len() => {
                    let value = [0xff, 0x26, 0x00, 0x7f][self.below(4)];
                    body[at..at + 4].fill(value);
                }
                _ => body.push(self.byte()),
            }
        }
    }
}

#[test]
fn random_and_mutated_bodies_never_panic_and_agree_with_the_decoder() {
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let (mut accepted, mut bad_utf8) = (0, 0);
    for (key, v) in each_guarded_version() {
        let samples = samples(key, v);
        for round in 0..2000 {
            let body = if round < 500 {
                (0..rng.below(48)).map(|_| rng.byte()).collect()
            } else {
                let mut body = samples[round % 3].clone();
                rng.mutate(&mut body);
                body
            };
            let Ok(len) = request_body_len(key, v, &body) else {
                continue;
            };
            accepted += 1;
            assert!(len <= body.len());
            // Safe to decode: the guard accepted it. The decoder must read exactly the bytes
            // the walker read, or refuse a string that is not UTF-8 (the walker does not
            // look inside strings).
            match decoded_len(key, v, &body) {
                Ok(decoded) => assert_eq!(decoded, len, "api key {key} v{v} {body:?}"),
                Err(e) if e.contains("utf-8") => bad_utf8 += 1,
                Err(e) => panic!("api key {key} v{v}: decoder refused {body:?}: {e}"),
            }
        }
    }
    assert!(accepted > 50_000, "only {accepted} bodies accepted");
    assert!(
        bad_utf8 < accepted / 5,
        "{bad_utf8} of {accepted} refused for utf-8"
    );
}
