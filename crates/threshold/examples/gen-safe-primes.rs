//! Writes real Paillier primes sets (four safe primes of 1536 bits each, the production
//! generator [`Primes::generate`], one thread per set) as a JSON array, the format of
//! `custos dealer deal --primes` and of the tests' `CUSTOS_TEST_SAFE_PRIMES`.
//!
//! It exists to check a build without `insecure-test-primes` by hand: such a TEE refuses the
//! TEST-ONLY fixture, so the tests that need primes it accepts take these instead (see
//! `crates/custos/tests/it/dkg.rs`). Minutes per set; the file is secret like any dealer's.
//!
//! ```sh
//! cargo run --release -p custos-threshold --example gen-safe-primes -- 2 /tmp/safe-primes.json
//! ```

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

use custos_threshold::Primes;
use rand_core::OsRng;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(sets), Some(out)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: gen-safe-primes <sets> <out.json>");
        std::process::exit(2);
    };
    let sets: usize = sets.parse().expect("a number of sets");
    let began = Instant::now();
    let made: Vec<Primes> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..sets)
            .map(|_| s.spawn(|| Primes::generate(&mut OsRng)))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let json = zeroize::Zeroizing::new(serde_json::to_string(&made).expect("serialize"));
    // Owner-only, as a dealer's primes file: these are Paillier secret keys.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .expect("a new primes file");
    file.write_all(json.as_bytes())
        .expect("write the primes file");
    eprintln!(
        "{sets} sets of safe primes in {:.0} s: {out}",
        began.elapsed().as_secs_f64()
    );
}
