//! Request-body guard: walks a Kafka request body against its schema before `kafka-protocol`
//! decodes it, so that a hostile count cannot abort the process.
//!
//! Why it exists: kafka-protocol 0.18 decodes every array with `Vec::with_capacity(n)`, `n` read
//! straight from the wire (`Array` and `CompactArray` in its `protocol/types.rs`). A 14-byte
//! AlterConfigs v0 frame claiming 0x26002600 elements makes that allocation fail, and a failed
//! allocation aborts the process: it is not a panic, so `catch_unwind` cannot contain it. Strings
//! and bytes are length-checked by the crate; array counts, at every depth, are not. We keep
//! kafka-protocol and do not patch it, so the gateway runs this guard first and decodes only the
//! (api key, version) pairs listed by [`guarded_versions`], only when [`check_request_body`]
//! accepts the body.
//!
//! How it works: one static table per request lists each struct's fields with the versions they
//! exist in, whether the decoder accepts null (the field's Rust type is an `Option`) and the known
//! tagged fields, transcribed from the crate's generated `impl Decodable` code (not from the Kafka
//! JSON schemas: where the two differ, the decoder is what must be mirrored). A walker follows it
//! over the bytes without allocating and refuses a body in which a count or length is negative
//! where null is not accepted, is larger than the bytes that remain, or in which the body ends
//! early. Once it accepts a body, every `with_capacity` the decoder calls is bounded by the bytes
//! actually present.
//!
//! What it does not bound: decoding still costs up to about 40 bytes of memory per body byte (a
//! 3-byte flexible `MemberIdentity` or `OffsetFetchRequestGroup` becomes a 120-byte struct, an
//! empty compact string a 32-byte `StrBytes`), so the frame-size limit is what caps memory.
//!
//! Layout: `schema.rs` holds the field tables, looked up by `ApiKey`; `walker.rs` follows them
//! over the bytes; `tests.rs` checks both against kafka-protocol. Which (key, version) pairs are
//! guarded is not listed here: it is the gateway's one table of supported APIs,
//! [`crate::handlers::SUPPORTED`], so the guard covers exactly what the connection decodes.
//!
//! How it is verified (`tests.rs`, and `fuzz/fuzz_targets/request_frame.rs`): for every guarded
//! version, the default value and values with one element in every array at every depth (strings
//! set, nullable fields set or null, unknown tagged fields added) are encoded with kafka-protocol
//! and the walker must consume exactly the encoded bytes, as the decoder does, and visit every
//! array the version has; every count is overwritten with huge values and every truncation is
//! tried; mutated and random bodies are compared with the real decoder.

mod schema;
#[cfg(test)]
mod tests;
mod walker;

use crate::handlers::SUPPORTED;
use walker::Walker;

/// Why a request body was refused. Every variant means "invalid request": close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The (api key, version) pair is not in [`guarded_versions`]; do not decode it.
    #[error("api key {key} version {version} is not guarded")]
    UnknownApi { key: i16, version: i16 },
    /// The body ends inside a field.
    #[error("request body truncated at byte {at}")]
    Truncated { at: usize },
    /// A length or count below -1, or -1 (compact: 0) where the decoder refuses null.
    #[error("invalid length {len} at byte {at}")]
    BadLength { at: usize, len: i64 },
    /// An array count whose elements cannot fit in the bytes that remain.
    #[error("array count {count} at byte {at} exceeds the {remaining} bytes remaining")]
    CountTooLarge {
        at: usize,
        count: u64,
        remaining: usize,
    },
    /// A string, bytes or tagged-field length larger than the bytes that remain.
    #[error("length {len} at byte {at} exceeds the {remaining} bytes remaining")]
    LengthTooLarge {
        at: usize,
        len: u64,
        remaining: usize,
    },
    /// A known tagged field sent in a version that does not have it (the decoder refuses it).
    #[error("tagged field {tag} at byte {at} is not valid in version {version}")]
    TagNotInVersion { at: usize, tag: u32, version: i16 },
    /// A known tagged field whose value does not fill exactly its declared size (the decoder
    /// ignores the size and reads the value, so a mismatch would desynchronise it from us).
    #[error("tagged field {tag} at byte {at} declares {declared} bytes but its value uses {used}")]
    TaggedSizeMismatch {
        at: usize,
        tag: u32,
        declared: usize,
        used: usize,
    },
}

/// Checks a request body (the bytes after the request header) for `api_key`/`api_version`: every
/// array count, string and bytes length must be non-negative (or -1 where the decoder accepts
/// null) and fit in the bytes that remain, and the body must not end early. Bytes after the last
/// field are allowed, as kafka-protocol ignores them.
pub fn check_request_body(api_key: i16, api_version: i16, body: &[u8]) -> Result<(), GuardError> {
    request_body_len(api_key, api_version, body).map(|_| ())
}

/// Like [`check_request_body`], returning how many bytes of `body` the decoder will read.
pub fn request_body_len(api_key: i16, api_version: i16, body: &[u8]) -> Result<usize, GuardError> {
    let (mut walker, fields) = Walker::for_request(api_key, api_version, body)?;
    walker.walk_struct(fields)?;
    Ok(walker.pos)
}

/// The (api key, min version, max version) triples the guard knows: exactly
/// [`crate::handlers::SUPPORTED`]. Decode nothing else.
pub fn guarded_versions() -> &'static [(i16, i16, i16)] {
    &GUARDED
}

static GUARDED: [(i16, i16, i16); SUPPORTED.len()] = {
    let mut out = [(0, 0, 0); SUPPORTED.len()];
    let mut i = 0;
    while i < SUPPORTED.len() {
        let (key, min, max) = SUPPORTED[i];
        out[i] = (key as i16, min, max);
        i += 1;
    }
    out
};
