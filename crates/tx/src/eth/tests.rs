//! Vectors through the code path the TEE runs: the EIP-155 example transaction and the
//! EIP-712 example (`Mail`), each signed with its published key to its published signature.

use super::*;
use alloy_consensus::transaction::RlpEcdsaDecodableTx;
use alloy_primitives::{address, Bytes};
use bitcoin::secp256k1::{All, SecretKey};

fn secp() -> Secp256k1<All> {
    Secp256k1::new()
}

/// Signs `plan` with `key` as the TEE does.
fn sign(plan: EthPlan, key: &SecretKey) -> EthSigned {
    let secp = secp();
    let sig = secp.sign_ecdsa_recoverable(&Message::from_digest(plan.sighash()), key);
    plan.finish(&secp, &sig).unwrap()
}

#[test]
fn eip155_example_transaction() {
    // EIP-155's example: nonce 9, gas price 20 gwei, gas 21000, to 0x3535…35, 1 ether, chain 1.
    let key = SecretKey::from_slice(&[0x46; 32]).unwrap();
    let public = key.public_key(&secp());
    let payload = hex::decode(
        "ec098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a764000080018080",
    )
    .unwrap();
    let plan = plan_eth(&EthPayload::Transaction(payload), &[], &public).unwrap();
    assert_eq!(
        hex::encode(plan.sighash()),
        "daf5a779ae972f972197303d7b574746c7ef83eadac0f2791ad23db92e4c8e53"
    );
    let Intent::Ethereum(EthereumIntent::Transaction(t)) = plan.intent().clone() else {
        panic!("not a transaction")
    };
    assert_eq!(
        (t.chain_id, t.nonce, t.gas_limit, t.value_wei.as_str()),
        (1, 9, 21_000, "1000000000000000000")
    );
    assert_eq!(
        t.to.as_deref(),
        Some("0x3535353535353535353535353535353535353535")
    );
    assert_eq!(t.from, "0x9d8A62f656a8d1615C1294fd71e9CFb3E4855A4F");
    let signed = sign(plan, &key);
    assert_eq!(
        hex::encode(signed.raw_transaction.unwrap()),
        "f86c098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a76400008025\
         a028ef61340bd939bc2195fe537567866003e1a15d3c71ff63e1590620aa636276a067cbe9d8997f761aecb7\
         03304b3800ccf555c9f3dc64214b297fb1966a3b6d83"
    );
}

/// EIP-712's example (`Mail`).
const MAIL: &str = r#"{
      "types": {
        "EIP712Domain": [
          {"name": "name", "type": "string"}, {"name": "version", "type": "string"},
          {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}
        ],
        "Person": [{"name": "name", "type": "string"}, {"name": "wallet", "type": "address"}],
        "Mail": [
          {"name": "from", "type": "Person"}, {"name": "to", "type": "Person"},
          {"name": "contents", "type": "string"}
        ]
      },
      "primaryType": "Mail",
      "domain": {
        "name": "Ether Mail", "version": "1", "chainId": 1,
        "verifyingContract": "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"
      },
      "message": {
        "from": {"name": "Cow", "wallet": "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826"},
        "to": {"name": "Bob", "wallet": "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB"},
        "contents": "Hello, Bob!"
      }
    }"#;

#[test]
fn eip712_example_mail() {
    let json = MAIL;
    // The example's signer: the key keccak256("cow").
    let key = SecretKey::from_slice(&alloy_primitives::keccak256(b"cow").0).unwrap();
    let public = key.public_key(&secp());
    let plan = plan_eth(&EthPayload::TypedData(json.into()), &[0, 1], &public).unwrap();
    assert_eq!(
        hex::encode(plan.sighash()),
        "be609aee343fb3c4b28e1df9e632fca64fcfaede20f02e86244efddf30957bd2"
    );
    let Intent::Ethereum(EthereumIntent::TypedData(d)) = plan.intent().clone() else {
        panic!("not typed data")
    };
    assert_eq!(d.from, "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826");
    assert_eq!(
        (
            d.chain_id,
            d.primary_type.as_str(),
            d.domain_name.as_deref()
        ),
        (Some(1), "Mail", Some("Ether Mail"))
    );
    let signed = sign(plan, &key);
    assert_eq!(
        hex::encode(signed.signature),
        "4355c47d63924e8a72e509b65029052eb6c299d53a04e167c5775fd466751c9d\
         07299936d304c153f6443dfa05f40ff007d72911b6f72307f996231605b91562\
         1c"
    );
    assert_eq!(signed.raw_transaction, None);
}

fn eip1559(input: Vec<u8>) -> TxEip1559 {
    TxEip1559 {
        chain_id: 31337,
        nonce: 3,
        gas_limit: 60_000,
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: TxKind::Call(address!("5FbDB2315678afecb367f032d93F642f64180aa3")),
        value: U256::ZERO,
        access_list: Default::default(),
        input: Bytes::from(input),
    }
}

fn signing_payload(tx: &TxEip1559) -> Vec<u8> {
    let mut out = Vec::new();
    tx.encode_for_signing(&mut out);
    out
}

