//! Certificates made in-process for a test's own TLS servers: a test CA, a server certificate it
//! signed, and another CA that signed nothing the server shows; or a self-signed server
//! certificate, which is its own root.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::isolation::write;

/// Which certificate a test's TLS server shows, always for IP 127.0.0.1 and DNS localhost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCert {
    /// Signed by the test CA.
    SignedByTestCa,
    /// Self-signed and marked as a CA (basicConstraints CA:TRUE): what `openssl req -x509`
    /// makes by default, as in PostgreSQL's documentation for a quick start. libpq accepts it as
    /// its own root; webpki (rustls) refuses a CA certificate as a server's own.
    SelfSignedCa,
    /// Self-signed, marked as no CA (basicConstraints CA:FALSE): a server certificate that is
    /// its own root.
    SelfSigned,
}

/// A test's certificates as PEM files: a CA, a server certificate it signed (for IP 127.0.0.1
/// and DNS localhost) with its key, and another CA that signed nothing the server shows.
#[derive(Debug, Clone)]
pub struct Certs {
    /// What a client must be given to trust the server: the test CA, or the self-signed server
    /// certificate itself.
    pub ca_file: PathBuf,
    /// Another CA, unrelated to the server: trusting only it must fail.
    pub other_ca_file: PathBuf,
    pub cert_file: PathBuf,
    /// The server's private key (mode 0600).
    pub key_file: PathBuf,
}

impl Certs {
    /// Makes the certificates, with a server certificate signed by the test CA, and writes them
    /// into `dir`.
    pub fn write_to(dir: &Path) -> Certs {
        Certs::write_with(dir, ServerCert::SignedByTestCa)
    }

    /// Makes the certificates, with the server certificate `server`, and writes them into `dir`.
    pub fn write_with(dir: &Path, server: ServerCert) -> Certs {
        let (ca_pem, ca) = new_ca("ordersvc test CA");
        let (other_ca_pem, _) = new_ca("another CA");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("valid subject alternative names");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().expect("cannot generate the server's key");
        let (cert_pem, ca_pem) = match server {
            ServerCert::SignedByTestCa => {
                params.use_authority_key_identifier_extension = true;
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                let cert = params
                    .signed_by(&key, &ca)
                    .expect("cannot sign the server certificate");
                (cert.pem(), ca_pem)
            }
            // As `openssl req -new -x509` makes it: only basicConstraints CA:TRUE besides the
            // names (added here so that the host check passes and only CA:TRUE is at issue).
            ServerCert::SelfSignedCa => {
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                let cert = params
                    .self_signed(&key)
                    .expect("cannot make the self-signed CA certificate");
                (cert.pem(), cert.pem())
            }
            ServerCert::SelfSigned => {
                params.is_ca = IsCa::ExplicitNoCa;
                params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                let cert = params
                    .self_signed(&key)
                    .expect("cannot make the self-signed certificate");
                (cert.pem(), cert.pem())
            }
        };
        let certs = Certs {
            ca_file: dir.join("ca.pem"),
            other_ca_file: dir.join("other-ca.pem"),
            cert_file: dir.join("server.crt"),
            key_file: dir.join("server.key"),
        };
        write(&certs.ca_file, &ca_pem);
        write(&certs.other_ca_file, &other_ca_pem);
        write(&certs.cert_file, &cert_pem);
        write(&certs.key_file, &key.serialize_pem());
        // PostgreSQL refuses a key that others can read.
        fs::set_permissions(&certs.key_file, fs::Permissions::from_mode(0o600))
            .expect("cannot make the key private");
        certs
    }
}

/// A self-signed CA named `name`: its certificate as PEM, and the issuer that signs with it.
fn new_ca(name: &str) -> (String, CertifiedIssuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names is valid");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("cannot generate a CA key");
    let ca = CertifiedIssuer::self_signed(params, key).expect("cannot make a CA certificate");
    (ca.pem(), ca)
}
