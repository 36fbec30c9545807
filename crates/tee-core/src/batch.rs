//! The batch path: requests decoded and handled one by one, their writes committed together
//! (group commit), then each answer signed. What a batch changed in memory is journaled so a
//! failed commit takes it back out.

use custos_wire::protocol::*;

use crate::platform::{Platform, PlatformError};
use crate::threshold;
use crate::wallet::key_hex;
use crate::{rec, storage, TeeCore, WALLET_PREFIX};

/// One in-memory change of a batch, undone if the batch's commit fails.
pub(crate) enum Undo {
    /// A wallet was added.
    Wallet(Vec<u8>),
    /// A threshold share was added.
    Share(Vec<u8>),
    /// A request id was consumed.
    Consumed([u8; 16]),
    /// A key's spend-window record was replaced (the one before it, if any).
    Velocity(Vec<u8>, Option<Vec<custos_tx::policy::Spent>>),
    /// A passkey's counter record was replaced (the one before it, if any).
    Passkey([u8; 32], Option<crate::passkey::CounterRecord>),
    /// A primes set the background generation finished was sealed (no request's doing: a
    /// failed commit gives it back to the pool and fails no request).
    GeneratedPrimes(custos_threshold::Primes),
}

impl<P: Platform> TeeCore<P> {
    /// Handles one encoded request and returns the encoded [`SignedResponse`].
    pub fn handle_bytes(&mut self, request: &[u8]) -> Vec<u8> {
        self.handle_batch(&[request])
            .pop()
            .expect("one response per request")
    }

    /// Handles several encoded requests with one storage commit (group commit), and
    /// returns one encoded [`SignedResponse`] per request, in order. No response is
    /// produced before the commit, so every acknowledged key is durable; if the commit
    /// fails, the keys of this batch are dropped from memory and their requests answered
    /// with a storage error.
    pub fn handle_batch(&mut self, requests: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(requests.len());
        self.seal_generated_primes();
        for (i, request) in requests.iter().enumerate() {
            self.current = i;
            outcomes.push(decode_request(request).and_then(|r| self.handle(r)));
        }
        let _ = self.commit_pending();
        for (i, e) in std::mem::take(&mut self.failed) {
            outcomes[i] = Err(storage(e));
        }
        requests
            .iter()
            .zip(outcomes)
            .map(|(request, outcome)| {
                let body = postcard::to_allocvec(&outcome).expect("responses always serialize");
                let signature = self
                    .device
                    .as_ref()
                    .map(|d| d.sign(&response_transcript(request, &body)));
                postcard::to_allocvec(&SignedResponse { body, signature })
                    .expect("responses always serialize")
            })
            .collect()
    }

    /// Commits every pending write. On failure the platform has discarded them all, so
    /// the wallets of this batch leave memory too and their requests are marked failed:
    /// nothing is acknowledged that is not durable.
    pub(crate) fn commit_pending(&mut self) -> Result<(), PlatformError> {
        let result = self.platform.commit();
        // Undone last first: two changes of one record in a batch restore the oldest value.
        for (i, change) in std::mem::take(&mut self.journal).into_iter().rev() {
            match (&result, change) {
                (Err(_), Undo::GeneratedPrimes(primes)) => self.threshold.primes.give_back(primes),
                (Ok(()), Undo::GeneratedPrimes(_)) => {}
                (Err(e), change) => {
                    match change {
                        Undo::Wallet(key) => {
                            self.wallets.remove(&key);
                        }
                        Undo::Share(key) => {
                            self.threshold.keys.remove(&key);
                        }
                        Undo::Consumed(rid) => {
                            self.consumed.remove(&rid);
                        }
                        Undo::Velocity(key, before) => match before {
                            Some(record) => {
                                self.velocity.insert(key, record);
                            }
                            None => {
                                self.velocity.remove(&key);
                            }
                        },
                        Undo::Passkey(key, before) => match before {
                            Some(record) => {
                                self.passkeys.insert(key, record);
                            }
                            None => {
                                self.passkeys.remove(&key);
                            }
                        },
                        Undo::GeneratedPrimes(_) => unreachable!("matched above"),
                    }
                    self.failed.push((i, e.clone()));
                }
                // A key stored again under a name once reported corrupt replaces it.
                (Ok(()), Undo::Wallet(key)) => {
                    self.corrupt
                        .remove(&format!("{WALLET_PREFIX}{}", key_hex(&key)));
                }
                (Ok(()), Undo::Share(key)) => {
                    self.corrupt
                        .remove(&format!("{}{}", threshold::SHARE_PREFIX, key_hex(&key)));
                }
                (Ok(()), Undo::Consumed(_) | Undo::Velocity(..) | Undo::Passkey(..)) => {}
            }
        }
        result
    }

    /// Seals a primes set the background generation finished, to commit with this batch: a
    /// restart then keeps it (generation takes minutes). On a failed commit it goes back to
    /// the pool (see [`Self::commit_pending`]).
    fn seal_generated_primes(&mut self) {
        let Some(primes) = self.threshold.primes.take() else {
            return;
        };
        let bytes = primes.to_sealed_bytes();
        match self
            .platform
            .seal(&threshold::primes::generated_record(&bytes), &bytes)
        {
            Ok(()) => self.journal.push((0, Undo::GeneratedPrimes(primes))),
            Err(_) => self.threshold.primes.give_back(primes),
        }
    }

    /// Seals and commits a provisioning record at once (rare); anything pending from the
    /// batch commits with it.
    pub(crate) fn seal_now(&mut self, name: &str, body: &[u8]) -> Result<(), TeeError> {
        self.platform.seal(&rec(name), body).map_err(storage)?;
        self.commit_pending().map_err(storage)
    }
}