#[test]
fn an_eip1559_erc20_transfer_is_decoded_signed_and_recovers_to_the_wallet() {
    let key = SecretKey::from_slice(&[0x11; 32]).unwrap();
    let public = key.public_key(&secp());
    let recipient = address!("70997970C51812dc3A010C7d01b50e0d17dc79C8");
    let mut data = TRANSFER.to_vec();
    data.extend_from_slice(&[0; 12]);
    data.extend_from_slice(recipient.as_slice());
    data.extend_from_slice(&U256::from(2_500u64).to_be_bytes::<32>());
    let tx = eip1559(data.clone());
    let plan = plan_eth(
        &EthPayload::Transaction(signing_payload(&tx)),
        &[7],
        &public,
    )
    .unwrap();
    let Intent::Ethereum(EthereumIntent::Transaction(t)) = plan.intent().clone() else {
        panic!("not a transaction")
    };
    let call = t.call.expect("decoded");
    assert_eq!(
        (
            call.function.as_str(),
            call.counterparty.as_str(),
            call.amount.as_str()
        ),
        (
            "transfer",
            "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
            "2500"
        )
    );
    assert_eq!(t.max_fee_wei, "120000000000000");
    let lines = plan.intent().describe().join("\n");
    assert!(lines.contains("ERC-20 transfer of 2500"), "{lines}");
    let signed = sign(plan, &key);
    let raw = signed.raw_transaction.unwrap();
    assert_eq!(raw[0], 0x02);
    let (decoded, sig) = TxEip1559::rlp_decode_with_signature(&mut &raw[1..]).unwrap();
    assert_eq!(decoded, tx);
    let recovered = secp()
        .recover_ecdsa(
            &Message::from_digest(decoded.signature_hash().0),
            &RecoverableSignature::from_compact(
                &sig.as_bytes()[..64],
                bitcoin::secp256k1::ecdsa::RecoveryId::from_i32(i32::from(sig.v())).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
    assert_eq!(recovered, public);

    // A transfer with anything after its two words, dirty bits in its address word, or
    // ether sent along is refused: the contract would read what is not shown.
    let mut longer = data.clone();
    longer.push(0);
    let mut dirty = data.clone();
    dirty[4] = 1;
    let mut paying = eip1559(data);
    paying.value = U256::from(1u64);
    for tx in [eip1559(longer), eip1559(dirty), paying] {
        let e = plan_eth(
            &EthPayload::Transaction(signing_payload(&tx)),
            &[7],
            &public,
        )
        .expect_err("refused");
        assert_eq!(e.code(), "eth_unsupported", "{e}");
    }
}

#[test]
fn transactions_the_signer_cannot_show_faithfully_are_refused_by_name() {
    let public = SecretKey::from_slice(&[0x11; 32])
        .unwrap()
        .public_key(&secp());
    let refusal = |bytes: Vec<u8>| {
        plan_eth(&EthPayload::Transaction(bytes), &[], &public)
            .expect_err("refused")
            .code()
    };
    // A legacy transaction without chain id (replayable on every chain).
    let pre155 = hex::decode(
        "e9098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a764000080",
    )
    .unwrap();
    assert_eq!(refusal(pre155), "eth_unsupported");
    // Trailing bytes, and a non-zero EIP-155 field.
    let mut trailing = signing_payload(&eip1559(vec![]));
    trailing.push(0);
    assert_eq!(refusal(trailing), "tx_malformed");
    let mut nonzero = hex::decode(
        "ec098504a817c800825208943535353535353535353535353535353535353535880de0b6b3a764000080018080",
    )
    .unwrap();
    *nonzero.last_mut().unwrap() = 0x01;
    assert_eq!(refusal(nonzero), "tx_malformed");
    // EIP-2930 and EIP-4844 types; nothing; too much.
    assert_eq!(refusal(vec![0x01, 0xc0]), "eth_unsupported");
    assert_eq!(refusal(vec![0x03, 0xc0]), "eth_unsupported");
    assert_eq!(refusal(vec![]), "tx_malformed");
    assert_eq!(
        refusal(vec![0xc0; MAX_TRANSACTION_BYTES + 1]),
        "tx_too_large"
    );
    // An access list is not shown yet, so not signed.
    let mut listed = eip1559(vec![]);
    listed.access_list = alloy_eips::eip2930::AccessList(vec![Default::default()]);
    assert_eq!(refusal(signing_payload(&listed)), "eth_unsupported");
    // Typed data that is not EIP-712.
    let e = plan_eth(&EthPayload::TypedData("{}".into()), &[], &public).unwrap_err();
    assert_eq!(e.code(), "tx_malformed");
    // A field its type does not declare (shown, never hashed), and the domain as the
    // primary type (its message not hashed at all).
    let extra = MAIL.replace(
        r#""contents": "Hello, Bob!""#,
        r#""contents": "Hello, Bob!", "amount": "1""#,
    );
    let e = plan_eth(&EthPayload::TypedData(extra), &[], &public).unwrap_err();
    assert!(e.to_string().contains("\"amount\""), "{e}");
    let domain = MAIL.replace(
        r#""primaryType": "Mail""#,
        r#""primaryType": "EIP712Domain""#,
    );
    let e = plan_eth(&EthPayload::TypedData(domain), &[], &public).unwrap_err();
    assert_eq!(e.code(), "tx_malformed");
}

#[test]
fn a_personal_message_is_shown_as_text_and_signed_with_eip191() {
    let key = SecretKey::from_slice(&[0x22; 32]).unwrap();
    let public = key.public_key(&secp());
    let plan = plan_eth(
        &EthPayload::PersonalMessage(b"Sign in to example.org".to_vec()),
        &[0],
        &public,
    )
    .unwrap();
    assert_eq!(
        plan.sighash(),
        alloy_primitives::eip191_hash_message(b"Sign in to example.org").0
    );
    let lines = plan.intent().describe().join("\n");
    assert!(lines.contains("\"Sign in to example.org\""), "{lines}");
    let signed = sign(plan, &key);
    assert_eq!(signed.signature.len(), 65);
    assert!(matches!(signed.signature[64], 27 | 28));
}
