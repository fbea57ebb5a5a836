//! Fetch long polls and incremental fetch sessions (KIP-227).

use crate::support::*;
use anyhow::{ensure, Context, Result};
use kafka_protocol::messages::fetch_request::{FetchRequest, ForgottenTopic};
use kafka_protocol::messages::fetch_response::FetchResponse;
use kafka_protocol::ResponseError;
use std::time::{Duration, Instant};

#[test]
fn long_poll_wakes_on_produce_and_times_out_without() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    let topic = create_topic(&mut c, "poll", 1, &[])?;
    produce_ok(&mut c, "poll", 0, simple_batch(None, 1)?)?;

    // Woken by a produce 300 ms later on another connection.
    let addr = server.addr;
    let producer = std::thread::spawn(move || -> Result<(i64, Instant)> {
        std::thread::sleep(Duration::from_millis(300));
        let mut p = Client::connect(addr)?;
        let offset = produce_ok(&mut p, "poll", 0, batch(None, &[("late", "arrival", T0)])?)?;
        Ok((offset, Instant::now()))
    });
    let req = fetch_request(11, &topic, &[(0, 1)])
        .with_max_wait_ms(5000)
        .with_min_bytes(1);
    let start = Instant::now();
    let resp = c.call(11, &req)?;
    let answered = Instant::now();
    let (offset, acked) = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    ensure!(offset == 1);
    // Woken by the commit: about when the producer was acknowledged, long before max_wait
    // (the ack itself may be slow on a loaded machine; that is not the fetch's doing).
    let after_ack = answered.saturating_duration_since(acked);
    ensure!(
        after_ack < Duration::from_millis(500),
        "fetch answered {after_ack:?} after the produce was acknowledged"
    );
    assert_elapsed(
        "long poll woken by a produce",
        start.elapsed(),
        Duration::from_millis(250)..Duration::from_millis(4000),
    )?;
    let data = &resp.responses[0].partitions[0];
    let records = offsets_keys_values(&decode_records(&data.records)?, 1);
    ensure!(
        records == vec![(1, "late".to_string(), "arrival".to_string())],
        "woken fetch returned {records:?}"
    );

    // Nothing produced: it answers after max_wait, empty.
    for v in [4i16, 11, 16] {
        let req = fetch_request(v, &topic, &[(0, 2)])
            .with_max_wait_ms(1000)
            .with_min_bytes(1);
        let start = Instant::now();
        let resp = c.call(v, &req)?;
        assert_elapsed(
            &format!("v{v} idle long poll"),
            start.elapsed(),
            Duration::from_millis(900)..Duration::from_millis(2000),
        )?;
        let data = &resp.responses[0].partitions[0];
        ensure!(
            data.error_code == 0 && decode_records(&data.records)?.is_empty(),
            "v{v} idle poll: {data:?}"
        );
    }
    Ok(())
}

