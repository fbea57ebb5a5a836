//! A malformed frame closes its own connection and nothing else.

use crate::support::{framed, header_bytes, TestGateway};
use anyhow::Result;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::ApiKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_closes_only_its_connection() -> Result<()> {
    let gw = TestGateway::start().await?;
    let mut bystander = gw.client().await?;
    let all_topics = MetadataRequest::default().with_topics(Some(vec![]));
    assert_eq!(bystander.call(12, &all_topics).await?.brokers.len(), 1);

    // AlterConfigs v0 claiming 0x26002600 resources in a 4-byte body: the guard refuses it
    // before kafka-protocol would try to allocate them.
    let header = header_bytes(ApiKey::AlterConfigs, 0, 1)?;
    let hostile = framed(&[&header, &[0x26, 0x00, 0x26, 0x00]]);
    // A body that ends inside its first field.
    let header = header_bytes(ApiKey::Metadata, 12, 1)?;
    let truncated = framed(&[&header, &[0x05]]);
    // A version Weir does not advertise, an API key nobody knows, a negative length.
    let header = header_bytes(ApiKey::Produce, 2, 1)?;
    let unsupported = framed(&[&header, &[]]);
    let unknown = framed(&[&[0x7f, 0x00, 0x00, 0x00, 0, 0, 0, 1, 0xff, 0xff]]);
    let negative = (-5i32).to_be_bytes().to_vec();
    for (what, frame) in [
        ("hostile count", &hostile[..]),
        ("truncated body", &truncated[..]),
        ("unsupported version", &unsupported[..]),
        ("unknown api key", &unknown[..]),
        ("negative length", &negative[..]),
    ] {
        let mut c = gw.client().await?;
        c.write_raw(frame).await?;
        if let Err(e) = c.expect_closed().await {
            panic!("{what}: {e:#}");
        }
        // The other connection goes on, and new ones are served.
        assert_eq!(
            bystander.call(12, &all_topics).await?.brokers.len(),
            1,
            "{what}"
        );
        let mut fresh = gw.client().await?;
        assert_eq!(
            fresh.call(12, &all_topics).await?.brokers.len(),
            1,
            "{what}"
        );
    }
    gw.stop().await
}
