//! CreateTopics: the errors a client relies on.

use crate::support::{create_topic, TestGateway};
use anyhow::Result;
use kafka_protocol::ResponseError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_refuses_duplicates_and_invalid_partition_counts() -> Result<()> {
    let gw = TestGateway::start().await?;
    let mut c = gw.client().await?;
    let created = create_topic(&mut c, "payments", 3).await?;
    assert_eq!(created.error_code, 0, "{created:?}");
    assert_eq!(created.num_partitions, 3);
    assert!(!created.topic_id.is_nil());

    let duplicate = create_topic(&mut c, "payments", 3).await?;
    assert_eq!(
        duplicate.error_code,
        ResponseError::TopicAlreadyExists.code()
    );
    assert!(duplicate.error_message.is_some());

    for partitions in [0, -5, 100_001] {
        let bad = create_topic(&mut c, "bad-count", partitions).await?;
        assert_eq!(
            bad.error_code,
            ResponseError::InvalidPartitions.code(),
            "{partitions} partitions"
        );
    }
    // -1: the gateway's default (2 in the harness).
    let defaulted = create_topic(&mut c, "defaulted", -1).await?;
    assert_eq!((defaulted.error_code, defaulted.num_partitions), (0, 2));

    let bad_name = create_topic(&mut c, "no/slashes", 1).await?;
    assert_eq!(
        bad_name.error_code,
        ResponseError::InvalidTopicException.code()
    );
    gw.stop().await
}
