//! Ethereum signatures the TEE computes itself: an unsigned transaction (legacy with EIP-155,
//! or EIP-1559) parsed and re-encoded by alloy and compared byte for byte with what was sent,
//! an EIP-191 personal message, or EIP-712 typed data; the intent built from it; the hash
//! signed (Keccak-256 of the signing payload, EIP-191's or EIP-712's); and the signature
//! placed (the raw signed transaction, or `r || s || v`) once it recovers to the signer.

use alloy_consensus::{SignableTransaction, TxEip1559, TxLegacy};
use alloy_dyn_abi::eip712::TypedData;
use alloy_dyn_abi::{DynSolType, DynSolValue};
use alloy_primitives::{Address, Signature, TxKind, U256};
use bitcoin::secp256k1::ecdsa::RecoverableSignature;
use bitcoin::secp256k1::{Message, PublicKey, Secp256k1, Verification};
use custos_wire::protocol::EthPayload;

use crate::intent::{Erc20Call, EthMessage, EthTransaction, EthTypedData, EthereumIntent, Intent};
use crate::TxError;

/// Largest unsigned transaction, bytes.
pub const MAX_TRANSACTION_BYTES: usize = 128 * 1024;
/// Largest personal message, bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest typed data JSON, bytes.
pub const MAX_TYPED_DATA_BYTES: usize = 64 * 1024;

/// ERC-20 `transfer(address,uint256)`.
const TRANSFER: [u8; 4] = [0xa9, 0x05, 0x9c, 0xbb];
/// ERC-20 `approve(address,uint256)`.
const APPROVE: [u8; 4] = [0x09, 0x5e, 0xa7, 0xb3];

/// The Ethereum address of `key` (EIP-55 checksummed text by [`Address`]'s `Display`).
pub fn address_of(key: &PublicKey) -> Address {
    Address::from_raw_public_key(&key.serialize_uncompressed()[1..])
}

/// The hash signed for `payload`, whoever signs (what a verifier of the signature needs).
pub fn signing_hash(payload: &EthPayload) -> Result<[u8; 32], TxError> {
    // The hash does not depend on the signer: any key (here the generator) plans it.
    let anyone = PublicKey::from_slice(&GENERATOR).expect("the generator is a point");
    Ok(plan_eth(payload, &[], &anyone)?.sighash)
}

/// secp256k1's generator, compressed.
const GENERATOR: [u8; 33] = [
    0x02, 0x79, 0xbe, 0x66, 0x7e, 0xf9, 0xdc, 0xbb, 0xac, 0x55, 0xa0, 0x62, 0x95, 0xce, 0x87, 0x0b,
    0x07, 0x02, 0x9b, 0xfc, 0xdb, 0x2d, 0xce, 0x28, 0xd9, 0x59, 0xf2, 0x81, 0x5b, 0x16, 0xf8, 0x17,
    0x98,
];

/// What the TEE signs for an Ethereum payload, before signing.
#[derive(Debug)]
pub struct EthPlan {
    intent: Intent,
    sighash: [u8; 32],
    from: PublicKey,
    transaction: Option<Unsigned>,
}

#[derive(Debug)]
enum Unsigned {
    Legacy(TxLegacy),
    Eip1559(TxEip1559),
}

/// A signature placed: `r || s || v` (`v` 27 or 28) and, for a transaction, the signed
/// transaction EIP-2718 encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EthSigned {
    /// `r || s || v`.
    pub signature: Vec<u8>,
    /// The signed transaction, ready for `eth_sendRawTransaction`.
    pub raw_transaction: Option<Vec<u8>>,
}

fn malformed(what: &str, e: impl std::fmt::Display) -> TxError {
    TxError::Malformed(format!("{what}: {e}"))
}

fn too_large(what: &'static str, len: usize, max: usize) -> Result<(), TxError> {
    if len > max {
        return Err(TxError::TooLarge { what, len, max });
    }
    Ok(())
}

