//! The one rustls client configuration both legs use: the websocket (`transport`) and
//! the token endpoint (`credentials`), so that a server trusted by one is trusted by the
//! other. Roots are the web PKI plus the system store, plus any `--ca-cert`; the crypto
//! provider is ring (no OpenSSL, no C toolchain beyond what ring needs).

use std::sync::{Arc, OnceLock};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// The web PKI and the system's roots, loaded once per process: reading the system
/// store costs milliseconds, and every dial and every token request would repeat it.
fn base_roots() -> &'static rustls::RootCertStore {
    static ROOTS: OnceLock<rustls::RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // Native roots are a bonus on top of the web PKI: a machine without a readable
        // system store can still reach public servers, so load errors are only logged.
        let native = rustls_native_certs::load_native_certs();
        if !native.errors.is_empty() {
            tracing::debug!(
                target: "wsup::transport",
                errors = native.errors.len(),
                "some system root certificates could not be loaded"
            );
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(
            target: "wsup::transport",
            added,
            ignored,
            "system root certificates"
        );
        roots
    })
}

/// A client configuration trusting the base roots and `extra_ca_certs`. The error is a
/// sentence for the user (which certificate could not be used, and why).
pub fn client_config(
    extra_ca_certs: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = base_roots().clone();
    for (index, cert) in extra_ca_certs.into_iter().enumerate() {
        roots.add(cert).map_err(|err| {
            format!(
                "CA certificate #{} cannot be used as a trust anchor: {err}",
                index + 1
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
