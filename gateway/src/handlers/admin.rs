//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DeleteRecords,
//! InitProducerId and DescribeCluster.

use super::{code, message, metadata_error_code};
use crate::broker::Topic;
use crate::config;
use crate::Gateway;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest;
use kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_records_request::DeleteRecordsRequest;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsResponse, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::{BrokerId, ProducerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;
use std::sync::Arc;
use weir_common::{TopicId, TopicPartition};

/// Creates a topic and takes this gateway's share of its partitions. Errors are (Kafka code, message).
pub async fn create_topic(
    gw: &Arc<Gateway>,
    name: &str,
    partitions: i32,
    configs: BTreeMap<String, String>,
) -> Result<Arc<Topic>, (i16, String)> {
    let _admin = gw.admin.lock().await;
    if let Some(existing) = gw.registry.topic(name) {
        let _ = existing;
        return Err((
            code(ResponseError::TopicAlreadyExists),
            format!("topic '{name}' already exists"),
        ));
    }
    let record = gw
        .meta
        .create_topic(name, partitions, configs)
        .await
        .map_err(|e| (metadata_error_code(&e), e.to_string()))?;
    tracing::info!(topic = %name, partitions, id = %record.id, "topic created");
    let topic = gw
        .registry
        .insert(record, &crate::leadership::empty_states(partitions));
    // Take this gateway's share now so that the creator can produce at once; the other
    // gateways take theirs at their next sync.
    if let Err(e) = gw.cluster.sync_topic(gw, topic.id).await {
        tracing::warn!(topic = %name, error = %e, "taking the new partitions failed; the next sync retries");
    }
    gw.cluster.wake.notify_one();
    Ok(topic)
}

/// Validates the configs of a CreateTopics entry into a map.
fn topic_configs(
    entries: impl Iterator<Item = (String, Option<String>)>,
) -> Result<BTreeMap<String, String>, String> {
    let mut configs = BTreeMap::new();
    for (name, value) in entries {
        let value = value.ok_or_else(|| format!("config {name} has a null value"))?;
        config::validate(&name, &value)?;
        configs.insert(name, value);
    }
    Ok(configs)
}

pub async fn create_topics(
    gw: &Arc<Gateway>,
    version: i16,
    req: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut results = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut result = CreatableTopicResult::default().with_name(t.name.clone());
        let partitions = if t.num_partitions == -1 {
            gw.config.default_partitions
        } else {
            t.num_partitions
        };
        let replication = if t.replication_factor == -1 {
            1
        } else {
            t.replication_factor
        };
        let configs = topic_configs(
            t.configs
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string()))),
        );
        let error: Option<(ResponseError, String)> =
            if let Err(msg) = config::validate_topic_name(&name) {
                Some((ResponseError::InvalidTopicException, msg))
            } else if !t.assignments.is_empty() {
                if t.num_partitions != -1 || t.replication_factor != -1 {
                    Some((
                        ResponseError::InvalidRequest,
                        "set assignments or counts, not both".into(),
                    ))
                } else {
                    None
                }
            } else if partitions < 1 {
                Some((
                    ResponseError::InvalidPartitions,
                    format!("number of partitions must be at least 1, got {partitions}"),
                ))
            } else if partitions > 100_000 {
                Some((
                    ResponseError::InvalidPartitions,
                    "number of partitions must be at most 100000".into(),
                ))
            } else if replication < 1 {
                Some((
                    ResponseError::InvalidReplicationFactor,
                    "replication factor must be at least 1".into(),
                ))
            } else if let Err(msg) = &configs {
                Some((ResponseError::InvalidConfig, msg.clone()))
            } else if gw.registry.topic(&name).is_some() {
                Some((
                    ResponseError::TopicAlreadyExists,
                    format!("topic '{name}' already exists"),
                ))
            } else {
                None
            };
        let partitions = if t.assignments.is_empty() {
            partitions
        } else {
            t.assignments.len() as i32
        };
        if let Some((e, msg)) = error {
            result = result.with_error_code(code(e));
            if version >= 1 {
                result = result.with_error_message(message(msg));
            }
            results.push(result);
            continue;
        }
        let configs = configs.unwrap_or_default();
        let outcome = if req.validate_only {
            Ok(None)
        } else {
            create_topic(gw, &name, partitions, configs.clone())
                .await
                .map(Some)
        };
        match outcome {
            Ok(topic) => {
                if version >= 5 {
                    result = result
                        .with_num_partitions(partitions)
                        .with_replication_factor(replication)
                        .with_configs(Some(describe_topic_configs(&configs)));
                }
                if version >= 7 {
                    if let Some(topic) = topic {
                        result = result.with_topic_id(topic.id.0);
                    }
                }
            }
            Err((c, msg)) => {
                result = result.with_error_code(c);
                if version >= 1 {
                    result = result.with_error_message(message(msg));
                }
            }
        }
        results.push(result);
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn describe_topic_configs(configs: &BTreeMap<String, String>) -> Vec<CreatableTopicConfigs> {
    config::TOPIC_CONFIGS
        .iter()
        .map(|d| {
            let (value, source) = match configs.get(d.name) {
                Some(v) => (v.clone(), 1),          // DYNAMIC_TOPIC_CONFIG
                None => (d.default.to_string(), 5), // DEFAULT_CONFIG
            };
            CreatableTopicConfigs::default()
                .with_name(StrBytes::from_static_str(d.name))
                .with_value(Some(StrBytes::from_string(value)))
                .with_config_source(source)
        })
        .collect()
}

