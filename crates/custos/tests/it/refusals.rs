//! Every refusal of the TEE core process is a clear, typed error, and the TEE still serves
//! correctly afterwards.

use std::io::Write;
use std::os::unix::net::UnixStream;

use crate::common::*;
use custos::ops::{approvals, new_meta};
use custos_pki::clock::now_unix;
use custos_pki::{
    admin_csr, issue_admin_from_csr_with_validity, pem_to_der, AdminFolder, AdminSigner, FileKey,
    PkiDir, Validity,
};
use custos_wire::approval::Action;
use custos_wire::client::ClientError;
use custos_wire::frame::{
    encode_frame, read_frame, Kind, RefusalCode, HEADER_LEN, MAGIC, MAX_REQUEST, MAX_RESPONSE,
};
use custos_wire::protocol::{
    encode_request, ApprovalFault, KeyInfo, Request, RequestMeta, Response, TeeError,
    PROTOCOL_VERSION,
};

const PATH: [u32; 3] = [44 | 1 << 31, 0, 7];
const DIGEST: [u8; 32] = [0x42; 32];

/// A 2-of-3 wallet and a helper to prove the TEE still signs correctly.
fn setup() -> (Fixture, KeyInfo) {
    let mut fx = Fixture::new();
    let w = fx.create_wallet(2, &["alice", "bob"]);
    (fx, w)
}

fn assert_serves(fx: &mut Fixture, w: &KeyInfo) {
    let Response::Signature(sig) = fx
        .sign(&w.key_id, &PATH, DIGEST, &["alice", "carol"])
        .unwrap()
    else {
        panic!("expected a signature");
    };
    verify_independently(
        &sig,
        &DIGEST,
        &child_public_key(&mut fx.tee, &w.key_id, &PATH),
    );
}

fn sign_with(
    fx: &mut Fixture,
    w: &KeyInfo,
    meta: RequestMeta,
    approvals: Vec<custos_wire::approval::Approval>,
) -> Result<Response, ClientError> {
    fx.tee.call(&Request::Sign {
        meta,
        key_id: w.key_id.clone(),
        path: PATH.to_vec(),
        digest: DIGEST,
        approvals,
    })
}

#[test]
fn no_approval() {
    let (mut fx, w) = setup();
    let e = refusal(sign_with(&mut fx, &w, new_meta(60), vec![]));
    assert_eq!(e, TeeError::ApprovalMissing);
    assert_serves(&mut fx, &w);
}

#[test]
fn quorum_not_met_and_same_admin_twice() {
    let (mut fx, w) = setup();
    let e = refusal(fx.sign(&w.key_id, &PATH, DIGEST, &["alice"]));
    assert_eq!(
        e,
        TeeError::QuorumNotMet {
            required: 2,
            approved: 1
        }
    );
    let e = refusal(fx.sign(&w.key_id, &PATH, DIGEST, &["bob", "bob"]));
    assert_eq!(
        e,
        TeeError::QuorumNotMet {
            required: 2,
            approved: 1
        }
    );
    assert_serves(&mut fx, &w);
}

/// Approvals of the sign request by `known` admins, then by `outsider` (index 1).
fn with_outsider(
    fx: &Fixture,
    w: &KeyInfo,
    meta: &RequestMeta,
    known: &str,
    outsider: &AdminSigner,
) -> Vec<custos_wire::approval::Approval> {
    let mut appr = fx.sign_approvals(meta, &w.key_id, &PATH, &DIGEST, &[known]);
    appr.extend(
        approvals(
            &[outsider],
            CLUSTER,
            meta,
            &Action::Sign {
                key_id: &w.key_id,
                path: &PATH,
                digest: &DIGEST,
            },
        )
        .unwrap(),
    );
    appr
}

/// Asserts the second approval was rejected for `fault`, and the TEE still serves.
fn assert_second_rejected(fx: &mut Fixture, w: &KeyInfo, e: TeeError, fault: ApprovalFault) {
    match &e {
        TeeError::ApprovalRejected {
            index: 1, fault: f, ..
        } if *f == fault => {}
        _ => panic!("expected approval #1 rejected for {fault:?}, got {e:?}"),
    }
    assert_serves(fx, w);
}

