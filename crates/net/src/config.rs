//! rustls configurations: TLS 1.3 only, mutual authentication with Custos device chains.

use std::sync::Arc;

use custos_pki::{DeviceChain, TrustRoot};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::NoServerSessionStorage;
use rustls::sign::SingleCertAndKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use crate::{provider, NetError, TlsIdentity, MAX_CERT_LEN, MAX_CHAIN_LEN};

/// ALPN protocol both sides offer: gRPC runs over HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// Parses and checks the pinned Root CA once, for both configs.
pub(crate) fn load_root(root_ca_der: &[u8]) -> Result<(TrustRoot, DistinguishedName), NetError> {
    let root =
        TrustRoot::from_der(root_ca_der).map_err(|e| NetError::InvalidRootCa(e.to_string()))?;
    let der = CertificateDer::from(root_ca_der);
    let anchor = webpki::anchor_from_trusted_cert(&der)
        .map_err(|e| NetError::InvalidRootCa(format!("{e:?}")))?;
    let subject = DistinguishedName::in_sequence(anchor.subject.as_ref());
    Ok((root, subject))
}

/// The server side: TLS 1.3 only, a client certificate is mandatory and must prove
/// possession of its key, but its chain is judged by the application (see
/// [`crate::PeerInfo::device_chain`]), so that each refusal is explained rather than reduced
/// to a TLS alert.
///
/// `root_ca_der` (the pinned Custos Root CA) is checked to be a Custos Root and its subject
/// is sent as the certificate-authorities hint of the CertificateRequest.
pub fn server_config(
    identity: &TlsIdentity,
    root_ca_der: &[u8],
) -> Result<Arc<ServerConfig>, NetError> {
    let (_, root_subject) = load_root(root_ca_der)?;
    let provider = provider();
    let verifier = PossessionOnlyClientVerifier {
        algorithms: provider.signature_verification_algorithms,
        hints: vec![root_subject],
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified_key())));
    Ok(finish_server_config(config))
}

/// A TLS 1.3 server that asks no client certificate: for a service whose callers are
/// outside the cluster PKI and authenticate at the application layer (the external relay,
/// called by the cloud server with a bearer token).
pub fn server_config_without_client_auth(
    identity: &TlsIdentity,
) -> Result<Arc<ServerConfig>, NetError> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified_key())));
    Ok(finish_server_config(config))
}

pub(crate) fn finish_server_config(mut config: ServerConfig) -> Arc<ServerConfig> {
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: every connection must present its chain and sign a fresh
    // CertificateVerify, so the application always sees a proven chain, and connections
    // are long-lived gRPC channels anyway.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// The client side: TLS 1.3 only, presents `identity`'s chain, and accepts a server only if
/// webpki validates its chain to the pinned Custos Root CA for the requested name, the chain
/// passes the Custos device rules (Device CA → Cluster CA → device, device EKU) and the
/// requested name is exactly that device's `<node>.<cluster>.custos`.
pub fn client_config(
    identity: &TlsIdentity,
    root_ca_der: &[u8],
) -> Result<Arc<ClientConfig>, NetError> {
    client_config_with(Some(identity), root_ca_der)
}

/// Like [`client_config`] but without a client certificate: for a caller outside the
/// cluster PKI (the cloud server calling an external relay), which authenticates at the
/// application layer with a bearer token instead. The server is checked exactly as there.
pub fn client_config_without_identity(root_ca_der: &[u8]) -> Result<Arc<ClientConfig>, NetError> {
    client_config_with(None, root_ca_der)
}

fn client_config_with(
    identity: Option<&TlsIdentity>,
    root_ca_der: &[u8],
) -> Result<Arc<ClientConfig>, NetError> {
    let (root, _) = load_root(root_ca_der)?;
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(root_ca_der.to_vec()))
        .map_err(|e| NetError::InvalidRootCa(e.to_string()))?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| NetError::InvalidRootCa(e.to_string()))?;
    let verifier = CustosServerVerifier { webpki, root };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity {
        Some(identity) => builder
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified_key()))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

fn other_cert_error(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(StringError(
        msg,
    )))))
}

/// A plain message as an `std::error::Error`, for rustls' `OtherError`.
#[derive(Debug)]
struct StringError(String);

impl std::fmt::Display for StringError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StringError {}

/// Client-certificate verifier that only checks syntax and proof of possession.
///
/// Accepting the chain here is safe because it is not the authorization decision: the
/// application must call `TrustRoot::verify_device` on the presented chain before serving
/// anything. What TLS does guarantee is that the peer holds the private key of the leaf it
/// presented (the CertificateVerify signature is checked against that leaf), so the chain the
/// application verifies is bound to this connection.
#[derive(Debug)]
struct PossessionOnlyClientVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for PossessionOnlyClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if intermediates.len() + 1 > MAX_CHAIN_LEN {
            return Err(other_cert_error(format!(
                "client presented {} certificates, at most {MAX_CHAIN_LEN} accepted",
                intermediates.len() + 1
            )));
        }
        if let Some(big) = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|c| c.len() > MAX_CERT_LEN)
        {
            return Err(other_cert_error(format!(
                "client certificate of {} bytes exceeds the {MAX_CERT_LEN}-byte limit",
                big.len()
            )));
        }
        // The leaf must parse: its public key is what the handshake signature is checked
        // against. Intermediates are left to the application's chain check.
        webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable with the TLS 1.3-only config; implemented correctly regardless.
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Server-certificate verifier: rustls' webpki verifier (chain to the pinned Root, validity,
/// serverAuth EKU, name) followed by the Custos device rules.
#[derive(Debug)]
struct CustosServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    root: TrustRoot,
}

impl ServerCertVerifier for CustosServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        // webpki accepts any path to the Root; Custos additionally requires the exact
        // Device CA → Cluster CA → device shape with role markers and the device EKU, so a
        // certificate issued for another purpose can never pose as a vault node or bridge.
        let [cluster_ca, device_ca] = intermediates else {
            return Err(other_cert_error(format!(
                "server presented {} intermediate certificate(s); a Custos device presents \
                 exactly 2 (Cluster CA, Device CA)",
                intermediates.len()
            )));
        };
        let chain = DeviceChain {
            device: end_entity.to_vec(),
            cluster_ca: cluster_ca.to_vec(),
            device_ca: device_ca.to_vec(),
        };
        // A server is a vault node (device role), the cluster's bridge or its external
        // relay; the application decides which one it expects to talk to by the name.
        let now = now.as_secs();
        let id = self
            .root
            .verify_device(&chain, None, now)
            .or_else(|device_err| {
                self.root
                    .verify_bridge(&chain, None, now)
                    .or_else(|_| self.root.verify_relay(&chain, None, now))
                    .map_err(|_| device_err)
            })
            .map_err(|e| other_cert_error(e.to_string()))?;
        // The SAN already matched (webpki); also bind the name to the verified subject and
        // Cluster CA, so the cluster in the name is the one whose CA issued the certificate.
        if let ServerName::DnsName(name) = server_name {
            let expected = format!("{}.{}.custos", id.node, id.cluster);
            if !name.as_ref().eq_ignore_ascii_case(&expected) {
                return Err(other_cert_error(format!(
                    "server is {expected:?}, not {:?}",
                    name.as_ref()
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
