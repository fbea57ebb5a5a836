//! Malformed frames close one connection and nothing else: after each, the process is alive and
//! a fresh connection is served.

use crate::support::*;
use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::alter_configs_request::{AlterConfigsRequest, AlterConfigsResource};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::consumer_group_describe_request::ConsumerGroupDescribeRequest;
use kafka_protocol::messages::consumer_group_heartbeat_request::ConsumerGroupHeartbeatRequest;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsRequest, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_records_request::{DeleteRecordsRequest, DeleteRecordsTopic};
use kafka_protocol::messages::delete_topics_request::{DeleteTopicState, DeleteTopicsRequest};
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::fetch_request::{FetchRequest, FetchTopic};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::incremental_alter_configs_request as incremental;
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
use kafka_protocol::messages::leave_group_request::{LeaveGroupRequest, MemberIdentity};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsRequest, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequest, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequest, OffsetFetchRequestGroup, OffsetFetchRequestTopic,
};
use kafka_protocol::messages::produce_request::{ProduceRequest, TopicProduceData};
use kafka_protocol::messages::sync_group_request::{SyncGroupRequest, SyncGroupRequestAssignment};
use kafka_protocol::messages::{ApiKey, GroupId, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use weir_gateway::handlers::SUPPORTED;

/// The array count kafka-protocol 0.18 would pass to `Vec::with_capacity` (an abort, not a panic).
const HOSTILE_COUNT: u32 = 0x2600_2600;

/// Sends `frame` on a fresh connection, requires the server to close it without answering,
/// then requires the server to be alive.
fn closes(server: &mut Server, what: &str, frame: &[u8], then_eof: bool) -> Result<()> {
    let mut c = server.client()?;
    // The server may close while we are still writing: that is the expected outcome too.
    let _ = c.write_raw(frame);
    if then_eof {
        let _ = c.shutdown_write();
    }
    c.expect_closed().with_context(|| what.to_string())?;
    server
        .assert_alive()
        .with_context(|| format!("after {what}"))
}

fn header(key: i16, version: i16, client_id: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_i16(key);
    buf.put_i16(version);
    buf.put_i32(7);
    buf.put_i16(client_id.len() as i16);
    buf.put_slice(client_id);
    buf
}

#[test]
fn bad_frames_close_only_their_connection() -> Result<()> {
    let mut server = Server::start(&[])?;
    let s = &mut server;
    closes(
        s,
        "http request",
        b"GET / HTTP/1.1\r\nHost: weir\r\n\r\n",
        false,
    )?;
    let mut junk = vec![0u8, 0, 0, 24];
    junk.extend_from_slice(&[0xff; 24]);
    closes(s, "garbage frame (api key -1)", &junk, false)?;
    closes(
        s,
        "length 0x7fffffff",
        &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 1],
        false,
    )?;
    closes(s, "negative length", &[0xff, 0xff, 0xff, 0xff, 0, 3], false)?;
    closes(s, "length 2", &[0, 0, 0, 2, 0, 3], false)?;
    closes(s, "length 0", &[0, 0, 0, 0], false)?;
    let mut short = vec![0u8, 0, 0, 100];
    short.extend_from_slice(&header(3, 1, b"")[..10]);
    closes(s, "100-byte frame cut after 10 bytes", &short, true)?;
    closes(
        s,
        "unknown api key 9999",
        &framed(&[&header(9999, 0, b"x")]),
        false,
    )?;
    closes(
        s,
        "negative api key",
        &framed(&[&header(-5, 0, b"x")]),
        false,
    )?;
    // A client id longer than the frame.
    let mut bad_header = header(3, 1, b"");
    bad_header[8..10].copy_from_slice(&0x7fffi16.to_be_bytes());
    closes(
        s,
        "client id longer than the frame",
        &framed(&[&bad_header]),
        false,
    )?;
    for (key, version) in [
        (ApiKey::Produce, 99),
        (ApiKey::Produce, 12),
        (ApiKey::Fetch, 3),
        (ApiKey::Metadata, -1),
    ] {
        let frame = framed(&[&header_bytes(key, version.max(0), 1)?]);
        let mut frame = BytesMut::from(&frame[..]);
        frame[6..8].copy_from_slice(&version.to_be_bytes());
        closes(s, &format!("{key:?} v{version}"), &frame, false)?;
    }
    // The 14-byte AlterConfigs v0 request that aborted kafka-protocol's decoder.
    let mut alter = header(ApiKey::AlterConfigs as i16, 0, b"");
    alter[8..10].copy_from_slice(&(-1i16).to_be_bytes());
    alter.put_u32(HOSTILE_COUNT);
    ensure!(alter.len() == 14);
    closes(
        s,
        "AlterConfigs v0 with count 0x26002600",
        &framed(&[&alter]),
        false,
    )?;
    Ok(())
}

