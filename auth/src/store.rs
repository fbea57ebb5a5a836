//! Credentials, principals and policies, kept in the metadata store and cached in memory.
//!
//! Three record namespaces of the [`MetadataStore`]:
//! - `auth.keys`: access key id -> [`AccessKey`] (the secret AES-256-GCM encrypted with the
//!   master key, the key id as associated data);
//! - `auth.scram`: user -> salted SCRAM credentials (never a password);
//! - `auth.policies`: principal -> its named IAM policy documents.
//!
//! Every change is written through to the store and bumps [`AuthStore::version`], which
//! connections compare against to drop their cached authorization decisions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use weir_metadata_api::{MetadataError, MetadataStore};

use crate::policy::PolicyDocument;
use crate::scram::{ScramCredential, ScramMechanism, DEFAULT_ITERATIONS};
use crate::AuthError;

const NS_KEYS: &str = "auth.keys";
const NS_SCRAM: &str = "auth.scram";
const NS_POLICIES: &str = "auth.policies";

/// The 256-bit key that encrypts secret access keys at rest.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Parses base64 (standard alphabet) of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, AuthError> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|e| AuthError::Config(format!("master key is not base64: {e}")))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            AuthError::Config("master key must be 32 bytes (base64 of 32 random bytes)".into())
        })?;
        Ok(MasterKey(key))
    }

    /// Reads the key file, or creates it (mode 0600) with a random key when absent.
    pub fn load_or_create(path: &Path) -> Result<Self, AuthError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                write_private(path, B64.encode(key).as_bytes())?;
                tracing::info!(path = %path.display(), "generated the auth master key");
                Ok(MasterKey(key))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.0).into())
    }

    fn seal(&self, plaintext: &str, aad: &str) -> Result<Sealed, AuthError> {
        let nonce: [u8; 12] = rand::random();
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| AuthError::Crypto)?;
        Ok(Sealed {
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        })
    }

    fn open(&self, sealed: &Sealed, aad: &str) -> Result<String, AuthError> {
        let nonce = B64.decode(&sealed.nonce).map_err(|_| AuthError::Crypto)?;
        let ciphertext = B64
            .decode(&sealed.ciphertext)
            .map_err(|_| AuthError::Crypto)?;
        if nonce.len() != 12 {
            return Err(AuthError::Crypto);
        }
        let plain = self
            .cipher()
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| AuthError::Crypto)?;
        String::from_utf8(plain).map_err(|_| AuthError::Crypto)
    }
}

pub use weir_rpc::tls::write_private;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sealed {
    nonce: String,
    ciphertext: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
}

/// A Weir-issued access key pair, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    access_key_id: String,
    principal: String,
    secret: Sealed,
    status: KeyStatus,
    created_ms: i64,
}

/// What `weir auth key list` shows: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub access_key_id: String,
    pub principal: String,
    pub status: KeyStatus,
    pub created_ms: i64,
}

/// A new key pair: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub principal: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredScramUser {
    credentials: Vec<ScramCredential>,
}

/// A SCRAM user as listed (mechanisms and iterations, no key material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramUserInfo {
    pub user: String,
    pub mechanisms: Vec<String>,
    pub iterations: u32,
}

#[derive(Debug, Default)]
struct State {
    keys: BTreeMap<String, StoredKey>,
    scram: BTreeMap<String, StoredScramUser>,
    policies: BTreeMap<String, BTreeMap<String, Arc<PolicyDocument>>>,
}

/// The credential and policy store.
#[derive(Debug)]
pub struct AuthStore {
    meta: Arc<dyn MetadataStore>,
    master: MasterKey,
    state: RwLock<State>,
    version: AtomicU64,
    /// Serializes writers so a read-modify-write of one record cannot interleave.
    write: tokio::sync::Mutex<()>,
    /// The records the state was last built from (refresh compares against them).
    loaded: std::sync::Mutex<Vec<Raw>>,
}

