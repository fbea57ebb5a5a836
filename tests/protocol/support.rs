//! The harness: a real `weir serve` child process on a free port, and a tiny blocking Kafka
//! client built on kafka-protocol. Every socket operation has a timeout, so no test can hang.

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{
    CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Longest wait for any single socket read or write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// A fixed base for explicit record timestamps (2023-11-14).
pub const T0: i64 = 1_700_000_000_000;

/// The Kafka error code of `e`.
pub fn code(e: ResponseError) -> i16 {
    e.code()
}

/// A `weir serve` child process with its own data directory; killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The admin API address, when a test set one.
    pub admin: Option<SocketAddr>,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Server {
    /// Starts `weir serve` with `args` appended to the listen and data-dir flags.
    pub fn start(args: &[&str]) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (child, addr) = spawn(dir.path(), &args)?;
        Ok(Server {
            child,
            addr,
            admin: None,
            dir,
            args,
        })
    }

    /// Kills the process with SIGKILL (no shutdown, no flush) and starts it again on the
    /// same data directory.
    pub fn kill_and_restart(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        let (child, addr) = spawn(self.dir.path(), &self.args)?;
        self.child = child;
        self.addr = addr;
        Ok(())
    }

    pub fn client(&self) -> Result<Client> {
        Client::connect(self.addr)
    }

    /// The process is running and a fresh connection gets a Metadata answer.
    pub fn assert_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("weir exited ({status}); log:\n{}", self.log_tail());
        }
        let mut c = self
            .client()
            .context("connecting to check the server is alive")?;
        let resp = c.call(1, &MetadataRequest::default().with_topics(Some(vec![])))?;
        ensure!(
            resp.brokers.len() == 1,
            "metadata after a bad frame: {resp:?}"
        );
        Ok(())
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(self.dir.path())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("weir.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Starts the binary on a free port and waits for its ready line (a few attempts, in case
/// another process takes the port between our probe and the server's bind).
fn spawn(dir: &Path, args: &[String]) -> Result<(Child, SocketAddr)> {
    let mut last = anyhow!("not started");
    for _ in 0..3 {
        match spawn_once(dir, args) {
            Ok(started) => return Ok(started),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn spawn_once(dir: &Path, args: &[String]) -> Result<(Child, SocketAddr)> {
    let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("weir.log"))?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("spawning weir")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining stdout for the life of the process.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("weir is ready: bootstrap.servers=") => {
                ensure!(
                    line.ends_with(&addr.to_string()),
                    "unexpected ready line {line:?}"
                );
                return Ok((child, addr));
            }
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "weir did not print its ready line within {READY_TIMEOUT:?}; log:\n{}",
                    log_tail(dir)
                );
            }
        }
    }
}

/// A blocking Kafka connection.
pub struct Client {
    stream: TcpStream,
    next_correlation: i32,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            next_correlation: 1,
        })
    }

    pub fn set_read_timeout(&self, timeout: Duration) -> Result<()> {
        Ok(self.stream.set_read_timeout(Some(timeout))?)
    }

    fn correlation(&mut self) -> i32 {
        self.next_correlation += 1;
        self.next_correlation
    }

    /// Sends `req` at `version`; returns its correlation id.
    pub fn send<R: Request>(&mut self, version: i16, req: &R) -> Result<i32> {
        let correlation = self.correlation();
        let frame = request_frame(version, correlation, req)?;
        self.write_raw(&frame)?;
        Ok(correlation)
    }

    /// Reads the response to the request sent with `correlation`.
    pub fn receive<R: Request>(&mut self, version: i16, correlation: i32) -> Result<R::Response> {
        let frame = self
            .read_frame()?
            .context("connection closed instead of a response")?;
        decode_response::<R>(frame, version, correlation)
    }

    pub fn call<R: Request>(&mut self, version: i16, req: &R) -> Result<R::Response> {
        let correlation = self.send(version, req)?;
        self.receive::<R>(version, correlation)
    }

    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Closes our sending side (the server sees EOF).
    pub fn shutdown_write(&self) -> Result<()> {
        Ok(self.stream.shutdown(std::net::Shutdown::Write)?)
    }

    /// The next response frame without its length prefix; None once the server closed the
    /// connection (EOF or reset). A read timeout is an error.
    pub fn read_frame(&mut self) -> Result<Option<Bytes>> {
        let mut len = [0u8; 4];
        if !self.read_or_closed(&mut len)? {
            return Ok(None);
        }
        let len = i32::from_be_bytes(len);
        ensure!((0..=64 << 20).contains(&len), "response frame length {len}");
        let mut buf = vec![0u8; len as usize];
        ensure!(
            self.read_or_closed(&mut buf)?,
            "connection closed inside a {len}-byte frame"
        );
        Ok(Some(Bytes::from(buf)))
    }

    /// Fills `buf`; false if the connection was closed before the first byte.
    fn read_or_closed(&mut self, buf: &mut [u8]) -> Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => bail!("connection closed after {filled} of {} bytes", buf.len()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e)
                    if filled == 0
                        && matches!(
                            e.kind(),
                            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                        ) =>
                {
                    return Ok(false)
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    bail!("timed out waiting for the server")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// The server closes this connection without answering.
    pub fn expect_closed(&mut self) -> Result<()> {
        match self.read_frame()? {
            None => Ok(()),
            Some(frame) => bail!(
                "expected the connection to be closed, got a {}-byte frame",
                frame.len()
            ),
        }
    }
}

