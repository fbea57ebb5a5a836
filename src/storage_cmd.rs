//! `weir storage`: a storage node as its own process. It serves the storage service (object
//! writes with the flush policy, the memory and disk read tiers) to gateways over QUIC
//! (`weir serve --storage quic://...`) and commits each flushed object to the metadata store
//! itself.

use crate::metadata_cmd::{ca_param, check_listen, service_tls};
use crate::settings::Settings;
use anyhow::{Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use weir_storage::{MetadataSink, ObjectStorage, Storage, StorageConfig};

#[derive(Args, Debug)]
pub struct StorageArgs {
    /// UDP address the QUIC service listens on.
    #[arg(long, env = "WEIR_STORAGE_LISTEN", default_value = "127.0.0.1:9094")]
    listen: SocketAddr,
    /// TOML file with settings: `weir serve`'s file (its keys are accepted, and the node uses
    /// metadata, object_store, data_dir, the flush and cache keys, max_request_bytes and
    /// log_format from it); flags and environment win over it.
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// Metadata store the node commits flushed objects to: dynamodb://table-prefix or
    /// quic://host:port?ca=PATH (a `weir metadata` service), the same one the gateways use
    /// (required, here or in the --config file).
    #[arg(long, env = "WEIR_METADATA")]
    metadata: Option<String>,
    /// Object store URL: s3://bucket/prefix, file:///path or memory://
    /// [default: file://<data-dir>/objects].
    #[arg(long, env = "WEIR_OBJECT_STORE")]
    object_store: Option<String>,
    /// Directory for local objects, the disk cache and the generated certificates
    /// [default: ./weir-data].
    #[arg(long, env = "WEIR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Flush an object once this many bytes are buffered [default: 4194304].
    #[arg(long, env = "WEIR_FLUSH_BYTES")]
    flush_bytes: Option<usize>,
    /// Flush an object at most this many ms after its first batch arrived; 0 flushes as soon
    /// as the previous flush is done [default: 0].
    #[arg(long, env = "WEIR_FLUSH_INTERVAL_MS")]
    flush_interval_ms: Option<u64>,
    /// Bytes buffered or flushing before appends are slowed down; at least 16 MiB (or
    /// max_request_bytes if smaller), as for `weir serve` [default: 33554432].
    #[arg(long, env = "WEIR_MAX_BUFFERED_BYTES")]
    max_buffered_bytes: Option<usize>,
    /// Bytes of recently written or read objects kept in memory [default: 33554432].
    #[arg(long, env = "WEIR_CACHE_BYTES")]
    cache_bytes: Option<u64>,
    /// Bytes of object chunks kept on local disk (in <data-dir>/cache) when the object store
    /// is remote (s3://); 0 turns the disk tier off [default: 1073741824].
    #[arg(long, env = "WEIR_DISK_CACHE_BYTES")]
    disk_cache_bytes: Option<u64>,
    /// PEM certificate chain of the node [default: a self-signed set generated in
    /// <data-dir>/storage-tls]. Several nodes behind one `--storage` URL need certificates
    /// from one CA (`weir tls generate`).
    #[arg(long, env = "WEIR_STORAGE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the node.
    #[arg(long, env = "WEIR_STORAGE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra host names or IP addresses for the generated certificate.
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Address of the HTTP endpoint serving /metrics (Prometheus) [default: none].
    #[arg(long, env = "WEIR_STORAGE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Log format on stderr: text or json [default: text].
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum)]
    log_format: Option<crate::LogFormat>,
    /// Listen on a non-loopback address although clients are not authenticated (TLS only
    /// proves the server to them): only on a private network that nothing else reaches.
    #[arg(long, env = "WEIR_STORAGE_ALLOW_REMOTE")]
    allow_remote: bool,
}

