//! A transaction's intent as the console shows it: what a TEE decoded from the
//! transaction (chain, from, to, amount, fee, decoded calldata), checked first against the
//! hash the approval signs, so that the page never shows one thing while the passkey signs
//! another.

use maud::{html, Markup};

use custos_cloud_api::TransactionView;
use custos_tx::btc::address_of;
use custos_tx::intent::{path_string, EthTransaction, EthereumIntent};
use custos_tx::{BitcoinIntent, Intent};

/// The intent of `tx`, typed, if it is one and hashes to the `intent_hash` approvals sign.
pub(super) fn checked(tx: &TransactionView) -> Result<Intent, String> {
    let intent: Intent = serde_json::from_value(tx.intent.clone())
        .map_err(|e| format!("the intent does not read: {e}"))?;
    let hash = hex::encode(intent.hash());
    if !hash.eq_ignore_ascii_case(&tx.intent_hash) {
        return Err(format!(
            "the intent shown hashes to {hash}, the approval signs {}",
            tx.intent_hash
        ));
    }
    Ok(intent)
}

/// `sat` as BTC, exactly.
fn btc(sat: u64) -> String {
    format!("{}.{:08} BTC", sat / 100_000_000, sat % 100_000_000)
}

/// A decimal amount of a unit with `decimals` decimals, exactly (ether: 18).
fn units(amount: &str, decimals: usize, unit: &str) -> String {
    if amount.is_empty() || !amount.bytes().all(|b| b.is_ascii_digit()) {
        return format!("{amount} (not a decimal amount)");
    }
    let padded = format!("{amount:0>width$}", width = decimals + 1);
    let (whole, frac) = padded.split_at(padded.len() - decimals);
    let whole = whole.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let whole = if whole.is_empty() { "0" } else { whole };
    if frac.is_empty() {
        format!("{whole} {unit}")
    } else {
        format!("{whole}.{frac} {unit}")
    }
}

/// The intent as a table.
pub(super) fn render(intent: &Intent) -> Markup {
    match intent {
        Intent::Bitcoin(b) => bitcoin(b),
        Intent::Ethereum(EthereumIntent::Transaction(t)) => ethereum(t),
        Intent::Ethereum(EthereumIntent::PersonalMessage(m)) => html! {
            table.intent {
                caption { "Ethereum personal message (EIP-191)" }
                tr { th scope="row" { "Signer" } td.mono { (m.from) " (" (path_string(&m.path)) ")" } }
                @if let Some(text) = &m.text {
                    tr { th scope="row" { "Message" } td { pre { (text) } } }
                } @else {
                    tr { th scope="row" { "Message (hex)" } td.mono { (hex::encode(&m.message)) } }
                }
            }
        },
        Intent::Ethereum(EthereumIntent::TypedData(d)) => html! {
            table.intent {
                caption { "Ethereum typed data (EIP-712)" }
                tr { th scope="row" { "Signer" } td.mono { (d.from) " (" (path_string(&d.path)) ")" } }
                tr { th scope="row" { "Chain id" } td { (d.chain_id.map(|c| c.to_string()).unwrap_or_else(|| "none".into())) } }
                tr { th scope="row" { "Verifying contract" } td.mono { (d.verifying_contract.as_deref().unwrap_or("none")) } }
                tr { th scope="row" { "Domain" } td { (d.domain_name.as_deref().unwrap_or("none")) } }
                tr { th scope="row" { "Primary type" } td { (d.primary_type) } }
                tr { th scope="row" { "Data" } td { pre { (d.typed_data) } } }
            }
        },
    }
}

fn bitcoin(b: &BitcoinIntent) -> Markup {
    let sent: u64 = b
        .outputs
        .iter()
        .filter(|o| o.change_path.is_none())
        .map(|o| o.amount_sat)
        .sum();
    html! {
        table.intent {
            caption { "Bitcoin transaction (" (b.network) ")" }
            tr { th scope="row" { "Sent" } td.amount { (btc(sent)) } }
            tr { th scope="row" { "Fee" } td.amount { (btc(b.fee_sat)) } }
            @for (i, o) in b.outputs.iter().enumerate() {
                tr {
                    th scope="row" { "Output " (i) }
                    td {
                        // Written from the script, as the intent's own description does.
                        span.mono { (address_of(&o.script, &b.network).unwrap_or_else(|| format!("script {}", hex::encode(&o.script)))) }
                        " " (btc(o.amount_sat))
                        @if let Some(path) = &o.change_path { " (change, " (path_string(path)) ")" }
                    }
                }
            }
            @for (i, input) in b.inputs.iter().enumerate() {
                tr {
                    th scope="row" { "Input " (i) }
                    td { span.mono { (hex::encode(input.txid)) ":" (input.vout) } " " (btc(input.value_sat)) " (" (path_string(&input.path)) ")" }
                }
            }
            tr { th scope="row" { "Lock time" } td { (b.lock_time) } }
        }
    }
}

fn ethereum(t: &EthTransaction) -> Markup {
    html! {
        table.intent {
            caption { "Ethereum transaction (" (t.tx_type) ", chain " (t.chain_id) ")" }
            tr { th scope="row" { "From" } td.mono { (t.from) " (" (path_string(&t.path)) ")" } }
            tr { th scope="row" { "To" } td.mono { (t.to.as_deref().unwrap_or("contract creation")) } }
            tr { th scope="row" { "Value" } td.amount { (units(&t.value_wei, 18, "ETH")) } }
            tr { th scope="row" { "Maximum fee" } td.amount { (units(&t.max_fee_wei, 18, "ETH")) " (gas limit " (t.gas_limit) ")" } }
            tr { th scope="row" { "Nonce" } td { (t.nonce) } }
            @if let Some(call) = &t.call {
                tr { th scope="row" { "Call" } td { "ERC-20 " strong { (call.function) } " of token " span.mono { (call.token) } } }
                tr { th scope="row" { @if call.function == "approve" { "Spender" } @else { "Recipient" } } td.mono { (call.counterparty) } }
                tr { th scope="row" { "Token amount" } td.amount { (call.amount) " (smallest unit)" } }
            } @else if !t.data.is_empty() {
                tr { th scope="row" { "Call data" } td { p.warning { "Not decoded: check what this contract call does before approving." } span.mono { (hex::encode(&t.data)) } } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_written_exactly() {
        assert_eq!(btc(123_456_789), "1.23456789 BTC");
        assert_eq!(btc(5), "0.00000005 BTC");
        assert_eq!(units("1500000000000000000", 18, "ETH"), "1.5 ETH");
        assert_eq!(units("1", 18, "ETH"), "0.000000000000000001 ETH");
        assert_eq!(units("0", 18, "ETH"), "0 ETH");
        assert_eq!(units("12x", 18, "ETH"), "12x (not a decimal amount)");
    }
}
