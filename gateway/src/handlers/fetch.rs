//! Fetch: reads committed batches below the high watermark, long-polls on new commits
//! (woken by the commit signal, not a timer), honours partition and response byte limits,
//! and keeps incremental fetch sessions (KIP-227) as the Java client and librdkafka use them.

use super::code;
use crate::batch;
use crate::broker::{PartitionLog, Topic};
use crate::Gateway;
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_common::{IndexEntry, Offset, TopicId};

/// Index entries looked up per partition per fetch.
const ENTRIES_PER_READ: usize = 64;

/// One partition a fetch (or fetch session) asks for.
#[derive(Clone, Debug)]
struct Wanted {
    topic: Option<Arc<Topic>>,
    /// The name (fetch < v13) or id (v13+) the client used.
    name: String,
    topic_id: uuid::Uuid,
    partition: i32,
    fetch_offset: Offset,
    max_bytes: usize,
}

/// What a session remembers of a partition: the request and the last state sent.
#[derive(Clone, Debug)]
struct SessionPartition {
    wanted: Wanted,
    last_sent: Option<(Offset, Offset)>,
}

#[derive(Debug)]
struct Session {
    epoch: i32,
    partitions: Vec<SessionPartition>,
    last_used: Instant,
}

/// The fetch sessions of this gateway, bounded in number (least recently used evicted).
#[derive(Debug)]
pub struct FetchSessions {
    max: usize,
    inner: Mutex<(i32, HashMap<i32, Session>)>,
}