/// One stored record: namespace, key, bytes.
type Raw = (&'static str, String, Vec<u8>);

fn decode_json<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, AuthError> {
    serde_json::from_slice(bytes)
        .map_err(|e| AuthError::Metadata(MetadataError::Corrupt(format!("{what}: {e}"))))
}

fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Checks a principal or user name.
pub fn validate_name(kind: &str, name: &str) -> Result<(), AuthError> {
    if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control()) {
        return Err(AuthError::Invalid(format!(
            "{kind} must be 1-256 printable characters"
        )));
    }
    Ok(())
}

fn random_string(alphabet: &[u8], len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

impl AuthStore {
    /// Loads every credential and policy from `meta`.
    pub async fn open(meta: Arc<dyn MetadataStore>, master: MasterKey) -> Result<Self, AuthError> {
        let store = AuthStore {
            meta,
            master,
            state: RwLock::new(State::default()),
            version: AtomicU64::new(1),
            write: tokio::sync::Mutex::new(()),
            loaded: std::sync::Mutex::new(Vec::new()),
        };
        store.reload().await?;
        Ok(store)
    }

    /// The metadata store the records live in.
    pub fn meta(&self) -> Arc<dyn MetadataStore> {
        self.meta.clone()
    }

    /// Re-reads everything from the metadata store (changes made by other processes).
    pub async fn reload(&self) -> Result<(), AuthError> {
        let raw = self.read_raw().await?;
        self.rebuild(raw)
    }

    /// Picks up changes other gateways made (their admin APIs write to the shared store):
    /// rebuilds the cache, and drops connections' cached decisions, only if a record changed.
    pub async fn refresh(&self) -> Result<bool, AuthError> {
        let _w = self.write.lock().await;
        let raw = self.read_raw().await?;
        if *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) == raw {
            return Ok(false);
        }
        self.rebuild(raw)?;
        Ok(true)
    }

    async fn read_raw(&self) -> Result<Vec<Raw>, AuthError> {
        let mut raw = Vec::new();
        for ns in [NS_KEYS, NS_SCRAM, NS_POLICIES] {
            for (key, bytes) in self.meta.record_list(ns).await? {
                raw.push((ns, key, bytes));
            }
        }
        Ok(raw)
    }

    fn rebuild(&self, raw: Vec<Raw>) -> Result<(), AuthError> {
        let mut state = State::default();
        let records = |ns: &'static str| {
            raw.iter()
                .filter(move |(n, ..)| *n == ns)
                .map(|(_, k, b)| (k.clone(), b.as_slice()))
        };
        for (id, bytes) in records(NS_KEYS) {
            let key: StoredKey = decode_json(&format!("access key {id}"), bytes)?;
            // A key that does not decrypt with this master key would fail every login:
            // say so once, loudly, at load.
            if self.master.open(&key.secret, &key.access_key_id).is_err() {
                tracing::error!(access_key_id = %id, "secret does not decrypt with the configured master key");
            }
            state.keys.insert(id, key);
        }
        for (user, bytes) in records(NS_SCRAM) {
            state.scram.insert(
                user.clone(),
                decode_json(&format!("SCRAM user {user}"), bytes)?,
            );
        }
        for (principal, bytes) in records(NS_POLICIES) {
            let docs: BTreeMap<String, PolicyDocument> =
                decode_json(&format!("policies of {principal}"), bytes)?;
            state.policies.insert(
                principal,
                docs.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            );
        }
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = raw;
        self.version.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Changes whenever any credential or policy changes.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn modify(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.write().unwrap_or_else(|e| e.into_inner()));
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The principal and secret of an active access key.
    pub fn secret_for(&self, access_key_id: &str) -> Option<(String, String)> {
        let state = self.read();
        let key = state.keys.get(access_key_id)?;
        if key.status != KeyStatus::Active {
            return None;
        }
        let secret = self.master.open(&key.secret, &key.access_key_id).ok()?;
        Some((key.principal.clone(), secret))
    }

    /// Whether an access key exists and is active.
    pub fn key_active(&self, access_key_id: &str) -> bool {
        self.read()
            .keys
            .get(access_key_id)
            .is_some_and(|k| k.status == KeyStatus::Active)
    }

    /// Whether a SCRAM user exists.
    pub fn scram_user_exists(&self, user: &str) -> bool {
        self.read().scram.contains_key(user)
    }

    /// The SCRAM credential of a user for one mechanism.
    pub fn scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Option<ScramCredential> {
        self.read()
            .scram
            .get(user)?
            .credentials
            .iter()
            .find(|c| c.mechanism == mechanism)
            .cloned()
    }

    /// Every credential of a user (for PLAIN, which checks a password against any).
    pub fn scram_credentials(&self, user: &str) -> Vec<ScramCredential> {
        self.read()
            .scram
            .get(user)
            .map(|u| u.credentials.clone())
            .unwrap_or_default()
    }

    /// The policies attached to a principal.
    pub fn policies(&self, principal: &str) -> Vec<Arc<PolicyDocument>> {
        self.read()
            .policies
            .get(principal)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    // -- administration ---------------------------------------------------------------------

    /// Issues a new access key pair for `principal`.
    pub async fn create_key(&self, principal: &str) -> Result<NewKey, AuthError> {
        validate_name("principal", principal)?;
        let _w = self.write.lock().await;
        const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        loop {
            let id = format!("WKIA{}", random_string(UPPER, 16));
            let secret = random_string(SECRET, 40);
            let stored = StoredKey {
                access_key_id: id.clone(),
                principal: principal.to_string(),
                secret: self.master.seal(&secret, &id)?,
                status: KeyStatus::Active,
                created_ms: now_ms(),
            };
            match self
                .meta
                .record_put(NS_KEYS, &id, encode_json(&stored), true)
                .await
            {
                Err(MetadataError::RecordExists(_)) => continue,
                Err(e) => return Err(e.into()),
                Ok(()) => {
                    self.modify(|s| {
                        s.keys.insert(id.clone(), stored);
                    });
                    return Ok(NewKey {
                        access_key_id: id,
                        secret_access_key: secret,
                        principal: principal.to_string(),
                    });
                }
            }
        }
    }

    pub fn list_keys(&self, principal: Option<&str>) -> Vec<KeyInfo> {
        self.read()
            .keys
            .values()
            .filter(|k| principal.is_none_or(|p| p == k.principal))
            .map(|k| KeyInfo {
                access_key_id: k.access_key_id.clone(),
                principal: k.principal.clone(),
                status: k.status,
                created_ms: k.created_ms,
            })
            .collect()
    }

    /// Marks a key revoked: it stops authenticating at once (new connections).
    pub async fn revoke_key(&self, access_key_id: &str) -> Result<KeyInfo, AuthError> {
        let _w = self.write.lock().await;
        let mut key = self
            .read()
            .keys
            .get(access_key_id)
            .cloned()
            .ok_or_else(|| AuthError::NotFound(format!("access key {access_key_id}")))?;
        key.status = KeyStatus::Revoked;
        self.meta
            .record_put(NS_KEYS, access_key_id, encode_json(&key), false)
            .await?;
        let info = KeyInfo {
            access_key_id: key.access_key_id.clone(),
            principal: key.principal.clone(),
            status: key.status,
            created_ms: key.created_ms,
        };
        self.modify(|s| {
            s.keys.insert(access_key_id.to_string(), key);
        });
        Ok(info)
    }

    /// Issues a new key for the same principal and revokes the old one.
    pub async fn rotate_key(&self, access_key_id: &str) -> Result<NewKey, AuthError> {
        let principal = self
            .read()
            .keys
            .get(access_key_id)
            .map(|k| k.principal.clone())
            .ok_or_else(|| AuthError::NotFound(format!("access key {access_key_id}")))?;
        let new = self.create_key(&principal).await?;
        self.revoke_key(access_key_id).await?;
        Ok(new)
    }

    /// Sets (or replaces) a user's SCRAM credentials for the given mechanisms.
    pub async fn set_scram(
        &self,
        user: &str,
        password: &str,
        mechanisms: &[ScramMechanism],
        iterations: Option<u32>,
    ) -> Result<ScramUserInfo, AuthError> {
        validate_name("user", user)?;
        if password.is_empty() {
            return Err(AuthError::Invalid("password must not be empty".into()));
        }
        let iterations = iterations.unwrap_or(DEFAULT_ITERATIONS);
        if !(DEFAULT_ITERATIONS..=crate::scram::MAX_ITERATIONS).contains(&iterations) {
            return Err(AuthError::Invalid(format!(
                "iterations must be between {DEFAULT_ITERATIONS} and {}",
                crate::scram::MAX_ITERATIONS
            )));
        }
        let _w = self.write.lock().await;
        let mut record = self.read().scram.get(user).cloned().unwrap_or_default();
        for &m in mechanisms {
            record.credentials.retain(|c| c.mechanism != m);
            record
                .credentials
                .push(ScramCredential::new(m, password, iterations));
        }
        record.credentials.sort_by_key(|c| c.mechanism.name());
        self.meta
            .record_put(NS_SCRAM, user, encode_json(&record), false)
            .await?;
        let info = scram_info(user, &record);
        self.modify(|s| {
            s.scram.insert(user.to_string(), record);
        });
        Ok(info)
    }

    pub fn list_scram(&self) -> Vec<ScramUserInfo> {
        self.read()
            .scram
            .iter()
            .map(|(u, r)| scram_info(u, r))
            .collect()
    }

    pub async fn delete_scram(&self, user: &str) -> Result<(), AuthError> {
        let _w = self.write.lock().await;
        if !self.meta.record_delete(NS_SCRAM, user).await? {
            return Err(AuthError::NotFound(format!("SCRAM user {user}")));
        }
        self.modify(|s| {
            s.scram.remove(user);
        });
        Ok(())
    }

    /// Attaches (or replaces) a named policy on a principal.
    pub async fn put_policy(
        &self,
        principal: &str,
        name: &str,
        doc: PolicyDocument,
    ) -> Result<(), AuthError> {
        validate_name("principal", principal)?;
        validate_name("policy name", name)?;
        doc.validate()
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let _w = self.write.lock().await;
        let mut docs: BTreeMap<String, Arc<PolicyDocument>> = self
            .read()
            .policies
            .get(principal)
            .cloned()
            .unwrap_or_default();
        docs.insert(name.to_string(), Arc::new(doc));
        self.write_policies(principal, docs).await
    }

    pub fn list_policies(&self, principal: &str) -> BTreeMap<String, PolicyDocument> {
        self.read()
            .policies
            .get(principal)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), (**v).clone())).collect())
            .unwrap_or_default()
    }

    /// Every principal with policies, keys or SCRAM credentials.
    pub fn principals(&self) -> Vec<String> {
        let state = self.read();
        let mut names: Vec<String> = state
            .policies
            .keys()
            .chain(state.scram.keys())
            .chain(state.keys.values().map(|k| &k.principal))
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub async fn delete_policy(&self, principal: &str, name: &str) -> Result<(), AuthError> {
        let _w = self.write.lock().await;
        let mut docs = self
            .read()
            .policies
            .get(principal)
            .cloned()
            .unwrap_or_default();
        if docs.remove(name).is_none() {
            return Err(AuthError::NotFound(format!(
                "policy {name} of principal {principal}"
            )));
        }
        self.write_policies(principal, docs).await
    }

    async fn write_policies(
        &self,
        principal: &str,
        docs: BTreeMap<String, Arc<PolicyDocument>>,
    ) -> Result<(), AuthError> {
        if docs.is_empty() {
            self.meta.record_delete(NS_POLICIES, principal).await?;
        } else {
            let plain: BTreeMap<&String, &PolicyDocument> =
                docs.iter().map(|(k, v)| (k, v.as_ref())).collect();
            self.meta
                .record_put(NS_POLICIES, principal, encode_json(&plain), false)
                .await?;
        }
        self.modify(|s| {
            if docs.is_empty() {
                s.policies.remove(principal);
            } else {
                s.policies.insert(principal.to_string(), docs);
            }
        });
        Ok(())
    }
}

