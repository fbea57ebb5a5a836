//! IAM policy documents and their evaluation, restricted to what MSK's `kafka-cluster`
//! actions need: `Effect`, `Action`/`NotAction`, `Resource`/`NotResource`, with `*` and `?`
//! wildcards. An explicit Deny wins over any Allow; nothing allowed means denied.
//! `Condition` blocks are refused when a policy is stored rather than ignored, so a
//! condition can never silently widen or narrow access.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("invalid policy document: {0}")]
    Invalid(String),
}

/// One string or a list of strings, as IAM accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    #[serde(rename = "Sid", default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(rename = "Effect")]
    pub effect: Effect,
    #[serde(rename = "Action", default, skip_serializing_if = "Option::is_none")]
    pub action: Option<OneOrMany>,
    #[serde(rename = "NotAction", default, skip_serializing_if = "Option::is_none")]
    pub not_action: Option<OneOrMany>,
    #[serde(rename = "Resource", default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<OneOrMany>,
    #[serde(
        rename = "NotResource",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub not_resource: Option<OneOrMany>,
    #[serde(rename = "Condition", default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    #[serde(rename = "Version", default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(rename = "Id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "Statement")]
    pub statement: StatementList,
}

/// `Statement` may be one object or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StatementList {
    One(Box<Statement>),
    Many(Vec<Statement>),
}

impl StatementList {
    pub fn iter(&self) -> impl Iterator<Item = &Statement> {
        match self {
            StatementList::One(s) => std::slice::from_ref(s.as_ref()).iter(),
            StatementList::Many(v) => v.iter(),
        }
    }
}

impl PolicyDocument {
    /// Parses and validates a policy document.
    pub fn parse(json: &str) -> Result<Self, PolicyError> {
        let doc: PolicyDocument =
            serde_json::from_str(json).map_err(|e| PolicyError::Invalid(e.to_string()))?;
        doc.validate()?;
        Ok(doc)
    }

    pub fn validate(&self) -> Result<(), PolicyError> {
        if let Some(v) = &self.version {
            if v != "2012-10-17" && v != "2008-10-17" {
                return Err(PolicyError::Invalid(format!("unknown Version {v}")));
            }
        }
        let mut any = false;
        for (i, s) in self.statement.iter().enumerate() {
            any = true;
            if s.condition.is_some() {
                return Err(PolicyError::Invalid(format!(
                    "statement {i}: Condition is not supported"
                )));
            }
            if s.action.is_some() == s.not_action.is_some() {
                return Err(PolicyError::Invalid(format!(
                    "statement {i}: exactly one of Action and NotAction is required"
                )));
            }
            if s.resource.is_some() == s.not_resource.is_some() {
                return Err(PolicyError::Invalid(format!(
                    "statement {i}: exactly one of Resource and NotResource is required"
                )));
            }
            for a in s.action.iter().chain(s.not_action.iter()) {
                for name in a.items() {
                    if name != "*" && !name.contains(':') {
                        return Err(PolicyError::Invalid(format!(
                            "statement {i}: action {name} has no service prefix"
                        )));
                    }
                }
            }
        }
        if !any {
            return Err(PolicyError::Invalid("no statements".into()));
        }
        Ok(())
    }
}

/// The outcome of evaluating policies for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No statement allowed it.
    ImplicitDeny,
    /// A Deny statement matched.
    ExplicitDeny,
}

impl Decision {
    pub fn allowed(self) -> bool {
        self == Decision::Allow
    }
}

