//! TEST ONLY — INSECURE. Generates `fixtures/TEST-ONLY-blum-primes-sl128.json`.
//!
//! CGGMP requires *safe* primes (p = 2p' + 1) for the Paillier and ring-Pedersen moduli;
//! finding four 1536-bit safe primes takes minutes per party. For tests this program writes
//! full-size (1536-bit, `SecurityLevel128`) **Blum** primes (p ≡ 3 mod 4) instead: the protocol
//! still runs correctly (the Paillier-Blum modulus proof passes) and they are found in seconds,
//! but they are NOT safe primes and must never be used for a real key. The library's own test
//! suite does the same. Production code calls `custos_threshold::primes::Primes::generate`.
//!
//! The output is a JSON array of `PregeneratedPrimes<SecurityLevel128>` (4 primes per party),
//! loaded by `custos_threshold::fixtures::test_primes()` (cargo feature `test-fixtures`); every
//! build also compiles it in to refuse its primes (`custos_threshold::provenance`).
//! (The committed file holds six sets: four made first, two appended for six-party tests.)
//!
//! ```sh
//! cargo run -p custos-threshold --example gen-test-primes -- [parties=6] [out=crates/threshold/fixtures/TEST-ONLY-blum-primes-sl128.json]
//! ```

use std::time::Instant;

use cggmp24::backend::Integer;
use cggmp24::security_level::{SecurityLevel, SecurityLevel128};
use cggmp24::PregeneratedPrimes;
use rand_core::OsRng;

/// TEST ONLY: a random Blum prime (p ≡ 3 mod 4) of `bits` bits. Not a safe prime.
fn insecure_blum_prime(bits: u32) -> Integer {
    loop {
        let p = Integer::generate_prime(&mut OsRng, bits);
        if p.mod_u(4) == 3 {
            return p;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parties: usize = args
        .get(1)
        .map(|a| a.parse().expect("parties"))
        .unwrap_or(6);
    let out = args.get(2).cloned().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/TEST-ONLY-blum-primes-sl128.json"
        )
        .to_string()
    });
    let bits = SecurityLevel128::RSA_PRIME_BITLEN;
    eprintln!("TEST ONLY: generating {parties} x 4 Blum primes of {bits} bits (NOT safe primes)");
    let mut sets: Vec<PregeneratedPrimes<SecurityLevel128>> = Vec::with_capacity(parties);
    for k in 0..parties {
        let t = Instant::now();
        let four = [(); 4].map(|_| insecure_blum_prime(bits));
        let set = PregeneratedPrimes::<SecurityLevel128>::try_from(four)
            .unwrap_or_else(|_| panic!("prime size rejected"));
        eprintln!("  party {k}: {:.1} s", t.elapsed().as_secs_f64());
        sets.push(set);
    }
    let json = serde_json::to_string_pretty(&sets).expect("serialize");
    std::fs::write(&out, json + "\n").expect("write fixture");
    eprintln!("wrote {out}");
}
