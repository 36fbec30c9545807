//! Ethereum signatures in the TEE (issue 14), attacker first, each with the full quorum
//! present: approvals of one transaction presented with another, an ERC-20 transfer over the
//! token's limit, a payment to an address off the allowlist, and a personal message on a
//! key without a limit on `ethereum:message` are refused by name. The approved EIP-1559
//! transaction is signed, and its sender, recovered by alloy's own code from the raw
//! transaction, is the wallet's address at the path.

use alloy_consensus::transaction::SignerRecoverable;
use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{address, Address, Bytes, TxKind, U256};
use custos_tee_core::TeeCore;
use custos_test_kit::{call_core as call, MemPlatform, Pki};
use custos_tx::policy::ETHEREUM_MESSAGE_ASSET;
use custos_wire::approval::Action;
use custos_wire::policy::{
    AllowEntry, Allowlist, Rule, SpendLimit, SpendLimits, RULE_ALLOWLIST, RULE_SPEND_LIMITS,
};
use custos_wire::protocol::{EthPayload, KeyInfo, Request, Response, TeeError};

use crate::governance::{approvals_by, meta};
use crate::transaction::{policy_refusal, wallet_under, CLUSTER};

const H: u32 = 0x8000_0000;
/// BIP-44 Ethereum, account 0, first address.
const PATH: [u32; 5] = [44 | H, 60 | H, H, 0, 0];
const TOKEN: Address = address!("5FbDB2315678afecb367f032d93F642f64180aa3");
const BOB: Address = address!("70997970C51812dc3A010C7d01b50e0d17dc79C8");

/// Spend limits: `(asset, per transaction)`, no window.
fn limits(entries: &[(&str, u128)]) -> Rule {
    let mut limits: Vec<SpendLimit> = entries
        .iter()
        .map(|(asset, max)| SpendLimit {
            asset: (*asset).into(),
            per_transaction: *max,
            window_secs: 0,
            per_window: *max,
            count_per_window: 1,
        })
        .collect();
    limits.sort_by(|a, b| a.asset.cmp(&b.asset));
    Rule {
        tag: RULE_SPEND_LIMITS,
        body: SpendLimits {
            limits,
            velocity_holder: None,
        }
        .encode(),
    }
}

/// An EIP-1559 transaction on chain 31337 to `to` with `value` wei and `data`.
fn eip1559(to: Address, value: u64, data: Vec<u8>) -> EthPayload {
    let tx = TxEip1559 {
        chain_id: 31337,
        nonce: 0,
        gas_limit: 60_000,
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: TxKind::Call(to),
        value: U256::from(value),
        access_list: Default::default(),
        input: Bytes::from(data),
    };
    let mut out = Vec::new();
    tx.encode_for_signing(&mut out);
    EthPayload::Transaction(out)
}

/// `transfer(to, amount)` of an ERC-20 token.
fn transfer(to: Address, amount: u64) -> Vec<u8> {
    let mut data = vec![0xa9, 0x05, 0x9c, 0xbb];
    data.extend_from_slice(&[0; 12]);
    data.extend_from_slice(to.as_slice());
    data.extend_from_slice(&U256::from(amount).to_be_bytes::<32>());
    data
}

/// The intent hash the TEE computes for `payload` (its preview).
fn preview(core: &mut TeeCore<MemPlatform>, w: &KeyInfo, payload: &EthPayload) -> [u8; 32] {
    let r = call(
        core,
        &Request::PreviewEthereum {
            key_id: w.key_id.clone(),
            path: PATH.to_vec(),
            payload: payload.clone(),
        },
    );
    match r {
        Ok(Response::TransactionIntent { intent_hash, .. }) => intent_hash,
        other => panic!("no preview: {other:?}"),
    }
}

/// A SignEthereum of `payload` claiming `claimed`, approved by alice and bob for `approved`.
fn request(
    pki: &Pki,
    w: &KeyInfo,
    payload: EthPayload,
    claimed: [u8; 32],
    approved: [u8; 32],
) -> Request {
    let meta = meta();
    let action = Action::SignTransaction {
        key_id: &w.key_id,
        intent_hash: &approved,
    };
    Request::SignEthereum {
        approvals: approvals_by(pki, &["alice", "bob"], &action.message(CLUSTER, &meta)),
        meta,
        key_id: w.key_id.clone(),
        path: PATH.to_vec(),
        payload,
        intent_hash: claimed,
    }
}

/// The wallet's address at [`PATH`].
fn wallet_address(core: &mut TeeCore<MemPlatform>, w: &KeyInfo) -> Address {
    let r = call(
        core,
        &Request::GetXpub {
            key_id: w.key_id.clone(),
            path: PATH.to_vec(),
        },
    );
    let Ok(Response::Xpub { public_key, .. }) = r else {
        panic!("no key: {r:?}")
    };
    let key = bitcoin::secp256k1::PublicKey::from_slice(&public_key).unwrap();
    custos_tx::eth::address_of(&key)
}

