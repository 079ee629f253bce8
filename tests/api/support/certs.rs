//! Certificates made in-process for a test's own TLS servers: a test CA, a server certificate it
//! signed, and another CA that signed nothing the server shows.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::isolation::write;

/// A test's certificates as PEM files: a CA, a server certificate it signed (for IP 127.0.0.1
/// and DNS localhost) with its key, and another CA that signed nothing the server shows.
#[derive(Debug, Clone)]
pub struct Certs {
    /// The test CA: what a client must be given to trust the server.
    pub ca_file: PathBuf,
    /// Another CA, unrelated to the server: trusting only it must fail.
    pub other_ca_file: PathBuf,
    pub cert_file: PathBuf,
    /// The server's private key (mode 0600).
    pub key_file: PathBuf,
}

impl Certs {
    /// Makes the certificates and writes them into `dir`.
    pub fn write_to(dir: &Path) -> Certs {
        let (ca_pem, ca) = new_ca("ordersvc test CA");
        let (other_ca_pem, _) = new_ca("another CA");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("valid subject alternative names");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("cannot generate the server's key");
        let cert = params
            .signed_by(&key, &ca)
            .expect("cannot sign the server certificate");
        let certs = Certs {
            ca_file: dir.join("ca.pem"),
            other_ca_file: dir.join("other-ca.pem"),
            cert_file: dir.join("server.crt"),
            key_file: dir.join("server.key"),
        };
        write(&certs.ca_file, &ca_pem);
        write(&certs.other_ca_file, &other_ca_pem);
        write(&certs.cert_file, &cert.pem());
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
