//! The contract suite of the storage API the gateway uses ([`Storage`]): each scenario is a
//! function over a [`Backend`] (a `dyn Storage`, the [`IndexSink`] and [`CommitObserver`]
//! behind it, and the [`FaultPlan`] of the object store under it), and the `suite!` macro
//! runs every scenario against every backend:
//!
//! - `memory`: in-process [`ObjectStorage`] on `memory://`;
//! - `local_dir`: in-process on a local directory (`file://`); its object writes go through
//!   the fsync path, not the object store, so the write-fault scenarios do not apply;
//! - `quic`: a storage node ([`remote::StorageServer`] over `memory://`) on 127.0.0.1 port
//!   0, reached through [`remote::RemoteStorage`];
//! - `s3`: in-process on the S3-compatible server at `WEIR_TEST_S3_ENDPOINT` (bucket
//!   `WEIR_TEST_S3_BUCKET`; `scripts/test.sh` starts moto and creates it). Without it these
//!   tests print `skipped:` and return, unless `WEIR_TEST_REQUIRE_S3=1` makes that a failure.
//!
//! Every object store sits under a [`FaultyStore`], under the service's [`RetryingStore`]
//! (the stack of [`store::stack`]): a fresh plan injects nothing.
//!
//! [`RetryingStore`]: crate::store::RetryingStore

use super::*;
use crate::store::{FaultPlan, FaultyStore};
use std::sync::atomic::{AtomicI32, Ordering};
use weir_common::TopicId;

/// Records every commit call, and refuses the commits of one partition on demand.
#[derive(Debug)]
struct Sink {
    calls: Mutex<Vec<Vec<PartitionCommit>>>,
    /// The partition whose commits are refused (-1: none).
    refuse: AtomicI32,
}

impl Default for Sink {
    fn default() -> Self {
        Sink {
            calls: Mutex::new(Vec::new()),
            refuse: AtomicI32::new(-1),
        }
    }
}

impl Sink {
    fn calls(&self) -> Vec<Vec<PartitionCommit>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn commits(&self) -> Vec<PartitionCommit> {
        self.calls().concat()
    }
}

#[async_trait]
impl IndexSink for Sink {
    async fn commit(
        &self,
        commits: &[PartitionCommit],
    ) -> std::result::Result<Vec<std::result::Result<(), CommitRefused>>, String> {
        let refuse = self.refuse.load(Ordering::SeqCst);
        let outcomes = commits
            .iter()
            .map(|c| {
                if c.entry.tp.partition == refuse {
                    Err(CommitRefused::EpochFenced {
                        current: c.leader_epoch + 1,
                        expected: c.leader_epoch,
                    })
                } else {
                    Ok(())
                }
            })
            .collect();
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(commits.to_vec());
        Ok(outcomes)
    }
}

/// The commits the gateway was told about, in order.
#[derive(Debug, Default)]
struct Observed {
    commits: Mutex<Vec<PartitionCommit>>,
}

