//! The storage service: turns record batches from gateways into durable objects and serves
//! byte ranges of them back.
//!
//! It owns the object layout ([`object`]), the write buffer and flush policy, and the read
//! cache. It packs the batches of many partitions into one object per flush (so object
//! writes depend on bytes and time, not on the number of partitions), writes the object
//! (fsynced on local disk), then commits the object's per-partition ranges through an
//! [`IndexSink`] (the metadata service's offset index, [`MetadataSink`]), tells its
//! [`CommitObserver`] (the gateway's high watermarks) and only then completes the appends:
//! it is the one owner of that path, in-process and in a storage node alike ([`commit`]).
//! It never decodes records and never assigns offsets.
//!
//! Main types: [`Storage`] (the API the gateway uses), [`ObjectStorage`] (the implementation
//! over any `object_store` backend, in-process in `weir serve` or inside a `weir storage`
//! node), [`remote`] (the same API over QUIC to storage nodes), [`StorageConfig`].

pub mod commit;
mod disk_cache;
mod local;
pub mod maintenance;
mod metrics;
pub mod object;
pub mod remote;
pub mod s3;
pub mod store;

pub use commit::MetadataSink;
pub use metrics::StorageMetrics;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use weir_common::{
    CommitRefused, ErrorKind, IndexEntry, LeaderEpoch, Offset, PartitionCommit, ProducerBatchState,
    TopicPartition,
};

use object::FooterEntry;

/// Errors of the storage service.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum StorageError {
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    #[error("index commit refused: {0}")]
    Refused(#[from] CommitRefused),
    #[error("append discarded: an earlier append of this partition failed; retry")]
    Discarded,
    #[error("object '{0}' not found")]
    NotFound(String),
    #[error("corrupt object: {0}")]
    Corrupt(String),
    #[error("storage is shutting down")]
    ShuttingDown,
    #[error("invalid storage request: {0}")]
    Invalid(String),
}

impl StorageError {
    /// What the caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StorageError::Unavailable(_) | StorageError::Discarded | StorageError::ShuttingDown => {
                ErrorKind::Retriable
            }
            StorageError::Refused(CommitRefused::UnknownPartition) => ErrorKind::NotFound,
            StorageError::Refused(_) => ErrorKind::Fenced,
            StorageError::NotFound(_) => ErrorKind::NotFound,
            StorageError::Corrupt(_) | StorageError::Invalid(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Record batches of one partition, already validated and carrying their final offsets.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AppendBatch {
    pub tp: TopicPartition,
    pub leader_epoch: LeaderEpoch,
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub max_timestamp: i64,
    /// One or more complete v2 record batches, verbatim.
    pub data: Bytes,
    pub batches: u32,
    /// The idempotent producer's state after these batches, if any.
    pub producer: Option<ProducerBatchState>,
}

/// Completion of one append: resolves once the object is durable and indexed. Appends of one
/// partition that went into one object share one index entry: the first of them carries the
/// commit (entry and producer states), the others `None`.
pub type AppendTicket = oneshot::Receiver<Result<Option<PartitionCommit>>>;

/// Told about each index commit that landed, before the appends it covers complete: the
/// gateway advances its high watermarks here, in both deployment shapes. In-process,
/// [`ObjectStorage`] calls it after its [`IndexSink`] committed; with storage nodes, the node
/// commits and [`remote::RemoteStorage`] calls it when the node's reply arrives. See
/// `docs/commit-path.md`.
pub trait CommitObserver: Send + Sync + std::fmt::Debug {
    fn committed(&self, commit: &PartitionCommit);

    /// All the landed commits of one flush (the default calls [`Self::committed`] for each;
    /// an observer may override it to do per-flush work once).
    fn committed_all(&self, commits: &mut dyn Iterator<Item = &PartitionCommit>) {
        for commit in commits {
            self.committed(commit);
        }
    }
}

/// An observer for a storage node, whose commits are reported to the gateways in the
/// append replies instead.
#[derive(Debug, Default)]
pub struct NoObserver;

impl CommitObserver for NoObserver {
    fn committed(&self, _commit: &PartitionCommit) {}
}

/// Buffer space reserved for an append (back-pressure): released when the append completes.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Waits for `bytes` (clamped to 1..=`max`) of `space` and holds them.
    pub(crate) async fn acquire(space: &Arc<Semaphore>, bytes: usize, max: usize) -> Result<Self> {
        let wanted = u32::try_from(bytes.clamp(1, max.max(1))).unwrap_or(u32::MAX);
        let permit = space
            .clone()
            .acquire_many_owned(wanted)
            .await
            .map_err(|_| StorageError::ShuttingDown)?;
        Ok(Reservation {
            _permit: Some(permit),
        })
    }
}

