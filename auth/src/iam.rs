//! Verifying AWS MSK IAM authentication tokens: SigV4 presigned `kafka-cluster:Connect`
//! requests, as the AWS signer libraries produce them.
//!
//! Two carriers, one check: OAUTHBEARER sends a base64url presigned URL for
//! `https://kafka.<region>.amazonaws.com/`; AWS_MSK_IAM (the Java library) sends a JSON object
//! whose lowercase keys are the same query parameters, signed for the broker host the client
//! dialled. Both are turned into a [`SignedRequest`] and verified by recomputing the
//! signature with the secret of the access key id: canonical request, string to sign, then
//! the signing key and signature from `aws-sigv4`'s primitives, compared in constant time.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The service name MSK tokens are signed for.
pub const SERVICE: &str = "kafka-cluster";
/// The only action a token may carry.
pub const CONNECT_ACTION: &str = "kafka-cluster:Connect";
/// The longest validity a token may claim (the signer libraries use 900 s).
pub const MAX_EXPIRES_S: u64 = 900;
/// Tolerated difference between the client's clock and ours.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// SHA-256 of the empty payload: what presigned GETs sign as their body hash.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Why a token was refused. The text is for the audit log; clients see only that access
/// was denied (plus a request id).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("missing parameter {0}")]
    Missing(&'static str),
    #[error("unsupported {0}")]
    Unsupported(String),
    #[error("token signed for region {got}, this cluster is in {want}")]
    WrongRegion { got: String, want: String },
    #[error("token signed for host {0}, which is not this cluster")]
    WrongHost(String),
    #[error("token expired")]
    Expired,
    #[error("token dated in the future")]
    NotYetValid,
    #[error("unknown or inactive access key {0}")]
    UnknownKey(String),
    #[error("signature does not match")]
    BadSignature,
}

/// A presigned request reduced to what the signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// The `host` header that was signed.
    pub host: String,
    /// Every signed query parameter (decoded), `X-Amz-Signature` excluded.
    pub params: BTreeMap<String, String>,
    /// The claimed signature, lowercase hex.
    pub signature: String,
}

/// The claims of a request, parsed from its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    /// `X-Amz-Date` as a point in time.
    pub signed_at: SystemTime,
    /// When the token stops being valid.
    pub expires_at: SystemTime,
    pub session_token: Option<String>,
}

fn param<'a>(req: &'a SignedRequest, name: &'static str) -> Result<&'a str, TokenError> {
    req.params
        .get(name)
        .map(String::as_str)
        .ok_or(TokenError::Missing(name))
}

