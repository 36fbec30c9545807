//! A PSBT signed with a threshold key (issue 14), attacker first: every participating TEE
//! parses the PSBT, computes its intent from the key's public derivation and applies the
//! policy sealed with its own share, so each refuses alone, with a full quorum present:
//! approvals of intent A presented with transaction B, a taproot input (no threshold
//! Schnorr), an amount over the limit, and a second transfer inside the window, refused by
//! the velocity share's TEE (the share taking part in every signing, whose node counts the
//! window) whatever node signs with the other share, and accepted once the window passed
//! (the TEE's clock moved on). The approved PSBT (P2WPKH and P2SH-P2WPKH inputs, one session
//! per input, counted once) is signed, each signature verifying against the hash the
//! `bitcoin` crate computes on its own for the key it derives itself.
//!
//! The key is made by distributed key generation between dc1 and dc2 (TEST-ONLY fixture
//! primes, about 12 s of one core per party) under a policy of {alice, bob}.

use std::sync::atomic::Ordering;

use bitcoin::bip32::{ChainCode, ChildNumber, Fingerprint, Xpub};
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{ecdsa, PublicKey, Secp256k1};
use bitcoin::sighash::SighashCache;
use bitcoin::Network;
use custos_tx::btc::{plan_psbt, InputSignature, XpubKeys};
use custos_tx::synthetic::{script_of, Spend};
use custos_tx::InputKind;
use custos_wire::approval::{Action, THRESHOLD_SCOPE};
use custos_wire::policy::{
    KeyPolicy, Rule, SpendLimit, SpendLimits, RULE_SPEND_LIMITS, RULE_TRANSACTIONS_ONLY,
    RULE_VELOCITY_SHARE,
};
use custos_wire::protocol::{
    BitcoinNetwork, Outcome, Request, RequestMeta, Response, TeeError, ThresholdKeyInfo,
    ThresholdMessage, ThresholdPsbtParams,
};
use custos_wire::threshold::input_session;

use crate::dkg::{in_share_order, make_group_key, GroupKeygen, Node, Pki};
use crate::governance::{approvals_by, group_policy, meta};
use crate::threshold::relay_outputs;
use crate::transaction::policy_refusal;

/// The window: one transaction per hour.
const WINDOW: u64 = 3600;

/// {alice, bob}, 2 of 2; transactions only; up to 100 000 sat per transaction and one
/// transaction per hour, counted on share 1 by `holder`'s TEE.
fn policy(pki: &Pki, holder: [u8; 32]) -> KeyPolicy {
    let limits = SpendLimits {
        limits: vec![SpendLimit {
            asset: "bitcoin:regtest".into(),
            per_transaction: 100_000,
            window_secs: WINDOW,
            per_window: 200_000,
            count_per_window: 1,
        }],
        velocity_holder: Some(holder),
    };
    let mut p = group_policy(pki, &["alice", "bob"], 2);
    p.rules = vec![
        Rule {
            tag: RULE_TRANSACTIONS_ONLY,
            body: vec![],
        },
        Rule {
            tag: RULE_SPEND_LIMITS,
            body: limits.encode(),
        },
        Rule {
            tag: RULE_VELOCITY_SHARE,
            body: 1u16.to_be_bytes().to_vec(),
        },
    ];
    p
}

fn member_id(pki: &Pki, node: &Node) -> [u8; 32] {
    custos_test_kit::governance::member(pki, &node.chain).key_fingerprint
}

/// The key's extended public key, from its public facts alone.
fn xpub_of(key: &ThresholdKeyInfo) -> String {
    Xpub {
        network: bitcoin::NetworkKind::Main,
        depth: 0,
        parent_fingerprint: Fingerprint::default(),
        child_number: ChildNumber::Normal { index: 0 },
        public_key: PublicKey::from_slice(&key.key_id).unwrap(),
        chain_code: ChainCode::from(key.chain_code.unwrap()),
    }
    .to_string()
}

/// Spends 50 000 (P2WPKH) and 30 000 sat (P2SH-P2WPKH): `paid` to an outside key, the
/// rest but 1 000 sat of fee back as change.
fn spend(xpub: &str, paid: u64) -> Psbt {
    let outside = Spend::from(xpub).key(&[99]);
    Spend::from(xpub)
        .input(InputKind::P2wpkh, &[0, 0], 50_000)
        .input(InputKind::P2shP2wpkh, &[0, 1], 30_000)
        .pay(script_of(InputKind::P2wpkh, &outside), paid)
        .change(&[1, 0], 79_000 - paid)
        .psbt()
}

fn intent_hash_of(xpub: &str, psbt: &Psbt) -> [u8; 32] {
    plan_psbt(
        &psbt.serialize(),
        Network::Regtest,
        &XpubKeys(xpub.parse().unwrap()),
    )
    .unwrap()
    .intent()
    .hash()
}