impl FetchSessions {
    pub fn new(max: usize) -> Self {
        FetchSessions {
            max,
            inner: Mutex::new((0, HashMap::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (i32, HashMap<i32, Session>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(w: &Wanted) -> (String, uuid::Uuid, i32) {
    (w.name.clone(), w.topic_id, w.partition)
}

pub async fn handle(gw: &Arc<Gateway>, version: i16, req: FetchRequest) -> FetchResponse {
    let use_ids = version >= 13;
    let resolve = |name: &TopicName, id: uuid::Uuid| -> (Option<Arc<Topic>>, String) {
        if use_ids {
            (gw.registry.topic_by_id(TopicId(id)), String::new())
        } else {
            (gw.registry.topic(&name.0), name.0.to_string())
        }
    };
    let mut requested = Vec::new();
    for t in &req.topics {
        let (topic, name) = resolve(&t.topic, t.topic_id);
        for p in &t.partitions {
            requested.push(Wanted {
                topic: topic.clone(),
                name: name.clone(),
                topic_id: t.topic_id,
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(0),
            });
        }
    }
    let forgotten: Vec<(String, uuid::Uuid, i32)> = req
        .forgotten_topics_data
        .iter()
        .flat_map(|f| {
            let name = if use_ids {
                String::new()
            } else {
                f.topic.0.to_string()
            };
            f.partitions
                .iter()
                .map(move |p| (name.clone(), f.topic_id, *p))
        })
        .collect();

    // Session bookkeeping (v7+): decide which partitions this fetch covers.
    let (session_id, incremental, wanted) = if version < 7 {
        (0, false, requested)
    } else {
        match session_begin(gw, req.session_id, req.session_epoch, requested, &forgotten) {
            Ok(s) => s,
            Err(e) => {
                return FetchResponse::default()
                    .with_error_code(code(e))
                    .with_session_id(0);
            }
        }
    };

    let max_wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0).min(60_000));
    let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0).max(1);
    // The broker-side cap (Kafka's fetch.max.bytes) bounds the memory one response takes.
    let max_bytes = usize::try_from(req.max_bytes)
        .unwrap_or(usize::MAX)
        .clamp(1, gw.config.fetch_max_bytes);
    let deadline = tokio::time::Instant::now() + max_wait;
    let mut changes = gw.registry.subscribe();
    let results = loop {
        changes.borrow_and_update();
        let results = read_all(gw, &wanted, max_bytes).await;
        let bytes: usize = results
            .iter()
            .map(|r| r.1.records.as_ref().map_or(0, |b| b.len()))
            .sum();
        let errors = results.iter().any(|r| r.1.error_code != 0);
        let closing = gw.registry.is_closing();
        if bytes >= min_bytes || errors || closing || tokio::time::Instant::now() >= deadline {
            break results;
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => break read_all(gw, &wanted, max_bytes).await,
        }
    };

    // Incremental sessions send only partitions with news; full fetches send all.
    let results = if incremental || session_id != 0 {
        session_filter(gw, session_id, incremental, results)
    } else {
        results
    };
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    for (w, data) in results {
        let same = topics.last().is_some_and(|t| {
            if use_ids {
                t.topic_id == w.topic_id
            } else {
                t.topic.0.as_str() == w.name
            }
        });
        if !same {
            topics.push(
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(w.name.clone())))
                    .with_topic_id(w.topic_id),
            );
        }
        if let Some(t) = topics.last_mut() {
            t.partitions.push(data);
        }
    }
    let mut resp = FetchResponse::default().with_responses(topics);
    if version >= 7 {
        resp = resp.with_session_id(session_id);
    }
    resp
}

/// Applies the session part of a request. Returns (session id for the response, whether
/// the response is incremental, the partitions to read).
fn session_begin(
    gw: &Gateway,
    session_id: i32,
    epoch: i32,
    requested: Vec<Wanted>,
    forgotten: &[(String, uuid::Uuid, i32)],
) -> Result<(i32, bool, Vec<Wanted>), ResponseError> {
    let mut guard = gw.sessions.lock();
    let (next_id, sessions) = &mut *guard;
    match epoch {
        // FINAL_EPOCH: close the session (if any); a sessionless full fetch.
        -1 => {
            sessions.remove(&session_id);
            Ok((0, false, requested))
        }
        // INITIAL_EPOCH: a new session with exactly these partitions.
        0 => {
            sessions.remove(&session_id);
            if sessions.len() >= gw.sessions.max {
                if let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(id, _)| *id)
                {
                    sessions.remove(&oldest);
                }
            }
            *next_id = next_id.wrapping_add(1).max(1);
            let id = *next_id;
            let partitions = requested
                .iter()
                .map(|w| SessionPartition {
                    wanted: w.clone(),
                    last_sent: None,
                })
                .collect();
            sessions.insert(
                id,
                Session {
                    epoch: 1,
                    partitions,
                    last_used: Instant::now(),
                },
            );
            Ok((id, false, requested))
        }
        _ => {
            let session = sessions
                .get_mut(&session_id)
                .ok_or(ResponseError::FetchSessionIdNotFound)?;
            if session.epoch != epoch {
                return Err(ResponseError::InvalidFetchSessionEpoch);
            }
            session.epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
            session.last_used = Instant::now();
            for w in requested {
                match session
                    .partitions
                    .iter_mut()
                    .find(|p| key(&p.wanted) == key(&w))
                {
                    Some(p) => p.wanted = w,
                    None => session.partitions.push(SessionPartition {
                        wanted: w,
                        last_sent: None,
                    }),
                }
            }
            session
                .partitions
                .retain(|p| !forgotten.contains(&key(&p.wanted)));
            // Re-resolve topics: a topic may have been created or deleted since.
            for p in &mut session.partitions {
                p.wanted.topic = if p.wanted.name.is_empty() {
                    gw.registry.topic_by_id(TopicId(p.wanted.topic_id))
                } else {
                    gw.registry.topic(&p.wanted.name)
                };
            }
            Ok((
                session_id,
                true,
                session
                    .partitions
                    .iter()
                    .map(|p| p.wanted.clone())
                    .collect(),
            ))
        }
    }
}

