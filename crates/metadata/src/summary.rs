//! Aggregated refusals: one history row stands for many refused attempts of one kind
//! (count, first and last seen), so an attacker repeating a refused call cannot grow the
//! history, or hold its single writer, at the rate of their attempts.
//!
//! A summary is an ordinary, hash-chained entry (the hash format does not change) whose
//! fields are fixed as follows:
//!
//! ```text
//! kind    = "refusal-summary"
//! actor   = who counted, e.g. "bridge:tls" (handshake refusals) or "bridge:app"
//! outcome = the reason code, e.g. "unknown_issuer"
//! detail  = "count=" u64 " first_ms=" i64 " last_ms=" i64
//!           " samples=" [ hex64 ":" u64 { "," hex64 ":" u64 } ]
//!           " example=" free text to the end of the detail
//! ```
//!
//! `count >= 1`, `first_ms <= last_ms`, at most [`MAX_SUMMARY_SAMPLES`] samples (lower-case
//! hex SHA-256 of a presented leaf certificate, with how many of the attempts presented it;
//! each at least 1, together at most `count`), and `example` at most
//! [`MAX_SUMMARY_EXAMPLE_BYTES`]. [`crate::MetadataDb::append`] refuses a summary row that
//! breaks these rules and [`crate::MetadataDb::verify`] reports one as a break of the chain,
//! so a summary read back is always well-formed.

use crate::{Entry, MetadataError, NewEntry};

/// `kind` of a refusal summary row.
pub const REFUSAL_SUMMARY_KIND: &str = "refusal-summary";

/// Most certificate samples one summary names.
pub const MAX_SUMMARY_SAMPLES: usize = 8;

/// Largest `example` of a summary, in bytes.
pub const MAX_SUMMARY_EXAMPLE_BYTES: usize = 1024;

/// Many refused attempts of one kind, recorded as one history row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusalSummary {
    /// Who counted (the row's `actor`), e.g. "bridge:tls".
    pub source: String,
    /// The reason code shared by every counted attempt (the row's `outcome`).
    pub reason: String,
    /// Attempts counted.
    pub count: u64,
    /// When the first counted attempt happened (Unix milliseconds).
    pub first_seen_ms: i64,
    /// When the last counted attempt happened (Unix milliseconds).
    pub last_seen_ms: i64,
    /// Some presented leaf certificates (SHA-256, lower-case hex) and how many attempts
    /// presented each; the others are only counted.
    pub samples: Vec<(String, u64)>,
    /// One attempt's refusal as it was explained (cut to [`MAX_SUMMARY_EXAMPLE_BYTES`]).
    pub example: String,
}

