//! Produce then fetch: offsets assigned in order, the high watermark, ListOffsets.

use crate::support::{batch, create_topic, fetch, list_offset, produce, records_of, TestGateway};
use anyhow::{ensure, Result};
use kafka_protocol::ResponseError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_batches_get_consecutive_offsets_and_fetch_returns_them() -> Result<()> {
    let gw = TestGateway::start().await?;
    let mut c = gw.client().await?;
    let created = create_topic(&mut c, "orders", 1).await?;
    ensure!(created.error_code == 0, "create: {created:?}");

    let first = produce(&mut c, "orders", 0, batch(None, 3)?).await?;
    assert_eq!((first.error_code, first.base_offset), (0, 0));
    let second = produce(&mut c, "orders", 0, batch(None, 2)?).await?;
    assert_eq!((second.error_code, second.base_offset), (0, 3));

    let all = fetch(&mut c, "orders", 0, 0).await?;
    assert_eq!(all.error_code, 0);
    assert_eq!(all.high_watermark, 5);
    assert_eq!(all.log_start_offset, 0);
    let records = records_of(&all.records)?;
    let expected: Vec<(i64, String, String)> = [(0, 0), (1, 1), (2, 2), (3, 0), (4, 1)]
        .iter()
        .map(|&(offset, i)| (offset, format!("k{i}"), format!("v{i}")))
        .collect();
    assert_eq!(records, expected);

    // From the second batch on; at the end nothing; past the end out of range.
    let tail = fetch(&mut c, "orders", 0, 3).await?;
    let offsets: Vec<i64> = records_of(&tail.records)?.iter().map(|r| r.0).collect();
    assert_eq!(offsets, [3, 4]);
    let end = fetch(&mut c, "orders", 0, 5).await?;
    assert_eq!((end.error_code, end.high_watermark), (0, 5));
    assert!(records_of(&end.records)?.is_empty());
    let past = fetch(&mut c, "orders", 0, 6).await?;
    assert_eq!(past.error_code, ResponseError::OffsetOutOfRange.code());
    gw.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_earliest_and_latest_follow_the_log() -> Result<()> {
    let gw = TestGateway::start().await?;
    let mut c = gw.client().await?;
    ensure!(create_topic(&mut c, "events", 2).await?.error_code == 0);
    // Empty: earliest and latest are both 0.
    for ts in [-2, -1] {
        let p = list_offset(&mut c, "events", 1, ts).await?;
        assert_eq!((p.error_code, p.offset), (0, 0), "timestamp {ts}");
    }
    produce(&mut c, "events", 1, batch(None, 4)?).await?;
    produce(&mut c, "events", 1, batch(None, 1)?).await?;
    let earliest = list_offset(&mut c, "events", 1, -2).await?;
    assert_eq!((earliest.error_code, earliest.offset), (0, 0));
    let latest = list_offset(&mut c, "events", 1, -1).await?;
    assert_eq!((latest.error_code, latest.offset), (0, 5));
    // The other partition is untouched.
    assert_eq!(list_offset(&mut c, "events", 0, -1).await?.offset, 0);
    // A partition that does not exist.
    let missing = list_offset(&mut c, "events", 7, -1).await?;
    assert_eq!(
        missing.error_code,
        ResponseError::UnknownTopicOrPartition.code()
    );
    gw.stop().await
}
