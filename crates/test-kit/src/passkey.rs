//! A software passkey: a P-256 key made here, and the assertions a browser and its
//! authenticator make with it for `navigator.credentials.get`, each field spoilable so that
//! an attack test can make what a phishing site, a cloned authenticator or a careless
//! authenticator would.

use std::sync::atomic::{AtomicU32, Ordering};

use custos_pki::webauthn::approval_challenge;
use custos_pki::{issue_passkey_admin, pem_to_der, Validity};
use custos_wire::approval::{Approval, PasskeyAssertion};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use sha2::{Digest, Sha256};

use crate::pki::Pki;

/// The console origin test passkeys are certified for.
pub const ORIGIN: &str = "https://console.custos.test";

/// A passkey held by a software authenticator that counts its signatures.
pub struct Passkey {
    key: EcdsaKeyPair,
    /// The public key, SubjectPublicKeyInfo DER (what the Admin CA certifies).
    pub spki: Vec<u8>,
    counter: AtomicU32,
}

impl Default for Passkey {
    fn default() -> Self {
        Self::new()
    }
}

impl Passkey {
    /// A new key whose counter starts at 0 (the first assertion carries 1).
    pub fn new() -> Self {
        let generated = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &generated.serialize_der(),
            &SystemRandom::new(),
        )
        .unwrap();
        Passkey {
            key,
            spki: generated.public_key_der(),
            counter: AtomicU32::new(0),
        }
    }

    /// The key fingerprint approvals are counted by (SHA-256 of the SPKI).
    pub fn fp(&self) -> [u8; 32] {
        Sha256::digest(&self.spki).into()
    }

    /// The next value of the signature counter, as a counting authenticator reports it.
    pub fn next_counter(&self) -> u32 {
        self.counter.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// What a browser and authenticator produce for one `navigator.credentials.get`.
#[derive(Clone, Debug)]
pub struct Made {
    pub kind: String,
    pub challenge: String,
    pub origin: String,
    pub cross_origin: bool,
    pub rp_id: String,
    pub flags: u8,
    pub counter: u32,
}

impl Made {
    /// An honest assertion of `message` on `origin` (an `https://host` origin), user present
    /// and verified, with `counter`.
    pub fn honest(origin: &str, message: &[u8], counter: u32) -> Self {
        Made {
            kind: "webauthn.get".into(),
            challenge: approval_challenge(message),
            origin: origin.into(),
            cross_origin: false,
            rp_id: origin.trim_start_matches("https://").into(),
            flags: 0x05,
            counter,
        }
    }

    /// (authenticator data, client data JSON, signature DER) signed by `by`.
    pub fn sign(&self, by: &Passkey) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let client = serde_json::json!({
            "type": self.kind,
            "challenge": self.challenge,
            "origin": self.origin,
            "crossOrigin": self.cross_origin,
        })
        .to_string()
        .into_bytes();
        let mut data = Sha256::digest(self.rp_id.as_bytes()).to_vec();
        data.push(self.flags);
        data.extend_from_slice(&self.counter.to_be_bytes());
        let mut signed = data.clone();
        signed.extend_from_slice(&Sha256::digest(&client));
        let sig = by
            .key
            .sign(&SystemRandom::new(), &signed)
            .unwrap()
            .as_ref()
            .to_vec();
        (data, client, sig)
    }
}

/// An admin whose key is a passkey the Admin CA certified for [`ORIGIN`].
pub struct PasskeyAdmin {
    pub name: String,
    pub passkey: Passkey,
    pub cert_der: Vec<u8>,
    pub admin_ca_der: Vec<u8>,
}

impl PasskeyAdmin {
    /// Its approval of `message`: an honest assertion with the next counter value.
    pub fn approve(&self, message: &[u8]) -> Approval {
        let made = Made::honest(ORIGIN, message, self.passkey.next_counter());
        self.approval(&made)
    }

    /// The approval `made` signed by this admin's passkey, as the console sends it.
    pub fn approval(&self, made: &Made) -> Approval {
        self.approval_signed_by(made, &self.passkey)
    }

    /// The approval `made` signed by `by` under this admin's certificate (another
    /// authenticator's key: an uncertified passkey).
    pub fn approval_signed_by(&self, made: &Made, by: &Passkey) -> Approval {
        let (authenticator_data, client_data_json, signature) = made.sign(by);
        Approval {
            admin_cert: self.cert_der.clone(),
            admin_ca: self.admin_ca_der.clone(),
            signature,
            webauthn: Some(PasskeyAssertion {
                authenticator_data,
                client_data_json,
            }),
        }
    }
}

impl Pki {
    /// Certifies a new passkey of admin `name` for [`ORIGIN`] (the registration ceremony's
    /// outcome).
    pub fn enroll_passkey_admin(&self, name: &str) -> PasskeyAdmin {
        let passkey = Passkey::new();
        let cert = issue_passkey_admin(&self.pki, name, &passkey.spki, ORIGIN, Validity::days(30))
            .unwrap();
        PasskeyAdmin {
            name: name.into(),
            passkey,
            cert_der: pem_to_der(&cert.cert_pem, "admin").unwrap(),
            admin_ca_der: pem_to_der(&cert.admin_ca_pem, "admin CA").unwrap(),
        }
    }
}