fn scram_info(user: &str, r: &StoredScramUser) -> ScramUserInfo {
    ScramUserInfo {
        user: user.to_string(),
        mechanisms: r
            .credentials
            .iter()
            .map(|c| c.mechanism.name().to_string())
            .collect(),
        iterations: r.credentials.first().map(|c| c.iterations).unwrap_or(0),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use weir_metadata::EmbeddedStore;

    #[tokio::test]
    async fn keys_are_encrypted_at_rest_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetadataStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let master = MasterKey([7u8; 32]);
        let store = AuthStore::open(meta.clone(), master.clone()).await.unwrap();
        let key = store.create_key("alice").await.unwrap();
        assert_eq!(
            store.secret_for(&key.access_key_id),
            Some(("alice".to_string(), key.secret_access_key.clone()))
        );
        // The stored record does not contain the secret.
        let raw = meta
            .record_get(NS_KEYS, &key.access_key_id)
            .await
            .unwrap()
            .unwrap();
        let raw = String::from_utf8(raw).unwrap();
        assert!(!raw.contains(&key.secret_access_key));
        // Another process (same master key) sees it.
        let again = AuthStore::open(meta.clone(), master).await.unwrap();
        assert!(again.secret_for(&key.access_key_id).is_some());
        // A wrong master key cannot decrypt it.
        let wrong = AuthStore::open(meta.clone(), MasterKey([8u8; 32]))
            .await
            .unwrap();
        assert!(wrong.secret_for(&key.access_key_id).is_none());
        // Rotation: the new key works, the old one does not.
        let v = store.version();
        let new = store.rotate_key(&key.access_key_id).await.unwrap();
        assert!(store.version() > v);
        assert!(store.secret_for(&key.access_key_id).is_none());
        assert!(store.secret_for(&new.access_key_id).is_some());
        let listed = store.list_keys(Some("alice"));
        assert_eq!(listed.len(), 2);
        assert!(!serde_json::to_string(&listed)
            .unwrap()
            .contains(&new.secret_access_key));
    }

    #[tokio::test]
    async fn scram_and_policies() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetadataStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let store = AuthStore::open(meta.clone(), MasterKey([1u8; 32]))
            .await
            .unwrap();
        store
            .set_scram("bob", "pw", &[ScramMechanism::Sha512], None)
            .await
            .unwrap();
        assert!(store
            .scram_credential("bob", ScramMechanism::Sha512)
            .is_some());
        assert!(store
            .scram_credential("bob", ScramMechanism::Sha256)
            .is_none());
        let raw = meta.record_get(NS_SCRAM, "bob").await.unwrap().unwrap();
        assert!(!String::from_utf8(raw).unwrap().contains("\"pw\""));
        let doc = PolicyDocument::parse(
            r#"{"Statement":[{"Effect":"Allow","Action":"kafka-cluster:*","Resource":"*"}]}"#,
        )
        .unwrap();
        store.put_policy("bob", "all", doc).await.unwrap();
        assert_eq!(store.policies("bob").len(), 1);
        let reopened = AuthStore::open(meta, MasterKey([1u8; 32])).await.unwrap();
        assert_eq!(reopened.policies("bob").len(), 1);
        reopened.delete_policy("bob", "all").await.unwrap();
        assert!(reopened.policies("bob").is_empty());
        assert!(reopened.delete_policy("bob", "all").await.is_err());
        store.delete_scram("bob").await.unwrap();
        assert!(store.scram_credentials("bob").is_empty());
    }
}