/// (partition, error, record count) of every partition in a fetch response.
fn partitions(resp: &FetchResponse) -> Result<Vec<(i32, i16, usize)>> {
    let mut out = Vec::new();
    for t in &resp.responses {
        for p in &t.partitions {
            out.push((
                p.partition_index,
                p.error_code,
                decode_records(&p.records)?.len(),
            ));
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn session_fetch(c: &mut Client, v: i16, req: FetchRequest) -> Result<FetchResponse> {
    c.call(v, &req)
}

#[test]
fn incremental_fetch_sessions() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    for v in [7i16, 12, 13, 16] {
        let name = format!("sessions-v{v}");
        let topic = create_topic(&mut c, &name, 2, &[])?;
        // Epoch 0 opens a session with both (empty) partitions: all of them are answered.
        let full = fetch_request(v, &topic, &[(0, 0), (1, 0)])
            .with_session_id(0)
            .with_session_epoch(0);
        let resp = session_fetch(&mut c, v, full)?;
        ensure!(
            resp.error_code == 0,
            "v{v} epoch 0: error {}",
            resp.error_code
        );
        let id = resp.session_id;
        ensure!(id != 0, "v{v}: no session id");
        ensure!(
            partitions(&resp)? == vec![(0, 0, 0), (1, 0, 0)],
            "v{v} epoch 0: {:?}",
            partitions(&resp)?
        );

        // Epoch 1, nothing listed, nothing new: no partitions at all.
        let incremental = |epoch: i32| {
            let mut r = fetch_request(v, &topic, &[])
                .with_session_id(id)
                .with_session_epoch(epoch)
                .with_topics(vec![]);
            r.max_wait_ms = 0;
            r
        };
        let resp = session_fetch(&mut c, v, incremental(1))?;
        ensure!(
            resp.error_code == 0 && resp.session_id == id,
            "v{v} epoch 1: {} {}",
            resp.error_code,
            resp.session_id
        );
        ensure!(
            partitions(&resp)?.is_empty(),
            "v{v} epoch 1 sent {:?}",
            partitions(&resp)?
        );

        // Data in partition 1 only: epoch 2 answers just that partition.
        produce_ok(&mut c, &name, 1, simple_batch(None, 2)?)?;
        let resp = session_fetch(&mut c, v, incremental(2))?;
        ensure!(
            resp.error_code == 0,
            "v{v} epoch 2: error {}",
            resp.error_code
        );
        ensure!(
            partitions(&resp)? == vec![(1, 0, 2)],
            "v{v} epoch 2: {:?}",
            partitions(&resp)?
        );

        // A wrong epoch and an unknown session are top-level errors.
        let resp = session_fetch(&mut c, v, incremental(7))?;
        ensure!(
            resp.error_code == code(ResponseError::InvalidFetchSessionEpoch),
            "v{v} wrong epoch: {}",
            resp.error_code
        );
        ensure!(
            resp.responses.is_empty(),
            "v{v} wrong epoch carried partitions"
        );
        let unknown = fetch_request(v, &topic, &[])
            .with_session_id(id.wrapping_add(1000))
            .with_session_epoch(1);
        let resp = session_fetch(&mut c, v, unknown)?;
        ensure!(
            resp.error_code == code(ResponseError::FetchSessionIdNotFound),
            "v{v} unknown session: {}",
            resp.error_code
        );
        // The errors did not consume the session: epoch 3 works. The client moves partition 1
        // past its records; nothing is new, so nothing is sent.
        let mut moved = fetch_request(v, &topic, &[(1, 2)])
            .with_session_id(id)
            .with_session_epoch(3);
        moved.max_wait_ms = 0;
        let resp = session_fetch(&mut c, v, moved)?;
        ensure!(
            resp.error_code == 0,
            "v{v} epoch 3 after errors: {}",
            resp.error_code
        );
        ensure!(
            partitions(&resp)?.is_empty(),
            "v{v} epoch 3 sent {:?}",
            partitions(&resp)?
        );

        // Partition 1 forgotten: new data in both, only partition 0 is answered.
        produce_ok(&mut c, &name, 0, simple_batch(None, 3)?)?;
        produce_ok(&mut c, &name, 1, simple_batch(None, 1)?)?;
        let mut forgotten = ForgottenTopic::default().with_partitions(vec![1]);
        if v >= 13 {
            forgotten.topic_id = topic.id;
        } else {
            forgotten.topic = topic_name(&name);
        }
        let forget = incremental(4).with_forgotten_topics_data(vec![forgotten]);
        let resp = session_fetch(&mut c, v, forget)?;
        ensure!(resp.error_code == 0, "v{v} epoch 4: {}", resp.error_code);
        ensure!(
            partitions(&resp)? == vec![(0, 0, 3)],
            "v{v} epoch 4 (forgot 1): {:?}",
            partitions(&resp)?
        );
        // Epoch -1 closes the session; it is then unknown.
        let close = incremental(-1);
        ensure!(
            session_fetch(&mut c, v, close)?.error_code == 0,
            "v{v} closing the session"
        );
        let resp = session_fetch(&mut c, v, incremental(5))?;
        ensure!(
            resp.error_code == code(ResponseError::FetchSessionIdNotFound),
            "v{v} closed session still answered: {}",
            resp.error_code
        );
    }
    Ok(())
}

#[test]
fn fetch_by_unknown_topic_id() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    let known = create_topic(&mut c, "known", 1, &[])?;
    let unknown = Topic {
        name: String::new(),
        id: uuid::Uuid::from_u128(known.id.as_u128() ^ 0xdead_beef),
    };
    for v in [13i16, 16] {
        let resp = c.call(v, &fetch_request(v, &unknown, &[(0, 0)]))?;
        let p = resp
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .context("no partition answered")?;
        ensure!(
            resp.error_code == code(ResponseError::UnknownTopicId)
                || p.error_code == code(ResponseError::UnknownTopicId),
            "v{v} unknown topic id: top-level {}, partition {}",
            resp.error_code,
            p.error_code
        );
        ensure!(
            resp.responses[0].topic_id == unknown.id,
            "v{v}: answered for another topic id"
        );
        // And by a known id it works.
        let data = fetch(&mut c, v, &known, 0, 0)?;
        ensure!(data.error_code == 0, "v{v} known id: {}", data.error_code);
    }
    // Before v13 an unknown name is UNKNOWN_TOPIC_OR_PARTITION.
    let by_name = Topic {
        name: "nope".to_string(),
        id: known.id,
    };
    let data = fetch(&mut c, 12, &by_name, 0, 0)?;
    ensure!(
        data.error_code == code(ResponseError::UnknownTopicOrPartition),
        "v12 unknown name: {}",
        data.error_code
    );
    Ok(())
}
