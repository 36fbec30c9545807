//! Attacks on admission (issue 13, item 2), each refused by name: evidence for a cluster
//! whose policy does not admit the platform, tickets of outsiders, tampered or expired
//! tickets, another key's ticket, a nonce that is not the ticket's, and old evidence replayed.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

use super::*;
use crate::governance::{
    nonce_hash, AdmissionEvidence, AdmissionTicket, SignedTicket, TicketCredential,
    EVIDENCE_ADMISSION_V1, MAX_APPROVAL_AFTER_TICKET_SECS, MAX_TICKET_LIFETIME_SECS,
};

const NONCE: [u8; 32] = [0x6e; 32];

/// Asserts that `r` is the refusal `p`, showing what it was otherwise.
macro_rules! refused {
    ($r:expr, $p:pat) => {{
        let r = $r;
        assert!(matches!(&r, Err($p)), "{r:?}");
    }};
    ($r:expr, $p:pat if $cond:expr) => {{
        let r = $r;
        assert!(matches!(&r, Err($p) if $cond), "{r:?}");
    }};
}

impl Fx {
    /// A ticket of the log of `state` for `node` by `issuer` (node numbers), valid from now.
    fn ticket(
        &self,
        state: &GovState,
        issuer: usize,
        node: usize,
        nonce: &[u8; 32],
    ) -> AdmissionTicket {
        AdmissionTicket {
            cluster: CLUSTER.into(),
            genesis_id: state.genesis_id,
            node_key: self.nodes[node - 1].fp(),
            issuer: self.nodes[issuer - 1].fp(),
            nonce_hash: nonce_hash(nonce),
            issued_at: self.now - 10,
            expires_at: self.now - 10 + MAX_TICKET_LIFETIME_SECS,
            tpm: None,
        }
    }

    fn sign(&self, signer: usize, ticket: AdmissionTicket) -> SignedTicket {
        let pkcs8 = self.nodes[signer - 1].key.serialize_der();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .unwrap();
        let signature = key
            .sign(&SystemRandom::new(), &ticket.message())
            .unwrap()
            .as_ref()
            .to_vec();
        SignedTicket { ticket, signature }
    }

    /// `node`'s record answering `ticket` with `nonce` on `platform`.
    fn answered(
        &self,
        node: usize,
        ticket: SignedTicket,
        nonce: [u8; 32],
        platform: &str,
    ) -> MemberRecord {
        let mut m = self.record(node);
        m.evidence = Evidence {
            format: EVIDENCE_ADMISSION_V1,
            document: AdmissionEvidence {
                ticket,
                nonce,
                platform: platform.into(),
                document: vec![1, 2, 3],
            }
            .encode(),
        };
        m
    }

    /// The genesis (node1, node2) with `policy`, and its state.
    fn governed(&self, policy: Option<MeasurementPolicy>) -> (Vec<GovEntry>, GovState) {
        let GovChange::Genesis {
            governors,
            quorum,
            members,
            ..
        } = self.genesis_change()
        else {
            unreachable!()
        };
        let change = GovChange::Genesis {
            governors,
            quorum,
            members,
            rules: policy.iter().map(MeasurementPolicy::rule).collect(),
        };
        let log = vec![self.entry(0, [0; 32], change, &[&self.alice, &self.bob])];
        let state = self.state(&log);
        (log, state)
    }

    fn admit(&self, log: &[GovEntry], member: MemberRecord) -> GovEntry {
        self.next(log, GovChange::Admit { member }, &[&self.alice, &self.bob])
    }
}

fn nitro_only() -> MeasurementPolicy {
    MeasurementPolicy {
        nitro: Some(crate::governance::NitroMeasurement {
            pcrs: vec![(0, vec![0; 48])],
        }),
        ..Default::default()
    }
}