fn encode<T: Encodable>(req: T, version: i16) -> Result<BytesMut> {
    let mut buf = BytesMut::new();
    req.encode(&mut buf, version)?;
    Ok(buf)
}

/// A valid body of `key`/`version` whose first array holds `n` (default) elements.
pub(crate) fn body_with(key: ApiKey, version: i16, n: usize) -> Result<BytesMut> {
    let text = || StrBytes::from_static_str("t");
    let name = || TopicName(text());
    match key {
        ApiKey::Produce => encode(
            ProduceRequest::default()
                .with_acks(1)
                .with_timeout_ms(1000)
                .with_topic_data(vec![TopicProduceData::default(); n]),
            version,
        ),
        ApiKey::Fetch => encode(
            FetchRequest::default().with_topics(vec![FetchTopic::default(); n]),
            version,
        ),
        ApiKey::ListOffsets => encode(
            ListOffsetsRequest::default()
                .with_replica_id((-1).into())
                .with_topics(vec![ListOffsetsTopic::default(); n]),
            version,
        ),
        ApiKey::Metadata => encode(
            MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default()
                    .with_name(Some(name()));
                n
            ])),
            version,
        ),
        ApiKey::ApiVersions => encode(ApiVersionsRequest::default(), version),
        ApiKey::CreateTopics => encode(
            CreateTopicsRequest::default()
                .with_validate_only(true)
                .with_topics(vec![CreatableTopic::default(); n]),
            version,
        ),
        ApiKey::DeleteTopics if version < 6 => encode(
            DeleteTopicsRequest::default().with_topic_names(vec![name(); n]),
            version,
        ),
        ApiKey::DeleteTopics => encode(
            DeleteTopicsRequest::default().with_topics(vec![
                DeleteTopicState::default()
                    .with_name(Some(name()));
                n
            ]),
            version,
        ),
        ApiKey::DeleteRecords => encode(
            DeleteRecordsRequest::default().with_topics(vec![DeleteRecordsTopic::default(); n]),
            version,
        ),
        ApiKey::InitProducerId => encode(InitProducerIdRequest::default(), version),
        ApiKey::DescribeConfigs => {
            encode(
                DescribeConfigsRequest::default()
                    .with_resources(vec![DescribeConfigsResource::default(); n]),
                version,
            )
        }
        ApiKey::AlterConfigs => encode(
            AlterConfigsRequest::default()
                .with_validate_only(true)
                .with_resources(vec![AlterConfigsResource::default(); n]),
            version,
        ),
        ApiKey::CreatePartitions => encode(
            CreatePartitionsRequest::default()
                .with_validate_only(true)
                .with_topics(vec![CreatePartitionsTopic::default(); n]),
            version,
        ),
        ApiKey::IncrementalAlterConfigs => encode(
            incremental::IncrementalAlterConfigsRequest::default()
                .with_validate_only(true)
                .with_resources(vec![incremental::AlterConfigsResource::default(); n]),
            version,
        ),
        ApiKey::DescribeCluster => encode(DescribeClusterRequest::default(), version),
        // Group APIs: an empty group id, so nothing waits for a rebalance.
        ApiKey::FindCoordinator => encode(
            FindCoordinatorRequest::default().with_coordinator_keys(vec![
                text();
                n * (version >= 4)
                    as usize
            ]),
            version,
        ),
        ApiKey::JoinGroup => encode(
            JoinGroupRequest::default()
                .with_session_timeout_ms(10_000)
                .with_protocol_type(text())
                .with_protocols(vec![JoinGroupRequestProtocol::default(); n]),
            version,
        ),
        ApiKey::SyncGroup => encode(
            SyncGroupRequest::default()
                .with_assignments(vec![SyncGroupRequestAssignment::default(); n]),
            version,
        ),
        ApiKey::Heartbeat => encode(HeartbeatRequest::default(), version),
        ApiKey::LeaveGroup if version < 3 => encode(LeaveGroupRequest::default(), version),
        ApiKey::LeaveGroup => encode(
            LeaveGroupRequest::default().with_members(vec![MemberIdentity::default(); n]),
            version,
        ),
        ApiKey::OffsetCommit => encode(
            OffsetCommitRequest::default()
                .with_topics(vec![OffsetCommitRequestTopic::default(); n]),
            version,
        ),
        ApiKey::OffsetFetch if version < 8 => encode(
            OffsetFetchRequest::default()
                .with_topics(Some(vec![OffsetFetchRequestTopic::default(); n])),
            version,
        ),
        ApiKey::OffsetFetch => encode(
            OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default(); n]),
            version,
        ),
        ApiKey::DescribeGroups => encode(
            DescribeGroupsRequest::default().with_groups(vec![GroupId::default(); n]),
            version,
        ),
        ApiKey::ListGroups if version < 4 => encode(ListGroupsRequest::default(), version),
        ApiKey::ListGroups => encode(
            ListGroupsRequest::default().with_states_filter(vec![text(); n]),
            version,
        ),
        ApiKey::DeleteGroups => encode(
            DeleteGroupsRequest::default().with_groups_names(vec![GroupId::default(); n]),
            version,
        ),
        ApiKey::OffsetDelete => encode(
            OffsetDeleteRequest::default()
                .with_topics(vec![OffsetDeleteRequestTopic::default(); n]),
            version,
        ),
        ApiKey::ConsumerGroupHeartbeat => encode(
            ConsumerGroupHeartbeatRequest::default()
                .with_subscribed_topic_names(Some(vec![name(); n])),
            version,
        ),
        ApiKey::ConsumerGroupDescribe => encode(
            ConsumerGroupDescribeRequest::default().with_group_ids(vec![GroupId::default(); n]),
            version,
        ),
        // No arrays: on the plaintext listener both are answered with ILLEGAL_SASL_STATE.
        ApiKey::SaslHandshake => encode(
            kafka_protocol::messages::SaslHandshakeRequest::default().with_mechanism(text()),
            version,
        ),
        ApiKey::SaslAuthenticate => encode(
            kafka_protocol::messages::SaslAuthenticateRequest::default(),
            version,
        ),
        other => bail!("no request builder for {other:?}: add one"),
    }
}

