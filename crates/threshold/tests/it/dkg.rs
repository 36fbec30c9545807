//! Distributed key generation: threshold keygen (fast) and aux-info generation (slow with
//! SL128-sized primes, so `#[ignore]`d: about 40 s for 3 parties on 2 cores; run it with
//! `cargo test -p custos-threshold --test it -- --ignored dkg::`).

use std::time::Instant;

use crate::common::*;
use custos_threshold::{
    fixtures, inspect, AuxInfo, IncompleteShare, Output, Phase, ProtocolKind, Session, SessionKind,
    Signature, ThresholdShare,
};
use sha2::{Digest, Sha256};

fn keygen(hd: bool) -> Vec<IncompleteShare> {
    let e = eid();
    let sessions: Vec<_> = (0..3u16)
        .map(|i| {
            Session::new(
                SessionKind::Keygen {
                    my_index: i,
                    n: 3,
                    t: 2,
                    hd,
                },
                e,
            )
            .unwrap()
        })
        .collect();
    for (_, out) in &sessions {
        for o in out {
            let info = inspect(ProtocolKind::Keygen, &o.bytes).unwrap();
            assert_eq!((info.phase, info.round), (o.phase, o.round));
            assert_eq!(o.phase, Phase::Keygen);
        }
    }
    relay(sessions, None)
        .into_iter()
        .map(|o| match o.unwrap() {
            Output::Incomplete(s) => s,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn keygen_three_parties_agree_on_the_key() {
    let t = Instant::now();
    let cores = keygen(true);
    eprintln!(
        "keygen, 3 parties [{:.1} ms]",
        t.elapsed().as_secs_f64() * 1e3
    );
    for (i, c) in cores.iter().enumerate() {
        assert_eq!(c.index(), i as u16);
        assert_eq!((c.threshold(), c.n()), (2, 3));
        assert_eq!(c.public_key(), cores[0].public_key());
        assert_eq!(c.chain_code(), cores[0].chain_code());
        assert!(c.is_hd());
        assert_eq!(
            c.derive_child_public_key(&[5, 6]).unwrap(),
            cores[0].derive_child_public_key(&[5, 6]).unwrap()
        );
        // sealed round trip
        let back = IncompleteShare::from_bytes(&c.to_sealed_bytes()).unwrap();
        assert_eq!(back.public_key(), c.public_key());
        assert!(!format!("{c:?}").contains("\"x\""));
    }
    let child = bip32_child(
        cores[0].public_key(),
        cores[0].chain_code().unwrap(),
        &[5, 6],
    );
    assert_eq!(
        cores[2].derive_child_public_key(&[5, 6]).unwrap(),
        child.serialize()
    );
    let plain = keygen(false);
    assert!(!plain[0].is_hd());
    assert_eq!(plain[1].public_key(), plain[0].public_key());
}

#[test]
#[ignore = "aux-info generation with SL128-sized primes takes ~40 s (3 parties, 2 cores); run with --ignored"]
fn aux_info_then_full_shares_sign() {
    let cores = keygen(true);
    let primes = fixtures::test_primes();
    let e = eid();
    let t = Instant::now();
    let sessions: Vec<_> = (0..3u16)
        .map(|i| {
            Session::new(
                SessionKind::AuxInfo {
                    my_index: i,
                    n: 3,
                    primes: primes[usize::from(i)].clone(),
                },
                e,
            )
            .unwrap()
        })
        .collect();
    let auxes: Vec<AuxInfo> = relay(sessions, None)
        .into_iter()
        .map(|o| match o.unwrap() {
            Output::Aux(a) => a,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    eprintln!("aux info, 3 parties [{:.1} s]", t.elapsed().as_secs_f64());
    let auxes: Vec<AuxInfo> = auxes
        .iter()
        .map(|a| AuxInfo::from_bytes(&a.to_sealed_bytes()).unwrap())
        .collect();
    // parts of different parties do not fit together
    assert!(ThresholdShare::from_parts(cores[1].clone(), auxes[0].clone()).is_err());
    // one aux info serves another key of the same group
    let other = keygen(true);
    let other_share = ThresholdShare::from_parts(other[1].clone(), auxes[1].clone()).unwrap();
    assert_eq!(other_share.public_key(), other[0].public_key());
    let shares: Vec<ThresholdShare> = cores
        .into_iter()
        .zip(auxes)
        .map(|(c, a)| ThresholdShare::from_parts(c, a).unwrap())
        .collect();

    let digest: [u8; 32] = Sha256::digest(b"dkg key").into();
    let e = eid();
    let sessions = (0..2u16)
        .map(|pos| {
            Session::new(
                SessionKind::Sign {
                    share: shares[usize::from(pos) * 2].clone(),
                    parties: vec![0, 2],
                    my_position: pos,
                    path: Some(vec![5, 6]),
                    digest,
                },
                e,
            )
            .unwrap()
        })
        .collect();
    let sig: Vec<Signature> = relay(sessions, None)
        .into_iter()
        .map(|o| match o.unwrap() {
            Output::Signature(s) => s,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let child = bip32_child(
        shares[0].public_key(),
        shares[0].chain_code().unwrap(),
        &[5, 6],
    );
    verify_independently(&sig[0], &child, &digest);
}
