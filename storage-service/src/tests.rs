use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use weir_common::TopicId;

#[derive(Default)]
struct RecordingSink {
    commits: Mutex<Vec<Vec<PartitionCommit>>>,
    refuse_partition: Option<i32>,
    calls: AtomicUsize,
}

#[async_trait]
impl IndexSink for RecordingSink {
    async fn commit(
        &self,
        commits: &[PartitionCommit],
    ) -> std::result::Result<Vec<std::result::Result<(), CommitRefused>>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let outcomes = commits
            .iter()
            .map(|c| {
                if Some(c.entry.tp.partition) == self.refuse_partition {
                    Err(CommitRefused::EpochFenced {
                        current: 9,
                        expected: c.leader_epoch,
                    })
                } else {
                    Ok(())
                }
            })
            .collect();
        self.commits
            .lock()
            .map_err(|e| e.to_string())?
            .push(commits.to_vec());
        Ok(outcomes)
    }
}

fn tp(p: i32) -> TopicPartition {
    TopicPartition {
        topic_id: TopicId::from_u128(7),
        partition: p,
    }
}

fn batch(p: i32, base: i64, count: i64, fill: u8) -> AppendBatch {
    AppendBatch {
        tp: tp(p),
        leader_epoch: 1,
        base_offset: base,
        last_offset: base + count - 1,
        max_timestamp: 1000 + base,
        data: Bytes::from(vec![fill; 100]),
        batches: 1,
        producer: None,
    }
}

fn config() -> StorageConfig {
    StorageConfig {
        flush_interval: Duration::from_millis(20),
        ..StorageConfig::default()
    }
}

