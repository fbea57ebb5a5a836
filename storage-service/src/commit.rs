//! The index commit of a flush: the one [`IndexSink`] both deployment shapes use.
//!
//! "Object durable -> index commit -> high watermark" has one owner, the storage service
//! ([`crate::ObjectStorage`], in `weir serve` or inside a `weir storage` node): after an
//! object is durable it commits the object's ranges through [`MetadataSink`] (one
//! conditional transaction in the metadata store, fenced by each partition's leader epoch and
//! next offset), then tells its [`crate::CommitObserver`] and only then completes the
//! appends. The gateway is only ever an observer. See `docs/commit-path.md`.

use crate::IndexSink;
use async_trait::async_trait;
use std::sync::Arc;
use weir_common::{CommitRefused, PartitionCommit};
use weir_metadata_api::MetadataStore;

/// Commits flushed ranges to the metadata store's offset index.
#[derive(Debug)]
pub struct MetadataSink {
    meta: Arc<dyn MetadataStore>,
}

impl MetadataSink {
    pub fn new(meta: Arc<dyn MetadataStore>) -> Self {
        MetadataSink { meta }
    }
}

#[async_trait]
impl IndexSink for MetadataSink {
    async fn commit(
        &self,
        commits: &[PartitionCommit],
    ) -> Result<Vec<Result<(), CommitRefused>>, String> {
        self.meta
            .commit_index(commits.to_vec())
            .await
            .map_err(|e| e.to_string())
    }
}
