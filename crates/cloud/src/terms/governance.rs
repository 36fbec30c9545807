//! The terms of a `governance` request: the log entry the governors approve, minus its
//! request id and expiry (the row's) and its approvals (collected on the row).
//!
//! Stored as `{"kind":"governance","version":N,"prev":"<32 bytes hex>","change":"<hex of the
//! postcard encoding of the wire GovChange>"}`: the TEE's own encoding of the change, so what
//! is read back is byte for byte what the admins approved.

use custos_wire::approval::Approval;
use custos_wire::governance::{GovChange, GovEntry};
use custos_wire::protocol::RequestMeta;
use serde::{Deserialize, Serialize};

/// The entry a governance request appends to its cluster's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovTerms {
    /// Its position: the log's version when the request was made, plus one (0: genesis).
    pub version: u64,
    /// Hash of the log's head when the request was made (zeros for a genesis).
    #[serde(with = "super::hex_bytes")]
    pub prev: [u8; 32],
    /// The change.
    #[serde(with = "super::postcard_hex")]
    pub change: GovChange,
}

impl GovTerms {
    /// Checks what serde cannot: the change keeps the log's limits and canonical forms, and
    /// only a genesis (and every genesis) is version 0 after a zero hash.
    pub fn check(&self) -> Result<(), String> {
        self.change.check_limits().map_err(|e| e.to_string())?;
        let genesis = matches!(self.change, GovChange::Genesis { .. });
        if genesis != (self.version == 0) || (genesis && self.prev != [0; 32]) {
            return Err(format!(
                "a {} change at version {}",
                String::from_utf8_lossy(self.change.tag()),
                self.version
            ));
        }
        Ok(())
    }

    /// The entry as the governors sign and the TEEs apply it.
    pub fn entry(&self, meta: RequestMeta, approvals: Vec<Approval>) -> GovEntry {
        GovEntry {
            version: self.version,
            prev: self.prev,
            meta,
            change: self.change.clone(),
            approvals,
        }
    }
}