/// A threshold PSBT request: `psbt` claimed to be intent `claimed`, approved by alice and bob
/// for `approved`, signed by `nodes` (shares 0 and 1), `ahead` seconds after now.
struct PsbtRequest {
    meta: RequestMeta,
    params: ThresholdPsbtParams,
    approvals: Vec<custos_wire::approval::Approval>,
}

impl PsbtRequest {
    fn new(
        pki: &Pki,
        key: &ThresholdKeyInfo,
        psbt: &Psbt,
        (claimed, approved): ([u8; 32], [u8; 32]),
        nodes: [&Node; 2],
        ahead: u64,
    ) -> Self {
        let mut meta = meta();
        meta.expires_at += ahead;
        let action = Action::SignTransaction {
            key_id: &key.key_id,
            intent_hash: &approved,
        };
        PsbtRequest {
            approvals: approvals_by(
                pki,
                &["alice", "bob"],
                &action.message(THRESHOLD_SCOPE, &meta),
            ),
            meta,
            params: ThresholdPsbtParams {
                key_id: key.key_id.clone(),
                network: BitcoinNetwork::Regtest,
                psbt: psbt.serialize(),
                intent_hash: claimed,
                signers: in_share_order(&nodes),
            },
        }
    }

    fn start(&self, input: u16) -> Request {
        Request::ThresholdPsbtStart {
            meta: self.meta.clone(),
            attempt: 0,
            input,
            params: self.params.clone(),
            approvals: self.approvals.clone(),
        }
    }
}

fn first_messages(o: Outcome) -> Vec<ThresholdMessage> {
    match o {
        Ok(Response::ThresholdRound {
            outgoing,
            signature: None,
            ..
        }) => outgoing,
        other => panic!("expected the session's first round, got {other:?}"),
    }
}

/// Runs the session of every input between `a` and `b` and returns the signatures.
fn sign_inputs(req: &PsbtRequest, inputs: u16, a: &mut Node, b: &mut Node) -> Vec<InputSignature> {
    (0..inputs)
        .map(|i| {
            let first = vec![
                first_messages(a.call(&req.start(i))),
                first_messages(b.call(&req.start(i))),
            ];
            let session = input_session(&req.meta.request_id, i, 0);
            let (outputs, _) = relay_outputs(&mut [a, b], session, first, false);
            let sigs: Vec<_> = outputs
                .into_iter()
                .map(|o| match o {
                    Response::ThresholdRound {
                        signature: Some(s), ..
                    } => s,
                    other => panic!("expected a signature, got {other:?}"),
                })
                .collect();
            assert_eq!(sigs[0], sigs[1], "the participants' signatures differ");
            let compact = [sigs[0].r, sigs[0].s].concat();
            InputSignature::Ecdsa(ecdsa::Signature::from_compact(&compact).unwrap())
        })
        .collect()
}

fn mismatch(o: Outcome) -> ([u8; 32], [u8; 32]) {
    match o {
        Err(TeeError::IntentMismatch { claimed, computed }) => (claimed, computed),
        other => panic!("expected an intent mismatch, got {other:?}"),
    }
}

/// Records of `prefix` a node committed.
fn committed(node: &Node, prefix: &str) -> usize {
    let records = &node.core.platform().committed;
    records.keys().filter(|k| k.starts_with(prefix)).count()
}

fn move_clocks(nodes: [&Node; 2], by: u64) {
    for n in nodes {
        n.core.platform().clock_ahead.store(by, Ordering::SeqCst);
    }
}