pub fn api_key<R: Request>() -> Result<ApiKey> {
    ApiKey::try_from(R::KEY).map_err(|()| anyhow!("unknown api key {}", R::KEY))
}

/// The request header `key`/`version` uses, encoded (correlation id `correlation`).
pub fn header_bytes(key: ApiKey, version: i16, correlation: i32) -> Result<BytesMut> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("weir-protocol-test")))
        .encode(&mut buf, key.request_header_version(version))?;
    Ok(buf)
}

/// `i32 length | bytes`.
pub fn framed(parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut buf = BytesMut::with_capacity(4 + len);
    buf.put_i32(len as i32);
    for p in parts {
        buf.put_slice(p);
    }
    buf.freeze()
}

/// A whole request frame: length, header, body.
pub fn request_frame<R: Request>(version: i16, correlation: i32, req: &R) -> Result<Bytes> {
    let key = api_key::<R>()?;
    let header = header_bytes(key, version, correlation)?;
    let mut body = BytesMut::new();
    req.encode(&mut body, version)
        .with_context(|| format!("encoding {key:?} v{version}"))?;
    Ok(framed(&[&header, &body]))
}

/// Decodes a response frame: header (ApiVersions always v0), body, and nothing left over.
pub fn decode_response<R: Request>(
    mut frame: Bytes,
    version: i16,
    correlation: i32,
) -> Result<R::Response> {
    let key = api_key::<R>()?;
    let header_version = if key == ApiKey::ApiVersions {
        0
    } else {
        key.response_header_version(version)
    };
    let header = ResponseHeader::decode(&mut frame, header_version)?;
    ensure!(
        header.correlation_id == correlation,
        "correlation {} != {correlation}",
        header.correlation_id
    );
    let body = R::Response::decode(&mut frame, version)
        .with_context(|| format!("decoding {key:?} v{version}"))?;
    ensure!(
        !frame.has_remaining(),
        "{} bytes left after the {key:?} v{version} response",
        frame.remaining()
    );
    Ok(body)
}

// ---------------------------------------------------------------------------------------------
// Records.

/// One record to write: key, value, timestamp.
pub type Rec<'a> = (&'a str, &'a str, i64);

/// The idempotence fields of a batch: producer id, epoch, base sequence.
pub type Idem = (i64, i16, i32);

/// One v2 record batch holding `records` (uncompressed), idempotent if `idem` is given.
pub fn batch(idem: Option<Idem>, records: &[Rec]) -> Result<Bytes> {
    let (producer_id, producer_epoch, base_sequence) = idem.unwrap_or((-1, -1, -1));
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, &(key, value, timestamp))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // offset - sequence is constant, so the encoder writes one batch.
            sequence: base_sequence.wrapping_add(i as i32),
            timestamp,
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )?;
    let buf = buf.freeze();
    ensure!(
        RecordBatchDecoder::decode_batch_info(&mut buf.clone())?.len() == 1,
        "encoder split the batch"
    );
    Ok(buf)
}

/// `n` records `k{i}`/`v{i}` with timestamps `T0 + i`, as one batch.
pub fn simple_batch(idem: Option<Idem>, n: usize) -> Result<Bytes> {
    let owned: Vec<(String, String, i64)> = (0..n)
        .map(|i| (format!("k{i}"), format!("v{i}"), T0 + i as i64))
        .collect();
    let recs: Vec<Rec> = owned
        .iter()
        .map(|(k, v, t)| (k.as_str(), v.as_str(), *t))
        .collect();
    batch(idem, &recs)
}

/// Every record of a fetched record set, in order.
pub fn decode_records(records: &Option<Bytes>) -> Result<Vec<Record>> {
    let mut buf = records.clone().unwrap_or_default();
    let mut out = Vec::new();
    for set in RecordBatchDecoder::decode_all(&mut buf)? {
        out.extend(set.records);
    }
    Ok(out)
}

