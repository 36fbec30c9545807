//! Where Paillier primes may come from: the checks a TEE makes before a primes set or a key's
//! aux info is used, so that no party's Paillier secret is known outside its TEE.
//!
//! * **Own primes** ([`Primes::check`], and a share's own `p`, `q` in
//!   [`ThresholdShare::check_paillier`]): each a safe prime (`(p - 1) / 2` prime too, tested
//!   with `glass_pumpkin`, the crate fast-paillier generates them with), all four distinct.
//!   cggmp24 checks only their sizes; the zero-knowledge proofs the others verify do not
//!   require safe primes, so nobody else would notice weak ones.
//! * **Everybody's moduli** ([`ThresholdShare::check_paillier`]):
//!   every Paillier modulus `N_j` and ring-Pedersen modulus `N̂_j` of the key coprime to every
//!   other. Two parties with the same primes (one primes file fed to two TEEs, a dealer's
//!   mistake) could each decrypt what the other's Paillier key protects.
//! * **The committed TEST-ONLY fixture** (`fixtures/`): its primes are published, so whoever
//!   reads the repository holds the Paillier secrets of a key made with them. Any number
//!   sharing a factor with them is refused unless [`TestPrimes::Allowed`]: a fixture prime,
//!   a modulus of two fixture primes from any sets, and a modulus of one fixture prime and one
//!   fresh prime (whose owner's secret is then known too: the modulus divided by the
//!   published prime). Every build compiles the fixture in (it is public) and tests each
//!   number's gcd with the product of all its primes.

use num_bigint::BigUint;
use num_integer::Integer as _;
use num_traits::One;

use cggmp24::backend::Integer;

use crate::{Primes, ThresholdError, ThresholdShare};

/// The committed TEST-ONLY fixture, compiled into every build so that it is refused.
const FIXTURE_JSON: &str = include_str!("../fixtures/TEST-ONLY-blum-primes-sl128.json");

/// Size of every secret prime at the security level in use (1536 bits).
const PRIME_BITS: u64 =
    <crate::L as cggmp24::security_level::SecurityLevel>::RSA_PRIME_BITLEN as u64;

/// Whether the committed TEST-ONLY primes are accepted. A production TEE refuses them; tests
/// and the local demo allow them, explicitly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TestPrimes {
    /// Fixture primes and moduli are refused with [`ThresholdError::TestFixturePrimes`].
    #[default]
    Refused,
    /// Accepted (and, being Blum primes, exempt from the safe-prime check).
    Allowed,
}

fn to_biguint(n: &Integer) -> BigUint {
    BigUint::from_bytes_be(&n.to_bytes_msf())
}

/// The product of every prime of the TEST-ONLY fixture (computed once).
fn fixture_product() -> &'static BigUint {
    static PRODUCT: std::sync::OnceLock<BigUint> = std::sync::OnceLock::new();
    PRODUCT.get_or_init(|| {
        let sets: Vec<Primes> =
            serde_json::from_str(FIXTURE_JSON).expect("committed test primes fixture parses");
        sets.iter()
            .flat_map(|set| set.0.primes_ref().iter())
            .map(to_biguint)
            .product()
    })
}

/// Whether `n` shares a factor with the committed TEST-ONLY fixture: one of its primes, or a
/// modulus with at least one of them.
pub fn is_test_fixture(n: &BigUint) -> bool {
    // gcd(n, F) = gcd(n, F mod n): one reduction of the long product, then a short gcd.
    *n > BigUint::one() && !n.gcd(&(fixture_product() % n)).is_one()
}

fn refuse_fixture(test: TestPrimes, n: &BigUint, what: &str) -> Result<bool, ThresholdError> {
    match (is_test_fixture(n), test) {
        (false, _) => Ok(false),
        (true, TestPrimes::Allowed) => Ok(true),
        (true, TestPrimes::Refused) => Err(ThresholdError::TestFixturePrimes {
            what: what.to_string(),
        }),
    }
}

fn check_safe(p: &BigUint, what: &str) -> Result<(), ThresholdError> {
    if glass_pumpkin::safe_prime::check_with(p, &mut rand_core::OsRng) {
        Ok(())
    } else {
        Err(ThresholdError::NotSafePrime {
            what: what.to_string(),
        })
    }
}

/// Checks that no two of `moduli` (named) share a factor.
fn check_coprime(moduli: &[(String, BigUint)]) -> Result<(), ThresholdError> {
    for (i, (first, a)) in moduli.iter().enumerate() {
        for (second, b) in &moduli[i + 1..] {
            if !a.gcd(b).is_one() {
                return Err(ThresholdError::DuplicateModulus {
                    first: first.clone(),
                    second: second.clone(),
                });
            }
        }
    }
    Ok(())
}

/// The checks on one party's own primes, given as `(name, prime)`: none from the fixture
/// (unless allowed), pairwise distinct, and each not from the fixture a safe prime of
/// exactly the security level's size.
fn check_own_primes(primes: &[(String, BigUint)], test: TestPrimes) -> Result<(), ThresholdError> {
    check_coprime(primes)?;
    for (what, p) in primes {
        if refuse_fixture(test, p, what)? {
            // Allowed fixture primes are Blum primes, not safe primes, by construction.
            continue;
        }
        if p.bits() != PRIME_BITS {
            return Err(ThresholdError::NotSafePrime {
                what: format!("{what} ({} bits, not {PRIME_BITS})", p.bits()),
            });
        }
        check_safe(p, what)?;
    }
    Ok(())
}

