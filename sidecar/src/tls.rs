//! TLS for the inbound listener: a rustls acceptor with ALPN h2 and http/1.1.

use std::sync::Arc;

use meshgate_xds::config::Tls;
use tokio_rustls::TlsAcceptor;

/// Builds the acceptor from PEM files already read during validation.
pub fn acceptor(tls: &Tls) -> Result<TlsAcceptor, String> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut tls.cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("inbound.tls.cert: {e}"))?;
    if certs.is_empty() {
        return Err("inbound.tls.cert: no certificate in PEM file".into());
    }
    let key = rustls_pemfile::private_key(&mut tls.key_pem.as_slice())
        .map_err(|e| format!("inbound.tls.key: {e}"))?
        .ok_or_else(|| "inbound.tls.key: no private key in PEM file".to_string())?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("inbound.tls: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("inbound.tls: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
