//! Counting approvals on real certificates: groups, revocation, distinct keys, and the
//! historic window.

use custos_pki::{AdminCache, Validity};

use super::*;
use crate::test_pki::{now, TestPki};

const DAY: u64 = 24 * 3600;

fn days(from: i64, to: i64) -> Validity {
    let n = time::OffsetDateTime::now_utc();
    Validity {
        not_before: n + time::Duration::days(from),
        not_after: n + time::Duration::days(to),
    }
}

fn count(
    pki: &TestPki,
    message: &[u8],
    approvals: &[Approval],
    at: ApprovalTime,
    who: &Approvers<'_>,
    revoked: &dyn Fn(&[u8; 32]) -> bool,
) -> Result<Vec<([u8; 32], String)>, TeeError> {
    let mut cache = AdminCache::default();
    verify_approvals(&mut cache, &pki.root, message, approvals, at, who, revoked).map(|c| c.admins)
}

#[test]
fn a_group_counts_its_members_and_names_an_outsider() {
    let pki = TestPki::new();
    let [alice, bob, mallory] = ["alice", "bob", "mallory"].map(|n| pki.admin(n));
    let mut group = vec![alice.fp(), bob.fp()];
    group.sort();
    let who = Approvers::Group {
        group: &group,
        quorum: 2,
    };
    let m = b"message";
    let at = ApprovalTime::Now(now());
    let ok = count(
        &pki,
        m,
        &[alice.approve(m), bob.approve(m)],
        at,
        &who,
        &|_| false,
    );
    assert_eq!(
        ok,
        Ok(vec![
            (alice.fp(), "alice".to_string()),
            (bob.fp(), "bob".to_string())
        ])
    );
    let approvals = [alice.approve(m), mallory.approve(m), bob.approve(m)];
    assert_eq!(
        count(&pki, m, &approvals, at, &who, &|_| false),
        Err(TeeError::ApproverNotInGroup {
            index: 1,
            admin: "mallory".into(),
            key_fingerprint: mallory.fp()
        })
    );
    let bob_fp = bob.fp();
    assert_eq!(
        count(&pki, m, &approvals[..1], at, &who, &|_| false),
        Err(TeeError::QuorumNotMet {
            required: 2,
            approved: 1
        })
    );
    assert_eq!(
        count(
            &pki,
            m,
            &[alice.approve(m), bob.approve(m)],
            at,
            &who,
            &|fp| *fp == bob_fp
        ),
        Err(TeeError::AdminRevoked {
            index: 1,
            admin: "bob".into(),
            key_fingerprint: bob.fp()
        })
    );
    // A signature over another message is refused, not skipped.
    assert!(matches!(
        count(
            &pki,
            m,
            &[alice.approve(m), bob.approve(b"other")],
            at,
            &who,
            &|_| false
        ),
        Err(TeeError::ApprovalRejected {
            index: 1,
            fault: ApprovalFault::BadSignature,
            ..
        })
    ));
    assert_eq!(
        count(&pki, m, &[], at, &who, &|_| false),
        Err(TeeError::ApprovalMissing)
    );
    let many = vec![alice.approve(m); MAX_APPROVALS + 1];
    assert!(matches!(
        count(&pki, m, &many, at, &who, &|_| false),
        Err(TeeError::InvalidRequest(_))
    ));
}

#[test]
fn distinct_admins_are_distinct_keys() {
    let pki = TestPki::new();
    let alice = pki.admin("alice");
    // The same person re-certified with a new key: another key, the same subject.
    let alice2 = pki.admin("alice");
    let m = b"message";
    let at = ApprovalTime::Now(now());
    // One key twice is one admin.
    assert_eq!(
        count(
            &pki,
            m,
            &[alice.approve(m), alice.approve(m)],
            at,
            &Approvers::AnyAdmin { quorum: 2 },
            &|_| false
        ),
        Err(TeeError::QuorumNotMet {
            required: 2,
            approved: 1
        })
    );
    // With no group, a new key under a counted subject adds nothing (today's rule) ...
    assert_eq!(
        count(
            &pki,
            m,
            &[alice.approve(m), alice2.approve(m)],
            at,
            &Approvers::AnyAdmin { quorum: 2 },
            &|_| false
        ),
        Err(TeeError::QuorumNotMet {
            required: 2,
            approved: 1
        })
    );
    // ... while a group names keys, so two keys it names are two admins.
    let mut group = vec![alice.fp(), alice2.fp()];
    group.sort();
    let who = Approvers::Group {
        group: &group,
        quorum: 2,
    };
    let counted = count(
        &pki,
        m,
        &[alice.approve(m), alice2.approve(m)],
        at,
        &who,
        &|_| false,
    );
    assert_eq!(counted.map(|v| v.len()), Ok(2));
}

