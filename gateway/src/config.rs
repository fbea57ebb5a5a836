//! Topic configs: the names Weir accepts, their defaults and types, validation, and the
//! effective values the data path enforces.

use std::collections::BTreeMap;

/// Kafka's config value types as DescribeConfigs v3+ reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// One topic config Weir knows.
#[derive(Debug)]
pub struct ConfigDef {
    pub name: &'static str,
    pub default: &'static str,
    pub kind: ConfigType,
    /// Smallest accepted numeric value.
    pub min: i64,
    /// Accepted values for strings and lists (empty: any).
    pub choices: &'static [&'static str],
}

const fn def(name: &'static str, default: &'static str, kind: ConfigType, min: i64) -> ConfigDef {
    ConfigDef {
        name,
        default,
        kind,
        min,
        choices: &[],
    }
}

const COMPRESSION_TYPES: &[&str] = &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];

/// Every topic config Weir accepts. Enforced: retention.ms, retention.bytes,
/// max.message.bytes, cleanup.policy (delete), message.timestamp.type. The others are stored
/// and reported so that tools which set them keep working.
pub static TOPIC_CONFIGS: &[ConfigDef] = &[
    ConfigDef {
        name: "cleanup.policy",
        default: "delete",
        kind: ConfigType::List,
        min: 0,
        choices: &["delete", "compact"],
    },
    ConfigDef {
        name: "compression.type",
        default: "producer",
        kind: ConfigType::String,
        min: 0,
        choices: COMPRESSION_TYPES,
    },
    def("delete.retention.ms", "86400000", ConfigType::Long, 0),
    def("file.delete.delay.ms", "60000", ConfigType::Long, 0),
    def("flush.messages", "9223372036854775807", ConfigType::Long, 1),
    def("flush.ms", "9223372036854775807", ConfigType::Long, 0),
    def("index.interval.bytes", "4096", ConfigType::Int, 0),
    def(
        "max.compaction.lag.ms",
        "9223372036854775807",
        ConfigType::Long,
        1,
    ),
    def("max.message.bytes", "1048588", ConfigType::Int, 0),
    def(
        "message.timestamp.after.max.ms",
        "9223372036854775807",
        ConfigType::Long,
        0,
    ),
    def(
        "message.timestamp.before.max.ms",
        "9223372036854775807",
        ConfigType::Long,
        0,
    ),
    def(
        "message.timestamp.difference.max.ms",
        "9223372036854775807",
        ConfigType::Long,
        0,
    ),
    ConfigDef {
        name: "message.timestamp.type",
        default: "CreateTime",
        kind: ConfigType::String,
        min: 0,
        choices: &["CreateTime", "LogAppendTime"],
    },
    ConfigDef {
        name: "min.cleanable.dirty.ratio",
        default: "0.5",
        kind: ConfigType::Double,
        min: 0,
        choices: &[],
    },
    def("min.compaction.lag.ms", "0", ConfigType::Long, 0),
    def("min.insync.replicas", "1", ConfigType::Int, 1),
    def("preallocate", "false", ConfigType::Boolean, 0),
    def("retention.bytes", "-1", ConfigType::Long, -1),
    def("retention.ms", "604800000", ConfigType::Long, -1),
    def("segment.bytes", "1073741824", ConfigType::Int, 14),
    def("segment.index.bytes", "10485760", ConfigType::Int, 4),
    def("segment.jitter.ms", "0", ConfigType::Long, 0),
    def("segment.ms", "604800000", ConfigType::Long, 1),
    def(
        "unclean.leader.election.enable",
        "false",
        ConfigType::Boolean,
        0,
    ),
    def(
        "message.downconversion.enable",
        "true",
        ConfigType::Boolean,
        0,
    ),
];

