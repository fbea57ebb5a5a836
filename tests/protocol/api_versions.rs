//! ApiVersions: every version answers exactly the SUPPORTED table; unknown versions get the
//! KIP-511 fallback; flexible answers carry no tagged fields.

use crate::support::*;
use anyhow::{ensure, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;
use weir_gateway::handlers::SUPPORTED;

fn expected() -> Vec<(i16, i16, i16)> {
    let mut v: Vec<_> = SUPPORTED
        .iter()
        .map(|&(k, min, max)| (k as i16, min, max))
        .collect();
    v.sort_unstable();
    v
}

fn advertised(resp: &ApiVersionsResponse) -> Vec<(i16, i16, i16)> {
    let mut v: Vec<_> = resp
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect();
    v.sort_unstable();
    v
}

fn request() -> ApiVersionsRequest {
    ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("weir-protocol-test"))
        .with_client_software_version(StrBytes::from_static_str("1.0"))
}

#[test]
fn the_table_is_within_what_kafka_protocol_knows() -> Result<()> {
    for &(key, min, max) in SUPPORTED {
        let range = key.valid_versions();
        ensure!(
            range.min <= min && min <= max && max <= range.max,
            "{key:?} {min}..={max} vs {range:?}"
        );
    }
    Ok(())
}

#[test]
fn every_version_advertises_exactly_the_supported_table() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    for version in 0..=4 {
        let resp = c.call(version, &request())?;
        ensure!(
            resp.error_code == 0,
            "v{version}: error {}",
            resp.error_code
        );
        ensure!(
            advertised(&resp) == expected(),
            "v{version}: advertised {:?}",
            advertised(&resp)
        );
    }
    Ok(())
}

/// A hand-made ApiVersions request at a version kafka-protocol cannot encode.
fn raw_api_versions(version: i16, correlation: i32) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(ApiKey::ApiVersions as i16);
    buf.put_i16(version);
    buf.put_i32(correlation);
    buf.put_i16(4);
    buf.put_slice(b"test");
    buf.put_u8(0); // header tagged fields
    buf.put_u8(5);
    buf.put_slice(b"test"); // client software name
    buf.put_u8(4);
    buf.put_slice(b"1.0"); // client software version
    buf.put_u8(0); // body tagged fields
    framed(&[&buf])
}

#[test]
fn unknown_versions_get_the_v0_fallback_with_unsupported_version() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    for (i, version) in [5i16, 127, i16::MAX].into_iter().enumerate() {
        let correlation = 100 + i as i32;
        c.write_raw(&raw_api_versions(version, correlation))?;
        let mut frame = c
            .read_frame()?
            .context("no answer to an unknown ApiVersions version")?;
        ensure!(
            frame.get_i32() == correlation,
            "v{version}: wrong correlation id"
        );
        let resp = ApiVersionsResponse::decode(&mut frame, 0)?;
        ensure!(
            !frame.has_remaining(),
            "v{version}: answer is not in the v0 layout"
        );
        ensure!(
            resp.error_code == code(ResponseError::UnsupportedVersion),
            "v{version}: error {}",
            resp.error_code
        );
        ensure!(
            advertised(&resp) == expected(),
            "v{version}: advertised {:?}",
            advertised(&resp)
        );
    }
    // The connection stays usable: the client retries at a version it now knows.
    let resp = c.call(3, &request())?;
    ensure!(resp.error_code == 0);
    Ok(())
}

/// Walks a flexible (v3+) ApiVersions body by hand: every tagged-field section must be empty.
#[test]
fn flexible_answers_have_only_empty_tag_sections() -> Result<()> {
    let server = Server::start(&[])?;
    let mut c = server.client()?;
    for version in [3i16, 4] {
        let correlation = c.send(version, &request())?;
        let mut body = c.read_frame()?.context("no ApiVersions answer")?;
        ensure!(body.get_i32() == correlation);
        ensure!(body.get_i16() == 0, "v{version}: error code");
        let count = get_varint(&mut body)?;
        ensure!(
            count == expected().len() as u64 + 1,
            "v{version}: api key count {count}"
        );
        for _ in 1..count {
            ensure!(body.remaining() >= 6, "v{version}: truncated api key entry");
            body.advance(6);
            ensure!(
                get_varint(&mut body)? == 0,
                "v{version}: tagged fields in an api key entry"
            );
        }
        ensure!(body.remaining() >= 4, "v{version}: no throttle time");
        body.advance(4);
        let tags = get_varint(&mut body)?;
        ensure!(
            tags == 0,
            "v{version}: {tags} top-level tagged fields (older librdkafka cannot parse them)"
        );
        ensure!(
            !body.has_remaining(),
            "v{version}: {} trailing bytes",
            body.remaining()
        );
    }
    Ok(())
}
