//! The storage service over QUIC: [`StorageServer`] serves an [`ObjectStorage`] to gateways
//! (`weir storage`), and [`RemoteStorage`] is the [`Storage`] a gateway uses to reach one or
//! more storage nodes (`--storage quic://host:port[,host:port...]?ca=PATH`).
//!
//! - Appends travel on one session per gateway and node (an ordered stream, see `weir-rpc`):
//!   the node submits them in the order they were sent, which is the order the gateway
//!   assigned their offsets, and replies in that same order once each is durable and
//!   indexed. A reply carries the index commit, which the gateway hands to its
//!   [`CommitObserver`] (high watermark, producer state) before the append completes.
//! - Reads, deletes and listings are calls, one QUIC stream each. The gateway keeps the bytes
//!   of its own recent appends, by the index entry they were committed under (a byte-bounded
//!   tail cache), so consumers reading the tail are served without a call.
//! - A partition's appends and reads go to one node, chosen by rendezvous hashing of the
//!   partition over the node addresses: every gateway picks the same node, the node that
//!   wrote a partition's tail has it in its cache, and adding a node moves only the
//!   partitions that now hash to it. A node that cannot be reached is passed over for
//!   [`DOWN_FOR`], doubling with each failure in a row up to 32 s (its partitions go to
//!   their next node in the ranking), then tried again with live traffic: the nodes must
//!   share one object store, so any node can serve any object.
//!
//! The node commits each flushed object to the metadata store itself (its [`crate::IndexSink`]),
//! so an append's outcome does not depend on the gateway staying connected. When a session
//! breaks, the gateway fails the appends still waiting with a retriable error: their outcome
//! is unknown, and the gateway re-reads the partition's durable end before it takes new
//! appends (a retried idempotent batch is then answered as a duplicate, never written twice).
//!
//! The ALPN id [`ALPN`] carries the protocol version.

use crate::{
    AppendBatch, AppendTicket, CommitObserver, ObjectStorage, Reservation, Result, SegmentInfo,
    Storage, StorageError,
};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Semaphore};
use weir_common::{IndexEntry, PartitionCommit, TopicPartition};
use weir_rpc::{SessionReceiver, SessionSender};

/// The storage protocol's ALPN id: service name and version.
pub const ALPN: &[u8] = b"weir-storage/1";

/// Timeout of reads, deletes and listings.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// An append with no reply for this long means the node is stuck: the session is dropped
/// and its waiting appends fail (retriable, outcome unknown).
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed connection attempt, appends to that node fail at once for this long
/// instead of each waiting for a connect timeout.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// How long opening a session to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// An append that could not be sent within this long fails (it never reached a node, so
/// the producer's retry cannot duplicate it).
const SEND_DEADLINE: Duration = Duration::from_secs(5);
/// How long a node that could not be reached is passed over after its first failure; each
/// further failure in a row doubles it, up to 16 times.
pub const DOWN_FOR: Duration = Duration::from_secs(2);
/// Most appends a node has accepted from one session and not yet answered.
const MAX_UNANSWERED: usize = 65_536;
/// Unreferenced objects younger than this may still be between their write and their index
/// commit on some storage node (a write is retried for at most a few minutes).
const ORPHAN_GRACE: Duration = Duration::from_secs(15 * 60);

/// One call of the storage protocol.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Read {
        tp: TopicPartition,
        object: String,
        position: u64,
        length: u32,
    },
    Delete(Vec<String>),
    List,
    Compact {
        tp: TopicPartition,
        entries: Vec<IndexEntry>,
    },
    WriteSegment {
        tp: TopicPartition,
        info: SegmentInfo,
        data: Bytes,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Data(Bytes),
    Objects(Vec<String>),
    Entry(IndexEntry),
    Done,
    Error(StorageError),
}

/// A gateway's message in its append session.
#[derive(Debug, Serialize, Deserialize)]
pub enum AppendMessage {
    /// Append `batch`; the reply carries `id`.
    Append { id: u64, batch: AppendBatch },
    /// Fail the partition's queued appends (see [`Storage::discard`]).
    Discard(TopicPartition),
}