impl SignedRequest {
    /// Parses an OAUTHBEARER token: base64url (padding optional) of the presigned URL.
    /// `User-Agent` is appended after signing and is dropped here.
    pub fn from_oauth_token(token: &str) -> Result<Self, TokenError> {
        let token = token.trim().trim_end_matches('=');
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|e| TokenError::Malformed(format!("not base64url: {e}")))?;
        let url = String::from_utf8(raw)
            .map_err(|_| TokenError::Malformed("token is not UTF-8".into()))?;
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| TokenError::Malformed("token is not an https URL".into()))?;
        let (authority, path_query) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (path, query) = path_query.split_once('?').unwrap_or((path_query, ""));
        if !path.is_empty() && path != "/" {
            return Err(TokenError::Malformed(format!("unexpected path {path}")));
        }
        let mut params = BTreeMap::new();
        let mut signature = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode(k)?;
            let v = decode(v)?;
            match k.as_str() {
                "X-Amz-Signature" => signature = Some(v),
                "User-Agent" => {}
                _ => {
                    if params.insert(k.clone(), v).is_some() {
                        return Err(TokenError::Malformed(format!("parameter {k} repeated")));
                    }
                }
            }
        }
        Ok(SignedRequest {
            host: authority.to_ascii_lowercase(),
            params,
            signature: signature.ok_or(TokenError::Missing("X-Amz-Signature"))?,
        })
    }

    /// Parses an AWS_MSK_IAM payload (JSON, lowercase keys, values not URI-encoded).
    pub fn from_msk_iam_json(payload: &[u8]) -> Result<Self, TokenError> {
        let map: BTreeMap<String, serde_json::Value> = serde_json::from_slice(payload)
            .map_err(|e| TokenError::Malformed(format!("not a JSON object: {e}")))?;
        let text =
            |k: &str| -> Option<String> { map.get(k).and_then(|v| v.as_str()).map(str::to_string) };
        match text("version").as_deref() {
            Some("2020_10_22") => {}
            other => {
                return Err(TokenError::Unsupported(format!(
                    "payload version {}",
                    other.unwrap_or("(none)")
                )))
            }
        }
        let host = text("host").ok_or(TokenError::Missing("host"))?;
        let mut params = BTreeMap::new();
        for (json_key, name) in [
            ("action", "Action"),
            ("x-amz-algorithm", "X-Amz-Algorithm"),
            ("x-amz-credential", "X-Amz-Credential"),
            ("x-amz-date", "X-Amz-Date"),
            ("x-amz-expires", "X-Amz-Expires"),
            ("x-amz-security-token", "X-Amz-Security-Token"),
            ("x-amz-signedheaders", "X-Amz-SignedHeaders"),
        ] {
            if let Some(v) = text(json_key) {
                params.insert(name.to_string(), v);
            }
        }
        Ok(SignedRequest {
            host: host.to_ascii_lowercase(),
            params,
            signature: text("x-amz-signature").ok_or(TokenError::Missing("x-amz-signature"))?,
        })
    }

    /// Checks everything but the signature and returns the claims.
    pub fn claims(&self, now: SystemTime) -> Result<Claims, TokenError> {
        let action = param(self, "Action")?;
        if action != CONNECT_ACTION {
            return Err(TokenError::Unsupported(format!("action {action}")));
        }
        let algorithm = param(self, "X-Amz-Algorithm")?;
        if algorithm != "AWS4-HMAC-SHA256" {
            return Err(TokenError::Unsupported(format!("algorithm {algorithm}")));
        }
        let signed_headers = param(self, "X-Amz-SignedHeaders")?;
        if signed_headers != "host" {
            return Err(TokenError::Unsupported(format!(
                "signed headers {signed_headers}"
            )));
        }
        let credential = param(self, "X-Amz-Credential")?;
        let parts: Vec<&str> = credential.split('/').collect();
        let [access_key_id, date, region, service, terminator] = parts[..] else {
            return Err(TokenError::Malformed(format!("credential {credential}")));
        };
        if service != SERVICE || terminator != "aws4_request" {
            return Err(TokenError::Unsupported(format!(
                "credential scope {credential}"
            )));
        }
        let amz_date = param(self, "X-Amz-Date")?;
        let signed_at = parse_amz_date(amz_date)?;
        if amz_date.get(..8) != Some(date) {
            return Err(TokenError::Malformed(
                "credential date differs from X-Amz-Date".into(),
            ));
        }
        let expires: u64 = param(self, "X-Amz-Expires")?
            .parse()
            .map_err(|_| TokenError::Malformed("X-Amz-Expires is not a number".into()))?;
        if expires == 0 || expires > MAX_EXPIRES_S {
            return Err(TokenError::Unsupported(format!("X-Amz-Expires {expires}")));
        }
        let expires_at = signed_at + Duration::from_secs(expires);
        if now > expires_at + CLOCK_SKEW {
            return Err(TokenError::Expired);
        }
        if signed_at > now + CLOCK_SKEW {
            return Err(TokenError::NotYetValid);
        }
        Ok(Claims {
            access_key_id: access_key_id.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            signed_at,
            expires_at,
            session_token: self.params.get("X-Amz-Security-Token").cloned(),
        })
    }

    /// The SigV4 canonical request of this presigned GET.
    pub fn canonical_request(&self) -> String {
        let query = self
            .params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        format!(
            "GET\n/\n{query}\nhost:{}\n\nhost\n{EMPTY_SHA256}",
            self.host
        )
    }

    /// Verifies the signature with `secret`, the secret access key of the claimed key id.
    pub fn verify_signature(&self, claims: &Claims, secret: &str) -> Result<(), TokenError> {
        let scope = format!("{}/{}/{SERVICE}/aws4_request", claims.date, claims.region);
        let canonical = self.canonical_request();
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
            param(self, "X-Amz-Date")?,
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let key = aws_sigv4::sign::v4::generate_signing_key(
            secret,
            claims.signed_at,
            &claims.region,
            SERVICE,
        );
        let expected = aws_sigv4::sign::v4::calculate_signature(key, string_to_sign.as_bytes());
        let claimed = self.signature.to_ascii_lowercase();
        if expected.as_bytes().ct_eq(claimed.as_bytes()).into() {
            Ok(())
        } else {
            Err(TokenError::BadSignature)
        }
    }
}

