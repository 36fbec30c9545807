//! Presignatures: refused for HD keys; for a non-HD 2-of-3 key, one presignature generation
//! (the suite's fourth and last full protocol run), partials over the full message, combine,
//! independent verification, and a wrong partial named by position.

use std::time::Instant;

use crate::common::*;
use bitcoin::secp256k1::PublicKey;
use custos_threshold::{
    combine, issue_partial, Output, PartialSig, PublicError, Session, SessionError, SessionKind,
    StoredPresignature, ThresholdError,
};
use sha2::{Digest, Sha256};

#[test]
fn presignatures_are_refused_for_hd_shares() {
    let shares = deal_2_of_3(true);
    let err = Session::new(
        SessionKind::Presign {
            share: shares[0].clone(),
            parties: vec![0, 1],
            my_position: 0,
        },
        eid(),
    )
    .unwrap_err();
    assert_eq!(err, SessionError::Threshold(ThresholdError::HdPresignature));
}

#[test]
fn presign_issue_partials_combine_verify() {
    let t0 = Instant::now();
    let shares = deal_2_of_3(false);
    assert!(!shares[0].is_hd());
    let signers = [1u16, 2];
    let e = eid();
    let sessions = (0..2u16)
        .map(|pos| {
            Session::new(
                SessionKind::Presign {
                    share: shares[usize::from(signers[usize::from(pos)])].clone(),
                    parties: signers.to_vec(),
                    my_position: pos,
                },
                e,
            )
            .unwrap()
        })
        .collect();
    // what each TEE would seal
    let sealed: Vec<_> = relay(sessions, None)
        .into_iter()
        .map(|o| match o.unwrap() {
            Output::Presignature(p) => p.to_sealed_bytes(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    eprintln!(
        "presignature generation [{:.2} s]",
        t0.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let message = b"transfer 1 BTC to bc1q... (the full message, hashed inside the TEE)";
    let stored: Vec<StoredPresignature> = sealed
        .iter()
        .map(|b| StoredPresignature::from_bytes(b).unwrap())
        .collect();
    let public = stored[0].public().clone();
    assert_eq!(&public, stored[1].public());
    assert_eq!(public.parties(), &signers);
    assert_eq!(public.public_key(), shares[0].public_key());
    assert!(format!("{:?}", stored[0]).starts_with("StoredPresignature {"));
    let partials: Vec<PartialSig> = stored
        .into_iter()
        .map(|p| issue_partial(p, message))
        .collect();
    assert_eq!(partials[0].position, 0);
    assert_eq!(partials[1].position, 1);
    let sig = combine(&partials, &public, message).expect("combine");
    eprintln!(
        "online: decode, 2 partials, combine [{:.2} ms]",
        t.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(sig.r, public.r());
    let digest: [u8; 32] = Sha256::digest(message).into();
    verify_independently(
        &sig,
        &PublicKey::from_slice(&shares[0].public_key()).unwrap(),
        &digest,
    );

    // a wrong partial is named
    let mut bad = partials.clone();
    bad[1].sigma[31] ^= 1;
    assert_eq!(
        combine(&bad, &public, message),
        Err(PublicError::BadPartial { position: 1 })
    );
    // partials for another message do not combine for this one
    assert_eq!(
        combine(&partials, &public, b"another message"),
        Err(PublicError::BadPartial { position: 0 })
    );
    // order and count are checked
    let swapped = [partials[1], partials[0]];
    assert!(matches!(
        combine(&swapped, &public, message),
        Err(PublicError::InvalidParameters(_))
    ));
    assert!(matches!(
        combine(&partials[..1], &public, message),
        Err(PublicError::InvalidParameters(_))
    ));
}
