//! Feeds arbitrary request frames (the bytes after the i32 length prefix) through the path the
//! gateway takes: header, guard, and only if the guard accepts, kafka-protocol's decoder. A
//! guard that let a hostile array count through would abort the process here (allocation
//! failure), which libFuzzer reports as a crash. As an extra oracle, whenever the decoder
//! succeeds it must have read exactly the bytes the guard walked.
//!
//! Run from this directory: `cargo fuzz run -s none request_frame -- -max_total_time=120`.
//! Seeds: `WEIR_FUZZ_CORPUS=$PWD/corpus/request_frame cargo test -p weir-gateway
//! write_fuzz_corpus -- --ignored` from the workspace root.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind};
use kafka_protocol::protocol::decode_request_header_from_buffer;
use libfuzzer_sys::fuzz_target;

// The guard and the supported-API table it derives its versions from, included by path (the
// gateway crate itself would bring its whole dependency tree into the fuzz build).
#[path = "../../gateway/src/guard/mod.rs"]
mod guard;
#[path = "../../gateway/src/handlers/supported.rs"]
mod handlers;

fuzz_target!(|frame: &[u8]| {
    if frame.len() < 8 {
        return;
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    // At least 4 bytes: decode_request_header_from_buffer panics on fewer.
    let mut buf = Bytes::copy_from_slice(frame);
    let Ok(header) = decode_request_header_from_buffer(&mut buf) else {
        return;
    };
    assert_eq!(
        (header.request_api_key, header.request_api_version),
        (key, version)
    );
    let guarded = guard::guarded_versions()
        .iter()
        .any(|&(k, min, max)| k == key && min <= version && version <= max);
    if !guarded || guard::check_request_body(key, version, &buf).is_err() {
        return;
    }
    let Ok(walked) = guard::request_body_len(key, version, &buf) else {
        panic!("check_request_body accepted what request_body_len refused");
    };
    let Ok(api_key) = ApiKey::try_from(key) else {
        panic!("guarded api key {key} unknown to kafka-protocol");
    };
    let before = buf.len();
    if RequestKind::decode(api_key, &mut buf, version).is_ok() {
        assert_eq!(
            before - buf.len(),
            walked,
            "guard and decoder read different lengths"
        );
    }
});