/// Plans the signature of `payload` by the wallet's key `from` at `path`.
pub fn plan_eth(payload: &EthPayload, path: &[u32], from: &PublicKey) -> Result<EthPlan, TxError> {
    let sender = address_of(from).to_string();
    let (intent, sighash, transaction) = match payload {
        EthPayload::Transaction(bytes) => {
            too_large("transaction bytes", bytes.len(), MAX_TRANSACTION_BYTES)?;
            let unsigned = decode_unsigned(bytes)?;
            let (hash, intent) = unsigned.intent(sender, path)?;
            (
                EthereumIntent::Transaction(Box::new(intent)),
                hash,
                Some(unsigned),
            )
        }
        EthPayload::PersonalMessage(message) => {
            too_large("message bytes", message.len(), MAX_MESSAGE_BYTES)?;
            let text = std::str::from_utf8(message)
                .ok()
                .filter(|t| !t.chars().any(|c| c.is_control() && c != '\n'))
                .map(str::to_string);
            let hash = alloy_primitives::eip191_hash_message(message);
            (
                EthereumIntent::PersonalMessage(EthMessage {
                    from: sender,
                    path: path.to_vec(),
                    message: message.clone(),
                    text,
                }),
                hash.0,
                None,
            )
        }
        EthPayload::TypedData(json) => {
            too_large("typed data bytes", json.len(), MAX_TYPED_DATA_BYTES)?;
            let typed: TypedData =
                serde_json::from_str(json).map_err(|e| malformed("typed data", e))?;
            only_what_is_hashed(json, &typed)?;
            let hash = typed
                .eip712_signing_hash()
                .map_err(|e| malformed("typed data", e))?;
            let domain = &typed.domain;
            let chain_id = match domain.chain_id {
                Some(c) => Some(
                    u64::try_from(c)
                        .map_err(|_| malformed("typed data", "chain id over 64 bits"))?,
                ),
                None => None,
            };
            (
                EthereumIntent::TypedData(Box::new(EthTypedData {
                    from: sender,
                    path: path.to_vec(),
                    chain_id,
                    verifying_contract: domain.verifying_contract.map(|a| a.to_string()),
                    domain_name: domain.name.as_ref().map(|n| n.to_string()),
                    primary_type: typed.primary_type.clone(),
                    typed_data: serde_json::to_string(&typed)
                        .map_err(|e| malformed("typed data", e))?,
                    signing_hash: hash.0,
                })),
                hash.0,
                None,
            )
        }
    };
    Ok(EthPlan {
        intent: Intent::Ethereum(intent),
        sighash,
        from: *from,
        transaction,
    })
}

/// Typed data whose every part shown is hashed: a primary type other than the domain's (whose
/// message would not be hashed at all), and in the message no key its type does not declare
/// (EIP-712 hashes declared fields only; an extra `"amount": "1"` next to a permit's real
/// value would be shown and never signed).
fn only_what_is_hashed(json: &str, typed: &TypedData) -> Result<(), TxError> {
    let bad = |m: String| malformed("typed data", m);
    if typed.primary_type == "EIP712Domain" {
        return Err(bad("the primary type is EIP712Domain".into()));
    }
    let doc: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let types = doc["types"]
        .as_object()
        .ok_or_else(|| bad("no types".into()))?;
    // Each value against its type, depth-first (bounded by the 64 KiB document).
    let mut stack = vec![(typed.primary_type.clone(), &doc["message"])];
    while let Some((ty, value)) = stack.pop() {
        let base = ty.split('[').next().unwrap_or(&ty).to_string();
        let Some(fields) = types.get(&base).and_then(|f| f.as_array()) else {
            continue; // an atomic type (address, uint256, bytes, string, ...)
        };
        if ty != base {
            let items = value
                .as_array()
                .ok_or_else(|| bad(format!("{ty} is not an array")))?;
            let item = ty[..ty.rfind('[').unwrap_or(ty.len())].to_string();
            stack.extend(items.iter().map(|v| (item.clone(), v)));
            continue;
        }
        let object = value
            .as_object()
            .ok_or_else(|| bad(format!("a {ty} that is not an object")))?;
        for key in object.keys() {
            let declared = fields.iter().find(|f| f["name"].as_str() == Some(key));
            let Some(field) = declared else {
                return Err(bad(format!(
                    "{ty} has a field {key:?} its type does not declare"
                )));
            };
            let field_type = field["type"].as_str().unwrap_or_default().to_string();
            stack.push((field_type, &object[key]));
        }
    }
    Ok(())
}