#[test]
fn historic_approvals_count_within_their_window_only() {
    // The CAs begin now, so the past is modelled by instants ahead: a certificate valid for
    // ten days from now, and approvals "replayed" at expiries after it ended.
    let pki = TestPki::new();
    let admin = pki.admin_valid("admin", days(0, 10));
    let later = pki.admin_valid("later", days(2, 30));
    let m = b"message";
    let who = Approvers::AnyAdmin { quorum: 1 };
    let n = now();
    let at = |expires_at| ApprovalTime::Window { expires_at };
    let run =
        |a: &crate::test_pki::Admin, at| count(&pki, m, &[a.approve(m)], at, &who, &|_| false);
    let not_valid = |r: Result<_, TeeError>| {
        matches!(
            r,
            Err(TeeError::ApprovalRejected {
                fault: ApprovalFault::CertificateNotValidNow,
                ..
            })
        )
    };
    // Expiring while the certificate is valid.
    assert!(run(&admin, at(n + 5 * DAY)).is_ok());
    // Expiring after it ended, but the window opened while it was valid: it counts, where
    // the same approval executed at that instant would not.
    assert!(run(&admin, at(n + 15 * DAY)).is_ok());
    assert!(not_valid(run(&admin, ApprovalTime::Now(n + 15 * DAY))));
    // The whole window lies after the certificate ended.
    assert!(not_valid(run(&admin, at(n + 20 * DAY))));
    // Expiring before the certificate began.
    assert!(not_valid(run(&later, at(n + DAY))));
    // A signature that does not verify is refused whatever the time.
    let bad = Approval {
        signature: admin.approve(b"other").signature,
        ..admin.approve(m)
    };
    assert!(matches!(
        count(&pki, m, &[bad], at(n + 5 * DAY), &who, &|_| false),
        Err(TeeError::ApprovalRejected {
            fault: ApprovalFault::BadSignature,
            ..
        })
    ));
}

#[test]
fn groups_each_need_their_own_members() {
    // A tier naming a risk group: the key's two of treasury, and one of risk besides.
    let pki = TestPki::new();
    let [alice, bob, carol, risk, mallory] =
        ["alice", "bob", "carol", "risk", "mallory"].map(|n| pki.admin(n));
    let mut treasury = vec![alice.fp(), bob.fp(), carol.fp()];
    treasury.sort();
    let groups = [(treasury, 2), (vec![risk.fp()], 1)];
    let who = Approvers::Groups(&groups);
    let m = b"message";
    let at = ApprovalTime::Now(now());
    let run = |approvals: &[Approval]| count(&pki, m, approvals, at, &who, &|_| false);
    // The whole treasury quorum (all three) is not the risk officer's approval.
    let treasury_only = [alice.approve(m), bob.approve(m), carol.approve(m)];
    assert_eq!(
        run(&treasury_only),
        Err(TeeError::QuorumNotMet {
            required: 1,
            approved: 0
        })
    );
    // Nor does the risk officer stand in for a treasury approver.
    assert_eq!(
        run(&[alice.approve(m), risk.approve(m)]),
        Err(TeeError::QuorumNotMet {
            required: 2,
            approved: 1
        })
    );
    let counted = run(&[alice.approve(m), risk.approve(m), bob.approve(m)]).unwrap();
    assert_eq!(counted.len(), 3);
    // An admin of neither group refuses the request, by index.
    let r = run(&[
        alice.approve(m),
        risk.approve(m),
        mallory.approve(m),
        bob.approve(m),
    ]);
    assert!(matches!(
        r,
        Err(TeeError::ApproverNotInGroup { index: 2, .. })
    ));
    // A group at quorum 0 may approve but is never asked for.
    let allowed = [(groups[0].0.clone(), 2), (vec![risk.fp()], 0)];
    let who = Approvers::Groups(&allowed);
    let r = count(
        &pki,
        m,
        &[alice.approve(m), bob.approve(m)],
        at,
        &who,
        &|_| false,
    );
    assert_eq!(r.map(|v| v.len()), Ok(2));
    // Groups that ask for nothing authorise nothing.
    let nothing = [(groups[0].0.clone(), 0)];
    let r = count(
        &pki,
        m,
        &[alice.approve(m)],
        at,
        &Approvers::Groups(&nothing),
        &|_| false,
    );
    assert_eq!(
        r,
        Err(TeeError::QuorumNotMet {
            required: 1,
            approved: 0
        })
    );
}