/// `body` with its first array count (located by comparing one- and two-element encodings)
/// replaced by [`HOSTILE_COUNT`]; None if the request has no array.
fn hostile(key: ApiKey, version: i16, body: &[u8]) -> Result<Option<BytesMut>> {
    let two = body_with(key, version, 2)?;
    let Some(at) = body.iter().zip(two.iter()).position(|(a, b)| a != b) else {
        return Ok(None);
    };
    let flexible = key.request_header_version(version) >= 2;
    let mut out = BytesMut::new();
    if flexible {
        // Compact arrays encode count + 1 as an unsigned varint.
        ensure!(
            body[at] == 2,
            "{key:?} v{version}: byte {at} is {} , not a compact count of 1",
            body[at]
        );
        out.put_slice(&body[..at]);
        put_varint(&mut out, u64::from(HOSTILE_COUNT) + 1);
        out.put_slice(&body[at + 1..]);
    } else {
        ensure!(
            at >= 3 && body[at - 3..=at] == [0, 0, 0, 1],
            "{key:?} v{version}: no i32 count of 1 at {at}"
        );
        out.put_slice(&body[..at - 3]);
        out.put_u32(HOSTILE_COUNT);
        out.put_slice(&body[at + 1..]);
    }
    Ok(Some(out))
}

/// For every advertised (key, version): the valid request is answered, and the same request
/// with a hostile first array count closes the connection and leaves the server up.
#[test]
fn hostile_array_counts_in_every_supported_version() -> Result<()> {
    let mut server = Server::start(&[])?;
    let mut without_arrays = Vec::new();
    for &(key, min, max) in SUPPORTED {
        for version in min..=max {
            let body = body_with(key, version, 1)?;
            let head = header_bytes(key, version, 42)?;
            let mut c = server.client()?;
            c.write_raw(&framed(&[&head, &body]))?;
            let mut answer = c
                .read_frame()
                .and_then(|f| f.context("connection closed"))
                .with_context(|| format!("valid {key:?} v{version} request not answered"))?;
            ensure!(
                answer.get_i32() == 42,
                "{key:?} v{version}: wrong correlation id"
            );
            if let Some(bad) = hostile(key, version, &body)? {
                closes(
                    &mut server,
                    &format!("{key:?} v{version} with a hostile count"),
                    &framed(&[&head, &bad]),
                    false,
                )?;
            } else {
                without_arrays.push((key, version));
            }
        }
    }
    // Only these requests have no array to patch; any other must have been patched.
    let arrayless = |&(key, version): &(ApiKey, i16)| match key {
        ApiKey::ApiVersions
        | ApiKey::InitProducerId
        | ApiKey::DescribeCluster
        | ApiKey::Heartbeat
        | ApiKey::SaslHandshake
        | ApiKey::SaslAuthenticate => true,
        ApiKey::FindCoordinator | ApiKey::ListGroups => version < 4,
        ApiKey::LeaveGroup => version < 3,
        _ => false,
    };
    let missed: Vec<_> = without_arrays.iter().filter(|kv| !arrayless(kv)).collect();
    ensure!(
        missed.is_empty(),
        "no array count found to patch in {missed:?}"
    );
    Ok(())
}

