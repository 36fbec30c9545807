//! Size and shape checks for untrusted input before it reaches the database.
//!
//! Everything written to the history may come from a remote request, so each field has a hard
//! byte limit. Over-long `detail` is truncated (it is free text, and refusing to log a request
//! because its error message was long would lose the record); every other field identifies
//! something, so it is rejected rather than silently shortened into a different identity.

use crate::{KeyRecord, MetadataError, NewEntry};

/// Maximum stored size of [`NewEntry::detail`] in bytes, truncation marker included.
pub const MAX_DETAIL_BYTES: usize = 4096;
/// Maximum size in bytes of every other text field (and of each approver name).
pub const MAX_FIELD_BYTES: usize = 256;
/// Maximum number of approvers on one entry.
pub const MAX_APPROVERS: usize = 64;

fn check_text(field: &'static str, s: &str) -> Result<(), MetadataError> {
    if s.len() > MAX_FIELD_BYTES {
        return Err(MetadataError::FieldTooLong {
            field,
            len: s.len(),
            max: MAX_FIELD_BYTES,
        });
    }
    // PostgreSQL TEXT cannot hold NUL; rejecting it on both engines keeps them identical.
    if s.contains('\0') {
        return Err(MetadataError::InvalidField {
            field,
            reason: "contains a NUL character",
        });
    }
    Ok(())
}

pub(crate) fn check_required(field: &'static str, s: &str) -> Result<(), MetadataError> {
    check_text(field, s)?;
    if s.is_empty() {
        return Err(MetadataError::InvalidField {
            field,
            reason: "must not be empty",
        });
    }
    Ok(())
}

fn check_opt(field: &'static str, s: &Option<String>) -> Result<(), MetadataError> {
    match s {
        Some(s) => check_text(field, s),
        None => Ok(()),
    }
}

/// Cuts `detail` to [`MAX_DETAIL_BYTES`] on a character boundary and says so in the text.
fn clamp_detail(detail: String) -> String {
    let detail = if detail.contains('\0') {
        detail.replace('\0', "\u{FFFD}")
    } else {
        detail
    };
    if detail.len() <= MAX_DETAIL_BYTES {
        return detail;
    }
    let marker = format!("...[truncated, {} bytes]", detail.len());
    let mut cut = MAX_DETAIL_BYTES - marker.len();
    while !detail.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + marker.len());
    out.push_str(&detail[..cut]);
    out.push_str(&marker);
    out
}

/// Validates an entry and normalises `detail`; the result is what gets hashed and stored.
pub(crate) fn check_entry(mut e: NewEntry) -> Result<NewEntry, MetadataError> {
    check_required("kind", &e.kind)?;
    check_opt("request_id", &e.request_id)?;
    check_required("actor", &e.actor)?;
    check_opt("key_id", &e.key_id)?;
    check_opt("path", &e.path)?;
    check_opt("node", &e.node)?;
    check_required("outcome", &e.outcome)?;
    if e.approvers.len() > MAX_APPROVERS {
        return Err(MetadataError::FieldTooLong {
            field: "approvers",
            len: e.approvers.len(),
            max: MAX_APPROVERS,
        });
    }
    for a in &e.approvers {
        check_required("approvers", a)?;
        // Stored comma separated: a comma inside a name would split into two approvers.
        if a.contains(',') {
            return Err(MetadataError::InvalidField {
                field: "approvers",
                reason: "an approver name contains ','",
            });
        }
    }
    if e.duration_us < 0 {
        return Err(MetadataError::InvalidField {
            field: "duration_us",
            reason: "must not be negative",
        });
    }
    e.detail = clamp_detail(e.detail);
    // A summary row stands for many attempts: it must say how many, exactly as documented,
    // or it is not written at all.
    if e.kind == crate::summary::REFUSAL_SUMMARY_KIND {
        crate::summary::parse_detail(&e.detail)?;
    }
    Ok(e)
}

/// Validates a key record; `key_id` is returned lower-cased so one key has one spelling.
pub(crate) fn check_key(k: &KeyRecord) -> Result<KeyRecord, MetadataError> {
    if k.key_id.len() != 66 || !k.key_id.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(MetadataError::InvalidField {
            field: "key_id",
            reason: "must be 66 hex digits (a 33-byte compressed public key)",
        });
    }
    check_required("xpub", &k.xpub)?;
    check_required("origin", &k.origin)?;
    check_required("created_on", &k.created_on)?;
    if !(1..=255).contains(&k.quorum) {
        return Err(MetadataError::InvalidField {
            field: "quorum",
            reason: "must be between 1 and 255",
        });
    }
    Ok(KeyRecord {
        key_id: k.key_id.to_ascii_lowercase(),
        ..k.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_truncates_on_char_boundary() {
        let long = "é".repeat(MAX_DETAIL_BYTES);
        let out = clamp_detail(long);
        assert!(out.len() <= MAX_DETAIL_BYTES);
        assert!(out.ends_with(&format!("...[truncated, {} bytes]", 2 * MAX_DETAIL_BYTES)));
        let exact = "x".repeat(MAX_DETAIL_BYTES);
        assert_eq!(clamp_detail(exact.clone()), exact);
        assert_eq!(clamp_detail("a\0b".into()), "a\u{FFFD}b");
    }
}