#[tokio::test]
async fn one_object_per_flush_holds_every_partition() -> anyhow::Result<()> {
    let sink = Arc::new(RecordingSink::default());
    let storage = ObjectStorage::start(open_object_store("memory://")?, config(), sink.clone());
    let mut tickets = Vec::new();
    for (p, base, fill) in [(0, 0, 1u8), (1, 0, 2), (0, 10, 3), (2, 0, 4)] {
        let r = storage.reserve(100).await?;
        tickets.push(storage.submit(batch(p, base, 10, fill), r)?);
    }
    for t in tickets {
        t.await??;
    }
    assert_eq!(
        sink.calls.load(Ordering::SeqCst),
        1,
        "one flush, one commit"
    );
    let commits = sink
        .commits
        .lock()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .concat();
    assert_eq!(commits.len(), 3, "one entry per partition");
    let p0 = &commits[0].entry;
    assert_eq!(
        (p0.base_offset, p0.last_offset, p0.length, p0.batches),
        (0, 19, 200, 2)
    );
    // The bytes read back are the batches in offset order.
    let bytes = storage
        .read(tp(0), &p0.object, p0.position, p0.length)
        .await?;
    assert_eq!(&bytes[..100], &[1u8; 100][..]);
    assert_eq!(&bytes[100..], &[3u8; 100][..]);
    // The object's own footer agrees with what was committed.
    let footer = read_object_index(&storage, &p0.object).await?;
    assert_eq!(
        footer,
        commits.iter().map(|c| c.entry.clone()).collect::<Vec<_>>()
    );
    assert_eq!(storage.list_objects().await?.len(), 1);
    storage.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn refused_commit_fails_only_that_partition() -> anyhow::Result<()> {
    let sink = Arc::new(RecordingSink {
        refuse_partition: Some(1),
        ..Default::default()
    });
    let storage = ObjectStorage::start(open_object_store("memory://")?, config(), sink.clone());
    let a = storage.submit(batch(0, 0, 5, 1), storage.reserve(100).await?)?;
    let b = storage.submit(batch(1, 0, 5, 2), storage.reserve(100).await?)?;
    a.await??;
    assert!(matches!(
        b.await?,
        Err(StorageError::Refused(CommitRefused::EpochFenced { .. }))
    ));
    storage.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn gaps_and_discards_never_commit_out_of_order() -> anyhow::Result<()> {
    let sink = Arc::new(RecordingSink::default());
    let cfg = StorageConfig {
        flush_interval: Duration::from_millis(200),
        ..config()
    };
    let storage = ObjectStorage::start(open_object_store("memory://")?, cfg, sink.clone());
    let first = storage.submit(batch(0, 0, 5, 1), storage.reserve(100).await?)?;
    // Offset 7 does not follow 4: it must be refused rather than indexed after a gap.
    let gap = storage.submit(batch(0, 7, 5, 2), storage.reserve(100).await?)?;
    let other = storage.submit(batch(1, 0, 5, 3), storage.reserve(100).await?)?;
    storage.discard(tp(1));
    assert!(matches!(other.await?, Err(StorageError::Discarded)));
    first.await??;
    assert!(matches!(gap.await?, Err(StorageError::Discarded)));
    let commits = sink
        .commits
        .lock()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .concat();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].entry.last_offset, 4);
    storage.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_flushes_and_then_refuses() -> anyhow::Result<()> {
    let sink = Arc::new(RecordingSink::default());
    let cfg = StorageConfig {
        flush_interval: Duration::from_secs(60),
        ..config()
    };
    let storage = ObjectStorage::start(open_object_store("memory://")?, cfg, sink.clone());
    let t = storage.submit(batch(0, 0, 5, 1), storage.reserve(100).await?)?;
    storage.shutdown().await;
    t.await??;
    let r = storage.reserve(10).await?;
    assert!(matches!(
        storage.submit(batch(0, 5, 1, 1), r),
        Err(StorageError::ShuttingDown)
    ));
    Ok(())
}

#[tokio::test]
async fn local_files_are_written_under_the_root() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("file://{}", dir.path().display());
    let sink = Arc::new(RecordingSink::default());
    let storage = ObjectStorage::start(open_object_store(&url)?, config(), sink);
    storage
        .submit(batch(0, 0, 5, 1), storage.reserve(100).await?)?
        .await??;
    let objects = storage.list_objects().await?;
    assert_eq!(objects.len(), 1);
    assert!(dir.path().join(&objects[0]).is_file());
    storage.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn objects_are_cut_at_flush_bytes_in_partition_order() -> anyhow::Result<()> {
    let sink = Arc::new(RecordingSink::default());
    // A long interval and a 250-byte flush size: ten 100-byte appends make several objects.
    let cfg = StorageConfig {
        flush_interval: Duration::from_millis(50),
        flush_bytes: 250,
        ..config()
    };
    let storage = ObjectStorage::start(open_object_store("memory://")?, cfg, sink.clone());
    let mut tickets = Vec::new();
    for i in 0..10i64 {
        let p = (i % 2) as i32;
        tickets.push(storage.submit(
            batch(p, (i / 2) * 10, 10, i as u8),
            storage.reserve(100).await?,
        )?);
    }
    for t in tickets {
        t.await??;
    }
    let calls = sink
        .commits
        .lock()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .clone();
    assert!(calls.len() >= 2, "{} objects", calls.len());
    for commits in &calls {
        let bytes: u32 = commits.iter().map(|c| c.entry.length).sum();
        assert!(bytes <= 350, "object of {bytes} bytes");
    }
    // Per partition, the committed ranges follow each other without gaps.
    for p in 0..2 {
        let ranges: Vec<(i64, i64)> = calls
            .iter()
            .flatten()
            .filter(|c| c.entry.tp.partition == p)
            .map(|c| (c.entry.base_offset, c.entry.last_offset))
            .collect();
        let mut next = 0;
        for (base, last) in ranges {
            assert_eq!(base, next);
            next = last + 1;
        }
        assert_eq!(next, 50);
    }
    storage.shutdown().await;
    Ok(())
}

/// The S3-compatible server of the test set-up (`scripts/test.sh` starts moto and creates
/// the bucket): `WEIR_TEST_S3_ENDPOINT`, `WEIR_TEST_S3_BUCKET`. Without them the S3 tests
/// are skipped, unless `WEIR_TEST_REQUIRE_S3=1` makes that a failure.
async fn s3_target(test: &str) -> anyhow::Result<Option<ObjectStoreTarget>> {
    let (Ok(endpoint), Ok(bucket)) = (
        std::env::var("WEIR_TEST_S3_ENDPOINT"),
        std::env::var("WEIR_TEST_S3_BUCKET"),
    ) else {
        if std::env::var("WEIR_TEST_REQUIRE_S3").is_ok_and(|v| v == "1") {
            anyhow::bail!("WEIR_TEST_REQUIRE_S3=1 but WEIR_TEST_S3_ENDPOINT/_BUCKET are not set");
        }
        eprintln!("skipped: WEIR_TEST_S3_ENDPOINT is not set (scripts/test.sh sets it)");
        return Ok(None);
    };
    let url = format!(
        "s3://{bucket}/{test}-{}?endpoint={endpoint}&region=us-east-1",
        uuid::Uuid::new_v4().simple()
    );
    Ok(Some(open(&url).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_racing_writers_of_one_key_one_wins() -> anyhow::Result<()> {
    let Some(target) = s3_target("race").await? else {
        return Ok(());
    };
    for round in 0..10 {
        let path = ObjectPath::from(format!("data/contended-{round}"));
        let writers = (0..2u8).map(|w| {
            let store = target.store.clone();
            let path = path.clone();
            tokio::spawn(async move {
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                let body = PutPayload::from(vec![w; 1024 + usize::from(w)]);
                (w, store.put_opts(&path, body, opts).await)
            })
        });
        let mut winners = Vec::new();
        for writer in writers {
            let (w, result) = writer.await?;
            match result {
                Ok(_) => winners.push(w),
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => anyhow::bail!("writer {w}: unexpected error {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        // The object is the winner's, whole.
        let body = target.store.get(&path).await?.bytes().await?;
        let w = winners[0];
        assert_eq!(body.len(), 1024 + usize::from(w));
        assert!(body.iter().all(|b| *b == w));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_objects_round_trip_including_multipart() -> anyhow::Result<()> {
    let Some(target) = s3_target("roundtrip").await? else {
        return Ok(());
    };
    let sink = Arc::new(RecordingSink::default());
    let cfg = StorageConfig {
        // Large enough for one object above the multipart threshold.
        flush_bytes: 40 << 20,
        max_buffered_bytes: 64 << 20,
        flush_interval: Duration::from_millis(200),
        ..config()
    };
    let storage = ObjectStorage::start(target.clone(), cfg, sink.clone());
    let mut tickets = Vec::new();
    // 20 MiB over four partitions: one object, uploaded in parts.
    for i in 0..20i64 {
        let mut b = batch((i % 4) as i32, (i / 4) * 10, 10, i as u8);
        b.data = Bytes::from(vec![i as u8; 1 << 20]);
        let r = storage.reserve(b.data.len()).await?;
        tickets.push(storage.submit(b, r)?);
    }
    for t in tickets {
        t.await??;
    }
    let commits: Vec<PartitionCommit> = sink
        .commits
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .concat();
    assert_eq!(commits.len(), 4, "one object, four partitions");
    let objects = storage.list_objects().await?;
    assert_eq!(objects.len(), 1);
    for c in &commits {
        let bytes = storage
            .read(tp(0), &c.entry.object, c.entry.position, c.entry.length)
            .await?;
        assert_eq!(bytes.len(), c.entry.length as usize);
        assert_eq!(bytes.len(), 5 << 20);
        // Partition p holds the batches i = p, p + 4, ... in order.
        let p = c.entry.tp.partition as usize;
        for (k, chunk) in bytes.chunks(1 << 20).enumerate() {
            assert!(chunk.iter().all(|b| usize::from(*b) == p + 4 * k));
        }
    }
    storage.shutdown().await;

    // A cold reader (empty cache) reads ranges with ranged GETs of 1 MiB chunks, not the
    // whole 20 MiB object; ranges straddle chunk boundaries.
    let cold = ObjectStorage::start(target, config(), Arc::new(RecordingSink::default()));
    let c = &commits[1];
    let at = c.entry.position + (1 << 20) - 10;
    let bytes = cold.read(tp(0), &c.entry.object, at, 2 << 20).await?;
    assert_eq!(bytes.len(), 2 << 20);
    assert!(bytes[..10].iter().all(|b| *b == 1));
    assert!(bytes[10..(1 << 20) + 10].iter().all(|b| *b == 5));
    assert!(bytes[(1 << 20) + 10..].iter().all(|b| *b == 9));
    let gets = cold.metrics().requests("get");
    assert!((2..=3 + 4).contains(&gets), "{gets} GETs");
    // The chunks read ahead serve the next sequential read from memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits = cold.metrics().cache_hits();
    let next = cold
        .read(tp(0), &c.entry.object, at + (2 << 20), 1 << 20)
        .await?;
    assert!(next.iter().all(|b| *b == 9 || *b == 13));
    // Both chunks it spans were in memory (its own read-ahead only adds misses).
    assert_eq!(cold.metrics().cache_hits() - hits, 2);
    // The whole partition, read cold, is intact.
    let cold2 = ObjectStorage::start(
        cold_target(&cold),
        config(),
        Arc::new(RecordingSink::default()),
    );
    let all = cold2
        .read(tp(0), &c.entry.object, c.entry.position, c.entry.length)
        .await?;
    for (k, chunk) in all.chunks(1 << 20).enumerate() {
        assert!(chunk.iter().all(|b| usize::from(*b) == 1 + 4 * k));
    }
    Ok(())
}

fn cold_target(storage: &ObjectStorage) -> ObjectStoreTarget {
    storage.inner.target.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_reads_fall_back_to_the_disk_tier() -> anyhow::Result<()> {
    let Some(target) = s3_target("disk").await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let cfg = StorageConfig {
        // A memory tier too small to hold the object: reads go to disk, then to S3.
        cache_bytes: 1 << 20,
        disk_cache: Some((dir.path().join("cache"), 64 << 20)),
        flush_bytes: 16 << 20,
        max_buffered_bytes: 32 << 20,
        ..config()
    };
    let sink = Arc::new(RecordingSink::default());
    let storage = ObjectStorage::start(target.clone(), cfg.clone(), sink.clone());
    let mut tickets = Vec::new();
    for i in 0..6i64 {
        let mut b = batch(0, i * 10, 10, i as u8);
        b.data = Bytes::from(vec![i as u8; 1 << 20]);
        let r = storage.reserve(b.data.len()).await?;
        tickets.push(storage.submit(b, r)?);
    }
    for t in tickets {
        t.await??;
    }
    let commit = sink
        .commits
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .concat()
        .remove(0);
    // Give the background disk writes a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gets = storage.metrics().requests("get");
    let bytes = storage
        .read(
            tp(0),
            &commit.entry.object,
            commit.entry.position,
            commit.entry.length,
        )
        .await?;
    assert_eq!(bytes.len(), 6 << 20);
    for (k, chunk) in bytes.chunks(1 << 20).enumerate() {
        assert!(chunk.iter().all(|b| usize::from(*b) == k));
    }
    // Written chunks were kept on disk: no GET was needed.
    assert_eq!(storage.metrics().requests("get"), gets);
    assert!(storage.metrics().disk_hits() >= 6);
    storage.shutdown().await;
    // A restarted service starts with an empty disk tier (nothing stale), fetches from S3
    // and then serves from disk.
    let again = ObjectStorage::start(target, cfg, Arc::new(RecordingSink::default()));
    let first = again
        .read(
            tp(0),
            &commit.entry.object,
            commit.entry.position,
            commit.entry.length,
        )
        .await?;
    assert_eq!(first, bytes);
    assert!(again.metrics().requests("get") >= 6);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gets = again.metrics().requests("get");
    let second = again
        .read(
            tp(0),
            &commit.entry.object,
            commit.entry.position,
            commit.entry.length,
        )
        .await?;
    assert_eq!(second, bytes);
    assert!(
        again.metrics().requests("get") <= gets + 4,
        "only read-ahead may fetch"
    );
    assert!(again.metrics().disk_hits() >= 4);
    Ok(())
}

/// Records the commits a remote client reports, and checks each arrives before its append
/// completes.
#[derive(Debug, Default)]
struct Observed {
    commits: Mutex<Vec<PartitionCommit>>,
}

impl CommitObserver for Observed {
    fn committed(&self, commit: &PartitionCommit) {
        if let Ok(mut c) = self.commits.lock() {
            c.push(commit.clone());
        }
    }
}

/// A storage node on a real QUIC endpoint, serving a memory store.
async fn node(
    sink: Arc<RecordingSink>,
    dir: &std::path::Path,
    port: u16,
) -> anyhow::Result<(
    ObjectStorage,
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
)> {
    let files = weir_rpc::tls::load_or_generate(dir, &["127.0.0.1".to_string()])?;
    let storage = ObjectStorage::start(open_object_store("memory://")?, config(), sink);
    let endpoint = weir_rpc::server_endpoint(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        &files.cert,
        &files.key,
        remote::ALPN,
    )?;
    let addr = endpoint.local_addr()?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(weir_rpc::serve(
        endpoint,
        Arc::new(remote::StorageServer::new(storage.clone())),
        stop.clone(),
    ));
    Ok((storage, addr, stop, task))
}

#[tokio::test]
async fn remote_appends_keep_order_and_report_commits() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sink = Arc::new(RecordingSink::default());
    let (served, addr, stop, task) = node(sink.clone(), dir.path(), 0).await?;
    let options = remote::RemoteOptions::parse(&format!(
        "quic://{addr}?ca={}",
        dir.path().join("ca.pem").display()
    ))
    .await?;
    let observed = Arc::new(Observed::default());
    let client = remote::RemoteStorage::connect(&options, observed.clone(), 32 << 20, 1 << 20)?;

    // 300 appends over 3 partitions, submitted without waiting: they commit in offset order.
    let mut tickets = Vec::new();
    for i in 0..300i64 {
        let p = (i % 3) as i32;
        let r = client.reserve(100).await?;
        tickets.push(client.submit(batch(p, (i / 3) * 10, 10, p as u8), r)?);
    }
    let mut firsts = 0;
    for t in tickets {
        if t.await??.is_some() {
            firsts += 1;
        }
    }
    let seen = observed
        .commits
        .lock()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .clone();
    // One commit per partition per object, each reported once, ascending per partition.
    assert_eq!(seen.len(), firsts);
    for p in 0..3 {
        let ends: Vec<i64> = seen
            .iter()
            .filter(|c| c.entry.tp == tp(p))
            .map(|c| c.entry.last_offset)
            .collect();
        assert!(ends.windows(2).all(|w| w[0] < w[1]), "{ends:?}");
        assert_eq!(ends.last(), Some(&999));
    }
    let indexed: usize = sink
        .commits
        .lock()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(indexed, seen.len());

    // Reads, listings and deletes are calls to the node.
    let c = &seen[0];
    let bytes = client
        .read(
            c.entry.tp,
            &c.entry.object,
            c.entry.position,
            c.entry.length,
        )
        .await?;
    assert_eq!(bytes.len(), c.entry.length as usize);
    assert!(bytes.iter().all(|b| i32::from(*b) == c.entry.tp.partition));
    let objects = client.list_objects().await?;
    assert!(objects.contains(&c.entry.object));
    client.delete_objects(vec![c.entry.object.clone()]).await;
    assert!(matches!(
        client.read(c.entry.tp, &c.entry.object, 0, 10).await,
        Err(StorageError::NotFound(_))
    ));

    // A discard reaches the node in order with the appends around it.
    let queued = client.submit(batch(5, 0, 1, 1), client.reserve(100).await?)?;
    client.discard(tp(5));
    let after = client.submit(batch(6, 0, 1, 1), client.reserve(100).await?)?;
    // `queued` either flushed before the discard arrived or was discarded: never both lost
    // and committed.
    match queued.await? {
        Ok(_) | Err(StorageError::Discarded) => {}
        Err(e) => panic!("unexpected {e}"),
    }
    after.await??;

    // The node goes away: appends fail with a retriable error, not a hang.
    stop.cancel();
    task.await?;
    served.shutdown().await;
    let port = addr.port();
    let lost = client.submit(batch(0, 1000, 1, 1), client.reserve(100).await?)?;
    let err = tokio::time::timeout(Duration::from_secs(60), lost)
        .await??
        .err()
        .ok_or_else(|| anyhow::anyhow!("append without a node succeeded"))?;
    assert_eq!(err.kind(), ErrorKind::Retriable, "{err}");

    // A node back on the same address serves the same client again.
    let mut attempts = 0;
    let (again, _, stop, task) = loop {
        // The old endpoint's socket is released once its tasks are gone.
        match node(sink.clone(), dir.path(), port).await {
            Ok(n) => break n,
            Err(e) if attempts < 50 => {
                attempts += 1;
                tracing::debug!(error = %e, "port still in use");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = client.submit(batch(0, 1000, 1, 1), client.reserve(100).await?)?;
        match t.await? {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.kind(), ErrorKind::Retriable, "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => anyhow::bail!("node did not come back: {e}"),
        }
    }
    stop.cancel();
    task.await?;
    again.shutdown().await;
    Ok(())
}

/// Batches of one producer merged into one index entry keep every batch's sequence range in
/// the commit: after a failover the next leader must recognize a retry of any of them.
#[tokio::test]
async fn a_merged_run_commits_every_producer_batch() -> anyhow::Result<()> {
    let sink = Arc::new(RecordingSink::default());
    let storage = ObjectStorage::start(open_object_store("memory://")?, config(), sink.clone());
    let mut tickets = Vec::new();
    for i in 0..3i64 {
        let mut b = batch(0, i * 10, 10, 1);
        b.producer = Some(ProducerBatchState {
            producer_id: 42,
            producer_epoch: 0,
            first_sequence: (i * 10) as i32,
            last_sequence: (i * 10 + 9) as i32,
            base_offset: i * 10,
            last_offset: i * 10 + 9,
        });
        let r = storage.reserve(100).await?;
        tickets.push(storage.submit(b, r)?);
    }
    for t in tickets {
        t.await??;
    }
    let commits = sink
        .commits
        .lock()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .clone();
    let batches: Vec<(i32, i32)> = commits
        .iter()
        .flatten()
        .flat_map(|c| {
            c.producers
                .iter()
                .map(|p| (p.first_sequence, p.last_sequence))
        })
        .collect();
    assert!(
        commits
            .iter()
            .flatten()
            .any(|c| c.entry.base_offset == 0 && c.entry.last_offset == 29),
        "the three appends were not merged into one run: {commits:?}"
    );
    assert_eq!(batches, vec![(0, 9), (10, 19), (20, 29)]);
    Ok(())
}