/// (offset, key, value) of records at or above `from`.
pub fn offsets_keys_values(records: &[Record], from: i64) -> Vec<(i64, String, String)> {
    let text = |b: &Option<Bytes>| {
        b.as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    records
        .iter()
        .filter(|r| r.offset >= from)
        .map(|r| (r.offset, text(&r.key), text(&r.value)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Requests the tests make again and again.

/// A topic as tests address it: by name (old versions) or by id (Fetch v13+).
#[derive(Clone, Debug)]
pub struct Topic {
    pub name: String,
    pub id: Uuid,
}

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Creates a topic (CreateTopics v7) and returns its name and id.
pub fn create_topic(
    c: &mut Client,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> Result<Topic> {
    let configs = configs
        .iter()
        .map(|(k, v)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string(k.to_string()))
                .with_value(Some(StrBytes::from_string(v.to_string())))
        })
        .collect();
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)
            .with_configs(configs)]);
    let resp = c.call(7, &req)?;
    let t = resp
        .topics
        .first()
        .context("no topic in the CreateTopics response")?;
    ensure!(
        t.error_code == 0,
        "CreateTopics {name}: error {} {:?}",
        t.error_code,
        t.error_message
    );
    ensure!(!t.topic_id.is_nil(), "CreateTopics v7 returned no topic id");
    Ok(Topic {
        name: name.to_string(),
        id: t.topic_id,
    })
}

pub fn produce_request(acks: i16, topic: &str, partition: i32, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])])
}

/// Produces one record set to one partition and returns that partition's answer.
pub fn produce(
    c: &mut Client,
    version: i16,
    acks: i16,
    topic: &str,
    partition: i32,
    records: Bytes,
) -> Result<PartitionProduceResponse> {
    let resp = c.call(version, &produce_request(acks, topic, partition, records))?;
    ensure!(
        resp.responses.len() == 1,
        "produce response topics: {resp:?}"
    );
    let t = &resp.responses[0];
    ensure!(
        t.name.0.as_str() == topic,
        "produce response for topic {:?}",
        t.name
    );
    ensure!(
        t.partition_responses.len() == 1,
        "produce response partitions: {resp:?}"
    );
    Ok(t.partition_responses[0].clone())
}

/// Produces and requires success; returns the base offset.
pub fn produce_ok(c: &mut Client, topic: &str, partition: i32, records: Bytes) -> Result<i64> {
    let p = produce(c, 9, -1, topic, partition, records)?;
    ensure!(
        p.error_code == 0,
        "produce to {topic}/{partition}: error {} {:?}",
        p.error_code,
        p.error_message
    );
    Ok(p.base_offset)
}

/// A sessionless fetch request for the given (partition, offset) pairs of one topic.
pub fn fetch_request(version: i16, topic: &Topic, parts: &[(i32, i64)]) -> FetchRequest {
    let partitions = parts
        .iter()
        .map(|&(p, offset)| {
            FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)
        })
        .collect();
    let mut t = FetchTopic::default().with_partitions(partitions);
    if version >= 13 {
        t = t.with_topic_id(topic.id);
    } else {
        t = t.with_topic(topic_name(&topic.name));
    }
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(16 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![t])
}

/// Fetches one partition (sessionless, no wait) and returns its data.
pub fn fetch(
    c: &mut Client,
    version: i16,
    topic: &Topic,
    partition: i32,
    offset: i64,
) -> Result<PartitionData> {
    let resp = c.call(
        version,
        &fetch_request(version, topic, &[(partition, offset)]),
    )?;
    ensure!(
        resp.error_code == 0,
        "fetch: top-level error {}",
        resp.error_code
    );
    ensure!(
        resp.responses.len() == 1 && resp.responses[0].partitions.len() == 1,
        "fetch response shape: {resp:?}"
    );
    Ok(resp.responses[0].partitions[0].clone())
}

/// ListOffsets for one partition at `timestamp` (-1 latest, -2 earliest, -3 max timestamp).
pub fn list_offset(
    c: &mut Client,
    version: i16,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Result<ListOffsetsPartitionResponse> {
    let req = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(timestamp)])]);
    let resp = c.call(version, &req)?;
    let p = resp
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .context("no partition in the ListOffsets response")?;
    Ok(p.clone())
}

/// The log end offset (ListOffsets latest), requiring no error.
pub fn log_end(c: &mut Client, topic: &str, partition: i32) -> Result<i64> {
    let p = list_offset(c, 5, topic, partition, -1)?;
    ensure!(
        p.error_code == 0,
        "ListOffsets latest: error {}",
        p.error_code
    );
    Ok(p.offset)
}

/// Asserts `elapsed` lies in `range`, naming `what`.
pub fn assert_elapsed(
    what: &str,
    elapsed: Duration,
    range: std::ops::Range<Duration>,
) -> Result<()> {
    ensure!(
        range.contains(&elapsed),
        "{what}: took {elapsed:?}, expected within {range:?}"
    );
    Ok(())
}

/// Appends the unsigned varint of `v`.
pub fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Reads an unsigned varint.
pub fn get_varint(buf: &mut Bytes) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        ensure!(buf.has_remaining(), "truncated varint");
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("varint too long")
}
