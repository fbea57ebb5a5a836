//! `weir storage`: a storage node as its own process. It serves the storage service (object
//! writes with the flush policy, the memory and disk read tiers) to gateways over QUIC
//! (`weir serve --storage quic://...`) and commits each flushed object to the metadata store
//! itself.

use crate::metadata_cmd::{ca_param, check_listen, service_tls};
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
    /// Metadata store the node commits flushed objects to: dynamodb://table-prefix or
    /// quic://host:port?ca=PATH (a `weir metadata` service), the same one the gateways use.
    #[arg(long, env = "WEIR_METADATA")]
    metadata: String,
    /// Object store URL: s3://bucket/prefix, file:///path or memory://
    /// [default: file://<data-dir>/objects].
    #[arg(long, env = "WEIR_OBJECT_STORE")]
    object_store: Option<String>,
    /// Directory for local objects, the disk cache and the generated certificates.
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "weir-data")]
    data_dir: PathBuf,
    /// Flush an object once this many bytes are buffered [default: 4194304].
    #[arg(long, env = "WEIR_FLUSH_BYTES")]
    flush_bytes: Option<usize>,
    /// Flush an object at most this many ms after its first batch arrived; 0 flushes as soon
    /// as the previous flush is done [default: 0].
    #[arg(long, env = "WEIR_FLUSH_INTERVAL_MS")]
    flush_interval_ms: Option<u64>,
    /// Bytes buffered or flushing before appends are slowed down [default: 33554432].
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
    /// Log format on stderr.
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: crate::LogFormat,
    /// Listen on a non-loopback address although clients are not authenticated (TLS only
    /// proves the server to them): only on a private network that nothing else reaches.
    #[arg(long, env = "WEIR_STORAGE_ALLOW_REMOTE")]
    allow_remote: bool,
}

pub fn run(args: StorageArgs) -> Result<()> {
    crate::init_logging(args.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: StorageArgs) -> Result<()> {
    check_listen("storage", args.listen, args.allow_remote)?;
    if args.metadata.starts_with("embedded://") {
        anyhow::bail!(
            "--metadata must be shared with the gateways: dynamodb://... or quic://... (a \
             `weir metadata` service), not an embedded store only this process can open"
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let meta = weir_metadata::open(&args.metadata, true)
        .await
        .with_context(|| format!("opening the metadata store {}", args.metadata))?;
    meta.cluster_id()
        .await
        .with_context(|| format!("reading the cluster id from {}", args.metadata))?;
    let object_store = args.object_store.clone().unwrap_or_else(|| {
        format!(
            "file://{}",
            crate::absolute(&args.data_dir.join("objects")).display()
        )
    });
    let target = weir_storage::open(&object_store)
        .await
        .with_context(|| format!("opening object store {object_store}"))?;
    let defaults = StorageConfig::default();
    let config = StorageConfig {
        flush_bytes: args.flush_bytes.unwrap_or(defaults.flush_bytes).max(1),
        flush_interval: args
            .flush_interval_ms
            .map(Duration::from_millis)
            .unwrap_or(defaults.flush_interval),
        max_buffered_bytes: args
            .max_buffered_bytes
            .unwrap_or(defaults.max_buffered_bytes)
            .max(16 << 20),
        cache_bytes: args.cache_bytes.unwrap_or(defaults.cache_bytes),
        disk_cache: match args.disk_cache_bytes.unwrap_or(1 << 30) {
            0 => None,
            bytes => Some((args.data_dir.join("cache"), bytes)),
        },
        ..defaults
    };
    let storage = ObjectStorage::start(target, config, Arc::new(MetadataSink::new(meta)));
    let (cert, key, ca) = service_tls(
        &args.data_dir.join("storage-tls"),
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
            crate::admin::check_admin_bind(listen, None).context("--metrics-listen")?;
            let socket = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding the metrics endpoint on {listen}"))?;
            tracing::info!(metrics = %format!("http://{}/metrics", socket.local_addr()?), "metrics endpoint");
            let mut metrics = prometheus_client::registry::Registry::default();
            storage.register_metrics(&mut metrics);
            Some(tokio::spawn(crate::admin::serve_metrics(
                socket,
                Arc::new(metrics),
                stop_serving.clone(),
            )))
        }
        None => None,
    };
    tracing::info!(%addr, object_store = %object_store, metadata = %args.metadata,
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
