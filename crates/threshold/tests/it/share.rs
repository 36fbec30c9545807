//! Key shares, primes, dealer parameters, phases: no protocol runs.

use crate::common::*;
use custos_threshold::{
    deal, fixtures, Phase, Primes, Session, SessionError, SessionKind, ThresholdError,
    ThresholdShare, MAX_SHARE_BYTES,
};

#[test]
fn sealed_share_round_trip_and_validation() {
    let shares = deal_2_of_3(true);
    for (i, s) in shares.iter().enumerate() {
        assert_eq!(s.index(), i as u16);
        let bytes = s.to_sealed_bytes();
        assert!(bytes.len() < 32 * 1024, "share is {} bytes", bytes.len());
        let back = ThresholdShare::from_bytes(&bytes).unwrap();
        assert_eq!(back.public_key(), s.public_key());
        assert_eq!(back.index(), s.index());
        assert_eq!(back.to_sealed_bytes().as_slice(), bytes.as_slice());
    }
    // the library validates on decode: a share whose secret does not match its public share fails
    let mut v: serde_json::Value = serde_json::from_slice(&shares[0].to_sealed_bytes()).unwrap();
    let x1 = serde_json::from_slice::<serde_json::Value>(&shares[1].to_sealed_bytes()).unwrap()
        ["core"]["x"]
        .clone();
    v["core"]["x"] = x1;
    let err = ThresholdShare::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(matches!(err, ThresholdError::Decode { .. }), "{err:?}");
    // garbage and oversized input
    assert!(matches!(
        ThresholdShare::from_bytes(b"{}"),
        Err(ThresholdError::Decode { .. })
    ));
    assert!(matches!(
        ThresholdShare::from_bytes(&vec![b' '; MAX_SHARE_BYTES + 1]),
        Err(ThresholdError::TooLarge { .. })
    ));
}

#[test]
fn debug_output_has_no_secrets() {
    let shares = deal_2_of_3(true);
    let sealed = shares[0].to_sealed_bytes();
    let v: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
    let x = v["core"]["x"]
        .as_str()
        .expect("secret share is a hex string")
        .to_string();
    let p = v["aux"]["p"]["value"]
        .as_str()
        .expect("Paillier p")
        .to_string();
    let dbg = format!("{:?}", shares[0]);
    assert!(dbg.starts_with("ThresholdShare {"), "{dbg}");
    assert!(!dbg.contains(&x) && !dbg.contains(&p[..32]), "{dbg}");
    let primes = &fixtures::test_primes()[0];
    assert_eq!(format!("{primes:?}"), "Primes { .. }");
    let kind = SessionKind::Sign {
        share: shares[0].clone(),
        parties: vec![0, 1],
        my_position: 0,
        path: None,
        digest: [1; 32],
    };
    let dbg = format!("{kind:?}");
    assert!(!dbg.contains(&x) && !dbg.contains(&p[..32]), "{dbg}");
}

#[test]
fn child_keys_match_bip32_and_hardened_is_refused() {
    let shares = deal_2_of_3(true);
    let root = shares[0].public_key();
    let cc = shares[0].chain_code().unwrap();
    for path in [&[][..], &[0], &[1, 2, 3], &[0x7fff_ffff, 44, 0]] {
        assert_eq!(
            shares[2].derive_child_public_key(path).unwrap(),
            bip32_child(root, cc, path).serialize(),
            "path {path:?}"
        );
    }
    assert_eq!(shares[0].derive_child_public_key(&[]).unwrap(), root);
    assert_eq!(
        shares[0].derive_child_public_key(&[44, 0x8000_0000]),
        Err(ThresholdError::HardenedIndex(0x8000_0000))
    );
    assert!(matches!(
        shares[0].derive_child_public_key(&vec![1; 256]),
        Err(ThresholdError::PathTooLong(256))
    ));
    let xpub = shares[0].xpub().unwrap();
    assert_eq!(xpub.public_key.serialize(), root);
    assert!(xpub.to_string().starts_with("xpub"));

    // a non-HD key has no children, and signing sessions check the same
    let plain = deal_2_of_3(false);
    assert!(plain[0].chain_code().is_none() && plain[0].xpub().is_none());
    assert_eq!(
        plain[0].derive_child_public_key(&[1]),
        Err(ThresholdError::NotHd)
    );
    let sign = |share: &ThresholdShare, path: Vec<u32>| {
        Session::new(
            SessionKind::Sign {
                share: share.clone(),
                parties: vec![0, 1],
                my_position: 0,
                path: Some(path),
                digest: [1; 32],
            },
            eid(),
        )
        .map(|_| ())
        .unwrap_err()
    };
    assert_eq!(
        sign(&plain[0], vec![1]),
        SessionError::Threshold(ThresholdError::NotHd)
    );
    assert_eq!(
        sign(&shares[0], vec![0x8000_0002]),
        SessionError::Threshold(ThresholdError::HardenedIndex(0x8000_0002))
    );
}

