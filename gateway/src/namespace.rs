//! Virtual clusters: many tenants' Kafka clusters in one physical one.
//!
//! A connection is bound to exactly one cluster by the listener it came in on: the default
//! cluster (the configured listeners) or a tenant's serverless cluster (its own port). A
//! tenant cluster's topics, groups and transactional ids are stored under the prefix
//! `~<namespace>~`; everything below the connection (handlers, the registry, storage,
//! leadership, the scaler) sees only these stored names, so one gateway serves every cluster
//! with no task or timer per cluster, and load is load whatever cluster it belongs to.
//!
//! [`inbound`] renames the names of a decoded request into the stored ones (after
//! authorization, which judges the names the client sent against the cluster's ARNs);
//! [`outbound`] renames the response back, drops what belongs to another cluster (Metadata
//! of all topics, ListGroups) and scrubs the prefix out of error messages. Kafka topic names
//! cannot contain `~`; group and transactional ids of the default cluster that start with
//! `~` are escaped as `~~...`, so no name of one cluster can be spelled in another.

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_common::TopicId;

use crate::broker::Registry;

/// A tenant's serverless cluster as a gateway serves it.
#[derive(Debug)]
pub struct VirtualCluster {
    pub arn: String,
    pub name: String,
    pub account_id: String,
    /// `~<namespace>~`.
    pub prefix: String,
    pub kafka_cluster_id: String,
    pub arns: weir_auth::Arns,
    /// The port its listener is bound to on every gateway.
    pub port: u16,
    /// Cancelled when the cluster is deleted: its listener and connections close.
    pub closed: CancellationToken,
}

impl VirtualCluster {
    pub fn from_record(record: &weir_auth::tenants::ClusterRecord, port: u16) -> Self {
        VirtualCluster {
            arn: record.arn.clone(),
            name: record.name.clone(),
            account_id: record.account_id.clone(),
            prefix: prefix_of(&record.namespace),
            kafka_cluster_id: record.kafka_cluster_id.clone(),
            arns: record.arns(),
            port,
            closed: CancellationToken::new(),
        }
    }
}

/// The stored-name prefix of a namespace key.
pub fn prefix_of(namespace: &str) -> String {
    format!("~{namespace}~")
}

/// Splits a stored name into its tenant prefix (if any) and the name the client sees.
pub fn split(stored: &str) -> (Option<&str>, &str) {
    if let Some(rest) = stored.strip_prefix('~') {
        if let Some(end) = rest.find('~') {
            if end > 0 && rest[..end].bytes().all(|b| b.is_ascii_alphanumeric()) {
                return (Some(&stored[..end + 2]), &rest[end + 1..]);
            }
        }
    }
    (None, stored)
}

/// The cluster one connection is bound to.
#[derive(Debug, Clone, Copy)]
pub enum Namespace<'a> {
    Default,
    Tenant(&'a VirtualCluster),
}

impl<'a> Namespace<'a> {
    pub fn of(listener: &'a crate::listener::Listener) -> Self {
        match &listener.cluster {
            Some(c) => Namespace::Tenant(c),
            None => Namespace::Default,
        }
    }

    /// The stored form of a client's name (None: the same).
    pub fn inner(&self, name: &str) -> Option<String> {
        match self {
            Namespace::Default if name.starts_with('~') => Some(format!("~{name}")),
            Namespace::Default => None,
            Namespace::Tenant(c) => Some(format!("{}{name}", c.prefix)),
        }
    }