/// Records what was sent, advances fetch offsets, and for incremental responses drops the
/// partitions with nothing new.
fn session_filter(
    gw: &Gateway,
    session_id: i32,
    incremental: bool,
    results: Vec<(Wanted, PartitionData)>,
) -> Vec<(Wanted, PartitionData)> {
    let mut guard = gw.sessions.lock();
    let Some(session) = guard.1.get_mut(&session_id) else {
        return results;
    };
    let mut out = Vec::new();
    for (w, data) in results {
        let state = (data.high_watermark, data.log_start_offset);
        let has_records = data.records.as_ref().is_some_and(|r| !r.is_empty());
        let entry = session
            .partitions
            .iter_mut()
            .find(|p| key(&p.wanted) == key(&w));
        let changed = match &entry {
            Some(p) => p.last_sent != Some(state),
            None => true,
        };
        if let Some(p) = entry {
            p.last_sent = Some(state);
        }
        if !incremental || has_records || changed || data.error_code != 0 {
            out.push((w, data));
        }
    }
    out
}

async fn read_all(
    gw: &Gateway,
    wanted: &[Wanted],
    max_bytes: usize,
) -> Vec<(Wanted, PartitionData)> {
    prefetch(gw, wanted, max_bytes).await;
    let mut budget = max_bytes;
    let mut first = true;
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        let data = read_partition(gw, w, &mut budget, &mut first).await;
        out.push((w.clone(), data));
    }
    out
}

async fn read_partition(
    gw: &Gateway,
    w: &Wanted,
    budget: &mut usize,
    first: &mut bool,
) -> PartitionData {
    let base = PartitionData::default().with_partition_index(w.partition);
    let missing = if w.name.is_empty() {
        ResponseError::UnknownTopicId
    } else {
        ResponseError::UnknownTopicOrPartition
    };
    let Some(log) = w.topic.as_ref().and_then(|t| t.partition(w.partition)) else {
        return base
            .with_error_code(code(missing))
            .with_high_watermark(-1)
            .with_last_stable_offset(-1);
    };
    let (hw, log_start, deleted, led) = {
        let s = log.lock();
        (s.high_watermark, s.log_start, s.deleted, s.led)
    };
    if deleted {
        return base
            .with_error_code(code(missing))
            .with_high_watermark(-1)
            .with_last_stable_offset(-1);
    }
    if !led {
        return base
            .with_error_code(code(ResponseError::NotLeaderOrFollower))
            .with_high_watermark(-1)
            .with_last_stable_offset(-1);
    }
    let base = base
        .with_high_watermark(hw)
        .with_last_stable_offset(hw)
        .with_log_start_offset(log_start);
    if w.fetch_offset < log_start || w.fetch_offset > hw {
        return base.with_error_code(code(ResponseError::OffsetOutOfRange));
    }
    if w.fetch_offset == hw || *budget == 0 {
        return base.with_records(Some(Bytes::new()));
    }
    let limit = w.max_bytes.min(*budget);
    match read_records(gw, &log, w.fetch_offset, hw, limit, *first).await {
        Ok(records) => {
            if !records.is_empty() {
                *first = false;
                *budget = budget.saturating_sub(records.len());
                log.count_out(records.len());
            }
            base.with_records(Some(records))
        }
        Err(e) => {
            // The data may have been removed by retention meanwhile.
            let start = log.lock().log_start;
            if w.fetch_offset < start {
                base.with_error_code(code(ResponseError::OffsetOutOfRange))
                    .with_log_start_offset(start)
            } else {
                tracing::warn!(tp = %log.tp, offset = w.fetch_offset, error = %e, "fetch read failed");
                base.with_error_code(code(ResponseError::KafkaStorageError))
            }
        }
    }
}

/// Index entries from `offset`: from the in-memory tail when it covers it, else the store.
async fn entries_from(
    gw: &Gateway,
    log: &PartitionLog,
    offset: Offset,
) -> Result<Vec<IndexEntry>, String> {
    {
        let s = log.lock();
        if s.recent.front().is_some_and(|e| e.base_offset <= offset) {
            return Ok(s
                .recent
                .iter()
                .filter(|e| e.last_offset >= offset)
                .take(ENTRIES_PER_READ)
                .cloned()
                .collect());
        }
    }
    gw.meta
        .index_from(log.tp, offset, ENTRIES_PER_READ)
        .await
        .map_err(|e| e.to_string())
}