impl Observed {
    fn commits(&self) -> Vec<PartitionCommit> {
        self.commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl CommitObserver for Observed {
    fn committed(&self, commit: &PartitionCommit) {
        self.commits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(commit.clone());
    }
}

/// One backend under test.
struct Backend {
    storage: Arc<dyn Storage>,
    sink: Arc<Sink>,
    observed: Arc<Observed>,
    faults: Arc<FaultPlan>,
    /// The service that writes the objects (the node's, behind QUIC).
    writer: ObjectStorage,
    /// Whether object writes go through the object store (not on local disk).
    write_faults: bool,
    /// Stops what the backend started (a QUIC node), and holds its directories.
    stop: Option<CancellationToken>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Backend {
    async fn close(self) {
        self.storage.shutdown().await;
        if let Some(stop) = &self.stop {
            stop.cancel();
            self.writer.shutdown().await;
        }
    }
}

/// Small enough that an object of a few MiB leaves the memory cache at once, so large
/// reads take the chunked (or whole-object, on local disk) path to the store.
fn config() -> StorageConfig {
    StorageConfig {
        flush_interval: Duration::from_millis(100),
        cache_bytes: 2 << 20,
        ..StorageConfig::default()
    }
}

/// An in-process service over `target` under a fresh fault plan.
fn in_process(target: ObjectStoreTarget, dirs: Vec<tempfile::TempDir>) -> Backend {
    let faults = FaultPlan::new(0x5eed);
    let write_faults = target.local_root.is_none();
    let target = ObjectStoreTarget {
        store: Arc::new(FaultyStore::new(target.store, faults.clone())),
        local_root: target.local_root,
    };
    let sink = Arc::new(Sink::default());
    let observed = Arc::new(Observed::default());
    let storage = ObjectStorage::start_observed(target, config(), sink.clone(), observed.clone());
    Backend {
        storage: Arc::new(storage.clone()),
        sink,
        observed,
        faults,
        writer: storage,
        write_faults,
        stop: None,
        _dirs: dirs,
    }
}

async fn memory() -> anyhow::Result<Option<Backend>> {
    Ok(Some(in_process(open_object_store("memory://")?, vec![])))
}

async fn local_dir() -> anyhow::Result<Option<Backend>> {
    let dir = tempfile::tempdir()?;
    let target = open_object_store(&format!("file://{}", dir.path().display()))?;
    Ok(Some(in_process(target, vec![dir])))
}

/// A storage node over `memory://` on a real QUIC endpoint, and a client of it.
async fn quic() -> anyhow::Result<Option<Backend>> {
    let dir = tempfile::tempdir()?;
    let files = weir_rpc::tls::load_or_generate(dir.path(), &["127.0.0.1".to_string()])?;
    let node = in_process(open_object_store("memory://")?, vec![]);
    let endpoint = weir_rpc::server_endpoint(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        &files.cert,
        &files.key,
        remote::ALPN,
    )?;
    let addr = endpoint.local_addr()?;
    let stop = CancellationToken::new();
    tokio::spawn(weir_rpc::serve(
        endpoint,
        Arc::new(remote::StorageServer::new(node.writer.clone())),
        stop.clone(),
    ));
    let options =
        remote::RemoteOptions::parse(&format!("quic://{addr}?ca={}", files.ca.display())).await?;
    let observed = Arc::new(Observed::default());
    // No tail cache: every read reaches the node.
    let client = remote::RemoteStorage::connect(&options, observed.clone(), 32 << 20, 0)?;
    Ok(Some(Backend {
        storage: Arc::new(client),
        observed,
        stop: Some(stop),
        _dirs: vec![dir],
        ..node
    }))
}

/// The S3-compatible server of the test set-up, under a fresh prefix.
async fn s3() -> anyhow::Result<Option<Backend>> {
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
        "s3://{bucket}/contract-{}?endpoint={endpoint}&region=us-east-1",
        uuid::Uuid::new_v4().simple()
    );
    Ok(Some(in_process(open(&url).await?, vec![])))
}

fn tp(p: i32) -> TopicPartition {
    TopicPartition {
        topic_id: TopicId::from_u128(0xc0de),
        partition: p,
    }
}

/// `len` bytes that differ with `seed` and with their position.
fn pattern(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8 ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

fn batch(p: i32, base: i64, count: i64, data: Bytes) -> AppendBatch {
    AppendBatch {
        tp: tp(p),
        leader_epoch: 1,
        base_offset: base,
        last_offset: base + count - 1,
        max_timestamp: 1000 + base,
        data,
        batches: 1,
        producer: None,
    }
}

async fn submit(s: &dyn Storage, batch: AppendBatch) -> anyhow::Result<AppendTicket> {
    let reservation = s.reserve(batch.data.len()).await?;
    Ok(s.submit(batch, reservation)?)
}

/// Waits for a ticket, with a limit: an append never hangs.
async fn outcome(ticket: AppendTicket) -> anyhow::Result<Result<Option<PartitionCommit>>> {
    Ok(tokio::time::timeout(Duration::from_secs(60), ticket).await??)
}

/// Appends and waits for every append; returns the commits, in ticket order.
async fn append_all(
    s: &dyn Storage,
    batches: Vec<AppendBatch>,
) -> anyhow::Result<Vec<PartitionCommit>> {
    let mut tickets = Vec::new();
    for b in batches {
        tickets.push(submit(s, b).await?);
    }
    let mut commits = Vec::new();
    for t in tickets {
        commits.extend(outcome(t).await??);
    }
    Ok(commits)
}

/// The bytes a commit's entry must hold: its batches, in offset order.
fn expected(entry: &IndexEntry, batches: &[AppendBatch]) -> Bytes {
    let mut out = BytesMut::new();
    for b in batches {
        if b.tp == entry.tp
            && b.base_offset >= entry.base_offset
            && b.last_offset <= entry.last_offset
        {
            out.extend_from_slice(&b.data);
        }
    }
    out.freeze()
}

async fn read_entry(s: &dyn Storage, e: &IndexEntry) -> Result<Bytes> {
    s.read(e.tp, &e.object, e.position, e.length).await
}

/// Appends of several sizes read back exactly, whole and in part; a missing object is
/// `NotFound`.
async fn append_then_read_back(b: &Backend) -> anyhow::Result<()> {
    let s = b.storage.as_ref();
    let mut batches = Vec::new();
    let mut base = 0;
    for (i, len) in [1usize, 100, 4096, 70_000, 333].into_iter().enumerate() {
        batches.push(batch(0, base, 10, pattern(i as u8, len)));
        base += 10;
    }
    let commits = append_all(s, batches.clone()).await?;
    anyhow::ensure!(!commits.is_empty());
    // The commits cover offsets 0..=49, contiguously.
    let mut next = 0;
    for c in &commits {
        assert_eq!(c.entry.base_offset, next, "{commits:?}");
        next = c.entry.last_offset + 1;
        let want = expected(&c.entry, &batches);
        assert_eq!(c.entry.length as usize, want.len());
        assert_eq!(read_entry(s, &c.entry).await?, want);
        // A part of it.
        let (at, len) = (want.len() / 3, want.len() / 2);
        let part = s
            .read(
                c.entry.tp,
                &c.entry.object,
                c.entry.position + at as u64,
                len as u32,
            )
            .await?;
        assert_eq!(part, want.slice(at..at + len));
    }
    assert_eq!(next, 50);
    let missing = s
        .read(tp(0), "data/0000000000000-missing.wseg", 0, 10)
        .await;
    match missing {
        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e}"),
        Ok(bytes) => anyhow::bail!("read {} bytes of a missing object", bytes.len()),
    }
    Ok(())
}

/// Appends of several partitions submitted together go into one object and one index
/// commit, one entry per partition in partition order.
async fn several_partitions_in_one_flush(b: &Backend) -> anyhow::Result<()> {
    let s = b.storage.as_ref();
    let batches: Vec<AppendBatch> = (0..4)
        .map(|p| batch(p, 0, 5, pattern(p as u8, 1000 + p as usize)))
        .collect();
    let commits = append_all(s, batches.clone()).await?;
    assert_eq!(commits.len(), 4);
    let calls = b.sink.calls();
    assert_eq!(calls.len(), 1, "one flush, one commit call: {calls:?}");
    let partitions: Vec<i32> = calls[0].iter().map(|c| c.entry.tp.partition).collect();
    assert_eq!(partitions, vec![0, 1, 2, 3]);
    let object = &commits[0].entry.object;
    assert!(commits.iter().all(|c| &c.entry.object == object));
    for c in &commits {
        assert_eq!(read_entry(s, &c.entry).await?, expected(&c.entry, &batches));
    }
    assert_eq!(s.list_objects().await?, vec![object.clone()]);
    Ok(())
}

/// Objects larger than a read chunk (1 MiB) read back exactly over ranges that straddle
/// chunk boundaries, from a service that does not hold them in memory.
async fn ranges_across_chunk_boundaries(b: &Backend) -> anyhow::Result<()> {
    let s = b.storage.as_ref();
    let batches: Vec<AppendBatch> = (0..3)
        .map(|i| batch(0, i * 10, 10, pattern(i as u8 + 1, 1_500_000)))
        .collect();
    let commits = append_all(s, batches.clone()).await?;
    let mut checked = 0;
    for c in &commits {
        let e = &c.entry;
        let want = expected(e, &batches);
        let (start, end) = (e.position, e.position + u64::from(e.length));
        let chunk = READ_CHUNK as u64;
        let mut boundary = (start / chunk + 1) * chunk;
        while boundary < end {
            for (before, after) in [(10u64, 10u64), (700_000, 300_000), (1, chunk + 1)] {
                let from = boundary.saturating_sub(before).max(start);
                let to = (boundary + after).min(end);
                let got = s.read(e.tp, &e.object, from, (to - from) as u32).await?;
                let at = (from - start) as usize;
                assert_eq!(got.len() as u64, to - from);
                assert!(
                    got == want.slice(at..at + got.len()),
                    "bytes {from}..{to} of {} differ",
                    e.object
                );
                checked += 1;
            }
            boundary += chunk;
        }
        assert_eq!(read_entry(s, e).await?, want);
    }
    assert!(
        checked >= 3,
        "no range crossed a chunk boundary: {commits:?}"
    );
    Ok(())
}

/// Appends submitted without waiting, over several flushes, commit in offset order per
/// partition, and the observer hears of each commit before its append completes.
async fn commits_reach_the_sink_in_order(b: &Backend) -> anyhow::Result<()> {
    let s = b.storage.as_ref();
    let mut tickets = Vec::new();
    let mut batches = Vec::new();
    for wave in 0..6i64 {
        for i in 0..10i64 {
            let n = wave * 10 + i;
            let p = (n % 3) as i32;
            let bt = batch(p, (n / 3) * 10, 10, pattern(n as u8, 200));
            batches.push(bt.clone());
            tickets.push(submit(s, bt).await?);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    for t in tickets {
        if let Some(commit) = outcome(t).await?? {
            assert!(
                b.observed.commits().contains(&commit),
                "an append completed before its commit was observed"
            );
        }
    }
    let indexed = b.sink.commits();
    assert!(b.sink.calls().len() > 1, "expected several flushes");
    for p in 0..3 {
        let ranges: Vec<(i64, i64)> = indexed
            .iter()
            .filter(|c| c.entry.tp == tp(p))
            .map(|c| (c.entry.base_offset, c.entry.last_offset))
            .collect();
        let mut next = 0;
        for (base, last) in &ranges {
            assert_eq!(*base, next, "partition {p}: {ranges:?}");
            next = last + 1;
        }
        assert_eq!(next, 200, "partition {p}: {ranges:?}");
        let observed: Vec<(i64, i64)> = b
            .observed
            .commits()
            .iter()
            .filter(|c| c.entry.tp == tp(p))
            .map(|c| (c.entry.base_offset, c.entry.last_offset))
            .collect();
        assert_eq!(observed, ranges, "partition {p}: observed as indexed");
    }
    for c in &indexed {
        assert_eq!(read_entry(s, &c.entry).await?, expected(&c.entry, &batches));
    }
    Ok(())
}

/// A commit the index refuses fails the appends of its partition only, with a fenced
/// error; the other partitions of the same object commit.
async fn a_refused_commit_fails_only_its_partition(b: &Backend) -> anyhow::Result<()> {
    let s = b.storage.as_ref();
    b.sink.refuse.store(1, Ordering::SeqCst);
    let batches: Vec<AppendBatch> = (0..3).map(|p| batch(p, 0, 5, pattern(7, 300))).collect();
    let mut tickets = Vec::new();
    for bt in &batches {
        tickets.push(submit(s, bt.clone()).await?);
    }
    let mut outcomes = Vec::new();
    for t in tickets {
        outcomes.push(outcome(t).await?);
    }
    match &outcomes[1] {
        Err(e @ StorageError::Refused(CommitRefused::EpochFenced { .. })) => {
            assert_eq!(e.kind(), ErrorKind::Fenced)
        }
        other => anyhow::bail!("partition 1: expected a fenced refusal, got {other:?}"),
    }
    for p in [0, 2] {
        let Ok(Some(commit)) = &outcomes[p] else {
            anyhow::bail!("partition {p}: {:?}", outcomes[p]);
        };
        assert_eq!(read_entry(s, &commit.entry).await?, batches[p].data);
    }
    assert!(b.observed.commits().iter().all(|c| c.entry.tp != tp(1)));
    Ok(())
}

/// Object writes that fail a few times, or at random, are retried: every append commits,
/// exactly once, and nothing is lost.
async fn writes_survive_transient_errors(b: &Backend) -> anyhow::Result<()> {
    let s = b.storage.as_ref();
    b.faults.fail_next_puts(3);
    let batches: Vec<AppendBatch> = (0..2).map(|p| batch(p, 0, 5, pattern(3, 500))).collect();
    let commits = append_all(s, batches.clone()).await?;
    assert_eq!(b.faults.injected().failed_puts, 3);
    assert_eq!(commits.len(), 2);
    for c in &commits {
        assert_eq!(read_entry(s, &c.entry).await?, expected(&c.entry, &batches));
    }
    assert_eq!(s.list_objects().await?.len(), 1);
    // Random faults (seeded, so a run replays): one object per append, each retried.
    b.faults.set_error_rate(0.2);
    let mut more = Vec::new();
    for i in 1..=20i64 {
        let bt = batch(0, i * 5, 5, pattern(i as u8, 100));
        more.push(bt.clone());
        let ticket = submit(s, bt).await?;
        let commit = outcome(ticket).await??;
        anyhow::ensure!(commit.is_some(), "append {i} without a commit");
    }
    b.faults.clear();
    assert!(
        b.faults.injected().failed_puts > 3,
        "no random fault was injected"
    );
    let p0: Vec<PartitionCommit> = b
        .sink
        .commits()
        .into_iter()
        .filter(|c| c.entry.tp == tp(0))
        .collect();
    assert_eq!(p0.len(), 21, "each append committed once");
    for c in &p0[1..] {
        assert_eq!(read_entry(s, &c.entry).await?, expected(&c.entry, &more));
    }
    assert_eq!(s.list_objects().await?.len(), 21);
    Ok(())
}

/// An object write whose response is lost (it landed, the writer saw an error) is not
/// written twice and not lost: the retry finds the object, the append commits once.
async fn a_lost_response_neither_duplicates_nor_loses(b: &Backend) -> anyhow::Result<()> {
    let s = b.storage.as_ref();
    b.faults.lose_next_puts(1);
    let batches = vec![batch(0, 0, 5, pattern(9, 2000))];
    let commits = append_all(s, batches.clone()).await?;
    assert_eq!(b.faults.injected().lost_puts, 1);
    assert_eq!(commits.len(), 1);
    assert_eq!(b.sink.commits().len(), 1, "committed once");
    assert_eq!(
        s.list_objects().await?,
        vec![commits[0].entry.object.clone()],
        "one object"
    );
    assert_eq!(read_entry(s, &commits[0].entry).await?, batches[0].data);
    Ok(())
}

/// Faults beyond the retry budget surface as retriable [`StorageError`]s (never a panic or a
/// hang), and the service goes on once they stop: object writes (where they go through
/// the object store) and reads.
async fn faults_beyond_the_retry_budget_are_errors(b: &Backend) -> anyhow::Result<()> {
    let s = b.storage.as_ref();
    if b.write_faults {
        b.faults.fail_next_puts(1000);
        let ticket = submit(s, batch(0, 0, 5, pattern(1, 100))).await?;
        match outcome(ticket).await? {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Retriable, "{e}"),
            Ok(c) => anyhow::bail!("an append committed with every write failing: {c:?}"),
        }
        assert_eq!(
            b.faults.injected().failed_puts,
            5,
            "write_attempts attempts"
        );
        assert!(b.sink.commits().is_empty());
        b.faults.clear();
    } else {
        eprintln!("write faults: not applicable (local disk writes bypass the object store)");
    }
    // A partition whose append failed starts again (the gateway re-reads its end).
    let big = batch(1, 0, 5, pattern(2, 3 << 20));
    let commits = append_all(s, vec![big.clone()]).await?;
    let entry = &commits[0].entry;
    b.faults.fail_next_gets(1000);
    match read_entry(s, entry).await {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Retriable, "{e}"),
        Ok(_) => anyhow::bail!("a read succeeded with every get failing"),
    }
    b.faults.clear();
    assert_eq!(read_entry(s, entry).await?, big.data);
    Ok(())
}

/// A read the store tears (fewer bytes than the object has) is a retriable error, never
/// wrong bytes, and is not kept: the next read is whole.
async fn torn_reads_are_never_served(b: &Backend) -> anyhow::Result<()> {
    let s = b.storage.as_ref();
    let big = batch(0, 0, 5, pattern(4, 3 << 20));
    let commits = append_all(s, vec![big.clone()]).await?;
    let entry = &commits[0].entry;
    b.faults.tear_next_gets(1);
    match read_entry(s, entry).await {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Retriable, "{e}"),
        Ok(bytes) => anyhow::bail!("a torn read was served ({} bytes)", bytes.len()),
    }
    assert_eq!(b.faults.injected().torn_gets, 1);
    assert_eq!(read_entry(s, entry).await?, big.data);
    Ok(())
}

macro_rules! suite {
    ($backend:ident: $($scenario:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() -> anyhow::Result<()> {
                    let Some(backend) = super::$backend().await? else {
                        return Ok(());
                    };
                    let result = super::$scenario(&backend).await;
                    backend.close().await;
                    result
                }
            )*
        }
    };
}

