//! The device key D (patent FIG. 4): generated inside, certified by the Cluster CA,
//! signs everything the TEE emits.

use p256::pkcs8::EncodePrivateKey;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use zeroize::Zeroizing;

use crate::platform::{Platform, PlatformError};
use custos_wire::protocol::TeeError;

/// D with the identity it was generated for.
pub struct DeviceKey {
    pkcs8: Zeroizing<Vec<u8>>,
    signer: EcdsaKeyPair,
    rng: SystemRandom,
    /// Cluster the node was provisioned for.
    pub cluster: String,
    /// Node name.
    pub node: String,
}

fn internal(e: impl std::fmt::Display) -> TeeError {
    TeeError::Storage(format!("device key: {e}"))
}

impl DeviceKey {
    /// Generates D from platform randomness.
    pub fn generate(
        platform: &mut dyn Platform,
        cluster: &str,
        node: &str,
    ) -> Result<Self, TeeError> {
        let secret = loop {
            let mut bytes = Zeroizing::new([0u8; 32]);
            platform
                .random(&mut bytes[..])
                .map_err(|e: PlatformError| TeeError::Storage(e.to_string()))?;
            // Rejection sampling: out-of-range scalars (probability ~2^-32) are redrawn.
            if let Ok(sk) = p256::SecretKey::from_slice(&bytes[..]) {
                break sk;
            }
        };
        let doc = secret.to_pkcs8_der().map_err(internal)?;
        Self::from_pkcs8(Zeroizing::new(doc.as_bytes().to_vec()), cluster, node)
    }

    /// Rebuilds D from its sealed PKCS#8 encoding.
    pub fn from_pkcs8(
        pkcs8: Zeroizing<Vec<u8>>,
        cluster: &str,
        node: &str,
    ) -> Result<Self, TeeError> {
        let rng = SystemRandom::new();
        let signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
            .map_err(internal)?;
        Ok(DeviceKey {
            pkcs8,
            signer,
            rng,
            cluster: cluster.to_string(),
            node: node.to_string(),
        })
    }

    /// The raw private scalar, for HPKE decapsulation of transfers addressed to D.
    pub fn private_scalar(&self) -> Result<Zeroizing<[u8; 32]>, TeeError> {
        use p256::pkcs8::DecodePrivateKey;
        let sk = p256::SecretKey::from_pkcs8_der(&self.pkcs8).map_err(internal)?;
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&sk.to_bytes());
        Ok(out)
    }

    /// PKCS#8 encoding, for sealing only.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// D's public key, SEC1 uncompressed.
    pub fn public_key(&self) -> Vec<u8> {
        self.signer.public_key().as_ref().to_vec()
    }

    /// ECDSA P-256 / SHA-256 signature (DER). The nonce comes from ring's generator, because
    /// ring does not accept an external random source; on a real TEE that is the enclave's
    /// own `getrandom`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signer
            .sign(&self.rng, message)
            .expect("P-256 signing with a valid key cannot fail")
            .as_ref()
            .to_vec()
    }

    /// PKCS#10 request for D, subject CN = node name.
    pub fn csr(&self) -> Result<Vec<u8>, TeeError> {
        let pkcs8 = rustls_pki_types_der(&self.pkcs8);
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_ECDSA_P256_SHA256)
            .map_err(internal)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, self.node.as_str());
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key).map_err(internal)?;
        Ok(csr.der().to_vec())
    }
}

fn rustls_pki_types_der(bytes: &[u8]) -> rustls_pki_types::PrivatePkcs8KeyDer<'_> {
    rustls_pki_types::PrivatePkcs8KeyDer::from(bytes)
}