/// Objects loaded concurrently ahead of a fetch.
const PREFETCH_OBJECTS: usize = 16;

/// Loads the objects this fetch will read concurrently, so that a consumer reading older data
/// waits for one round of object reads rather than one per object.
async fn prefetch(gw: &Gateway, wanted: &[Wanted], max_bytes: usize) {
    let mut objects: Vec<(weir_common::TopicPartition, String, u64)> = Vec::new();
    let mut planned = 0usize;
    for w in wanted {
        let Some(log) = w.topic.as_ref().and_then(|t| t.partition(w.partition)) else {
            continue;
        };
        let hw = log.lock().high_watermark;
        if w.fetch_offset >= hw {
            continue;
        }
        let Ok(entries) = entries_from(gw, &log, w.fetch_offset).await else {
            continue;
        };
        let mut bytes = 0usize;
        for e in entries.into_iter().take_while(|e| e.base_offset < hw) {
            if bytes >= w.max_bytes || planned >= max_bytes {
                break;
            }
            bytes += e.length as usize;
            planned += e.length as usize;
            if !objects.iter().any(|(_, o, _)| *o == e.object) {
                objects.push((e.tp, e.object.clone(), e.position));
            }
        }
        if objects.len() >= PREFETCH_OBJECTS || planned >= max_bytes {
            break;
        }
    }
    if objects.len() > 1 {
        let loads = objects
            .iter()
            .take(PREFETCH_OBJECTS)
            .map(|(tp, o, pos)| gw.storage.read(*tp, o, *pos, 0));
        futures::future::join_all(loads).await;
    }
}

/// A slice of a cached object for a response. A small part of a large object is copied, so
/// that the response does not keep the whole object alive after the cache dropped it (a
/// consumer catching up touches many objects per fetch).
fn detach(object: &Bytes, range: std::ops::Range<usize>) -> Bytes {
    if range.len() * 2 < object.len() {
        Bytes::copy_from_slice(&object[range])
    } else {
        object.slice(range)
    }
}

/// Reads whole batches starting at the one holding `offset`, below `hw`, up to `limit` bytes
/// (at least one batch when `must_return_one`, as KIP-74 requires for progress).
async fn read_records(
    gw: &Gateway,
    log: &PartitionLog,
    offset: Offset,
    hw: Offset,
    limit: usize,
    must_return_one: bool,
) -> Result<Bytes, String> {
    let entries = entries_from(gw, log, offset).await?;
    let mut parts: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    'entries: for entry in entries {
        if entry.base_offset >= hw {
            break;
        }
        let bytes = gw
            .storage
            .read(entry.tp, &entry.object, entry.position, entry.length)
            .await
            .map_err(|e| e.to_string())?;
        let mut run_start: Option<usize> = None;
        let mut run_end = 0usize;
        for (start, h) in batch::headers(&bytes) {
            if h.last_offset() < offset {
                continue;
            }
            if h.base_offset >= hw {
                break;
            }
            let fits = total + h.size <= limit || (must_return_one && total == 0);
            if !fits {
                if let Some(s) = run_start {
                    parts.push(detach(&bytes, s..run_end));
                }
                break 'entries;
            }
            run_start.get_or_insert(start);
            run_end = start + h.size;
            total += h.size;
        }
        if let Some(s) = run_start {
            parts.push(detach(&bytes, s..run_end));
        }
        if total >= limit {
            break;
        }
    }
    Ok(match parts.len() {
        0 => Bytes::new(),
        1 => parts.swap_remove(0),
        _ => {
            let mut buf = BytesMut::with_capacity(total);
            for p in parts {
                buf.extend_from_slice(&p);
            }
            buf.freeze()
        }
    })
}