#[test]
fn session_parameters_are_checked() {
    let shares = deal_2_of_3(true);
    let start = |share: usize, parties: Vec<u16>, pos: u16| {
        Session::new(
            SessionKind::Sign {
                share: shares[share].clone(),
                parties,
                my_position: pos,
                path: None,
                digest: [1; 32],
            },
            eid(),
        )
        .map(|_| ())
    };
    for (share, parties, pos) in [
        (0, vec![0, 1, 2], 0), // t = 2 signers exactly
        (0, vec![0, 0], 0),    // twice
        (0, vec![0, 3], 0),    // out of range
        (0, vec![1, 0], 0),    // position 0 is signer 1
        (0, vec![0, 1], 2),    // outside the list
    ] {
        assert!(
            matches!(
                start(share, parties.clone(), pos),
                Err(SessionError::InvalidParameters(_))
            ),
            "{parties:?} {pos}"
        );
    }
    for (my_index, n, t) in [(0, 3, 1), (0, 3, 4), (3, 3, 2)] {
        assert!(matches!(
            Session::new(
                SessionKind::Keygen {
                    my_index,
                    n,
                    t,
                    hd: true
                },
                eid()
            ),
            Err(SessionError::InvalidParameters(_))
        ));
    }
}

#[test]
fn primes_and_dealer_parameters() {
    let primes = fixtures::test_primes();
    assert_eq!(primes.len(), 6);
    let back = Primes::from_bytes(&primes[0].to_sealed_bytes()).unwrap();
    assert_eq!(
        back.to_sealed_bytes().as_slice(),
        primes[0].to_sealed_bytes().as_slice()
    );
    // too-small primes are refused on decode
    let small = r#"{"primes":[{"radix":16,"value":"b"},{"radix":16,"value":"b"},{"radix":16,"value":"b"},{"radix":16,"value":"b"}],"_phantom":null}"#;
    assert!(matches!(
        Primes::from_bytes(small.as_bytes()),
        Err(ThresholdError::Decode { .. })
    ));

    assert!(matches!(
        deal(1, 3, true, Some(primes[..3].to_vec()), &mut |_| {}),
        Err(ThresholdError::InvalidParameters(_))
    ));
    assert!(matches!(
        deal(3, 2, true, Some(primes[..2].to_vec()), &mut |_| {}),
        Err(ThresholdError::InvalidParameters(_))
    ));
    assert!(matches!(
        deal(2, 3, true, Some(primes[..2].to_vec()), &mut |_| {}),
        Err(ThresholdError::InvalidParameters(_))
    ));
    // 3-of-4 with the fourth set
    let mut events = vec![];
    let shares = deal(3, 4, false, Some(primes[..4].to_vec()), &mut |p| {
        events.push(p)
    })
    .unwrap();
    assert_eq!(
        (shares[3].threshold(), shares[3].n(), shares[3].index()),
        (3, 4, 3)
    );
    assert_eq!(events, vec![custos_threshold::DealerProgress::SharesReady]);
}

#[test]
fn phase_names() {
    let names: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "getAB",
            "getAB_and_R",
            "getR",
            "getSig",
            "keygen",
            "auxInfo",
            "presign"
        ]
    );
    for n in names {
        assert_eq!(Phase::parse(n).unwrap().as_str(), n);
    }
}

/// Found by review of the fuzz targets: the library read `aux.N[i]` (one Paillier key per
/// party) after checking only the Pedersen parameters' count, so a share decoded with a
/// shortened `N` panicked the TEE process. Now refused as invalid (vendor/cggmp24, change 2).
#[test]
fn a_share_with_too_few_paillier_keys_is_refused_not_a_panic() {
    let shares = deal_2_of_3(true);
    for i in [0usize, 2] {
        let mut v: serde_json::Value =
            serde_json::from_slice(&shares[i].to_sealed_bytes()).unwrap();
        let keys = v["aux"]["N"].as_array_mut().expect("aux.N");
        assert_eq!(keys.len(), 3);
        keys.truncate(i);
        let err = ThresholdShare::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, ThresholdError::Decode { .. }), "{err:?}");
    }
}