/// A node's answer to one append, in the order the appends arrived.
#[derive(Debug, Serialize, Deserialize)]
pub struct AppendReply {
    pub id: u64,
    pub result: Result<Option<PartitionCommit>>,
}

/// Serves an [`ObjectStorage`] over QUIC (`weir storage`).
#[derive(Debug)]
pub struct StorageServer {
    storage: ObjectStorage,
}

impl StorageServer {
    pub fn new(storage: ObjectStorage) -> Self {
        StorageServer { storage }
    }
}

fn check(batch: &AppendBatch) -> Result<()> {
    if batch.data.is_empty() || batch.last_offset < batch.base_offset || batch.batches == 0 {
        return Err(StorageError::Invalid(format!(
            "append of {:?} with offsets {}..={}, {} batches and {} bytes",
            batch.tp,
            batch.base_offset,
            batch.last_offset,
            batch.batches,
            batch.data.len()
        )));
    }
    Ok(())
}

impl weir_rpc::Handler for StorageServer {
    type Request = Request;
    type Response = Response;
    type SessionIn = AppendMessage;
    type SessionOut = AppendReply;

    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Read {
                tp,
                object,
                position,
                length,
            } => match self.storage.read(tp, &object, position, length).await {
                Ok(bytes) => Response::Data(bytes),
                Err(e) => Response::Error(e),
            },
            Request::Delete(objects) => {
                self.storage.delete_objects(objects).await;
                Response::Done
            }
            Request::List => match self.storage.list_objects().await {
                Ok(objects) => Response::Objects(objects),
                Err(e) => Response::Error(e),
            },
            Request::Compact { tp, entries } => match self.storage.compact(tp, entries).await {
                Ok(entry) => Response::Entry(entry),
                Err(e) => Response::Error(e),
            },
            Request::WriteSegment { tp, info, data } => {
                match self.storage.write_segment(tp, info, data).await {
                    Ok(entry) => Response::Entry(entry),
                    Err(e) => Response::Error(e),
                }
            }
        }
    }

    fn malformed(&self, error: String) -> Response {
        Response::Error(StorageError::Invalid(error))
    }

    async fn session(
        self: Arc<Self>,
        send: SessionSender<AppendReply>,
        mut recv: SessionReceiver<AppendMessage>,
    ) {
        let (tickets, queue) = mpsc::channel(1024);
        let replier = tokio::spawn(reply_in_order(send, queue));
        loop {
            let message = match recv.recv().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "append session ended");
                    break;
                }
            };
            match message {
                AppendMessage::Append { id, batch } => {
                    let submitted = match check(&batch) {
                        Ok(()) => match self.storage.reserve(batch.data.len()).await {
                            Ok(reservation) => self.storage.submit(batch, reservation),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                    if tickets.send((id, submitted)).await.is_err() {
                        break;
                    }
                }
                AppendMessage::Discard(tp) => self.storage.discard(tp),
            }
        }
        drop(tickets);
        let _ = replier.await;
    }
}

/// Sends each append's outcome as it completes, in the order the appends arrived.
async fn reply_in_order(
    mut send: SessionSender<AppendReply>,
    mut queue: mpsc::Receiver<(u64, Result<AppendTicket>)>,
) {
    let mut waiting = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            next = queue.recv(), if open && waiting.len() < MAX_UNANSWERED => match next {
                Some((id, submitted)) => waiting.push_back(async move {
                    let result = match submitted {
                        Ok(ticket) => ticket.await.unwrap_or(Err(StorageError::ShuttingDown)),
                        Err(e) => Err(e),
                    };
                    AppendReply { id, result }
                }.boxed()),
                None => open = false,
            },
            Some(reply) = waiting.next(), if !waiting.is_empty() => {
                if send.send(&reply).await.is_err() {
                    // The gateway is gone; the appends still complete (or fail) on their own.
                    return;
                }
            }
            else => break,
        }
    }
    send.finish().await;
}

