//! The public keys a sign result is checked against: a wallet's (or threshold key's) child
//! at a request's path, derived from the recorded xpub.
//!
//! Requests of one account share every step of their paths but the last (`m/84'/0'/0'/0/i`
//! is derived from the xpub of `m/84'/0'/0'/0`), so the parent of each path is kept, parsed
//! and derived, and a request costs one derivation step instead of a base58 parse and one
//! step per level. Only public keys are held: nothing here is secret.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;

use bitcoin::bip32::Xpub;
use bitcoin::secp256k1::{All, PublicKey, Secp256k1};
use custos_cloud_api::path::derive_xpub;

/// Most parents kept (the map is emptied when full: a miss costs only a derivation).
const MAX_PARENTS: usize = 4096;

/// Parsed and derived parents of recently checked paths, keyed by the recorded xpub and
/// the path without its last step.
#[derive(Default)]
pub struct ChildKeys {
    parents: Mutex<HashMap<(String, Vec<u32>), Xpub>>,
}

impl ChildKeys {
    /// The public key of the child of `xpub` (its recorded base58 form) at `path`, which
    /// must have no hardened step.
    pub fn child_key(
        &self,
        secp: &Secp256k1<All>,
        xpub: &str,
        path: &[u32],
    ) -> Result<PublicKey, String> {
        let Some((&last, parent_path)) = path.split_last() else {
            return Ok(Xpub::from_str(xpub)
                .map_err(|e| format!("recorded xpub: {e}"))?
                .public_key);
        };
        let key = (xpub.to_string(), parent_path.to_vec());
        let cached = self
            .parents
            .lock()
            .expect("child key cache lock")
            .get(&key)
            .copied();
        let parent = match cached {
            Some(p) => p,
            None => {
                let root = Xpub::from_str(xpub).map_err(|e| format!("recorded xpub: {e}"))?;
                let parent = derive_xpub(secp, &root, parent_path).map_err(|e| e.to_string())?;
                let mut parents = self.parents.lock().expect("child key cache lock");
                if parents.len() >= MAX_PARENTS {
                    parents.clear();
                }
                parents.insert(key, parent);
                parent
            }
        };
        Ok(derive_xpub(secp, &parent, &[last])
            .map_err(|e| e.to_string())?
            .public_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::bip32::{ChildNumber, Xpriv};
    use bitcoin::NetworkKind;

    #[test]
    fn cached_parents_give_the_keys_a_full_derivation_gives() {
        let secp = Secp256k1::new();
        let master = Xpriv::new_master(NetworkKind::Main, &[3u8; 32]).unwrap();
        let xpub = Xpub::from_priv(&secp, &master);
        let other = Xpub::from_priv(
            &secp,
            &Xpriv::new_master(NetworkKind::Main, &[4u8; 32]).unwrap(),
        );
        let keys = ChildKeys::default();
        for path in [
            vec![],
            vec![5],
            vec![0, 1],
            vec![0, 2],
            vec![1, 1],
            vec![0, 1],
            vec![7, 0, 3],
        ] {
            for root in [&xpub, &other] {
                let steps: Vec<ChildNumber> = path.iter().map(|&i| ChildNumber::from(i)).collect();
                let want = root.derive_pub(&secp, &steps).unwrap().public_key;
                let got = keys.child_key(&secp, &root.to_string(), &path).unwrap();
                assert_eq!(got, want, "path {path:?}");
            }
        }
        // A hardened step cannot be derived publicly, whether in the parent or the last step.
        assert!(keys
            .child_key(&secp, &xpub.to_string(), &[1 << 31, 0])
            .is_err());
        assert!(keys
            .child_key(&secp, &xpub.to_string(), &[0, 1 << 31])
            .is_err());
        assert!(keys.child_key(&secp, "xpub-garbage", &[0, 1]).is_err());
    }
}
