//! Produce: validate batches, check idempotent sequences, assign offsets, hand the bytes to
//! the storage service, and answer once they are durable and indexed.
//!
//! Offsets are assigned while the request is read (in arrival order, under the partition's
//! lock, never across an await); the answer waits for the flush that commits them. If an
//! append fails, the partition forgets every offset and sequence past its durable end (its
//! *generation* moves on) so the client's retry lands exactly where the failed batch would
//! have: nothing acknowledged is lost and nothing is written twice.

use super::{code, message, Pending};
use crate::batch::{self, BatchError, BatchHeader};
use crate::broker::{LogState, PartitionLog};
use crate::Gateway;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ResponseKind, TopicName};
use kafka_protocol::ResponseError;
use std::sync::Arc;
use std::time::Duration;
use weir_common::ProducerBatchState;
use weir_storage::{AppendBatch, AppendTicket, StorageError};

/// One partition's answer, or what it waits for.
enum Outcome {
    Done(PartitionProduceResponse),
    Appended {
        index: i32,
        ticket: AppendTicket,
        log: Arc<PartitionLog>,
        generation: u64,
        base_offset: i64,
        append_time: i64,
    },
    /// A retry of a batch still being flushed: answer once it is durable.
    DuplicateInFlight {
        index: i32,
        log: Arc<PartitionLog>,
        generation: u64,
        base_offset: i64,
        last_offset: i64,
        timeout: Duration,
    },
}

fn error_response(index: i32, e: ResponseError, msg: Option<String>) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code(e))
        .with_base_offset(-1)
        .with_error_message(msg.and_then(message))
}

fn batch_error(e: &BatchError) -> ResponseError {
    match e {
        BatchError::Corrupt | BatchError::Crc => ResponseError::CorruptMessage,
        BatchError::Magic(_) => ResponseError::UnsupportedForMessageFormat,
        BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
        BatchError::Invalid(_) => ResponseError::InvalidRecord,
    }
}

/// Starts a produce request; the returned future resolves to its response.
pub async fn begin(gw: &Arc<Gateway>, version: i16, req: ProduceRequest) -> Pending {
    let acks = req.acks;
    let timeout =
        Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0).clamp(1, 300_000));
    let mut topics: Vec<(TopicName, Vec<Outcome>)> = Vec::new();
    for t in req.topic_data {
        let topic = gw.registry.topic(&t.name.0);
        let mut outcomes = Vec::new();
        for p in t.partition_data {
            let index = p.index;
            if !matches!(acks, -1..=1) {
                outcomes.push(Outcome::Done(error_response(
                    index,
                    ResponseError::InvalidRequiredAcks,
                    None,
                )));
                continue;
            }
            let Some((topic, log)) = topic
                .as_ref()
                .and_then(|t| t.partition(index).map(|l| (t, l)))
            else {
                outcomes.push(Outcome::Done(error_response(
                    index,
                    ResponseError::UnknownTopicOrPartition,
                    None,
                )));
                continue;
            };
            let records = p.records.unwrap_or_default();
            let settings = topic.settings();
            outcomes.push(append(gw, &log, records, &settings, timeout, version).await);
        }
        topics.push((t.name, outcomes));
    }
    // The answer comes by the request's timeout at the latest (never less than
    // MIN_PRODUCE_WAIT): a storage that stalls gives REQUEST_TIMED_OUT, not a hung request.
    // acks=0 has nobody to answer and waits for the outcome itself.
    let deadline = (acks != 0).then(|| tokio::time::Instant::now() + timeout.max(MIN_PRODUCE_WAIT));
    let completion = complete(gw.clone(), version, topics, deadline);
    if acks == 0 {
        // No answer is sent; failures still reset the partitions.
        tokio::spawn(completion);
        Box::pin(async { None })
    } else {
        Box::pin(async move { Some(ResponseKind::Produce(completion.await)) })
    }
}