/// Commits a flushed object's ranges to the offset index (implemented over the metadata
/// service by the component that wires the storage service in).
#[async_trait]
pub trait IndexSink: Send + Sync {
    /// Commits all ranges of one object in one transaction; one outcome per commit, in order.
    /// An `Err` means the outcome is unknown (nothing, or everything, may have landed).
    async fn commit(
        &self,
        commits: &[PartitionCommit],
    ) -> std::result::Result<Vec<std::result::Result<(), CommitRefused>>, String>;
}

/// The storage service's API.
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Registers the service's metrics (object requests, cache hits, flushes).
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}

    /// Waits until `bytes` of buffer space are free and reserves them.
    async fn reserve(&self, bytes: usize) -> Result<Reservation>;

    /// Queues an append without waiting. Appends of one partition must be submitted in
    /// offset order; they are written and committed in that order.
    fn submit(&self, batch: AppendBatch, reservation: Reservation) -> Result<AppendTicket>;

    /// Fails every queued, not yet flushing append of `tp` with [`StorageError::Discarded`]
    /// (used after an append of `tp` failed, so later ones cannot commit out of order).
    fn discard(&self, tp: TopicPartition);

    /// Reads `length` bytes at `position` of an object that holds data of `tp` (remote
    /// storage sends a partition's reads to the node whose cache holds it). A `length` of 0
    /// only warms the cache.
    async fn read(
        &self,
        tp: TopicPartition,
        object: &str,
        position: u64,
        length: u32,
    ) -> Result<Bytes>;

    /// Deletes objects nothing refers to any more.
    async fn delete_objects(&self, objects: Vec<String>);

    /// Compaction: copies the byte ranges of `entries` (a contiguous run of `tp`'s index, in
    /// order) verbatim into one new segment object and returns the index entry covering them
    /// there. The caller switches the index to it, or deletes the segment if the switch is
    /// refused.
    async fn compact(&self, tp: TopicPartition, entries: Vec<IndexEntry>) -> Result<IndexEntry>;

    /// Key compaction: writes `data` (record batches of `tp` that the caller rebuilt, covering
    /// `info`) as a new segment object and returns its index entry. Its key ends in
    /// [`CLEAN_SEGMENT_SUFFIX`], so later passes know the range is already clean.
    async fn write_segment(
        &self,
        tp: TopicPartition,
        info: SegmentInfo,
        data: Bytes,
    ) -> Result<IndexEntry>;

    /// Every object in the store.
    async fn list_objects(&self) -> Result<Vec<String>>;

    /// Flushes what is buffered and stops the flusher.
    async fn shutdown(&self);

    /// How old an object nothing refers to must be before it may be deleted as an orphan:
    /// zero when this process is the only writer (whatever it had in flight died with the
    /// previous run), longer when other processes may be between writing an object and
    /// committing it.
    fn orphan_grace(&self) -> Duration {
        Duration::ZERO
    }
}

/// What a segment written by [`Storage::write_segment`] covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub max_timestamp: i64,
    pub batches: u32,
}

/// The key suffix of segments written by key compaction.
pub const CLEAN_SEGMENT_SUFFIX: &str = ".kseg";

/// When an object was written (ms since the epoch), from its key (`data/<ms>-<uuid>.wseg`).
pub fn object_written_at(key: &str) -> Option<i64> {
    let name = key.rsplit('/').next()?;
    name.split('-').next()?.parse().ok()
}

/// Tuning of [`ObjectStorage`].
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Flush when this many bytes are buffered.
    pub flush_bytes: usize,
    /// Flush at most this long after the first buffered batch arrived.
    pub flush_interval: Duration,
    /// Upper bound of buffered plus flushing bytes (back-pressure beyond it).
    pub max_buffered_bytes: usize,
    /// Bytes of objects kept in the memory read cache.
    pub cache_bytes: u64,
    /// Attempts per object write before the appends fail.
    pub write_attempts: u32,
    /// The local-disk read cache of a remote object store: directory and byte bound
    /// (None: no disk tier; unused for local-disk object stores).
    pub disk_cache: Option<(PathBuf, u64)>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            flush_bytes: 4 << 20,
            flush_interval: Duration::ZERO,
            max_buffered_bytes: 32 << 20,
            cache_bytes: 32 << 20,
            write_attempts: 5,
            disk_cache: None,
        }
    }
}

/// An object store plus, for `file://`, the directory it lives in (to fsync after writes).
#[derive(Debug, Clone)]
pub struct ObjectStoreTarget {
    pub store: Arc<dyn ObjectStore>,
    pub local_root: Option<PathBuf>,
}

/// Builds the object store for any URL: `s3://bucket[/prefix][?region=R&endpoint=URL]`
/// ([`s3`]), `file:///abs/path` or `memory://`.
pub async fn open(url: &str) -> Result<ObjectStoreTarget> {
    if url.starts_with("s3://") {
        return s3::open_s3(url).await;
    }
    open_object_store(url)
}

