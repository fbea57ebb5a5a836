//! DescribeConfigs, AlterConfigs (whole-set replace) and IncrementalAlterConfigs for topics,
//! plus a read-only view of broker settings.

use super::{code, message};
use crate::config::{self, TOPIC_CONFIGS};
use crate::Gateway;
use kafka_protocol::messages::alter_configs_request::AlterConfigsRequest;
use kafka_protocol::messages::alter_configs_response::{
    AlterConfigsResourceResponse, AlterConfigsResponse,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsRequest;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
    DescribeConfigsSynonym,
};
use kafka_protocol::messages::incremental_alter_configs_request::IncrementalAlterConfigsRequest;
use kafka_protocol::messages::incremental_alter_configs_response::{
    AlterConfigsResourceResponse as IncrementalResult, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::collections::BTreeMap;

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const BROKER_LOGGER: i8 = 8;

/// Config sources as DescribeConfigs reports them.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

fn entry(
    version: i16,
    include_synonyms: bool,
    name: &str,
    value: String,
    source: i8,
    kind: i8,
) -> DescribeConfigsResourceResult {
    let mut e = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_string(name.to_string()))
        .with_value(Some(StrBytes::from_string(value.clone())))
        .with_config_source(source);
    if include_synonyms {
        e = e.with_synonyms(vec![DescribeConfigsSynonym::default()
            .with_name(StrBytes::from_string(name.to_string()))
            .with_value(Some(StrBytes::from_string(value)))
            .with_source(source)]);
    }
    if version >= 3 {
        e = e.with_config_type(kind);
    }
    e
}

fn broker_configs(gw: &Gateway) -> Vec<(&'static str, String, i8)> {
    vec![
        (
            "auto.create.topics.enable",
            gw.config.auto_create_topics.to_string(),
            1,
        ),
        (
            "num.partitions",
            gw.config.default_partitions.to_string(),
            3,
        ),
        (
            "socket.request.max.bytes",
            gw.config.max_request_bytes.to_string(),
            3,
        ),
        ("message.max.bytes", "1048588".to_string(), 3),
        ("default.replication.factor", "1".to_string(), 3),
        ("log.retention.ms", "604800000".to_string(), 5),
    ]
}

pub fn describe(
    gw: &Gateway,
    version: i16,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut results = Vec::new();
    for r in req.resources {
        let wanted = |name: &str| {
            r.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.is_empty() || keys.iter().any(|k| k.as_str() == name))
        };
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        match r.resource_type {
            TOPIC => match gw.registry.topic(&r.resource_name) {
                Some(topic) => {
                    let record = topic.record();
                    let configs = TOPIC_CONFIGS
                        .iter()
                        .filter(|d| wanted(d.name))
                        .map(|d| {
                            let (value, source) = match record.configs.get(d.name) {
                                Some(v) => (v.clone(), SOURCE_DYNAMIC_TOPIC),
                                None => (d.default.to_string(), SOURCE_DEFAULT),
                            };
                            entry(
                                version,
                                req.include_synonyms,
                                d.name,
                                value,
                                source,
                                d.kind as i8,
                            )
                        })
                        .collect();
                    result = result.with_configs(configs);
                }
                None => {
                    result = result
                        .with_error_code(code(ResponseError::UnknownTopicOrPartition))
                        .with_error_message(message(format!(
                            "unknown topic '{}'",
                            r.resource_name
                        )));
                }
            },
            BROKER => {
                let configs = broker_configs(gw)
                    .into_iter()
                    .filter(|(n, _, _)| wanted(n))
                    .map(|(n, v, kind)| {
                        entry(
                            version,
                            req.include_synonyms,
                            n,
                            v,
                            SOURCE_STATIC_BROKER,
                            kind,
                        )
                    })
                    .collect();
                result = result.with_configs(configs);
            }
            BROKER_LOGGER => {}
            other => {
                result = result
                    .with_error_code(code(ResponseError::InvalidRequest))
                    .with_error_message(message(format!("unsupported resource type {other}")));
            }
        }
        results.push(result);
    }
    DescribeConfigsResponse::default().with_results(results)
}

