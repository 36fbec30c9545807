//! Key sync between TEE processes (patent [0068]): HPKE-sealed, D-signed, batched transfers,
//! checked by both TEEs; foreign requesters and altered transfers are refused.

use crate::common::*;
use custos_wire::protocol::{CertChain, KeyTransfer, Request, Response, TeeError};

fn chain_of(tee: &mut Tee) -> CertChain {
    match tee.call(&Request::DeviceChain).unwrap() {
        Response::DeviceChain(c) => c,
        r => panic!("unexpected {r:?}"),
    }
}

pub(crate) fn export(
    from: &mut Tee,
    to: CertChain,
    key_ids: Vec<Vec<u8>>,
) -> Result<KeyTransfer, TeeError> {
    match from.call(&Request::ExportKeys {
        requester: to,
        key_ids,
    }) {
        Ok(Response::KeyTransfer(t)) => Ok(t),
        other => Err(refusal(other)),
    }
}

fn import(to: &mut Tee, transfer: KeyTransfer) -> Result<(usize, u32), TeeError> {
    match to.call(&Request::ImportKeys { transfer }) {
        Ok(Response::KeysImported {
            imported,
            already_held,
        }) => Ok((imported.len(), already_held)),
        other => Err(refusal(other)),
    }
}

#[test]
fn batched_transfer_makes_a_peer_hold_the_same_keys() {
    let mut fx = Fixture::new();
    let mut wallets = Vec::new();
    for _ in 0..40 {
        wallets.push(fx.create_wallet(1, &["alice"]));
    }
    let mut node2 = Tee::start(fx.pki.path(), "node2");
    node2.provision(&fx.pki.pki, CLUSTER, "node2");
    let ids: Vec<Vec<u8>> = wallets.iter().map(|w| w.key_id.clone()).collect();
    let transfer = export(&mut fx.tee, chain_of(&mut node2), ids.clone()).unwrap();
    assert_eq!(transfer.key_ids.len(), 40);
    assert_eq!(import(&mut node2, transfer.clone()).unwrap(), (40, 0));
    // A replayed transfer stores nothing twice.
    assert_eq!(import(&mut node2, transfer).unwrap(), (0, 40));

    let mut a = fx.tee.keys();
    let mut b = node2.keys();
    a.sort_by(|x, y| x.key_id.cmp(&y.key_id));
    b.sort_by(|x, y| x.key_id.cmp(&y.key_id));
    assert_eq!(a, b);

    // Same request on both nodes: the same valid signature (RFC 6979 determinism).
    let meta = custos::ops::new_meta(60);
    let path = [3u32, 1 << 31];
    let digest = [0x11; 32];
    let approvals = fx.sign_approvals(&meta, &ids[7], &path, &digest, &["alice"]);
    let req = Request::Sign {
        meta,
        key_id: ids[7].clone(),
        path: path.to_vec(),
        digest,
        approvals,
    };
    let (Response::Signature(s1), Response::Signature(s2)) =
        (fx.tee.call(&req).unwrap(), node2.call(&req).unwrap())
    else {
        panic!("expected signatures");
    };
    assert_eq!(s1, s2);
    verify_independently(&s2, &digest, &child_public_key(&mut node2, &ids[7], &path));

    // Synced keys survive a crash of the receiver.
    node2.crash_and_restart();
    assert_eq!(node2.keys().len(), 40);
}

#[test]
fn requester_from_another_cluster_or_a_bridge_receives_nothing() {
    let mut fx = Fixture::new();
    let w = fx.create_wallet(1, &["alice"]);
    let mut foreign = Tee::start(fx.pki.path(), "foreign");
    foreign.provision(&fx.pki.pki, "dc2", "foreign");
    let e = export(&mut fx.tee, chain_of(&mut foreign), vec![w.key_id.clone()]).unwrap_err();
    assert!(
        matches!(e, TeeError::RequesterRejected(ref m) if m.contains("dc2")),
        "{e:?}"
    );

    let bridge = fx.pki.pki.issue_bridge(CLUSTER).unwrap();
    let mut as_bridge = chain_of(&mut fx.tee);
    as_bridge.device = custos_pki::pem_to_der(&bridge.cert_pem, "c").unwrap();
    let e = export(&mut fx.tee, as_bridge, vec![w.key_id.clone()]).unwrap_err();
    assert!(matches!(e, TeeError::RequesterRejected(_)), "{e:?}");
    assert_eq!(foreign.keys().len(), 0);
}

