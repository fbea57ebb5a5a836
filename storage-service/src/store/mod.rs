//! Object-store decorators in the slatedb manner: each is an [`ObjectStore`] that wraps an
//! `Arc<dyn ObjectStore>` and adds one concern, so the storage service's own code calls a
//! plain object store and the concerns stack in one place ([`stack`]).
//!
//! The stack of [`crate::ObjectStorage`], from the caller down:
//!
//! ```text
//! chunk cache (lib.rs: fetch_chunk, moka + optional disk tier; not a decorator)
//!   -> MeteredStore   counts calls, bytes and errors per operation (after retries)
//!   -> RetryingStore  retries transient errors with capped exponential backoff
//!   -> [FaultyStore]  tests only: injected errors, latency, torn reads, lost responses
//!   -> backend        S3, local directory or memory (object_store)
//! ```
//!
//! Why this order: metrics sit above retry so that a request counts once and an error
//! counts only when the caller sees it (the request counters of the service itself are
//! per call too, see [`crate::StorageMetrics`]); retry sits above faults so that tests see
//! what production sees when the backend misbehaves; the cache sits above everything so a
//! hit costs nothing. A torn read is not an error to the store, so the cache verifies chunk
//! lengths against the object size before it keeps a chunk.
//!
//! What is not decorated: local-disk object writes go through `local::write_durable`
//! (O_DIRECT and fsync of file and directory), not through `put`, so neither retries nor
//! faults apply to them; multipart uploads pass through every layer unretried (a failed
//! upload is aborted and the appends fail, as before).

pub mod faulty;
pub mod metrics;
pub mod retry;

pub use faulty::{FaultCounts, FaultPlan, FaultyStore};
pub use metrics::MeteredStore;
pub use retry::{RetryPolicy, RetryingStore};

use object_store::ObjectStore;
use std::sync::Arc;

/// Whether an object store error may go away if the call is repeated. Errors that state a
/// fact about the object or the request (it is missing, it exists, a precondition failed,
/// the call is unsupported or malformed) never do.
pub fn is_transient(error: &object_store::Error) -> bool {
    use object_store::Error as E;
    !matches!(
        error,
        E::NotFound { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::NotModified { .. }
            | E::NotSupported { .. }
            | E::NotImplemented { .. }
            | E::InvalidPath { .. }
            | E::UnknownConfigurationKey { .. }
    )
}

/// The decorated store the storage service uses over `backend`: metrics over retry.
pub fn stack(
    backend: Arc<dyn ObjectStore>,
    metrics: crate::StorageMetrics,
    policy: RetryPolicy,
) -> Arc<dyn ObjectStore> {
    let retrying: Arc<dyn ObjectStore> = Arc::new(RetryingStore::new(backend, policy));
    Arc::new(MeteredStore::new(retrying, metrics))
}
