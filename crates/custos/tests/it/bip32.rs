//! BIP-32 through the real TEE process: official vectors and random paths, verified with an
//! independent implementation (RustCrypto k256).

use std::str::FromStr;

use crate::common::bip32_vectors::{parse_path, INVALID, VALID};
use crate::common::*;
use bitcoin::bip32::{ChildNumber, Xpriv, Xpub};
use custos_wire::protocol::{Request, Response};
use rand::{Rng, SeedableRng};

fn xpub_at(fx: &mut Fixture, key: &[u8], path: &[u32]) -> Xpub {
    match fx
        .tee
        .call(&Request::GetXpub {
            key_id: key.to_vec(),
            path: path.to_vec(),
        })
        .unwrap()
    {
        Response::Xpub { xpub, public_key } => {
            let x = Xpub::from_str(&xpub).unwrap();
            assert_eq!(x.public_key.serialize().to_vec(), public_key);
            x
        }
        r => panic!("unexpected {r:?}"),
    }
}

#[test]
fn official_vectors_1_to_4_through_the_tee_process() {
    let mut fx = Fixture::new();
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(32);
    for (seed_hex, chains) in VALID {
        let seed = hex::decode(seed_hex).unwrap();
        let info = fx.import_seed(&seed, 1).unwrap();
        assert_eq!(info.xpub, chains[0].1, "root xpub of seed {seed_hex}");
        for (path, xpub, xprv) in chains.iter() {
            // The vector's own xprv and xpub agree (checks the test data, outside the TEE).
            let from_prv = Xpub::from_priv(&secp, &Xpriv::from_str(xprv).unwrap());
            assert_eq!(from_prv.to_string(), *xpub, "test data for {path}");

            let raw = parse_path(path);
            let got = xpub_at(&mut fx, &info.key_id, &raw);
            assert_eq!(got.to_string(), *xpub, "xpub at {path} for seed {seed_hex}");

            let digest: [u8; 32] = rng.gen();
            let Response::Signature(sig) = fx.sign(&info.key_id, &raw, digest, &["alice"]).unwrap()
            else {
                panic!("expected a signature");
            };
            let expected = Xpub::from_str(xpub).unwrap().public_key.serialize();
            verify_independently(&sig, &digest, &expected);
        }
    }
}

/// Extended-key parsing that applies every BIP-32 rule, including those vector 5 exercises
/// and a plain base58 decoder would let through.
fn strict_parse(s: &str) -> Result<(), String> {
    let data = bitcoin::base58::decode_check(s).map_err(|e| e.to_string())?;
    if data.len() != 78 {
        return Err("length".into());
    }
    let depth = data[4];
    let parent = &data[5..9];
    let index = &data[9..13];
    if depth == 0 && (parent != [0; 4] || index != [0; 4]) {
        return Err("zero depth with non-zero parent fingerprint or index".into());
    }
    match &data[..4] {
        [0x04, 0x88, 0xb2, 0x1e] => Xpub::decode(&data).map(|_| ()).map_err(|e| e.to_string()),
        [0x04, 0x88, 0xad, 0xe4] => {
            if data[45] != 0 {
                return Err("private key prefix".into());
            }
            Xpriv::decode(&data).map(|_| ()).map_err(|e| e.to_string())
        }
        _ => Err("unknown version".into()),
    }
}

#[test]
fn official_vector_5_invalid_keys_are_rejected() {
    for (key, why) in INVALID {
        assert!(
            strict_parse(key).is_err(),
            "accepted invalid key ({why}): {key}"
        );
    }
    // The same parser accepts every valid vector key.
    for (_, chains) in VALID {
        for (path, xpub, xprv) in chains.iter() {
            strict_parse(xpub).unwrap_or_else(|e| panic!("{path} xpub: {e}"));
            strict_parse(xprv).unwrap_or_else(|e| panic!("{path} xprv: {e}"));
        }
    }
}

#[test]
fn random_paths_sign_low_s_and_recover_the_derived_child() {
    let mut fx = Fixture::new();
    let wallet = fx.create_wallet(1, &["bob"]);
    let secp = bitcoin::secp256k1::Secp256k1::new();
    let root = Xpub::from_str(&wallet.xpub).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for round in 0..60 {
        let hardened: Vec<u32> = (0..rng.gen_range(0..3))
            .map(|_| rng.gen_range(0..1u32 << 31) | 1 << 31)
            .collect();
        let normal: Vec<u32> = (0..rng.gen_range(0..4))
            .map(|_| rng.gen_range(0..1u32 << 31))
            .collect();
        let path: Vec<u32> = hardened.iter().chain(&normal).copied().collect();
        // Expected child key by public derivation: from the root xpub when the path has no
        // hardened step, else from the TEE's xpub at the hardened prefix.
        let base = if hardened.is_empty() {
            root
        } else {
            xpub_at(&mut fx, &wallet.key_id, &hardened)
        };
        let steps: Vec<ChildNumber> = normal.iter().map(|&i| ChildNumber::from(i)).collect();
        let expected = base.derive_pub(&secp, &steps).unwrap();
        assert_eq!(
            xpub_at(&mut fx, &wallet.key_id, &path),
            expected,
            "round {round}"
        );

        let digest: [u8; 32] = rng.gen();
        let Response::Signature(sig) = fx.sign(&wallet.key_id, &path, digest, &["alice"]).unwrap()
        else {
            panic!("expected a signature");
        };
        verify_independently(&sig, &digest, &expected.public_key.serialize());
    }
}