#[test]
fn approval_by_certificate_of_another_ca() {
    let (mut fx, w) = setup();
    let other_dir = tempfile::tempdir().unwrap();
    let other = PkiDir::new(other_dir.path().join("pki"));
    other.init().unwrap();
    let mallory = AdminFolder::new(other_dir.path().join("mallory"))
        .enroll("alice", &other)
        .unwrap();
    let meta = new_meta(60);
    let appr = with_outsider(&fx, &w, &meta, "bob", &mallory);
    let e = refusal(sign_with(&mut fx, &w, meta, appr));
    assert_second_rejected(&mut fx, &w, e, ApprovalFault::UntrustedCertificate);
}

#[test]
fn approval_by_expired_admin_certificate() {
    let (mut fx, w) = setup();
    let past = Validity {
        not_before: time::OffsetDateTime::now_utc() - time::Duration::days(30),
        not_after: time::OffsetDateTime::now_utc() - time::Duration::days(1),
    };
    let dave_dir = tempfile::tempdir().unwrap();
    let key = std::sync::Arc::new(FileKey::generate(&dave_dir.path().join("admin.key")).unwrap());
    let csr = admin_csr("dave", key.clone()).unwrap();
    let issued = issue_admin_from_csr_with_validity(&fx.pki.pki, &csr, past).unwrap();
    let dave = AdminSigner::new(key, &issued.cert_pem, &issued.admin_ca_pem).unwrap();
    let meta = new_meta(60);
    let appr = with_outsider(&fx, &w, &meta, "alice", &dave);
    let e = refusal(sign_with(&mut fx, &w, meta, appr));
    assert_second_rejected(&mut fx, &w, e, ApprovalFault::CertificateNotValidNow);
}

#[test]
fn approval_over_another_digest_path_or_key() {
    let (mut fx, w) = setup();
    let other = fx.create_wallet(1, &["alice"]);
    let meta = new_meta(60);
    type Case<'a> = (&'a [u8], &'a [u32], [u8; 32], &'a str);
    let cases: [Case; 3] = [
        (&w.key_id, &PATH, [0x43; 32], "digest"),
        (&w.key_id, &[44 | 1 << 31, 0, 8], DIGEST, "path"),
        (&other.key_id, &PATH, DIGEST, "key"),
    ];
    for (key, path, digest, what) in cases {
        let appr = fx.sign_approvals(&meta, key, path, &digest, &["alice", "bob"]);
        let e = refusal(sign_with(&mut fx, &w, meta.clone(), appr));
        assert!(
            matches!(
                e,
                TeeError::ApprovalRejected {
                    index: 0,
                    fault: ApprovalFault::BadSignature,
                    ..
                }
            ),
            "approval over another {what}: {e:?}"
        );
    }
    // Approvals for another cluster, and a request id swapped after approval.
    let action = Action::Sign {
        key_id: &w.key_id,
        path: &PATH,
        digest: &DIGEST,
    };
    let appr = approvals(
        &fx.pki.admins_named(&["alice", "bob"]),
        "dc2",
        &meta,
        &action,
    )
    .unwrap();
    let e = refusal(sign_with(&mut fx, &w, meta.clone(), appr));
    assert!(
        matches!(
            e,
            TeeError::ApprovalRejected {
                fault: ApprovalFault::BadSignature,
                ..
            }
        ),
        "{e:?}"
    );
    let appr = fx.sign_approvals(&meta, &w.key_id, &PATH, &DIGEST, &["alice", "bob"]);
    let mut swapped = meta.clone();
    swapped.request_id[0] ^= 1;
    let e = refusal(sign_with(&mut fx, &w, swapped, appr));
    assert!(
        matches!(
            e,
            TeeError::ApprovalRejected {
                fault: ApprovalFault::BadSignature,
                ..
            }
        ),
        "{e:?}"
    );
    assert_serves(&mut fx, &w);
}

