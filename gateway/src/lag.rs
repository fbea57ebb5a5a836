//! Consumer lag as operators see it (`weir lag`): for each group, each partition it committed
//! an offset for, the log end offset minus the committed offset.
//!
//! It asks a running Weir over the Kafka protocol (ListGroups, OffsetFetch, ListOffsets),
//! so it works against any gateway address, and with any Kafka-compatible broker.

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_groups_response::ListGroupsResponse;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::list_offsets_response::ListOffsetsResponse;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponse;
use kafka_protocol::messages::{ApiKey, GroupId, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One partition's lag in one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagRow {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub log_end: i64,
    pub lag: i64,
}

struct Client {
    stream: TcpStream,
    correlation: i32,
}

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE: usize = 64 << 20;

impl Client {
    async fn connect(addr: &str) -> Result<Self, String> {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        Ok(Client {
            stream,
            correlation: 0,
        })
    }

    async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp, String> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("weir-lag")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, key.request_header_version(version))
            .map_err(|e| e.to_string())?;
        req.encode(&mut buf, version).map_err(|e| e.to_string())?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let io = async {
            self.stream.write_all(&buf).await?;
            let len = self.stream.read_i32().await?;
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > MAX_RESPONSE {
                return Err(std::io::Error::other("response too large"));
            }
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).await?;
            Ok(body)
        };
        let body = tokio::time::timeout(TIMEOUT, io)
            .await
            .map_err(|_| "request timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let mut bytes = bytes::Bytes::from(body);
        ResponseHeader::decode(&mut bytes, key.response_header_version(version))
            .map_err(|e| e.to_string())?;
        let resp = Resp::decode(&mut bytes, version).map_err(|e| e.to_string())?;
        let _ = bytes.remaining();
        Ok(resp)
    }
}

fn error(code: i16) -> Option<String> {
    (code != 0).then(|| {
        kafka_protocol::ResponseError::try_from_code(code)
            .map_or_else(|| code.to_string(), |e| format!("{e:?}"))
    })
}

/// Lag of `group` (or of every group) at the broker `bootstrap`.
pub async fn consumer_lag(bootstrap: &str, group: Option<&str>) -> Result<Vec<LagRow>, String> {
    let mut client = Client::connect(bootstrap).await?;
    let groups: Vec<String> = match group {
        Some(g) => vec![g.to_string()],
        None => {
            let resp: ListGroupsResponse = client
                .call(ApiKey::ListGroups, 4, &ListGroupsRequest::default())
                .await?;
            if let Some(e) = error(resp.error_code) {
                return Err(format!("ListGroups failed: {e}"));
            }
            resp.groups
                .into_iter()
                .map(|g| g.group_id.0.to_string())
                .collect()
        }
    };
    let mut committed: Vec<(String, String, i32, i64)> = Vec::new();
    for g in &groups {
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(g.clone())))
            .with_topics(None);
        let resp: OffsetFetchResponse = client.call(ApiKey::OffsetFetch, 7, &req).await?;
        if let Some(e) = error(resp.error_code) {
            return Err(format!("OffsetFetch for group {g} failed: {e}"));
        }
        for t in resp.topics {
            for p in t.partitions {
                if p.committed_offset >= 0 {
                    committed.push((
                        g.clone(),
                        t.name.0.to_string(),
                        p.partition_index,
                        p.committed_offset,
                    ));
                }
            }
        }
    }
    let mut wanted: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (_, topic, p, _) in &committed {
        let parts = wanted.entry(topic.clone()).or_default();
        if !parts.contains(p) {
            parts.push(*p);
        }
    }
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    if !wanted.is_empty() {
        let topics = wanted
            .iter()
            .map(|(t, ps)| {
                ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(t.clone())))
                    .with_partitions(
                        ps.iter()
                            .map(|p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(*p)
                                    .with_timestamp(-1)
                            })
                            .collect(),
                    )
            })
            .collect();
        let req = ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(topics);
        let resp: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 5, &req).await?;
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code == 0 {
                    ends.insert((t.name.0.to_string(), p.partition_index), p.offset);
                }
            }
        }
    }
    Ok(committed
        .into_iter()
        .map(|(group, topic, partition, committed)| {
            let log_end = ends.get(&(topic.clone(), partition)).copied().unwrap_or(-1);
            let lag = if log_end >= 0 {
                (log_end - committed).max(0)
            } else {
                -1
            };
            LagRow {
                group,
                topic,
                partition,
                committed,
                log_end,
                lag,
            }
        })
        .collect())
}