    /// The client's form of a stored name, None if it belongs to another cluster.
    pub fn outer<'n>(&self, stored: &'n str) -> Option<&'n str> {
        match self {
            Namespace::Default => {
                if let Some(escaped) = stored.strip_prefix("~~") {
                    Some(&stored[stored.len() - escaped.len() - 1..])
                } else if stored.starts_with('~') {
                    None
                } else {
                    Some(stored)
                }
            }
            Namespace::Tenant(c) => stored.strip_prefix(c.prefix.as_str()),
        }
    }

    /// Whether a stored name is this cluster's.
    pub fn owns(&self, stored: &str) -> bool {
        self.outer(stored).is_some()
    }

    fn rename(&self, s: &mut StrBytes) {
        if let Some(n) = self.inner(s.as_str()) {
            *s = StrBytes::from_string(n);
        }
    }

    /// Renames back; false if the name is another cluster's.
    fn unname(&self, s: &mut StrBytes) -> bool {
        match self.outer(s.as_str()) {
            None => false,
            Some(o) if o.len() == s.len() => true,
            Some(o) => {
                *s = StrBytes::from_string(o.to_string());
                true
            }
        }
    }

    fn scrub(&self, message: &mut Option<StrBytes>) {
        if let (Namespace::Tenant(c), Some(m)) = (self, message.as_mut()) {
            if m.as_str().contains(c.prefix.as_str()) {
                *m = StrBytes::from_string(m.as_str().replace(c.prefix.as_str(), ""));
            }
        }
    }

    /// A topic id the client may name: its own cluster's (or unknown); another cluster's
    /// id becomes the nil id, which no topic has.
    fn topic_id(&self, registry: &Registry, id: &mut Uuid) {
        if id.is_nil() {
            return;
        }
        if let Some(topic) = registry.topic_by_id(TopicId(*id)) {
            if !self.owns(&topic.name) {
                *id = Uuid::nil();
            }
        }
    }
}

const TOPIC_RESOURCE: i8 = 2;
const GROUP_RESOURCE: i8 = 3;

