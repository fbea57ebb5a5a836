//! [`RetryingStore`]: repeats object store calls that failed with a transient error, with
//! exponential backoff, a bounded number of times.

use super::is_transient;
use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How [`RetryingStore`] retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts of a put, copy or rename, the first included (0 counts as 1).
    pub write_attempts: u32,
    /// Attempts of a get, head or delimited listing (1: no retry).
    pub read_attempts: u32,
    /// The wait after the first failed attempt; it doubles after each further one.
    pub initial_delay: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
    /// A create-only put ([`PutMode::Create`]) that gets `AlreadyExists` after an earlier
    /// attempt failed counts as a success: the failed attempt landed. Only for callers whose
    /// keys are unique (no other writer can have created the object).
    pub create_owns_existing: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            write_attempts: 5,
            read_attempts: 1,
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
            create_owns_existing: false,
        }
    }
}

/// Retries transient errors ([`is_transient`]) of the store it wraps. Never retries
/// `NotFound`, `AlreadyExists`, `Precondition` or `NotModified`. Streams (listings,
/// deletes) and multipart uploads pass through unretried: a stream cannot be replayed
/// from where it failed.
#[derive(Debug)]
pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
}

impl RetryingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        RetryingStore { inner, policy }
    }

    /// Runs `call` until it succeeds, fails permanently or used up `attempts`.
    /// `existing`: an `AlreadyExists` after a failed attempt is the success it returns.
    async fn retry<T, F, Fut>(
        &self,
        op: &'static str,
        location: &Path,
        attempts: u32,
        existing: Option<fn() -> T>,
        mut call: F,
    ) -> object_store::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let attempts = attempts.max(1);
        let mut delay = self.policy.initial_delay;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let e = match call().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if let (Some(ok), object_store::Error::AlreadyExists { .. }) = (existing, &e) {
                // A retry after a write that did land: the object is ours (keys are unique).
                if attempt > 1 {
                    return Ok(ok());
                }
            }
            if attempt >= attempts || !is_transient(&e) {
                return Err(e);
            }
            tracing::warn!(op, object = %location, attempt, error = %e,
                "object store call failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.policy.max_delay);
        }
    }
}

impl std::fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RetryingStore({})", self.inner)
    }
}

fn owned_put() -> PutResult {
    PutResult {
        e_tag: None,
        version: None,
        extensions: Default::default(),
    }
}

#[async_trait]
impl ObjectStore for RetryingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let existing = (self.policy.create_owns_existing && opts.mode == PutMode::Create)
            .then_some(owned_put as fn() -> PutResult);
        self.retry(
            "put",
            location,
            self.policy.write_attempts,
            existing,
            || self.inner.put_opts(location, payload.clone(), opts.clone()),
        )
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.retry("get", location, self.policy.read_attempts, None, || {
            self.inner.get_opts(location, options.clone())
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        self.retry("list", &at, self.policy.read_attempts, None, || {
            self.inner.list_with_delimiter(prefix)
        })
        .await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.retry("copy", to, self.policy.write_attempts, None, || {
            self.inner.copy_opts(from, to, options.clone())
        })
        .await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.retry("rename", to, self.policy.write_attempts, None, || {
            self.inner.rename_opts(from, to, options.clone())
        })
        .await
    }
}
