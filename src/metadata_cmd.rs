//! `weir metadata`: the metadata service as its own process, serving a backend over QUIC;
//! `weir metadata init`: creates a backend's tables.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MetadataArgs {
    #[command(subcommand)]
    command: Option<MetadataCommand>,
    /// UDP address the QUIC service listens on.
    #[arg(long, env = "WEIR_METADATA_LISTEN", default_value = "127.0.0.1:9093")]
    listen: SocketAddr,
    /// The backend served: embedded://path or dynamodb://table-prefix
    /// [default: embedded://<data-dir>/metadata].
    #[arg(long, env = "WEIR_METADATA_BACKEND")]
    backend: Option<String>,
    /// Directory for the embedded store and the generated certificates.
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "weir-data")]
    data_dir: PathBuf,
    /// PEM certificate chain of the service [default: a self-signed set generated in
    /// <data-dir>/metadata-tls].
    #[arg(long, env = "WEIR_METADATA_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the service.
    #[arg(long, env = "WEIR_METADATA_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra host names or IP addresses for the generated certificate (the listen address,
    /// localhost and 127.0.0.1 are always in it).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Log format on stderr.
    #[arg(long, env = "WEIR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: crate::LogFormat,
    /// Listen on a non-loopback address although clients are not authenticated (TLS only
    /// proves the server to them): only on a private network that nothing else reaches.
    #[arg(long, env = "WEIR_METADATA_ALLOW_REMOTE")]
    allow_remote: bool,
}

#[derive(Subcommand, Debug)]
enum MetadataCommand {
    /// Creates the tables of a metadata backend if they do not exist (idempotent) and waits
    /// until they are usable. For dynamodb:// it creates `<prefix>-meta` and `<prefix>-index`.
    Init {
        /// The backend: dynamodb://table-prefix[?region=R&endpoint=URL] or embedded://path.
        #[arg(long, env = "WEIR_METADATA")]
        metadata: String,
    },
}

pub fn run(args: MetadataArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.command {
        Some(MetadataCommand::Init { metadata }) => {
            crate::init_logging(args.log_format);
            runtime.block_on(init(&metadata))
        }
        None => {
            crate::init_logging(args.log_format);
            runtime.block_on(serve(args))
        }
    }
}

async fn init(url: &str) -> Result<()> {
    if url.starts_with("dynamodb://") {
        let options = weir_metadata::DynamoOptions::parse(url)?;
        let store = weir_metadata::DynamoStore::connect(&options).await?;
        let created = store
            .init()
            .await
            .with_context(|| format!("creating the tables of {url}"))?;
        println!(
            "{}",
            serde_json::json!({ "tables": store.tables(), "created": created })
        );
        return Ok(());
    }
    if url.starts_with("embedded://") {
        let store = weir_metadata::open(url, true).await?;
        store.cluster_id().await?;
        println!("{}", serde_json::json!({ "store": url, "created": true }));
        return Ok(());
    }
    anyhow::bail!(
        "`weir metadata init` takes a backend URL (dynamodb:// or embedded://), not '{url}'"
    )
}

async fn serve(args: MetadataArgs) -> Result<()> {
    check_listen("metadata", args.listen, args.allow_remote)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let backend = args
        .backend
        .clone()
        .unwrap_or_else(|| format!("embedded://{}", args.data_dir.join("metadata").display()));
    if backend.starts_with("quic://") {
        anyhow::bail!(
            "--backend must be a store (embedded:// or dynamodb://), not another metadata service"
        );
    }
    let store = weir_metadata::open(&backend, true)
        .await
        .with_context(|| format!("opening the metadata backend {backend}"))?;
    let cluster = store.cluster_id().await?;
    let (cert, key, ca) = service_tls(
        &args.data_dir.join("metadata-tls"),
        args.listen,
        &args.hosts,
        args.tls_cert.as_ref().zip(args.tls_key.as_ref()),
    )?;
    let endpoint = weir_rpc::server_endpoint(args.listen, &cert, &key, weir_metadata::remote::ALPN)
        .with_context(|| format!("listening on {} (UDP)", args.listen))?;
    let addr = endpoint.local_addr()?;
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::signal_shutdown(shutdown.clone()));
    let ca_param = ca_param(ca.as_deref())?;
    tracing::info!(%addr, backend = %backend, cluster = %cluster, "metadata service listening (QUIC)");
    println!("weir metadata is ready: quic://{addr}{ca_param}");
    weir_rpc::serve(
        endpoint,
        Arc::new(weir_metadata::remote::MetadataServer::new(store)),
        shutdown,
    )
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// Refuses a non-loopback address for a QUIC service unless `allow_remote`: its clients are
/// not authenticated.
pub(crate) fn check_listen(service: &str, listen: SocketAddr, allow_remote: bool) -> Result<()> {
    if !listen.ip().is_loopback() && !allow_remote {
        anyhow::bail!(
            "the {service} service does not authenticate its clients; listening on {listen} \
             (not loopback) needs --allow-remote, and a network only Weir's processes reach"
        );
    }
    Ok(())
}

/// The certificate and key a QUIC service presents: the given pair, or a self-signed set
/// generated (once) in `dir` for the listen address, localhost, 127.0.0.1 and `hosts`, whose
/// CA file is returned for clients.
pub(crate) fn service_tls(
    dir: &std::path::Path,
    listen: SocketAddr,
    hosts: &[String],
    given: Option<(&PathBuf, &PathBuf)>,
) -> Result<(PathBuf, PathBuf, Option<PathBuf>)> {
    if let Some((cert, key)) = given {
        return Ok((cert.clone(), key.clone(), None));
    }
    let mut names = vec![
        listen.ip().to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    for h in hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let files = weir_rpc::tls::load_or_generate(dir, &names)?;
    Ok((files.cert, files.key, Some(files.ca)))
}

/// The `?ca=` part of a service URL clients are told to use.
pub(crate) fn ca_param(ca: Option<&std::path::Path>) -> Result<String> {
    Ok(match ca {
        Some(ca) => format!("?ca={}", std::fs::canonicalize(ca)?.display()),
        None => "?ca=<your CA file>".to_string(),
    })
}
