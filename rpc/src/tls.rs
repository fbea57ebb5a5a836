//! TLS certificates for Weir's listeners (Kafka over TLS, QUIC between processes): a rustls
//! server configuration from PEM files, a client configuration that trusts one CA, and a
//! self-signed certificate authority plus server certificate for local use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::RpcError as TlsError;

/// Files of a generated certificate set.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The CA certificate clients trust (`ssl.ca.location`).
    pub ca: PathBuf,
    /// The server certificate chain (server certificate, then the CA).
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

impl CertFiles {
    pub fn in_dir(dir: &Path) -> Self {
        CertFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

/// Generates a CA and a server certificate it signed, valid for `hosts` (DNS names or IP
/// addresses), into `dir`. Existing files are replaced.
pub fn generate(dir: &Path, hosts: &[String]) -> Result<CertFiles, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let tls = |e: rcgen::Error| TlsError::Tls(e.to_string());
    std::fs::create_dir_all(dir)?;
    let files = CertFiles::in_dir(dir);

    let ca_key = KeyPair::generate().map_err(tls)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Weir local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().map_err(tls)?;
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(tls)?;
    params.distinguished_name.push(
        DnType::CommonName,
        hosts.first().map(String::as_str).unwrap_or("localhost"),
    );
    params.use_authority_key_identifier_extension = true;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params.signed_by(&server_key, &issuer).map_err(tls)?;

    std::fs::write(&files.ca, ca_cert.pem())?;
    std::fs::write(
        &files.cert,
        format!("{}{}", server_cert.pem(), ca_cert.pem()),
    )?;
    write_private(&files.key, server_key.serialize_pem().as_bytes())?;
    Ok(files)
}

/// Writes a file only its owner can read (private keys).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Uses the certificate set in `dir`, generating it first if it is not there.
pub fn load_or_generate(dir: &Path, hosts: &[String]) -> Result<CertFiles, TlsError> {
    let files = CertFiles::in_dir(dir);
    if files.ca.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let files = generate(dir, hosts)?;
    tracing::info!(ca = %files.ca.display(), "generated a self-signed TLS certificate set; clients trust ca.pem");
    Ok(files)
}

/// A rustls server configuration from a PEM certificate chain and private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Tls(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(TlsError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// A rustls client configuration that trusts only the CA certificates in `ca` (PEM).
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .map_err(|e| TlsError::Tls(format!("{}: {e}", ca.display())))?
    {
        let cert = cert.map_err(|e| TlsError::Tls(format!("{}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Tls(format!("{}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Tls(format!(
            "{}: no CA certificate found",
            ca.display()
        )));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_set_loads() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        server_config(&files.cert, &files.key).unwrap();
        // Reused, not regenerated.
        let before = std::fs::read(&files.ca).unwrap();
        let again = load_or_generate(dir.path(), &["localhost".into()]).unwrap();
        assert_eq!(std::fs::read(&again.ca).unwrap(), before);
        assert!(server_config(&files.ca, &dir.path().join("missing.key")).is_err());
    }
}
