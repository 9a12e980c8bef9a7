//! TLS 1.3 for QUIC with raw public keys (RFC 7250): a node's TLS key *is* its roster key,
//! so pinning is comparing 44 bytes, with no certificates, names or expiry to get wrong.
//!
//! Every connection presents a key. Witnesses present their node key; clients present a
//! fresh throwaway key, which the server cannot find in any roster and so treats as an
//! anonymous client. The server side of the handshake checks only that the peer holds the
//! key it presents; what the key may do is decided by the caller (`peer_key`).
//!
//! Sharing the node key between TLS and cosigning is safe by domain separation: TLS 1.3
//! signs `0x20 × 64 || context || 0x00 || transcript hash`, never a 32-byte block id nor a
//! proof-of-possession message (SPEC.md §7).

use chainiac_cosi::{PublicKey, SecretKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature_with_raw_key, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use std::sync::Arc;

/// The ALPN protocol id.
pub const ALPN: &[u8] = b"chainiac/1";
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the key's 32 bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410); the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SubjectPublicKeyInfo of an Ed25519 key.
pub fn spki(key: &PublicKey) -> Vec<u8> {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(key.as_bytes());
    der
}

/// The Ed25519 key of a SubjectPublicKeyInfo, decoded strictly; `None` for anything else.
pub fn key_from_spki(der: &[u8]) -> Option<PublicKey> {
    let rest = der.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    PublicKey::from_slice(rest).ok()
}

fn certified_key(key: &SecretKey, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, Error> {
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&key.seed());
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    let signing = provider.key_provider.load_private_key(der)?;
    Ok(Arc::new(CertifiedKey::new(vec![CertificateDer::from(spki(&key.public_key()))], signing)))
}

fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, Error> {
    if key_from_spki(cert.as_ref()).is_none() {
        return Err(Error::InvalidCertificate(rustls::CertificateError::BadEncoding));
    }
    verify_tls13_signature_with_raw_key(message, &SubjectPublicKeyInfoDer::from(cert.as_ref()), dss, algorithms)
}

/// Accepts the server only if it presents exactly the expected key.
#[derive(Debug)]
struct PinnedServer {
    expected: Vec<u8>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if end_entity.as_ref() == self.expected.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Accepts any client that proves it holds the Ed25519 key it presents.
#[derive(Debug)]
struct AnyKeyClient {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyKeyClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match key_from_spki(end_entity.as_ref()) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(Error::InvalidCertificate(rustls::CertificateError::BadEncoding)),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// TLS for a node's server side: presents `key`, requires every client to prove a key.
pub fn server_config(key: &SecretKey) -> Result<rustls::ServerConfig, Error> {
    let provider = provider();
    let verifier = AnyKeyClient { algorithms: provider.signature_verification_algorithms };
    let certified = certified_key(key, &provider)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified)));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// TLS for connecting to the node whose key is `server`, presenting `own` (a node key, or a
/// throwaway key for an anonymous client).
pub fn client_config(own: &SecretKey, server: &PublicKey) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let verifier = PinnedServer { expected: spki(server), algorithms: provider.signature_verification_algorithms };
    let certified = certified_key(own, &provider)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified)));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_roundtrip_and_strictness() {
        let key = SecretKey::from_seed(&[3; 32]).public_key();
        let der = spki(&key);
        assert_eq!(der.len(), 44);
        assert_eq!(key_from_spki(&der), Some(key));
        let mut wrong = der.clone();
        wrong[5] ^= 1;
        assert_eq!(key_from_spki(&wrong), None);
        let mut identity = ED25519_SPKI_PREFIX.to_vec();
        let mut one = [0u8; 32];
        one[0] = 1;
        identity.extend_from_slice(&one);
        assert_eq!(key_from_spki(&identity), None, "small-order keys are refused");
    }

    #[test]
    fn configs_build_from_a_seed() {
        let key = SecretKey::from_seed(&[4; 32]);
        server_config(&key).unwrap();
        client_config(&key, &SecretKey::from_seed(&[5; 32]).public_key()).unwrap();
    }
}