/// Applies a new full config map to a topic: validated, stored, then in effect.
async fn store_configs(
    gw: &Gateway,
    name: &str,
    configs: BTreeMap<String, String>,
    validate_only: bool,
) -> Result<(), (ResponseError, String)> {
    let topic = gw.registry.topic(name).ok_or((
        ResponseError::UnknownTopicOrPartition,
        format!("unknown topic '{name}'"),
    ))?;
    for (k, v) in &configs {
        config::validate(k, v).map_err(|m| (ResponseError::InvalidConfig, m))?;
    }
    if validate_only {
        return Ok(());
    }
    let record = gw
        .meta
        .set_topic_configs(name, configs)
        .await
        .map_err(|e| (ResponseError::KafkaStorageError, e.to_string()))?;
    gw.registry.update_configs(&topic, record);
    tracing::info!(topic = %name, "topic configs changed");
    Ok(())
}

fn resource_check(resource_type: i8) -> Result<(), (ResponseError, String)> {
    match resource_type {
        TOPIC => Ok(()),
        BROKER | BROKER_LOGGER => Err((
            ResponseError::InvalidRequest,
            "broker settings are set on the weir command line, not through AlterConfigs".into(),
        )),
        other => Err((
            ResponseError::InvalidRequest,
            format!("unsupported resource type {other}"),
        )),
    }
}

pub async fn alter(gw: &Gateway, _version: i16, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut responses = Vec::new();
    for r in req.resources {
        let outcome = async {
            resource_check(r.resource_type)?;
            let mut configs = BTreeMap::new();
            for c in &r.configs {
                if let Some(v) = &c.value {
                    configs.insert(c.name.to_string(), v.to_string());
                }
            }
            let _admin = gw.admin.lock().await;
            store_configs(gw, &r.resource_name, configs, req.validate_only).await
        }
        .await;
        let mut resp = AlterConfigsResourceResponse::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        if let Err((e, msg)) = outcome {
            resp = resp
                .with_error_code(code(e))
                .with_error_message(message(msg));
        }
        responses.push(resp);
    }
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter(
    gw: &Gateway,
    _version: i16,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::new();
    for r in req.resources {
        let outcome = async {
            resource_check(r.resource_type)?;
            let _admin = gw.admin.lock().await;
            let topic = gw.registry.topic(&r.resource_name).ok_or((
                ResponseError::UnknownTopicOrPartition,
                format!("unknown topic '{}'", r.resource_name),
            ))?;
            let mut configs = topic.record().configs;
            for c in &r.configs {
                let name = c.name.to_string();
                let def = config::lookup(&name).ok_or((
                    ResponseError::InvalidConfig,
                    format!("unknown topic config name: {name}"),
                ))?;
                let value = c.value.as_ref().map(|v| v.to_string());
                match c.config_operation {
                    0 => {
                        // SET
                        let v = value.ok_or((
                            ResponseError::InvalidConfig,
                            format!("null value for {name}"),
                        ))?;
                        configs.insert(name, v);
                    }
                    1 => {
                        // DELETE: back to the default
                        configs.remove(&name);
                    }
                    2 | 3 => {
                        // APPEND / SUBTRACT on list configs
                        if def.kind != config::ConfigType::List {
                            return Err((
                                ResponseError::InvalidConfig,
                                format!("{name} is not a list config"),
                            ));
                        }
                        let current = configs
                            .get(&name)
                            .cloned()
                            .unwrap_or_else(|| def.default.to_string());
                        let mut items: Vec<String> = current
                            .split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect();
                        for v in value
                            .unwrap_or_default()
                            .split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                        {
                            if c.config_operation == 2 {
                                if !items.iter().any(|i| i == v) {
                                    items.push(v.to_string());
                                }
                            } else {
                                items.retain(|i| i != v);
                            }
                        }
                        configs.insert(name, items.join(","));
                    }
                    other => {
                        return Err((
                            ResponseError::InvalidRequest,
                            format!("unknown config operation {other}"),
                        ))
                    }
                }
            }
            store_configs(gw, &r.resource_name, configs, req.validate_only).await
        }
        .await;
        let mut resp = IncrementalResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        if let Err((e, msg)) = outcome {
            resp = resp
                .with_error_code(code(e))
                .with_error_message(message(msg));
        }
        responses.push(resp);
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