#[test]
fn without_a_policy_no_node_is_admitted_and_software_only_where_allowed() {
    let fx = Fx::new();
    let (log, state) = fx.governed(None);
    let e = fx.admit(&log, fx.record(3));
    refused!(fx.apply(&state, &e), GovError::NoMeasurementPolicy { node } if node == "node3");

    let (log, state) = fx.governed(Some(nitro_only()));
    let e = fx.admit(&log, fx.record(3));
    refused!(fx.apply(&state, &e), GovError::PlatformNotAdmitted { platform, .. } if platform == "software");
    // A ticket does not help a platform the policy does not name.
    let t = fx.sign(1, fx.ticket(&state, 1, 3, &NONCE));
    let e = fx.admit(&log, fx.answered(3, t, NONCE, "software"));
    refused!(fx.apply(&state, &e), GovError::PlatformNotAdmitted { platform, .. } if platform == "software");

    // The governors may change the policy; from then on the platform is admitted.
    let set = fx.next(
        &log,
        GovChange::SetMeasurementPolicy {
            policy: MeasurementPolicy::development(),
        },
        &[&fx.alice, &fx.bob],
    );
    let state = fx.apply(&state, &set).unwrap();
    let log = [log, vec![set]].concat();
    let e = fx.admit(&log, fx.record(3));
    assert!(fx
        .apply(&state, &e)
        .unwrap()
        .member(&fx.nodes[2].fp())
        .is_some());
}