/// Builds a local object store for a URL: `file:///abs/path` or `memory://`.
pub fn open_object_store(url: &str) -> Result<ObjectStoreTarget> {
    if let Some(path) = url.strip_prefix("file://") {
        let root = PathBuf::from(path);
        std::fs::create_dir_all(&root)
            .map_err(|e| StorageError::Unavailable(format!("create {}: {e}", root.display())))?;
        let root = root
            .canonicalize()
            .map_err(|e| StorageError::Unavailable(format!("resolve {}: {e}", root.display())))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        Ok(ObjectStoreTarget {
            store: Arc::new(store),
            local_root: Some(root),
        })
    } else if url == "memory://" || url == "memory:" {
        Ok(ObjectStoreTarget {
            store: Arc::new(object_store::memory::InMemory::new()),
            local_root: None,
        })
    } else {
        Err(StorageError::Unavailable(format!(
            "unsupported object store URL '{url}': use s3://bucket/prefix, file:///path or memory://"
        )))
    }
}

const DATA_PREFIX: &str = "data";

struct Pending {
    batch: AppendBatch,
    done: oneshot::Sender<Result<Option<PartitionCommit>>>,
    _reservation: Reservation,
}

#[derive(Default)]
struct Buffer {
    by_partition: BTreeMap<TopicPartition, Vec<Pending>>,
    bytes: usize,
    first_at: Option<Instant>,
    closed: bool,
}

struct Inner {
    target: ObjectStoreTarget,
    /// `target.store` behind the decorators ([`store::stack`]): every object store call of
    /// the service goes through it.
    store: Arc<dyn ObjectStore>,
    config: StorageConfig,
    sink: Arc<dyn IndexSink>,
    observer: Arc<dyn CommitObserver>,
    buffer: Mutex<Buffer>,
    wake: Notify,
    space: Arc<Semaphore>,
    cache: moka::future::Cache<String, Bytes>,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
    /// Aligned buffer reused by local-disk object writes (one flush at a time).
    scratch: Arc<Mutex<local::AlignedBuf>>,
    metrics: StorageMetrics,
    disk: Option<disk_cache::DiskCache>,
}

/// The storage service over an `object_store` backend.
#[derive(Clone)]
pub struct ObjectStorage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl ObjectStorage {
    /// Starts the storage service (its flusher task) over `target`, with nobody observing
    /// commits (a storage node: its replies carry them).
    pub fn start(
        target: ObjectStoreTarget,
        config: StorageConfig,
        sink: Arc<dyn IndexSink>,
    ) -> Self {
        Self::start_observed(target, config, sink, Arc::new(NoObserver))
    }

    /// Starts the storage service over `target`: each flush writes one object, commits its
    /// ranges through `sink`, tells `observer` about every commit that landed, and only then
    /// completes the appends.
    pub fn start_observed(
        target: ObjectStoreTarget,
        config: StorageConfig,
        sink: Arc<dyn IndexSink>,
        observer: Arc<dyn CommitObserver>,
    ) -> Self {
        let cache = moka::future::Cache::builder()
            .weigher(|_k: &String, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .max_capacity(config.cache_bytes)
            .build();
        let disk = match (&config.disk_cache, &target.local_root) {
            (Some((dir, bytes)), None) => match disk_cache::DiskCache::open(dir, *bytes) {
                Ok(cache) => Some(cache),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "no disk cache");
                    None
                }
            },
            _ => None,
        };
        let metrics = StorageMetrics::default();
        let store = store::stack(
            target.store.clone(),
            metrics.clone(),
            store::RetryPolicy {
                write_attempts: config.write_attempts,
                // Reads, listings and deletes were never retried here: the caller retries.
                read_attempts: 1,
                initial_delay: Duration::from_millis(10),
                max_delay: Duration::from_secs(1),
                // Object keys are fresh UUIDs: an existing object is a write of ours that
                // landed although its response was lost.
                create_owns_existing: true,
            },
        );
        let inner = Arc::new(Inner {
            disk,
            store,
            space: Arc::new(Semaphore::new(config.max_buffered_bytes.max(1))),
            target,
            config,
            sink,
            observer,
            buffer: Mutex::new(Buffer::default()),
            wake: Notify::new(),
            cache,
            flusher: Mutex::new(None),
            stop: CancellationToken::new(),
            scratch: Arc::new(Mutex::new(local::AlignedBuf::default())),
            metrics,
        });
        let handle = tokio::spawn(flush_loop(inner.clone()));
        if let Ok(mut slot) = inner.flusher.lock() {
            *slot = Some(handle);
        }
        ObjectStorage { inner }
    }

    /// The service's counters (object requests, cache hits, flushes).
    pub fn metrics(&self) -> &StorageMetrics {
        &self.inner.metrics
    }
}

