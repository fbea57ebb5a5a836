//! The storage service's metrics: object store requests and bytes, read-cache hits and
//! misses, flush sizes and latencies, compaction segments. Registered on the admin API's `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

type Labels = Vec<(&'static str, &'static str)>;

/// Counters of one storage service; cheap to clone (shared cells).
#[derive(Clone, Debug)]
pub struct StorageMetrics {
    requests: Family<Labels, Counter>,
    bytes: Family<Labels, Counter>,
    store_calls: Family<Labels, Counter>,
    store_bytes: Family<Labels, Counter>,
    cache: Family<Labels, Counter>,
    flush_bytes: Histogram,
    flush_partitions: Histogram,
    flush_write_seconds: Histogram,
    flush_seconds: Histogram,
    segments: Counter,
    segment_inputs: Counter,
}

impl Default for StorageMetrics {
    fn default() -> Self {
        StorageMetrics {
            requests: Family::default(),
            bytes: Family::default(),
            store_calls: Family::default(),
            store_bytes: Family::default(),
            cache: Family::default(),
            // 1 KiB .. 64 MiB
            flush_bytes: Histogram::new(exponential_buckets(1024.0, 4.0, 9)),
            flush_partitions: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            // 0.5 ms .. ~8 s
            flush_write_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            flush_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            segments: Counter::default(),
            segment_inputs: Counter::default(),
        }
    }
}

impl StorageMetrics {
    /// One object store request (`op`: put, get, delete, list), with the bytes it moved.
    pub(crate) fn request(&self, op: &'static str, bytes: usize) {
        self.requests.get_or_create(&vec![("op", op)]).inc();
        self.request_bytes(op, bytes);
    }

    pub(crate) fn request_bytes(&self, op: &'static str, bytes: usize) {
        if bytes > 0 {
            self.bytes
                .get_or_create(&vec![("op", op)])
                .inc_by(bytes as u64);
        }
    }

    /// One call to the object store as the decorated stack saw it ([`crate::store::MeteredStore`]):
    /// its operation and whether it failed (after retries).
    pub(crate) fn store_call(&self, op: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.store_calls
            .get_or_create(&vec![("op", op), ("outcome", outcome)])
            .inc();
    }

    /// Bytes a store call moved (put: sent, get: received).
    pub(crate) fn store_bytes(&self, op: &'static str, bytes: usize) {
        if bytes > 0 {
            self.store_bytes
                .get_or_create(&vec![("op", op)])
                .inc_by(bytes as u64);
        }
    }

    /// Object store calls of one operation so far that ended in an error (after retries).
    pub fn store_errors(&self, op: &'static str) -> u64 {
        self.store_calls
            .get_or_create(&vec![("op", op), ("outcome", "error")])
            .get()
    }

    /// Object store calls of one operation so far, by outcome.
    pub fn store_calls(&self, op: &'static str) -> u64 {
        // One family lookup at a time: a lookup holds the family's lock until it is dropped.
        let ok = self
            .store_calls
            .get_or_create(&vec![("op", op), ("outcome", "ok")])
            .get();
        ok + self.store_errors(op)
    }

    /// A read of the memory tier.
    pub(crate) fn cache(&self, miss: bool) {
        let result = if miss { "miss" } else { "hit" };
        self.cache
            .get_or_create(&vec![("tier", "memory"), ("result", result)])
            .inc();
    }

    /// A read of the disk tier.
    pub(crate) fn disk_cache(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache
            .get_or_create(&vec![("tier", "disk"), ("result", result)])
            .inc();
    }

    /// Reads served from the disk tier so far.
    pub fn disk_hits(&self) -> u64 {
        self.cache
            .get_or_create(&vec![("tier", "disk"), ("result", "hit")])
            .get()
    }

    /// A flushed object: its size, partitions, write time and write-plus-commit time.
    pub(crate) fn flushed(
        &self,
        bytes: usize,
        partitions: usize,
        write: Duration,
        total: Duration,
    ) {
        self.flush_bytes.observe(bytes as f64);
        self.flush_partitions.observe(partitions as f64);
        self.flush_write_seconds.observe(write.as_secs_f64());
        self.flush_seconds.observe(total.as_secs_f64());
    }

    /// A compaction segment written from `inputs` index entries.
    pub(crate) fn compacted(&self, inputs: usize) {
        self.segments.inc();
        self.segment_inputs.inc_by(inputs as u64);
    }

    /// Object store requests of one kind so far.
    pub fn requests(&self, op: &'static str) -> u64 {
        self.requests.get_or_create(&vec![("op", op)]).get()
    }

    /// Reads served from the memory tier so far.
    pub fn cache_hits(&self) -> u64 {
        self.cache
            .get_or_create(&vec![("tier", "memory"), ("result", "hit")])
            .get()
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weir_storage_object_requests",
            "Object store requests by operation (put counts objects; retries are inside)",
            self.requests.clone(),
        );
        registry.register(
            "weir_storage_object_bytes",
            "Bytes written (put) and read (get) from the object store",
            self.bytes.clone(),
        );
        registry.register(
            "weir_storage_store_calls",
            "Object store calls by operation and outcome, as the caller sees them (after retries)",
            self.store_calls.clone(),
        );
        registry.register(
            "weir_storage_store_bytes",
            "Bytes moved by object store calls by operation (put: sent, get: received)",
            self.store_bytes.clone(),
        );
        registry.register(
            "weir_storage_cache_requests",
            "Reads of the object cache by tier and result",
            self.cache.clone(),
        );
        registry.register(
            "weir_storage_flush_bytes",
            "Size of each flushed object",
            self.flush_bytes.clone(),
        );
        registry.register(
            "weir_storage_flush_partitions",
            "Partitions in each flushed object",
            self.flush_partitions.clone(),
        );
        registry.register(
            "weir_storage_flush_write_seconds",
            "Time to write each flushed object",
            self.flush_write_seconds.clone(),
        );
        registry.register(
            "weir_storage_flush_seconds",
            "Time to write and commit each flushed object",
            self.flush_seconds.clone(),
        );
        registry.register(
            "weir_storage_compaction_segments",
            "Segment objects written by compaction",
            self.segments.clone(),
        );
        registry.register(
            "weir_storage_compaction_inputs",
            "Index entries merged into compaction segments",
            self.segment_inputs.clone(),
        );
    }
}
