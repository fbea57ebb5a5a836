//! [`FaultyStore`]: an object store for tests that misbehaves on purpose, by a
//! [`FaultPlan`] the test holds and changes while the code under test runs: failed puts and
//! gets (the next N, or each with a probability drawn from a seeded generator), added
//! latency, torn reads (fewer bytes than asked for), corrupted reads (a flipped byte) and
//! lost responses (the put lands, the caller sees an error).
//!
//! The plan is a handful of counters behind a mutex (bounded state, never held across an
//! await). The generator is a seeded splitmix64, so a failing run replays with its seed
//! (this crate has no `rand` dependency outside tests, and a test double needs no more).

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Faults injected so far, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultCounts {
    pub failed_puts: u64,
    pub failed_gets: u64,
    pub lost_puts: u64,
    pub torn_gets: u64,
    pub corrupted_gets: u64,
}

#[derive(Debug, Default)]
struct PlanState {
    fail_puts: u64,
    fail_gets: u64,
    lose_puts: u64,
    tear_gets: u64,
    corrupt_gets: u64,
    error_rate: f64,
    latency: Duration,
    rng: u64,
    counts: FaultCounts,
}

impl PlanState {
    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self) -> bool {
        self.error_rate > 0.0
            && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < self.error_rate
    }
}

fn take(n: &mut u64) -> bool {
    if *n > 0 {
        *n -= 1;
        true
    } else {
        false
    }
}

/// What a [`FaultyStore`] does wrong, shared between the test and the store. A fresh plan
/// injects nothing.
#[derive(Debug, Default)]
pub struct FaultPlan {
    state: Mutex<PlanState>,
}

enum PutFault {
    Fail,
    Lose,
}

enum GetFault {
    Fail,
    Tear,
    Corrupt(u64),
}

impl FaultPlan {
    /// A plan that injects nothing yet; `seed` drives the random faults.
    pub fn new(seed: u64) -> Arc<Self> {
        let plan = FaultPlan::default();
        plan.with(|s| s.rng = seed);
        Arc::new(plan)
    }

    fn with<T>(&self, f: impl FnOnce(&mut PlanState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }

    /// The next `n` puts fail without reaching the store.
    pub fn fail_next_puts(&self, n: u64) {
        self.with(|s| s.fail_puts = n);
    }

    /// The next `n` gets (and heads) fail without reaching the store.
    pub fn fail_next_gets(&self, n: u64) {
        self.with(|s| s.fail_gets = n);
    }

    /// The next `n` puts land in the store, but their caller gets an error.
    pub fn lose_next_puts(&self, n: u64) {
        self.with(|s| s.lose_puts = n);
    }

    /// The next `n` gets with a body return only the first half of it (at least one byte
    /// short), with the metadata of the whole.
    pub fn tear_next_gets(&self, n: u64) {
        self.with(|s| s.tear_gets = n);
    }

    /// The next `n` gets with a body return it with one byte flipped.
    pub fn corrupt_next_gets(&self, n: u64) {
        self.with(|s| s.corrupt_gets = n);
    }

    /// Every put and get fails with probability `p` (0 turns this off).
    pub fn set_error_rate(&self, p: f64) {
        self.with(|s| s.error_rate = p.clamp(0.0, 1.0));
    }

    /// Every call waits this long before it reaches the store.
    pub fn set_latency(&self, latency: Duration) {
        self.with(|s| s.latency = latency);
    }

    /// Stops injecting anything (the counts and the generator stay).
    pub fn clear(&self) {
        self.with(|s| {
            s.fail_puts = 0;
            s.fail_gets = 0;
            s.lose_puts = 0;
            s.tear_gets = 0;
            s.corrupt_gets = 0;
            s.error_rate = 0.0;
            s.latency = Duration::ZERO;
        });
    }

    /// The faults injected so far.
    pub fn injected(&self) -> FaultCounts {
        self.with(|s| s.counts)
    }

    fn latency(&self) -> Duration {
        self.with(|s| s.latency)
    }

    fn put_fault(&self) -> Option<PutFault> {
        self.with(|s| {
            if take(&mut s.fail_puts) || s.chance() {
                s.counts.failed_puts += 1;
                Some(PutFault::Fail)
            } else if take(&mut s.lose_puts) {
                s.counts.lost_puts += 1;
                Some(PutFault::Lose)
            } else {
                None
            }
        })
    }

    fn get_fault(&self, head: bool) -> Option<GetFault> {
        self.with(|s| {
            if take(&mut s.fail_gets) || s.chance() {
                s.counts.failed_gets += 1;
                Some(GetFault::Fail)
            } else if head {
                None
            } else if take(&mut s.tear_gets) {
                s.counts.torn_gets += 1;
                Some(GetFault::Tear)
            } else if take(&mut s.corrupt_gets) {
                s.counts.corrupted_gets += 1;
                Some(GetFault::Corrupt(s.next()))
            } else {
                None
            }
        })
    }
}

fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: format!("injected fault: {what}").into(),
    }
}

