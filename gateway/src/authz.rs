//! Authorization of decoded requests for authenticated connections, the way MSK checks its
//! `kafka-cluster` actions.
//!
//! Handlers stay unaware of principals: [`pre`] removes from a request every resource the
//! principal may not touch (or answers the whole request with an authorization error), and
//! the returned [`Fixup`] puts the refused resources back into the response with the error
//! code a Kafka client expects (TOPIC_, GROUP_, CLUSTER_ or TRANSACTIONAL_ID_
//! AUTHORIZATION_FAILED). Metadata, ListGroups and OffsetFetch-all hide what the principal
//! may not describe. Every denial is logged to the `weir::audit` target with the principal,
//! action, resource ARN and the request id the client sees in error messages.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;
use weir_auth::{Action, Auth, Resource};

use crate::Gateway;

const TOPIC_DENIED: i16 = 29;
const GROUP_DENIED: i16 = 30;
const CLUSTER_DENIED: i16 = 31;
const TXN_DENIED: i16 = 53;

/// Decisions cached per connection, valid for one version of the credential store.
type DecisionCache = (u64, HashMap<(Action, Resource), bool>);

/// One connection's principal and its cached decisions.
#[derive(Debug)]
pub struct Authorizer {
    pub auth: Arc<Auth>,
    pub principal: String,
    /// The access key used to log in (IAM mechanisms); None for SCRAM/PLAIN users.
    pub access_key_id: Option<String>,
    /// The ARNs of the cluster the connection is bound to.
    pub arns: weir_auth::Arns,
    cache: Mutex<DecisionCache>,
    /// The store version at which the credential was last found valid.
    checked: std::sync::atomic::AtomicU64,
}

impl Authorizer {
    pub fn new(auth: Arc<Auth>, principal: String, access_key_id: Option<String>) -> Self {
        let checked = auth.store.version();
        Authorizer {
            arns: auth.arns.clone(),
            auth,
            principal,
            access_key_id,
            cache: Mutex::new((0, HashMap::new())),
            checked: std::sync::atomic::AtomicU64::new(checked),
        }
    }

    /// The same principal, judged against a tenant cluster's ARNs.
    pub fn in_cluster(mut self, arns: weir_auth::Arns) -> Self {
        self.arns = arns;
        self
    }

    /// Whether the credential this connection logged in with still exists (a revoked key or
    /// deleted user ends its connections at their next request).
    pub fn credential_valid(&self) -> bool {
        use std::sync::atomic::Ordering;
        let version = self.auth.store.version();
        if self.checked.load(Ordering::Acquire) == version {
            return true;
        }
        let valid = match &self.access_key_id {
            Some(id) => self.auth.store.key_active(id),
            None => self.auth.store.scram_user_exists(&self.principal),
        };
        if valid {
            self.checked.store(version, Ordering::Release);
        }
        valid
    }

    /// Whether the principal may do `action` on `resource`. Denials are audited.
    pub fn allowed(&self, request_id: &str, action: Action, resource: Resource) -> bool {
        // Requests carry stored names (a tenant cluster's have its prefix); policies name
        // what the client sees.
        let resource = match resource {
            Resource::Topic(n) => Resource::Topic(crate::namespace::split(&n).1.to_string()),
            Resource::Group(n) => Resource::Group(crate::namespace::split(&n).1.to_string()),
            Resource::TransactionalId(n) => {
                Resource::TransactionalId(crate::namespace::split(&n).1.to_string())
            }
            Resource::Cluster => Resource::Cluster,
        };
        let version = self.auth.store.version();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.0 != version {
                // A credential or policy changed: forget every cached decision.
                *cache = (version, HashMap::new());
            }
            if let Some(&ok) = cache.1.get(&(action, resource.clone())) {
                if !ok {
                    self.audit(request_id, action, &resource);
                }
                return ok;
            }
        }
        let ok = self
            .auth
            .decide_in(&self.arns, &self.principal, action, &resource)
            .allowed();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 == version && cache.1.len() < 10_000 {
            cache.1.insert((action, resource.clone()), ok);
        }
        if !ok {
            self.audit(request_id, action, &resource);
        }
        ok
    }

    fn audit(&self, request_id: &str, action: Action, resource: &Resource) {
        tracing::warn!(target: "weir::audit", principal = %self.principal,
            action = action.name(), resource = %self.arns.arn(resource),
            request_id, "authorization denied");
    }

    fn topic(&self, rid: &str, action: Action, name: &str) -> bool {
        self.allowed(rid, action, Resource::Topic(name.to_string()))
    }

    fn group(&self, rid: &str, action: Action, name: &str) -> bool {
        self.allowed(rid, action, Resource::Group(name.to_string()))
    }

    fn cluster(&self, rid: &str, action: Action) -> bool {
        self.allowed(rid, action, Resource::Cluster)
    }
}