/// RFC 3986 unreserved characters stay; everything else is percent-encoded (SigV4's rule).
const SIGV4_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode(s: &str) -> String {
    utf8_percent_encode(s, SIGV4_SET).to_string()
}

fn decode(s: &str) -> Result<String, TokenError> {
    // Query strings may encode spaces as '+' (form encoding); SigV4 signers never emit a
    // literal '+' unencoded, so treating it as a space is safe.
    let s = s.replace('+', " ");
    percent_decode_str(&s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| TokenError::Malformed("query is not UTF-8".into()))
}

/// Parses `yyyyMMddTHHmmssZ`.
pub fn parse_amz_date(s: &str) -> Result<SystemTime, TokenError> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let dt = time::PrimitiveDateTime::parse(s, &format)
        .map_err(|_| TokenError::Malformed(format!("X-Amz-Date {s}")))?;
    let secs = dt.assume_utc().unix_timestamp();
    let secs = u64::try_from(secs).map_err(|_| TokenError::Malformed(format!("X-Amz-Date {s}")))?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

/// The host OAUTHBEARER tokens are signed for.
pub fn oauth_host(region: &str) -> String {
    format!("kafka.{region}.amazonaws.com")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A presigned URL made the way the signer libraries make one, signed here with the
    /// same primitives (used to build fixtures; the published vectors below pin the
    /// primitives themselves).
    fn presign(host: &str, akid: &str, secret: &str, region: &str, amz_date: &str) -> String {
        let mut params = BTreeMap::new();
        params.insert("Action".to_string(), CONNECT_ACTION.to_string());
        params.insert("X-Amz-Algorithm".into(), "AWS4-HMAC-SHA256".into());
        params.insert(
            "X-Amz-Credential".into(),
            format!(
                "{akid}/{}/{region}/kafka-cluster/aws4_request",
                &amz_date[..8]
            ),
        );
        params.insert("X-Amz-Date".into(), amz_date.into());
        params.insert("X-Amz-Expires".into(), "900".into());
        params.insert("X-Amz-SignedHeaders".into(), "host".into());
        let req = SignedRequest {
            host: host.into(),
            params: params.clone(),
            signature: String::new(),
        };
        let claims = req.claims(parse_amz_date(amz_date).unwrap()).unwrap();
        let scope = format!("{}/{region}/kafka-cluster/aws4_request", &amz_date[..8]);
        let sts = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(req.canonical_request().as_bytes()))
        );
        let key =
            aws_sigv4::sign::v4::generate_signing_key(secret, claims.signed_at, region, SERVICE);
        let sig = aws_sigv4::sign::v4::calculate_signature(key, sts.as_bytes());
        // Parameters in a different order than sorted, plus a User-Agent after signing.
        let mut query: Vec<String> = params
            .iter()
            .rev()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        query.push(format!("X-Amz-Signature={sig}"));
        query.push("User-Agent=aws-msk-iam-sasl-signer-python%2F1.0.2".into());
        format!("https://{host}/?{}", query.join("&"))
    }

    fn token(url: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)
    }

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    /// AWS's published SigV4 test suite, `get-vanilla-query` style request (service
    /// `service`, region us-east-1, 20150830T123600Z): the signing key and the signature of
    /// its documented string to sign.
    #[test]
    fn published_sigv4_vector_signing_key_and_signature() {
        let t = parse_amz_date("20150830T123600Z").unwrap();
        let key = aws_sigv4::sign::v4::generate_signing_key(SECRET, t, "us-east-1", "iam");
        // From "Examples of how to derive a signing key for Signature Version 4" (AWS docs).
        assert_eq!(
            hex::encode(key.as_ref()),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        // get-vanilla from the aws-sig-v4-test-suite.
        let canonical = "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let sts = format!(
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        assert_eq!(
            hex::encode(Sha256::digest(canonical.as_bytes())),
            "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        let key = aws_sigv4::sign::v4::generate_signing_key(SECRET, t, "us-east-1", "service");
        assert_eq!(
            aws_sigv4::sign::v4::calculate_signature(key, sts.as_bytes()),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn oauth_token_round_trip_and_refusals() {
        let date = "20261122T040000Z";
        let now = parse_amz_date(date).unwrap() + Duration::from_secs(60);
        let url = presign(
            "kafka.us-east-1.amazonaws.com",
            "WKIAEXAMPLE",
            SECRET,
            "us-east-1",
            date,
        );
        let req = SignedRequest::from_oauth_token(&token(&url)).unwrap();
        assert!(!req.params.contains_key("User-Agent"));
        let claims = req.claims(now).unwrap();
        assert_eq!(claims.access_key_id, "WKIAEXAMPLE");
        assert_eq!(claims.region, "us-east-1");
        assert_eq!(req.host, oauth_host("us-east-1"));
        req.verify_signature(&claims, SECRET).unwrap();
        // Padding is tolerated.
        let padded = base64::engine::general_purpose::URL_SAFE.encode(&url);
        assert!(SignedRequest::from_oauth_token(&padded).is_ok());
        // Wrong secret.
        assert_eq!(
            req.verify_signature(&claims, "not-the-secret"),
            Err(TokenError::BadSignature)
        );
        // Tampered signature.
        let mut tampered = req.clone();
        let first = if tampered.signature.starts_with('0') {
            "1"
        } else {
            "0"
        };
        tampered.signature.replace_range(0..1, first);
        assert_eq!(
            tampered.verify_signature(&claims, SECRET),
            Err(TokenError::BadSignature)
        );
        // Tampered parameter.
        let mut other = req.clone();
        other.params.insert("X-Amz-Expires".into(), "899".into());
        let c = other.claims(now).unwrap();
        assert_eq!(
            other.verify_signature(&c, SECRET),
            Err(TokenError::BadSignature)
        );
        // Expired (15 min + skew later) and from the future.
        assert_eq!(
            req.claims(now + Duration::from_secs(900 + 301)),
            Err(TokenError::Expired)
        );
        assert_eq!(
            req.claims(now - Duration::from_secs(60 + 301)),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn msk_iam_json_payload() {
        let date = "20261122T040000Z";
        let url = presign("broker.example", "WKIAEXAMPLE", SECRET, "eu-west-1", date);
        let from_url = SignedRequest::from_oauth_token(&token(&url)).unwrap();
        let p = &from_url.params;
        let json = serde_json::json!({
            "version": "2020_10_22",
            "host": "broker.example",
            "user-agent": "aws-msk-iam-auth/2.2.0",
            "action": p["Action"],
            "x-amz-algorithm": p["X-Amz-Algorithm"],
            "x-amz-credential": p["X-Amz-Credential"],
            "x-amz-date": p["X-Amz-Date"],
            "x-amz-signedheaders": "host",
            "x-amz-expires": "900",
            "x-amz-signature": from_url.signature,
        });
        let req = SignedRequest::from_msk_iam_json(json.to_string().as_bytes()).unwrap();
        assert_eq!(req, from_url);
        let now = parse_amz_date(date).unwrap();
        let claims = req.claims(now).unwrap();
        req.verify_signature(&claims, SECRET).unwrap();
        let bad = serde_json::json!({"version": "2019", "host": "x"});
        assert!(SignedRequest::from_msk_iam_json(bad.to_string().as_bytes()).is_err());
        assert!(SignedRequest::from_msk_iam_json(b"not json").is_err());
    }

    #[test]
    fn rejects_other_actions_and_algorithms() {
        let date = "20261122T040000Z";
        let now = parse_amz_date(date).unwrap();
        let url = presign("h", "K", SECRET, "us-east-1", date);
        let mut req = SignedRequest::from_oauth_token(&token(&url)).unwrap();
        req.params
            .insert("Action".into(), "kafka-cluster:WriteData".into());
        assert!(matches!(req.claims(now), Err(TokenError::Unsupported(_))));
        let mut req = SignedRequest::from_oauth_token(&token(&url)).unwrap();
        req.params.insert("X-Amz-Expires".into(), "3600".into());
        assert!(matches!(req.claims(now), Err(TokenError::Unsupported(_))));
        assert!(SignedRequest::from_oauth_token("!!!").is_err());
        assert!(SignedRequest::from_oauth_token(&token("http://x/?a=b")).is_err());
    }
}
