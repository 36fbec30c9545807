//! The history hash chain: canonical encoding of an entry and its SHA-256 link.
//!
//! Encoding (all integers big-endian):
//!
//! ```text
//! hash = SHA-256( "CUSTOS-HISTORY-V1"
//!               || prev_hash (32 raw bytes)
//!               || i64 seq || i64 at_ms
//!               || str kind || opt request_id || str actor || opt key_id || opt path
//!               || u32 approver count || str approver ...
//!               || opt node || str outcome || str detail || i64 duration_us )
//! str(s)  = u32 byte length || UTF-8 bytes
//! opt(s)  = 0x00 (absent) | 0x01 || str(s)
//! ```
//!
//! Every variable-length field carries its length and every optional field a presence byte, so
//! no two different entries encode to the same bytes (moving text between neighbouring fields,
//! or turning an empty string into an absent one, changes the hash).

use sha2::{Digest, Sha256};

/// Domain separation: these hashes can never collide with another Custos hash input.
const DOMAIN_TAG: &[u8] = b"CUSTOS-HISTORY-V1";

/// `prev_hash` of the first entry: 32 zero bytes, as hex.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Borrowed view of the hashed fields, so `NewEntry` and `Entry` share one encoder.
pub(crate) struct Body<'a> {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: &'a str,
    pub request_id: Option<&'a str>,
    pub actor: &'a str,
    pub key_id: Option<&'a str>,
    pub path: Option<&'a str>,
    pub approvers: &'a [String],
    pub node: Option<&'a str>,
    pub outcome: &'a str,
    pub detail: &'a str,
    pub duration_us: i64,
}

fn put_str(h: &mut Sha256, s: &str) {
    // Field limits keep every string far below 4 GiB, so u32 never truncates; saturating
    // rather than `as` makes that assumption harmless if limits ever change.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    h.update(len.to_be_bytes());
    h.update(s.as_bytes());
}

fn put_opt(h: &mut Sha256, s: Option<&str>) {
    match s {
        None => h.update([0u8]),
        Some(s) => {
            h.update([1u8]);
            put_str(h, s);
        }
    }
}

/// The chain link of one entry.
pub(crate) fn link(prev: &[u8; 32], b: &Body<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN_TAG);
    h.update(prev);
    h.update(b.seq.to_be_bytes());
    h.update(b.at_ms.to_be_bytes());
    put_str(&mut h, b.kind);
    put_opt(&mut h, b.request_id);
    put_str(&mut h, b.actor);
    put_opt(&mut h, b.key_id);
    put_opt(&mut h, b.path);
    let count = u32::try_from(b.approvers.len()).unwrap_or(u32::MAX);
    h.update(count.to_be_bytes());
    for a in b.approvers {
        put_str(&mut h, a);
    }
    put_opt(&mut h, b.node);
    put_str(&mut h, b.outcome);
    put_str(&mut h, b.detail);
    h.update(b.duration_us.to_be_bytes());
    h.finalize().into()
}

/// Parses a stored hash. Only the exact form the writer produces (64 lower-case hex digits) is
/// accepted, so a hash column cannot be "equal" in two spellings.
pub(crate) fn parse_hash(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body<'a>(approvers: &'a [String], detail: &'a str) -> Body<'a> {
        Body {
            seq: 1,
            at_ms: 2,
            kind: "sign",
            request_id: None,
            actor: "alice",
            key_id: Some("k"),
            path: Some("m/0"),
            approvers,
            node: None,
            outcome: "ok",
            detail,
            duration_us: 3,
        }
    }

    #[test]
    fn genesis_parses() {
        assert_eq!(parse_hash(GENESIS_HASH), Some([0u8; 32]));
        assert_eq!(
            parse_hash(&GENESIS_HASH.to_uppercase().replace('0', "A")),
            None
        );
        assert_eq!(parse_hash("00"), None);
    }

    #[test]
    fn encoding_is_unambiguous() {
        let prev = [7u8; 32];
        let ab = vec!["a,b".to_string()];
        let a_b = vec!["a".to_string(), "b".to_string()];
        assert_ne!(link(&prev, &body(&ab, "")), link(&prev, &body(&a_b, "")));

        // Absent vs empty optional field.
        let none = vec![];
        let mut x = body(&none, "");
        let h1 = link(&prev, &x);
        x.request_id = Some("");
        assert_ne!(h1, link(&prev, &x));

        // Text shifted between adjacent fields.
        let mut y = body(&none, "");
        y.outcome = "okd";
        let mut z = body(&none, "d");
        z.outcome = "ok";
        y.detail = "";
        assert_ne!(link(&prev, &y), link(&prev, &z));

        // The previous link is bound.
        assert_ne!(link(&[0u8; 32], &x), link(&prev, &x));
    }
}
