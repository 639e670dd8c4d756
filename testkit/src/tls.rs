//! [`TestCa`]: a certificate authority made fresh for one test, so TLS is tested for real
//! (certificates verified against a root the client was told to trust) without a file or a
//! secret in the repository.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A fresh CA whose certificate and key exist only in this process.
///
/// ```
/// let ca = wschat_testkit::TestCa::new();
/// let (cert, key) = ca.issue(&["localhost"]);
/// assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
/// assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
/// assert!(key.contains("PRIVATE KEY"));
/// ```
pub struct TestCa {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// Generates the CA's key and self-signed certificate.
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::new())
            .unwrap_or_else(|error| panic!("CA parameters: {error}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wschat test CA");
        let key = KeyPair::generate().unwrap_or_else(|error| panic!("CA key: {error}"));
        let certificate = params
            .self_signed(&key)
            .unwrap_or_else(|error| panic!("CA certificate: {error}"));
        Self {
            ca_pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's certificate (PEM): the root a client trusts.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses), and its key, both PEM.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let params = CertificateParams::new(names)
            .unwrap_or_else(|error| panic!("certificate parameters: {error}"));
        let key = KeyPair::generate().unwrap_or_else(|error| panic!("key: {error}"));
        let certificate = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|error| panic!("certificate: {error}"));
        (certificate.pem(), key.serialize_pem())
    }
}
