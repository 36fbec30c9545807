//! A server configuration whose client-certificate verifier is anchored at the pinned Root:
//! a client whose chain does not reach the Root fails in the handshake, before any byte of
//! the application protocol is read, and every such refusal is reported to an observer
//! (reason and the presented leaf's fingerprint) so that the server can count refusals
//! without logging each one.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::SingleCertAndKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::config::{finish_server_config, load_root};
use crate::{provider, NetError, TlsIdentity, MAX_CERT_LEN, MAX_CHAIN_LEN};

/// Why a client's certificate was refused in the handshake. A closed set on purpose: it is
/// the key under which refusals are counted, so an attacker cannot make the counter grow by
/// varying what they present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsRefusalReason {
    /// The chain does not lead to the pinned Root (self-signed, another PKI).
    UnknownIssuer,
    /// A signature in the chain does not verify.
    BadSignature,
    /// A certificate of the chain has expired.
    Expired,
    /// A certificate of the chain is not valid yet.
    NotValidYet,
    /// A certificate is not issued for TLS client authentication.
    InvalidPurpose,
    /// A certificate could not be parsed.
    BadEncoding,
    /// A certificate uses a signature algorithm this server does not accept.
    UnsupportedAlgorithm,
    /// More than [`MAX_CHAIN_LEN`] certificates were presented.
    ChainTooLong,
    /// A certificate is larger than [`MAX_CERT_LEN`] bytes.
    CertificateTooLarge,
    /// Any other refusal by the verifier.
    Other,
}

impl TlsRefusalReason {
    /// A stable, lower-case code (what the history records).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsRefusalReason::UnknownIssuer => "unknown_issuer",
            TlsRefusalReason::BadSignature => "bad_signature",
            TlsRefusalReason::Expired => "expired",
            TlsRefusalReason::NotValidYet => "not_valid_yet",
            TlsRefusalReason::InvalidPurpose => "invalid_purpose",
            TlsRefusalReason::BadEncoding => "bad_encoding",
            TlsRefusalReason::UnsupportedAlgorithm => "unsupported_algorithm",
            TlsRefusalReason::ChainTooLong => "chain_too_long",
            TlsRefusalReason::CertificateTooLarge => "certificate_too_large",
            TlsRefusalReason::Other => "other",
        }
    }

    fn of(e: &rustls::Error) -> Self {
        let rustls::Error::InvalidCertificate(e) = e else {
            return TlsRefusalReason::Other;
        };
        match e {
            CertificateError::UnknownIssuer => TlsRefusalReason::UnknownIssuer,
            CertificateError::BadSignature => TlsRefusalReason::BadSignature,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                TlsRefusalReason::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                TlsRefusalReason::NotValidYet
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                TlsRefusalReason::InvalidPurpose
            }
            CertificateError::BadEncoding => TlsRefusalReason::BadEncoding,
            CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                TlsRefusalReason::UnsupportedAlgorithm
            }
            _ => TlsRefusalReason::Other,
        }
    }
}

impl std::fmt::Display for TlsRefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One client refused in the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsRefusal {
    /// Why.
    pub reason: TlsRefusalReason,
    /// SHA-256 of the presented leaf certificate (DER), absent when the leaf was not even
    /// hashed (larger than [`MAX_CERT_LEN`]).
    pub leaf_sha256: Option<[u8; 32]>,
}

/// Called for every client refused in the handshake. It runs inside the handshake, so it
/// must be quick and must not block (count in memory, write elsewhere).
pub type RefusalObserver = Arc<dyn Fn(TlsRefusal) + Send + Sync>;

/// The server side for a service whose every caller holds a certificate of the Custos PKI:
/// TLS 1.3 only, a client certificate is mandatory and its chain must reach the pinned Root
/// (`root_ca_der`) through rustls' webpki verifier (signatures, validity, client-auth
/// purpose), so a self-signed client or one of another PKI fails in the handshake with the
/// `unknown_ca` alert. `on_refusal` hears of each refused client.
///
/// The Custos role and cluster rules still belong to the application
/// ([`crate::PeerInfo::device_chain`] and `TrustRoot`): a chain that reaches the Root may
/// still not be allowed to make a given call, and the application says why.
pub fn server_config_anchored(
    identity: &TlsIdentity,
    root_ca_der: &[u8],
    on_refusal: RefusalObserver,
) -> Result<Arc<ServerConfig>, NetError> {
    // Checks that the pinned certificate is a Custos Root before trusting it as the anchor.
    load_root(root_ca_der)?;
    let provider = provider();
    let verifier = AnchoredClientVerifier {
        inner: anchored_webpki(root_ca_der, provider.clone())?,
        on_refusal,
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified_key())));
    Ok(finish_server_config(config))
}

fn anchored_webpki(
    root_ca_der: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, NetError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(root_ca_der.to_vec()))
        .map_err(|e| NetError::InvalidRootCa(e.to_string()))?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| NetError::InvalidRootCa(e.to_string()))
}

/// rustls' webpki client verifier with the chain-size limits of this crate in front and an
/// observer told of every refusal.
struct AnchoredClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    on_refusal: RefusalObserver,
}

impl std::fmt::Debug for AnchoredClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnchoredClientVerifier")
            .finish_non_exhaustive()
    }
}

impl AnchoredClientVerifier {
    fn refuse(
        &self,
        reason: TlsRefusalReason,
        end_entity: &CertificateDer<'_>,
        error: rustls::Error,
    ) -> rustls::Error {
        let leaf_sha256 = (end_entity.len() <= MAX_CERT_LEN).then(|| {
            let d = ring::digest::digest(&ring::digest::SHA256, end_entity);
            d.as_ref().try_into().expect("SHA-256 is 32 bytes")
        });
        (self.on_refusal)(TlsRefusal {
            reason,
            leaf_sha256,
        });
        error
    }
}

impl ClientCertVerifier for AnchoredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Size limits first: path building over a long chain of large certificates is the
        // most expensive thing a stranger could make the server do.
        if intermediates.len() + 1 > MAX_CHAIN_LEN {
            return Err(self.refuse(
                TlsRefusalReason::ChainTooLong,
                end_entity,
                rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
            ));
        }
        if std::iter::once(end_entity)
            .chain(intermediates)
            .any(|c| c.len() > MAX_CERT_LEN)
        {
            return Err(self.refuse(
                TlsRefusalReason::CertificateTooLarge,
                end_entity,
                rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
            ));
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| self.refuse(TlsRefusalReason::of(&e), end_entity, e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
