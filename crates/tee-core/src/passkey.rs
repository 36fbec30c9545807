//! Verification unit (patent FIG. 3), passkey approvals: the signature counters of each
//! passkey that approved here, kept sealed so that a counter value never counts for two
//! messages (a replayed assertion, a cloned authenticator), across restarts.
//!
//! WebAuthn (§7.2 step 21) wants each counter above the last one seen, because a relying
//! party checks assertions as they are made. A TEE checks them when the request executes,
//! and requests do not execute in the order they were approved (one waits for a second
//! approver, another does not): an admin's counter 5 may arrive after its counter 6. So
//! each TEE keeps, per passkey, the highest counter and every (challenge, counter) it
//! accepted within [`WINDOW`] below it, and accepts a counter that is
//!
//! * the very assertion accepted before for this message (a retried request, a threshold
//!   session's next attempt: the challenge binds it to the message, and the TEE's single
//!   use of request ids decides whether the message may act again); or
//! * used for no other message, and less than [`WINDOW`] below the highest.
//!
//! Anything else is refused ([`ApprovalFault::CounterReplayed`]): an honest late approval
//! only once its passkey made [`WINDOW`] assertions since (a security key counts those of
//! every site). Counter 0 (authenticators that keep none, such as synced passkeys) is
//! accepted while the passkey never reported another; the challenge and the request id's
//! single use then stop replays. Counters are kept per TEE: each refuses what it saw used.

use serde::{Deserialize, Serialize};

use custos_wire::approval::PasskeyUse;
use custos_wire::protocol::{ApprovalFault, TeeError};

use crate::platform::{Platform, RecordId};
use crate::{storage, TeeCore, Undo};

/// Sealed counter records, by passkey key fingerprint (hex).
pub(crate) const PASSKEY_PREFIX: &str = "passkey/";
/// How far below a passkey's highest counter an unused counter still counts, and so the
/// most accepted assertions a record keeps (36 bytes each).
const WINDOW: u32 = 1024;

/// What this TEE knows of one passkey's counter.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CounterRecord {
    /// The highest counter accepted.
    highest: u32,
    /// The accepted (challenge, counter) pairs within [`WINDOW`] below `highest`.
    seen: Vec<([u8; 32], u32)>,
}

/// Whether `counter` is less than [`WINDOW`] below `highest` (counted wide: no saturation at
/// the top of the counter's range).
fn within_window(counter: u32, highest: u32) -> bool {
    u64::from(counter) + u64::from(WINDOW) > u64::from(highest)
}

impl CounterRecord {
    /// Decodes a sealed record.
    pub(crate) fn from_record(body: &[u8]) -> Result<Self, String> {
        let r: CounterRecord =
            postcard::from_bytes(body).map_err(|e| format!("passkey counter record: {e}"))?;
        if r.seen.len() > WINDOW as usize {
            return Err("passkey counter record: too many entries".into());
        }
        Ok(r)
    }

    fn to_record(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("counter records always serialize")
    }

    /// Why `counter` for `challenge` does not count (module documentation), if it does not.
    fn refusal(&self, challenge: &[u8; 32], counter: u32) -> Option<String> {
        if counter == 0 {
            return (self.highest != 0).then(|| {
                format!(
                    "counter 0 from an authenticator that reported {}",
                    self.highest
                )
            });
        }
        match self.seen.iter().find(|(_, c)| *c == counter) {
            Some((c, _)) if c == challenge => None,
            Some(_) => Some(format!("counter {counter} was used for another request")),
            None if !within_window(counter, self.highest) => Some(format!(
                "counter {counter} is {WINDOW} or more below {}",
                self.highest
            )),
            None => None,
        }
    }

    /// This record after accepting `counter` for `challenge`.
    fn after(&self, challenge: &[u8; 32], counter: u32) -> CounterRecord {
        let mut next = self.clone();
        if counter == 0 {
            return next;
        }
        next.highest = next.highest.max(counter);
        if !next.seen.contains(&(*challenge, counter)) {
            next.seen.push((*challenge, counter));
        }
        let highest = next.highest;
        next.seen.retain(|(_, c)| within_window(*c, highest));
        next
    }
}

