//! `weir-bench`: measures a Kafka-compatible service through librdkafka (the `rdkafka`
//! crate), so Weir and any other broker can be compared with the same client in one run.
//!
//! Modes: `produce` (throughput and acknowledgement latency), `consume` (throughput, record
//! count and content check of data made by `produce`), `e2e` (produce-to-receive latency at a
//! fixed offered rate). `--broker-pid` samples the broker's CPU time and RSS during the run.
//!
//! Every record value made by `produce` is `seq: u64 LE | sent_us: i64 LE | filler`, where the
//! filler is derived from `seq`, so a consumer can check each record's content, and the sum of
//! sequence numbers checks that every record arrived exactly once.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug)]
#[command(
    name = "weir-bench",
    version,
    about = "Benchmark a Kafka-compatible address with librdkafka"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Produce records and report throughput and acknowledgement latency.
    Produce(ProduceArgs),
    /// Read a topic from the start and report throughput; check data made by `produce`.
    Consume(ConsumeArgs),
    /// Produce at a fixed rate while consuming; report produce-to-receive latency.
    E2e(E2eArgs),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Bootstrap address of the service under test.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Topic to use.
    #[arg(long, default_value = "weir-bench")]
    topic: String,
    /// Sample this process's CPU time and RSS during the run (the broker's PID).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Print one JSON line instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Extra librdkafka settings, `key=value`, repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

#[derive(Args, Debug, Clone)]
struct ProducerOpts {
    /// Record value size in bytes (at least 16).
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Give each record a key (its sequence number).
    #[arg(long)]
    keys: bool,
    /// acks: 0, 1 or all.
    #[arg(long, default_value = "all")]
    acks: String,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// librdkafka batch.size in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    batch_size: usize,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    #[arg(long)]
    idempotence: bool,
    #[arg(long, default_value_t = 5)]
    max_in_flight: usize,
    /// Create the topic with this many partitions first (an existing topic is kept).
    #[arg(long)]
    partitions: Option<i32>,
}

#[derive(Args, Debug)]
struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    producer: ProducerOpts,
    /// Records to produce (ignored with --duration).
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Produce for this many seconds instead of a record count.
    #[arg(long)]
    duration: Option<f64>,
    /// Offered rate in records/s (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
}

#[derive(Args, Debug)]
struct ConsumeArgs {
    #[command(flatten)]
    common: Common,
    /// Join this consumer group (subscribe) instead of assigning every partition.
    #[arg(long)]
    group: Option<String>,
    /// Fail unless exactly this many records were read, each intact and each sequence number
    /// once (for a topic filled by one `produce` run of this many records).
    #[arg(long)]
    expect: Option<u64>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
}

#[derive(Args, Debug)]
struct E2eArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    producer: ProducerOpts,
    /// Offered rate in records/s.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Fills `buf` with the record for `seq`.