#[test]
fn expired_request() {
    let (mut fx, w) = setup();
    let meta = RequestMeta {
        request_id: [9; 16],
        expires_at: now_unix() - 10,
    };
    let appr = fx.sign_approvals(&meta, &w.key_id, &PATH, &DIGEST, &["alice", "bob"]);
    let e = refusal(sign_with(&mut fx, &w, meta, appr));
    assert!(matches!(e, TeeError::RequestExpired { .. }), "{e:?}");
    assert_serves(&mut fx, &w);
}

#[test]
fn second_root_pin() {
    let (mut fx, w) = setup();
    let root_cert = pem_to_der(&fx.pki.pki.root_pem().unwrap(), "root").unwrap();
    let e = refusal(fx.tee.call(&Request::PinRoot { root_cert }));
    assert_eq!(e, TeeError::RootAlreadyPinned);
    assert_serves(&mut fx, &w);
}

/// A fresh TEE with Root pinned and D generated for dc1/node2; returns its CSR (PEM).
fn fresh_node(fx: &Fixture) -> (Tee, String) {
    let mut tee = Tee::start(fx.pki.path(), "node2");
    let root_cert = pem_to_der(&fx.pki.pki.root_pem().unwrap(), "root").unwrap();
    tee.call(&Request::PinRoot { root_cert }).unwrap();
    let Response::DeviceCsr { csr, public_key } = tee
        .call(&Request::GenerateDeviceKey {
            cluster: CLUSTER.into(),
            node: "node2".into(),
        })
        .unwrap()
    else {
        panic!("expected a CSR");
    };
    tee.client.expect_device_key(public_key);
    (tee, custos_pki::der_to_pem(&csr, "CERTIFICATE REQUEST"))
}

fn install(
    tee: &mut Tee,
    pki: &PkiDir,
    cert_pem: &str,
    cluster: &str,
) -> Result<Response, ClientError> {
    tee.call(&Request::InstallDeviceCert {
        device: pem_to_der(cert_pem, "c").unwrap(),
        cluster_ca: pem_to_der(&pki.cluster_ca_pem(cluster).unwrap(), "c").unwrap(),
        device_ca: pem_to_der(&pki.device_ca_pem().unwrap(), "c").unwrap(),
    })
}

#[test]
fn device_certificate_for_another_cluster_or_key() {
    let (mut fx, w) = setup();
    let (mut tee, csr) = fresh_node(&fx);
    let pki = &fx.pki.pki;

    // Issued by dc2's Cluster CA for this very key: wrong cluster.
    let dc2_cert = pki.sign_device_csr("dc2", &csr).unwrap();
    let e = refusal(install(&mut tee, pki, &dc2_cert, "dc2"));
    assert_eq!(
        e,
        TeeError::DeviceCertWrongCluster {
            expected: "dc1".into(),
            found: "dc2".into()
        }
    );

    // A dc2 device certificate presented with dc1's CA as intermediate: the chain breaks.
    let e = refusal(install(&mut tee, pki, &dc2_cert, CLUSTER));
    assert!(matches!(e, TeeError::DeviceCertRejected(_)), "{e:?}");

    // A valid dc1 certificate for someone else's key.
    let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "node2");
    let other_csr = params.serialize_request(&other_key).unwrap().pem().unwrap();
    let other_cert = pki.sign_device_csr(CLUSTER, &other_csr).unwrap();
    let e = refusal(install(&mut tee, pki, &other_cert, CLUSTER));
    assert_eq!(e, TeeError::DeviceCertWrongKey);

    // The node still gets provisioned correctly afterwards, and the first one still signs.
    let good = pki.sign_device_csr(CLUSTER, &csr).unwrap();
    assert!(matches!(
        install(&mut tee, pki, &good, CLUSTER).unwrap(),
        Response::DeviceCertInstalled(_)
    ));
    assert_eq!(tee.status().device.unwrap().cluster, CLUSTER);
    assert_serves(&mut fx, &w);
}

