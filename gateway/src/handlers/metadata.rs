//! Metadata: brokers (the live gateways at their advertised addresses), topics with ids, each
//! partition's leader; auto-creation when enabled and allowed by the request.

use super::{admin, code};
use crate::broker::Topic;
use crate::Gateway;
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::sync::Arc;
use weir_common::TopicId;

pub async fn handle(gw: &Arc<Gateway>, version: i16, req: MetadataRequest) -> MetadataResponse {
    let view = gw.cluster.view();
    let brokers: Vec<MetadataResponseBroker> = view
        .members
        .iter()
        .map(|m| {
            let mut broker = MetadataResponseBroker::default()
                .with_node_id(BrokerId(m.node_id))
                .with_host(StrBytes::from_string(m.host.clone()))
                .with_port(m.port);
            if version >= 1 {
                broker = broker.with_rack(m.rack.clone().map(StrBytes::from_string));
            }
            broker
        })
        .collect();
    // The controller: the lowest live node id (admin requests work on any gateway).
    let controller = BrokerId(
        view.members
            .first()
            .map_or(gw.config.node_id, |m| m.node_id),
    );
    // Before v4 a Metadata request always allowed auto-creation.
    let allow_create =
        gw.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    let mut topics = Vec::new();
    match req.topics {
        // v0: an empty list means all topics; v1+: null means all topics.
        None => topics.extend(gw.registry.all().iter().map(|t| describe(gw, version, t))),
        Some(list) if list.is_empty() && version == 0 => {
            topics.extend(gw.registry.all().iter().map(|t| describe(gw, version, t)))
        }
        Some(list) => {
            for requested in list {
                let by_id = requested.topic_id != uuid_nil();
                let name = requested.name.as_ref().map(|n| n.0.to_string());
                let found = match (&name, by_id) {
                    (Some(n), _) if !n.is_empty() => gw.registry.topic(n),
                    (_, true) => gw.registry.topic_by_id(TopicId(requested.topic_id)),
                    _ => None,
                };
                let topic = match (found, name) {
                    (Some(t), _) => Ok(t),
                    (None, Some(n)) if !n.is_empty() => {
                        if let Err(_msg) = crate::config::validate_topic_name(&n) {
                            Err((n, code(ResponseError::InvalidTopicException)))
                        } else if allow_create {
                            let partitions = gw.config.default_partitions;
                            match admin::create_topic(gw, &n, partitions, Default::default()).await
                            {
                                Ok(t) => Ok(t),
                                Err((c, _)) if c == code(ResponseError::TopicAlreadyExists) => gw
                                    .registry
                                    .topic(&n)
                                    .ok_or((n, code(ResponseError::LeaderNotAvailable))),
                                Err((c, _)) => Err((n, c)),
                            }
                        } else {
                            Err((n, code(ResponseError::UnknownTopicOrPartition)))
                        }
                    }
                    (None, _) => Err((String::new(), code(ResponseError::UnknownTopicId))),
                };
                match topic {
                    Ok(t) => topics.push(describe(gw, version, &t)),
                    Err((n, c)) => {
                        let mut t = MetadataResponseTopic::default()
                            .with_error_code(c)
                            .with_name((!n.is_empty()).then(|| TopicName(StrBytes::from_string(n))))
                            .with_topic_id(requested.topic_id);
                        if version < 10 && t.name.is_none() {
                            t = t.with_name(Some(TopicName(StrBytes::from_static_str(""))));
                        }
                        topics.push(t);
                    }
                }
            }
        }
    }
    let mut resp = MetadataResponse::default()
        .with_brokers(brokers)
        .with_topics(topics);
    if version >= 1 {
        resp = resp.with_controller_id(controller);
    }
    if version >= 2 {
        resp = resp.with_cluster_id(Some(StrBytes::from_string(gw.cluster_id.clone())));
    }
    resp
}

fn uuid_nil() -> uuid::Uuid {
    uuid::Uuid::nil()
}

fn describe(gw: &Gateway, version: i16, topic: &Topic) -> MetadataResponseTopic {
    let view = gw.cluster.view();
    let partitions = (0..topic.partition_count())
        .map(|p| {
            let (epoch, leader) = topic
                .partition(p)
                .map(|l| {
                    let s = l.lock();
                    (s.leader_epoch, s.leader)
                })
                .unwrap_or((0, weir_metadata_api::NO_LEADER));
            let mut part = MetadataResponsePartition::default().with_partition_index(p);
            if leader == gw.config.node_id || view.member(leader).is_some() {
                let node = BrokerId(leader);
                part = part
                    .with_leader_id(node)
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node]);
            } else {
                // Between leaders (a move, a gateway that died): retriable.
                part = part
                    .with_error_code(code(ResponseError::LeaderNotAvailable))
                    .with_leader_id(BrokerId(-1));
            }
            if version >= 7 {
                part = part.with_leader_epoch(epoch);
            }
            part
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(topic.id.0)
        .with_partitions(partitions)
}