fn denied_message(rid: &str, action: Action) -> Option<StrBytes> {
    Some(StrBytes::from_string(format!(
        "[{rid}] not authorized to {}",
        action.name()
    )))
}

/// How to put refused resources back into the response.
#[derive(Debug, Default)]
pub enum Fixup {
    #[default]
    None,
    /// Topics (name, partitions) refused in a Produce.
    Produce(Vec<(TopicName, Vec<i32>)>, String),
    /// Topics (name, id, partitions) refused in a Fetch.
    Fetch(Vec<(TopicName, Uuid, Vec<i32>)>),
    ListOffsets(Vec<(TopicName, Vec<i32>)>),
    /// Explicitly requested topics refused; every other topic the principal may not
    /// describe is dropped from the answer.
    Metadata {
        refused: Vec<TopicName>,
    },
    CreateTopics(Vec<TopicName>, String),
    DeleteTopics(Vec<(Option<TopicName>, Uuid)>, String),
    CreatePartitions(Vec<TopicName>, String),
    DeleteRecords(Vec<(TopicName, Vec<i32>)>),
    DescribeConfigs(Vec<(i8, String, i16)>, String),
    AlterConfigs(Vec<(i8, String, i16)>, String),
    IncrementalAlterConfigs(Vec<(i8, String, i16)>, String),
    FindCoordinator(HashSet<String>, String),
    OffsetCommit(Vec<(TopicName, Vec<i32>)>),
    OffsetFetch {
        denied_groups: HashSet<String>,
        /// A v1-7 request (one group, top-level fields).
        single: bool,
    },
    DescribeGroups(HashSet<String>),
    ListGroups,
    DeleteGroups(Vec<GroupId>),
    ConsumerGroupDescribe(HashSet<String>, String),
}

type Refusal = Box<ResponseKind>;