async fn append(
    gw: &Gateway,
    log: &Arc<PartitionLog>,
    records: Bytes,
    settings: &crate::config::TopicSettings,
    timeout: Duration,
    version: i16,
) -> Outcome {
    let index = log.tp.partition;
    let batches = match batch::validate(&records, settings.max_message_bytes) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(tp = %log.tp, error = %e, "produce refused");
            let msg = (version >= 8).then(|| e.to_string());
            return Outcome::Done(error_response(index, batch_error(&e), msg));
        }
    };
    let reservation = match gw.storage.reserve(records.len()).await {
        Ok(r) => r,
        Err(_) => {
            return Outcome::Done(error_response(
                index,
                ResponseError::KafkaStorageError,
                None,
            ))
        }
    };
    // The one copy on the produce path: the request buffer is shared, offsets are patched here.
    let mut data = BytesMut::from(&records[..]);
    let now = weir_common::now_ms();
    let mut state = log.lock();
    if state.deleted {
        return Outcome::Done(error_response(
            index,
            ResponseError::UnknownTopicOrPartition,
            None,
        ));
    }
    if !state.led {
        // Led elsewhere, or moving: the client refreshes its metadata and follows.
        return Outcome::Done(error_response(
            index,
            ResponseError::NotLeaderOrFollower,
            None,
        ));
    }
    log.count_in(records.len());
    let mut producer: Option<ProducerBatchState> = None;
    let mut next = state.next_offset;
    for (i, b) in batches.iter().enumerate() {
        let h = b.header;
        if h.is_idempotent() {
            match check_sequence(&state, producer.as_ref(), &h) {
                Sequence::Append => {}
                Sequence::Duplicate(prev) if i == 0 && batches.len() == 1 => {
                    if prev.last_offset < state.high_watermark {
                        return Outcome::Done(
                            PartitionProduceResponse::default()
                                .with_index(index)
                                .with_base_offset(prev.base_offset)
                                .with_log_start_offset(state.log_start),
                        );
                    }
                    return Outcome::DuplicateInFlight {
                        index,
                        log: log.clone(),
                        generation: state.generation,
                        base_offset: prev.base_offset,
                        last_offset: prev.last_offset,
                        timeout,
                    };
                }
                Sequence::Duplicate(_) => {
                    return Outcome::Done(error_response(
                        index,
                        ResponseError::DuplicateSequenceNumber,
                        None,
                    ))
                }
                Sequence::Refuse(e) => {
                    tracing::debug!(tp = %log.tp, producer = h.producer_id, epoch = h.producer_epoch,
                        sequence = h.base_sequence, error = ?e, "produce sequence refused");
                    return Outcome::Done(error_response(index, e, None));
                }
            }
            producer = Some(ProducerBatchState {
                producer_id: h.producer_id,
                producer_epoch: h.producer_epoch,
                first_sequence: h.base_sequence,
                last_sequence: h.last_sequence(),
                base_offset: next,
                last_offset: next + i64::from(h.last_offset_delta),
            });
        }
        batch::assign(&mut data, b.start, next, state.leader_epoch);
        if settings.log_append_time {
            batch::set_log_append_time(&mut data, b.start, h.size, now);
        }
        next += i64::from(h.last_offset_delta) + 1;
    }
    let max_timestamp = if settings.log_append_time {
        now
    } else {
        batches
            .iter()
            .map(|b| b.header.max_timestamp)
            .max()
            .unwrap_or(-1)
    };
    let base_offset = state.next_offset;
    let append = AppendBatch {
        tp: log.tp,
        leader_epoch: state.leader_epoch,
        base_offset,
        last_offset: next - 1,
        max_timestamp,
        data: data.freeze(),
        batches: batches.len() as u32,
        producer,
    };
    match gw.storage.submit(append, reservation) {
        Ok(ticket) => {
            state.next_offset = next;
            if let Some(p) = producer {
                let entry = state.producers.entry(p.producer_id).or_default();
                if entry.epoch != p.producer_epoch {
                    entry.epoch = p.producer_epoch;
                    entry.batches.clear();
                }
                entry.batches.push_back(p);
                while entry.batches.len() > weir_metadata_api::PRODUCER_BATCHES_KEPT {
                    entry.batches.pop_front();
                }
            }
            Outcome::Appended {
                index,
                ticket,
                log: log.clone(),
                generation: state.generation,
                base_offset,
                append_time: if settings.log_append_time { now } else { -1 },
            }
        }
        Err(e) => {
            tracing::warn!(tp = %log.tp, error = %e, "append refused by storage");
            Outcome::Done(error_response(
                index,
                ResponseError::KafkaStorageError,
                None,
            ))
        }
    }
}