pub async fn delete_topics(
    gw: &Gateway,
    version: i16,
    req: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    // v6 names topics by name or id in `topics`; earlier versions list names.
    let mut targets: Vec<(Option<String>, uuid::Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
        .collect();
    targets.extend(
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    let mut responses = Vec::new();
    for (name, id) in targets {
        let topic = match &name {
            Some(n) => gw.registry.topic(n),
            None => gw.registry.topic_by_id(TopicId(id)),
        };
        let mut result = DeletableTopicResult::default()
            .with_name(name.clone().map(|n| TopicName(StrBytes::from_string(n))));
        if version >= 6 {
            result = result.with_topic_id(id);
        }
        let Some(topic) = topic else {
            let e = if name.is_some() {
                ResponseError::UnknownTopicOrPartition
            } else {
                ResponseError::UnknownTopicId
            };
            responses.push(result.with_error_code(code(e)));
            continue;
        };
        if version >= 6 {
            result = result
                .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
                .with_topic_id(topic.id.0);
        }
        match delete_topic(gw, &topic).await {
            Ok(()) => responses.push(result),
            Err((c, msg)) => {
                result = result.with_error_code(c);
                if version >= 5 {
                    result = result.with_error_message(message(msg));
                }
                responses.push(result);
            }
        }
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn delete_topic(gw: &Gateway, topic: &Topic) -> Result<(), (i16, String)> {
    let _admin = gw.admin.lock().await;
    let (_, dead) = gw
        .meta
        .delete_topic(&topic.name)
        .await
        .map_err(|e| (metadata_error_code(&e), e.to_string()))?;
    gw.registry.remove(&topic.name);
    for p in 0..topic.partition_count() {
        gw.storage.discard(TopicPartition {
            topic_id: topic.id,
            partition: p,
        });
    }
    gw.storage.delete_objects(dead).await;
    tracing::info!(topic = %topic.name, id = %topic.id, "topic deleted");
    Ok(())
}

pub async fn create_partitions(
    gw: &Arc<Gateway>,
    version: i16,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let _ = version;
    let mut results = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut result = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let outcome: Result<(), (ResponseError, String)> = async {
            let topic = gw
                .registry
                .topic(&name)
                .ok_or((ResponseError::UnknownTopicOrPartition, format!("unknown topic '{name}'")))?;
            let current = topic.partition_count();
            if t.count <= current {
                return Err((
                    ResponseError::InvalidPartitions,
                    format!("topic currently has {current} partitions, which is higher than or equal to the requested {}", t.count),
                ));
            }
            if t.count > 100_000 {
                return Err((ResponseError::InvalidPartitions, "number of partitions must be at most 100000".into()));
            }
            if let Some(a) = &t.assignments {
                if a.len() as i32 != t.count - current {
                    return Err((ResponseError::InvalidReplicaAssignment, "assignments do not match the new partitions".into()));
                }
            }
            if req.validate_only {
                return Ok(());
            }
            let _admin = gw.admin.lock().await;
            let record = gw
                .meta
                .create_partitions(&name, t.count)
                .await
                .map_err(|e| (ResponseError::InvalidPartitions, e.to_string()))?;
            let states: Vec<_> = (current..t.count).map(weir_metadata_api::PartitionState::empty).collect();
            gw.registry.add_partitions(&topic, record, &states);
            if let Err(e) = gw.cluster.sync_topic(gw, topic.id).await {
                tracing::warn!(topic = %name, error = %e, "taking the new partitions failed; the next sync retries");
            }
            tracing::info!(topic = %name, partitions = t.count, "partitions added");
            Ok(())
        }
        .await;
        if let Err((e, msg)) = outcome {
            result = result
                .with_error_code(code(e))
                .with_error_message(message(msg));
        }
        results.push(result);
    }
    CreatePartitionsResponse::default().with_results(results)
}

pub async fn delete_records(
    gw: &Gateway,
    _version: i16,
    req: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::new();
    for t in req.topics {
        let topic = gw.registry.topic(&t.name.0);
        let mut partitions = Vec::new();
        for p in t.partitions {
            let mut result = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            let Some(log) = topic.as_ref().and_then(|t| t.partition(p.partition_index)) else {
                partitions
                    .push(result.with_error_code(code(ResponseError::UnknownTopicOrPartition)));
                continue;
            };
            let (hw, start) = {
                let s = log.lock();
                (s.high_watermark, s.log_start)
            };
            let target = if p.offset == -1 { hw } else { p.offset };
            if target < 0 || target > hw {
                partitions.push(result.with_error_code(code(ResponseError::OffsetOutOfRange)));
                continue;
            }
            if target <= start {
                partitions.push(result.with_low_watermark(start));
                continue;
            }
            match gw.meta.delete_records(log.tp, target).await {
                Ok(tr) => {
                    gw.registry.truncated(log.tp, tr.log_start_offset);
                    gw.storage.delete_objects(tr.dead_objects).await;
                    result = result.with_low_watermark(tr.log_start_offset);
                }
                Err(e) => result = result.with_error_code(metadata_error_code(&e)),
            }
            partitions.push(result);
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

pub async fn init_producer_id(
    gw: &Gateway,
    version: i16,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req
        .transactional_id
        .as_ref()
        .is_some_and(|t| !t.0.is_empty())
    {
        // Transactions are not implemented: refuse clearly rather than half-work.
        return resp.with_error_code(code(ResponseError::TransactionalIdAuthorizationFailed));
    }
    // KIP-360: an idempotent producer may ask to bump its epoch after an error.
    if version >= 3 && req.producer_id.0 >= 0 && (0..i16::MAX - 1).contains(&req.producer_epoch) {
        return resp
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch + 1);
    }
    match gw.meta.allocate_producer_id().await {
        Ok(id) => resp.with_producer_id(ProducerId(id)).with_producer_epoch(0),
        Err(e) => resp.with_error_code(metadata_error_code(&e)),
    }
}

pub fn describe_cluster(
    gw: &Gateway,
    _version: i16,
    _req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let view = gw.cluster.view();
    let brokers = view
        .members
        .iter()
        .map(|m| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(m.node_id))
                .with_host(StrBytes::from_string(m.host.clone()))
                .with_port(m.port)
                .with_rack(m.rack.clone().map(StrBytes::from_string))
        })
        .collect();
    let controller = view
        .members
        .first()
        .map_or(gw.config.node_id, |m| m.node_id);
    DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(gw.cluster_id.clone()))
        .with_controller_id(BrokerId(controller))
        .with_brokers(brokers)
}
