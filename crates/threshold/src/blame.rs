//! Who to blame when the library aborts a protocol.
//!
//! cggmp24 0.7.0-alpha.3 exposes blame only through the `Debug` output of private error
//! types (e.g. `SigningError(Aborted(EncProofOfK([(AbortBlame { faulty_party: 1,
//! data_message: 3, proof_message: 4 }, ..)])))`), see docs/threshold-notes.md §5.4. There is no
//! public accessor, so this module parses that text. Recognized shapes (all indexes are the
//! protocol's party indexes, i.e. positions in the session's party list):
//!
//! * `faulty_party: N` (`AbortBlame`, used by signing, keygen and aux-info aborts);
//! * `parties: [a, b]` (keygen `FeldmanVerificationFailed` / `InvalidDataSize`);
//! * `Round1NotReliable([(a, msg_id), ..])` (keygen reliability check);
//! * `sender: N` of a router `AttemptToOverwriteReceivedMsg` (cannot happen: sessions filter
//!   duplicates first);
//! * `msg_id: N` of router `MismatchedMessageType` / `SenderIndexOutOfRange`, mapped back to the
//!   sender through the session's own id → sender record.
//!
//! Anything else (e.g. `MismatchedDelta`, `SignatureInvalid`: identifiable abort is not
//! implemented upstream) blames nobody. Indexes out of range are dropped. If an upgrade of the
//! library changes these `Debug` shapes, blame degrades to "nobody", never to a wrong party
//! outside the session; the tests in `tests/` catch it for the signing abort.

use std::collections::BTreeSet;

/// Parses blamed party indexes (< `n`) out of a library error's `Debug` text.
pub(crate) fn parse_blame(
    debug: &str,
    n: u16,
    sender_of_msg: impl Fn(u64) -> Option<u16>,
) -> Vec<u16> {
    let mut out = BTreeSet::new();
    for v in numbers_after(debug, "faulty_party: ") {
        out.insert(v);
    }
    for list in segments_after(debug, "parties: [") {
        for v in list_numbers(list) {
            out.insert(v);
        }
    }
    for list in segments_after(debug, "Round1NotReliable([") {
        // "(a, id), (b, id)" -> first element of each tuple
        for tuple in list.split('(').skip(1) {
            if let Some(v) = leading_number(tuple) {
                out.insert(v);
            }
        }
    }
    for seg in segments_after(debug, "AttemptToOverwriteReceivedMsg {") {
        for v in numbers_after(seg, "sender: ") {
            out.insert(v);
        }
    }
    for id in numbers_after(debug, "msg_id: ") {
        if let Some(s) = sender_of_msg(id) {
            out.insert(u64::from(s));
        }
    }
    out.into_iter()
        .filter_map(|v| u16::try_from(v).ok())
        .filter(|&v| v < n)
        .collect()
}

/// The decimal numbers directly following every occurrence of `key`.
fn numbers_after<'a>(s: &'a str, key: &'a str) -> impl Iterator<Item = u64> + 'a {
    s.match_indices(key)
        .filter_map(move |(i, _)| leading_number(&s[i + key.len()..]))
}

/// For every occurrence of `key`, the text up to the matching closing bracket/brace.
fn segments_after<'a>(s: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    s.match_indices(key).map(move |(i, _)| {
        let rest = &s[i + key.len()..];
        let mut depth = 0i32;
        for (k, c) in rest.char_indices() {
            match c {
                '[' | '{' | '(' => depth += 1,
                ']' | '}' | ')' => {
                    if depth == 0 {
                        return &rest[..k];
                    }
                    depth -= 1;
                }
                _ => {}
            }
        }
        rest
    })
}

/// Numbers of a flat, comma-separated list.
fn list_numbers(list: &str) -> impl Iterator<Item = u64> + '_ {
    list.split(',').filter_map(|x| x.trim().parse().ok())
}

fn leading_number(s: &str) -> Option<u64> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_blame;

    #[test]
    fn signing_abort_shapes() {
        let s = "SigningError(Aborted(EncProofOfK([(AbortBlame { faulty_party: 1, data_message: 3, proof_message: 4 }, InvalidProof(..))])))";
        assert_eq!(parse_blame(s, 2, |_| None), vec![1]);
        // out of range is dropped
        assert_eq!(parse_blame(s, 1, |_| None), Vec::<u16>::new());
        let s = "KeygenError(Aborted(FeldmanVerificationFailed { parties: [0, 2] }))";
        assert_eq!(parse_blame(s, 3, |_| None), vec![0, 2]);
        let s = "KeygenError(Aborted(Round1NotReliable([(2, 7), (1, 9)])))";
        assert_eq!(parse_blame(s, 3, |_| None), vec![1, 2]);
        let s = "RouteReceivedError(ProcessMessage(MismatchedMessageType { msg_id: 5, expected: P2P, actual: Broadcast }))";
        assert_eq!(parse_blame(s, 3, |id| (id == 5).then_some(2)), vec![2]);
        let s = "AttemptToOverwriteReceivedMsg { msgs_ids: [1, 4], sender: 0 }";
        assert_eq!(parse_blame(s, 3, |_| None), vec![0]);
        assert!(parse_blame("SigningError(Aborted(MismatchedDelta))", 3, |_| None).is_empty());
    }
}