#[test]
fn oversized_request_closes_the_connection() -> Result<()> {
    let mut server = Server::start(&["--max-request-bytes", "1048576"])?;
    let mut c = server.client()?;
    create_topic(&mut c, "big", 1, &[])?;
    // Just under the limit is served.
    let value = "x".repeat(900 * 1024);
    let fits = batch(None, &[("k", &value, T0)])?;
    ensure!(produce_ok(&mut c, "big", 0, fits)? == 0);
    let value = "x".repeat(2 << 20);
    let too_big = batch(None, &[("k", &value, T0)])?;
    let frame = request_frame(9, 1, &produce_request(-1, "big", 0, too_big))?;
    ensure!(frame.len() > 2 << 20);
    closes(
        &mut server,
        "2 MiB produce with a 1 MiB limit",
        &frame,
        false,
    )?;
    // Nothing of it was appended.
    let mut c = server.client()?;
    ensure!(
        log_end(&mut c, "big", 0)? == 1,
        "log end after the refused frame"
    );
    Ok(())
}

/// Requests written back to back are answered in order, each with its correlation id.
#[test]
fn pipelined_requests_are_answered_in_order() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    let topic = create_topic(&mut c, "pipe", 1, &[])?;
    let mut frames = Vec::new();
    let mut sent = Vec::new();
    for i in 0..20 {
        let correlation = 1000 + i;
        let frame = match i % 4 {
            0 => request_frame(
                9,
                correlation,
                &produce_request(1, "pipe", 0, simple_batch(None, 1)?),
            )?,
            1 => request_frame(
                1,
                correlation,
                &MetadataRequest::default().with_topics(Some(vec![])),
            )?,
            2 => request_frame(11, correlation, &fetch_request(11, &topic, &[(0, 0)]))?,
            _ => request_frame(3, correlation, &ApiVersionsRequest::default())?,
        };
        frames.extend_from_slice(&frame);
        sent.push(correlation);
    }
    c.write_raw(&frames)?;
    for (i, &correlation) in sent.iter().enumerate() {
        let frame = c
            .read_frame()?
            .context("connection closed while pipelining")?;
        if i % 4 == 0 {
            let p = decode_response::<ProduceRequest>(frame, 9, correlation)?;
            let base = p.responses[0].partition_responses[0].base_offset;
            ensure!(
                base == (i / 4) as i64,
                "pipelined produce {i} got offset {base}"
            );
        } else {
            ensure!(
                frame.slice(..4) == correlation.to_be_bytes()[..],
                "response {i} out of order"
            );
        }
    }
    Ok(())
}

/// Unknown tagged fields (header and body) are skipped; a null client id is accepted.
#[test]
fn unknown_tagged_fields_and_null_client_id() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    for (key, version) in [(ApiKey::Metadata, 12i16), (ApiKey::Metadata, 1)] {
        let mut header = kafka_protocol::messages::RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(77)
            .with_client_id(None);
        let mut req = MetadataRequest::default().with_topics(Some(vec![]));
        if version >= 9 {
            header
                .unknown_tagged_fields
                .insert(1000, bytes::Bytes::from_static(b"header"));
            req.unknown_tagged_fields
                .insert(2000, bytes::Bytes::from_static(b"body"));
        }
        let mut head = BytesMut::new();
        header.encode(&mut head, key.request_header_version(version))?;
        let body = encode(req, version)?;
        c.write_raw(&framed(&[&head, &body]))?;
        let frame = c.read_frame()?.context("no answer")?;
        let resp = decode_response::<MetadataRequest>(frame, version, 77)?;
        ensure!(resp.brokers.len() == 1, "{key:?} v{version}: {resp:?}");
    }
    Ok(())
}
