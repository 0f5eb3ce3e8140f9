//! TLS for IMAP (implicit and STARTTLS), with the web PKI roots plus any certificates the config
//! adds (`ca_file`: a private CA).

use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// The certificates of a PEM file; an error unless there is at least one and all parse.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate (-----BEGIN CERTIFICATE-----) in the file".into());
    }
    Ok(certs)
}

/// `host` may be a name or an IP address; `extra_pem` adds trusted certificates.
pub async fn connect(host: &str, tcp: TcpStream, extra_pem: Option<&[u8]>) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(pem) = extra_pem {
        for cert in pem_certificates(pem).map_err(std::io::Error::other)? {
            roots.add(cert).map_err(std::io::Error::other)?;
        }
    }
    // An explicit provider: more than one rustls provider may be compiled into the binary.
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}