/// An append waiting for its node's reply.
struct Waiting {
    done: oneshot::Sender<Result<Option<PartitionCommit>>>,
    sent_at: Instant,
    tp: TopicPartition,
    /// The append's bytes, for the tail cache.
    data: Bytes,
    _reservation: Reservation,
}

/// Recent appends' bytes by (object, position) of the index entry they were committed under.
type TailCache = moka::future::Cache<(String, u64), Bytes>;

/// A partition's run of appends being put together for the tail cache: the first append's
/// reply carries the entry, the others of the run follow in order.
struct Assembly {
    key: (String, u64),
    length: usize,
    data: BytesMut,
}

/// One session's appends waiting for replies, shared by its writer and its reader.
#[derive(Default)]
struct SessionState {
    waiting: Mutex<HashMap<u64, Waiting>>,
    broken: AtomicBool,
}

impl SessionState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the session broken and fails every append still waiting on it.
    fn fail_all(&self, addr: &str, why: &str) {
        self.broken.store(true, Ordering::SeqCst);
        let waiting: Vec<Waiting> = self.lock().drain().map(|(_, w)| w).collect();
        if !waiting.is_empty() {
            tracing::warn!(
                node = addr,
                appends = waiting.len(),
                reason = why,
                "storage node session lost; failing its appends (outcome unknown, retriable)"
            );
        }
        for w in waiting {
            let _ = w.done.send(Err(StorageError::Unavailable(format!(
                "storage node {addr}: {why}; the append's outcome is unknown"
            ))));
        }
    }
}

enum Outgoing {
    Append {
        batch: AppendBatch,
        done: oneshot::Sender<Result<Option<PartitionCommit>>>,
        reservation: Reservation,
        queued_at: Instant,
    },
    Discard(TopicPartition),
}

/// One storage node as a gateway sees it.
#[derive(Debug)]
struct Node {
    addr: String,
    client: Arc<weir_rpc::Client>,
    health: Arc<Health>,
    /// To the node's append writer. Unbounded in messages, bounded in bytes: every append
    /// holds a [`Reservation`] of the gateway's buffer until its reply arrives.
    outgoing: mpsc::UnboundedSender<Outgoing>,
}

/// Whether a node was recently unreachable.
#[derive(Debug)]
struct Health {
    started: Instant,
    /// Milliseconds after `started` until which the node is passed over.
    down_until: AtomicU64,
    /// Failures since the last success.
    failures: std::sync::atomic::AtomicU32,
}

impl Health {
    fn new() -> Self {
        Health {
            started: Instant::now(),
            down_until: AtomicU64::new(0),
            failures: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mark_down(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed).min(4);
        let until = self.now() + (DOWN_FOR.as_millis() as u64) * (1 << failures);
        self.down_until.store(until, Ordering::Relaxed);
    }

    /// The node answered.
    fn mark_up(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.down_until.store(0, Ordering::Relaxed);
        }
    }

    fn is_up(&self) -> bool {
        self.down_until.load(Ordering::Relaxed) <= self.now()
    }
}

/// The [`Storage`] of a gateway whose storage service runs in other processes.
#[derive(Debug)]
pub struct RemoteStorage {
    nodes: Vec<Node>,
    tail: TailCache,
    space: Arc<Semaphore>,
    max_buffered_bytes: usize,
}

/// Where the storage nodes are: `quic://host:port[,host:port...]?ca=PATH[&name=NAME]`.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    pub nodes: Vec<(SocketAddr, String)>,
    pub ca: std::path::PathBuf,
    pub server_name: Option<String>,
}