#[test]
fn an_approved_eip1559_transaction_is_signed_by_the_wallets_address() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, w) = wallet_under(&pki, |_| {
        vec![limits(&[("ethereum:31337", 10u128.pow(18))])]
    });
    let payload = eip1559(BOB, 1_000_000, vec![]);
    let hash = preview(&mut core, &w, &payload);
    let r = call(&mut core, &request(&pki, &w, payload, hash, hash));
    let Ok(Response::SignedEthereum {
        raw_transaction: Some(raw),
        intent_hash,
        signature,
    }) = r
    else {
        panic!("not signed: {r:?}")
    };
    assert_eq!(intent_hash, hash);
    let envelope = TxEnvelope::decode_2718(&mut raw.as_slice()).unwrap();
    let sender = envelope.recover_signer().unwrap();
    assert_eq!(sender, wallet_address(&mut core, &w));
    assert_eq!(signature.len(), 65);
}

#[test]
fn approvals_of_one_ethereum_transaction_never_sign_another() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let (mut core, w) = wallet_under(&pki, |_| {
        vec![limits(&[("ethereum:31337", 10u128.pow(18))])]
    });
    let a = eip1559(BOB, 1_000, vec![]);
    let b = eip1559(BOB, 900_000_000_000_000_000, vec![]);
    let approved = preview(&mut core, &w, &a);
    let r = call(&mut core, &request(&pki, &w, b, approved, approved));
    assert!(matches!(r, Err(TeeError::IntentMismatch { .. })), "{r:?}");
}

#[test]
fn a_full_quorum_cannot_pass_a_token_limit_the_allowlist_or_sign_messages_unasked() {
    let pki = Pki::with_clusters(&[CLUSTER]);
    let token_asset = format!("erc20:31337:{}", TOKEN.to_string().to_ascii_lowercase());
    let only_bob = Allowlist {
        time_lock_secs: 0,
        entries: vec![AllowEntry {
            asset: token_asset.clone(),
            destination: BOB.to_string().to_ascii_lowercase(),
            not_before: 0,
        }],
    };
    let (mut core, w) = wallet_under(&pki, |_| {
        vec![
            limits(&[(&token_asset, 5_000), ("ethereum:31337", 10u128.pow(18))]),
            Rule {
                tag: RULE_ALLOWLIST,
                body: only_bob.encode(),
            },
        ]
    });
    let approved = |core: &mut TeeCore<MemPlatform>, payload: EthPayload| {
        let hash = preview(core, &w, &payload);
        call(core, &request(&pki, &w, payload, hash, hash))
    };
    // Over the token's limit, to an allowlisted recipient.
    let over = eip1559(TOKEN, 0, transfer(BOB, 6_000));
    assert_eq!(
        policy_refusal(approved(&mut core, over)),
        "transaction_limit"
    );
    // Within it, to someone not on the allowlist.
    let carol = address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC");
    let elsewhere = eip1559(TOKEN, 0, transfer(carol, 10));
    assert_eq!(
        policy_refusal(approved(&mut core, elsewhere)),
        "not_allowlisted"
    );
    // Within it, to bob: signed.
    let fine = eip1559(TOKEN, 0, transfer(BOB, 4_000));
    assert!(matches!(
        approved(&mut core, fine),
        Ok(Response::SignedEthereum { .. })
    ));
    // Any other contract call spends `ethereum:31337:call`, on which the key has no limit:
    // a token's `transferFrom` does not pass as a plain ether payment.
    let mut transfer_from = vec![0x23, 0xb8, 0x72, 0xdd];
    transfer_from.extend_from_slice(&[0; 96]);
    let contract_call = eip1559(TOKEN, 0, transfer_from);
    assert_eq!(
        policy_refusal(approved(&mut core, contract_call)),
        "no_spend_limit"
    );
    // A personal message: the key has no limit on ethereum:message, so it signs none.
    let message = EthPayload::PersonalMessage(b"I agree".to_vec());
    assert_eq!(
        policy_refusal(approved(&mut core, message)),
        "no_spend_limit"
    );

    // A key that opted in signs messages (EIP-191, v 27 or 28).
    let (mut core, w) = wallet_under(&pki, |_| vec![limits(&[(ETHEREUM_MESSAGE_ASSET, 0)])]);
    let message = EthPayload::PersonalMessage(b"I agree".to_vec());
    let hash = preview(&mut core, &w, &message);
    let r = call(&mut core, &request(&pki, &w, message, hash, hash));
    let Ok(Response::SignedEthereum {
        signature,
        raw_transaction: None,
        ..
    }) = r
    else {
        panic!("not signed: {r:?}")
    };
    let sig = alloy_primitives::Signature::try_from(signature.as_slice()).unwrap();
    let signer = sig.recover_address_from_msg(b"I agree".as_slice()).unwrap();
    assert_eq!(signer, wallet_address(&mut core, &w));
}