/// Looks up a config definition by name.
pub fn lookup(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// Checks one config value; the error is the message sent back with INVALID_CONFIG.
pub fn validate(name: &str, value: &str) -> Result<(), String> {
    let def = lookup(name).ok_or_else(|| format!("unknown topic config name: {name}"))?;
    let bad = || format!("invalid value '{value}' for configuration {name}");
    match def.kind {
        ConfigType::Int => {
            let v: i32 = value.trim().parse().map_err(|_| bad())?;
            if i64::from(v) < def.min {
                return Err(format!("{name} must be at least {}", def.min));
            }
        }
        ConfigType::Long => {
            let v: i64 = value.trim().parse().map_err(|_| bad())?;
            if v < def.min {
                return Err(format!("{name} must be at least {}", def.min));
            }
        }
        ConfigType::Double => {
            let v: f64 = value.trim().parse().map_err(|_| bad())?;
            if !(0.0..=1.0).contains(&v) {
                return Err(bad());
            }
        }
        ConfigType::Boolean => {
            if !matches!(value.trim().to_ascii_lowercase().as_str(), "true" | "false") {
                return Err(bad());
            }
        }
        ConfigType::String => {
            if !def.choices.is_empty() && !def.choices.contains(&value.trim()) {
                return Err(format!("{name} must be one of {}", def.choices.join(", ")));
            }
        }
        ConfigType::List => {
            let items: Vec<&str> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if items.is_empty() || items.iter().any(|i| !def.choices.contains(i)) {
                return Err(format!(
                    "{name} must be a list of {}",
                    def.choices.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// The effective values the data path needs, resolved once per config change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSettings {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: usize,
    pub log_append_time: bool,
    pub delete_policy: bool,
    /// `cleanup.policy` includes `compact`: keep the latest record of each key.
    pub compact_policy: bool,
    /// How long tombstones survive key compaction (`delete.retention.ms`).
    pub delete_retention_ms: i64,
    /// Records younger than this are not key-compacted (`min.compaction.lag.ms`).
    pub min_compaction_lag_ms: i64,
    /// Key compaction runs once this share of the log (in thousandths) is not clean
    /// (`min.cleanable.dirty.ratio`).
    pub min_cleanable_dirty_permille: u32,
}

impl TopicSettings {
    /// Resolves explicit configs over defaults (values were validated on the way in).
    pub fn resolve(configs: &BTreeMap<String, String>) -> Self {
        let get = |name: &str| -> String {
            configs
                .get(name)
                .cloned()
                .or_else(|| lookup(name).map(|d| d.default.to_string()))
                .unwrap_or_default()
        };
        TopicSettings {
            retention_ms: get("retention.ms").trim().parse().unwrap_or(604_800_000),
            retention_bytes: get("retention.bytes").trim().parse().unwrap_or(-1),
            max_message_bytes: get("max.message.bytes").trim().parse().unwrap_or(1_048_588),
            log_append_time: get("message.timestamp.type").trim() == "LogAppendTime",
            delete_policy: get("cleanup.policy")
                .split(',')
                .any(|p| p.trim() == "delete"),
            compact_policy: get("cleanup.policy")
                .split(',')
                .any(|p| p.trim() == "compact"),
            delete_retention_ms: get("delete.retention.ms")
                .trim()
                .parse()
                .unwrap_or(86_400_000),
            min_compaction_lag_ms: get("min.compaction.lag.ms").trim().parse().unwrap_or(0),
            min_cleanable_dirty_permille: get("min.cleanable.dirty.ratio")
                .trim()
                .parse::<f64>()
                .map(|r| (r.clamp(0.0, 1.0) * 1000.0).round() as u32)
                .unwrap_or(500),
        }
    }
}

/// Kafka's topic name rules: 1-249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`; a
/// tenant cluster's stored prefix (`~<namespace>~`) is not part of the name.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    let name = crate::namespace::split(name).1;
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name cannot be '{name}'"));
    }
    if name.len() > 249 {
        return Err("topic name is longer than 249 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name '{name}' contains the illegal character '{c}'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_values_by_type() {
        assert!(validate("retention.ms", "1000").is_ok());
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("retention.ms", "soon").is_err());
        assert!(validate("max.message.bytes", "99999999999").is_err());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("message.timestamp.type", "Whenever").is_err());
        assert!(validate("no.such.config", "1").is_err());
    }

    #[test]
    fn resolves_effective_settings() {
        let mut c = BTreeMap::new();
        let d = TopicSettings::resolve(&c);
        assert_eq!(
            (d.retention_ms, d.retention_bytes, d.max_message_bytes),
            (604_800_000, -1, 1_048_588)
        );
        assert!(d.delete_policy && !d.log_append_time);
        c.insert("cleanup.policy".to_string(), "compact".to_string());
        c.insert(
            "message.timestamp.type".to_string(),
            "LogAppendTime".to_string(),
        );
        let s = TopicSettings::resolve(&c);
        assert!(!s.delete_policy && s.log_append_time);
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        for bad in ["", ".", "..", "a b", "tópico", "x/y"] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }
}
