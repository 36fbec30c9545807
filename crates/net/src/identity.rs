//! TLS identities: a certificate chain and the key that signs the TLS 1.3 handshake, held
//! locally (bridge) or inside a TEE core reached through a closure (vault node server).

use std::fmt;
use std::sync::Arc;

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::pki_types::{alg_id, CertificateDer, SubjectPublicKeyInfoDer};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

use crate::{NetError, MAX_CERT_LEN, MAX_CHAIN_LEN};

pub use custos_pki::tls::{
    is_tls13_certificate_verify_message, TLS13_CLIENT_CONTEXT, TLS13_SERVER_CONTEXT,
};

/// A signer outside this process: receives the exact TLS 1.3 CertificateVerify signing input
/// and returns an ASN.1 DER ECDSA P-256 / SHA-256 signature over it, or a reason for refusing.
///
/// It is called synchronously from inside the TLS handshake (rustls' signing interface is
/// synchronous), on whatever thread drives that handshake, typically a Tokio worker. A quick
/// local IPC round trip to the TEE core is fine; a closure that may take long should wrap
/// its blocking work in `tokio::task::block_in_place` itself when it runs on a multi-threaded
/// runtime.
pub type RemoteSignFn = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// A certificate chain (DER, leaf first) and the key certified by its leaf.
///
/// Cheap to clone: the key is shared.
#[derive(Clone)]
pub struct TlsIdentity {
    certified: Arc<CertifiedKey>,
    kind: &'static str,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material; the chain length and signer kind are what matter when
        // debugging a configuration.
        f.debug_struct("TlsIdentity")
            .field("chain_len", &self.certified.cert.len())
            .field("signer", &self.kind)
            .finish()
    }
}

/// Checks an identity's chain: non-empty, bounded, and a leaf that parses as X.509.
fn check_chain(chain: Vec<Vec<u8>>) -> Result<Vec<CertificateDer<'static>>, NetError> {
    if chain.is_empty() {
        return Err(NetError::InvalidIdentity(
            "certificate chain is empty".into(),
        ));
    }
    if chain.len() > MAX_CHAIN_LEN {
        return Err(NetError::InvalidIdentity(format!(
            "certificate chain has {} certificates, at most {MAX_CHAIN_LEN} allowed",
            chain.len()
        )));
    }
    if let Some((i, c)) = chain
        .iter()
        .enumerate()
        .find(|(_, c)| c.len() > MAX_CERT_LEN)
    {
        return Err(NetError::InvalidIdentity(format!(
            "certificate {i} is {} bytes, more than the {MAX_CERT_LEN}-byte limit",
            c.len()
        )));
    }
    let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    webpki::EndEntityCert::try_from(&chain[0]).map_err(|e| {
        NetError::InvalidIdentity(format!("leaf certificate does not parse: {e:?}"))
    })?;
    Ok(chain)
}

impl TlsIdentity {
    /// An identity whose ECDSA P-256 key is held in this process (PKCS#8 DER), as the bridge
    /// server uses. Fails if the key is not P-256 or is not the key of the leaf certificate.
    pub fn from_local_key(chain: Vec<Vec<u8>>, pkcs8_der: &[u8]) -> Result<Self, NetError> {
        let chain = check_chain(chain)?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8_der, &rng)
            .map_err(|e| NetError::InvalidKey(format!("not an ECDSA P-256 PKCS#8 key ({e})")))?;
        let spki = rustls::sign::public_key_to_spki(
            &alg_id::ECDSA_P256,
            ring::signature::KeyPair::public_key(&key).as_ref(),
        );
        let key = LocalKey {
            key: Arc::new(key),
            rng,
            spki,
        };
        let certified = CertifiedKey::new(chain, Arc::new(key));
        // Catch a wrong key file at startup instead of at every peer's handshake.
        certified.keys_match().map_err(|_| NetError::KeyMismatch)?;
        Ok(TlsIdentity {
            certified: Arc::new(certified),
            kind: "local ECDSA P-256 key",
        })
    }

    /// An identity whose key lives elsewhere (the TEE core of a vault node): `sign` receives
    /// each TLS 1.3 CertificateVerify signing input and returns a DER ECDSA P-256 / SHA-256
    /// signature. Every returned signature is checked against the leaf certificate before
    /// it is sent, so a TEE holding a different key shows up as a clear local error.
    pub fn from_remote_signer(chain: Vec<Vec<u8>>, sign: RemoteSignFn) -> Result<Self, NetError> {
        let chain = check_chain(chain)?;
        let key = RemoteKey {
            leaf: chain[0].clone(),
            sign,
        };
        Ok(TlsIdentity {
            certified: Arc::new(CertifiedKey::new(chain, Arc::new(key))),
            kind: "remote signer",
        })
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The rustls certified key (chain + signing key) used by the configs of this crate.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }
}

/// Picks the only scheme Custos keys support, if the peer offered it.
fn choose_p256(offered: &[SignatureScheme]) -> bool {
    offered.contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
}

/// A P-256 key in this process.
struct LocalKey {
    key: Arc<EcdsaKeyPair>,
    rng: SystemRandom,
    spki: SubjectPublicKeyInfoDer<'static>,
}

impl fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalKey(ECDSA P-256)")
    }
}

impl SigningKey for LocalKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        choose_p256(offered).then(|| {
            Box::new(LocalSigner {
                key: self.key.clone(),
                rng: self.rng.clone(),
            }) as Box<dyn Signer>
        })
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(self.spki.clone())
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