#[test]
fn audit_message_of_9_bytes() {
    let (mut fx, w) = setup();
    let e = refusal(fx.tee.call(&Request::AuditSign {
        key_id: w.key_id.clone(),
        message: vec![1; 9],
    }));
    assert_eq!(e, TeeError::AuditMessageTooLong { len: 9, max: 8 });
    let Response::AuditSignature(sig) = fx
        .tee
        .call(&Request::AuditSign {
            key_id: w.key_id.clone(),
            message: vec![1; 8],
        })
        .unwrap()
    else {
        panic!("expected an audit signature");
    };
    verify_independently(
        &sig,
        &custos_wire::protocol::audit_digest(&[1; 8]),
        &w.key_id,
    );
    assert_serves(&mut fx, &w);
}

#[test]
fn unknown_key_and_bad_path() {
    let (mut fx, w) = setup();
    let e = refusal(fx.sign(&[2; 33], &PATH, DIGEST, &["alice", "bob"]));
    assert!(matches!(e, TeeError::UnknownKey(_)), "{e:?}");
    let e = refusal(fx.tee.call(&Request::GetXpub {
        key_id: w.key_id.clone(),
        path: vec![0; 33],
    }));
    assert!(matches!(e, TeeError::InvalidPath(_)), "{e:?}");
    assert_serves(&mut fx, &w);
}

fn header(kind: u8, len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.push(PROTOCOL_VERSION);
    h.push(kind);
    h.extend_from_slice(&len.to_be_bytes());
    h
}

fn raw_exchange(fx: &Fixture, bytes: &[u8]) -> (Kind, Vec<u8>) {
    let mut s = UnixStream::connect(&fx.tee.process.socket).unwrap();
    s.write_all(bytes).unwrap();
    read_frame(&mut s, MAX_RESPONSE).unwrap()
}

