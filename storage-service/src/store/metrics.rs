//! [`MeteredStore`]: counts the calls, bytes and errors of each object store operation into
//! [`StorageMetrics`] (`weir_storage_store_calls`, `weir_storage_store_bytes`).
//!
//! The service's own request counters (`weir_storage_object_requests`/`_bytes`) stay where
//! they are counted today, in lib.rs: they count a put per object even when it goes to local
//! disk without an object store call, so moving them here would change their values.

use crate::StorageMetrics;
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};
use std::sync::Arc;

/// Counts every call of the store it wraps by operation (`put`, `put_multipart`, `get`,
/// `head`, `delete`, `list`, `copy`, `rename`) and outcome, and the bytes moved.
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn ObjectStore>,
    metrics: StorageMetrics,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn ObjectStore>, metrics: StorageMetrics) -> Self {
        MeteredStore { inner, metrics }
    }

    fn outcome<T>(
        &self,
        op: &'static str,
        result: object_store::Result<T>,
    ) -> object_store::Result<T> {
        self.metrics.store_call(op, result.is_ok());
        result
    }
}

impl std::fmt::Display for MeteredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MeteredStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for MeteredStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let bytes = payload.content_length();
        let result = self.inner.put_opts(location, payload, opts).await;
        if result.is_ok() {
            self.metrics.store_bytes("put", bytes);
        }
        self.outcome("put", result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await;
        let upload = self.outcome("put_multipart", upload)?;
        Ok(Box::new(MeteredUpload {
            upload,
            metrics: self.metrics.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head { "head" } else { "get" };
        let mut result = self.outcome(op, self.inner.get_opts(location, options).await)?;
        let metrics = self.metrics.clone();
        result.payload = match result.payload {
            GetResultPayload::Stream(s) => GetResultPayload::Stream(
                s.inspect(move |chunk| {
                    if let Ok(bytes) = chunk {
                        metrics.store_bytes(op, bytes.len());
                    }
                })
                .boxed(),
            ),
            // A local file is read by the caller: count the range it will read.
            file => {
                let len = result.range.end.saturating_sub(result.range.start);
                metrics.store_bytes(op, usize::try_from(len).unwrap_or(usize::MAX));
                file
            }
        };
        Ok(result)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let metrics = self.metrics.clone();
        self.inner
            .delete_stream(locations)
            .inspect(move |r| metrics.store_call("delete", r.is_ok()))
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        metered_list(self.metrics.clone(), self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        metered_list(
            self.metrics.clone(),
            self.inner.list_with_offset(prefix, offset),
        )
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.outcome("list", self.inner.list_with_delimiter(prefix).await)
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.outcome("copy", self.inner.copy_opts(from, to, options).await)
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.outcome("rename", self.inner.rename_opts(from, to, options).await)
    }
}

/// A listing counts as one call, failed if any page failed.
fn metered_list(
    metrics: StorageMetrics,
    stream: BoxStream<'static, object_store::Result<ObjectMeta>>,
) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let failed = Arc::new(AtomicBool::new(false));
    let seen = failed.clone();
    let mut counted = false;
    let tail = metrics.clone();
    stream
        .inspect(move |r| {
            if r.is_err() && !seen.swap(true, Ordering::Relaxed) {
                metrics.store_call("list", false);
            }
        })
        .chain(futures::stream::poll_fn(move |_| {
            // The end of the listing: one successful call unless a page failed.
            if !counted && !failed.load(Ordering::Relaxed) {
                tail.store_call("list", true);
            }
            counted = true;
            std::task::Poll::Ready(None)
        }))
        .boxed()
}

#[derive(Debug)]
struct MeteredUpload {
    upload: Box<dyn MultipartUpload>,
    metrics: StorageMetrics,
}

#[async_trait]
impl MultipartUpload for MeteredUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let bytes = data.content_length();
        let metrics = self.metrics.clone();
        let part = self.upload.put_part(data);
        Box::pin(async move {
            let result = part.await;
            metrics.store_call("put_part", result.is_ok());
            if result.is_ok() {
                metrics.store_bytes("put", bytes);
            }
            result
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let result = self.upload.complete().await;
        self.metrics.store_call("put_complete", result.is_ok());
        result
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.upload.abort().await
    }
}
