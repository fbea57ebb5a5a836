//! The S3 backend: `s3://<bucket>[/<prefix>][?region=R&endpoint=URL]`, on `object_store`'s
//! Amazon S3 client (SigV4 signing on `ring`, rustls).
//!
//! Region, credentials and endpoint come from the standard AWS settings, resolved by
//! `aws-config` exactly as the AWS CLI and SDKs do (environment, `AWS_PROFILE` and the shared
//! config files, web identity, ECS and EC2 instance roles; `AWS_ENDPOINT_URL_S3` or
//! `AWS_ENDPOINT_URL`); `?region=` and `?endpoint=` override them. An `http://` endpoint (a
//! local S3-compatible server) is allowed. Requests use path-style addressing unless the
//! endpoint is AWS's own.
//!
//! Every request has a timeout (30 s, connect 5 s) and is retried on 5xx, 429 and
//! `503 SlowDown` with exponential backoff (50 ms doubling to 5 s, at most 10 retries within
//! 2 minutes), so throttling slows the writer down instead of failing producers.

use crate::{ObjectStoreTarget, Result, StorageError};
use aws_credential_types::provider::ProvideCredentials;
use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::{BackoffConfig, ClientOptions, CredentialProvider, RetryConfig};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Where an `s3://` URL points.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix inside the bucket ("" for the bucket root).
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
}

impl S3Location {
    /// Parses `s3://<bucket>[/<prefix>][?region=R&endpoint=URL]`.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid =
            |why: &str| StorageError::Unavailable(format!("object store URL '{url}': {why}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| invalid("not an s3:// URL"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            return Err(invalid(
                "the bucket name must be 3-63 characters of a-z, 0-9, '-' and '.'",
            ));
        }
        let mut params = weir_common::url_params(query, &["region", "endpoint"])
            .map_err(|e| invalid(&e))?
            .into_iter();
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            region: params.next().flatten(),
            endpoint: params.next().flatten(),
        })
    }
}

/// Credentials from `aws-config`'s default chain, cached until shortly before they expire.
#[derive(Debug)]
struct AwsConfigCredentials {
    provider: aws_credential_types::provider::SharedCredentialsProvider,
    cached: Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

#[async_trait::async_trait]
impl CredentialProvider for AwsConfigCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        {
            let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((credential, expiry)) = cached.as_ref() {
                let fresh = expiry.is_none_or(|at| {
                    at.duration_since(SystemTime::now())
                        .is_ok_and(|left| left > Duration::from_secs(300))
                });
                if fresh {
                    return Ok(credential.clone());
                }
            }
        }
        let credentials = self.provider.provide_credentials().await.map_err(|e| {
            object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            }
        })?;
        let credential = Arc::new(AwsCredential {
            key_id: credentials.access_key_id().to_string(),
            secret_key: credentials.secret_access_key().to_string(),
            token: credentials.session_token().map(str::to_string),
        });
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((credential.clone(), credentials.expiry()));
        Ok(credential)
    }
}

/// Opens an S3 bucket (and prefix) as the object store.
pub async fn open_s3(url: &str) -> Result<ObjectStoreTarget> {
    let location = S3Location::parse(url)?;
    // reqwest runs rustls without a built-in provider: use ring, as the rest of Weir does.
    let _ = rustls::crypto::ring::default_provider().install_default();

    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .load()
        .await;
    let region = location
        .region
        .clone()
        .or_else(|| sdk.region().map(|r| r.to_string()))
        .unwrap_or_else(|| "us-east-1".to_string());
    let endpoint = location.endpoint.clone().or_else(|| {
        std::env::var("AWS_ENDPOINT_URL_S3")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .ok()
            .filter(|e| !e.is_empty())
    });

    let retry = RetryConfig {
        max_retries: 10,
        retry_timeout: Duration::from_secs(120),
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
    };

    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&location.bucket)
        .with_region(&region)
        .with_retry(retry)
        .with_client_options(
            ClientOptions::new()
                .with_timeout(Duration::from_secs(30))
                .with_connect_timeout(Duration::from_secs(5)),
        );
    if let Some(endpoint) = &endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(provider) = sdk.credentials_provider() {
        builder = builder.with_credentials(Arc::new(AwsConfigCredentials {
            provider,
            cached: Mutex::new(None),
        }));
    } else {
        // No credentials anywhere: unsigned requests (public buckets, local servers).
        builder = builder.with_skip_signature(true);
    }
    let store = builder
        .build()
        .map_err(|e| StorageError::Unavailable(format!("S3 bucket {}: {e}", location.bucket)))?;
    let store: Arc<dyn object_store::ObjectStore> = if location.prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(
            store,
            location.prefix.as_str(),
        ))
    };
    tracing::info!(bucket = %location.bucket, prefix = %location.prefix, region = %region,
        endpoint = endpoint.as_deref().unwrap_or("AWS"), "S3 object store");
    Ok(ObjectStoreTarget {
        store,
        local_root: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let l = S3Location::parse(
            "s3://my-bucket/weir/prod?region=eu-west-1&endpoint=http://127.0.0.1:9000",
        )
        .unwrap();
        assert_eq!(l.bucket, "my-bucket");
        assert_eq!(l.prefix, "weir/prod");
        assert_eq!(l.region.as_deref(), Some("eu-west-1"));
        assert_eq!(l.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(S3Location::parse("s3://bkt").unwrap().prefix, "");
        assert!(S3Location::parse("s3://Bad_Bucket").is_err());
        assert!(S3Location::parse("s3://bucket?colour=red").is_err());
        assert!(S3Location::parse("gs://bucket").is_err());
    }
}
