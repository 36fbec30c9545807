//! Passkey approvals checked by the TEE (issue 17, step P2), attacker first: an assertion
//! made on another site, for another relying party, without user verification, for another
//! request, replayed by a cloned authenticator, by a passkey the Admin CA never certified, or
//! by a revoked admin is refused by name, and nothing of it is kept. The signature counters
//! the TEE keeps are sealed with the request and survive a restart.

use std::sync::atomic::Ordering;

use custos_tee_core::TeeCore;
use custos_test_kit::governance::{member, GovLog};
use custos_test_kit::passkey::{Made, Passkey, PasskeyAdmin, ORIGIN};
use custos_test_kit::{call_core as call, MemPlatform, Pki};
use custos_wire::approval::{Action, Approval};
use custos_wire::governance::GovChange;
use custos_wire::protocol::{ApprovalFault, Request, RequestMeta, Response, TeeError};

use crate::governance::{apply, chain, create_group_wallet, meta, reopen};

const CLUSTER: &str = "dc1";
const DIGEST: [u8; 32] = [0x5a; 32];

/// A governed node1 (governors alice and bob) holding a wallet whose group is alice and the
/// passkey admin dave, one of them needed; the governance log, dave, and the key id.
struct Fixture<'a> {
    core: TeeCore<MemPlatform>,
    log: GovLog<'a>,
    dave: PasskeyAdmin,
    key: Vec<u8>,
}

fn fixture(pki: &Pki) -> Fixture<'_> {
    let mut core = pki.node(CLUSTER, "node1");
    let me = member(pki, &chain(&mut core));
    let executor = me.key_fingerprint;
    let log = GovLog::genesis(pki, CLUSTER, &["alice", "bob"], 1, vec![me], &["alice"]);
    apply(&mut core, log.entries()).unwrap();
    let dave = pki.enroll_passkey_admin("dave");
    let mut group = vec![pki.admin("alice").key_fingerprint(), dave.passkey.fp()];
    group.sort();
    let policy = custos_wire::policy::KeyPolicy {
        version: 1,
        group,
        quorum: 1,
        rules: vec![],
    };
    let key = create_group_wallet(pki, &mut core, &policy, executor, &["alice"])
        .unwrap()
        .key_id;
    Fixture {
        core,
        log,
        dave,
        key,
    }
}

/// The approval message of a sign request of `key` under `meta`.
fn message(key: &[u8], meta: &RequestMeta) -> Vec<u8> {
    Action::Sign {
        key_id: key,
        path: &[1],
        digest: &DIGEST,
    }
    .message(CLUSTER, meta)
}

/// A sign request of `key` under `meta` approved by `approval`.
fn sign_request(key: &[u8], meta: RequestMeta, approval: Approval) -> Request {
    Request::Sign {
        meta,
        key_id: key.to_vec(),
        path: vec![1],
        digest: DIGEST,
        approvals: vec![approval],
    }
}

/// Sends a new sign request approved by what `approve` makes of its message.
fn sign_with(
    core: &mut TeeCore<MemPlatform>,
    key: &[u8],
    approve: impl FnOnce(&[u8]) -> Approval,
) -> Result<Response, TeeError> {
    let meta = meta();
    let approval = approve(&message(key, &meta));
    call(core, &sign_request(key, meta, approval))
}

fn signed(r: Result<Response, TeeError>) {
    assert!(matches!(r, Ok(Response::Signature(_))), "{r:?}");
}

fn refused(r: Result<Response, TeeError>, want: ApprovalFault) {
    match r {
        Err(TeeError::ApprovalRejected { fault, .. }) if fault == want => {}
        other => panic!("expected {}, got {other:?}", want.as_str()),
    }
}

/// `dave`'s honest assertion of the message with its next counter, spoiled by `change`.
fn spoiled<'a>(
    dave: &'a PasskeyAdmin,
    change: impl Fn(&mut Made) + 'a,
) -> impl FnOnce(&[u8]) -> Approval + 'a {
    move |m| {
        let mut made = Made::honest(ORIGIN, m, dave.passkey.next_counter());
        change(&mut made);
        dave.approval(&made)
    }
}

