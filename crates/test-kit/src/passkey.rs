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
    /// The credential id.
    pub id: Vec<u8>,
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
            id: rand::random::<[u8; 16]>().to_vec(),
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

    /// What a browser on `origin` answers to `navigator.credentials.create(options)`
    /// (`options` as a relying party sends them, `{"publicKey": ...}`) with this passkey:
    /// the `PublicKeyCredential` as JSON, with a `none` attestation, the user verified.
    pub fn register(&self, options: &serde_json::Value, origin: &str) -> serde_json::Value {
        let o = &options["publicKey"];
        let made = Made {
            kind: "webauthn.create".into(),
            challenge: o["challenge"].as_str().unwrap().into(),
            origin: origin.into(),
            cross_origin: false,
            rp_id: o["rp"]["id"].as_str().unwrap().into(),
            // UP, UV, AT (attested credential data follows).
            flags: 0x45,
            counter: 0,
        };
        let client = made.client_data();
        // The point's coordinates: the last 64 bytes of the uncompressed point ending the SPKI.
        let (x, y) = self.spki[self.spki.len() - 64..].split_at(32);
        let key = coset::CoseKeyBuilder::new_ec2_pub_key(
            coset::iana::EllipticCurve::P_256,
            x.to_vec(),
            y.to_vec(),
        )
        .algorithm(coset::iana::Algorithm::ES256)
        .build();
        let mut data = Sha256::digest(made.rp_id.as_bytes()).to_vec();
        data.push(made.flags);
        data.extend_from_slice(&made.counter.to_be_bytes());
        data.extend_from_slice(&[0; 16]);
        data.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
        data.extend_from_slice(&self.id);
        data.extend_from_slice(&coset::CborSerializable::to_vec(key).unwrap());
        use coset::cbor::value::Value;
        let object = Value::Map(vec![
            (Value::Text("fmt".into()), Value::Text("none".into())),
            (Value::Text("attStmt".into()), Value::Map(vec![])),
            (Value::Text("authData".into()), Value::Bytes(data)),
        ]);
        let mut attestation = Vec::new();
        coset::cbor::ser::into_writer(&object, &mut attestation).unwrap();
        self.credential(serde_json::json!({
            "attestationObject": b64(&attestation),
            "clientDataJSON": b64(&client),
        }))
    }

    /// A `PublicKeyCredential` of this passkey with `response`, as JSON.
    fn credential(&self, response: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "id": b64(&self.id),
            "rawId": b64(&self.id),
            "type": "public-key",
            "extensions": {},
            "response": response,
        })
    }

    /// What a browser on `origin` answers to `navigator.credentials.get(options)` with this
    /// passkey, user verified, with the next counter: the `PublicKeyCredential` as JSON.
    pub fn assert(&self, options: &serde_json::Value, origin: &str) -> serde_json::Value {
        let o = &options["publicKey"];
        let made = Made {
            challenge: o["challenge"].as_str().unwrap().into(),
            rp_id: o["rpId"].as_str().unwrap().into(),
            ..Made::honest(origin, b"", self.next_counter())
        };
        self.assertion_response(&made)
    }

    /// The `PublicKeyCredential` JSON of the assertion `made`, signed with this passkey.
    pub fn assertion_response(&self, made: &Made) -> serde_json::Value {
        let (data, client, signature) = made.sign(self);
        self.credential(serde_json::json!({
            "authenticatorData": b64(&data),
            "clientDataJSON": b64(&client),
            "signature": b64(&signature),
            "userHandle": null,
        }))
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
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

    /// The client data JSON the browser writes.
    pub fn client_data(&self) -> Vec<u8> {
        serde_json::json!({
            "type": self.kind,
            "challenge": self.challenge,
            "origin": self.origin,
            "crossOrigin": self.cross_origin,
        })
        .to_string()
        .into_bytes()
    }

    /// (authenticator data, client data JSON, signature DER) signed by `by`.
    pub fn sign(&self, by: &Passkey) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let client = self.client_data();
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

/// The admin of a chain file (admin certificate, then Admin CA, PEM) as verifiers see it,
/// under the root of `pki`, and the two certificates (DER).
pub fn verified_chain(
    pki: &custos_pki::PkiDir,
    chain_pem: &str,
) -> (custos_pki::VerifiedAdmin, Vec<Vec<u8>>) {
    let ders: Vec<Vec<u8>> = pem::parse_many(chain_pem)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect();
    let root =
        custos_pki::TrustRoot::from_der(&pem_to_der(&pki.root_pem().unwrap(), "root").unwrap())
            .unwrap();
    let admin = root.verify_admin(&ders[0], &ders[1], crate::now()).unwrap();
    (admin, ders)
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