macro_rules! full_suite {
    ($($backend:ident),*) => {
        $(
            suite!($backend:
                append_then_read_back,
                several_partitions_in_one_flush,
                ranges_across_chunk_boundaries,
                commits_reach_the_sink_in_order,
                a_refused_commit_fails_only_its_partition,
                writes_survive_transient_errors,
                a_lost_response_neither_duplicates_nor_loses,
                faults_beyond_the_retry_budget_are_errors,
                torn_reads_are_never_served,
            );
        )*
    };
}

full_suite!(memory, quic, s3);

// Local disk: object writes take the fsync path, which the object store's faults do not
// reach (the write-fault scenarios would test nothing).
suite!(local_dir:
    append_then_read_back,
    several_partitions_in_one_flush,
    ranges_across_chunk_boundaries,
    commits_reach_the_sink_in_order,
    a_refused_commit_fails_only_its_partition,
    faults_beyond_the_retry_budget_are_errors,
    torn_reads_are_never_served,
);

/// A torn chunk read is not cached: the chunk is fetched again, whole, by the next read
/// (before the fix, the short chunk stayed in the cache and every later read of its second
/// half failed as "beyond object").
#[tokio::test]
async fn a_torn_chunk_is_not_cached() -> anyhow::Result<()> {
    let Some(b) = memory().await? else {
        anyhow::bail!("memory backend missing");
    };
    let data = pattern(5, 3 << 20);
    let commits = append_all(b.storage.as_ref(), vec![batch(0, 0, 5, data.clone())]).await?;
    let e = &commits[0].entry;
    let inner = &b.writer.inner;
    assert!(
        !inner.cache.contains_key(&e.object),
        "object left the memory cache"
    );
    b.faults.tear_next_gets(1);
    let gets = b.writer.metrics().requests("get");
    // The first chunk only (no other chunk is fetched concurrently).
    let torn = b.storage.read(e.tp, &e.object, 0, 100).await;
    assert!(
        matches!(torn, Err(StorageError::Unavailable(_))),
        "{torn:?}"
    );
    assert_eq!(b.faults.injected().torn_gets, 1);
    assert!(!inner.cache.contains_key(&chunk_key(&e.object, 0)));
    // Its second half, which the torn read did not bring.
    let at = READ_CHUNK / 2 + 1000;
    let later = b.storage.read(e.tp, &e.object, at as u64, 5000).await?;
    assert_eq!(later, data.slice(at..at + 5000));
    assert!(
        b.writer.metrics().requests("get") >= gets + 2,
        "fetched again"
    );
    let cached = inner.cache.get(&chunk_key(&e.object, 0)).await;
    assert_eq!(cached.map(|c| c.len()), Some(READ_CHUNK));
    b.close().await;
    Ok(())
}