fn lock(inner: &Inner) -> std::sync::MutexGuard<'_, Buffer> {
    // A poisoned buffer lock means a panic mid-update elsewhere; the data is still usable.
    inner.buffer.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl Storage for ObjectStorage {
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.metrics.register(registry);
    }

    async fn reserve(&self, bytes: usize) -> Result<Reservation> {
        Reservation::acquire(
            &self.inner.space,
            bytes,
            self.inner.config.max_buffered_bytes,
        )
        .await
    }

    fn submit(&self, batch: AppendBatch, reservation: Reservation) -> Result<AppendTicket> {
        let (done, ticket) = oneshot::channel();
        let wake = {
            let mut buf = lock(&self.inner);
            if buf.closed {
                return Err(StorageError::ShuttingDown);
            }
            buf.bytes += batch.data.len();
            let first = buf.first_at.is_none();
            if first {
                buf.first_at = Some(Instant::now());
            }
            let tp = batch.tp;
            buf.by_partition.entry(tp).or_default().push(Pending {
                batch,
                done,
                _reservation: reservation,
            });
            first || buf.bytes >= self.inner.config.flush_bytes
        };
        if wake {
            self.inner.wake.notify_one();
        }
        Ok(ticket)
    }

    fn discard(&self, tp: TopicPartition) {
        let dropped = {
            let mut buf = lock(&self.inner);
            let dropped = buf.by_partition.remove(&tp).unwrap_or_default();
            let bytes: usize = dropped.iter().map(|p| p.batch.data.len()).sum();
            buf.bytes = buf.bytes.saturating_sub(bytes);
            dropped
        };
        for pending in dropped {
            let _ = pending.done.send(Err(StorageError::Discarded));
        }
    }

    async fn read(
        &self,
        _tp: TopicPartition,
        object: &str,
        position: u64,
        length: u32,
    ) -> Result<Bytes> {
        let start =
            usize::try_from(position).map_err(|_| StorageError::Corrupt("position".into()))?;
        let end = start.saturating_add(length as usize);
        if let Some(whole) = self.inner.cache.get(object).await {
            self.inner.metrics.cache(false);
            return slice_of(object, &whole, start, end);
        }
        if self.inner.target.local_root.is_none() {
            // A remote store: ranged GETs of aligned chunks, with read-ahead.
            return read_chunks(&self.inner, object, start, end).await;
        }
        self.inner.metrics.cache(true);
        let store = self.inner.store.clone();
        let key = object.to_string();
        let metrics = self.inner.metrics.clone();
        let whole = self
            .inner
            .cache
            .try_get_with(key.clone(), async move {
                let path = ObjectPath::from(key.as_str());
                metrics.request("get", 0);
                match store.get(&path).await {
                    Ok(result) => {
                        let size = result.meta.size;
                        let bytes = result
                            .bytes()
                            .await
                            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
                        metrics.request_bytes("get", bytes.len());
                        // A torn read is not cached (the next read fetches it again).
                        if bytes.len() as u64 != size {
                            return Err(StorageError::Unavailable(format!(
                                "short read of '{key}': {} of {size} bytes",
                                bytes.len()
                            )));
                        }
                        Ok(bytes)
                    }
                    Err(object_store::Error::NotFound { .. }) => Err(StorageError::NotFound(key)),
                    Err(e) => Err(StorageError::Unavailable(e.to_string())),
                }
            })
            .await
            .map_err(|e| (*e).clone())?;
        // Keep the cache within its byte bound (moka evicts lazily).
        self.inner.cache.run_pending_tasks().await;
        slice_of(object, &whole, start, end)
    }

    async fn delete_objects(&self, objects: Vec<String>) {
        for key in objects {
            self.inner.cache.invalidate(&key).await;
            let path = ObjectPath::from(key.as_str());
            self.inner.metrics.request("delete", 0);
            match self.inner.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(object = %key, error = %e, "object delete failed"),
            }
        }
    }

    async fn compact(&self, tp: TopicPartition, entries: Vec<IndexEntry>) -> Result<IndexEntry> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Err(StorageError::Invalid("nothing to compact".into()));
        };
        if entries.iter().any(|e| e.tp != tp)
            || entries
                .windows(2)
                .any(|w| w[0].last_offset + 1 != w[1].base_offset)
        {
            return Err(StorageError::Invalid(
                "compaction needs a contiguous run of one partition's entries".into(),
            ));
        }
        let total: usize = entries.iter().map(|e| e.length as usize).sum();
        let length = u32::try_from(total)
            .map_err(|_| StorageError::Invalid(format!("segment of {total} bytes")))?;
        let mut data = BytesMut::with_capacity(total + 128);
        for e in &entries {
            let bytes = self.read(tp, &e.object, e.position, e.length).await?;
            if bytes.len() != e.length as usize {
                return Err(StorageError::Corrupt(format!(
                    "{}: {} bytes at {} are {} bytes long",
                    e.object,
                    e.length,
                    e.position,
                    bytes.len()
                )));
            }
            data.extend_from_slice(&bytes);
        }
        let footer = FooterEntry {
            tp,
            base_offset: first.base_offset,
            last_offset: last.last_offset,
            max_timestamp: entries.iter().map(|e| e.max_timestamp).max().unwrap_or(-1),
            position: 0,
            length,
            batches: entries.iter().map(|e| e.batches).sum(),
        };
        let entry = store_segment(&self.inner, footer, data, ".wseg").await?;
        self.inner.metrics.compacted(entries.len());
        Ok(entry)
    }

    async fn write_segment(
        &self,
        tp: TopicPartition,
        info: SegmentInfo,
        data: Bytes,
    ) -> Result<IndexEntry> {
        let length = u32::try_from(data.len())
            .map_err(|_| StorageError::Invalid(format!("segment of {} bytes", data.len())))?;
        if info.last_offset < info.base_offset || data.is_empty() {
            return Err(StorageError::Invalid(format!(
                "empty or inverted segment {info:?}"
            )));
        }
        let footer = FooterEntry {
            tp,
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            max_timestamp: info.max_timestamp,
            position: 0,
            length,
            batches: info.batches,
        };
        let mut buf = BytesMut::with_capacity(data.len() + 128);
        buf.extend_from_slice(&data);
        let entry = store_segment(&self.inner, footer, buf, CLEAN_SEGMENT_SUFFIX).await?;
        self.inner.metrics.compacted(1);
        Ok(entry)
    }

    async fn list_objects(&self) -> Result<Vec<String>> {
        self.inner.metrics.request("list", 0);
        let prefix = ObjectPath::from(DATA_PREFIX);
        let metas: Vec<_> = self
            .inner
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
    }

    async fn shutdown(&self) {
        lock(&self.inner).closed = true;
        self.inner.stop.cancel();
        self.inner.wake.notify_one();
        let handle = self.inner.flusher.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

async fn flush_loop(inner: Arc<Inner>) {
    loop {
        // Wait for the first batch (or shutdown).
        let (first_at, bytes, closed) = {
            let buf = lock(&inner);
            (buf.first_at, buf.bytes, buf.closed)
        };
        let Some(first_at) = first_at else {
            if closed {
                return;
            }
            tokio::select! {
                _ = inner.wake.notified() => {}
                _ = inner.stop.cancelled() => {}
            }
            continue;
        };
        if bytes < inner.config.flush_bytes && !closed {
            let deadline = first_at + inner.config.flush_interval;
            if Instant::now() < deadline {
                tokio::select! {
                    _ = inner.wake.notified() => {}
                    _ = tokio::time::sleep_until(deadline.into()) => {}
                    _ = inner.stop.cancelled() => {}
                }
                continue;
            }
        }
        let taken = take_object(&mut lock(&inner), inner.config.flush_bytes);
        if !taken.is_empty() {
            flush(&inner, taken).await;
        }
    }
}

/// Takes the appends of the next object: everything buffered, or, when more than
/// `flush_bytes` piled up while the previous flush ran, about `flush_bytes` of it (each
/// partition's oldest appends first; the rest waits for the next object, in order).
fn take_object(buf: &mut Buffer, flush_bytes: usize) -> BTreeMap<TopicPartition, Vec<Pending>> {
    if buf.bytes <= flush_bytes {
        buf.bytes = 0;
        buf.first_at = None;
        return std::mem::take(&mut buf.by_partition);
    }
    let mut taken = BTreeMap::new();
    let mut size = 0usize;
    let keys: Vec<TopicPartition> = buf.by_partition.keys().copied().collect();
    for tp in keys {
        if size >= flush_bytes {
            break;
        }
        let Some(queue) = buf.by_partition.get_mut(&tp) else {
            continue;
        };
        let mut n = 0;
        while n < queue.len() && size < flush_bytes {
            size += queue[n].batch.data.len();
            n += 1;
        }
        let rest = queue.split_off(n);
        let head = std::mem::replace(queue, rest);
        if queue.is_empty() {
            buf.by_partition.remove(&tp);
        }
        taken.insert(tp, head);
    }
    buf.bytes = buf.bytes.saturating_sub(size);
    if buf.by_partition.is_empty() {
        buf.first_at = None;
    }
    taken
}

/// One partition's contiguous run of pending appends in an object.
struct Run {
    pendings: Vec<Pending>,
    entry: FooterEntry,
    leader_epoch: LeaderEpoch,
    producers: Vec<ProducerBatchState>,
}

async fn flush(inner: &Inner, taken: BTreeMap<TopicPartition, Vec<Pending>>) {
    let total: usize = taken.values().flatten().map(|p| p.batch.data.len()).sum();
    // The object starts on a 4 KiB boundary inside its buffer, so that local disk writes it
    // with O_DIRECT straight from this buffer (no extra copy) and the cache keeps it as is.
    let mut data = BytesMut::with_capacity(total + 128 + taken.len() * 64 + local::ALIGN);
    let pad = data.as_ptr().align_offset(local::ALIGN).min(local::ALIGN);
    data.resize(pad, 0);
    let mut runs: Vec<Run> = Vec::with_capacity(taken.len());
    for (tp, pendings) in taken {
        let mut run: Option<Run> = None;
        for pending in pendings {
            let b = &pending.batch;
            let continues = run.as_ref().is_some_and(|r| {
                r.entry.last_offset + 1 == b.base_offset && r.leader_epoch == b.leader_epoch
            });
            match run.as_mut() {
                Some(r) if continues => {
                    r.entry.last_offset = b.last_offset;
                    r.entry.max_timestamp = r.entry.max_timestamp.max(b.max_timestamp);
                    r.entry.length += b.data.len() as u32;
                    r.entry.batches += b.batches;
                    // Every batch's sequence range, not only the producer's last: after a
                    // failover or restart the next leader must recognize a retry of any
                    // of them (a client may have up to five in flight).
                    if let Some(p) = b.producer {
                        r.producers.push(p);
                    }
                    data.extend_from_slice(&b.data);
                    r.pendings.push(pending);
                }
                Some(_) => {
                    // A gap means an earlier append of this partition failed after these were
                    // queued: they can never commit in order.
                    let _ = pending.done.send(Err(StorageError::Discarded));
                }
                None => {
                    let entry = FooterEntry {
                        tp,
                        base_offset: b.base_offset,
                        last_offset: b.last_offset,
                        max_timestamp: b.max_timestamp,
                        position: (data.len() - pad) as u64,
                        length: b.data.len() as u32,
                        batches: b.batches,
                    };
                    data.extend_from_slice(&b.data);
                    run = Some(Run {
                        leader_epoch: b.leader_epoch,
                        producers: b.producer.into_iter().collect(),
                        entry,
                        pendings: vec![pending],
                    });
                }
            }
        }
        runs.extend(run);
    }
    let entries: Vec<FooterEntry> = runs.iter().map(|r| r.entry).collect();
    object::write_footer(&mut data, &entries);
    let object = data.freeze().slice(pad..);
    let key = new_object_key(".wseg");
    let started = Instant::now();
    inner.metrics.request("put", object.len());
    if let Err(e) = write_object(inner, &key, object.clone()).await {
        tracing::error!(object = %key, error = %e, "object write failed; failing its appends");
        fail_all(runs, &e);
        return;
    }
    let written = started.elapsed();
    if let Some(disk) = &inner.disk {
        // The tail on local disk too: once the object leaves memory, its chunks are read
        // from disk, not fetched again.
        for (i, at) in (0..object.len()).step_by(READ_CHUNK).enumerate() {
            let end = (at + READ_CHUNK).min(object.len());
            disk.put(chunk_key(&key, i), object.slice(at..end));
        }
    }
    inner.cache.insert(key.clone(), object.clone()).await;
    // moka evicts lazily; without this the cache holds well past its byte bound between
    // operations (measured: ~150 MB over a 64 MB bound after a produce run).
    inner.cache.run_pending_tasks().await;
    let commits: Vec<PartitionCommit> = runs
        .iter()
        .map(|r| PartitionCommit {
            leader_epoch: r.leader_epoch,
            entry: r.entry.to_index_entry(&key),
            producers: r.producers.clone(),
        })
        .collect();
    let runs_len = runs.len();
    match inner.sink.commit(&commits).await {
        Ok(outcomes) => {
            let any_ok = outcomes.iter().any(|o| o.is_ok());
            // The high watermark moves here, before any append of this flush completes.
            inner.observer.committed_all(
                &mut commits
                    .iter()
                    .zip(&outcomes)
                    .filter(|(_, o)| o.is_ok())
                    .map(|(c, _)| c),
            );
            for ((run, outcome), commit) in runs.into_iter().zip(outcomes).zip(commits) {
                match outcome {
                    Ok(()) => {
                        let mut commit = Some(commit);
                        for pending in run.pendings {
                            let _ = pending.done.send(Ok(commit.take()));
                        }
                    }
                    Err(refused) => {
                        for pending in run.pendings {
                            let _ = pending
                                .done
                                .send(Err(StorageError::Refused(refused.clone())));
                        }
                    }
                }
            }
            if !any_ok {
                delete_unreferenced(inner, key.clone()).await;
            }
        }
        Err(e) => {
            // The commit's outcome is unknown (it may have landed before the error): the
            // object stays; if nothing refers to it, the start-up sweep of unreferenced
            // objects removes it.
            tracing::error!(object = %key, error = %e, "index commit failed; failing its appends");
            fail_all(runs, &StorageError::Unavailable(e));
        }
    }
    inner
        .metrics
        .flushed(object.len(), runs_len, written, started.elapsed());
    tracing::trace!(object = %key, bytes = object.len(), write_ms = written.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64, "flushed");
}

/// A fresh object key: `data/<ms since the epoch>-<uuid><suffix>` (the time lets the orphan
/// sweep leave recent objects alone).
fn new_object_key(suffix: &str) -> String {
    format!(
        "{DATA_PREFIX}/{:013}-{}{suffix}",
        weir_common::now_ms(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Writes one partition's segment (`data` plus a one-entry footer) under a new key.
async fn store_segment(
    inner: &Inner,
    footer: FooterEntry,
    mut data: BytesMut,
    suffix: &str,
) -> Result<IndexEntry> {
    object::write_footer(&mut data, std::slice::from_ref(&footer));
    let key = new_object_key(suffix);
    let object = data.freeze();
    inner.metrics.request("put", object.len());
    write_object(inner, &key, object).await?;
    Ok(footer.to_index_entry(&key))
}

fn fail_all(runs: Vec<Run>, error: &StorageError) {
    for run in runs {
        for pending in run.pendings {
            let _ = pending.done.send(Err(error.clone()));
        }
    }
}

async fn delete_unreferenced(inner: &Inner, key: String) {
    inner.cache.invalidate(&key).await;
    let _ = inner.store.delete(&ObjectPath::from(key.as_str())).await;
}

/// Writes an object so that it is durable when this returns: create-only (a key is never
/// overwritten), retried with backoff ([`store::RetryingStore`]), and on local disk fsynced
/// with its directory.
async fn write_object(inner: &Inner, key: &str, object: Bytes) -> Result<()> {
    if let Some(root) = &inner.target.local_root {
        let (root, key_owned) = (root.clone(), key.to_string());
        let scratch = inner.scratch.clone();
        return tokio::task::spawn_blocking(move || {
            let mut scratch = scratch.lock().unwrap_or_else(|e| e.into_inner());
            local::write_durable(&root, &key_owned, &object, &mut scratch)
        })
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))?
        .map_err(|e| StorageError::Unavailable(format!("writing object {key}: {e}")));
    }
    let path = ObjectPath::from(key);
    if object.len() > MULTIPART_THRESHOLD {
        return write_multipart(inner, &path, object).await;
    }
    // Retried with backoff by the store's RetryingStore (`write_attempts` attempts); an
    // `AlreadyExists` after a failed attempt is that attempt having landed (keys are unique).
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    inner
        .store
        .put_opts(&path, PutPayload::from(object), opts)
        .await
        .map(|_| ())
        .map_err(|e| StorageError::Unavailable(e.to_string()))
}

fn slice_of(object: &str, whole: &Bytes, start: usize, end: usize) -> Result<Bytes> {
    if end > whole.len() {
        return Err(StorageError::Corrupt(format!(
            "range {start}..{end} beyond object '{object}' of {} bytes",
            whole.len()
        )));
    }
    Ok(whole.slice(start..end))
}

/// Ranged reads of remote objects are made of aligned chunks of this size.
const READ_CHUNK: usize = 1 << 20;
/// Chunks fetched ahead of a read, in the background, for the next sequential read.
const READ_AHEAD_CHUNKS: usize = 4;

fn chunk_key(object: &str, chunk: usize) -> String {
    format!("{object}#{chunk}")
}

/// Fetches one aligned chunk of a remote object into the cache (shared by concurrent
/// readers). The last chunk of an object is shorter; a chunk past the end is an error. A
/// chunk shorter than the object's size says it should be (a torn read) is an error and is
/// not cached, so the next read fetches it again.
async fn fetch_chunk(inner: &Inner, object: &str, chunk: usize) -> Result<Bytes> {
    let store = inner.store.clone();
    let metrics = inner.metrics.clone();
    let key = object.to_string();
    let miss = !inner.cache.contains_key(&chunk_key(object, chunk));
    inner.metrics.cache(miss);
    let disk = inner.disk.clone();
    let bytes = inner
        .cache
        .try_get_with(chunk_key(object, chunk), async move {
            if let Some(disk) = &disk {
                let hit = disk.get(&chunk_key(&key, chunk)).await;
                metrics.disk_cache(hit.is_some());
                if let Some(bytes) = hit {
                    return Ok(bytes);
                }
            }
            let path = ObjectPath::from(key.as_str());
            let from = (chunk * READ_CHUNK) as u64;
            let range = from..from + READ_CHUNK as u64;
            metrics.request("get", 0);
            let options = object_store::GetOptions::default().with_range(Some(range));
            match store.get_opts(&path, options).await {
                Ok(result) => {
                    let size = result.meta.size;
                    let bytes = result
                        .bytes()
                        .await
                        .map_err(|e| StorageError::Unavailable(e.to_string()))?;
                    metrics.request_bytes("get", bytes.len());
                    let expected = size.saturating_sub(from).min(READ_CHUNK as u64);
                    if bytes.len() as u64 != expected {
                        return Err(StorageError::Unavailable(format!(
                            "short read of '{key}' chunk {chunk}: {} of {expected} bytes",
                            bytes.len()
                        )));
                    }
                    if let Some(disk) = &disk {
                        disk.put(chunk_key(&key, chunk), bytes.clone());
                    }
                    Ok(bytes)
                }
                Err(object_store::Error::NotFound { .. }) => Err(StorageError::NotFound(key)),
                Err(e) => Err(StorageError::Unavailable(e.to_string())),
            }
        })
        .await
        .map_err(|e| (*e).clone())?;
    if miss {
        inner.cache.run_pending_tasks().await;
    }
    Ok(bytes)
}

/// Reads `start..end` of a remote object from its chunks (fetched concurrently), then
/// starts fetching the next chunks for a reader that goes on sequentially.
async fn read_chunks(inner: &Arc<Inner>, object: &str, start: usize, end: usize) -> Result<Bytes> {
    if start >= end {
        return Ok(Bytes::new());
    }
    let first = start / READ_CHUNK;
    let last = (end - 1) / READ_CHUNK;
    let chunks: Vec<Bytes> = futures::stream::iter(first..=last)
        .map(|c| fetch_chunk(inner, object, c))
        .buffered(8)
        .try_collect()
        .await?;
    let mut out = BytesMut::with_capacity(end - start);
    for (i, chunk) in chunks.iter().enumerate() {
        let chunk_start = (first + i) * READ_CHUNK;
        let from = start.max(chunk_start) - chunk_start;
        let to = (end.min(chunk_start + READ_CHUNK) - chunk_start).min(chunk.len());
        if from > to {
            break;
        }
        out.extend_from_slice(&chunk[from..to]);
    }
    if out.len() != end - start {
        return Err(StorageError::Corrupt(format!(
            "range {start}..{end} beyond object '{object}'"
        )));
    }
    // Read-ahead: only while the object goes on (the last chunk read was full).
    if chunks.last().is_some_and(|c| c.len() == READ_CHUNK) {
        let inner = inner.clone();
        let object = object.to_string();
        tokio::spawn(async move {
            for c in last + 1..=last + READ_AHEAD_CHUNKS {
                if inner.cache.contains_key(&chunk_key(&object, c)) {
                    continue;
                }
                match fetch_chunk(&inner, &object, c).await {
                    Ok(b) if b.len() == READ_CHUNK => {}
                    // The end of the object, or an error a real read will report.
                    _ => break,
                }
            }
        });
    }
    Ok(out.freeze())
}

/// Objects larger than this are uploaded in parts (S3 multipart upload).
const MULTIPART_THRESHOLD: usize = 16 << 20;
/// Part size of a multipart upload.
const PART_BYTES: usize = 8 << 20;

/// Uploads a large object in parts, a few at a time. Keys are unique (a fresh UUID per
/// object), so no other writer can target the same key; a failed upload is aborted.
async fn write_multipart(inner: &Inner, path: &ObjectPath, object: Bytes) -> Result<()> {
    let upload = inner
        .store
        .put_multipart(path)
        .await
        .map_err(|e| StorageError::Unavailable(format!("starting upload of {path}: {e}")))?;
    let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut at = 0;
    while at < object.len() {
        let end = (at + PART_BYTES).min(object.len());
        if let Err(e) = writer.wait_for_capacity(4).await {
            let _ = writer.abort().await;
            return Err(StorageError::Unavailable(format!("uploading {path}: {e}")));
        }
        writer.put(object.slice(at..end));
        at = end;
    }
    writer
        .finish()
        .await
        .map(|_| ())
        .map_err(|e| StorageError::Unavailable(format!("completing upload of {path}: {e}")))
}

/// Reads an object's footer (used by tools and tests to check an object on its own).
pub async fn read_object_index(storage: &ObjectStorage, object: &str) -> Result<Vec<IndexEntry>> {
    let path = ObjectPath::from(object);
    let bytes = storage
        .inner
        .store
        .get(&path)
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))?
        .bytes()
        .await
        .map_err(|e| StorageError::Unavailable(e.to_string()))?;
    let entries = object::read_footer(&bytes).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    Ok(entries.iter().map(|e| e.to_index_entry(object)).collect())
}

#[cfg(test)]
mod contract_tests;
#[cfg(test)]
mod tests;
