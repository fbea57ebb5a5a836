//! Idempotent producers: duplicates answered with their original offsets, gaps and stale
//! epochs refused, and the producer state surviving a SIGKILL.

use crate::support::*;
use anyhow::{ensure, Result};
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::ResponseError;

const TOPIC: &str = "idem";

/// Produces an idempotent batch of `n` records (v9) and returns (error, base offset).
fn send(c: &mut Client, idem: Idem, n: usize) -> Result<(i16, i64)> {
    let p = produce(c, 9, -1, TOPIC, 0, simple_batch(Some(idem), n)?)?;
    Ok((p.error_code, p.base_offset))
}

#[test]
fn duplicates_gaps_epochs_and_restart() -> Result<()> {
    let mut server = Server::start(&[])?;
    let mut c = server.client()?;
    create_topic(&mut c, TOPIC, 1, &[])?;
    let init = c.call(
        4,
        &InitProducerIdRequest::default().with_transaction_timeout_ms(60_000),
    )?;
    ensure!(
        init.error_code == 0,
        "InitProducerId error {}",
        init.error_code
    );
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    ensure!(pid >= 0 && epoch >= 0, "InitProducerId gave {pid}/{epoch}");
    let other = c.call(
        4,
        &InitProducerIdRequest::default().with_transaction_timeout_ms(60_000),
    )?;
    ensure!(
        other.producer_id.0 != pid,
        "two InitProducerId calls gave the same producer id {pid}"
    );

    ensure!(send(&mut c, (pid, epoch, 0), 5)? == (0, 0), "first batch");
    ensure!(
        send(&mut c, (pid, epoch, 0), 5)? == (0, 0),
        "retried first batch must be answered as a duplicate"
    );
    ensure!(log_end(&mut c, TOPIC, 0)? == 5, "a duplicate was appended");
    ensure!(send(&mut c, (pid, epoch, 5), 5)? == (0, 5), "second batch");
    let (err, _) = send(&mut c, (pid, epoch, 20), 5)?;
    ensure!(
        err == code(ResponseError::OutOfOrderSequenceNumber),
        "gap: error {err}"
    );
    ensure!(
        send(&mut c, (pid, epoch, 0), 5)? == (0, 0),
        "an older batch still in the window is a duplicate"
    );
    ensure!(log_end(&mut c, TOPIC, 0)? == 10);

    // A newer epoch starts again at sequence 0; the old epoch is then fenced.
    ensure!(
        send(&mut c, (pid, epoch + 1, 0), 5)? == (0, 10),
        "new epoch"
    );
    let (err, _) = send(&mut c, (pid, epoch, 10), 5)?;
    ensure!(
        err == code(ResponseError::InvalidProducerEpoch),
        "stale epoch: error {err}"
    );
    ensure!(log_end(&mut c, TOPIC, 0)? == 15);

    // Producer state is durable: after SIGKILL the retry is still a duplicate.
    drop(c);
    server.kill_and_restart()?;
    let mut c = server.client()?;
    ensure!(
        log_end(&mut c, TOPIC, 0)? == 15,
        "acknowledged records lost by the restart"
    );
    ensure!(
        send(&mut c, (pid, epoch + 1, 0), 5)? == (0, 10),
        "retry after restart must be a duplicate"
    );
    ensure!(
        log_end(&mut c, TOPIC, 0)? == 15,
        "retry after restart was appended again"
    );
    let (err, _) = send(&mut c, (pid, epoch, 10), 5)?;
    ensure!(
        err == code(ResponseError::InvalidProducerEpoch),
        "stale epoch after restart: error {err}"
    );
    let (err, _) = send(&mut c, (pid, epoch + 1, 9), 5)?;
    ensure!(
        err == code(ResponseError::OutOfOrderSequenceNumber),
        "gap after restart: error {err}"
    );
    ensure!(
        send(&mut c, (pid, epoch + 1, 5), 5)? == (0, 15),
        "next batch after restart"
    );
    Ok(())
}
