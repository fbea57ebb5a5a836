//! The local-disk tier of the read cache, for remote object stores: chunks of objects in
//! files under one directory, bounded by bytes, least recently used evicted (the file is
//! deleted). It starts empty: the directory is cleared when the service starts, so a file
//! on disk is always one this process wrote whole.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Chunk writes in flight at most (32 MiB of 1 MiB chunks).
const MAX_WRITES_IN_FLIGHT: usize = 32;

/// The disk tier. Cheap to clone.
#[derive(Clone)]
pub struct DiskCache {
    dir: Arc<PathBuf>,
    /// Chunk key -> its size; evicting an entry deletes its file.
    index: moka::future::Cache<String, u32>,
    /// Bounds the writes in flight (each holds its chunk in memory); beyond it, chunks are
    /// not cached rather than queued.
    writes: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn file_name(key: &str) -> String {
    // Keys are object keys plus '#<chunk>': make them flat, safe file names.
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl DiskCache {
    /// A cache of at most `bytes` in `dir` (created, and emptied of earlier contents).
    /// Blocking: called once while the service starts, before it serves anything.
    pub fn open(dir: &Path, bytes: u64) -> std::io::Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let dir = Arc::new(dir.to_path_buf());
        let evict_dir = dir.clone();
        let index = moka::future::Cache::builder()
            .weigher(|_k: &String, size: &u32| *size)
            .max_capacity(bytes)
            .eviction_listener(move |key: Arc<String>, _size, _cause| {
                // The listener runs on the runtime (inside cache calls): delete the file on
                // the blocking pool, never here. A later write of the same key may race the
                // delete; the loser is only a later miss (`get` drops an unreadable entry).
                let path = evict_dir.join(file_name(&key));
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(async move {
                            let _ = tokio::fs::remove_file(path).await;
                        });
                    }
                    Err(_) => {
                        let _ = std::fs::remove_file(path);
                    }
                }
            })
            .build();
        Ok(DiskCache {
            dir,
            index,
            writes: Arc::new(tokio::sync::Semaphore::new(MAX_WRITES_IN_FLIGHT)),
        })
    }

    /// The cached chunk, if it is on disk.
    pub async fn get(&self, key: &str) -> Option<Bytes> {
        self.index.get(key).await?;
        match tokio::fs::read(self.dir.join(file_name(key))).await {
            Ok(data) => Some(Bytes::from(data)),
            Err(_) => {
                self.index.invalidate(key).await;
                None
            }
        }
    }

    /// Stores a chunk (in the background; a failed or skipped write only means a later miss).
    pub fn put(&self, key: String, data: Bytes) {
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            return;
        };
        let cache = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(size) = u32::try_from(data.len()) else {
                return;
            };
            let path = cache.dir.join(file_name(&key));
            let tmp = cache.dir.join(format!("{}.tmp", file_name(&key)));
            let written = async {
                tokio::fs::write(&tmp, &data).await?;
                tokio::fs::rename(&tmp, &path).await
            }
            .await;
            match written {
                Ok(()) => {
                    cache.index.insert(key, size).await;
                    cache.index.run_pending_tasks().await;
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    tracing::debug!(error = %e, "disk cache write failed");
                }
            }
        });
    }
}
