//! Tenants (AWS accounts) and their serverless clusters, kept in the metadata store.
//!
//! A tenant is an account: a 12-digit id, a name, a state and a root access key whose
//! principal is `arn:aws:iam::<account>:root`. A cluster belongs to one account and is a
//! *namespace* of the shared physical cluster: its topics, groups and transactional ids are
//! stored under the prefix `~<namespace>~` (see `weir_gateway::namespace`), it has its own
//! Kafka cluster id, its own MSK-format ARN and its own port from the gateway's cluster port
//! range. Records are small JSON documents (`tenants`, `clusters`, `cluster-ports`
//! namespaces); every gateway keeps them cached and re-reads them to see other gateways'
//! changes. [`TenantStore::changed`] wakes what serves clusters (the gateways' listeners).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use weir_metadata_api::{MetadataError, MetadataStore};

use crate::AuthError;

const NS_TENANTS: &str = "tenants";
const NS_CLUSTERS: &str = "clusters";
const NS_PORTS: &str = "cluster-ports";
/// Tenants and clusters one store holds at most (every map is bounded).
pub const MAX_TENANTS: usize = 10_000;
pub const MAX_CLUSTERS: usize = 10_000;
/// Clusters one account may have.
pub const MAX_CLUSTERS_PER_TENANT: usize = 2_000;
/// Tags one resource may carry (AWS's limit).
pub const MAX_TAGS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TenantState {
    Active,
    Suspended,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub account_id: String,
    pub name: String,
    pub state: TenantState,
    pub created_ms: i64,
    /// Clusters the tenant may have.
    #[serde(default = "default_max_clusters")]
    pub max_clusters: usize,
}

fn default_max_clusters() -> usize {
    100
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ClusterState {
    Creating,
    Active,
    Deleting,
}

impl ClusterState {
    pub fn name(self) -> &'static str {
        match self {
            ClusterState::Creating => "CREATING",
            ClusterState::Active => "ACTIVE",
            ClusterState::Deleting => "DELETING",
        }
    }
}

/// A serverless cluster as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub arn: String,
    pub name: String,
    pub uuid: String,
    pub account_id: String,
    pub region: String,
    pub state: ClusterState,
    pub created_ms: i64,
    /// MSK's `currentVersion` (changes with every update).
    pub current_version: String,
    /// The key of this cluster's names in the shared store (`~<namespace>~topic`).
    pub namespace: String,
    /// The Kafka cluster id clients see.
    pub kafka_cluster_id: String,
    /// Index into the gateways' cluster port range.
    pub port_index: u32,
    pub tags: BTreeMap<String, String>,
    /// `serverless.vpcConfigs` as given (recorded, not used).
    pub vpc_configs: serde_json::Value,
    pub iam_enabled: bool,
}

impl ClusterRecord {
    /// The ARNs of this cluster's resources (as policies name them).
    pub fn arns(&self) -> crate::Arns {
        crate::Arns::new(&self.region, &self.account_id, &self.name, &self.uuid)
    }
}

/// The account of a principal ARN (`arn:aws:iam::<account>:...`), if it is one.
pub fn account_of(principal: &str) -> Option<&str> {
    let rest = principal.strip_prefix("arn:aws:iam::")?;
    let (account, _) = rest.split_once(':')?;
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then_some(account)
}

/// The root principal of an account.
pub fn root_principal(account: &str) -> String {
    format!("arn:aws:iam::{account}:root")
}

/// The account of a resource ARN (`arn:aws:kafka:<region>:<account>:...`).
pub fn resource_account(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_), Some(_), Some(_), Some(account)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some(account)
}

/// MSK's cluster name rule: 1-64 characters, letters, digits and hyphens, starting with a
/// letter.
pub fn validate_cluster_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "clusterName {name:?} must be 1-64 letters, digits and hyphens, starting with a letter"
        )))
    }
}

#[derive(Debug, Default)]
struct State {
    tenants: BTreeMap<String, Tenant>,
    clusters: BTreeMap<String, ClusterRecord>,
}