/// The transaction `bytes` signs, decoded by alloy and re-encoded: only the one canonical
/// encoding of an EIP-155 legacy or an EIP-1559 transaction is accepted.
fn decode_unsigned(bytes: &[u8]) -> Result<Unsigned, TxError> {
    let (unsigned, again) = match bytes.first() {
        Some(0x02) => {
            let tx = <TxEip1559 as alloy_rlp::Decodable>::decode(&mut &bytes[1..])
                .map_err(|e| malformed("EIP-1559 transaction", e))?;
            if !tx.access_list.is_empty() {
                return Err(TxError::EthUnsupported(
                    "an access list (not shown to approvers yet)".into(),
                ));
            }
            let mut again = Vec::with_capacity(bytes.len());
            tx.encode_for_signing(&mut again);
            (Unsigned::Eip1559(tx), again)
        }
        Some(b) if *b >= 0xc0 => {
            let tx = <TxLegacy as alloy_rlp::Decodable>::decode(&mut &bytes[..])
                .map_err(|e| malformed("legacy transaction", e))?;
            if tx.chain_id.is_none() {
                return Err(TxError::EthUnsupported(
                    "a legacy transaction without EIP-155 chain id (valid on every chain)".into(),
                ));
            }
            let mut again = Vec::with_capacity(bytes.len());
            tx.encode_for_signing(&mut again);
            (Unsigned::Legacy(tx), again)
        }
        Some(t) => {
            return Err(TxError::EthUnsupported(format!(
                "transaction type {t:#04x} (legacy and EIP-1559 only)"
            )))
        }
        None => return Err(malformed("transaction", "empty")),
    };
    if again != bytes {
        return Err(malformed(
            "transaction",
            "not the canonical signing payload (trailing bytes, a non-zero EIP-155 field, or a \
             non-minimal encoding)",
        ));
    }
    Ok(unsigned)
}

impl Unsigned {
    /// The hash signed and the intent shown.
    fn intent(&self, from: String, path: &[u32]) -> Result<([u8; 32], EthTransaction), TxError> {
        let (tx_type, chain_id, nonce, to, value, gas_limit, input) = match self {
            Unsigned::Legacy(t) => (
                "legacy",
                t.chain_id.unwrap_or_default(),
                t.nonce,
                t.to,
                t.value,
                t.gas_limit,
                &t.input,
            ),
            Unsigned::Eip1559(t) => (
                "eip1559",
                t.chain_id,
                t.nonce,
                t.to,
                t.value,
                t.gas_limit,
                &t.input,
            ),
        };
        let (gas_price, max_fee, max_priority) = match self {
            Unsigned::Legacy(t) => (Some(t.gas_price), t.gas_price, None),
            Unsigned::Eip1559(t) => (None, t.max_fee_per_gas, Some(t.max_priority_fee_per_gas)),
        };
        let max_fee_wei = U256::from(gas_limit) * U256::from(max_fee);
        let to = match to {
            TxKind::Call(a) => Some(a),
            TxKind::Create => None,
        };
        let call = match to {
            Some(token) => erc20_call(token, input, value)?,
            None => None,
        };
        let hash = match self {
            Unsigned::Legacy(t) => t.signature_hash(),
            Unsigned::Eip1559(t) => t.signature_hash(),
        };
        Ok((
            hash.0,
            EthTransaction {
                tx_type: tx_type.into(),
                chain_id,
                from,
                path: path.to_vec(),
                nonce,
                to: to.map(|a| a.to_string()),
                value_wei: value.to_string(),
                gas_limit,
                gas_price_wei: gas_price.map(|g| g.to_string()),
                max_fee_per_gas_wei: max_priority.map(|_| max_fee.to_string()),
                max_priority_fee_per_gas_wei: max_priority.map(|p| p.to_string()),
                max_fee_wei: max_fee_wei.to_string(),
                data: input.to_vec(),
                call,
            },
        ))
    }
}

