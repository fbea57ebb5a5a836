//! The harness: a real gateway in this process (listener on 127.0.0.1 port 0, storage over
//! `memory://`, the embedded metadata store in a tempdir), wired as `weir serve` wires it, and
//! a small async Kafka client built on kafka-protocol. Every read has a timeout, so no test
//! can hang.

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use weir_gateway::listener::{Listener, SecurityProtocol};
use weir_gateway::{Gateway, GatewayConfig, HighWatermarks, Registry};
use weir_storage::{ObjectStorage, Storage, StorageConfig};

/// Longest wait for any single response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A fixed base for explicit record timestamps (2023-11-14).
pub const T0: i64 = 1_700_000_000_000;

/// A gateway serving on 127.0.0.1 in this process. Dropping it cancels the server; call
/// [`TestGateway::stop`] to also wait for it and flush storage.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    storage: Arc<dyn Storage>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestGateway {
    /// A gateway with the test defaults: auto-created topics of 2 partitions, no initial
    /// rebalance delay.
    pub async fn start() -> Result<TestGateway> {
        Self::start_with(|_| {}).await
    }

    /// A gateway whose config `tweak` adjusts after the test defaults are set.
    pub async fn start_with(tweak: impl FnOnce(&mut GatewayConfig)) -> Result<TestGateway> {
        let dir = tempfile::tempdir()?;
        let url = format!("embedded://{}", dir.path().join("metadata").display());
        let meta = weir_metadata::open(&url, true).await?;
        let registry = Arc::new(Registry::default());
        let target = weir_storage::open("memory://").await?;
        let storage: Arc<dyn Storage> = Arc::new(ObjectStorage::start_observed(
            target,
            StorageConfig::default(),
            Arc::new(weir_storage::MetadataSink::new(meta.clone())),
            Arc::new(HighWatermarks::new(registry.clone())),
        ));
        let socket = TcpListener::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let (host, port) = weir_gateway::advertise_from(addr);
        let mut config = GatewayConfig {
            advertised_host: host.clone(),
            advertised_port: port,
            auto_create_topics: true,
            default_partitions: 2,
            cluster: weir_gateway::leadership::ClusterConfig {
                // The embedded store is this gateway's alone, as in `weir serve`.
                exclusive: true,
                ..Default::default()
            },
            groups: weir_gateway::groups::GroupConfig {
                initial_rebalance_delay: Duration::ZERO,
                ..Default::default()
            },
            ..GatewayConfig::default()
        };
        tweak(&mut config);
        let gateway = Gateway::start(config, meta, storage.clone(), registry, None).await?;
        gateway.join().await?;
        let listener = Arc::new(Listener {
            protocol: SecurityProtocol::Plaintext,
            advertised_host: host,
            advertised_port: port,
            mechanisms: Vec::new(),
            tls: None,
            cluster: None,
        });
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(weir_gateway::run(
            vec![(socket, listener)],
            gateway.clone(),
            shutdown.clone(),
        ));
        Ok(TestGateway {
            addr,
            gateway,
            storage,
            shutdown,
            server: Some(server),
            _dir: dir,
        })
    }

    pub async fn client(&self) -> Result<Client> {
        Client::connect(self.addr).await
    }

    /// Stops accepting, waits for the server to return, and flushes storage.
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(15), server)
                .await
                .context("the gateway did not stop")??;
        }
        self.storage.shutdown().await;
        Ok(())
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One Kafka connection.
pub struct Client {
    stream: TcpStream,
    next_correlation: i32,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Result<Client> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("connect timed out")??;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            next_correlation: 0,
        })
    }

    /// Sends `req` at `version`; returns its correlation id.
    pub async fn send<R: Request>(&mut self, version: i16, req: &R) -> Result<i32> {
        self.next_correlation += 1;
        let correlation = self.next_correlation;
        let frame = request_frame(version, correlation, req)?;
        self.write_raw(&frame).await?;
        Ok(correlation)
    }

    /// Reads the response to the request sent with `correlation`.
    pub async fn receive<R: Request>(
        &mut self,
        version: i16,
        correlation: i32,
    ) -> Result<R::Response> {
        let frame = self
            .read_frame()
            .await?
            .context("connection closed instead of a response")?;
        decode_response::<R>(frame, version, correlation)
    }

    pub async fn call<R: Request>(&mut self, version: i16, req: &R) -> Result<R::Response> {
        let correlation = self.send(version, req).await?;
        self.receive::<R>(version, correlation).await
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next response frame without its length prefix; None once the server closed the
    /// connection. No frame within [`IO_TIMEOUT`] is an error.
    pub async fn read_frame(&mut self) -> Result<Option<Bytes>> {
        tokio::time::timeout(IO_TIMEOUT, self.read_frame_inner())
            .await
            .context("timed out waiting for the gateway")?
    }

    async fn read_frame_inner(&mut self) -> Result<Option<Bytes>> {
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        }
        let len = i32::from_be_bytes(len);
        ensure!((0..=64 << 20).contains(&len), "response frame length {len}");
        let mut buf = vec![0u8; len as usize];
        self.stream
            .read_exact(&mut buf)
            .await
            .with_context(|| format!("connection closed inside a {len}-byte frame"))?;
        Ok(Some(Bytes::from(buf)))
    }

    /// The gateway closes this connection without answering.
    pub async fn expect_closed(&mut self) -> Result<()> {
        match self.read_frame().await? {
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

/// The request header `key`/`version` uses, encoded.
pub fn header_bytes(key: ApiKey, version: i16, correlation: i32) -> Result<BytesMut> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("weir-inprocess-test")))
        .encode(&mut buf, key.request_header_version(version))?;
    Ok(buf)
}