#[test]
fn a_passkey_assertion_made_on_the_console_approves_and_each_forgery_is_refused_by_name() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let Fixture {
        mut core,
        dave,
        key,
        ..
    } = fixture(&pki);
    signed(sign_with(&mut core, &key, |m| dave.approve(m)));

    // A phishing site relaying the console's challenge: the browser writes its own origin.
    refused(
        sign_with(
            &mut core,
            &key,
            spoiled(&dave, |m| m.origin = format!("{ORIGIN}.evil.example")),
        ),
        ApprovalFault::WrongOrigin,
    );
    // A credential of another relying party.
    refused(
        sign_with(
            &mut core,
            &key,
            spoiled(&dave, |m| m.rp_id = "evil.example".into()),
        ),
        ApprovalFault::WrongRpId,
    );
    // Touched, but no PIN or biometric.
    refused(
        sign_with(&mut core, &key, spoiled(&dave, |m| m.flags = 0x01)),
        ApprovalFault::UserNotVerified,
    );
    // The assertion of another request (the console showed one and signed another).
    let other = message(&key, &meta());
    refused(
        sign_with(
            &mut core,
            &key,
            spoiled(&dave, |m| {
                m.challenge = custos_pki::webauthn::approval_challenge(&other)
            }),
        ),
        ApprovalFault::WrongChallenge,
    );
    // A registration's client data, not an authentication's.
    refused(
        sign_with(
            &mut core,
            &key,
            spoiled(&dave, |m| m.kind = "webauthn.create".into()),
        ),
        ApprovalFault::WrongType,
    );
    // A passkey admin without an assertion, a key-file admin with one.
    refused(
        sign_with(&mut core, &key, |m| Approval {
            webauthn: None,
            signature: dave.approve(m).signature,
            ..dave.approve(m)
        }),
        ApprovalFault::AssertionMissing,
    );
    refused(
        sign_with(&mut core, &key, |m| Approval {
            webauthn: dave.approve(m).webauthn,
            ..Approval::by_key_file(pki.admin("alice"), m).unwrap()
        }),
        ApprovalFault::NotAPasskey,
    );
    // Nothing of the refusals was kept: the next honest assertion signs.
    signed(sign_with(&mut core, &key, |m| dave.approve(m)));
}

#[test]
fn a_passkey_the_admin_ca_never_certified_or_of_a_revoked_admin_approves_nothing() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let Fixture {
        mut core,
        mut log,
        dave,
        key,
    } = fixture(&pki);
    // Another authenticator's key under dave's certificate.
    let stranger = Passkey::new();
    refused(
        sign_with(&mut core, &key, |m| {
            dave.approval_signed_by(&Made::honest(ORIGIN, m, 1), &stranger)
        }),
        ApprovalFault::BadSignature,
    );
    // A passkey certified by an Admin CA of another PKI, for the same name and console.
    let rogue_pki = Pki::with_clusters(&[CLUSTER]);
    let rogue = rogue_pki.enroll_passkey_admin("dave");
    refused(
        sign_with(&mut core, &key, |m| rogue.approve(m)),
        ApprovalFault::UntrustedCertificate,
    );
    signed(sign_with(&mut core, &key, |m| dave.approve(m)));

    // The governors revoke dave's passkey: its honest assertions count no more.
    log.push(
        GovChange::Revoke {
            admins: vec![dave.passkey.fp()],
            devices: vec![],
            reason: "authenticator lost".into(),
        },
        &["alice"],
    );
    apply(&mut core, log.entries()).unwrap();
    match sign_with(&mut core, &key, |m| dave.approve(m)) {
        Err(TeeError::AdminRevoked {
            admin,
            key_fingerprint,
            ..
        }) => assert_eq!((admin, key_fingerprint), ("dave".into(), dave.passkey.fp())),
        other => panic!("a revoked admin's passkey approved: {other:?}"),
    }
}

#[test]
fn a_used_counter_never_counts_for_another_request_even_after_a_restart_or_late() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let Fixture {
        mut core,
        dave,
        key,
        ..
    } = fixture(&pki);
    // Approved 1 then 2; the request with 2 executes first (the other waited), then 1's.
    let (m1, m2) = (meta(), meta());
    let first = dave.approve(&message(&key, &m1));
    let second = dave.approve(&message(&key, &m2));
    signed(call(&mut core, &sign_request(&key, m2, second)));
    signed(call(
        &mut core,
        &sign_request(&key, m1.clone(), first.clone()),
    ));
    // The same request again: the assertion is the one accepted for it; the request id's
    // single use answers (a signature is deterministic, so the repeat is harmless).
    signed(call(&mut core, &sign_request(&key, m1, first)));

    // A cloned authenticator, its counter where the original's was: valid in every other
    // respect, refused for reusing counter 2.
    let cloned = |counter: u32| {
        let dave = &dave;
        move |m: &[u8]| dave.approval(&Made::honest(ORIGIN, m, counter))
    };
    refused(
        sign_with(&mut core, &key, cloned(2)),
        ApprovalFault::CounterReplayed,
    );
    // A failed commit keeps no counter: 3 refused for storage, then 3 still counts once.
    core.platform()
        .fail_next_commit
        .store(true, Ordering::SeqCst);
    assert!(matches!(
        sign_with(&mut core, &key, cloned(3)),
        Err(TeeError::Storage(_))
    ));
    signed(sign_with(&mut core, &key, cloned(3)));
    // Sealed: after a restart counter 3 still counts for nothing else.
    let mut core = reopen(&core).unwrap();
    refused(
        sign_with(&mut core, &key, cloned(3)),
        ApprovalFault::CounterReplayed,
    );
    // Far ahead, then far behind: what lies more than the window (1024) below is refused.
    signed(sign_with(&mut core, &key, cloned(5000)));
    refused(
        sign_with(&mut core, &key, cloned(3000)),
        ApprovalFault::CounterReplayed,
    );
    signed(sign_with(&mut core, &key, cloned(4000)));
    // An authenticator that reported counters never counts with 0.
    refused(
        sign_with(&mut core, &key, cloned(0)),
        ApprovalFault::CounterReplayed,
    );
}
