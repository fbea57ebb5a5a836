//! Metadata: this gateway as the only broker, auto-created topics.

use crate::support::{topic_name, TestGateway};
use anyhow::Result;
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::ResponseError;

fn metadata_for(name: &str, allow_create: bool) -> MetadataRequest {
    MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(name)))
        ]))
        .with_allow_auto_topic_creation(allow_create)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_auto_creates_a_topic_with_the_default_partitions() -> Result<()> {
    let gw = TestGateway::start().await?;
    let mut c = gw.client().await?;
    let resp = c.call(12, &metadata_for("auto-made", true)).await?;
    assert_eq!(resp.brokers.len(), 1);
    let broker = &resp.brokers[0];
    assert_eq!(broker.port, i32::from(gw.addr.port()));
    assert_eq!(broker.host.as_str(), "127.0.0.1");
    assert_eq!(resp.topics.len(), 1);
    let t = &resp.topics[0];
    assert_eq!(t.error_code, 0, "{t:?}");
    assert_eq!(t.name.as_ref().map(|n| n.0.as_str()), Some("auto-made"));
    assert!(!t.topic_id.is_nil());
    // default_partitions is 2 in the harness; this gateway leads both.
    assert_eq!(t.partitions.len(), 2);
    for (i, p) in t.partitions.iter().enumerate() {
        assert_eq!(p.partition_index, i as i32);
        assert_eq!(p.error_code, 0);
        assert_eq!(p.leader_id, broker.node_id);
    }
    // The gateway's own registry has it too.
    let registered = gw.gateway.registry.topic("auto-made");
    assert!(registered.is_some_and(|t| t.partition_count() == 2));
    // Asked again, the same topic (same id), not a new one.
    let again = c.call(12, &metadata_for("auto-made", true)).await?;
    assert_eq!(again.topics[0].topic_id, t.topic_id);
    gw.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_without_auto_creation_reports_an_unknown_topic() -> Result<()> {
    let gw = TestGateway::start().await?;
    let mut c = gw.client().await?;
    let resp = c.call(12, &metadata_for("not-there", false)).await?;
    assert_eq!(
        resp.topics[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    // A gateway that does not auto-create refuses even when the client allows it.
    let strict = TestGateway::start_with(|config| config.auto_create_topics = false).await?;
    let mut c = strict.client().await?;
    let resp = c.call(12, &metadata_for("not-there", true)).await?;
    assert_eq!(
        resp.topics[0].error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    strict.stop().await?;
    gw.stop().await
}
