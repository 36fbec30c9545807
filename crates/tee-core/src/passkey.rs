//! Verification unit (patent FIG. 3), passkey approvals: the signature counters of each
//! passkey that approved here, kept sealed so that a counter value never counts for two
//! messages (a replayed assertion, a cloned authenticator), across restarts.
//!
//! WebAuthn (§7.2 step 21) wants each counter above the last one seen, because a relying
//! party checks assertions as they are made. A TEE checks them when the request executes,
//! and requests do not execute in the order they were approved (one waits for a second
//! approver, another does not): an admin's counter 5 may arrive after its counter 6. So
//! each TEE keeps, per passkey, every (challenge, counter) it accepted whose message has not
//! expired, within [`WINDOW`] below the highest counter, and a floor: the highest counter
//! of what it let go. It accepts a counter that is
//!
//! * the very assertion accepted before for this message (a retried request, a threshold
//!   session's next attempt: the challenge binds it to the message, and the TEE's single
//!   use of request ids decides whether the message may act again); or
//! * used for no other message it keeps, and above the floor.
//!
//! Anything else is refused ([`ApprovalFault::CounterReplayed`]). The floor refuses a late
//! approval only when an approval made after it was let go: its message expired (seven days
//! at most), or the passkey counted more than [`WINDOW`] assertions since. Counter 0
//! (authenticators that keep none, such as synced passkeys) is accepted while the passkey
//! never reported another; the challenge and the request id's single use then stop replays.
//! Counters are kept per TEE: each refuses what it saw used.

use serde::{Deserialize, Serialize};

use custos_wire::approval::PasskeyUse;
use custos_wire::protocol::{ApprovalFault, TeeError};

use crate::platform::{Platform, RecordId};
use crate::{storage, TeeCore, Undo};

/// Sealed counter records, by passkey key fingerprint (hex).
pub(crate) const PASSKEY_PREFIX: &str = "passkey/";
/// How far below a passkey's highest counter an unused counter still counts (and the most
/// accepted assertions a record keeps): a security key counts every assertion it makes, for
/// every site, while an approval waits for its request to execute.
const WINDOW: u32 = 1024;

/// One accepted assertion, kept until its message expires or falls out of the window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Seen {
    challenge: [u8; 32],
    counter: u32,
    expires_at: u64,
}

/// What this TEE knows of one passkey's counter.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct CounterRecord {
    /// The highest counter accepted.
    highest: u32,
    /// Counters at or below it count no more (the highest of those let go).
    floor: u32,
    /// The accepted assertions kept.
    seen: Vec<Seen>,
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
        match self.seen.iter().find(|s| s.counter == counter) {
            Some(s) if s.challenge == *challenge => None,
            Some(_) => Some(format!("counter {counter} was used for another request")),
            None if counter <= self.floor => Some(format!(
                "counter {counter} is not above {}, an approval made after it",
                self.floor
            )),
            None => None,
        }
    }

    /// This record after accepting `counter` for `challenge` (a message expiring at
    /// `expires_at`), at `now`.
    fn after(&self, challenge: &[u8; 32], counter: u32, expires_at: u64, now: u64) -> Self {
        let mut next = self.clone();
        if counter == 0 {
            return next;
        }
        next.highest = next.highest.max(counter);
        match next
            .seen
            .iter_mut()
            .find(|s| s.counter == counter && s.challenge == *challenge)
        {
            Some(s) => s.expires_at = s.expires_at.max(expires_at),
            None => next.seen.push(Seen {
                challenge: *challenge,
                counter,
                expires_at,
            }),
        }
        let below = next.highest.saturating_sub(WINDOW);
        let mut floor = next.floor.max(below);
        next.seen.retain(|s| {
            let keep = s.expires_at >= now && s.counter > below;
            if !keep {
                floor = floor.max(s.counter);
            }
            keep
        });
        next.floor = floor;
        next
    }
}

impl<P: Platform> TeeCore<P> {
    /// Refuses the request if any of its passkey assertions `uses` did not grow its
    /// passkey's counter; otherwise seals the new counters with the batch, before any
    /// answer leaves (a failed commit takes them back out of memory).
    pub(crate) fn keep_passkey_counters(
        &mut self,
        uses: &[PasskeyUse],
        expires_at: u64,
    ) -> Result<(), TeeError> {
        let now = self.platform.now_unix();
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
            let after = held.after(&u.challenge, u.counter, expires_at, now);
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

    const NOW: u64 = 1_000_000;
    const LATER: u64 = NOW + 600;

    fn admits(r: &CounterRecord, challenge: &[u8; 32], counter: u32) -> bool {
        r.refusal(challenge, counter).is_none()
    }

    #[test]
    fn a_counter_counts_for_one_message_and_late_ones_until_a_later_one_is_let_go() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let r = CounterRecord::default();
        assert!(admits(&r, &a, 0), "an authenticator without a counter");
        assert_eq!(
            r.after(&a, 0, LATER, NOW),
            r,
            "nothing to remember of a zero"
        );
        let r = r.after(&a, 5, LATER, NOW);
        assert!(admits(&r, &b, 6));
        assert!(!admits(&r, &b, 5), "another message at a used counter");
        assert!(!admits(&r, &b, 0), "zero after a counting authenticator");
        assert!(admits(&r, &a, 5), "the same assertion again");
        // Approved as 4 before 5 but executed after it: unused, above the floor.
        assert!(admits(&r, &b, 4));
        let r = r.after(&b, 4, LATER, NOW);
        assert!(!admits(&r, &c, 4));
        // Far ahead: what lies a window below is let go and refused.
        let r = r.after(&c, 5 + WINDOW, LATER, NOW);
        assert!(!admits(&r, &a, 5));
        assert!(!admits(&r, &[4; 32], 5));
        assert!(admits(&r, &[4; 32], 6));
        assert_eq!(r.seen.len(), 1);
        // Once 5 + WINDOW's message expired, counters up to it are let go too.
        let r = r.after(&[5; 32], 7 + WINDOW, LATER + 10, LATER + 1);
        assert_eq!(r.floor, 5 + WINDOW);
        assert!(!admits(&r, &[4; 32], 5 + WINDOW));
        assert!(admits(&r, &[4; 32], 6 + WINDOW));
        assert!(admits(&r, &[5; 32], 7 + WINDOW));
        assert_eq!(CounterRecord::from_record(&r.to_record()).as_ref(), Ok(&r));
    }

    #[test]
    fn the_highest_counter_still_counts_once() {
        let r = CounterRecord::default().after(&[1; 32], u32::MAX, LATER, NOW);
        assert!(admits(&r, &[1; 32], u32::MAX));
        assert!(!admits(&r, &[2; 32], u32::MAX));
        assert!(!admits(&r, &[2; 32], 0));
    }
}
