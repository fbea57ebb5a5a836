//! One handler per Kafka API, and the table of what Weir advertises.
//!
//! [`SUPPORTED`] (in `supported.rs`) is the single source of truth: ApiVersions advertises
//! exactly it, the connection decodes nothing else, and the guard's versions are derived from it
//! ([`crate::guard::guarded_versions`]).

pub mod admin;
pub mod api_versions;
pub mod configs;
pub mod fetch;
pub mod groups;
pub mod list_offsets;
pub mod metadata;
pub mod produce;
mod supported;

pub use supported::{is_supported, SUPPORTED};

use crate::Gateway;
use futures::future::BoxFuture;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::sync::Arc;

/// What a handler knows about the request it serves.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub api_key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: String,
    /// The client's address as Kafka shows it (`/127.0.0.1`).
    pub client_host: String,
}

/// A response under way (None: send nothing).
pub type Pending = BoxFuture<'static, Option<ResponseKind>>;

fn ready(response: ResponseKind) -> (Pending, bool) {
    (Box::pin(async move { Some(response) }), true)
}

/// Starts handling a decoded request. Produce is begun right away (offsets assigned in
/// arrival order) and returned as pipelined; everything else is a lazy barrier future.
pub async fn handle(
    gateway: &Arc<Gateway>,
    ctx: &RequestContext,
    request: RequestKind,
) -> (Pending, bool) {
    let gw = gateway.clone();
    let v = ctx.version;
    match request {
        RequestKind::Produce(req) => (produce::begin(gateway, v, req).await, false),
        RequestKind::ApiVersions(_) => ready(ResponseKind::ApiVersions(api_versions::response(v))),
        RequestKind::Fetch(req) => (
            Box::pin(async move { Some(ResponseKind::Fetch(fetch::handle(&gw, v, req).await)) }),
            true,
        ),
        RequestKind::ListOffsets(req) => (
            Box::pin(async move {
                Some(ResponseKind::ListOffsets(
                    list_offsets::handle(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::Metadata(req) => (
            Box::pin(
                async move { Some(ResponseKind::Metadata(metadata::handle(&gw, v, req).await)) },
            ),
            true,
        ),
        RequestKind::CreateTopics(req) => (
            Box::pin(async move {
                Some(ResponseKind::CreateTopics(
                    admin::create_topics(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::DeleteTopics(req) => (
            Box::pin(async move {
                Some(ResponseKind::DeleteTopics(
                    admin::delete_topics(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::CreatePartitions(req) => (
            Box::pin(async move {
                Some(ResponseKind::CreatePartitions(
                    admin::create_partitions(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::DeleteRecords(req) => (
            Box::pin(async move {
                Some(ResponseKind::DeleteRecords(
                    admin::delete_records(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::InitProducerId(req) => (
            Box::pin(async move {
                Some(ResponseKind::InitProducerId(
                    admin::init_producer_id(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::DescribeCluster(req) => ready(ResponseKind::DescribeCluster(
            admin::describe_cluster(gateway, v, req),
        )),
        RequestKind::DescribeConfigs(req) => ready(ResponseKind::DescribeConfigs(
            configs::describe(gateway, v, req),
        )),
        RequestKind::AlterConfigs(req) => (
            Box::pin(async move {
                Some(ResponseKind::AlterConfigs(
                    configs::alter(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::IncrementalAlterConfigs(req) => (
            Box::pin(async move {
                Some(ResponseKind::IncrementalAlterConfigs(
                    configs::incremental_alter(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::FindCoordinator(req) => ready(ResponseKind::FindCoordinator(
            groups::find_coordinator(gateway, v, req),
        )),
        RequestKind::JoinGroup(req) => {
            let ctx = ctx.clone();
            (
                Box::pin(async move {
                    Some(ResponseKind::JoinGroup(
                        groups::join_group(&gw, &ctx, req).await,
                    ))
                }),
                true,
            )
        }
        RequestKind::SyncGroup(req) => (
            Box::pin(async move {
                Some(ResponseKind::SyncGroup(
                    groups::sync_group(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::Heartbeat(req) => {
            ready(ResponseKind::Heartbeat(groups::heartbeat(gateway, v, req)))
        }
        RequestKind::LeaveGroup(req) => ready(ResponseKind::LeaveGroup(groups::leave_group(
            gateway, v, req,
        ))),
        RequestKind::OffsetCommit(req) => (
            Box::pin(async move {
                Some(ResponseKind::OffsetCommit(
                    groups::offset_commit(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::OffsetFetch(req) => (
            Box::pin(async move {
                Some(ResponseKind::OffsetFetch(
                    groups::offset_fetch(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::DescribeGroups(req) => (
            Box::pin(async move {
                Some(ResponseKind::DescribeGroups(
                    groups::describe_groups(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::ListGroups(req) => (
            Box::pin(async move {
                Some(ResponseKind::ListGroups(
                    groups::list_groups(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::DeleteGroups(req) => (
            Box::pin(async move {
                Some(ResponseKind::DeleteGroups(
                    groups::delete_groups(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::OffsetDelete(req) => (
            Box::pin(async move {
                Some(ResponseKind::OffsetDelete(
                    groups::offset_delete(&gw, v, req).await,
                ))
            }),
            true,
        ),
        RequestKind::ConsumerGroupHeartbeat(req) => ready(ResponseKind::ConsumerGroupHeartbeat(
            groups::consumer_group_heartbeat(gateway, ctx, req),
        )),
        RequestKind::ConsumerGroupDescribe(req) => ready(ResponseKind::ConsumerGroupDescribe(
            groups::consumer_group_describe(gateway, v, req),
        )),
        other => {
            // Unreachable: the connection decodes only SUPPORTED keys. Answer nothing rather
            // than guess a layout.
            tracing::warn!(api = ?ctx.api_key, "no handler for a supported api: {:?}", std::mem::discriminant(&other));
            (Box::pin(async { None }), true)
        }
    }
}

/// A Kafka error code.
pub fn code(e: ResponseError) -> i16 {
    e.code()
}

/// An optional error message as Kafka encodes it.
pub fn message(s: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(s.into()))
}

/// Maps a metadata error to the Kafka error code a client expects.
pub fn metadata_error_code(e: &weir_metadata_api::MetadataError) -> i16 {
    use weir_metadata_api::MetadataError as M;
    match e {
        M::TopicExists(_) => code(ResponseError::TopicAlreadyExists),
        M::UnknownTopic(_) | M::UnknownPartition(_) => code(ResponseError::UnknownTopicOrPartition),
        M::Invalid(_) => code(ResponseError::InvalidRequest),
        M::Backend(_) | M::Corrupt(_) => code(ResponseError::KafkaStorageError),
        M::RecordExists(_) => code(ResponseError::InvalidRequest),
    }
}