struct LocalSigner {
    key: Arc<EcdsaKeyPair>,
    rng: SystemRandom,
}

impl fmt::Debug for LocalSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalSigner(ECDSA_NISTP256_SHA256)")
    }
}

impl Signer for LocalSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.key
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| rustls::Error::General("local ECDSA P-256 signing failed".into()))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// A key held by a TEE core, reached through a closure.
struct RemoteKey {
    leaf: CertificateDer<'static>,
    sign: RemoteSignFn,
}

impl fmt::Debug for RemoteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RemoteKey(ECDSA P-256)")
    }
}

impl SigningKey for RemoteKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        choose_p256(offered).then(|| {
            Box::new(RemoteSigner {
                leaf: self.leaf.clone(),
                sign: self.sign.clone(),
            }) as Box<dyn Signer>
        })
    }

    // public_key() stays None: this process cannot know the TEE's key except through the
    // certificate, so claiming it would make rustls' consistency check meaningless. Each
    // signature is instead verified against the leaf in `RemoteSigner::sign`.

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

struct RemoteSigner {
    leaf: CertificateDer<'static>,
    sign: RemoteSignFn,
}

impl fmt::Debug for RemoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RemoteSigner(ECDSA_NISTP256_SHA256)")
    }
}

impl Signer for RemoteSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        // The configs of this crate negotiate TLS 1.3 only, so this holds; checking it here
        // keeps the TEE from ever being asked to sign anything else through this path.
        if !is_tls13_certificate_verify_message(message) {
            return Err(rustls::Error::General(
                "refusing to ask the remote signer to sign a non-TLS 1.3 CertificateVerify message"
                    .into(),
            ));
        }
        let signature = (self.sign)(message)
            .map_err(|e| rustls::Error::General(format!("remote signer refused: {e}")))?;
        let leaf = webpki::EndEntityCert::try_from(&self.leaf)
            .map_err(|e| rustls::Error::General(format!("leaf certificate: {e:?}")))?;
        leaf.verify_signature(webpki::ring::ECDSA_P256_SHA256, message, &signature)
            .map_err(|_| {
                rustls::Error::General(
                    "remote signer returned a signature that does not verify with the leaf \
                     certificate's public key (wrong device key?)"
                        .into(),
                )
            })?;
        Ok(signature)
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cv(context: &[u8], hash_len: usize) -> Vec<u8> {
        let mut m = vec![0x20; 64];
        m.extend_from_slice(context);
        m.push(0);
        m.extend(std::iter::repeat_n(0xab, hash_len));
        m
    }

    #[test]
    fn accepts_exact_certificate_verify_inputs() {
        for ctx in [TLS13_SERVER_CONTEXT, TLS13_CLIENT_CONTEXT] {
            assert!(is_tls13_certificate_verify_message(&cv(ctx, 32)));
            assert!(is_tls13_certificate_verify_message(&cv(ctx, 48)));
        }
    }

    #[test]
    fn rejects_everything_else() {
        let ok = cv(TLS13_SERVER_CONTEXT, 32);
        // Wrong hash lengths.
        for len in [0, 1, 20, 31, 33, 47, 49, 64] {
            assert!(!is_tls13_certificate_verify_message(&cv(
                TLS13_SERVER_CONTEXT,
                len
            )));
        }
        // Missing separator byte.
        let mut m = ok.clone();
        m[64 + TLS13_SERVER_CONTEXT.len()] = 1;
        assert!(!is_tls13_certificate_verify_message(&m));
        // One space short of the prefix / a non-space in it.
        assert!(!is_tls13_certificate_verify_message(&ok[1..]));
        let mut m = ok.clone();
        m[10] = b'x';
        assert!(!is_tls13_certificate_verify_message(&m));
        // Other context strings (TLS 1.2-like, a typo, truncated).
        assert!(!is_tls13_certificate_verify_message(&cv(
            b"TLS 1.2, server CertificateVerify",
            32
        )));
        assert!(!is_tls13_certificate_verify_message(&cv(
            b"TLS 1.3, server CertificateVerif",
            32
        )));
        // Short and empty inputs.
        assert!(!is_tls13_certificate_verify_message(&[]));
        assert!(!is_tls13_certificate_verify_message(&[0x20; 64]));
        assert!(!is_tls13_certificate_verify_message(&ok[..100]));
        // A 32-byte digest alone (what other TEE signing paths take) is refused.
        assert!(!is_tls13_certificate_verify_message(&[0xab; 32]));
    }

    #[test]
    fn identity_rejects_empty_or_garbage_chain() {
        let sign: RemoteSignFn = Arc::new(|_| Err("unused".into()));
        assert!(matches!(
            TlsIdentity::from_remote_signer(Vec::new(), sign.clone()),
            Err(NetError::InvalidIdentity(_))
        ));
        assert!(matches!(
            TlsIdentity::from_remote_signer(vec![vec![1, 2, 3]], sign.clone()),
            Err(NetError::InvalidIdentity(_))
        ));
        assert!(matches!(
            TlsIdentity::from_remote_signer(vec![vec![0; MAX_CERT_LEN + 1]], sign),
            Err(NetError::InvalidIdentity(_))
        ));
    }

    #[test]
    fn local_identity_checks_the_chain_before_the_key() {
        assert!(matches!(
            TlsIdentity::from_local_key(vec![vec![1]], b"not a key"),
            Err(NetError::InvalidIdentity(_))
        ));
    }
}
