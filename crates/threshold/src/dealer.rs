//! Trusted dealer: creates all n shares of a new t-of-n key in one place (the operating
//! company's provisioning step). It is a single point of trust by design; distributed key
//! generation is [`SessionKind::Keygen`](crate::SessionKind::Keygen) +
//! [`SessionKind::AuxInfo`](crate::SessionKind::AuxInfo).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand_core::OsRng;

use crate::primes::Primes;
use crate::share::ThresholdShare;
use crate::{ThresholdError, E, L};

/// Progress of [`deal`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DealerProgress {
    /// Safe-prime generation started, one thread per party.
    GeneratingPrimes {
        /// Number of parties (= threads).
        parties: u16,
    },
    /// One party's primes are ready.
    PrimesReady {
        /// The party (keygen index) whose primes are ready.
        party: u16,
        /// How many parties are ready so far.
        done: u16,
        /// Number of parties.
        total: u16,
        /// Time this party's primes took.
        elapsed: Duration,
    },
    /// All shares are generated.
    SharesReady,
}

/// Deals a new random t-of-n key (secp256k1), with a random chain code if `hd`.
///
/// `primes` gives each party's pregenerated primes (`n` sets, set i for party i). When `None`,
/// n sets of safe primes are generated with one std thread per party (minutes; `progress`
/// is told as each party finishes). Share i of the result has keygen index i.
///
/// HD keys (`hd = true`) cannot be used for presignatures (RUSTSEC-2025-0127); deal with
/// `hd = false` for a key meant for the presignature pool.
pub fn deal(
    t: u16,
    n: u16,
    hd: bool,
    primes: Option<Vec<Primes>>,
    progress: &mut dyn FnMut(DealerProgress),
) -> Result<Vec<ThresholdShare>, ThresholdError> {
    if t < 2 || t > n {
        return Err(ThresholdError::InvalidParameters(format!(
            "need 2 <= t <= n, got t={t} n={n}"
        )));
    }
    let primes = match primes {
        Some(p) if p.len() == usize::from(n) => p,
        Some(p) => {
            return Err(ThresholdError::InvalidParameters(format!(
                "{} prime sets for {n} parties",
                p.len()
            )))
        }
        None => generate_primes_parallel(n, progress)?,
    };
    let shares = cggmp24::trusted_dealer::builder::<E, L>(n)
        .set_threshold(Some(t))
        .hd_wallet(hd)
        .set_pregenerated_primes(primes.into_iter().map(|p| p.0).collect())
        .generate_shares(&mut OsRng)
        .map_err(|e| ThresholdError::Dealer(error_chain(&e)))?;
    progress(DealerProgress::SharesReady);
    Ok(shares.into_iter().map(ThresholdShare).collect())
}

/// Generates n sets of safe primes, one thread per party.
fn generate_primes_parallel(
    n: u16,
    progress: &mut dyn FnMut(DealerProgress),
) -> Result<Vec<Primes>, ThresholdError> {
    progress(DealerProgress::GeneratingPrimes { parties: n });
    let (tx, rx) = mpsc::channel::<(u16, Primes, Duration)>();
    let mut handles = Vec::with_capacity(usize::from(n));
    for party in 0..n {
        let tx = tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("custos-primes-{party}"))
            .spawn(move || {
                let start = Instant::now();
                let primes = Primes::generate(&mut OsRng);
                // The receiver outlives every sender unless deal() unwound; then nobody cares.
                let _ = tx.send((party, primes, start.elapsed()));
            })
            .map_err(|e| ThresholdError::Dealer(format!("spawn prime thread: {e}")))?;
        handles.push(handle);
    }
    drop(tx);
    let mut slots: Vec<Option<Primes>> = (0..n).map(|_| None).collect();
    for (done, (party, primes, elapsed)) in (1u16..).zip(rx) {
        slots[usize::from(party)] = Some(primes);
        progress(DealerProgress::PrimesReady {
            party,
            done,
            total: n,
            elapsed,
        });
    }
    for h in handles {
        h.join()
            .map_err(|_| ThresholdError::Dealer("prime generation thread panicked".into()))?;
    }
    slots
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ThresholdError::Dealer("prime generation incomplete".into()))
}

/// Display of an error and its sources, joined by ": ".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