impl RemoteOptions {
    /// Parses a `quic://` storage URL and resolves its hosts.
    pub async fn parse(url: &str) -> Result<Self> {
        let invalid = |why: String| StorageError::Invalid(format!("storage URL '{url}': {why}"));
        let rest = url
            .strip_prefix("quic://")
            .ok_or_else(|| invalid("use quic://host:port[,host:port...]?ca=PATH".into()))?;
        let (authorities, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut params = weir_common::url_params(query, &["ca", "name"])
            .map_err(invalid)?
            .into_iter();
        let (ca, name) = (params.next().flatten(), params.next().flatten());
        let ca = ca.ok_or_else(|| {
            invalid(
                "add ?ca=<path to the storage nodes' CA certificate> (weir storage prints it)"
                    .into(),
            )
        })?;
        let mut nodes = Vec::new();
        for authority in authorities.trim_end_matches('/').split(',') {
            let addr = tokio::net::lookup_host(authority)
                .await
                .map_err(|e| invalid(format!("{authority}: {e}")))?
                .next()
                .ok_or_else(|| invalid(format!("no address for {authority}")))?;
            let host = authority
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or(authority);
            nodes.push((addr, host.to_string()));
        }
        Ok(RemoteOptions {
            nodes,
            ca: ca.into(),
            server_name: name,
        })
    }
}

impl RemoteStorage {
    /// A client of the storage nodes in `options`. Commits the nodes report go to
    /// `observer`. Connections open on first use; a node that is down fails only the
    /// appends and reads of its partitions, with retriable errors.
    pub fn connect(
        options: &RemoteOptions,
        observer: Arc<dyn CommitObserver>,
        max_buffered_bytes: usize,
        tail_cache_bytes: u64,
    ) -> Result<Self> {
        let tail: TailCache = moka::future::Cache::builder()
            .weigher(|_k: &(String, u64), v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .max_capacity(tail_cache_bytes)
            .support_invalidation_closures()
            .build();
        let mut nodes = Vec::new();
        for (addr, host) in &options.nodes {
            let name = options.server_name.as_deref().unwrap_or(host);
            let client = weir_rpc::Client::new(*addr, name, &options.ca, ALPN, CALL_TIMEOUT)
                .map_err(|e| StorageError::Unavailable(format!("storage node {addr}: {e}")))?;
            let client = Arc::new(client);
            let (outgoing, queue) = mpsc::unbounded_channel();
            let health = Arc::new(Health::new());
            tokio::spawn(append_writer(
                addr.to_string(),
                client.clone(),
                queue,
                observer.clone(),
                health.clone(),
                tail.clone(),
            ));
            nodes.push(Node {
                addr: addr.to_string(),
                client,
                health,
                outgoing,
            });
        }
        if nodes.is_empty() {
            return Err(StorageError::Invalid("no storage nodes given".into()));
        }
        Ok(RemoteStorage {
            nodes,
            tail,
            space: Arc::new(Semaphore::new(max_buffered_bytes.max(1))),
            max_buffered_bytes: max_buffered_bytes.max(1),
        })
    }

    /// The nodes in `tp`'s order of preference: by a hash of partition and node address,
    /// highest first (rendezvous hashing; the same on every gateway).
    fn ranked(&self, tp: TopicPartition) -> Vec<&Node> {
        let mut key = Vec::with_capacity(20);
        key.extend_from_slice(&tp.topic_id.as_u128().to_be_bytes());
        key.extend_from_slice(&tp.partition.to_be_bytes());
        let mut nodes: Vec<(u64, &Node)> = self
            .nodes
            .iter()
            .map(|n| (weir_common::stable_hash(&[&key, n.addr.as_bytes()]), n))
            .collect();
        nodes.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.addr.cmp(&b.1.addr)));
        nodes.into_iter().map(|(_, n)| n).collect()
    }

    /// The node that serves `tp`: its first node in the ranking that is not passed over
    /// (the first one when all are).
    fn node(&self, tp: TopicPartition) -> &Node {
        let ranked = self.ranked(tp);
        ranked
            .iter()
            .find(|n| n.health.is_up())
            .or(ranked.first())
            .copied()
            .unwrap_or(&self.nodes[0])
    }

