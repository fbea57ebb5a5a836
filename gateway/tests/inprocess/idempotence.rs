//! The idempotent producer: a retried batch is answered as a duplicate (its first offsets, no
//! second copy), a batch after a sequence gap is refused.

use crate::support::{batch, create_topic, fetch, produce, records_of, TestGateway};
use anyhow::{ensure, Result};
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::ProducerId;
use kafka_protocol::ResponseError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_get_their_first_offsets_and_gaps_are_out_of_order() -> Result<()> {
    let gw = TestGateway::start().await?;
    let mut c = gw.client().await?;
    ensure!(create_topic(&mut c, "idem", 1).await?.error_code == 0);
    let init = c
        .call(
            4,
            &InitProducerIdRequest::default()
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        )
        .await?;
    assert_eq!(init.error_code, 0);
    assert!(init.producer_id.0 >= 0);
    assert_eq!(init.producer_epoch, 0);
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);

    let first = produce(&mut c, "idem", 0, batch(Some((pid, epoch, 0)), 3)?).await?;
    assert_eq!((first.error_code, first.base_offset), (0, 0));
    // The same batch again (a retry after a lost answer): success, the same offsets.
    let retry = produce(&mut c, "idem", 0, batch(Some((pid, epoch, 0)), 3)?).await?;
    assert_eq!((retry.error_code, retry.base_offset), (0, 0));
    // Sequence 5 after 0..=2: a gap.
    let gap = produce(&mut c, "idem", 0, batch(Some((pid, epoch, 5)), 1)?).await?;
    assert_eq!(
        gap.error_code,
        ResponseError::OutOfOrderSequenceNumber.code()
    );
    // The next sequence in order is appended after the first batch.
    let next = produce(&mut c, "idem", 0, batch(Some((pid, epoch, 3)), 2)?).await?;
    assert_eq!((next.error_code, next.base_offset), (0, 3));

    // The log holds each record once.
    let data = fetch(&mut c, "idem", 0, 0).await?;
    assert_eq!(data.high_watermark, 5);
    let offsets: Vec<i64> = records_of(&data.records)?.iter().map(|r| r.0).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4]);

    // An older epoch of the same producer is fenced.
    let bumped = c
        .call(
            4,
            &InitProducerIdRequest::default()
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch),
        )
        .await?;
    assert_eq!((bumped.producer_id.0, bumped.producer_epoch), (pid, 1));
    let fresh = produce(&mut c, "idem", 0, batch(Some((pid, 1, 0)), 1)?).await?;
    assert_eq!((fresh.error_code, fresh.base_offset), (0, 5));
    let stale = produce(&mut c, "idem", 0, batch(Some((pid, 0, 5)), 1)?).await?;
    assert_eq!(stale.error_code, ResponseError::InvalidProducerEpoch.code());
    gw.stop().await
}
