//! Metadata: every version decodes, topic ids match CreateTopics, auto-creation on and off.

use crate::support::*;
use anyhow::{ensure, Context, Result};
use kafka_protocol::messages::delete_topics_request::{DeleteTopicState, DeleteTopicsRequest};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::metadata_response::{MetadataResponse, MetadataResponseTopic};
use kafka_protocol::ResponseError;

fn metadata(
    c: &mut Client,
    version: i16,
    topic: &str,
    auto_create: bool,
) -> Result<MetadataResponse> {
    let mut req = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
    ]));
    if version >= 4 {
        req = req.with_allow_auto_topic_creation(auto_create);
    }
    c.call(version, &req)
}

fn only_topic(resp: &MetadataResponse) -> Result<&MetadataResponseTopic> {
    ensure!(
        resp.topics.len() == 1,
        "expected one topic, got {:?}",
        resp.topics
    );
    Ok(&resp.topics[0])
}

#[test]
fn every_version_decodes_and_carries_the_topic_id() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    let topic = create_topic(&mut c, "described", 3, &[])?;
    for v in 0..=12 {
        let resp = metadata(&mut c, v, "described", false)?;
        ensure!(resp.brokers.len() == 1, "v{v} brokers: {:?}", resp.brokers);
        let b = &resp.brokers[0];
        ensure!(
            b.port == i32::from(server.addr.port()) && b.host.as_str() == "127.0.0.1",
            "v{v} broker {b:?}"
        );
        let t = only_topic(&resp)?;
        ensure!(t.error_code == 0, "v{v}: topic error {}", t.error_code);
        ensure!(
            t.name.as_ref().map(|n| n.0.as_str()) == Some("described"),
            "v{v}: name {:?}",
            t.name
        );
        let mut ids: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
        ids.sort_unstable();
        ensure!(ids == vec![0, 1, 2], "v{v}: partitions {ids:?}");
        for p in &t.partitions {
            ensure!(
                p.error_code == 0 && p.leader_id == b.node_id,
                "v{v}: partition {p:?}"
            );
        }
        if v >= 10 {
            ensure!(
                t.topic_id == topic.id,
                "v{v}: topic id {} != CreateTopics' {}",
                t.topic_id,
                topic.id
            );
        }
    }
    // v1+ with an empty list: no topics at all.
    let none = c.call(1, &MetadataRequest::default().with_topics(Some(vec![])))?;
    ensure!(
        none.topics.is_empty(),
        "v1 empty topic list answered {:?}",
        none.topics
    );
    // Creating it again is refused.
    let again = create_topic(&mut c, "described", 3, &[]);
    ensure!(
        again
            .as_ref()
            .is_err_and(|e| e.to_string().contains(&format!(
                "error {}",
                code(ResponseError::TopicAlreadyExists)
            ))),
        "duplicate CreateTopics: {again:?}"
    );
    // All topics: v0 with an empty list, v1+ with null.
    let all = c.call(0, &MetadataRequest::default().with_topics(Some(vec![])))?;
    ensure!(all.topics.len() == 1, "v0 all topics: {:?}", all.topics);
    let all = c.call(12, &MetadataRequest::default().with_topics(None))?;
    ensure!(
        all.topics.len() == 1 && all.topics[0].topic_id == topic.id,
        "v12 all topics: {:?}",
        all.topics
    );
    Ok(())
}

#[test]
fn unknown_topics_are_not_created_by_default() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    for v in [1i16, 4, 9, 12] {
        let resp = metadata(&mut c, v, "ghost", true)?;
        let t = only_topic(&resp)?;
        ensure!(
            t.error_code == code(ResponseError::UnknownTopicOrPartition),
            "v{v}: error {}",
            t.error_code
        );
        ensure!(
            t.partitions.is_empty(),
            "v{v}: partitions of an unknown topic"
        );
    }
    Ok(())
}