/// Filters `request` for the principal. `Err` is a complete refusal to send as is.
pub fn pre(
    gw: &Gateway,
    a: &Authorizer,
    rid: &str,
    request: RequestKind,
) -> Result<(RequestKind, Fixup), Refusal> {
    use RequestKind as R;
    let refuse = |r: ResponseKind| Err(Box::new(r));
    Ok(match request {
        R::Produce(mut req) => {
            if let Some(txn) = &req.transactional_id {
                if !a.allowed(
                    rid,
                    Action::AlterTransactionalId,
                    Resource::TransactionalId(txn.to_string()),
                ) {
                    let mut denied = Vec::new();
                    for t in std::mem::take(&mut req.topic_data) {
                        denied.push((
                            t.name.clone(),
                            t.partition_data.iter().map(|p| p.index).collect(),
                        ));
                    }
                    return Ok((R::Produce(req), Fixup::Produce(denied, rid.to_string())));
                }
            }
            let mut denied = Vec::new();
            req.topic_data.retain(|t| {
                let ok = a.topic(rid, Action::WriteData, &t.name);
                if !ok {
                    denied.push((
                        t.name.clone(),
                        t.partition_data.iter().map(|p| p.index).collect(),
                    ));
                }
                ok
            });
            (R::Produce(req), Fixup::Produce(denied, rid.to_string()))
        }
        R::Fetch(mut req) => {
            let mut denied = Vec::new();
            req.topics.retain(|t| {
                let name = if t.topic.is_empty() && !t.topic_id.is_nil() {
                    match gw.registry.topic_by_id(weir_common::TopicId(t.topic_id)) {
                        Some(topic) => topic.name.clone(),
                        // Unknown ids get UNKNOWN_TOPIC_ID from the handler.
                        None => return true,
                    }
                } else {
                    t.topic.to_string()
                };
                let ok = a.topic(rid, Action::ReadData, &name);
                if !ok {
                    denied.push((
                        t.topic.clone(),
                        t.topic_id,
                        t.partitions.iter().map(|p| p.partition).collect(),
                    ));
                }
                ok
            });
            (R::Fetch(req), Fixup::Fetch(denied))
        }
        R::ListOffsets(mut req) => {
            let mut denied = Vec::new();
            req.topics.retain(|t| {
                let ok = a.topic(rid, Action::DescribeTopic, &t.name);
                if !ok {
                    denied.push((
                        t.name.clone(),
                        t.partitions.iter().map(|p| p.partition_index).collect(),
                    ));
                }
                ok
            });
            (R::ListOffsets(req), Fixup::ListOffsets(denied))
        }
        R::Metadata(mut req) => {
            let mut refused = Vec::new();
            if let Some(topics) = &mut req.topics {
                topics.retain(|t| {
                    let Some(name) = &t.name else { return true };
                    let ok = a.topic(rid, Action::DescribeTopic, name);
                    if !ok {
                        refused.push(name.clone());
                    }
                    ok
                });
                if req.allow_auto_topic_creation
                    && topics.iter().any(|t| {
                        t.name.as_ref().is_some_and(|n| {
                            gw.registry.topic(n).is_none() && !a.topic(rid, Action::CreateTopic, n)
                        })
                    })
                {
                    // Not allowed to create what it asked for: no auto-creation.
                    req.allow_auto_topic_creation = false;
                }
            }
            (R::Metadata(req), Fixup::Metadata { refused })
        }
        R::CreateTopics(mut req) => {
            let mut denied = Vec::new();
            req.topics.retain(|t| {
                let ok = a.topic(rid, Action::CreateTopic, &t.name);
                if !ok {
                    denied.push(t.name.clone());
                }
                ok
            });
            (
                R::CreateTopics(req),
                Fixup::CreateTopics(denied, rid.to_string()),
            )
        }
        R::DeleteTopics(mut req) => {
            let mut denied = Vec::new();
            req.topic_names.retain(|n| {
                let ok = a.topic(rid, Action::DeleteTopic, n);
                if !ok {
                    denied.push((Some(n.clone()), Uuid::nil()));
                }
                ok
            });
            req.topics.retain(|t| {
                let name = match &t.name {
                    Some(n) => n.to_string(),
                    None => match gw.registry.topic_by_id(weir_common::TopicId(t.topic_id)) {
                        Some(topic) => topic.name.clone(),
                        None => return true,
                    },
                };
                let ok = a.topic(rid, Action::DeleteTopic, &name);
                if !ok {
                    denied.push((t.name.clone(), t.topic_id));
                }
                ok
            });
            (
                R::DeleteTopics(req),
                Fixup::DeleteTopics(denied, rid.to_string()),
            )
        }
        R::CreatePartitions(mut req) => {
            let mut denied = Vec::new();
            req.topics.retain(|t| {
                let ok = a.topic(rid, Action::AlterTopic, &t.name);
                if !ok {
                    denied.push(t.name.clone());
                }
                ok
            });
            (
                R::CreatePartitions(req),
                Fixup::CreatePartitions(denied, rid.to_string()),
            )
        }
        R::DeleteRecords(mut req) => {
            let mut denied = Vec::new();
            req.topics.retain(|t| {
                let ok = a.topic(rid, Action::DeleteTopic, &t.name);
                if !ok {
                    denied.push((
                        t.name.clone(),
                        t.partitions.iter().map(|p| p.partition_index).collect(),
                    ));
                }
                ok
            });
            (R::DeleteRecords(req), Fixup::DeleteRecords(denied))
        }
        R::DescribeConfigs(mut req) => {
            let denied = retain_configs(a, rid, &mut req.resources, false, |r| {
                (r.resource_type, &r.resource_name)
            });
            (
                R::DescribeConfigs(req),
                Fixup::DescribeConfigs(denied, rid.to_string()),
            )
        }
        R::AlterConfigs(mut req) => {
            let denied = retain_configs(a, rid, &mut req.resources, true, |r| {
                (r.resource_type, &r.resource_name)
            });
            (
                R::AlterConfigs(req),
                Fixup::AlterConfigs(denied, rid.to_string()),
            )
        }
        R::IncrementalAlterConfigs(mut req) => {
            let denied = retain_configs(a, rid, &mut req.resources, true, |r| {
                (r.resource_type, &r.resource_name)
            });
            (
                R::IncrementalAlterConfigs(req),
                Fixup::IncrementalAlterConfigs(denied, rid.to_string()),
            )
        }
        R::InitProducerId(req) => {
            let ok = match &req.transactional_id {
                Some(txn) => {
                    if a.allowed(
                        rid,
                        Action::AlterTransactionalId,
                        Resource::TransactionalId(txn.to_string()),
                    ) {
                        Ok(())
                    } else {
                        Err(TXN_DENIED)
                    }
                }
                None => {
                    if a.cluster(rid, Action::WriteDataIdempotently) {
                        Ok(())
                    } else {
                        Err(CLUSTER_DENIED)
                    }
                }
            };
            if let Err(code) = ok {
                return refuse(ResponseKind::InitProducerId(
                    InitProducerIdResponse::default()
                        .with_error_code(code)
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                ));
            }
            (R::InitProducerId(req), Fixup::None)
        }
        R::DescribeCluster(req) => {
            if !a.cluster(rid, Action::DescribeCluster) {
                return refuse(ResponseKind::DescribeCluster(
                    DescribeClusterResponse::default()
                        .with_error_code(CLUSTER_DENIED)
                        .with_error_message(denied_message(rid, Action::DescribeCluster)),
                ));
            }
            (R::DescribeCluster(req), Fixup::None)
        }
        R::FindCoordinator(req) => {
            let mut keys: Vec<(String, i8)> = req
                .coordinator_keys
                .iter()
                .map(|k| (k.to_string(), req.key_type))
                .collect();
            if keys.is_empty() {
                keys.push((req.key.to_string(), req.key_type));
            }
            let denied: HashSet<String> = keys
                .into_iter()
                .filter(|(k, ty)| {
                    let ok = if *ty == 1 {
                        a.allowed(
                            rid,
                            Action::DescribeTransactionalId,
                            Resource::TransactionalId(k.clone()),
                        )
                    } else {
                        a.group(rid, Action::DescribeGroup, k)
                    };
                    !ok
                })
                .map(|(k, _)| k)
                .collect();
            (
                R::FindCoordinator(req),
                Fixup::FindCoordinator(denied, rid.to_string()),
            )
        }
        R::JoinGroup(req) => {
            if !a.group(rid, Action::AlterGroup, &req.group_id) {
                return refuse(ResponseKind::JoinGroup(
                    JoinGroupResponse::default()
                        .with_error_code(GROUP_DENIED)
                        .with_generation_id(-1)
                        .with_member_id(req.member_id.clone()),
                ));
            }
            (R::JoinGroup(req), Fixup::None)
        }
        R::SyncGroup(req) => {
            if !a.group(rid, Action::AlterGroup, &req.group_id) {
                return refuse(ResponseKind::SyncGroup(
                    SyncGroupResponse::default().with_error_code(GROUP_DENIED),
                ));
            }
            (R::SyncGroup(req), Fixup::None)
        }
        R::Heartbeat(req) => {
            if !a.group(rid, Action::AlterGroup, &req.group_id) {
                return refuse(ResponseKind::Heartbeat(
                    HeartbeatResponse::default().with_error_code(GROUP_DENIED),
                ));
            }
            (R::Heartbeat(req), Fixup::None)
        }
        R::LeaveGroup(req) => {
            if !a.group(rid, Action::AlterGroup, &req.group_id) {
                return refuse(ResponseKind::LeaveGroup(
                    LeaveGroupResponse::default().with_error_code(GROUP_DENIED),
                ));
            }
            (R::LeaveGroup(req), Fixup::None)
        }
        R::OffsetCommit(mut req) => {
            if !a.group(rid, Action::AlterGroup, &req.group_id) {
                let topics = req
                    .topics
                    .iter()
                    .map(|t| {
                        offset_commit_response::OffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        offset_commit_response::OffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(GROUP_DENIED)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                return refuse(ResponseKind::OffsetCommit(
                    OffsetCommitResponse::default().with_topics(topics),
                ));
            }
            let mut denied = Vec::new();
            req.topics.retain(|t| {
                let ok = a.topic(rid, Action::ReadData, &t.name);
                if !ok {
                    denied.push((
                        t.name.clone(),
                        t.partitions.iter().map(|p| p.partition_index).collect(),
                    ));
                }
                ok
            });
            (R::OffsetCommit(req), Fixup::OffsetCommit(denied))
        }
        R::OffsetFetch(req) => {
            let mut denied_groups = HashSet::new();
            if !req.group_id.is_empty() && !a.group(rid, Action::DescribeGroup, &req.group_id) {
                denied_groups.insert(req.group_id.to_string());
            }
            for g in &req.groups {
                if !a.group(rid, Action::DescribeGroup, &g.group_id) {
                    denied_groups.insert(g.group_id.to_string());
                }
            }
            // Topics of allowed groups are checked on the response (DescribeTopic).
            let single = req.groups.is_empty();
            (
                R::OffsetFetch(req),
                Fixup::OffsetFetch {
                    denied_groups,
                    single,
                },
            )
        }
        R::DescribeGroups(req) => {
            let denied = req
                .groups
                .iter()
                .filter(|g| !a.group(rid, Action::DescribeGroup, g))
                .map(|g| g.to_string())
                .collect();
            (R::DescribeGroups(req), Fixup::DescribeGroups(denied))
        }
        R::ListGroups(req) => (R::ListGroups(req), Fixup::ListGroups),
        R::DeleteGroups(mut req) => {
            let mut denied = Vec::new();
            req.groups_names.retain(|g| {
                let ok = a.group(rid, Action::DeleteGroup, g);
                if !ok {
                    denied.push(g.clone());
                }
                ok
            });
            (R::DeleteGroups(req), Fixup::DeleteGroups(denied))
        }
        R::OffsetDelete(req) => {
            if !a.group(rid, Action::DeleteGroup, &req.group_id) {
                return refuse(ResponseKind::OffsetDelete(
                    OffsetDeleteResponse::default().with_error_code(GROUP_DENIED),
                ));
            }
            if req
                .topics
                .iter()
                .any(|t| !a.topic(rid, Action::ReadData, &t.name))
            {
                return refuse(ResponseKind::OffsetDelete(
                    OffsetDeleteResponse::default().with_error_code(TOPIC_DENIED),
                ));
            }
            (R::OffsetDelete(req), Fixup::None)
        }
        R::ConsumerGroupHeartbeat(req) => {
            if !a.group(rid, Action::AlterGroup, &req.group_id) {
                return refuse(ResponseKind::ConsumerGroupHeartbeat(
                    ConsumerGroupHeartbeatResponse::default()
                        .with_error_code(GROUP_DENIED)
                        .with_error_message(denied_message(rid, Action::AlterGroup)),
                ));
            }
            (R::ConsumerGroupHeartbeat(req), Fixup::None)
        }
        R::ConsumerGroupDescribe(req) => {
            let denied = req
                .group_ids
                .iter()
                .filter(|g| !a.group(rid, Action::DescribeGroup, g))
                .map(|g| g.to_string())
                .collect();
            (
                R::ConsumerGroupDescribe(req),
                Fixup::ConsumerGroupDescribe(denied, rid.to_string()),
            )
        }
        other => (other, Fixup::None),
    })
}

/// Keeps the config resources the principal may describe (or alter); returns the others as
/// (resource type, name, error code).
fn retain_configs<T>(
    a: &Authorizer,
    rid: &str,
    resources: &mut Vec<T>,
    alter: bool,
    key: impl Fn(&T) -> (i8, &StrBytes),
) -> Vec<(i8, String, i16)> {
    let mut denied = Vec::new();
    resources.retain(|r| {
        let (ty, name) = key(r);
        match config_allowed(a, rid, ty, name, alter) {
            Ok(()) => true,
            Err(code) => {
                denied.push((ty, name.to_string(), code));
                false
            }
        }
    });
    denied
}

/// Config resources: 2 = topic, 4 = broker, 8 = broker logger.
fn config_allowed(a: &Authorizer, rid: &str, ty: i8, name: &str, alter: bool) -> Result<(), i16> {
    if ty == 2 {
        let action = if alter {
            Action::AlterTopicDynamicConfiguration
        } else {
            Action::DescribeTopicDynamicConfiguration
        };
        if a.topic(rid, action, name) {
            Ok(())
        } else {
            Err(TOPIC_DENIED)
        }
    } else {
        let action = if alter {
            Action::AlterClusterDynamicConfiguration
        } else {
            Action::DescribeClusterDynamicConfiguration
        };
        if a.cluster(rid, action) {
            Ok(())
        } else {
            Err(CLUSTER_DENIED)
        }
    }
}

impl Fixup {
    /// Adds the refused resources to the handler's response.
    pub fn apply(self, a: &Authorizer, rid: &str, version: i16, response: &mut ResponseKind) {
        use ResponseKind as P;
        match (self, response) {
            (Fixup::None, _) => {}
            (Fixup::Produce(denied, rid), P::Produce(resp)) => {
                for (name, partitions) in denied {
                    resp.responses.push(
                        produce_response::TopicProduceResponse::default()
                            .with_name(name)
                            .with_partition_responses(
                                partitions
                                    .into_iter()
                                    .map(|p| {
                                        produce_response::PartitionProduceResponse::default()
                                            .with_index(p)
                                            .with_error_code(TOPIC_DENIED)
                                            .with_base_offset(-1)
                                            .with_log_append_time_ms(-1)
                                            .with_log_start_offset(-1)
                                            .with_error_message(if version >= 8 {
                                                denied_message(&rid, Action::WriteData)
                                            } else {
                                                None
                                            })
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
            (Fixup::Fetch(denied), P::Fetch(resp)) => {
                for (name, id, partitions) in denied {
                    resp.responses.push(
                        fetch_response::FetchableTopicResponse::default()
                            .with_topic(name)
                            .with_topic_id(id)
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|p| {
                                        fetch_response::PartitionData::default()
                                            .with_partition_index(p)
                                            .with_error_code(TOPIC_DENIED)
                                            .with_high_watermark(-1)
                                            .with_last_stable_offset(-1)
                                            .with_log_start_offset(-1)
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
            (Fixup::ListOffsets(denied), P::ListOffsets(resp)) => {
                for (name, partitions) in denied {
                    resp.topics.push(
                        list_offsets_response::ListOffsetsTopicResponse::default()
                            .with_name(name)
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|p| {
                                        list_offsets_response::ListOffsetsPartitionResponse::default()
                                            .with_partition_index(p)
                                            .with_error_code(TOPIC_DENIED)
                                            .with_timestamp(-1)
                                            .with_offset(-1)
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
            (Fixup::Metadata { refused }, P::Metadata(resp)) => {
                resp.topics.retain(|t| match &t.name {
                    Some(n) => !refused.contains(n) && a.topic(rid, Action::DescribeTopic, n),
                    None => true,
                });
                for name in refused {
                    resp.topics.push(
                        metadata_response::MetadataResponseTopic::default()
                            .with_name(Some(name))
                            .with_error_code(TOPIC_DENIED),
                    );
                }
            }
            (Fixup::CreateTopics(denied, rid), P::CreateTopics(resp)) => {
                for name in denied {
                    resp.topics.push(
                        create_topics_response::CreatableTopicResult::default()
                            .with_name(name)
                            .with_error_code(TOPIC_DENIED)
                            .with_error_message(denied_message(&rid, Action::CreateTopic))
                            .with_num_partitions(-1)
                            .with_replication_factor(-1),
                    );
                }
            }
            (Fixup::DeleteTopics(denied, rid), P::DeleteTopics(resp)) => {
                for (name, id) in denied {
                    resp.responses.push(
                        delete_topics_response::DeletableTopicResult::default()
                            .with_name(name)
                            .with_topic_id(id)
                            .with_error_code(TOPIC_DENIED)
                            .with_error_message(if version >= 5 {
                                denied_message(&rid, Action::DeleteTopic)
                            } else {
                                None
                            }),
                    );
                }
            }
            (Fixup::CreatePartitions(denied, rid), P::CreatePartitions(resp)) => {
                for name in denied {
                    resp.results.push(
                        create_partitions_response::CreatePartitionsTopicResult::default()
                            .with_name(name)
                            .with_error_code(TOPIC_DENIED)
                            .with_error_message(denied_message(&rid, Action::AlterTopic)),
                    );
                }
            }
            (Fixup::DeleteRecords(denied), P::DeleteRecords(resp)) => {
                for (name, partitions) in denied {
                    resp.topics.push(
                        delete_records_response::DeleteRecordsTopicResult::default()
                            .with_name(name)
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|p| {
                                        delete_records_response::DeleteRecordsPartitionResult::default()
                                            .with_partition_index(p)
                                            .with_low_watermark(-1)
                                            .with_error_code(TOPIC_DENIED)
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
            (Fixup::DescribeConfigs(denied, rid), P::DescribeConfigs(resp)) => {
                for (ty, name, code) in denied {
                    resp.results.push(
                        describe_configs_response::DescribeConfigsResult::default()
                            .with_resource_type(ty)
                            .with_resource_name(StrBytes::from_string(name))
                            .with_error_code(code)
                            .with_error_message(Some(StrBytes::from_string(format!(
                                "[{rid}] not authorized"
                            )))),
                    );
                }
            }
            (Fixup::AlterConfigs(denied, rid), P::AlterConfigs(resp)) => {
                for (ty, name, code) in denied {
                    resp.responses.push(
                        alter_configs_response::AlterConfigsResourceResponse::default()
                            .with_resource_type(ty)
                            .with_resource_name(StrBytes::from_string(name))
                            .with_error_code(code)
                            .with_error_message(Some(StrBytes::from_string(format!(
                                "[{rid}] not authorized"
                            )))),
                    );
                }
            }
            (Fixup::IncrementalAlterConfigs(denied, rid), P::IncrementalAlterConfigs(resp)) => {
                for (ty, name, code) in denied {
                    resp.responses.push(
                        incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                            .with_resource_type(ty)
                            .with_resource_name(StrBytes::from_string(name))
                            .with_error_code(code)
                            .with_error_message(Some(StrBytes::from_string(format!(
                                "[{rid}] not authorized"
                            )))),
                    );
                }
            }
            (Fixup::FindCoordinator(denied, rid), P::FindCoordinator(resp)) => {
                if denied.is_empty() {
                    return;
                }
                if version < 4 {
                    resp.error_code = GROUP_DENIED;
                    if version >= 1 {
                        resp.error_message = denied_message(&rid, Action::DescribeGroup);
                    }
                    resp.node_id = BrokerId(-1);
                    resp.host = StrBytes::default();
                    resp.port = -1;
                }
                for c in &mut resp.coordinators {
                    if denied.contains(c.key.as_str()) {
                        c.error_code = GROUP_DENIED;
                        c.error_message = denied_message(&rid, Action::DescribeGroup);
                        c.node_id = BrokerId(-1);
                        c.host = StrBytes::default();
                        c.port = -1;
                    }
                }
            }
            (Fixup::OffsetCommit(denied), P::OffsetCommit(resp)) => {
                for (name, partitions) in denied {
                    resp.topics.push(
                        offset_commit_response::OffsetCommitResponseTopic::default()
                            .with_name(name)
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|p| {
                                        offset_commit_response::OffsetCommitResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_error_code(TOPIC_DENIED)
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
            (
                Fixup::OffsetFetch {
                    denied_groups,
                    single,
                },
                P::OffsetFetch(resp),
            ) => {
                if single && !denied_groups.is_empty() {
                    // v1-7: one group; v1 has no top-level error code.
                    if version >= 2 {
                        resp.error_code = GROUP_DENIED;
                        resp.topics.clear();
                    } else {
                        for t in &mut resp.topics {
                            for p in &mut t.partitions {
                                p.error_code = GROUP_DENIED;
                                p.committed_offset = -1;
                            }
                        }
                    }
                }
                resp.topics
                    .retain(|t| a.topic(rid, Action::DescribeTopic, &t.name));
                for g in &mut resp.groups {
                    if denied_groups.contains(g.group_id.as_str()) {
                        g.error_code = GROUP_DENIED;
                        g.topics.clear();
                    } else {
                        g.topics
                            .retain(|t| a.topic(rid, Action::DescribeTopic, &t.name));
                    }
                }
            }
            (Fixup::DescribeGroups(denied), P::DescribeGroups(resp)) => {
                for g in &mut resp.groups {
                    if denied.contains(g.group_id.as_str()) {
                        *g = describe_groups_response::DescribedGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_error_code(GROUP_DENIED);
                    }
                }
            }
            (Fixup::ListGroups, P::ListGroups(resp)) => {
                resp.groups
                    .retain(|g| a.group(rid, Action::DescribeGroup, &g.group_id));
            }
            (Fixup::DeleteGroups(denied), P::DeleteGroups(resp)) => {
                for g in denied {
                    resp.results.push(
                        delete_groups_response::DeletableGroupResult::default()
                            .with_group_id(g)
                            .with_error_code(GROUP_DENIED),
                    );
                }
            }
            (Fixup::ConsumerGroupDescribe(denied, rid), P::ConsumerGroupDescribe(resp)) => {
                for g in &mut resp.groups {
                    if denied.contains(g.group_id.as_str()) {
                        *g = consumer_group_describe_response::DescribedGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_error_code(GROUP_DENIED)
                            .with_error_message(denied_message(&rid, Action::DescribeGroup));
                    }
                }
            }
            (fixup, response) => {
                tracing::error!(?fixup, api = ?std::mem::discriminant(response), "authorization fixup does not match its response");
            }
        }
    }
}

/// The error code for SASL failures (SASL_AUTHENTICATION_FAILED).
pub fn sasl_failed() -> i16 {
    ResponseError::SaslAuthenticationFailed.code()
}

/// Answers with the address of the listener the client came in on (Metadata,
/// FindCoordinator and DescribeCluster name this gateway).
pub fn advertise_listener(
    listener: &crate::listener::Listener,
    node_id: i32,
    version: i16,
    response: &mut ResponseKind,
) {
    // Only this gateway's own entries: the other gateways advertise their own addresses.
    let host = || StrBytes::from_string(listener.advertised_host.clone());
    let port = listener.advertised_port;
    let me = |id: i32| id == node_id;
    match response {
        ResponseKind::Metadata(r) => {
            for b in r.brokers.iter_mut().filter(|b| me(b.node_id.0)) {
                b.host = host();
                b.port = port;
            }
        }
        ResponseKind::DescribeCluster(r) => {
            for b in r.brokers.iter_mut().filter(|b| me(b.broker_id.0)) {
                b.host = host();
                b.port = port;
            }
        }
        ResponseKind::FindCoordinator(r) => {
            if version < 4 && r.error_code == 0 && me(r.node_id.0) {
                r.host = host();
                r.port = port;
            }
            for c in &mut r.coordinators {
                if c.error_code == 0 && me(c.node_id.0) {
                    c.host = host();
                    c.port = port;
                }
            }
        }
        _ => {}
    }
}
