//! The metadata service over QUIC: [`MetadataServer`] serves any [`MetadataStore`] backend to
//! other processes (`weir metadata`), and [`RemoteStore`] is the backend those processes
//! use (`quic://host:port?ca=PATH`).
//!
//! One request per QUIC stream; the messages are the [`Request`] and [`Response`] enums,
//! one variant per trait method, encoded by `weir-rpc` (postcard). The ALPN id [`ALPN`]
//! carries the protocol version: a change to these enums that older peers cannot read bumps
//! it, and mismatched peers fail at the handshake.

use crate::{
    CommitOutcome, CommittedOffset, MetadataError, MetadataStore, PartitionState, PartitionTail,
    Result, RetentionLimits, TopicRecord, Truncation,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use weir_common::{
    IndexEntry, LeaderEpoch, Offset, PartitionCommit, PartitionIndex, TopicId, TopicPartition,
};

/// The metadata protocol's ALPN id: service name and version.
pub const ALPN: &[u8] = b"weir-metadata/3";

/// One call of the metadata protocol.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    ClusterId,
    CreateTopic {
        name: String,
        partitions: i32,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic(String),
    GetTopic(String),
    ListTopics,
    CreatePartitions {
        name: String,
        total: i32,
    },
    SetTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    AcquirePartitions {
        topic: TopicId,
        from: PartitionIndex,
    },
    TakeLeadership {
        tp: TopicPartition,
        node: i32,
        expected_epoch: LeaderEpoch,
    },
    ReleaseLeadership {
        tp: TopicPartition,
        node: i32,
        epoch: LeaderEpoch,
    },
    PartitionStates(TopicId),
    CommitIndex(Vec<PartitionCommit>),
    ReplaceIndex {
        tp: TopicPartition,
        old: Vec<IndexEntry>,
        new: IndexEntry,
    },
    PartitionTail(TopicPartition),
    IndexFrom {
        tp: TopicPartition,
        offset: Offset,
        limit: u64,
    },
    IndexForTimestamp {
        tp: TopicPartition,
        timestamp: i64,
    },
    IndexMaxTimestamp(TopicPartition),
    DeleteRecords {
        tp: TopicPartition,
        offset: Offset,
    },
    ApplyRetention {
        tp: TopicPartition,
        limits: RetentionLimits,
    },
    AllocateProducerId,
    LiveObjects,
    CommitOffsets {
        group: String,
        offsets: Vec<CommittedOffset>,
    },
    FetchOffsets(String),
    DeleteOffsets {
        group: String,
        partitions: Option<Vec<(String, PartitionIndex)>>,
    },
    OffsetGroups,
    RecordGet {
        namespace: String,
        key: String,
    },
    RecordPut {
        namespace: String,
        key: String,
        value: Vec<u8>,
        create_only: bool,
    },
    RecordDelete {
        namespace: String,
        key: String,
    },
    RecordList(String),
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Unit,
    Text(String),
    Texts(Vec<String>),
    Topic(TopicRecord),
    MaybeTopic(Option<TopicRecord>),
    Topics(Vec<TopicRecord>),
    TopicDeleted(TopicRecord, Vec<String>),
    Tails(Vec<PartitionTail>),
    States(Vec<PartitionState>),
    MaybeTail(Option<PartitionTail>),
    Outcomes(Vec<CommitOutcome>),
    Entries(Vec<IndexEntry>),
    MaybeEntry(Option<IndexEntry>),
    Replaced(Option<Vec<String>>),
    Truncation(Truncation),
    Number(i64),
    Offsets(Vec<CommittedOffset>),
    Bytes(Option<Vec<u8>>),
    Flag(bool),
    Records(Vec<(String, Vec<u8>)>),
    Error(MetadataError),
}

/// Serves a backend to [`RemoteStore`] clients.
#[derive(Debug)]
pub struct MetadataServer {
    store: Arc<dyn MetadataStore>,
}

impl MetadataServer {
    pub fn new(store: Arc<dyn MetadataStore>) -> Self {
        MetadataServer { store }
    }

    async fn dispatch(&self, request: Request) -> Result<Response> {
        let s = &self.store;
        Ok(match request {
            Request::ClusterId => Response::Text(s.cluster_id().await?),
            Request::CreateTopic {
                name,
                partitions,
                configs,
            } => Response::Topic(s.create_topic(&name, partitions, configs).await?),
            Request::DeleteTopic(name) => {
                let (topic, dead) = s.delete_topic(&name).await?;
                Response::TopicDeleted(topic, dead)
            }
            Request::GetTopic(name) => Response::MaybeTopic(s.get_topic(&name).await?),
            Request::ListTopics => Response::Topics(s.list_topics().await?),
            Request::CreatePartitions { name, total } => {
                Response::Topic(s.create_partitions(&name, total).await?)
            }
            Request::SetTopicConfigs { name, configs } => {
                Response::Topic(s.set_topic_configs(&name, configs).await?)
            }
            Request::AcquirePartitions { topic, from } => {
                Response::Tails(s.acquire_partitions(topic, from).await?)
            }
            Request::TakeLeadership {
                tp,
                node,
                expected_epoch,
            } => Response::MaybeTail(s.take_leadership(tp, node, expected_epoch).await?),
            Request::ReleaseLeadership { tp, node, epoch } => {
                Response::Flag(s.release_leadership(tp, node, epoch).await?)
            }
            Request::PartitionStates(topic) => Response::States(s.partition_states(topic).await?),
            Request::CommitIndex(commits) => Response::Outcomes(s.commit_index(commits).await?),
            Request::ReplaceIndex { tp, old, new } => {
                Response::Replaced(s.replace_index(tp, old, new).await?)
            }
            Request::PartitionTail(tp) => Response::MaybeTail(s.partition_tail(tp).await?),
            Request::IndexFrom { tp, offset, limit } => Response::Entries(
                s.index_from(tp, offset, usize::try_from(limit).unwrap_or(usize::MAX))
                    .await?,
            ),
            Request::IndexForTimestamp { tp, timestamp } => {
                Response::MaybeEntry(s.index_for_timestamp(tp, timestamp).await?)
            }
            Request::IndexMaxTimestamp(tp) => {
                Response::MaybeEntry(s.index_max_timestamp(tp).await?)
            }
            Request::DeleteRecords { tp, offset } => {
                Response::Truncation(s.delete_records(tp, offset).await?)
            }
            Request::ApplyRetention { tp, limits } => {
                Response::Truncation(s.apply_retention(tp, limits).await?)
            }
            Request::AllocateProducerId => Response::Number(s.allocate_producer_id().await?),
            Request::LiveObjects => Response::Texts(s.live_objects().await?),
            Request::CommitOffsets { group, offsets } => {
                s.commit_offsets(&group, offsets).await?;
                Response::Unit
            }
            Request::FetchOffsets(group) => Response::Offsets(s.fetch_offsets(&group).await?),
            Request::DeleteOffsets { group, partitions } => {
                Response::Number(s.delete_offsets(&group, partitions).await? as i64)
            }
            Request::OffsetGroups => Response::Texts(s.offset_groups().await?),
            Request::RecordGet { namespace, key } => {
                Response::Bytes(s.record_get(&namespace, &key).await?)
            }
            Request::RecordPut {
                namespace,
                key,
                value,
                create_only,
            } => {
                s.record_put(&namespace, &key, value, create_only).await?;
                Response::Unit
            }
            Request::RecordDelete { namespace, key } => {
                Response::Flag(s.record_delete(&namespace, &key).await?)
            }
            Request::RecordList(namespace) => Response::Records(s.record_list(&namespace).await?),
        })
    }
}

impl weir_rpc::Handler for MetadataServer {
    type Request = Request;
    type Response = Response;
    type SessionIn = ();
    type SessionOut = ();

    async fn handle(&self, request: Request) -> Response {
        self.dispatch(request).await.unwrap_or_else(Response::Error)
    }

    fn malformed(&self, error: String) -> Response {
        Response::Error(MetadataError::Invalid(error))
    }

    /// The metadata protocol has no sessions.
    async fn session(
        self: Arc<Self>,
        _send: weir_rpc::SessionSender<()>,
        _recv: weir_rpc::SessionReceiver<()>,
    ) {
    }
}

/// The backend of a process that reaches the metadata service over QUIC.
#[derive(Debug)]
pub struct RemoteStore {
    client: weir_rpc::Client,
}

impl RemoteStore {
    /// A store served at `addr` whose certificate is signed by the CA in `ca` and names
    /// `server_name`.
    pub fn connect(addr: SocketAddr, server_name: &str, ca: &Path) -> Result<Self> {
        let client = weir_rpc::Client::new(addr, server_name, ca, ALPN, Duration::from_secs(10))
            .map_err(|e| MetadataError::Backend(e.to_string()))?;
        Ok(RemoteStore { client })
    }

    async fn call(&self, request: Request) -> Result<Response> {
        match self.client.call::<_, Response>(&request).await {
            Ok(Response::Error(e)) => Err(e),
            Ok(response) => Ok(response),
            Err(e) => Err(MetadataError::Backend(format!("metadata service: {e}"))),
        }
    }
}

fn unexpected(response: Response) -> MetadataError {
    MetadataError::Corrupt(format!(
        "unexpected response from the metadata service: {response:?}"
    ))
}

/// Calls and unpacks the one response variant the request expects.
macro_rules! expect {
    ($self:ident, $request:expr, $variant:pat => $value:expr) => {
        match $self.call($request).await? {
            $variant => Ok($value),
            other => Err(unexpected(other)),
        }
    };
}

#[async_trait]
impl MetadataStore for RemoteStore {
    async fn cluster_id(&self) -> Result<String> {
        expect!(self, Request::ClusterId, Response::Text(id) => id)
    }

    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicRecord> {
        let request = Request::CreateTopic {
            name: name.to_string(),
            partitions,
            configs,
        };
        expect!(self, request, Response::Topic(t) => t)
    }

    async fn delete_topic(&self, name: &str) -> Result<(TopicRecord, Vec<String>)> {
        expect!(self, Request::DeleteTopic(name.to_string()), Response::TopicDeleted(t, d) => (t, d))
    }

    async fn get_topic(&self, name: &str) -> Result<Option<TopicRecord>> {
        expect!(self, Request::GetTopic(name.to_string()), Response::MaybeTopic(t) => t)
    }

    async fn list_topics(&self) -> Result<Vec<TopicRecord>> {
        expect!(self, Request::ListTopics, Response::Topics(t) => t)
    }

    async fn create_partitions(&self, name: &str, total: i32) -> Result<TopicRecord> {
        let request = Request::CreatePartitions {
            name: name.to_string(),
            total,
        };
        expect!(self, request, Response::Topic(t) => t)
    }

    async fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicRecord> {
        let request = Request::SetTopicConfigs {
            name: name.to_string(),
            configs,
        };
        expect!(self, request, Response::Topic(t) => t)
    }

    async fn acquire_partitions(
        &self,
        topic: TopicId,
        from: PartitionIndex,
    ) -> Result<Vec<PartitionTail>> {
        expect!(self, Request::AcquirePartitions { topic, from }, Response::Tails(t) => t)
    }

    async fn take_leadership(
        &self,
        tp: TopicPartition,
        node: i32,
        expected_epoch: LeaderEpoch,
    ) -> Result<Option<PartitionTail>> {
        expect!(self, Request::TakeLeadership { tp, node, expected_epoch }, Response::MaybeTail(t) => t)
    }

    async fn release_leadership(
        &self,
        tp: TopicPartition,
        node: i32,
        epoch: LeaderEpoch,
    ) -> Result<bool> {
        expect!(self, Request::ReleaseLeadership { tp, node, epoch }, Response::Flag(f) => f)
    }

    async fn partition_states(&self, topic: TopicId) -> Result<Vec<PartitionState>> {
        expect!(self, Request::PartitionStates(topic), Response::States(s) => s)
    }

    async fn partition_tail(&self, tp: TopicPartition) -> Result<Option<PartitionTail>> {
        expect!(self, Request::PartitionTail(tp), Response::MaybeTail(t) => t)
    }

    async fn commit_index(&self, commits: Vec<PartitionCommit>) -> Result<Vec<CommitOutcome>> {
        expect!(self, Request::CommitIndex(commits), Response::Outcomes(o) => o)
    }

    async fn replace_index(
        &self,
        tp: TopicPartition,
        old: Vec<IndexEntry>,
        new: IndexEntry,
    ) -> Result<Option<Vec<String>>> {
        expect!(self, Request::ReplaceIndex { tp, old, new }, Response::Replaced(r) => r)
    }

    async fn index_from(
        &self,
        tp: TopicPartition,
        offset: Offset,
        limit: usize,
    ) -> Result<Vec<IndexEntry>> {
        let request = Request::IndexFrom {
            tp,
            offset,
            limit: limit as u64,
        };
        expect!(self, request, Response::Entries(e) => e)
    }

    async fn index_for_timestamp(
        &self,
        tp: TopicPartition,
        timestamp: i64,
    ) -> Result<Option<IndexEntry>> {
        expect!(self, Request::IndexForTimestamp { tp, timestamp }, Response::MaybeEntry(e) => e)
    }

    async fn index_max_timestamp(&self, tp: TopicPartition) -> Result<Option<IndexEntry>> {
        expect!(self, Request::IndexMaxTimestamp(tp), Response::MaybeEntry(e) => e)
    }

    async fn delete_records(&self, tp: TopicPartition, offset: Offset) -> Result<Truncation> {
        expect!(self, Request::DeleteRecords { tp, offset }, Response::Truncation(t) => t)
    }

    async fn apply_retention(
        &self,
        tp: TopicPartition,
        limits: RetentionLimits,
    ) -> Result<Truncation> {
        expect!(self, Request::ApplyRetention { tp, limits }, Response::Truncation(t) => t)
    }

    async fn allocate_producer_id(&self) -> Result<i64> {
        expect!(self, Request::AllocateProducerId, Response::Number(n) => n)
    }

    async fn live_objects(&self) -> Result<Vec<String>> {
        expect!(self, Request::LiveObjects, Response::Texts(t) => t)
    }

    async fn commit_offsets(&self, group: &str, offsets: Vec<CommittedOffset>) -> Result<()> {
        let request = Request::CommitOffsets {
            group: group.to_string(),
            offsets,
        };
        expect!(self, request, Response::Unit => ())
    }

    async fn fetch_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>> {
        expect!(self, Request::FetchOffsets(group.to_string()), Response::Offsets(o) => o)
    }

    async fn delete_offsets(
        &self,
        group: &str,
        partitions: Option<Vec<(String, PartitionIndex)>>,
    ) -> Result<usize> {
        let request = Request::DeleteOffsets {
            group: group.to_string(),
            partitions,
        };
        expect!(self, request, Response::Number(n) => usize::try_from(n).unwrap_or(0))
    }

    async fn offset_groups(&self) -> Result<Vec<String>> {
        expect!(self, Request::OffsetGroups, Response::Texts(t) => t)
    }

    async fn record_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let request = Request::RecordGet {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        expect!(self, request, Response::Bytes(b) => b)
    }

    async fn record_put(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        create_only: bool,
    ) -> Result<()> {
        let request = Request::RecordPut {
            namespace: namespace.to_string(),
            key: key.to_string(),
            value,
            create_only,
        };
        expect!(self, request, Response::Unit => ())
    }

    async fn record_delete(&self, namespace: &str, key: &str) -> Result<bool> {
        let request = Request::RecordDelete {
            namespace: namespace.to_string(),
            key: key.to_string(),
        };
        expect!(self, request, Response::Flag(f) => f)
    }

    async fn record_list(&self, namespace: &str) -> Result<Vec<(String, Vec<u8>)>> {
        expect!(self, Request::RecordList(namespace.to_string()), Response::Records(r) => r)
    }
}