fn bad(reason: &'static str) -> MetadataError {
    MetadataError::InvalidField {
        field: "detail",
        reason,
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

impl RefusalSummary {
    /// The history entry that records this summary. Fails if the summary breaks the rules
    /// of the module documentation (the example is cut to its limit rather than refused).
    pub fn to_entry(&self) -> Result<NewEntry, MetadataError> {
        let mut example = self.example.replace('\0', "\u{FFFD}");
        if example.len() > MAX_SUMMARY_EXAMPLE_BYTES {
            let mut cut = MAX_SUMMARY_EXAMPLE_BYTES;
            while !example.is_char_boundary(cut) {
                cut -= 1;
            }
            example.truncate(cut);
        }
        let samples = self
            .samples
            .iter()
            .map(|(id, n)| format!("{id}:{n}"))
            .collect::<Vec<_>>()
            .join(",");
        let entry = NewEntry {
            kind: REFUSAL_SUMMARY_KIND.into(),
            actor: self.source.clone(),
            outcome: self.reason.clone(),
            detail: format!(
                "count={} first_ms={} last_ms={} samples={samples} example={example}",
                self.count, self.first_seen_ms, self.last_seen_ms
            ),
            ..Default::default()
        };
        // The same check as on append and on read, so a summary that could not be read back
        // is never written.
        parse_detail(&entry.detail)?;
        Ok(entry)
    }

    /// The summary an entry records: `Ok(None)` if it is not a summary row, an error if it
    /// is one but malformed.
    pub fn from_entry(e: &Entry) -> Result<Option<Self>, MetadataError> {
        if e.kind != REFUSAL_SUMMARY_KIND {
            return Ok(None);
        }
        let d = parse_detail(&e.detail)?;
        Ok(Some(RefusalSummary {
            source: e.actor.clone(),
            reason: e.outcome.clone(),
            count: d.count,
            first_seen_ms: d.first_ms,
            last_seen_ms: d.last_ms,
            samples: d.samples,
            example: d.example,
        }))
    }
}

pub(crate) struct Detail {
    count: u64,
    first_ms: i64,
    last_ms: i64,
    samples: Vec<(String, u64)>,
    example: String,
}

/// Parses and checks a summary's `detail` (format in the module documentation).
pub(crate) fn parse_detail(detail: &str) -> Result<Detail, MetadataError> {
    let (head, example) = detail
        .split_once(" example=")
        .ok_or(bad("refusal summary without example"))?;
    let mut fields = head.split(' ');
    let mut field = |name: &str| -> Result<&str, MetadataError> {
        fields
            .next()
            .and_then(|f| f.strip_prefix(name))
            .and_then(|f| f.strip_prefix('='))
            .ok_or(bad(
                "refusal summary fields are not count, first_ms, last_ms, samples",
            ))
    };
    let count: u64 = field("count")?
        .parse()
        .map_err(|_| bad("refusal summary count is not a number"))?;
    let first_ms: i64 = field("first_ms")?
        .parse()
        .map_err(|_| bad("refusal summary first_ms is not a number"))?;
    let last_ms: i64 = field("last_ms")?
        .parse()
        .map_err(|_| bad("refusal summary last_ms is not a number"))?;
    let samples_text = field("samples")?;
    if fields.next().is_some() {
        return Err(bad("refusal summary has unknown fields"));
    }
    if count == 0 {
        return Err(bad("refusal summary counts no attempt"));
    }
    if first_ms > last_ms {
        return Err(bad("refusal summary first_ms is after last_ms"));
    }
    let mut samples = Vec::new();
    let mut sampled = 0u64;
    if !samples_text.is_empty() {
        for s in samples_text.split(',') {
            if samples.len() == MAX_SUMMARY_SAMPLES {
                return Err(bad("refusal summary has too many samples"));
            }
            let (id, n) = s
                .split_once(':')
                .ok_or(bad("refusal summary sample is not id:count"))?;
            if !is_hex64(id) {
                return Err(bad("refusal summary sample id is not a lower-case SHA-256"));
            }
            let n: u64 = n
                .parse()
                .map_err(|_| bad("refusal summary sample count is not a number"))?;
            if n == 0 {
                return Err(bad("refusal summary sample counts no attempt"));
            }
            sampled = sampled.saturating_add(n);
            samples.push((id.to_owned(), n));
        }
    }
    if sampled > count {
        return Err(bad(
            "refusal summary samples count more attempts than it does",
        ));
    }
    if example.len() > MAX_SUMMARY_EXAMPLE_BYTES {
        return Err(bad("refusal summary example is too long"));
    }
    Ok(Detail {
        count,
        first_ms,
        last_ms,
        samples,
        example: example.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> RefusalSummary {
        RefusalSummary {
            source: "bridge:tls".into(),
            reason: "unknown_issuer".into(),
            count: 10_000,
            first_seen_ms: 5,
            last_seen_ms: 9,
            samples: vec![("ab".repeat(32), 7), ("cd".repeat(32), 3)],
            example: "chain does not reach the Root: example= with spaces".into(),
        }
    }

    fn entry_of(n: NewEntry) -> Entry {
        Entry {
            seq: 1,
            at_ms: 10,
            kind: n.kind,
            request_id: n.request_id,
            actor: n.actor,
            key_id: n.key_id,
            path: n.path,
            approvers: n.approvers,
            node: n.node,
            outcome: n.outcome,
            detail: n.detail,
            duration_us: n.duration_us,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn round_trip() {
        let s = summary();
        let back = RefusalSummary::from_entry(&entry_of(s.to_entry().unwrap())).unwrap();
        assert_eq!(back, Some(s.clone()));
        let none = RefusalSummary {
            samples: vec![],
            example: String::new(),
            ..s
        };
        let back = RefusalSummary::from_entry(&entry_of(none.to_entry().unwrap())).unwrap();
        assert_eq!(back, Some(none));
    }

    /// Breaks one rule of a summary.
    type Breaker = fn(&mut RefusalSummary);

    #[test]
    fn malformed_summaries_are_refused_by_name() {
        let cases: [(Breaker, &str); 5] = [
            (|s| s.count = 0, "counts no attempt"),
            (|s| s.first_seen_ms = 10, "first_ms is after last_ms"),
            (
                |s| s.samples[0].0 = "AB".repeat(32),
                "not a lower-case SHA-256",
            ),
            (|s| s.samples[1].1 = 99_999, "more attempts than it does"),
            (
                |s| s.samples = vec![("ab".repeat(32), 1); 9],
                "too many samples",
            ),
        ];
        for (break_it, why) in cases {
            let mut s = summary();
            break_it(&mut s);
            match s.to_entry() {
                Err(MetadataError::InvalidField { reason, .. }) => {
                    assert!(reason.contains(why), "{reason} vs {why}")
                }
                other => panic!("{why}: {other:?}"),
            }
        }
        assert!(parse_detail("count=1 first_ms=1 last_ms=1 samples= extra=1 example=").is_err());
        assert!(parse_detail("count=1 first_ms=1 last_ms=1 samples=").is_err());
        let long = RefusalSummary {
            example: "é".repeat(MAX_SUMMARY_EXAMPLE_BYTES),
            ..summary()
        };
        let e = long.to_entry().unwrap();
        let back = RefusalSummary::from_entry(&entry_of(e)).unwrap().unwrap();
        assert!(back.example.len() <= MAX_SUMMARY_EXAMPLE_BYTES);
    }
}