#[test]
fn altered_or_misaddressed_transfers_are_refused_and_nothing_is_stored() {
    let mut fx = Fixture::new();
    let w1 = fx.create_wallet(1, &["alice"]);
    let w2 = fx.create_wallet(1, &["alice"]);
    let mut node2 = Tee::start(fx.pki.path(), "node2");
    node2.provision(&fx.pki.pki, CLUSTER, "node2");
    let mut node3 = Tee::start(fx.pki.path(), "node3");
    node3.provision(&fx.pki.pki, CLUSTER, "node3");
    let good = export(
        &mut fx.tee,
        chain_of(&mut node2),
        vec![w1.key_id.clone(), w2.key_id.clone()],
    )
    .unwrap();

    let mut alterations: Vec<(&str, KeyTransfer)> = Vec::new();
    let mut t = good.clone();
    let last = t.ciphertext.len() - 1;
    t.ciphertext[last] ^= 1;
    alterations.push(("ciphertext", t));
    let mut t = good.clone();
    t.enc[10] ^= 1;
    alterations.push(("encapsulated key", t));
    let mut t = good.clone();
    t.key_ids.swap(0, 1);
    alterations.push(("key id order", t));
    let mut t = good.clone();
    t.key_ids.pop();
    alterations.push(("key id list", t));
    let mut t = good.clone();
    t.signature[8] ^= 1;
    alterations.push(("signature", t));
    let mut t = good.clone();
    t.sender = chain_of(&mut node3);
    alterations.push(("sender swapped", t));
    for (what, t) in alterations {
        let e = import(&mut node2, t).unwrap_err();
        assert!(matches!(e, TeeError::TransferRejected(_)), "{what}: {e:?}");
        assert!(node2.keys().is_empty(), "{what}: something was stored");
    }
    // Addressed to node2: node3 cannot use it.
    let e = import(&mut node3, good.clone()).unwrap_err();
    assert!(
        matches!(e, TeeError::TransferRejected(ref m) if m.contains("another node")),
        "{e:?}"
    );
    assert!(node3.keys().is_empty());
    // A key listed twice is refused on export.
    let e = export(
        &mut fx.tee,
        chain_of(&mut node2),
        vec![w1.key_id.clone(), w1.key_id.clone()],
    )
    .unwrap_err();
    assert!(
        matches!(e, TeeError::InvalidRequest(ref m) if m.contains("twice")),
        "{e:?}"
    );
    // The genuine transfer still works afterwards.
    assert_eq!(import(&mut node2, good).unwrap(), (2, 0));
}

#[test]
fn tls_signing_is_limited_to_tls13_certificate_verify() {
    let mut fx = Fixture::new();
    let mut msg = vec![0x20u8; 64];
    msg.extend_from_slice(b"TLS 1.3, client CertificateVerify\0");
    msg.extend_from_slice(&[7u8; 32]);
    let Response::TlsSignature(sig) = fx
        .tee
        .call(&Request::SignTls {
            message: msg.clone(),
        })
        .unwrap()
    else {
        panic!("expected a signature");
    };
    let d = fx.tee.device_key.clone().unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &d)
        .verify(&msg, &sig)
        .unwrap();
    for bad in [
        b"CUSTOS-KEY-TRANSFER-V1\0anything".to_vec(),
        msg[..msg.len() - 1].to_vec(),
        [&msg[..], &[0u8]].concat(),
    ] {
        let e = refusal(fx.tee.call(&Request::SignTls { message: bad }));
        assert_eq!(e, TeeError::TlsSignRefused);
    }
}