/// The decorators count into the service's metrics: calls, errors after retries, bytes.
#[tokio::test]
async fn the_store_stack_is_metered() -> anyhow::Result<()> {
    let Some(b) = memory().await? else {
        anyhow::bail!("memory backend missing");
    };
    let m = b.writer.metrics().clone();
    b.faults.fail_next_puts(2);
    append_all(b.storage.as_ref(), vec![batch(0, 0, 5, pattern(1, 100))]).await?;
    // Two failed attempts retried inside: one successful put as the caller sees it.
    assert_eq!((m.store_calls("put"), m.store_errors("put")), (1, 0));
    assert_eq!(
        m.requests("put"),
        1,
        "the service's own counter is unchanged"
    );
    b.faults.fail_next_puts(100);
    let t = submit(b.storage.as_ref(), batch(1, 0, 5, pattern(1, 100))).await?;
    assert!(outcome(t).await?.is_err());
    assert_eq!((m.store_calls("put"), m.store_errors("put")), (2, 1));
    b.faults.clear();
    b.storage.list_objects().await?;
    assert_eq!((m.store_calls("list"), m.store_errors("list")), (1, 0));
    let mut registry = prometheus_client::registry::Registry::default();
    b.storage.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    assert!(
        text.contains("weir_storage_store_calls_total{op=\"put\",outcome=\"error\"} 1"),
        "{text}"
    );
    b.close().await;
    Ok(())
}