/// Evaluates `action` (e.g. `kafka-cluster:ReadData`) on `resource` (an ARN) against every
/// statement of `policies`.
pub fn evaluate<'a>(
    policies: impl IntoIterator<Item = &'a PolicyDocument>,
    action: &str,
    resource: &str,
) -> Decision {
    let mut allowed = false;
    for doc in policies {
        for s in doc.statement.iter() {
            let action_matches = match (&s.action, &s.not_action) {
                (Some(a), _) => a.items().iter().any(|p| wildcard(p, action, true)),
                (None, Some(na)) => !na.items().iter().any(|p| wildcard(p, action, true)),
                (None, None) => false,
            };
            let resource_matches = match (&s.resource, &s.not_resource) {
                (Some(r), _) => r.items().iter().any(|p| wildcard(p, resource, false)),
                (None, Some(nr)) => !nr.items().iter().any(|p| wildcard(p, resource, false)),
                (None, None) => false,
            };
            if action_matches && resource_matches {
                match s.effect {
                    Effect::Deny => return Decision::ExplicitDeny,
                    Effect::Allow => allowed = true,
                }
            }
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

/// IAM wildcard match: `*` any run of characters, `?` any one character. Actions compare
/// case-insensitively, resources exactly.
pub fn wildcard(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let eq = |a: u8, b: u8| {
        if ignore_case {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || (p[pi] != b'*' && eq(p[pi], t[ti]))) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TOPIC: &str = "arn:aws:kafka:us-east-1:000000000000:topic/weir/abc/orders";

    #[test]
    fn wildcards() {
        assert!(wildcard("*", "anything", false));
        assert!(wildcard("kafka-cluster:*", "kafka-cluster:ReadData", true));
        assert!(wildcard(
            "kafka-cluster:*Data",
            "kafka-cluster:ReadData",
            true
        ));
        assert!(wildcard(
            "KAFKA-cluster:readdata",
            "kafka-cluster:ReadData",
            true
        ));
        assert!(!wildcard(
            "kafka-cluster:Read",
            "kafka-cluster:ReadData",
            true
        ));
        assert!(wildcard(
            "arn:aws:kafka:*:*:topic/weir/*/ord?rs",
            TOPIC,
            false
        ));
        assert!(!wildcard(
            "arn:aws:kafka:*:*:topic/weir/*/Orders",
            TOPIC,
            false
        ));
        assert!(wildcard("a*b*c", "aXXbYYc", false));
        assert!(!wildcard("a*b*c", "aXXbYY", false));
    }

    #[test]
    fn deny_wins_and_default_deny() {
        let allow = PolicyDocument::parse(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kafka-cluster:*"],"Resource":"*"}]}"#,
        )
        .unwrap();
        let deny = PolicyDocument::parse(
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"kafka-cluster:ReadData","Resource":"arn:aws:kafka:*:*:topic/*/*/orders"}}"#,
        )
        .unwrap();
        assert_eq!(
            evaluate([&allow], "kafka-cluster:ReadData", TOPIC),
            Decision::Allow
        );
        assert_eq!(
            evaluate([&allow, &deny], "kafka-cluster:ReadData", TOPIC),
            Decision::ExplicitDeny
        );
        assert_eq!(
            evaluate([&allow, &deny], "kafka-cluster:WriteData", TOPIC),
            Decision::Allow
        );
        assert_eq!(
            evaluate([], "kafka-cluster:Connect", "arn"),
            Decision::ImplicitDeny
        );
        assert_eq!(
            evaluate([&deny], "kafka-cluster:WriteData", TOPIC),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn not_action_and_validation() {
        let doc = PolicyDocument::parse(
            r#"{"Statement":[{"Effect":"Allow","NotAction":"kafka-cluster:Delete*","Resource":"*"}]}"#,
        )
        .unwrap();
        assert!(evaluate([&doc], "kafka-cluster:ReadData", TOPIC).allowed());
        assert!(!evaluate([&doc], "kafka-cluster:DeleteTopic", TOPIC).allowed());
        for bad in [
            r#"{"Statement":[{"Effect":"Allow","Action":"kafka-cluster:*","Resource":"*","Condition":{"Bool":{"aws:SecureTransport":"true"}}}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Maybe","Action":"*","Resource":"*"}]}"#,
            r#"{"Statement":[]}"#,
            r#"{"Version":"2020-01-01","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Allow","Action":"ReadData","Resource":"*"}]}"#,
            r#"not json"#,
        ] {
            assert!(PolicyDocument::parse(bad).is_err(), "{bad}");
        }
    }
}