impl Primes {
    /// Checks a set before this party uses it: not from the TEST-ONLY fixture (unless
    /// `test` allows it), four distinct safe primes. Four safe-prime tests of 1536 bits:
    /// tens of milliseconds.
    pub fn check(&self, test: TestPrimes) -> Result<(), ThresholdError> {
        let primes: Vec<(String, BigUint)> = self
            .0
            .primes_ref()
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("prime {i} of the set"), to_biguint(p)))
            .collect();
        check_own_primes(&primes, test)
    }
}

/// Every party's Paillier and ring-Pedersen modulus, named.
fn moduli(aux: &cggmp24::key_share::DirtyAuxInfo<crate::L>) -> Vec<(String, BigUint)> {
    let paillier = aux
        .N
        .iter()
        .enumerate()
        .map(|(j, n)| (format!("the Paillier modulus of party {j}"), to_biguint(n)));
    let pedersen = aux.pedersen_params.iter().enumerate().map(|(j, p)| {
        (
            format!("the ring-Pedersen modulus of party {j}"),
            to_biguint(&p.hat_N),
        )
    });
    paillier.chain(pedersen).collect()
}

fn check_aux(
    aux: &cggmp24::key_share::DirtyAuxInfo<crate::L>,
    test: TestPrimes,
) -> Result<(), ThresholdError> {
    let all = moduli(aux);
    for (what, n) in &all {
        refuse_fixture(test, n, what)?;
    }
    check_coprime(&all)?;
    let own = [
        (
            "this party's Paillier prime p".to_string(),
            to_biguint(&aux.p),
        ),
        (
            "this party's Paillier prime q".to_string(),
            to_biguint(&aux.q),
        ),
    ];
    check_own_primes(&own, test)
}

impl ThresholdShare {
    /// What a TEE checks of a share it is given (a dealer's bundle, cluster sync) or made (a
    /// distributed key generation) before storing it: every party's moduli pairwise coprime
    /// and none from the TEST-ONLY fixture (unless `test` allows it), this party's own
    /// Paillier primes safe primes of the required size.
    pub fn check_paillier(&self, test: TestPrimes) -> Result<(), ThresholdError> {
        check_aux(&self.0.aux, test)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::test_primes;

    fn product(a: &Integer, b: &Integer) -> BigUint {
        to_biguint(a) * to_biguint(b)
    }

    /// Every fixture prime, every modulus of two of them from any sets, and a modulus of one
    /// of them and a prime of nobody's fixture are caught (the last one passed the earlier
    /// check, which compared fingerprints of the fixture's primes and products only);
    /// numbers of fresh primes are not.
    #[test]
    fn numbers_sharing_a_factor_with_the_fixture_are_caught() {
        let sets = test_primes();
        for set in &sets {
            for p in set.0.primes_ref() {
                assert!(is_test_fixture(&to_biguint(p)));
            }
        }
        let [p, _, _, _] = sets[0].0.primes_ref();
        let [_, q, _, _] = sets[5].0.primes_ref();
        assert!(is_test_fixture(&product(p, q)));
        // 2^127 - 1 and 2^89 - 1 are Mersenne primes, in no fixture.
        let fresh = (BigUint::one() << 127u32) - BigUint::one();
        let other = (BigUint::one() << 89u32) - BigUint::one();
        assert!(is_test_fixture(&(to_biguint(p) * &fresh)));
        assert!(!is_test_fixture(&(&fresh * &other)));
        assert!(!is_test_fixture(&fresh));
        assert!(!is_test_fixture(&BigUint::one()));
    }

    #[test]
    fn fixture_sets_are_refused_unless_allowed() {
        for set in test_primes() {
            assert!(matches!(
                set.check(TestPrimes::Refused),
                Err(ThresholdError::TestFixturePrimes { .. })
            ));
            set.check(TestPrimes::Allowed).unwrap();
        }
    }

    #[test]
    fn moduli_sharing_a_prime_are_refused() {
        let sets = test_primes();
        let [p, q, _, _] = sets[0].0.primes_ref();
        let [r, _, _, _] = sets[1].0.primes_ref();
        let moduli = [
            ("a".to_string(), product(p, q)),
            ("b".to_string(), product(r, q)),
        ];
        match check_coprime(&moduli) {
            Err(ThresholdError::DuplicateModulus { first, second }) => {
                assert_eq!((first.as_str(), second.as_str()), ("a", "b"))
            }
            other => panic!("expected DuplicateModulus, got {other:?}"),
        }
        check_coprime(&moduli[..1]).unwrap();
    }

    #[test]
    fn safe_and_unsafe_primes_are_told_apart() {
        // 23 = 2·11 + 1 is a safe prime; 29 = 2·14 + 1 is prime but not safe.
        check_safe(&BigUint::from(23u8), "23").unwrap();
        assert!(matches!(
            check_safe(&BigUint::from(29u8), "29"),
            Err(ThresholdError::NotSafePrime { .. })
        ));
        // The fixture's 1536-bit Blum primes are primes, not safe primes.
        let [p, _, _, _] = test_primes()[0].0.primes_ref().clone();
        assert!(matches!(
            check_safe(&to_biguint(&p), "p"),
            Err(ThresholdError::NotSafePrime { .. })
        ));
    }
}
