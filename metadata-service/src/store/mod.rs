//! Backends of [`crate::MetadataStore`].

pub mod dynamo;
pub mod embedded;

use crate::{MetadataError, Result};

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| MetadataError::Corrupt(format!("encode: {e}")))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| MetadataError::Corrupt(format!("decode: {e}")))
}