    /// A call to `tp`'s node; when a node cannot be reached, the next one in the ranking.
    async fn call_for(&self, tp: TopicPartition, request: Request) -> Result<Response> {
        let mut ranked = self.ranked(tp);
        // Nodes that are up first, keeping the ranking within each group.
        ranked.sort_by_key(|n| !n.health.is_up());
        let mut last = StorageError::Invalid("no storage nodes".into());
        for node in ranked {
            match self.call(node, &request).await {
                Err(e @ StorageError::Unavailable(_)) => last = e,
                other => return other,
            }
        }
        Err(last)
    }

    async fn call(&self, node: &Node, request: &Request) -> Result<Response> {
        let answer = node.client.call::<_, Response>(request).await;
        if answer.is_ok() {
            node.health.mark_up();
        }
        match answer {
            Ok(Response::Error(e)) => Err(e),
            Ok(response) => Ok(response),
            Err(e) => {
                node.health.mark_down();
                Err(StorageError::Unavailable(format!(
                    "storage node {}: {e}",
                    node.addr
                )))
            }
        }
    }
}

fn unexpected(response: &Response) -> StorageError {
    StorageError::Corrupt(format!(
        "unexpected response from a storage node: {response:?}"
    ))
}

#[async_trait]
impl Storage for RemoteStorage {
    async fn reserve(&self, bytes: usize) -> Result<Reservation> {
        Reservation::acquire(&self.space, bytes, self.max_buffered_bytes).await
    }

    fn submit(&self, batch: AppendBatch, reservation: Reservation) -> Result<AppendTicket> {
        let (done, ticket) = oneshot::channel();
        self.node(batch.tp)
            .outgoing
            .send(Outgoing::Append {
                batch,
                done,
                reservation,
                queued_at: Instant::now(),
            })
            .map_err(|_| StorageError::ShuttingDown)?;
        Ok(ticket)
    }

    fn discard(&self, tp: TopicPartition) {
        // To every node: the partition's earlier appends may have gone to another one.
        for node in &self.nodes {
            let _ = node.outgoing.send(Outgoing::Discard(tp));
        }
    }

