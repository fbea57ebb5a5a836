//! The metadata service: the only way anything in Weir reads or writes metadata.
//!
//! It owns the backends of the [`MetadataStore`] trait (defined, with its types, in
//! `weir-metadata-api` and re-exported here), selected by URL ([`open`]):
//!
//! - [`EmbeddedStore`] (`embedded://<path>`): a transactional `redb` database in one file,
//!   the single-machine default;
//! - [`DynamoStore`] (`dynamodb://<table-prefix>`): DynamoDB tables, for deployments on AWS
//!   (table design in [`store::dynamo`]);
//! - [`remote::RemoteStore`] (`quic://host:port?ca=PATH`): any backend served by another
//!   process (`weir metadata`, [`remote::MetadataServer`]) over QUIC, so several local
//!   processes can share one embedded store.
//!
//! It stores:
//!
//! - topics (name, topic id, partition count, configs),
//! - partitions (next offset, log start offset, leader epoch),
//! - the offset index: which object and byte range hold which offsets of a partition,
//! - object reference counts, so an object is deleted once no index entry points at it,
//! - idempotent-producer state per partition and the producer id counter,
//! - the cluster id,
//! - small records (credentials, policies), among them the gateways' registrations and
//!   partition placements, typed in [`membership`].
//!
//! Every write that guards the log is conditional: [`MetadataStore::commit_index`] refuses a
//! partition's entry unless the leader epoch and next offset still match, so a stale writer
//! can never fork the log. It must never hold Kafka wire types; it speaks `weir-common` types.

pub mod remote;
pub mod store;

/// The API (trait, types, errors, membership records) lives in `weir-metadata-api`, so that
/// services depend on it without the backends; it is re-exported here whole.
pub use weir_metadata_api::*;

pub use store::dynamo::{DynamoOptions, DynamoStore};
pub use store::embedded::EmbeddedStore;

/// Opens the backend a metadata URL names: `embedded://<path>`,
/// `dynamodb://<table-prefix>[?region=R&endpoint=URL]` (tables are created when missing if
/// `create_tables`), or `quic://<host>:<port>?ca=<path>[&name=<server name>]`.
pub async fn open(url: &str, create_tables: bool) -> Result<std::sync::Arc<dyn MetadataStore>> {
    if let Some(path) = url.strip_prefix("embedded://") {
        let store = EmbeddedStore::open(std::path::Path::new(path)).map_err(|e| {
            MetadataError::Backend(format!(
                "opening the embedded metadata store at {path} (is another weir using it?): {e}"
            ))
        })?;
        return Ok(std::sync::Arc::new(store));
    }
    if url.starts_with("dynamodb://") {
        let store = DynamoStore::connect(&DynamoOptions::parse(url)?).await?;
        if !store.tables_exist().await? {
            if !create_tables {
                return Err(MetadataError::Backend(format!(
                    "DynamoDB tables {:?} do not exist: run `weir metadata init --metadata {url}`",
                    store.tables()
                )));
            }
            let created = store.init().await?;
            tracing::info!(tables = ?created, "created the DynamoDB metadata tables");
        }
        return Ok(std::sync::Arc::new(store));
    }
    if let Some(rest) = url.strip_prefix("quic://") {
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.trim_end_matches('/');
        let mut params = weir_common::url_params(query, &["ca", "name"])
            .map_err(|e| MetadataError::Invalid(format!("'{url}': {e}")))?
            .into_iter();
        let (ca, name) = (params.next().flatten(), params.next().flatten());
        let ca = ca.ok_or_else(|| {
            MetadataError::Invalid(format!(
                "'{url}': add ?ca=<path to the metadata service's CA certificate> (weir metadata prints it)"
            ))
        })?;
        let addr = tokio::net::lookup_host(authority)
            .await
            .map_err(|e| MetadataError::Invalid(format!("'{url}': {e}")))?
            .next()
            .ok_or_else(|| {
                MetadataError::Invalid(format!("'{url}': no address for {authority}"))
            })?;
        let host = authority
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(authority);
        let server_name = name.unwrap_or_else(|| host.to_string());
        let store = remote::RemoteStore::connect(addr, &server_name, std::path::Path::new(&ca))?;
        return Ok(std::sync::Arc::new(store));
    }
    Err(MetadataError::Invalid(format!(
        "unsupported metadata URL '{url}': use embedded://<path>, dynamodb://<table-prefix> or quic://<host>:<port>?ca=<path>"
    )))
}

#[cfg(test)]
mod tests;
