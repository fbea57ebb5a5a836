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
    /// `existing`: an `AlreadyExists` is the success it returns, after a failed attempt or
    /// whenever more than one attempt is allowed (the backend's own retry may have landed it).
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
                // Also on the first attempt when retries are allowed: the backend's client
                // retries by itself (object_store retries a 5xx of a conditional PUT that
                // landed, and gets AlreadyExists), so the earlier attempt may be invisible.
                if attempt > 1 || attempts > 1 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FaultPlan, FaultyStore};
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    fn stores(policy: RetryPolicy) -> (RetryingStore, Arc<FaultPlan>, Arc<dyn ObjectStore>) {
        let backend: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let plan = FaultPlan::new(3);
        let faulty = Arc::new(FaultyStore::new(backend.clone(), plan.clone()));
        (RetryingStore::new(faulty, policy), plan, backend)
    }

    fn policy(create_owns_existing: bool) -> RetryPolicy {
        RetryPolicy {
            write_attempts: 4,
            read_attempts: 3,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            create_owns_existing,
        }
    }

    fn create() -> PutOptions {
        PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_within_the_budget() -> anyhow::Result<()> {
        let (s, plan, _) = stores(policy(false));
        let path = Path::from("a");
        plan.fail_next_puts(3);
        s.put(&path, PutPayload::from_static(b"a")).await?;
        plan.fail_next_puts(4);
        assert!(s.put(&path, PutPayload::from_static(b"a")).await.is_err());
        assert_eq!(plan.injected().failed_puts, 7, "4 attempts, not more");
        plan.fail_next_gets(2);
        assert_eq!(s.get(&path).await?.bytes().await?.as_ref(), b"a");
        plan.fail_next_gets(3);
        assert!(s.get(&path).await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() -> anyhow::Result<()> {
        let (s, _plan, _) = stores(policy(true));
        let path = Path::from("b");
        // NotFound is an answer, not a failure.
        assert!(matches!(
            s.get(&path).await,
            Err(object_store::Error::NotFound { .. })
        ));
        // Without unique keys, AlreadyExists on the first attempt is another writer's object.
        let (strict, _, backend) = stores(policy(false));
        backend
            .put(&path, PutPayload::from_static(b"theirs"))
            .await?;
        assert!(matches!(
            strict
                .put_opts(&path, PutPayload::from_static(b"ours"), create())
                .await,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        assert_eq!(backend.get(&path).await?.bytes().await?.as_ref(), b"theirs");
        // With unique keys (the storage service's), it can only be our own write that the
        // backend's client retried: success, nothing overwritten.
        let (owner, _, backend) = stores(policy(true));
        backend
            .put(&path, PutPayload::from_static(b"landed"))
            .await?;
        owner
            .put_opts(&path, PutPayload::from_static(b"landed"), create())
            .await?;
        assert_eq!(backend.get(&path).await?.bytes().await?.as_ref(), b"landed");
        // Only one attempt allowed: nothing retried, so the error stands.
        let (single, _, backend) = stores(RetryPolicy {
            write_attempts: 1,
            ..policy(true)
        });
        backend
            .put(&path, PutPayload::from_static(b"theirs"))
            .await?;
        assert!(matches!(
            single
                .put_opts(&path, PutPayload::from_static(b"ours"), create())
                .await,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn a_create_whose_response_was_lost_is_ours_only_if_allowed() -> anyhow::Result<()> {
        for owns in [true, false] {
            let (s, plan, backend) = stores(policy(owns));
            let path = Path::from("c");
            plan.lose_next_puts(1);
            let result = s
                .put_opts(&path, PutPayload::from_static(b"ours"), create())
                .await;
            assert_eq!(
                result.is_ok(),
                owns,
                "create_owns_existing = {owns}: {result:?}"
            );
            assert_eq!(backend.get(&path).await?.bytes().await?.as_ref(), b"ours");
            // An overwrite is never taken for an earlier attempt.
            plan.lose_next_puts(1);
            assert!(s
                .put(&path, PutPayload::from_static(b"again"))
                .await
                .is_ok());
        }
        Ok(())
    }

    #[tokio::test]
    async fn backoff_doubles_up_to_the_cap() -> anyhow::Result<()> {
        let (s, plan, _) = stores(RetryPolicy {
            write_attempts: 5,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(40),
            ..policy(false)
        });
        plan.fail_next_puts(4);
        let started = std::time::Instant::now();
        s.put(&Path::from("d"), PutPayload::from_static(b"d"))
            .await?;
        // 20 + 40 + 40 + 40 ms of waiting.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(140), "{waited:?}");
        Ok(())
    }
}
