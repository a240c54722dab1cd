//! HTTPS with rustls, on the same port as plain HTTP: a connection that
//! opens with a TLS handshake record is served over TLS, anything else as
//! plain HTTP (which then redirects pages to HTTPS and answers only the
//! status API and the sealed `vendctl` requests, see
//! [`crate::auth::https_only`]). So `vendctl status` and monitoring keep
//! working over plain HTTP when a certificate is configured.

use crate::app::TlsFiles;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The first byte of a TLS connection (a handshake record).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the certificate {path}: {problem}")]
    Certificate { path: String, problem: String },
    #[error("reading the private key {path}: {problem}")]
    Key { path: String, problem: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Loads the PEM files and builds the acceptor (TLS 1.2 and 1.3, HTTP/1.1).
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let certificate_path = files.certificate.display().to_string();
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&files.certificate)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| TlsError::Certificate {
                path: certificate_path.clone(),
                problem: e.to_string(),
            })?;
    if certificates.is_empty() {
        return Err(TlsError::Certificate {
            path: certificate_path,
            problem: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.private_key).map_err(|e| TlsError::Key {
        path: files.private_key.display().to_string(),
        problem: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certificates, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