#[test]
fn auto_create_uses_the_default_partitions() -> Result<()> {
    let server = Server::start(&["--auto-create-topics", "--default-partitions", "3"])?;
    let mut c = server.client()?;
    // Kafka may answer LEADER_NOT_AVAILABLE while the topic is being created: ask again.
    let mut last = None;
    for _ in 0..50 {
        let resp = metadata(&mut c, 9, "auto", true)?;
        let t = only_topic(&resp)?.clone();
        if t.error_code == 0 {
            last = Some(t);
            break;
        }
        ensure!(
            t.error_code == code(ResponseError::LeaderNotAvailable),
            "auto-create: error {}",
            t.error_code
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let t = last.context("auto-created topic never became available")?;
    ensure!(
        t.partitions.len() == 3,
        "auto-created with {} partitions",
        t.partitions.len()
    );
    // Version 4+ may opt out: that topic is not created.
    let resp = metadata(&mut c, 9, "not-auto", false)?;
    ensure!(
        only_topic(&resp)?.error_code == code(ResponseError::UnknownTopicOrPartition),
        "allow_auto_topic_creation=false ignored"
    );
    let resp = metadata(&mut c, 9, "not-auto", false)?;
    ensure!(
        only_topic(&resp)?.error_code == code(ResponseError::UnknownTopicOrPartition),
        "topic created anyway"
    );
    // The auto-created topic takes records.
    ensure!(produce_ok(&mut c, "auto", 2, simple_batch(None, 1)?)? == 0);
    Ok(())
}

/// A deleted topic is gone by name and by id; recreating the name gives a new id and an
/// empty log.
#[test]
fn delete_and_recreate_changes_the_topic_id() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    let old = create_topic(&mut c, "phoenix", 1, &[])?;
    produce_ok(&mut c, "phoenix", 0, simple_batch(None, 4)?)?;
    for (version, by_id) in [(4i16, false), (6, true)] {
        let t = create_topic(&mut c, &format!("doomed-v{version}"), 1, &[])?;
        let req = if by_id {
            DeleteTopicsRequest::default()
                .with_topics(vec![DeleteTopicState::default().with_topic_id(t.id)])
        } else {
            DeleteTopicsRequest::default().with_topic_names(vec![topic_name(&t.name)])
        };
        let resp = c.call(version, &req.with_timeout_ms(10_000))?;
        ensure!(
            resp.responses.len() == 1 && resp.responses[0].error_code == 0,
            "DeleteTopics v{version}: {resp:?}"
        );
        let t2 = only_topic(&metadata(&mut c, 9, &t.name, false)?)?.clone();
        ensure!(
            t2.error_code == code(ResponseError::UnknownTopicOrPartition),
            "v{version} deleted topic: {t2:?}"
        );
    }
    let resp = c.call(
        6,
        &DeleteTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![
                DeleteTopicState::default().with_name(Some(topic_name("phoenix")))
            ]),
    )?;
    ensure!(
        resp.responses[0].error_code == 0 && resp.responses[0].topic_id == old.id,
        "DeleteTopics: {resp:?}"
    );
    let again = c.call(
        6,
        &DeleteTopicsRequest::default()
            .with_topic_names(vec![])
            .with_topics(vec![DeleteTopicState::default().with_topic_id(old.id)]),
    )?;
    ensure!(
        again.responses[0].error_code == code(ResponseError::UnknownTopicId),
        "second delete: {again:?}"
    );
    let new = create_topic(&mut c, "phoenix", 1, &[])?;
    ensure!(new.id != old.id, "recreated topic kept its id");
    let data = fetch(&mut c, 13, &new, 0, 0)?;
    ensure!(
        data.error_code == 0 && data.high_watermark == 0,
        "recreated topic is not empty: {data:?}"
    );
    let resp = c.call(13, &fetch_request(13, &old, &[(0, 0)]))?;
    let p = &resp.responses[0].partitions[0];
    ensure!(
        p.error_code == code(ResponseError::UnknownTopicId),
        "fetch by the deleted id: {}",
        p.error_code
    );
    ensure!(
        produce_ok(&mut c, "phoenix", 0, simple_batch(None, 1)?)? == 0,
        "recreated topic starts at 0"
    );
    Ok(())
}