fn fill(buf: &mut [u8], seq: u64, sent_us: i64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&sent_us.to_le_bytes());
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf[16..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Checks a record made by `fill`; returns (seq, sent_us).
fn check(value: &[u8]) -> Option<(u64, i64)> {
    if value.len() < 16 {
        return None;
    }
    let seq = u64::from_le_bytes(value[..8].try_into().ok()?);
    let sent = i64::from_le_bytes(value[8..16].try_into().ok()?);
    let mut expected = vec![0u8; value.len()];
    fill(&mut expected, seq, sent);
    (expected == value).then_some((seq, sent))
}

/// CPU and memory of the broker process, from /proc.
struct BrokerSampler {
    pid: u32,
    start_cpu: f64,
    peak_rss: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl BrokerSampler {
    fn start(pid: Option<u32>) -> Result<Option<Self>> {
        let Some(pid) = pid else { return Ok(None) };
        let start_cpu =
            cpu_seconds(pid).with_context(|| format!("cannot read /proc/{pid}/stat"))?;
        let peak_rss = Arc::new(AtomicU64::new(rss_bytes(pid).unwrap_or(0)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (peak_rss.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = rss_bytes(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Ok(Some(BrokerSampler {
            pid,
            start_cpu,
            peak_rss,
            stop,
            thread: Some(thread),
        }))
    }

    /// (CPU seconds used, peak RSS bytes).
    fn finish(mut self) -> (f64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let cpu = cpu_seconds(self.pid)
            .map(|c| c - self.start_cpu)
            .unwrap_or(f64::NAN);
        (cpu, self.peak_rss.load(Ordering::Relaxed))
    }
}

fn client_config(common: &Common) -> Result<ClientConfig> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &common.bootstrap);
    for kv in &common.settings {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv}: expected key=value"))?;
        cfg.set(k, v);
    }
    Ok(cfg)
}

fn producer_config(common: &Common, p: &ProducerOpts) -> Result<ClientConfig> {
    let mut cfg = client_config(common)?;
    cfg.set("acks", &p.acks)
        .set("linger.ms", p.linger_ms.to_string())
        .set("batch.size", p.batch_size.to_string())
        .set("compression.codec", &p.compression)
        .set("enable.idempotence", p.idempotence.to_string())
        .set(
            "max.in.flight.requests.per.connection",
            p.max_in_flight.to_string(),
        )
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "120000");
    // Client settings given with --set win.
    for kv in &common.settings {
        if let Some((k, v)) = kv.split_once('=') {
            cfg.set(k, v);
        }
    }
    Ok(cfg)
}

fn ensure_topic(common: &Common, partitions: Option<i32>) -> Result<()> {
    let Some(partitions) = partitions else {
        return Ok(());
    };
    let admin: AdminClient<DefaultClientContext> = client_config(common)?.create()?;
    let topic = NewTopic::new(&common.topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = block_on(admin.create_topics([&topic], &opts))?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

/// A tiny executor for the admin futures (no async runtime needed).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context as TaskContext, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(50)),
        }
    }
}

/// Acknowledgement results collected by the delivery callback.
struct Acks {
    latency: Mutex<Histogram<u64>>,
    acked: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Acks {
    fn new() -> Result<Self> {
        Ok(Acks {
            latency: Mutex::new(histogram()?),
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
        })
    }
}

struct BenchContext {
    acks: Arc<Acks>,
}

impl ClientContext for BenchContext {}

impl ProducerContext for BenchContext {
    type DeliveryOpaque = Box<Instant>;
    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                let us = sent.elapsed().as_micros() as u64;
                if let Ok(mut h) = self.acks.latency.lock() {
                    let _ = h.record(us.max(1));
                }
                self.acks.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.acks.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.acks.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Produces `count` records (or for `duration`) at `rate`; returns (records, bytes, elapsed).
fn produce_loop(
    producer: &BaseProducer<BenchContext>,
    topic: &str,
    opts: &ProducerOpts,
    count: u64,
    duration: Option<Duration>,
    rate: Option<f64>,
    progress: &dyn Fn(u64),
) -> Result<(u64, u64, Duration)> {
    let size = opts.record_size.max(16);
    let mut value = vec![0u8; size];
    let started = Instant::now();
    let mut seq: u64 = 0;
    let mut last_progress = Instant::now();
    loop {
        if let Some(d) = duration {
            if started.elapsed() >= d {
                break;
            }
        } else if seq >= count {
            break;
        }
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(seq as f64 / rate);
            let elapsed = started.elapsed();
            if due > elapsed {
                std::thread::sleep((due - elapsed).min(Duration::from_millis(5)));
                producer.poll(Duration::ZERO);
                continue;
            }
        }
        fill(&mut value, seq, now_us());
        let key = seq.to_string();
        let mut record =
            BaseRecord::with_opaque_to(topic, Box::new(Instant::now())).payload(&value[..]);
        if opts.keys {
            record = record.key(key.as_bytes());
        }
        let mut pending = record;
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((e, back)) => {
                    if e.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                        bail!("produce failed: {e}");
                    }
                    pending = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
        seq += 1;
        if seq.is_multiple_of(1024) {
            producer.poll(Duration::ZERO);
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            progress(seq);
            last_progress = Instant::now();
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the producer")?;
    Ok((seq, seq * size as u64, started.elapsed()))
}

struct Report {
    fields: Vec<(&'static str, serde_json::Value)>,
    lines: Vec<String>,
}

impl Report {
    fn new(mode: &str) -> Self {
        Report {
            fields: vec![("mode", mode.into())],
            lines: Vec::new(),
        }
    }
    fn add(
        &mut self,
        key: &'static str,
        value: impl Into<serde_json::Value>,
        line: Option<String>,
    ) {
        self.fields.push((key, value.into()));
        if let Some(l) = line {
            self.lines.push(l);
        }
    }
    fn latency(&mut self, what: &str, h: &Histogram<u64>) {
        let max = h.max() as f64 / 1000.0;
        self.add("p50_ms", ms(h, 0.5), None);
        self.add("p99_ms", ms(h, 0.99), None);
        self.add("p999_ms", ms(h, 0.999), None);
        self.add(
            "max_ms",
            max,
            Some(format!(
                "{what:<15} p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {max:.2} ms",
                ms(h, 0.5),
                ms(h, 0.99),
                ms(h, 0.999)
            )),
        );
    }

    fn broker(&mut self, sampler: Option<BrokerSampler>, bytes: u64) {
        if let Some(s) = sampler {
            let (cpu, rss) = s.finish();
            let gib = bytes as f64 / (1u64 << 30) as f64;
            let per_gib = if gib > 0.0 { cpu / gib } else { f64::NAN };
            self.add("broker_cpu_s", cpu, None);
            self.add(
                "broker_cpu_s_per_gib",
                per_gib,
                Some(format!(
                    "broker CPU      {cpu:.2} s ({per_gib:.2} s per GiB)"
                )),
            );
            self.add(
                "broker_peak_rss_mib",
                rss as f64 / (1 << 20) as f64,
                Some(format!(
                    "broker peak RSS {:.1} MiB",
                    rss as f64 / (1 << 20) as f64
                )),
            );
        }
    }
    fn print(&self, json: bool) {
        if json {
            let map: serde_json::Map<String, serde_json::Value> = self
                .fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            println!("{}", serde_json::Value::Object(map));
        } else {
            for l in &self.lines {
                println!("{l}");
            }
        }
    }
}

fn produce(args: ProduceArgs) -> Result<()> {
    ensure_topic(&args.common, args.producer.partitions)?;
    let acks = Arc::new(Acks::new()?);
    let producer: BaseProducer<BenchContext> = producer_config(&args.common, &args.producer)?
        .create_with_context(BenchContext { acks: acks.clone() })?;
    let sampler = BrokerSampler::start(args.common.broker_pid)?;
    let size = args.producer.record_size.max(16) as f64;
    let started = Instant::now();
    let progress = |n: u64| {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "produce: {n} records sent, {:.1} MB/s, {} acknowledged",
            n as f64 * size / secs / 1e6,
            acks.acked.load(Ordering::Relaxed)
        );
    };
    let (sent, bytes, elapsed) = produce_loop(
        &producer,
        &args.common.topic,
        &args.producer,
        args.records,
        args.duration.map(Duration::from_secs_f64),
        args.rate,
        &progress,
    )?;
    let secs = elapsed.as_secs_f64();
    let failed = acks.failed.load(Ordering::Relaxed);
    let acked = acks.acked.load(Ordering::Relaxed);
    let h = acks
        .latency
        .lock()
        .map_err(|_| anyhow::anyhow!("latency lock"))?
        .clone();
    let mut r = Report::new("produce");
    r.add(
        "records",
        sent,
        Some(format!(
            "records         {sent} sent, {acked} acknowledged, {failed} failed"
        )),
    );
    r.add("acknowledged", acked, None);
    r.add("failed", failed, None);
    r.add("seconds", secs, None);
    r.add(
        "records_per_s",
        sent as f64 / secs,
        Some(format!(
            "throughput      {:.0} records/s, {:.1} MB/s",
            sent as f64 / secs,
            bytes as f64 / secs / 1e6
        )),
    );
    r.add("mb_per_s", bytes as f64 / secs / 1e6, None);
    r.latency("ack latency", &h);
    r.broker(sampler, bytes);
    r.print(args.common.json);
    if failed > 0 {
        let first = acks
            .first_error
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or_default();
        bail!("{failed} records were not acknowledged (first error: {first})");
    }
    Ok(())
}

/// Assigns every partition of the topic from the beginning; returns the end offsets.
fn assign_all(consumer: &BaseConsumer, topic: &str) -> Result<HashMap<i32, i64>> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = md.topics().first().context("no metadata for the topic")?;
    if t.partitions().is_empty() {
        bail!("topic {topic} has no partitions (does it exist?)");
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in t.partitions() {
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        ends.insert(p.id(), high);
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(ends)
}

fn consume(args: ConsumeArgs) -> Result<()> {
    let mut cfg = client_config(&args.common)?;
    cfg.set("group.id", args.group.as_deref().unwrap_or("weir-bench"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.max.messages.kbytes", "262144");
    let consumer: BaseConsumer = cfg.create()?;
    let sampler = BrokerSampler::start(args.common.broker_pid)?;
    let mut remaining: HashMap<i32, i64> = if args.group.is_some() {
        consumer.subscribe(&[&args.common.topic])?;
        let md = consumer.fetch_metadata(Some(&args.common.topic), Duration::from_secs(10))?;
        let mut ends = HashMap::new();
        for p in md
            .topics()
            .first()
            .map(|t| t.partitions())
            .unwrap_or_default()
        {
            let (_, high) =
                consumer.fetch_watermarks(&args.common.topic, p.id(), Duration::from_secs(10))?;
            ends.insert(p.id(), high);
        }
        ends
    } else {
        assign_all(&consumer, &args.common.topic)?
    };
    remaining.retain(|_, end| *end > 0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.timeout);
    let (mut records, mut bytes, mut bad, mut seq_sum) = (0u64, 0u64, 0u64, 0u128);
    let mut last_progress = Instant::now();
    while !remaining.is_empty() && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let msg = msg.context("consume error")?;
        let end = remaining.get(&msg.partition()).copied();
        if end.is_none_or(|e| msg.offset() >= e) {
            continue;
        }
        let value = msg.payload().unwrap_or_default();
        records += 1;
        bytes += value.len() as u64;
        match check(value) {
            Some((seq, _)) => seq_sum += u128::from(seq),
            None => bad += 1,
        }
        if end.is_some_and(|e| msg.offset() + 1 >= e) {
            remaining.remove(&msg.partition());
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "consume: {records} records, {:.1} MB/s",
                bytes as f64 / started.elapsed().as_secs_f64() / 1e6
            );
            last_progress = Instant::now();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let mut r = Report::new("consume");
    r.add(
        "records",
        records,
        Some(format!(
            "records         {records} read ({bad} with unexpected content)"
        )),
    );
    r.add("bad_records", bad, None);
    r.add("seconds", secs, None);
    r.add(
        "records_per_s",
        records as f64 / secs,
        Some(format!(
            "throughput      {:.0} records/s, {:.1} MB/s",
            records as f64 / secs,
            bytes as f64 / secs / 1e6
        )),
    );
    r.add("mb_per_s", bytes as f64 / secs / 1e6, None);
    let checksum_ok = args.expect.map(|n| {
        records == n && bad == 0 && seq_sum == u128::from(n) * u128::from(n.saturating_sub(1)) / 2
    });
    if let Some(ok) = checksum_ok {
        r.add(
            "checksum_ok",
            ok,
            Some(format!(
                "check           {}",
                if ok {
                    "every record present once, content intact"
                } else {
                    "FAILED"
                }
            )),
        );
    }
    r.broker(sampler, bytes);
    r.print(args.common.json);
    if !remaining.is_empty() {
        bail!(
            "timed out with {} partitions not read to their end",
            remaining.len()
        );
    }
    if checksum_ok == Some(false) {
        bail!(
            "expected {:?} records with intact content, read {records} ({bad} bad)",
            args.expect
        );
    }
    Ok(())
}

fn e2e(args: E2eArgs) -> Result<()> {
    ensure_topic(&args.common, args.producer.partitions)?;
    let acks = Arc::new(Acks::new()?);
    let producer: BaseProducer<BenchContext> = producer_config(&args.common, &args.producer)?
        .create_with_context(BenchContext { acks: acks.clone() })?;
    let mut cfg = client_config(&args.common)?;
    cfg.set("group.id", "weir-bench-e2e")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100");
    let consumer: BaseConsumer = cfg.create()?;
    // Start reading at the current end of every partition.
    let md = consumer.fetch_metadata(Some(&args.common.topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in md
        .topics()
        .first()
        .map(|t| t.partitions())
        .unwrap_or_default()
    {
        tpl.add_partition_offset(&args.common.topic, p.id(), Offset::End)?;
    }
    consumer.assign(&tpl)?;
    // Let the consumer resolve its start offsets before producing.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(1) {
        consumer.poll(Duration::from_millis(50));
    }
    let sampler = BrokerSampler::start(args.common.broker_pid)?;
    let latency = Arc::new(Mutex::new(histogram()?));
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (latency, received, stop) = (latency.clone(), received.clone(), stop.clone());
        std::thread::spawn(move || -> u64 {
            let mut bad = 0;
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(msg)) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                match check(msg.payload().unwrap_or_default()) {
                    Some((_, sent)) => {
                        let us = (now_us() - sent).max(1) as u64;
                        if let Ok(mut h) = latency.lock() {
                            let _ = h.record(us);
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    None => bad += 1,
                }
            }
            bad
        })
    };
    let started = Instant::now();
    let progress = |n: u64| {
        eprintln!(
            "e2e: {n} sent, {} received",
            received.load(Ordering::Relaxed)
        )
    };
    let (sent, bytes, _) = produce_loop(
        &producer,
        &args.common.topic,
        &args.producer,
        u64::MAX,
        Some(Duration::from_secs_f64(args.duration)),
        Some(args.rate),
        &progress,
    )?;
    let wait = Instant::now();
    while received.load(Ordering::Relaxed) < sent && wait.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let bad = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
    let got = received.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let h = latency
        .lock()
        .map_err(|_| anyhow::anyhow!("latency lock"))?
        .clone();
    let mut r = Report::new("e2e");
    r.add(
        "records",
        sent,
        Some(format!(
            "records         {sent} sent, {got} received ({bad} with unexpected content)"
        )),
    );
    r.add("received", got, None);
    r.add(
        "offered_rate",
        args.rate,
        Some(format!(
            "offered rate    {:.0} records/s for {:.1} s",
            args.rate, secs
        )),
    );
    r.latency("end-to-end", &h);
    r.broker(sampler, bytes);
    r.print(args.common.json);
    if got < sent || bad > 0 {
        bail!("{sent} sent but {got} received intact ({bad} bad)");
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().mode {
        Mode::Produce(a) => produce(a),
        Mode::Consume(a) => consume(a),
        Mode::E2e(a) => e2e(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_check_their_own_content() {
        let mut v = vec![0u8; 100];
        fill(&mut v, 42, 7);
        assert_eq!(check(&v), Some((42, 7)));
        v[50] ^= 1;
        assert_eq!(check(&v), None);
        assert_eq!(check(&v[..10]), None);
    }
}
