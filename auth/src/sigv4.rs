//! Verifying SigV4-signed HTTP requests (the `Authorization: AWS4-HMAC-SHA256 ...` header
//! the AWS SDKs and CLI send), for Weir's control-plane APIs. The canonical request is
//! rebuilt from the request as received, the way botocore builds it when signing: the path
//! as sent on the wire, URI-encoded once more (every service but S3), the query sorted and
//! re-encoded, the signed headers with trimmed values, and the SHA-256 of the body.

use std::time::{Duration, SystemTime};

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AuthStore;

/// How far a request's X-Amz-Date may be from now (AWS allows 15 minutes).
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

const SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
const PATH_SET: &AsciiSet = &SET.remove(b'/');

/// Why a signed request was refused. `code` is the AWS error name clients see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigError {
    pub code: &'static str,
    pub message: String,
}

fn err(code: &'static str, message: impl Into<String>) -> SigError {
    SigError {
        code,
        message: message.into(),
    }
}

/// Who signed a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub principal: String,
    pub access_key_id: String,
    pub region: String,
}

/// Verifies a request signed for `service`. `headers` are (name, value) pairs as received.
#[allow(clippy::too_many_arguments)]
pub fn verify(
    store: &AuthStore,
    service: &str,
    method: &str,
    raw_path: &str,
    raw_query: &str,
    headers: &[(String, String)],
    body: &[u8],
    now: SystemTime,
) -> Result<Signer, SigError> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let auth = header("authorization").ok_or_else(|| {
        err(
            "UnauthorizedException",
            "Missing Authentication Token: sign requests with SigV4",
        )
    })?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        err(
            "UnauthorizedException",
            "only AWS4-HMAC-SHA256 is supported",
        )
    })?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(err(
            "UnauthorizedException",
            "malformed Authorization header",
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, svc, "aws4_request"] = scope[..] else {
        return Err(err("UnauthorizedException", "malformed credential scope"));
    };
    if svc != service {
        return Err(err(
            "UnauthorizedException",
            format!("credential scope names service {svc}, not {service}"),
        ));
    }
    let amz_date =
        header("x-amz-date").ok_or_else(|| err("UnauthorizedException", "missing X-Amz-Date"))?;
    let signed_at = crate::iam::parse_amz_date(amz_date)
        .map_err(|_| err("UnauthorizedException", "bad X-Amz-Date"))?;
    if amz_date.get(..8) != Some(date) {
        return Err(err(
            "UnauthorizedException",
            "credential date differs from X-Amz-Date",
        ));
    }
    let skew = match now.duration_since(signed_at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > MAX_SKEW {
        return Err(err(
            "UnauthorizedException",
            "Signature expired: the request time is too far from the server's",
        ));
    }
    let names: Vec<&str> = signed.split(';').collect();
    if !names.contains(&"host") {
        return Err(err(
            "UnauthorizedException",
            "the host header must be signed",
        ));
    }
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(err(
                "UnauthorizedException",
                format!("signed header {name} is missing"),
            ));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let payload = match header("x-amz-content-sha256") {
        Some(h) if h != "UNSIGNED-PAYLOAD" => h.to_string(),
        _ => hex::encode(Sha256::digest(body)),
    };
    if payload != hex::encode(Sha256::digest(body)) {
        return Err(err(
            "UnauthorizedException",
            "the body does not match x-amz-content-sha256",
        ));
    }
    let canonical = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed}\n{payload}",
        canonical_path(raw_path),
        canonical_query(raw_query)
    );
    let Some((principal, secret)) = store.secret_for(key_id) else {
        return Err(err(
            "UnauthorizedException",
            "The security token included in the request is invalid",
        ));
    };
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let key = aws_sigv4::sign::v4::generate_signing_key(&secret, signed_at, region, service);
    let expected = aws_sigv4::sign::v4::calculate_signature(key, string_to_sign.as_bytes());
    if !bool::from(
        expected
            .as_bytes()
            .ct_eq(signature.to_ascii_lowercase().as_bytes()),
    ) {
        return Err(err(
            "UnauthorizedException",
            "The request signature we calculated does not match the signature you provided",
        ));
    }
    Ok(Signer {
        principal,
        access_key_id: key_id.to_string(),
        region: region.to_string(),
    })
}

/// The path as sent, URI-encoded again (empty: `/`).
fn canonical_path(raw: &str) -> String {
    if raw.is_empty() {
        return "/".into();
    }
    utf8_percent_encode(raw, PATH_SET).to_string()
}

fn decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// The query with keys and values decoded, re-encoded, and sorted.
fn canonical_query(raw: &str) -> String {
    let mut pairs: Vec<(String, String)> = raw
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                utf8_percent_encode(&decode(k), SET).to_string(),
                utf8_percent_encode(&decode(v), SET).to_string(),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(
            canonical_path("/api/v2/clusters/arn%3Aaws%3Akafka"),
            "/api/v2/clusters/arn%253Aaws%253Akafka"
        );
        assert_eq!(canonical_query("b=2&a=x%20y&a=1"), "a=1&a=x%20y&b=2");
        assert_eq!(canonical_path(""), "/");
    }
}
