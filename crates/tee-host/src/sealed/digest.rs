//! The digest of a store's whole record set, sealed in its epoch record.
//!
//! Each record is sealed with its name and version as associated data, which catches a record
//! edited, moved or copied from another store, but not a record *resurrected*: someone who
//! kept an old copy of the store can put a deleted record (a used presignature, a consumed
//! request id) back beside today's records. The set digest names exactly which records exist,
//! so the store refuses to open with one added or missing.
//!
//! Format (version 1): records are spread over [`BUCKETS`] buckets by the first 12 bits of
//! SHA-256 of their name. A bucket's digest is SHA-256 of `"CUSTOS-STORE-BUCKET-V1\0"` then,
//! for each record of the bucket in name order, `u32 BE name length ‖ name ‖ SHA-256(sealed
//! blob)`; an empty bucket's digest is 32 zero bytes. The set digest is SHA-256 of
//! `"CUSTOS-STORE-SET-V1\0"` ‖ the bucket digests in bucket order. A commit recomputes only the
//! buckets it touched, so its cost does not grow with the store (a sum or XOR of record
//! hashes would be incremental too, but an attacker holding many old records can solve for a
//! combination that matches it).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Number of buckets (12 bits of the name's hash).
const BUCKETS: usize = 4096;
const BUCKET_DOMAIN: &[u8] = b"CUSTOS-STORE-BUCKET-V1\0";
const SET_DOMAIN: &[u8] = b"CUSTOS-STORE-SET-V1\0";

/// The record set's hashes, bucketed, with each bucket's digest kept up to date.
pub(crate) struct SetDigest {
    buckets: Vec<BTreeMap<String, [u8; 32]>>,
    digests: Vec<[u8; 32]>,
}

fn bucket_of(name: &str) -> usize {
    let h = Sha256::digest(name.as_bytes());
    (usize::from(h[0]) << 4) | usize::from(h[1] >> 4)
}

impl SetDigest {
    /// The digest state of an empty store.
    pub(crate) fn new() -> Self {
        SetDigest {
            buckets: vec![BTreeMap::new(); BUCKETS],
            digests: vec![[0u8; 32]; BUCKETS],
        }
    }

    /// Records that `name` now holds `blob` (`None`: it was deleted). The bucket's digest is
    /// recomputed at [`SetDigest::refresh`].
    pub(crate) fn set(&mut self, name: &str, blob: Option<&[u8]>) -> usize {
        let b = bucket_of(name);
        match blob {
            Some(blob) => {
                self.buckets[b].insert(name.to_string(), Sha256::digest(blob).into());
            }
            None => {
                self.buckets[b].remove(name);
            }
        }
        b
    }

    /// Recomputes the digests of `buckets`.
    pub(crate) fn refresh(&mut self, buckets: impl IntoIterator<Item = usize>) {
        for b in buckets {
            let entries = &self.buckets[b];
            self.digests[b] = if entries.is_empty() {
                [0u8; 32]
            } else {
                let mut h = Sha256::new();
                h.update(BUCKET_DOMAIN);
                for (name, blob) in entries {
                    h.update((name.len() as u32).to_be_bytes());
                    h.update(name.as_bytes());
                    h.update(blob);
                }
                h.finalize().into()
            };
        }
    }

    /// Recomputes every bucket (after loading a whole store).
    pub(crate) fn refresh_all(&mut self) {
        self.refresh(0..BUCKETS);
    }

    /// The set digest.
    pub(crate) fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(SET_DOMAIN);
        for d in &self.digests {
            h.update(d);
        }
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(records: &[(&str, &[u8])]) -> [u8; 32] {
        let mut s = SetDigest::new();
        for (n, b) in records {
            s.set(n, Some(b));
        }
        s.refresh_all();
        s.digest()
    }

    #[test]
    fn the_digest_names_the_set_not_the_order_of_changes() {
        let a = of(&[("canary", b"x"), ("wallet/01", b"w1"), ("presign/aa", b"p")]);
        let b = of(&[("presign/aa", b"p"), ("canary", b"x"), ("wallet/01", b"w1")]);
        assert_eq!(a, b);
        // A record added, removed, or with another blob changes it.
        assert_ne!(a, of(&[("canary", b"x"), ("wallet/01", b"w1")]));
        assert_ne!(
            a,
            of(&[("canary", b"x"), ("wallet/01", b"w1"), ("presign/aa", b"q")])
        );
        assert_ne!(
            a,
            of(&[
                ("canary", b"x"),
                ("wallet/01", b"w1"),
                ("presign/aa", b"p"),
                ("k", b"")
            ])
        );
    }

    #[test]
    fn incremental_changes_give_the_digest_of_a_full_recomputation() {
        let mut s = SetDigest::new();
        let mut touched = Vec::new();
        for i in 0..300u32 {
            touched.push(s.set(&format!("r/{i}"), Some(&i.to_be_bytes())));
        }
        s.refresh(touched.drain(..));
        for i in (0..300u32).step_by(3) {
            touched.push(s.set(&format!("r/{i}"), None));
        }
        s.refresh(touched.drain(..));
        let mut full = SetDigest::new();
        for i in (0..300u32).filter(|i| i % 3 != 0) {
            full.set(&format!("r/{i}"), Some(&i.to_be_bytes()));
        }
        full.refresh_all();
        assert_eq!(s.digest(), full.digest());
    }
}