#[test]
fn each_threshold_participant_checks_the_psbt_and_applies_its_shares_policy() {
    let pki = Pki::new();
    let mut a = pki.node("dc1", "dc1-node1", 0, 1);
    let mut b = pki.node("dc2", "dc2-node1", 1, 1);
    let mut a2 = pki.node("dc1", "dc1-node2", 2, 0);
    let policy = policy(&pki, member_id(&pki, &b));
    let keygen = GroupKeygen::new(&pki, &[&a, &b], true, &policy, &["alice", "bob"]);
    let key = make_group_key(&keygen, &mut a, &mut b);
    // dc1's second node holds share 0 too (a key transfer within the cluster).
    let Ok(Response::KeyTransfer(transfer)) = a.call(&Request::ExportKeys {
        requester: a2.chain.clone(),
        key_ids: vec![key.key_id.clone()],
    }) else {
        panic!("export refused")
    };
    a2.call(&Request::ImportKeys { transfer }).unwrap();
    let xpub = xpub_of(&key);
    let before = [&a, &b].map(|n| (committed(n, "consumed/"), 0));

    let psbt = spend(&xpub, 60_000);
    let h = intent_hash_of(&xpub, &psbt);
    // Each participant's preview is the intent a watch-only approver computes.
    for node in [&mut a, &mut b] {
        let preview = node.call(&Request::PreviewPsbt {
            key_id: key.key_id.clone(),
            network: BitcoinNetwork::Regtest,
            psbt: psbt.serialize(),
        });
        assert!(
            matches!(preview, Ok(Response::TransactionIntent { intent_hash, .. }) if intent_hash == h)
        );
    }

    // Approvals of intent A presented with transaction B (another payee), claimed to be A.
    let other = spend(&xpub, 59_000);
    let req = PsbtRequest::new(&pki, &key, &other, (h, h), [&a, &b], 0);
    for node in [&mut a, &mut b] {
        assert_eq!(
            mismatch(node.call(&req.start(0))),
            (h, intent_hash_of(&xpub, &other))
        );
    }
    // An amount over the limit, approved as it is.
    let over = Spend::from(xpub.as_str())
        .input(InputKind::P2wpkh, &[0, 0], 150_000)
        .pay(
            script_of(InputKind::P2wpkh, &Spend::from(xpub.as_str()).key(&[99])),
            120_000,
        )
        .change(&[1, 0], 29_000)
        .psbt();
    let oh = intent_hash_of(&xpub, &over);
    let req = PsbtRequest::new(&pki, &key, &over, (oh, oh), [&a, &b], 0);
    for node in [&mut a, &mut b] {
        assert_eq!(
            policy_refusal(node.call(&req.start(0))),
            "transaction_limit"
        );
    }
    // A taproot input: threshold ECDSA makes no Schnorr signature.
    let taproot = Spend::from(xpub.as_str())
        .input(InputKind::P2trKeyPath, &[0, 2], 20_000)
        .pay(
            script_of(InputKind::P2wpkh, &Spend::from(xpub.as_str()).key(&[99])),
            19_000,
        )
        .psbt();
    let th = intent_hash_of(&xpub, &taproot);
    let req = PsbtRequest::new(&pki, &key, &taproot, (th, th), [&a, &b], 0);
    match a.call(&req.start(0)) {
        Err(TeeError::TransactionRejected { code, .. }) => assert_eq!(code, "threshold_taproot"),
        other => panic!("a taproot input was taken: {other:?}"),
    }
    // No refusal consumed a request id or counted in a window.
    assert_eq!(
        [&a, &b].map(|n| (committed(n, "consumed/"), committed(n, "velocity/"))),
        before
    );

    // The approved PSBT: one session per input; the second input's session runs under the
    // request already counted (once) for the first.
    let req = PsbtRequest::new(&pki, &key, &psbt, (h, h), [&a, &b], 0);
    let sigs = sign_inputs(&req, 2, &mut a, &mut b);
    let plan = plan_psbt(
        &psbt.serialize(),
        Network::Regtest,
        &XpubKeys(xpub.parse().unwrap()),
    )
    .unwrap();
    let signed = Psbt::deserialize(&plan.finish(sigs).unwrap()).unwrap();
    let secp = Secp256k1::verification_only();
    for (i, path) in [[0u32, 0], [0, 1]].iter().enumerate() {
        let (msg, _) = signed
            .sighash_ecdsa(i, &mut SighashCache::new(&signed.unsigned_tx))
            .unwrap();
        let (pk, sig) = signed.inputs[i].partial_sigs.iter().next().unwrap();
        assert_eq!(pk.inner, Spend::from(xpub.as_str()).key(path));
        secp.verify_ecdsa(&msg, &sig.signature, &pk.inner).unwrap();
    }

    // Only the velocity share's holder counted the first transfer.
    assert_eq!(
        [&a, &b].map(|n| committed(n, "velocity/")),
        [0, 1],
        "share 0 counts nothing, share 1 (the velocity share) the transfer"
    );
    // A second transfer inside the window: share 1's holder refuses alone, whatever node
    // holds share 0 (which, not counting, would sign).
    let second = spend(&xpub, 10_000);
    let h2 = intent_hash_of(&xpub, &second);
    for (node0, label) in [(&mut a, "dc1-node1"), (&mut a2, "dc1-node2")] {
        let req = PsbtRequest::new(&pki, &key, &second, (h2, h2), [&*node0, &b], 0);
        assert!(
            matches!(
                node0.call(&req.start(0)),
                Ok(Response::ThresholdRound { .. })
            ),
            "{label} refused a transfer its share does not count"
        );
        assert_eq!(policy_refusal(b.call(&req.start(0))), "window_count");
    }
    // Once the window passed on the counting TEE's clock, the second transfer signs.
    move_clocks([&a, &b], WINDOW + 1);
    let req = PsbtRequest::new(&pki, &key, &second, (h2, h2), [&a, &b], WINDOW + 1);
    let sigs = sign_inputs(&req, 2, &mut a, &mut b);
    assert_eq!(sigs.len(), 2);
}
