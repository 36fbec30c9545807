//! The intent of an Ethereum signature: a transaction (legacy EIP-155 or EIP-1559, an
//! ERC-20 `transfer`/`approve` decoded), an EIP-191 personal message or EIP-712 typed data.
//!
//! Encoded (after the chain `ethereum`) as one field: the intent's JSON exactly as
//! `serde_json` writes these types (fields in declaration order, amounts as decimal strings,
//! byte strings as lower-case hex, typed data as the canonical JSON text the TEE wrote).
//! Every field shown is encoded, the decoded call included: a server showing another
//! decoding changes the hash, and the TEE refuses approvals of it.

use serde::{Deserialize, Serialize};

/// What an Ethereum signature does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EthereumIntent {
    /// A transaction.
    Transaction(Box<EthTransaction>),
    /// An EIP-191 personal message.
    PersonalMessage(EthMessage),
    /// EIP-712 typed data.
    TypedData(Box<EthTypedData>),
}

/// An Ethereum transaction as its approvers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EthTransaction {
    /// `legacy` (EIP-155) or `eip1559`.
    pub tx_type: String,
    /// The chain it is valid on.
    pub chain_id: u64,
    /// The sender: the address of the wallet's key at `path` (EIP-55).
    pub from: String,
    /// The wallet path of the signing key.
    pub path: Vec<u32>,
    /// The sender's nonce.
    pub nonce: u64,
    /// The recipient (EIP-55); `None`: a contract creation.
    pub to: Option<String>,
    /// Ether sent, wei (decimal).
    pub value_wei: String,
    /// Gas limit.
    pub gas_limit: u64,
    /// Legacy: the gas price, wei.
    pub gas_price_wei: Option<String>,
    /// EIP-1559: the most paid per gas, wei.
    pub max_fee_per_gas_wei: Option<String>,
    /// EIP-1559: the most paid to the block producer per gas, wei.
    pub max_priority_fee_per_gas_wei: Option<String>,
    /// The most the fee can be: gas limit × gas price (or max fee per gas), wei.
    pub max_fee_wei: String,
    /// The call data, hex.
    #[serde(with = "hex::serde")]
    pub data: Vec<u8>,
    /// The call decoded, when it is an ERC-20 `transfer` or `approve`.
    pub call: Option<Erc20Call>,
}

/// An ERC-20 call, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erc20Call {
    /// `transfer` or `approve`.
    pub function: String,
    /// The token contract (the transaction's recipient, EIP-55).
    pub token: String,
    /// The recipient of a transfer, the spender of an approval (EIP-55).
    pub counterparty: String,
    /// The amount, the token's smallest unit (decimal).
    pub amount: String,
}

/// A personal message (EIP-191 version 0x45).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EthMessage {
    /// The signer's address (EIP-55).
    pub from: String,
    /// The wallet path of the signing key.
    pub path: Vec<u32>,
    /// The message, hex.
    #[serde(with = "hex::serde")]
    pub message: Vec<u8>,
    /// The message as text, when it is printable UTF-8.
    pub text: Option<String>,
}

/// EIP-712 typed data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EthTypedData {
    /// The signer's address (EIP-55).
    pub from: String,
    /// The wallet path of the signing key.
    pub path: Vec<u32>,
    /// The domain's chain id, when it names one.
    pub chain_id: Option<u64>,
    /// The domain's verifying contract (EIP-55), when it names one: what the signature
    /// authorizes is for that contract to act on.
    pub verifying_contract: Option<String>,
    /// The domain's name, when it has one.
    pub domain_name: Option<String>,
    /// The primary type signed.
    pub primary_type: String,
    /// The typed data, canonical JSON (as the TEE parsed and wrote it).
    pub typed_data: String,
    /// The EIP-712 signing hash, hex.
    #[serde(with = "hex::serde")]
    pub signing_hash: [u8; 32],
}

/// Wei as ether, for reading (`1.5 ETH`); digits kept exactly.
fn ether(wei: &str) -> String {
    let digits = wei.trim_start_matches('0');
    if digits.is_empty() {
        return "0 ETH".into();
    }
    let padded = format!("{digits:0>19}");
    let (int, frac) = padded.split_at(padded.len() - 18);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{int} ETH")
    } else {
        format!("{int}.{frac} ETH")
    }
}

impl EthereumIntent {
    pub(crate) fn describe(&self) -> Vec<String> {
        match self {
            EthereumIntent::Transaction(t) => {
                let to = t.to.as_deref().unwrap_or("(contract creation)");
                let mut lines = vec![format!(
                    "Ethereum (chain {}) {} transaction from {} ({}): send {} to {to}, nonce {}, \
                     fee at most {}",
                    t.chain_id,
                    t.tx_type,
                    t.from,
                    crate::intent::path_string(&t.path),
                    ether(&t.value_wei),
                    t.nonce,
                    ether(&t.max_fee_wei)
                )];
                if let Some(c) = &t.call {
                    lines.push(format!(
                        "  ERC-20 {} of {} (token units) of token {} to {}",
                        c.function, c.amount, c.token, c.counterparty
                    ));
                } else if !t.data.is_empty() {
                    lines.push(format!(
                        "  contract call data ({} bytes): {}",
                        t.data.len(),
                        hex::encode(&t.data[..t.data.len().min(68)])
                    ));
                }
                lines
            }
            EthereumIntent::PersonalMessage(m) => vec![format!(
                "Ethereum personal message signed by {} ({}): {}",
                m.from,
                crate::intent::path_string(&m.path),
                m.text
                    .as_ref()
                    .map(|t| format!("{t:?}"))
                    .unwrap_or_else(|| format!("0x{}", hex::encode(&m.message)))
            )],
            EthereumIntent::TypedData(d) => vec![
                // Texts of the typed data quoted and escaped: a name with line breaks or
                // terminal escapes cannot forge lines of its own.
                format!(
                    "Ethereum typed data ({:?}) signed by {} ({}) for {:?} on chain {}, contract {}",
                    d.primary_type,
                    d.from,
                    crate::intent::path_string(&d.path),
                    d.domain_name.as_deref().unwrap_or("(no name)"),
                    d.chain_id.map_or("(none)".into(), |c| c.to_string()),
                    d.verifying_contract.as_deref().unwrap_or("(none)")
                ),
                format!("  {:?}", d.typed_data),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wei_reads_as_ether() {
        assert_eq!(super::ether("0"), "0 ETH");
        assert_eq!(super::ether("1000000000000000000"), "1 ETH");
        assert_eq!(super::ether("1500000000000000000"), "1.5 ETH");
        assert_eq!(super::ether("21000"), "0.000000000000021 ETH");
    }
}