/// An object store that injects the faults of its [`FaultPlan`] into the store it wraps.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: Arc<FaultPlan>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, plan: Arc<FaultPlan>) -> Self {
        FaultyStore { inner, plan }
    }

    /// The plan this store follows.
    pub fn plan(&self) -> &Arc<FaultPlan> {
        &self.plan
    }

    async fn delay(&self) {
        let latency = self.plan.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.delay().await;
        match self.plan.put_fault() {
            Some(PutFault::Fail) => Err(injected("put failed")),
            Some(PutFault::Lose) => {
                self.inner.put_opts(location, payload, opts).await?;
                Err(injected("put landed, response lost"))
            }
            None => self.inner.put_opts(location, payload, opts).await,
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.delay().await;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.delay().await;
        let fault = self.plan.get_fault(options.head);
        if matches!(fault, Some(GetFault::Fail)) {
            return Err(injected("get failed"));
        }
        let result = self.inner.get_opts(location, options).await?;
        let Some(fault) = fault else {
            return Ok(result);
        };
        let (meta, range, attributes) = (
            result.meta.clone(),
            result.range.clone(),
            result.attributes.clone(),
        );
        let body = result.bytes().await?;
        let body = match fault {
            GetFault::Tear => body.slice(..body.len() / 2),
            GetFault::Corrupt(at) if !body.is_empty() => {
                let mut bytes = body.to_vec();
                let at = (at % bytes.len() as u64) as usize;
                bytes[at] ^= 0xff;
                Bytes::from(bytes)
            }
            _ => body,
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(
                futures::stream::once(async move { Ok(body) }).boxed(),
            ),
            meta,
            range,
            attributes,
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let latency = self.plan.latency();
        let stream = self.inner.list(prefix);
        futures::stream::once(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            stream
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.delay().await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.delay().await;
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    fn store(seed: u64) -> (FaultyStore, Arc<FaultPlan>) {
        let plan = FaultPlan::new(seed);
        (
            FaultyStore::new(Arc::new(InMemory::new()), plan.clone()),
            plan,
        )
    }

    #[tokio::test]
    async fn counted_faults_then_clean_calls() -> anyhow::Result<()> {
        let (s, plan) = store(1);
        let path = Path::from("a");
        plan.fail_next_puts(2);
        assert!(s
            .put(&path, PutPayload::from_static(b"hello"))
            .await
            .is_err());
        assert!(s
            .put(&path, PutPayload::from_static(b"hello"))
            .await
            .is_err());
        assert!(s.get(&path).await.is_err(), "nothing landed");
        s.put(&path, PutPayload::from_static(b"hello")).await?;
        plan.fail_next_gets(1);
        assert!(s.get(&path).await.is_err());
        assert_eq!(
            s.get(&path).await?.bytes().await?,
            Bytes::from_static(b"hello")
        );
        let counts = plan.injected();
        assert_eq!((counts.failed_puts, counts.failed_gets), (2, 1));
        Ok(())
    }

    #[tokio::test]
    async fn a_lost_put_lands() -> anyhow::Result<()> {
        let (s, plan) = store(1);
        let path = Path::from("b");
        plan.lose_next_puts(1);
        assert!(s.put(&path, PutPayload::from_static(b"x")).await.is_err());
        assert_eq!(s.get(&path).await?.bytes().await?, Bytes::from_static(b"x"));
        Ok(())
    }

    #[tokio::test]
    async fn torn_and_corrupted_reads() -> anyhow::Result<()> {
        let (s, plan) = store(7);
        let path = Path::from("c");
        s.put(&path, PutPayload::from(vec![5u8; 1000])).await?;
        plan.tear_next_gets(1);
        let torn = s.get_range(&path, 0..1000).await?;
        assert_eq!(torn.len(), 500);
        // The metadata still tells the truth: a reader can tell.
        assert_eq!(s.head(&path).await?.size, 1000);
        plan.corrupt_next_gets(1);
        let bad = s.get_range(&path, 0..1000).await?;
        assert_eq!(bad.len(), 1000);
        assert_eq!(bad.iter().filter(|b| **b != 5).count(), 1);
        assert_eq!(
            s.get_range(&path, 0..1000).await?,
            Bytes::from(vec![5u8; 1000])
        );
        assert_eq!(
            (plan.injected().torn_gets, plan.injected().corrupted_gets),
            (1, 1)
        );
        Ok(())
    }

    #[tokio::test]
    async fn random_faults_replay_with_their_seed() -> anyhow::Result<()> {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let (s, plan) = store(42);
            plan.set_error_rate(0.3);
            let mut outcomes = Vec::new();
            for i in 0..200 {
                let path = Path::from(format!("r/{i}"));
                outcomes.push(s.put(&path, PutPayload::from_static(b"r")).await.is_ok());
            }
            runs.push(outcomes);
        }
        assert_eq!(runs[0], runs[1], "same seed, same faults");
        let failed = runs[0].iter().filter(|ok| !**ok).count();
        assert!(
            (30..=90).contains(&failed),
            "{failed} of 200 failed at p = 0.3"
        );
        Ok(())
    }

    #[tokio::test]
    async fn latency_is_added() -> anyhow::Result<()> {
        let (s, plan) = store(1);
        plan.set_latency(Duration::from_millis(50));
        let started = std::time::Instant::now();
        s.put(&Path::from("d"), PutPayload::from_static(b"d"))
            .await?;
        assert!(started.elapsed() >= Duration::from_millis(50));
        Ok(())
    }
}