/// Renames a request's names into the stored ones.
pub fn inbound(ns: Namespace<'_>, registry: &Registry, request: &mut RequestKind) {
    if matches!(ns, Namespace::Default) && !mentions_tilde(request) {
        return;
    }
    match request {
        RequestKind::Produce(r) => {
            if let Some(t) = r.transactional_id.as_mut() {
                ns.rename(&mut t.0);
            }
            for t in &mut r.topic_data {
                ns.rename(&mut t.name.0);
                ns.topic_id(registry, &mut t.topic_id);
            }
        }
        RequestKind::Fetch(r) => {
            for t in &mut r.topics {
                ns.rename(&mut t.topic.0);
                ns.topic_id(registry, &mut t.topic_id);
            }
            for t in &mut r.forgotten_topics_data {
                ns.rename(&mut t.topic.0);
                ns.topic_id(registry, &mut t.topic_id);
            }
        }
        RequestKind::ListOffsets(r) => r.topics.iter_mut().for_each(|t| ns.rename(&mut t.name.0)),
        RequestKind::Metadata(r) => {
            for t in r.topics.iter_mut().flatten() {
                if let Some(n) = t.name.as_mut() {
                    ns.rename(&mut n.0);
                }
                ns.topic_id(registry, &mut t.topic_id);
            }
        }
        RequestKind::CreateTopics(r) => r.topics.iter_mut().for_each(|t| ns.rename(&mut t.name.0)),
        RequestKind::DeleteTopics(r) => {
            r.topic_names.iter_mut().for_each(|n| ns.rename(&mut n.0));
            for t in &mut r.topics {
                if let Some(n) = t.name.as_mut() {
                    ns.rename(&mut n.0);
                }
                ns.topic_id(registry, &mut t.topic_id);
            }
        }
        RequestKind::DeleteRecords(r) => r.topics.iter_mut().for_each(|t| ns.rename(&mut t.name.0)),
        RequestKind::CreatePartitions(r) => {
            r.topics.iter_mut().for_each(|t| ns.rename(&mut t.name.0))
        }
        RequestKind::InitProducerId(r) => {
            if let Some(t) = r.transactional_id.as_mut() {
                ns.rename(&mut t.0);
            }
        }
        RequestKind::DescribeConfigs(r) => {
            for res in &mut r.resources {
                if matches!(res.resource_type, TOPIC_RESOURCE | GROUP_RESOURCE) {
                    ns.rename(&mut res.resource_name);
                }
            }
        }
        RequestKind::AlterConfigs(r) => {
            for res in &mut r.resources {
                if matches!(res.resource_type, TOPIC_RESOURCE | GROUP_RESOURCE) {
                    ns.rename(&mut res.resource_name);
                }
            }
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            for res in &mut r.resources {
                if matches!(res.resource_type, TOPIC_RESOURCE | GROUP_RESOURCE) {
                    ns.rename(&mut res.resource_name);
                }
            }
        }
        RequestKind::FindCoordinator(r) => {
            if !r.key.is_empty() || r.coordinator_keys.is_empty() {
                ns.rename(&mut r.key);
            }
            r.coordinator_keys.iter_mut().for_each(|k| ns.rename(k));
        }
        RequestKind::JoinGroup(r) => ns.rename(&mut r.group_id.0),
        RequestKind::SyncGroup(r) => ns.rename(&mut r.group_id.0),
        RequestKind::Heartbeat(r) => ns.rename(&mut r.group_id.0),
        RequestKind::LeaveGroup(r) => ns.rename(&mut r.group_id.0),
        RequestKind::OffsetCommit(r) => {
            ns.rename(&mut r.group_id.0);
            r.topics.iter_mut().for_each(|t| ns.rename(&mut t.name.0));
        }
        RequestKind::OffsetFetch(r) => {
            ns.rename(&mut r.group_id.0);
            for t in r.topics.iter_mut().flatten() {
                ns.rename(&mut t.name.0);
            }
            for g in &mut r.groups {
                ns.rename(&mut g.group_id.0);
                for t in g.topics.iter_mut().flatten() {
                    ns.rename(&mut t.name.0);
                }
            }
        }
        RequestKind::DescribeGroups(r) => r.groups.iter_mut().for_each(|g| ns.rename(&mut g.0)),
        RequestKind::DeleteGroups(r) => r.groups_names.iter_mut().for_each(|g| ns.rename(&mut g.0)),
        RequestKind::OffsetDelete(r) => {
            ns.rename(&mut r.group_id.0);
            r.topics.iter_mut().for_each(|t| ns.rename(&mut t.name.0));
        }
        RequestKind::ConsumerGroupHeartbeat(r) => {
            ns.rename(&mut r.group_id.0);
            for n in r.subscribed_topic_names.iter_mut().flatten() {
                ns.rename(&mut n.0);
            }
            for t in r.topic_partitions.iter_mut().flatten() {
                ns.topic_id(registry, &mut t.topic_id);
            }
        }
        RequestKind::ConsumerGroupDescribe(r) => {
            r.group_ids.iter_mut().for_each(|g| ns.rename(&mut g.0))
        }
        _ => {}
    }
}

/// Whether a default-cluster request names anything starting with `~` (the only names it
/// must escape); most requests do not, and are left untouched.
fn mentions_tilde(request: &RequestKind) -> bool {
    let t = |s: &StrBytes| s.as_str().starts_with('~');
    match request {
        RequestKind::Produce(r) => {
            r.transactional_id.as_ref().is_some_and(|x| t(&x.0))
                || r.topic_data.iter().any(|d| t(&d.name.0))
        }
        RequestKind::Fetch(r) => {
            r.topics.iter().any(|d| t(&d.topic.0))
                || r.forgotten_topics_data.iter().any(|d| t(&d.topic.0))
        }
        // Rare requests: always walk them.
        _ => true,
    }
}

