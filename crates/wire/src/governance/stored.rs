//! Governance entries as stored (sealed in every member TEE, in the bridge's database):
//! the current encoding, and the encoding of protocol 2, whose approvals had no `webauthn`
//! part, so that logs written before passkeys still open after an upgrade.
//!
//! The two never read as each other: in the older encoding, an approval's signature is
//! followed by the next approval's certificate length (a varint whose first byte is at
//! least 0x80 for any certificate over 127 bytes) or by the end of the entry, where the
//! current encoding needs an `Option` tag (0 or 1). An entry without approvals is encoded
//! the same way by both. Either decoding must take every byte: a record with a byte left
//! over (a current entry whose last tag was altered, read the old way) is refused.

use serde::Deserialize;

use super::{GovChange, GovEntry};
use crate::approval::Approval;
use crate::protocol::RequestMeta;

/// An approval as protocol 2 encoded it.
#[derive(Deserialize)]
struct ApprovalV2 {
    admin_cert: Vec<u8>,
    admin_ca: Vec<u8>,
    signature: Vec<u8>,
}

/// An entry as protocol 2 encoded it.
#[derive(Deserialize)]
struct GovEntryV2 {
    version: u64,
    prev: [u8; 32],
    meta: RequestMeta,
    change: GovChange,
    approvals: Vec<ApprovalV2>,
}

/// Decodes `bytes` as one `T` with nothing left over.
fn whole<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    match postcard::take_from_bytes(bytes)? {
        (value, []) => Ok(value),
        _ => Err(postcard::Error::DeserializeBadEncoding),
    }
}

impl GovEntry {
    /// Decodes a stored entry: this version's encoding, else protocol 2's (whose approvals
    /// are key-file signatures). The first decoding's error is returned when neither reads.
    pub fn decode_stored(bytes: &[u8]) -> Result<GovEntry, postcard::Error> {
        let first = match whole::<GovEntry>(bytes) {
            Ok(e) => return Ok(e),
            Err(e) => e,
        };
        let old: GovEntryV2 = whole(bytes).map_err(|_| first)?;
        Ok(GovEntry {
            version: old.version,
            prev: old.prev,
            meta: old.meta,
            change: old.change,
            approvals: old
                .approvals
                .into_iter()
                .map(|a| Approval {
                    admin_cert: a.admin_cert,
                    admin_ca: a.admin_ca,
                    signature: a.signature,
                    webauthn: None,
                })
                .collect(),
        })
    }
}