enum Sequence {
    Append,
    Duplicate(ProducerBatchState),
    Refuse(ResponseError),
}

/// Kafka's idempotent-producer rules for one batch. `pending` is a batch of the same
/// request already accepted above this one.
fn check_sequence(
    state: &LogState,
    pending: Option<&ProducerBatchState>,
    h: &BatchHeader,
) -> Sequence {
    let Some(ps) = state.producers.get(&h.producer_id) else {
        return match pending {
            Some(p) if h.base_sequence != next_sequence(p.last_sequence) => {
                Sequence::Refuse(ResponseError::OutOfOrderSequenceNumber)
            }
            // A producer this partition has no state for may start at any sequence (as Kafka).
            _ => Sequence::Append,
        };
    };
    if h.producer_epoch < ps.epoch {
        return Sequence::Refuse(ResponseError::InvalidProducerEpoch);
    }
    if h.producer_epoch > ps.epoch {
        return if h.base_sequence == 0 || pending.is_some() {
            Sequence::Append
        } else {
            Sequence::Refuse(ResponseError::OutOfOrderSequenceNumber)
        };
    }
    if let Some(prev) = ps
        .batches
        .iter()
        .find(|b| b.first_sequence == h.base_sequence && b.last_sequence == h.last_sequence())
    {
        return Sequence::Duplicate(*prev);
    }
    let last = pending
        .map(|p| p.last_sequence)
        .or_else(|| ps.batches.back().map(|b| b.last_sequence));
    match last {
        Some(last) if h.base_sequence != next_sequence(last) => {
            Sequence::Refuse(ResponseError::OutOfOrderSequenceNumber)
        }
        _ => Sequence::Append,
    }
}

fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

/// The least time a produce waits for durability, whatever `timeout_ms` the client sent
/// (a client sending 0 means "no preference", not "fail at once").
const MIN_PRODUCE_WAIT: Duration = Duration::from_secs(1);

/// Waits for every partition's append (until `deadline`, if any) and builds the response.
async fn complete(
    gw: Arc<Gateway>,
    version: i16,
    topics: Vec<(TopicName, Vec<Outcome>)>,
    deadline: Option<tokio::time::Instant>,
) -> ProduceResponse {
    let mut responses = Vec::with_capacity(topics.len());
    for (name, outcomes) in topics {
        let mut partitions = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let resp = match outcome {
                Outcome::Done(r) => r,
                Outcome::Appended {
                    index,
                    ticket,
                    log,
                    generation,
                    base_offset,
                    append_time,
                } => {
                    let mut ticket = ticket;
                    let waited = match deadline {
                        Some(deadline) => tokio::time::timeout_at(deadline, &mut ticket).await,
                        None => Ok((&mut ticket).await),
                    };
                    let Ok(result) = waited else {
                        // Timed out: the append goes on. Its outcome is still watched, so a
                        // failure resets the partition as it would have; an idempotent
                        // retry is answered as a duplicate once the append is durable.
                        let gw = gw.clone();
                        let log = log.clone();
                        tokio::spawn(async move {
                            if let Err(e) = ticket.await.unwrap_or(Err(StorageError::ShuttingDown))
                            {
                                append_failed(&gw, &log, generation, &e);
                            }
                        });
                        partitions.push(error_response(
                            index,
                            ResponseError::RequestTimedOut,
                            (version >= 8).then(|| {
                                "the append was not durable within the request's timeout"
                                    .to_string()
                            }),
                        ));
                        continue;
                    };
                    let result = result.unwrap_or(Err(StorageError::ShuttingDown));
                    match result {
                        Ok(_) => PartitionProduceResponse::default()
                            .with_index(index)
                            .with_base_offset(base_offset)
                            .with_log_append_time_ms(append_time)
                            .with_log_start_offset(log.lock().log_start),
                        Err(e) => {
                            let code = append_failed(&gw, &log, generation, &e);
                            error_response(index, code, (version >= 8).then(|| e.to_string()))
                        }
                    }
                }
                Outcome::DuplicateInFlight {
                    index,
                    log,
                    generation,
                    base_offset,
                    last_offset,
                    timeout,
                } => {
                    wait_durable(
                        &gw,
                        &log,
                        generation,
                        base_offset,
                        last_offset,
                        timeout,
                        index,
                    )
                    .await
                }
            };
            partitions.push(resp);
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(partitions),
        );
    }
    ProduceResponse::default().with_responses(responses)
}