/// Renames a response's names back into the client's, and keeps only this cluster's.
pub fn outbound(ns: Namespace<'_>, registry: &Registry, response: &mut ResponseKind) {
    match response {
        ResponseKind::Produce(r) => {
            for t in &mut r.responses {
                ns.unname(&mut t.name.0);
                for p in &mut t.partition_responses {
                    ns.scrub(&mut p.error_message);
                }
            }
        }
        ResponseKind::Fetch(r) => {
            // A fetch session is found by its id: never answer with another cluster's topics
            // even if a client names a session it does not own.
            r.responses.retain_mut(|t| {
                if t.topic.is_empty() {
                    registry
                        .topic_by_id(TopicId(t.topic_id))
                        .is_none_or(|topic| ns.owns(&topic.name))
                } else {
                    ns.unname(&mut t.topic.0)
                }
            });
        }
        ResponseKind::ListOffsets(r) => {
            for t in &mut r.topics {
                ns.unname(&mut t.name.0);
            }
        }
        ResponseKind::Metadata(r) => {
            r.topics.retain_mut(|t| match t.name.as_mut() {
                Some(n) => ns.unname(&mut n.0),
                None => true,
            });
            if let Namespace::Tenant(c) = ns {
                r.cluster_id = Some(StrBytes::from_string(c.kafka_cluster_id.clone()));
                for b in &mut r.brokers {
                    b.port = i32::from(c.port);
                }
            }
        }
        ResponseKind::CreateTopics(r) => {
            for t in &mut r.topics {
                ns.unname(&mut t.name.0);
                ns.scrub(&mut t.error_message);
            }
        }
        ResponseKind::DeleteTopics(r) => {
            for t in &mut r.responses {
                if let Some(n) = t.name.as_mut() {
                    ns.unname(&mut n.0);
                }
                ns.scrub(&mut t.error_message);
            }
        }
        ResponseKind::DeleteRecords(r) => {
            for t in &mut r.topics {
                ns.unname(&mut t.name.0);
            }
        }
        ResponseKind::CreatePartitions(r) => {
            for t in &mut r.results {
                ns.unname(&mut t.name.0);
                ns.scrub(&mut t.error_message);
            }
        }
        ResponseKind::DescribeConfigs(r) => {
            for res in &mut r.results {
                if matches!(res.resource_type, TOPIC_RESOURCE | GROUP_RESOURCE) {
                    ns.unname(&mut res.resource_name);
                }
                ns.scrub(&mut res.error_message);
            }
        }
        ResponseKind::AlterConfigs(r) => {
            for res in &mut r.responses {
                if matches!(res.resource_type, TOPIC_RESOURCE | GROUP_RESOURCE) {
                    ns.unname(&mut res.resource_name);
                }
                ns.scrub(&mut res.error_message);
            }
        }
        ResponseKind::IncrementalAlterConfigs(r) => {
            for res in &mut r.responses {
                if matches!(res.resource_type, TOPIC_RESOURCE | GROUP_RESOURCE) {
                    ns.unname(&mut res.resource_name);
                }
                ns.scrub(&mut res.error_message);
            }
        }
        ResponseKind::DescribeCluster(r) => {
            if let Namespace::Tenant(c) = ns {
                r.cluster_id = StrBytes::from_string(c.kafka_cluster_id.clone());
                for b in &mut r.brokers {
                    b.port = i32::from(c.port);
                }
            }
        }
        ResponseKind::FindCoordinator(r) => {
            for c in &mut r.coordinators {
                ns.unname(&mut c.key);
                ns.scrub(&mut c.error_message);
            }
            if let Namespace::Tenant(c) = ns {
                if r.error_code == 0 && r.port != 0 {
                    r.port = i32::from(c.port);
                }
                for k in r.coordinators.iter_mut().filter(|k| k.error_code == 0) {
                    k.port = i32::from(c.port);
                }
            }
        }
        ResponseKind::OffsetCommit(r) => {
            for t in &mut r.topics {
                ns.unname(&mut t.name.0);
            }
        }
        ResponseKind::OffsetFetch(r) => {
            r.topics.retain_mut(|t| ns.unname(&mut t.name.0));
            for g in &mut r.groups {
                ns.unname(&mut g.group_id.0);
                g.topics.retain_mut(|t| ns.unname(&mut t.name.0));
            }
        }
        ResponseKind::DescribeGroups(r) => {
            for g in &mut r.groups {
                ns.unname(&mut g.group_id.0);
                ns.scrub(&mut g.error_message);
            }
        }
        ResponseKind::ListGroups(r) => r.groups.retain_mut(|g| ns.unname(&mut g.group_id.0)),
        ResponseKind::DeleteGroups(r) => {
            for g in &mut r.results {
                ns.unname(&mut g.group_id.0);
            }
        }
        ResponseKind::OffsetDelete(r) => {
            for t in &mut r.topics {
                ns.unname(&mut t.name.0);
            }
        }
        ResponseKind::ConsumerGroupHeartbeat(r) => ns.scrub(&mut r.error_message),
        ResponseKind::ConsumerGroupDescribe(r) => {
            for g in &mut r.groups {
                ns.unname(&mut g.group_id.0);
                ns.scrub(&mut g.error_message);
                for m in &mut g.members {
                    m.subscribed_topic_names.retain_mut(|n| ns.unname(&mut n.0));
                    for t in m
                        .assignment
                        .topic_partitions
                        .iter_mut()
                        .chain(m.target_assignment.topic_partitions.iter_mut())
                    {
                        ns.unname(&mut t.topic_name.0);
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cluster() -> VirtualCluster {
        VirtualCluster {
            arn: "arn:aws:kafka:us-east-1:123456789012:cluster/a/u".into(),
            name: "a".into(),
            account_id: "123456789012".into(),
            prefix: prefix_of("k1"),
            kafka_cluster_id: "vc".into(),
            arns: weir_auth::Arns::new("us-east-1", "123456789012", "a", "u"),
            port: 1,
            closed: CancellationToken::new(),
        }
    }

    #[test]
    fn names_round_trip_and_never_cross() {
        let c = cluster();
        let t = Namespace::Tenant(&c);
        let d = Namespace::Default;
        assert_eq!(t.inner("orders").unwrap(), "~k1~orders");
        assert_eq!(t.outer("~k1~orders"), Some("orders"));
        assert_eq!(t.outer("orders"), None);
        assert_eq!(t.outer("~k2~orders"), None);
        assert_eq!(d.inner("orders"), None);
        assert_eq!(d.outer("orders"), Some("orders"));
        assert_eq!(d.outer("~k1~orders"), None);
        // A default-cluster group spelled like a tenant's stored name stays the default's.
        let escaped = d.inner("~k1~orders").unwrap();
        assert_eq!(escaped, "~~k1~orders");
        assert!(!t.owns(&escaped));
        assert_eq!(d.outer(&escaped), Some("~k1~orders"));
        assert_eq!(split("~k1~orders"), (Some("~k1~"), "orders"));
        assert_eq!(split("orders"), (None, "orders"));
        assert_eq!(split("~~x"), (None, "~~x"));
    }

    #[test]
    fn responses_hide_other_clusters() {
        let c = cluster();
        let t = Namespace::Tenant(&c);
        let topic = |n: &str| {
            metadata_response::MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(n.into()))))
        };
        let mut r = ResponseKind::Metadata(MetadataResponse::default().with_topics(vec![
            topic("~k1~a"),
            topic("b"),
            topic("~k2~c"),
        ]));
        outbound(t, &Registry::default(), &mut r);
        let ResponseKind::Metadata(m) = &r else {
            panic!()
        };
        let names: Vec<_> = m
            .topics
            .iter()
            .map(|t| t.name.as_ref().unwrap().0.to_string())
            .collect();
        assert_eq!(names, vec!["a"]);
        assert_eq!(m.cluster_id.as_ref().unwrap().as_str(), "vc");
        let mut r = ResponseKind::Metadata(
            MetadataResponse::default().with_topics(vec![topic("~k1~a"), topic("b")]),
        );
        outbound(Namespace::Default, &Registry::default(), &mut r);
        let ResponseKind::Metadata(m) = &r else {
            panic!()
        };
        assert_eq!(m.topics.len(), 1);
    }
}
