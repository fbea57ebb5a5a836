//! TLS for the Kafka listeners: a rustls server configuration from PEM files, and a
//! self-signed certificate authority plus server certificate for local use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::AuthError;

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
pub fn generate(dir: &Path, hosts: &[String]) -> Result<CertFiles, AuthError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let tls = |e: rcgen::Error| AuthError::Tls(e.to_string());
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
    crate::store::write_private(&files.key, server_key.serialize_pem().as_bytes())?;
    Ok(files)
}

/// Uses the certificate set in `dir`, generating it first if it is not there.
pub fn load_or_generate(dir: &Path, hosts: &[String]) -> Result<CertFiles, AuthError> {
    let files = CertFiles::in_dir(dir);
    if files.ca.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let files = generate(dir, hosts)?;
    tracing::info!(ca = %files.ca.display(), "generated a self-signed TLS certificate set; clients trust ca.pem");
    Ok(files)
}

/// A rustls server configuration from a PEM certificate chain and private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, AuthError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| AuthError::Tls(format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| AuthError::Tls(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(AuthError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| AuthError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| AuthError::Tls(e.to_string()))?;
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