    async fn read(
        &self,
        tp: TopicPartition,
        object: &str,
        position: u64,
        length: u32,
    ) -> Result<Bytes> {
        let key = (object.to_string(), position);
        if let Some(bytes) = self.tail.get(&key).await {
            // A prefetch (length 0) has nothing to warm; a read of the entry is served here.
            if length == 0 {
                return Ok(Bytes::new());
            }
            if bytes.len() >= length as usize {
                return Ok(bytes.slice(..length as usize));
            }
        }
        let request = Request::Read {
            tp,
            object: object.to_string(),
            position,
            length,
        };
        match self.call_for(tp, request).await? {
            Response::Data(bytes) => Ok(bytes),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete_objects(&self, objects: Vec<String>) {
        if objects.is_empty() {
            return;
        }
        let gone: std::collections::HashSet<String> = objects.iter().cloned().collect();
        if let Err(e) = self
            .tail
            .invalidate_entries_if(move |(object, _), _| gone.contains(object))
        {
            tracing::debug!(error = %e, "tail cache invalidation");
        }
        // Any node can delete: they share the object store. Try each until one answers.
        for node in &self.nodes {
            match self.call(node, &Request::Delete(objects.clone())).await {
                Ok(_) => return,
                Err(e) => tracing::warn!(node = %node.addr, error = %e, "object delete failed"),
            }
        }
    }

    async fn compact(&self, tp: TopicPartition, entries: Vec<IndexEntry>) -> Result<IndexEntry> {
        // The partition's node: its cache holds the partition's recent objects.
        match self.call_for(tp, Request::Compact { tp, entries }).await? {
            Response::Entry(entry) => Ok(entry),
            other => Err(unexpected(&other)),
        }
    }

    async fn write_segment(
        &self,
        tp: TopicPartition,
        info: SegmentInfo,
        data: Bytes,
    ) -> Result<IndexEntry> {
        match self
            .call_for(tp, Request::WriteSegment { tp, info, data })
            .await?
        {
            Response::Entry(entry) => Ok(entry),
            other => Err(unexpected(&other)),
        }
    }

    async fn list_objects(&self) -> Result<Vec<String>> {
        let mut last = StorageError::Invalid("no storage nodes".into());
        for node in &self.nodes {
            match self.call(node, &Request::List).await {
                Ok(Response::Objects(objects)) => return Ok(objects),
                Ok(other) => return Err(unexpected(&other)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn shutdown(&self) {
        // Nothing is buffered here: every append waits for its node's reply, and the
        // gateway drains its requests before it shuts storage down.
        self.space.close();
    }

    fn orphan_grace(&self) -> Duration {
        ORPHAN_GRACE
    }
}

/// Sends a node's appends, in order, on one session at a time; opens a new session when
/// the last one broke.
async fn append_writer(
    addr: String,
    client: Arc<weir_rpc::Client>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    observer: Arc<dyn CommitObserver>,
    health: Arc<Health>,
    tail: TailCache,
) {
    let ids = AtomicU64::new(0);
    let mut session: Option<(SessionSender<AppendMessage>, Arc<SessionState>)> = None;
    let mut failed_at: Option<Instant> = None;
    while let Some(outgoing) = queue.recv().await {
        if session
            .as_ref()
            .is_some_and(|(_, state)| state.broken.load(Ordering::SeqCst))
        {
            session = None;
        }
        if session.is_none() && failed_at.is_none_or(|t| t.elapsed() >= RECONNECT_BACKOFF) {
            let opened = tokio::time::timeout(
                CONNECT_TIMEOUT,
                client.open_session::<AppendMessage, AppendReply>(),
            )
            .await
            .unwrap_or_else(|_| {
                Err(weir_rpc::RpcError::Timeout {
                    addr: addr.clone(),
                    ms: CONNECT_TIMEOUT.as_millis(),
                })
            });
            match opened {
                Ok((send, recv)) => {
                    let state = Arc::new(SessionState::default());
                    tokio::spawn(read_replies(
                        addr.clone(),
                        recv,
                        state.clone(),
                        observer.clone(),
                        health.clone(),
                        tail.clone(),
                    ));
                    session = Some((send, state));
                    failed_at = None;
                }
                Err(e) => {
                    tracing::warn!(node = %addr, error = %e, "cannot reach storage node");
                    failed_at = Some(Instant::now());
                    health.mark_down();
                }
            }
        }
        let Some((send, state)) = session.as_mut() else {
            if let Outgoing::Append { done, .. } = outgoing {
                let _ = done.send(Err(StorageError::Unavailable(format!(
                    "storage node {addr} is unreachable"
                ))));
            }
            continue;
        };
        let message = match outgoing {
            Outgoing::Append {
                batch,
                done,
                reservation,
                queued_at,
            } => {
                if queued_at.elapsed() > SEND_DEADLINE {
                    let _ = done.send(Err(StorageError::Unavailable(format!(
                        "storage node {addr} did not take the append within {} s",
                        SEND_DEADLINE.as_secs()
                    ))));
                    continue;
                }
                let id = ids.fetch_add(1, Ordering::Relaxed);
                state.lock().insert(
                    id,
                    Waiting {
                        done,
                        sent_at: Instant::now(),
                        tp: batch.tp,
                        data: batch.data.clone(),
                        _reservation: reservation,
                    },
                );
                AppendMessage::Append { id, batch }
            }
            Outgoing::Discard(tp) => AppendMessage::Discard(tp),
        };
        if let Err(e) = send.send(&message).await {
            state.fail_all(&addr, &e.to_string());
            health.mark_down();
            session = None;
        }
    }
    if let Some((send, _)) = session {
        send.finish().await;
    }
}

/// Reads a session's replies: hands each commit to the observer, then completes its append.
/// Fails every waiting append when the session ends or a reply is overdue.
async fn read_replies(
    addr: String,
    mut recv: SessionReceiver<AppendReply>,
    state: Arc<SessionState>,
    observer: Arc<dyn CommitObserver>,
    health: Arc<Health>,
    tail: TailCache,
) {
    let mut assemblies: HashMap<TopicPartition, Assembly> = HashMap::new();
    let mut watchdog = tokio::time::interval(Duration::from_secs(1));
    let why = loop {
        let reply = tokio::select! {
            reply = recv.recv() => reply,
            _ = watchdog.tick() => {
                let overdue = state
                    .lock()
                    .values()
                    .any(|w| w.sent_at.elapsed() > APPEND_TIMEOUT);
                if overdue {
                    break format!("no reply within {} s", APPEND_TIMEOUT.as_secs());
                }
                continue;
            }
        };
        match reply {
            Ok(Some(reply)) => {
                health.mark_up();
                let Some(waiting) = state.lock().remove(&reply.id) else {
                    continue;
                };
                match &reply.result {
                    Ok(Some(commit)) => {
                        let e = &commit.entry;
                        assemblies.insert(
                            waiting.tp,
                            Assembly {
                                key: (e.object.clone(), e.position),
                                length: e.length as usize,
                                data: BytesMut::new(),
                            },
                        );
                    }
                    Ok(None) => {}
                    Err(_) => {
                        assemblies.remove(&waiting.tp);
                    }
                }
                if reply.result.is_ok() {
                    if let Some(a) = assemblies.get_mut(&waiting.tp) {
                        a.data.extend_from_slice(&waiting.data);
                        if a.data.len() >= a.length {
                            if let Some(a) = assemblies.remove(&waiting.tp) {
                                if a.data.len() == a.length {
                                    tail.insert(a.key, a.data.freeze()).await;
                                }
                            }
                        }
                    }
                }
                if let Ok(Some(commit)) = &reply.result {
                    observer.committed(commit);
                }
                let _ = waiting.done.send(reply.result);
            }
            Ok(None) => break "the node ended the session".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    health.mark_down();
    state.fail_all(&addr, &why);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_parse_and_partitions_spread_stably_over_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = weir_rpc::tls::generate(dir.path(), &["127.0.0.1".into()])
            .unwrap()
            .ca;
        let options = RemoteOptions::parse(&format!(
            "quic://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003?ca={}",
            ca.display()
        ))
        .await
        .unwrap();
        assert_eq!(options.nodes.len(), 3);
        assert_eq!(options.ca, ca);
        assert!(RemoteOptions::parse("quic://127.0.0.1:7001").await.is_err());
        assert!(RemoteOptions::parse("quic://127.0.0.1:7001?ca=/x&bogus=1")
            .await
            .is_err());

        #[derive(Debug)]
        struct Nobody;
        impl CommitObserver for Nobody {
            fn committed(&self, _: &PartitionCommit) {}
        }
        let a = RemoteStorage::connect(&options, Arc::new(Nobody), 1 << 20, 1 << 20).unwrap();
        let mut reversed = options.clone();
        reversed.nodes.reverse();
        let b = RemoteStorage::connect(&reversed, Arc::new(Nobody), 1 << 20, 1 << 20).unwrap();
        let topic = weir_common::TopicId::random();
        let mut per_node: HashMap<String, usize> = HashMap::new();
        for partition in 0..300 {
            let tp = TopicPartition {
                topic_id: topic,
                partition,
            };
            // The node list's order does not matter.
            assert_eq!(a.node(tp).addr, b.node(tp).addr);
            *per_node.entry(a.node(tp).addr.clone()).or_default() += 1;
        }
        assert_eq!(per_node.len(), 3);
        assert!(per_node.values().all(|n| *n > 70), "{per_node:?}");
        // The hash is fixed: this partition lands on this node on every build.
        assert_eq!(
            weir_common::stable_hash(&[b"weir"]),
            0x928e_bc5f_622c_ac17_u64, // FNV-1a + fmix64 of "weir", computed independently
            "stable_hash changed"
        );
    }
}