#[test]
fn oversize_and_malformed_frames() {
    let (mut fx, w) = setup();
    // Oversize: refused from the header alone, before any payload is sent.
    let (kind, p) = raw_exchange(&fx, &header(Kind::Request as u8, MAX_REQUEST as u32 + 1));
    assert_eq!((kind, p[0]), (Kind::Refusal, RefusalCode::TooLarge as u8));
    // Bad magic, unknown version, unknown kind.
    let mut bad = header(1, 0);
    bad[..4].copy_from_slice(b"HTTP");
    assert_eq!(raw_exchange(&fx, &bad).1[0], RefusalCode::BadMagic as u8);
    for other in [PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, 99] {
        let mut bad = header(1, 0);
        bad[4] = other;
        let (kind, p) = raw_exchange(&fx, &bad);
        assert_eq!(
            (kind, p[0]),
            (Kind::Refusal, RefusalCode::UnsupportedVersion as u8)
        );
        let message = String::from_utf8_lossy(&p[1..]).into_owned();
        assert!(
            message.contains(&format!("protocol version {other} not supported")),
            "{message}"
        );
    }
    assert_eq!(
        raw_exchange(&fx, &header(7, 0)).1[0],
        RefusalCode::BadKind as u8
    );
    // A well-framed but undecodable request, and one with trailing bytes: typed refusals.
    let outcome = fx
        .tee
        .client
        .call_bytes(&[PROTOCOL_VERSION, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    assert!(
        matches!(outcome, Err(TeeError::InvalidRequest(_))),
        "{outcome:?}"
    );
    // A request encoded for another protocol version, in a good frame: refused by name,
    // before anything of it is decoded.
    let mut old = encode_request(&Request::Status);
    old[0] = PROTOCOL_VERSION - 1;
    let outcome = fx.tee.client.call_bytes(&old).unwrap();
    assert_eq!(
        outcome,
        Err(TeeError::UnsupportedProtocol {
            found: PROTOCOL_VERSION - 1,
            supported: PROTOCOL_VERSION
        })
    );
    let mut req = encode_request(&Request::Status);
    req.push(0);
    let outcome = fx.tee.client.call_bytes(&req).unwrap();
    assert!(
        matches!(outcome, Err(TeeError::InvalidRequest(_))),
        "{outcome:?}"
    );
    // Two requests in one write (the server reads ahead): each answered, in order, and a
    // bad frame right behind a good one is refused after the good one's answer.
    let status = encode_request(&Request::Status);
    let chain = encode_request(&Request::DeviceChain);
    let mut both = encode_frame(Kind::Request, &status);
    both.extend_from_slice(&encode_frame(Kind::Request, &chain));
    let mut bad = header(1, 0);
    bad[..4].copy_from_slice(b"HTTP");
    both.extend_from_slice(&encode_frame(Kind::Request, &status));
    both.extend_from_slice(&bad);
    let mut s = UnixStream::connect(&fx.tee.process.socket).unwrap();
    // A server that lost the bytes it read ahead would leave this read waiting.
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(&both).unwrap();
    for expected in ["status", "chain", "status"] {
        let (kind, payload) = read_frame(&mut s, MAX_RESPONSE).unwrap();
        assert_eq!(kind, Kind::Response);
        let outcome = custos_wire::client::decode_outcome(&payload).unwrap();
        match (expected, outcome) {
            ("status", Ok(Response::Status(_))) | ("chain", Ok(Response::DeviceChain(_))) => {}
            (e, o) => panic!("expected {e}, got {o:?}"),
        }
    }
    let (kind, p) = read_frame(&mut s, MAX_RESPONSE).unwrap();
    assert_eq!((kind, p[0]), (Kind::Refusal, RefusalCode::BadMagic as u8));
    // A truncated frame followed by a hang-up does not disturb the server.
    let mut s = UnixStream::connect(&fx.tee.process.socket).unwrap();
    s.write_all(&header(1, 100)).unwrap();
    s.write_all(&[0; 10]).unwrap();
    drop(s);
    assert_serves(&mut fx, &w);
}

#[test]
fn tampered_sealed_record_is_refused_and_others_still_work() {
    let (mut fx, w) = setup();
    let victim = fx.create_wallet(1, &["alice"]);
    let store = fx.tee.process.store.clone();
    let victim_rec = format!("wallet/{}", hex::encode(&victim.key_id));
    fx.tee.process.kill();
    tamper_record(&store, &victim_rec, |v| {
        let last = v.len() - 1;
        v[last] ^= 0x01;
    });
    fx.tee.crash_and_restart();

    let e = refusal(fx.sign(&victim.key_id, &PATH, DIGEST, &["alice"]));
    assert!(matches!(e, TeeError::KeyRecordCorrupt { .. }), "{e:?}");
    let status = fx.tee.status();
    assert_eq!(status.corrupt_records.len(), 1, "{status:?}");
    assert!(status.corrupt_records[0]
        .1
        .contains("authentication failed"));
    assert_eq!(fx.tee.keys().len(), 1);

    // Another key's sealed record put in its place is foreign: refused too.
    fx.tee.process.kill();
    let other = stored_record(&store, &format!("wallet/{}", hex::encode(&w.key_id)));
    tamper_record(&store, &victim_rec, |v| *v = other);
    fx.tee.crash_and_restart();
    let e = refusal(fx.sign(&victim.key_id, &PATH, DIGEST, &["alice"]));
    assert!(matches!(e, TeeError::KeyRecordCorrupt { .. }), "{e:?}");
    assert_serves(&mut fx, &w);
}

#[test]
fn responses_are_signed_by_the_device_key() {
    let (mut fx, w) = setup();
    // The fixture's client already requires D's signature on every response; a client that
    // expects another key rejects the same, valid, response.
    let mut wrong = fx.tee.process.client().unwrap();
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    wrong.expect_device_key(other.public_key_raw().to_vec());
    let err = wrong.call(&Request::Status).unwrap_err();
    assert!(matches!(err, ClientError::ResponseSignature(_)), "{err:?}");
    assert_serves(&mut fx, &w);
}

#[test]
fn quorum_zero_and_creation_quorum_are_enforced() {
    let (mut fx, w) = setup();
    // Creating a 3-admin key needs 3 admins.
    let meta = new_meta(60);
    let appr = approvals(
        &fx.pki.admins_named(&["alice", "bob"]),
        CLUSTER,
        &meta,
        &Action::CreateWallet { quorum: 3 },
    )
    .unwrap();
    let e = refusal(fx.tee.call(&Request::CreateWallet {
        meta,
        quorum: 3,
        approvals: appr,
    }));
    assert_eq!(
        e,
        TeeError::QuorumNotMet {
            required: 3,
            approved: 2
        }
    );
    let meta = new_meta(60);
    let appr = approvals(
        &fx.pki.admins_named(&["alice"]),
        CLUSTER,
        &meta,
        &Action::CreateWallet { quorum: 0 },
    )
    .unwrap();
    let e = refusal(fx.tee.call(&Request::CreateWallet {
        meta,
        quorum: 0,
        approvals: appr,
    }));
    assert!(matches!(e, TeeError::InvalidRequest(_)), "{e:?}");
    assert_eq!(fx.tee.keys().len(), 1);
    assert_serves(&mut fx, &w);
}

/// The same approved create-wallet sent again (its answer was lost on the way back) gets
/// the wallet it made, before and after a restart, and never a second one; the same id
/// approved for other terms gets nothing.
#[test]
fn a_create_approval_creates_one_wallet_even_after_a_restart() {
    let (mut fx, w) = setup();
    let meta = new_meta(600);
    let appr = approvals(
        &fx.pki.admins_named(&["alice"]),
        CLUSTER,
        &meta,
        &Action::CreateWallet { quorum: 1 },
    )
    .unwrap();
    let req = Request::CreateWallet {
        meta: meta.clone(),
        quorum: 1,
        approvals: appr,
    };
    let Response::Wallet(first) = fx.tee.call(&req).unwrap() else {
        panic!("no wallet")
    };
    let again = |fx: &mut Fixture| match fx.tee.call(&req).unwrap() {
        Response::Wallet(info) => info,
        other => panic!("{other:?}"),
    };
    assert_eq!(again(&mut fx), first);
    fx.tee.crash_and_restart();
    assert_eq!(again(&mut fx), first);
    let other_terms = Request::CreateWallet {
        meta: meta.clone(),
        quorum: 2,
        approvals: approvals(
            &fx.pki.admins_named(&["alice", "bob"]),
            CLUSTER,
            &meta,
            &Action::CreateWallet { quorum: 2 },
        )
        .unwrap(),
    };
    let e = refusal(fx.tee.call(&other_terms));
    assert!(matches!(e, TeeError::RequestReplayed(_)), "{e:?}");
    assert_eq!(fx.tee.keys().len(), 2);
    assert_serves(&mut fx, &w);
}

/// Attack: bob's own key certified a second time under another name ("bobby", a genuine
/// certificate of the same Admin CA) must not make bob two approvers. An admin is the
/// certified key, not the subject.
#[test]
fn one_key_certified_under_two_names_counts_once() {
    let (mut fx, w) = setup();
    let bob = fx.pki.admin_folder("bob");
    let key = std::sync::Arc::new(FileKey::load(&bob.key()).unwrap());
    let issued = fx
        .pki
        .pki
        .sign_admin_csr(&admin_csr("bobby", key.clone()).unwrap())
        .unwrap();
    let bobby = AdminSigner::new(key, &issued.cert_pem, &issued.admin_ca_pem).unwrap();
    assert_eq!(
        bobby.key_fingerprint(),
        fx.pki.admin("bob").key_fingerprint()
    );
    let meta = new_meta(60);
    let appr = with_outsider(&fx, &w, &meta, "bob", &bobby);
    let e = refusal(sign_with(&mut fx, &w, meta, appr));
    assert_eq!(
        e,
        TeeError::QuorumNotMet {
            required: 2,
            approved: 1
        }
    );
    assert_serves(&mut fx, &w);
}