/// `i32 length | parts`.
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

/// The idempotence fields of a batch: producer id, epoch, base sequence.
pub type Idem = (i64, i16, i32);

/// One uncompressed v2 batch of `n` records `k{i}`/`v{i}` (timestamps `T0 + i`), idempotent if
/// `idem` is given.
pub fn batch(idem: Option<Idem>, n: usize) -> Result<Bytes> {
    let (producer_id, producer_epoch, base_sequence) = idem.unwrap_or((-1, -1, -1));
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: base_sequence.wrapping_add(i as i32),
            timestamp: T0 + i as i64,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("v{i}"))),
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
    Ok(buf.freeze())
}

/// (offset, key, value) of every record of a fetched record set.
pub fn records_of(records: &Option<Bytes>) -> Result<Vec<(i64, String, String)>> {
    let mut buf = records.clone().unwrap_or_default();
    let text = |b: &Option<Bytes>| {
        b.as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for set in RecordBatchDecoder::decode_all(&mut buf)? {
        for r in set.records {
            out.push((r.offset, text(&r.key), text(&r.value)));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Requests the tests make again and again.

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// CreateTopics v7 for one topic; returns its result whatever the error.
pub async fn create_topic(
    c: &mut Client,
    name: &str,
    partitions: i32,
) -> Result<CreatableTopicResult> {
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(5_000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)]);
    let resp = c.call(7, &req).await?;
    ensure!(resp.topics.len() == 1, "CreateTopics response: {resp:?}");
    Ok(resp.topics[0].clone())
}

/// Produces one record set to one partition (Produce v9, acks=all) and returns that
/// partition's answer.
pub async fn produce(
    c: &mut Client,
    topic: &str,
    partition: i32,
    records: Bytes,
) -> Result<PartitionProduceResponse> {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    let resp = c.call(9, &req).await?;
    let p = resp
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .with_context(|| format!("no partition in the produce response {resp:?}"))?;
    Ok(p.clone())
}

/// Fetches one partition by name (Fetch v12, sessionless, no wait).
pub async fn fetch(
    c: &mut Client,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<PartitionData> {
    let req = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    let resp = c.call(12, &req).await?;
    ensure!(resp.error_code == 0, "fetch: error {}", resp.error_code);
    let p = resp
        .responses
        .first()
        .and_then(|t| t.partitions.first())
        .with_context(|| format!("no partition in the fetch response {resp:?}"))?;
    Ok(p.clone())
}

/// ListOffsets v5 for one partition at `timestamp` (-1 latest, -2 earliest).
pub async fn list_offset(
    c: &mut Client,
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
    let resp = c.call(5, &req).await?;
    let p = resp
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .context("no partition in the ListOffsets response")?;
    Ok(p.clone())
}