/// Handles a failed append: the first failure of a generation resets the partition to its
/// durable end. Returns the error code for the client.
fn append_failed(
    gw: &Gateway,
    log: &Arc<PartitionLog>,
    generation: u64,
    e: &StorageError,
) -> ResponseError {
    use weir_common::{CommitRefused, ErrorKind};
    if matches!(e, StorageError::Refused(CommitRefused::UnknownPartition)) {
        return ResponseError::UnknownTopicOrPartition;
    }
    {
        let mut state = log.lock();
        if state.generation == generation && !state.deleted {
            tracing::warn!(tp = %log.tp, error = %e, durable_end = state.high_watermark,
                "append failed; partition reset to its durable end");
            gw.storage.discard(log.tp);
            state.generation += 1;
            log.reset_to_durable(&mut state);
            // The failed commit may have landed after all (its answer was lost): re-read the
            // durable end from the metadata store.
            tokio::spawn(resync(
                gw.meta.clone(),
                gw.storage.clone(),
                gw.registry.clone(),
                log.clone(),
                state.generation,
            ));
        }
    }
    match e.kind() {
        ErrorKind::Fenced => {
            // Another gateway took the partition: stop appending here at once.
            log.lock().led = false;
            ResponseError::NotLeaderOrFollower
        }
        _ => ResponseError::KafkaStorageError,
    }
}

/// Re-reads a partition's durable end and producer states after a failed append, and adopts
/// them if a commit this gateway thought failed did land (same leader epoch, a longer log).
/// Appends in flight are failed (retriable) so that no offset is handed out twice.
async fn resync(
    meta: Arc<dyn weir_metadata_api::MetadataStore>,
    storage: Arc<dyn weir_storage::Storage>,
    registry: Arc<crate::broker::Registry>,
    log: Arc<PartitionLog>,
    generation: u64,
) {
    let mut delay = Duration::from_millis(50);
    for _ in 0..8 {
        match meta.partition_tail(log.tp).await {
            Ok(Some(tail)) => {
                let mut state = log.lock();
                if state.generation != generation
                    || state.deleted
                    || tail.state.leader_epoch != state.leader_epoch
                    || tail.state.next_offset <= state.high_watermark
                {
                    return;
                }
                tracing::warn!(tp = %log.tp, durable_end = tail.state.next_offset,
                    believed = state.high_watermark,
                    "a commit reported as failed had landed; adopting the durable end");
                storage.discard(log.tp);
                state.generation += 1;
                state.high_watermark = tail.state.next_offset;
                state.next_offset = tail.state.next_offset;
                state.committed_producers = crate::broker::producers_from(&tail.producers);
                state.producers = state.committed_producers.clone();
                // Entries of the landed commit are only in the store: read the index there.
                state.recent.clear();
                drop(state);
                registry.notify();
                return;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(tp = %log.tp, error = %e, "re-reading the partition failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn wait_durable(
    gw: &Gateway,
    log: &PartitionLog,
    generation: u64,
    base_offset: i64,
    last_offset: i64,
    timeout: Duration,
    index: i32,
) -> PartitionProduceResponse {
    let mut changes = gw.registry.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        {
            let state = log.lock();
            if state.high_watermark > last_offset {
                return PartitionProduceResponse::default()
                    .with_index(index)
                    .with_base_offset(base_offset)
                    .with_log_start_offset(state.log_start);
            }
            if state.generation != generation || state.deleted {
                return error_response(index, ResponseError::KafkaStorageError, None);
            }
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            _ => return error_response(index, ResponseError::RequestTimedOut, None),
        }
    }
}
