//! Who a client certificate names: the subject common name of the first
//! certificate the peer presented in the TLS handshake (only with
//! `SYNCKAIROS_TLS_CLIENT_CA`, which makes the listener ask for one and
//! verify it against that CA before any call arrives). The auth layer
//! (grpc/auth.rs) maps this name to an API key's `id`.

use tonic::Request;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The subject common name of the client's certificate; `None` on a
/// plaintext or server-only TLS connection, or when the certificate has no
/// common name (or one that is not UTF-8). The certificate is the one the
/// handshake verified: this is only read from it.
pub fn client_common_name<T>(req: &Request<T>) -> Option<String> {
    common_name(req.extensions())
}

/// As [`client_common_name`], from an HTTP request's extensions (where the
/// transport puts the connection's TLS info before any layer runs).
pub fn common_name(extensions: &http::Extensions) -> Option<String> {
    let info = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    common_name_of(certs.first()?.as_ref())
}

/// The first subject common name of a DER certificate.
fn common_name_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;

    fn cert_with(subject: DistinguishedName) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = subject;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_common_name_is_read_from_the_subject() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Acme");
        dn.push(DnType::CommonName, "acme-backend");
        assert_eq!(
            common_name_of(&cert_with(dn)).as_deref(),
            Some("acme-backend")
        );
    }

    #[test]
    fn no_common_name_no_certificate_or_garbage_is_none() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Acme");
        assert_eq!(common_name_of(&cert_with(dn)), None);
        assert_eq!(common_name_of(b"not a certificate"), None);
        // A request that came over no TLS connection carries no certificates.
        assert_eq!(client_common_name(&Request::new(())), None);
    }
}
