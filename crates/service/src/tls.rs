//! TLS for the clients of PostgreSQL and NATS: which certificates a client trusts, and telling a
//! failed handshake from a server that is merely not there.
//!
//! sqlx builds its own rustls settings from `sslmode` and `sslrootcert` (with the same webpki
//! roots); NATS's are built here. Both use ring.

use std::path::Path;
use std::sync::Arc;

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// TLS settings for a client: the public CAs built into the binary (a `FROM scratch` image has
/// no system store) and a private CA from a PEM file (`--nats-tls-ca`).
pub(crate) fn client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let pem = std::fs::read(path)
            .wrap_err_with(|| format!("cannot read the CA file {}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                eyre!(
                    "the CA file {} is not PEM certificates: {e}",
                    path.display()
                )
            })?;
            roots.add(cert).wrap_err_with(|| {
                format!(
                    "the CA file {} holds a certificate rustls refuses",
                    path.display()
                )
            })?;
            added += 1;
        }
        if added == 0 {
            bail!("the CA file {} holds no certificate", path.display());
        }
    }
    // ring explicitly, as sqlx does: rustls would refuse to choose if a dependency ever enabled
    // a second provider.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .wrap_err("cannot set up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Whether rustls's error is anywhere in `error`'s chain. An `io::Error` does not list the error
/// it wraps as its source, so each one is looked inside.
pub(crate) fn caused_by_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut found = false;
    walk(error, &mut |e| found |= e.is::<rustls::Error>());
    found
}

/// Whether `error` is rustls refusing a server certificate that is a CA certificate (a
/// self-signed certificate made with `basicConstraints=CA:TRUE`, as `openssl req -x509` makes
/// one by default). libpq (OpenSSL) accepts such a certificate when it is also the root given
/// in `sslrootcert`; webpki does not, and rustls offers no way to allow it.
pub(crate) fn ca_used_as_end_entity(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut found = false;
    walk(error, &mut |e| {
        if let Some(rustls) = e.downcast_ref::<rustls::Error>() {
            found |= format!("{rustls:?}").contains("CaUsedAsEndEntity");
        }
    });
    found
}

/// Calls `visit` on every error in `error`'s chain, looking inside `io::Error`s too.
fn walk(
    error: &(dyn std::error::Error + 'static),
    visit: &mut dyn FnMut(&(dyn std::error::Error + 'static)),
) {
    let mut next = Some(error);
    while let Some(e) = next {
        visit(e);
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            walk(inner, visit);
        }
        next = e.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("ordersvc-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        assert!(client_config(Some(&empty)).is_err());
        assert!(client_config(Some(&dir.join("missing.pem"))).is_err());
        assert!(client_config(None).is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_refused_handshake_is_a_tls_failure_and_a_refused_connection_is_not() {
        let handshake = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(caused_by_tls(&handshake));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!caused_by_tls(&refused));
        assert!(!ca_used_as_end_entity(&handshake));
    }
}