#[test]
fn a_ticket_admits_once_for_its_key_from_a_member_in_its_window() {
    let fx = Fx::new();
    let (log, state) = fx.governed(Some(nitro_only()));
    let good = fx.sign(1, fx.ticket(&state, 1, 3, &NONCE));
    let admitted = fx.answered(3, good.clone(), NONCE, "nitro");

    // Signed by a node that is no member (node4), or tampered after signing.
    let outsider = fx.sign(4, fx.ticket(&state, 4, 3, &NONCE));
    let e = fx.admit(&log, fx.answered(3, outsider, NONCE, "nitro"));
    refused!(fx.apply(&state, &e), GovError::TicketSignature { .. });
    let mut forged = fx.sign(1, fx.ticket(&state, 1, 3, &NONCE));
    forged.ticket.expires_at += 1;
    let e = fx.admit(&log, fx.answered(3, forged, NONCE, "nitro"));
    refused!(fx.apply(&state, &e), GovError::TicketSignature { .. });
    // Signed by member node2 but naming node1 as its issuer.
    let mut t = fx.ticket(&state, 1, 3, &NONCE);
    let by2 = fx.sign(2, t.clone());
    t.issuer = fx.nodes[0].fp();
    let e = fx.admit(
        &log,
        fx.answered(3, SignedTicket { ticket: t, ..by2 }, NONCE, "nitro"),
    );
    refused!(fx.apply(&state, &e), GovError::TicketSignature { .. });

    // Another key's ticket.
    let for4 = fx.sign(1, fx.ticket(&state, 1, 4, &NONCE));
    let e = fx.admit(&log, fx.answered(3, for4, NONCE, "nitro"));
    refused!(fx.apply(&state, &e), GovError::Ticket { reason, .. } if reason.contains("issued for key"));

    // Approvals running more than a day past the ticket: an answer withheld for later.
    let mut late_approvals = fx.admit(&log, admitted.clone());
    late_approvals.meta.expires_at = good.ticket.expires_at + MAX_APPROVAL_AFTER_TICKET_SECS + 1;
    let message = late_approvals.message(CLUSTER);
    late_approvals.approvals = [&fx.alice, &fx.bob]
        .iter()
        .map(|a| a.approve(&message))
        .collect();
    refused!(fx.apply(&state, &late_approvals), GovError::Ticket { reason, .. } if reason.contains("approvals run until"));

    // A nonce that is not the ticket's.
    let e = fx.admit(&log, fx.answered(3, good.clone(), [0x6f; 32], "nitro"));
    refused!(fx.apply(&state, &e), GovError::NonceMismatch { .. });

    // Admission after the ticket expired, or longer-lived tickets.
    let mut late = admitted.clone();
    late.admitted_at = good.ticket.expires_at + 1;
    let e = fx.admit(&log, late);
    refused!(fx.apply(&state, &e), GovError::TicketExpired { .. });
    let mut long = fx.ticket(&state, 1, 3, &NONCE);
    long.expires_at += 1;
    let e = fx.admit(&log, fx.answered(3, fx.sign(1, long), NONCE, "nitro"));
    refused!(fx.apply(&state, &e), GovError::Ticket { reason, .. } if reason.contains("at most"));
    // A ticket of another log (another genesis of the same cluster name).
    let (_, other) = fx.governed(Some(MeasurementPolicy::development()));
    let foreign = fx.sign(1, fx.ticket(&other, 1, 3, &NONCE));
    let e = fx.admit(&log, fx.answered(3, foreign, NONCE, "nitro"));
    refused!(fx.apply(&state, &e), GovError::Ticket { reason, .. } if reason.contains("not this log"));

    // A TPM answer needs a TPM ticket (its credential binds the attestation key), and a TPM
    // ticket a TPM answer.
    let mut tpm_policy = nitro_only();
    tpm_policy.tpm = Some(crate::governance::TpmMeasurement {
        ek_roots_sha256: vec![[1; 32]],
        pcrs: vec![(23, [0; 32])],
    });
    let (tlog, tstate) = fx.governed(Some(tpm_policy));
    let plain = fx.sign(1, fx.ticket(&tstate, 1, 3, &NONCE));
    let e = fx.admit(&tlog, fx.answered(3, plain, NONCE, "tpm"));
    refused!(fx.apply(&tstate, &e), GovError::Ticket { reason, .. } if reason.contains("non-TPM ticket"));
    let mut with_credential = fx.ticket(&tstate, 1, 3, &NONCE);
    with_credential.tpm = Some(TicketCredential {
        ak_name: vec![0, 0x0b],
        ek_cert_sha256: [2; 32],
        ek_chain: vec![],
        id_object: vec![3],
        encrypted_secret: vec![4],
    });
    let e = fx.admit(
        &tlog,
        fx.answered(3, fx.sign(1, with_credential), NONCE, "nitro"),
    );
    refused!(fx.apply(&tstate, &e), GovError::Ticket { reason, .. } if reason.contains("a TPM ticket"));

    // The good one is admitted, and marks its nonce used.
    let e = fx.admit(&log, admitted.clone());
    let after = fx.apply(&state, &e).unwrap();
    assert!(after.member(&fx.nodes[2].fp()).is_some());
    assert!(after.used_nonces.contains(&nonce_hash(&NONCE)));
    let log = [log, vec![e]].concat();

    // Removed, the node cannot come back with its old evidence: the nonce was used.
    let removed = fx.next(
        &log,
        GovChange::Remove {
            key_fingerprint: fx.nodes[2].fp(),
            reason: "rebuilt".into(),
        },
        &[&fx.alice, &fx.bob],
    );
    let after = fx.apply(&after, &removed).unwrap();
    let log = [log, vec![removed]].concat();
    let replay = fx.admit(&log, admitted);
    refused!(fx.apply(&after, &replay), GovError::NonceReused { node } if node == "node3");
    // A whole log replayed from the start agrees (the used nonces are derived from it).
    assert_eq!(fx.state(&log), after);
}

#[test]
fn a_policy_must_pin_what_identifies_the_code() {
    let nitro = |pcrs: Vec<(u8, Vec<u8>)>| MeasurementPolicy {
        nitro: Some(crate::governance::NitroMeasurement { pcrs }),
        ..Default::default()
    };
    assert!(nitro(vec![(0, vec![0; 48])]).check().is_ok());
    // PCR3 alone (the parent instance's role) would admit any enclave image.
    let e = nitro(vec![(3, vec![0; 48])]).check().unwrap_err();
    assert!(e.to_string().contains("PCR0"), "{e}");
    let tdx = |rtmrs: Vec<(u8, Vec<u8>)>| MeasurementPolicy {
        tdx: Some(crate::governance::TdxMeasurement {
            mr_td: vec![0; 48],
            rtmrs,
            tcb_statuses: vec!["UpToDate".into()],
        }),
        ..Default::default()
    };
    assert!(tdx(vec![(1, vec![1; 48]), (2, vec![2; 48])])
        .check()
        .is_ok());
    // MRTD is the stock firmware: without the kernel's registers any code would do.
    let e = tdx(vec![(1, vec![1; 48])]).check().unwrap_err();
    assert!(e.to_string().contains("RTMR1 and RTMR2"), "{e}");
}