/// The tenant and cluster store.
#[derive(Debug)]
pub struct TenantStore {
    meta: Arc<dyn MetadataStore>,
    state: RwLock<State>,
    write: tokio::sync::Mutex<()>,
    changed: tokio::sync::watch::Sender<u64>,
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, AuthError> {
    serde_json::from_slice(bytes)
        .map_err(|e| AuthError::Metadata(MetadataError::Corrupt(format!("{what}: {e}"))))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn random_from(alphabet: &[u8], len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

impl TenantStore {
    /// An empty store over `meta`; call [`TenantStore::refresh`] to load it.
    pub fn new(meta: Arc<dyn MetadataStore>) -> Self {
        TenantStore {
            meta,
            state: RwLock::new(State::default()),
            write: tokio::sync::Mutex::new(()),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// Wakes on every change this process makes or [`TenantStore::refresh`] finds.
    pub fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads every tenant and cluster (other gateways' changes); says whether any changed.
    pub async fn refresh(&self) -> Result<bool, AuthError> {
        let _w = self.write.lock().await;
        let mut next = State::default();
        for (id, bytes) in self.meta.record_list(NS_TENANTS).await? {
            next.tenants
                .insert(id.clone(), decode(&format!("tenant {id}"), &bytes)?);
        }
        for (arn, bytes) in self.meta.record_list(NS_CLUSTERS).await? {
            next.clusters
                .insert(arn.clone(), decode(&format!("cluster {arn}"), &bytes)?);
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let same = state.tenants == next.tenants && state.clusters == next.clusters;
        if !same {
            *state = next;
            drop(state);
            self.bump();
        }
        Ok(!same)
    }

    // -- tenants ----------------------------------------------------------------------------

    pub fn tenants(&self) -> Vec<Tenant> {
        self.read().tenants.values().cloned().collect()
    }

    pub fn tenant(&self, account: &str) -> Option<Tenant> {
        self.read().tenants.get(account).cloned()
    }

    /// Whether `account` is a tenant in the ACTIVE state.
    pub fn active(&self, account: &str) -> bool {
        self.read()
            .tenants
            .get(account)
            .is_some_and(|t| t.state == TenantState::Active)
    }

    /// Creates a tenant with a fresh 12-digit account id.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant, AuthError> {
        crate::store::validate_name("tenant name", name)?;
        let _w = self.write.lock().await;
        {
            let state = self.read();
            if state.tenants.values().any(|t| t.name == name) {
                return Err(AuthError::Conflict(format!("a tenant named {name} exists")));
            }
            if state.tenants.len() >= MAX_TENANTS {
                return Err(AuthError::Invalid(format!("at most {MAX_TENANTS} tenants")));
            }
        }
        loop {
            // Never 000000000000 (the operator's default account) and never a leading zero.
            let account = format!(
                "{}{}",
                random_from(b"123456789", 1),
                random_from(b"0123456789", 11)
            );
            let tenant = Tenant {
                account_id: account.clone(),
                name: name.to_string(),
                state: TenantState::Active,
                created_ms: now_ms(),
                max_clusters: default_max_clusters(),
            };
            match self
                .meta
                .record_put(NS_TENANTS, &account, encode(&tenant), true)
                .await
            {
                Err(MetadataError::RecordExists(_)) => continue,
                Err(e) => return Err(e.into()),
                Ok(()) => {
                    self.state
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .tenants
                        .insert(account, tenant.clone());
                    self.bump();
                    return Ok(tenant);
                }
            }
        }
    }

    pub async fn set_tenant_state(
        &self,
        account: &str,
        state: TenantState,
    ) -> Result<Tenant, AuthError> {
        let _w = self.write.lock().await;
        let mut tenant = self
            .tenant(account)
            .ok_or_else(|| AuthError::NotFound(format!("tenant {account}")))?;
        tenant.state = state;
        self.meta
            .record_put(NS_TENANTS, account, encode(&tenant), false)
            .await?;
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .tenants
            .insert(account.to_string(), tenant.clone());
        self.bump();
        Ok(tenant)
    }

    /// Deletes a tenant that has no cluster left.
    pub async fn delete_tenant(&self, account: &str) -> Result<Tenant, AuthError> {
        let _w = self.write.lock().await;
        let tenant = self
            .tenant(account)
            .ok_or_else(|| AuthError::NotFound(format!("tenant {account}")))?;
        let clusters = self.clusters(account).len();
        if clusters > 0 {
            return Err(AuthError::Conflict(format!(
                "tenant {account} still has {clusters} cluster(s); delete them first"
            )));
        }
        self.meta.record_delete(NS_TENANTS, account).await?;
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .tenants
            .remove(account);
        self.bump();
        Ok(tenant)
    }

    // -- clusters ---------------------------------------------------------------------------

    /// Every cluster of every account (the gateways serve them all).
    pub fn all_clusters(&self) -> Vec<ClusterRecord> {
        self.read().clusters.values().cloned().collect()
    }

    /// The clusters of one account, oldest first.
    pub fn clusters(&self, account: &str) -> Vec<ClusterRecord> {
        let mut list: Vec<ClusterRecord> = self
            .read()
            .clusters
            .values()
            .filter(|c| c.account_id == account)
            .cloned()
            .collect();
        list.sort_by(|a, b| (a.created_ms, &a.arn).cmp(&(b.created_ms, &b.arn)));
        list
    }

    /// A cluster by ARN, only if it belongs to `account` (another account's ARN is unknown).
    pub fn cluster(&self, account: &str, arn: &str) -> Option<ClusterRecord> {
        self.read()
            .clusters
            .get(arn)
            .filter(|c| c.account_id == account)
            .cloned()
    }

    /// Creates a cluster in CREATING; a port index of the range `0..ports` is reserved
    /// (create-only records, so two gateways never hand out one port).
    pub async fn create_cluster(
        &self,
        account: &str,
        region: &str,
        name: &str,
        tags: BTreeMap<String, String>,
        vpc_configs: serde_json::Value,
        ports: u32,
    ) -> Result<ClusterRecord, AuthError> {
        validate_cluster_name(name)?;
        validate_tags(&tags)?;
        let _w = self.write.lock().await;
        let tenant = self
            .tenant(account)
            .ok_or_else(|| AuthError::NotFound(format!("account {account}")))?;
        let (taken, mine): (Vec<u32>, Vec<ClusterRecord>) = {
            let state = self.read();
            (
                state.clusters.values().map(|c| c.port_index).collect(),
                state
                    .clusters
                    .values()
                    .filter(|c| c.account_id == account)
                    .cloned()
                    .collect(),
            )
        };
        if mine.iter().any(|c| c.name == name) {
            return Err(AuthError::Conflict(format!(
                "A cluster with the name {name} already exists"
            )));
        }
        if mine.len() >= tenant.max_clusters.min(MAX_CLUSTERS_PER_TENANT) {
            return Err(AuthError::Limit(format!(
                "the account may have at most {} clusters",
                tenant.max_clusters
            )));
        }
        if taken.len() >= MAX_CLUSTERS {
            return Err(AuthError::Limit(format!("at most {MAX_CLUSTERS} clusters")));
        }
        // Reserve the lowest free port index.
        let mut port_index = None;
        for i in (0..ports).filter(|i| !taken.contains(i)) {
            match self
                .meta
                .record_put(
                    NS_PORTS,
                    &format!("{i:05}"),
                    account.as_bytes().to_vec(),
                    true,
                )
                .await
            {
                Ok(()) => {
                    port_index = Some(i);
                    break;
                }
                Err(MetadataError::RecordExists(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let Some(port_index) = port_index else {
            return Err(AuthError::Limit(
                "no free port in the gateways' cluster port range".into(),
            ));
        };
        let uuid = format!("{}-{}", uuid_like(), random_from(b"123456789", 1));
        let record = ClusterRecord {
            arn: format!("arn:aws:kafka:{region}:{account}:cluster/{name}/{uuid}"),
            name: name.to_string(),
            uuid,
            account_id: account.to_string(),
            region: region.to_string(),
            state: ClusterState::Creating,
            created_ms: now_ms(),
            current_version: random_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 14),
            namespace: random_from(b"abcdefghijklmnopqrstuvwxyz0123456789", 10),
            kafka_cluster_id: random_from(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
                22,
            ),
            port_index,
            tags,
            vpc_configs,
            iam_enabled: true,
        };
        if let Err(e) = self
            .meta
            .record_put(NS_CLUSTERS, &record.arn, encode(&record), true)
            .await
        {
            let _ = self
                .meta
                .record_delete(NS_PORTS, &format!("{port_index:05}"))
                .await;
            return Err(e.into());
        }
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clusters
            .insert(record.arn.clone(), record.clone());
        self.bump();
        Ok(record)
    }

    /// Rewrites a cluster's record with `f` (state changes, tags).
    pub async fn update_cluster(
        &self,
        arn: &str,
        f: impl FnOnce(&mut ClusterRecord) -> Result<(), AuthError>,
    ) -> Result<ClusterRecord, AuthError> {
        let _w = self.write.lock().await;
        let mut record = self
            .read()
            .clusters
            .get(arn)
            .cloned()
            .ok_or_else(|| AuthError::NotFound(format!("cluster {arn}")))?;
        let before = record.clone();
        f(&mut record)?;
        if record == before {
            return Ok(record);
        }
        self.meta
            .record_put(NS_CLUSTERS, arn, encode(&record), false)
            .await?;
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clusters
            .insert(arn.to_string(), record.clone());
        self.bump();
        Ok(record)
    }

    /// Removes a cluster's record and frees its port (its data is already deleted).
    pub async fn remove_cluster(&self, arn: &str) -> Result<(), AuthError> {
        let _w = self.write.lock().await;
        let port = self.read().clusters.get(arn).map(|c| c.port_index);
        self.meta.record_delete(NS_CLUSTERS, arn).await?;
        if let Some(i) = port {
            self.meta
                .record_delete(NS_PORTS, &format!("{i:05}"))
                .await?;
        }
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clusters
            .remove(arn);
        self.bump();
        Ok(())
    }
}

/// Checks AWS's tag rules: keys 1-128 characters, values up to 256, at most 50 tags.
pub fn validate_tags(tags: &BTreeMap<String, String>) -> Result<(), AuthError> {
    if tags.len() > MAX_TAGS {
        return Err(AuthError::Invalid(format!("at most {MAX_TAGS} tags")));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(AuthError::Invalid(format!(
                "tag {k:?}: keys are 1-128 characters, values at most 256"
            )));
        }
        if k.starts_with("aws:") {
            return Err(AuthError::Invalid(
                "tag keys may not start with aws:".into(),
            ));
        }
    }
    Ok(())
}

/// A random UUID in its text form (MSK's cluster ARNs end in `<uuid>-<2 hex>`).
fn uuid_like() -> String {
    let hex = random_from(b"0123456789abcdef", 32);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accounts_of_principals_and_arns() {
        assert_eq!(
            account_of("arn:aws:iam::123456789012:root"),
            Some("123456789012")
        );
        assert_eq!(
            account_of("arn:aws:iam::123456789012:user/a"),
            Some("123456789012")
        );
        assert_eq!(account_of("arn:aws:iam::12345:root"), None);
        assert_eq!(account_of("alice"), None);
        assert_eq!(
            resource_account("arn:aws:kafka:us-east-1:123456789012:cluster/a/b"),
            Some("123456789012")
        );
        assert!(validate_cluster_name("orders-1").is_ok());
        for bad in ["", "1abc", "bad name", "a_b", &"a".repeat(65)] {
            assert!(validate_cluster_name(bad).is_err(), "{bad}");
        }
    }
}