impl<P: Platform> TeeCore<P> {
    /// Refuses the request if any of its passkey assertions `uses` did not grow its
    /// passkey's counter; otherwise seals the new counters with the batch, before any
    /// answer leaves (a failed commit takes them back out of memory).
    pub(crate) fn keep_passkey_counters(&mut self, uses: &[PasskeyUse]) -> Result<(), TeeError> {
        // All checked before any is kept: a request refused here advances no counter (one
        // refused later, by its policy, keeps them: its assertions count again for it alone).
        let mut next: Vec<([u8; 32], CounterRecord)> = Vec::new();
        for u in uses {
            let name = format!("{PASSKEY_PREFIX}{}", hex::encode(u.key));
            if let Some(reason) = self.corrupt.get(&name) {
                return Err(TeeError::KeyRecordCorrupt {
                    key: name,
                    reason: reason.clone(),
                });
            }
            let held = match next.iter().find(|(k, _)| *k == u.key) {
                Some((_, r)) => r.clone(),
                None => self.passkeys.get(&u.key).cloned().unwrap_or_default(),
            };
            if let Some(why) = held.refusal(&u.challenge, u.counter) {
                return Err(TeeError::ApprovalRejected {
                    index: u.index,
                    fault: ApprovalFault::CounterReplayed,
                    detail: format!(
                        "passkey of {:?}: {why} (a replayed assertion or a cloned authenticator)",
                        u.admin
                    ),
                });
            }
            let after = held.after(&u.challenge, u.counter);
            next.retain(|(k, _)| *k != u.key);
            next.push((u.key, after));
        }
        for (key, record) in next {
            if self.passkeys.get(&key) == Some(&record) {
                continue;
            }
            let id =
                RecordId::new(format!("{PASSKEY_PREFIX}{}", hex::encode(key))).map_err(storage)?;
            self.platform
                .seal(&id, &record.to_record())
                .map_err(storage)?;
            let before = self.passkeys.insert(key, record);
            self.journal
                .push((self.current, Undo::Passkey(key, before)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admits(r: &CounterRecord, challenge: &[u8; 32], counter: u32) -> bool {
        r.refusal(challenge, counter).is_none()
    }

    #[test]
    fn a_counter_counts_for_one_message_and_late_ones_within_the_window() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let r = CounterRecord::default();
        assert!(admits(&r, &a, 0), "an authenticator without a counter");
        assert_eq!(r.after(&a, 0), r, "nothing to remember of a zero");
        let r = r.after(&a, 5);
        assert!(admits(&r, &b, 6));
        assert!(!admits(&r, &b, 5), "another message at a used counter");
        assert!(!admits(&r, &b, 0), "zero after a counting authenticator");
        assert!(admits(&r, &a, 5), "the same assertion again");
        // Approved as 4 before 5 but executed after it: unused, within the window.
        assert!(admits(&r, &b, 4));
        let r = r.after(&b, 4);
        assert!(!admits(&r, &c, 4));
        // Far ahead: what lies a window below is forgotten and refused.
        let r = r.after(&c, 5 + WINDOW);
        assert!(!admits(&r, &a, 5));
        assert!(!admits(&r, &[4; 32], 5));
        assert!(admits(&r, &[4; 32], 6));
        assert_eq!(r.seen, vec![(c, 5 + WINDOW)]);
        assert_eq!(CounterRecord::from_record(&r.to_record()).as_ref(), Ok(&r));
    }

    #[test]
    fn the_highest_counter_still_counts_once() {
        let r = CounterRecord::default().after(&[1; 32], u32::MAX);
        assert!(admits(&r, &[1; 32], u32::MAX));
        assert!(!admits(&r, &[2; 32], u32::MAX));
        assert!(!admits(&r, &[2; 32], 0));
        assert!(admits(&r, &[3; 32], u32::MAX - 5));
        assert!(!admits(&r, &[3; 32], u32::MAX - WINDOW));
    }
}