/// `data` decoded as an ERC-20 `transfer` or `approve` to `token` (`None`: another call).
/// A call with either selector must be exactly one — the selector, an address word whose
/// top 12 bytes are zero, an amount word, nothing more — and send no ether: anything else
/// would be shown as what the contract does not read, so it is refused.
fn erc20_call(token: Address, data: &[u8], value: U256) -> Result<Option<Erc20Call>, TxError> {
    let Some((selector, args)) = data.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let function = match *selector {
        TRANSFER => "transfer",
        APPROVE => "approve",
        _ => return Ok(None),
    };
    let refused = |why: &str| TxError::EthUnsupported(format!("an ERC-20 {function} {why}"));
    if args.len() != 64 || args[..12].iter().any(|b| *b != 0) {
        return Err(refused("call not exactly an address and an amount"));
    }
    if !value.is_zero() {
        return Err(refused("sending ether too"));
    }
    let types = DynSolType::Tuple(vec![DynSolType::Address, DynSolType::Uint(256)]);
    let decoded = types
        .abi_decode_params(args)
        .map_err(|_| refused("call that does not decode"))?;
    let DynSolValue::Tuple(values) = decoded else {
        return Err(refused("call that does not decode"));
    };
    let [DynSolValue::Address(counterparty), DynSolValue::Uint(amount, 256)] = values.as_slice()
    else {
        return Err(refused("call that does not decode"));
    };
    Ok(Some(Erc20Call {
        function: function.into(),
        token: token.to_string(),
        counterparty: counterparty.to_string(),
        amount: amount.to_string(),
    }))
}

impl EthPlan {
    /// The intent.
    pub fn intent(&self) -> &Intent {
        &self.intent
    }

    /// The hash signed.
    pub fn sighash(&self) -> [u8; 32] {
        self.sighash
    }

    /// The key expected to sign.
    pub fn signer(&self) -> &PublicKey {
        &self.from
    }

    /// Places `signature` (over [`Self::sighash`]) once it recovers to the signer.
    pub fn finish<C: Verification>(
        self,
        secp: &Secp256k1<C>,
        signature: &RecoverableSignature,
    ) -> Result<EthSigned, TxError> {
        let msg = Message::from_digest(self.sighash);
        if secp.recover_ecdsa(&msg, signature).ok() != Some(self.from) {
            return Err(TxError::Signing(
                "the signature does not recover to the wallet's key".into(),
            ));
        }
        let (recid, rs) = signature.serialize_compact();
        let parity = recid.to_i32() == 1;
        let sig = Signature::new(
            U256::from_be_slice(&rs[..32]),
            U256::from_be_slice(&rs[32..]),
            parity,
        );
        let mut bytes = rs.to_vec();
        bytes.push(27 + u8::from(parity));
        let raw_transaction = self.transaction.map(|t| {
            let mut out = Vec::new();
            match t {
                Unsigned::Legacy(tx) => tx.into_signed(sig).eip2718_encode(&mut out),
                Unsigned::Eip1559(tx) => tx.into_signed(sig).eip2718_encode(&mut out),
            }
            out
        });
        Ok(EthSigned {
            signature: bytes,
            raw_transaction,
        })
    }
}

#[cfg(test)]
mod tests;
