//! Cluster membership (issue 12, item 1): attacks by a "rogue" device — a P-256 key made
//! outside any TEE, holding a **genuine** certificate of cluster dc1 (one CSR signed by the
//! Cluster CA is all it took). Each test is the attacker's: it must be refused by name, with
//! no ciphertext produced and nothing stored.
//!
//! Against the code before membership every one of these attacks succeeded: `ExportKeys`
//! sealed the requested seeds to the rogue key, and `ImportKeys` stored a seed the rogue chose.

mod bridge;

use crate::common::*;
use custos_pki::{DeviceChain, TrustRoot};
use custos_tee_core::sync;
use custos_tee_core::wallet::Wallet;
use custos_wire::protocol::{CertChain, KeyTransfer, Origin, Request, Response, TeeError};
use zeroize::Zeroizing;

/// The rogue: its PKCS#8 key and its genuine dc1 chain.
struct Rogue {
    pkcs8: Vec<u8>,
    chain: CertChain,
}

impl Rogue {
    fn new(pki: &Pki) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["dc1-rogue.dc1.custos".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dc1-rogue");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let der = |pem: &str| custos_pki::pem_to_der(pem, "cert").unwrap();
        let chain = CertChain {
            device: der(&pki.pki.sign_device_csr(CLUSTER, &csr).unwrap()),
            cluster_ca: der(&pki.pki.cluster_ca_pem(CLUSTER).unwrap()),
            device_ca: der(&pki.pki.device_ca_pem().unwrap()),
        };
        Rogue {
            pkcs8: key.serialize_der(),
            chain,
        }
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.pkcs8, &rng)
            .unwrap()
            .sign(&rng, message)
            .unwrap()
            .as_ref()
            .to_vec()
    }
}

fn identity(root: &TrustRoot, chain: &CertChain) -> custos_pki::DeviceIdentity {
    root.verify_device(&DeviceChain::from(chain.clone()), Some(CLUSTER), now())
        .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn node_chain(tee: &mut Tee) -> CertChain {
    match tee.call(&Request::DeviceChain).unwrap() {
        Response::DeviceChain(c) => c,
        r => panic!("unexpected {r:?}"),
    }
}

/// A rogue with a genuine certificate asks node1's TEE for a wallet seed.
#[test]
#[ignore = "issue 12 item 1 (membership, plan step D2): succeeds against the ungoverned TEE"]
fn rogue_export_keys_gets_no_ciphertext() {
    let mut fx = Fixture::new();
    let wallet = fx.create_wallet(1, &["alice"]);
    let rogue = Rogue::new(&fx.pki);
    let answer = fx.tee.call(&Request::ExportKeys {
        requester: rogue.chain.clone(),
        key_ids: vec![wallet.key_id.clone()],
    });
    match answer {
        Ok(Response::KeyTransfer(t)) => panic!(
            "the rogue received {} bytes of ciphertext sealed to its own key",
            t.ciphertext.len()
        ),
        other => {
            let e = refusal(other);
            assert!(matches!(e, TeeError::RequesterRejected(_)), "{e:?}");
        }
    }
}

/// A rogue with a genuine certificate pushes a seed it chose into node1's TEE.
#[test]
#[ignore = "issue 12 item 1 (membership, plan step D2): succeeds against the ungoverned TEE"]
fn rogue_import_keys_stores_nothing() {
    let mut fx = Fixture::new();
    let rogue = Rogue::new(&fx.pki);
    let root = fx.pki.root.clone();
    let sender = identity(&root, &rogue.chain);
    let recipient = identity(&root, &node_chain(&mut fx.tee));
    let before = fx.tee.keys();

    // The planted key: a seed the rogue knows, in the format of a synced wallet record.
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let planted = Wallet::from_seed(
        &secp,
        Zeroizing::new(vec![0x42; 32]),
        1,
        Origin::Generated,
        now(),
    )
    .unwrap();
    let key_ids = vec![planted.info.key_id.clone()];
    let context = sync::transfer_context(
        CLUSTER,
        &sender.fingerprint,
        &recipient.fingerprint,
        &key_ids,
    );
    let (enc, ciphertext) = custos_wire::seal::seal_with(
        &mut rand_core::OsRng,
        &recipient.public_key,
        &context,
        &sync::pack(&[planted.to_record()]),
        TeeError::TransferRejected,
    )
    .unwrap();
    let signature = rogue.sign(&sync::transfer_transcript(&context, &enc, &ciphertext));
    let answer = fx.tee.call(&Request::ImportKeys {
        transfer: KeyTransfer {
            cluster: CLUSTER.into(),
            sender: rogue.chain.clone(),
            recipient_fingerprint: recipient.fingerprint,
            key_ids,
            enc,
            ciphertext,
            signature,
        },
    });
    if let Ok(Response::KeysImported { imported, .. }) = &answer {
        panic!("node1 stored {} key(s) the rogue chose", imported.len());
    }
    let e = refusal(answer);
    assert!(matches!(e, TeeError::TransferRejected(_)), "{e:?}");
    assert_eq!(fx.tee.keys(), before, "nothing may be stored");
}