impl StorageArgs {
    /// The node's effective settings: its flags over the --config file over the defaults,
    /// the same keys and rules as `weir serve` (the node uses only the storage keys).
    pub(crate) fn settings(&self) -> Result<Settings> {
        let flags = Settings {
            metadata: self.metadata.clone(),
            object_store: self.object_store.clone(),
            data_dir: self.data_dir.clone(),
            flush_bytes: self.flush_bytes,
            flush_interval_ms: self.flush_interval_ms,
            max_buffered_bytes: self.max_buffered_bytes,
            cache_bytes: self.cache_bytes,
            disk_cache_bytes: self.disk_cache_bytes,
            log_format: self.log_format,
            ..Settings::default()
        };
        let file = match &self.config {
            Some(path) => Settings::load(path)?,
            None => Settings::default(),
        };
        let merged = flags.over(&file)?;
        if merged.metadata.is_none() {
            anyhow::bail!(
                "--metadata is required: the metadata store the gateways share, dynamodb://... \
                 or quic://... (a `weir metadata` service)"
            );
        }
        merged.effective()
    }
}

pub fn run(args: StorageArgs) -> Result<()> {
    let settings = args.settings()?;
    let config = settings.storage_config()?;
    crate::init_logging(settings.log_format.unwrap_or_default());
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args, settings, config))
}

async fn serve(args: StorageArgs, settings: Settings, config: StorageConfig) -> Result<()> {
    check_listen("storage", args.listen, args.allow_remote)?;
    let (Some(metadata), Some(object_store), Some(data_dir)) = (
        settings.metadata.clone(),
        settings.object_store.clone(),
        settings.data_dir.clone(),
    ) else {
        anyhow::bail!("the storage node's settings lack metadata, object_store or data_dir");
    };
    if metadata.starts_with("embedded://") {
        anyhow::bail!(
            "--metadata must be shared with the gateways: dynamodb://... or quic://... (a \
             `weir metadata` service), not an embedded store only this process can open"
        );
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let meta = weir_metadata::open(&metadata, true)
        .await
        .with_context(|| format!("opening the metadata store {metadata}"))?;
    meta.cluster_id()
        .await
        .with_context(|| format!("reading the cluster id from {metadata}"))?;
    let target = weir_storage::open(&object_store)
        .await
        .with_context(|| format!("opening object store {object_store}"))?;
    let storage = ObjectStorage::start(target, config, Arc::new(MetadataSink::new(meta)));
    let (cert, key, ca) = service_tls(
        &data_dir.join("storage-tls"),
        args.listen,
        &args.hosts,
        args.tls_cert.as_ref().zip(args.tls_key.as_ref()),
    )?;
    let endpoint = weir_rpc::server_endpoint(args.listen, &cert, &key, weir_storage::remote::ALPN)
        .with_context(|| format!("listening on {} (UDP)", args.listen))?;
    let addr = endpoint.local_addr()?;
    let signal = CancellationToken::new();
    tokio::spawn(crate::signal_shutdown(signal.clone()));
    let stop_serving = CancellationToken::new();
    let server = tokio::spawn(weir_rpc::serve(
        endpoint,
        Arc::new(weir_storage::remote::StorageServer::new(storage.clone())),
        stop_serving.clone(),
    ));
    let metrics_task = match args.metrics_listen {
        Some(listen) => {
            weir_admin::check_admin_bind(listen, None).context("--metrics-listen")?;
            let socket = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding the metrics endpoint on {listen}"))?;
            tracing::info!(metrics = %format!("http://{}/metrics", socket.local_addr()?), "metrics endpoint");
            let mut metrics = prometheus_client::registry::Registry::default();
            storage.register_metrics(&mut metrics);
            Some(tokio::spawn(weir_admin::serve_metrics(
                socket,
                Arc::new(metrics),
                stop_serving.clone(),
            )))
        }
        None => None,
    };
    tracing::info!(%addr, object_store = %object_store, metadata = %metadata,
        "storage node listening (QUIC)");
    println!(
        "weir storage is ready: quic://{addr}{}",
        ca_param(ca.as_deref())?
    );
    signal.cancelled().await;
    // Flush and commit what is buffered while the sessions are still open, so gateways get
    // their appends' outcomes; appends arriving now are refused (retriable).
    tracing::info!("flushing and stopping");
    storage.shutdown().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_serving.cancel();
    let _ = server.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}
