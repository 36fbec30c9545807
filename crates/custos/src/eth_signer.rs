//! `custos eth-signer`: an Ethereum JSON-RPC signer in the manner of Web3Signer's eth1 mode,
//! backed by a Custos wallet, for clients that already exist (`cast --unlocked`, ethers'
//! `JsonRpcSigner`, wallets pointed at an RPC URL). It answers `eth_accounts`, `eth_sign`,
//! `personal_sign`, `eth_signTransaction`, `eth_signTypedData` (and `_v4`) and
//! `eth_sendTransaction` (nonce, gas, fees and chain id filled from the downstream node, then
//! `eth_sendRawTransaction` there); every other method goes to the downstream node as it
//! came. A signing call is a request on the cloud server: it waits for the wallet's approvers
//! (who read the TEE's intent) and its policy, and ends with a JSON-RPC error on refusal or
//! when the wait ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use alloy_consensus::{SignableTransaction, TxEnvelope, TypedTransaction};
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{Address, U256};
use alloy_rpc_types_eth::TransactionRequest;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use bitcoin::bip32::Xpub;
use bitcoin::secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
use bitcoin::secp256k1::{Message, Secp256k1};
use clap::Args;
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::{RequestResult, RequestStatus, SignEthereumBody};
use custos_wire::protocol::EthPayload;
use serde_json::{json, Value};

use crate::wallet::psbt::wait_for;

/// Largest JSON-RPC body accepted (a batch of calls, typed data of 64 KiB).
const MAX_RPC_BODY: usize = 1024 * 1024;
/// Most calls in one batch.
const MAX_BATCH: usize = 64;
/// Server error: a refusal, a failed fill, an unreachable cloud server.
const SERVER_ERROR: i64 = -32000;
/// Invalid params.
const INVALID_PARAMS: i64 = -32602;

/// Options of `custos eth-signer`.
#[derive(Clone, Debug, Args)]
pub struct EthSignerArgs {
    /// Address to listen on (loopback unless a TLS proxy fronts it).
    #[arg(long, default_value = "127.0.0.1:8550")]
    pub listen: SocketAddr,
    /// The Ethereum node every other call goes to (e.g. `http://127.0.0.1:8545`).
    #[arg(long)]
    pub downstream: String,
    /// Cloud server base URL.
    #[arg(long, env = "CUSTOS_API_URL")]
    pub api: String,
    /// API token (scopes `read` and `request`).
    #[arg(long, env = "CUSTOS_API_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Root certificate (PEM) to trust for an HTTPS API.
    #[arg(long)]
    pub api_root_ca: Option<PathBuf>,
    /// The wallet (hex of its root public key).
    #[arg(long, env = "CUSTOS_SIGNER_ROOT")]
    pub root: String,
    /// A path whose key is an account; repeat for each (default `m/44'/60'/0'/0/0`).
    #[arg(long = "path")]
    pub paths: Vec<String>,
    /// How long a signing call waits for the approvals, seconds.
    #[arg(long, default_value_t = 3600)]
    pub wait: u64,
}

/// One account: its address and the wallet path of its key.
#[derive(Clone, Debug)]
struct Account {
    address: Address,
    path: String,
}

struct Signer {
    client: CloudClient,
    root: String,
    accounts: Vec<Account>,
    downstream: String,
    http: reqwest::Client,
    wait: Duration,
    sending: tokio::sync::Mutex<()>,
}

/// A JSON-RPC error.
struct RpcError {
    code: i64,
    message: String,
}

fn server(message: impl Into<String>) -> RpcError {
    RpcError {
        code: SERVER_ERROR,
        message: message.into(),
    }
}

fn invalid(message: impl Into<String>) -> RpcError {
    RpcError {
        code: INVALID_PARAMS,
        message: message.into(),
    }
}

/// Starts the signer: resolves the accounts (each key's address from a TEE, under the root
/// key named), listens, prints `listening on http://<address>` and serves until the
/// process ends.
pub async fn run(args: &EthSignerArgs) -> Result<(), Box<dyn std::error::Error>> {
    let client = match &args.api_root_ca {
        Some(p) => {
            CloudClient::with_root_pem(&args.api, &args.token, &std::fs::read_to_string(p)?)?
        }
        None => CloudClient::new(&args.api, &args.token)?,
    };
    let wallet = client.wallet(&args.root).await?;
    let root = Xpub::from_str(&wallet.xpub)?;
    if !hex::encode(root.public_key.serialize()).eq_ignore_ascii_case(&args.root) {
        return Err(format!(
            "the server's xpub for wallet {} is another key's",
            args.root
        )
        .into());
    }
    let paths = if args.paths.is_empty() {
        vec!["m/44'/60'/0'/0/0".to_string()]
    } else {
        args.paths.clone()
    };
    let mut accounts = Vec::new();
    for path in paths {
        let view = client.wallet_xpub(&args.root, &path).await?;
        let key = Xpub::from_str(&view.xpub)?.public_key;
        accounts.push(Account {
            address: custos_tx::eth::address_of(&key),
            path: view.path,
        });
    }
    let signer = Arc::new(Signer {
        client,
        root: wallet.root_id,
        accounts,
        downstream: args.downstream.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?,
        wait: Duration::from_secs(args.wait),
        sending: tokio::sync::Mutex::new(()),
    });
    let app = Router::new()
        .route("/", post(rpc))
        .layer(DefaultBodyLimit::max(MAX_RPC_BODY))
        .with_state(signer);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn rpc(State(signer): State<Arc<Signer>>, Json(body): Json<Value>) -> Json<Value> {
    Json(match body {
        Value::Array(calls) if calls.len() > MAX_BATCH => json!({
            "jsonrpc": "2.0", "id": null,
            "error": { "code": -32600, "message": format!("a batch of at most {MAX_BATCH} calls") },
        }),
        Value::Array(calls) => {
            let mut out = Vec::with_capacity(calls.len());
            for c in calls {
                out.push(signer.call(c).await);
            }
            Value::Array(out)
        }
        single => signer.call(single).await,
    })
}

impl Signer {
    async fn call(&self, request: Value) -> Value {
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let method = request.get("method").and_then(Value::as_str).unwrap_or("");
        let params = request
            .get("params")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let answer = match method {
            "eth_accounts" => Ok(json!(self
                .accounts
                .iter()
                .map(|a| a.address.to_string())
                .collect::<Vec<_>>())),
            "eth_sign" => {
                self.sign_message(param(&params, 0), param(&params, 1))
                    .await
            }
            "personal_sign" => {
                self.sign_message(param(&params, 1), param(&params, 0))
                    .await
            }
            "eth_signTypedData" | "eth_signTypedData_v4" => {
                self.sign_typed(param(&params, 0), param(&params, 1)).await
            }
            "eth_signTransaction" => self
                .sign_transaction(param(&params, 0))
                .await
                .map(|raw| json!(raw)),
            "eth_sendTransaction" => {
                // One send at a time: two waiting for approvals would take the same nonce.
                let _one = self.sending.lock().await;
                match self.sign_transaction(param(&params, 0)).await {
                    Ok(raw) => {
                        self.downstream("eth_sendRawTransaction", json!([raw]))
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            // Whatever else signs or administers is not passed to the node (which may hold
            // keys of its own); the rest is.
            m if [
                "eth_sign",
                "personal_",
                "admin_",
                "debug_",
                "wallet_",
                "miner_",
            ]
            .iter()
            .any(|p| m.starts_with(p)) =>
            {
                Err(RpcError {
                    code: -32601,
                    message: format!("{m} is not offered by this signer"),
                })
            }
            _ => return self.forward(&request).await,
        };
        match answer {
            Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
            Err(e) => json!({
                "jsonrpc": "2.0", "id": id,
                "error": { "code": e.code, "message": e.message },
            }),
        }
    }

    /// The account `address` names, if it is one of this signer's.
    fn account(&self, address: &Value) -> Result<&Account, RpcError> {
        let text = address.as_str().ok_or_else(|| invalid("an address"))?;
        let wanted = Address::from_str(text).map_err(|e| invalid(format!("address: {e}")))?;
        self.accounts
            .iter()
            .find(|a| a.address == wanted)
            .ok_or_else(|| server(format!("unknown account {wanted}")))
    }

    async fn sign_message(&self, address: &Value, data: &Value) -> Result<Value, RpcError> {
        let account = self.account(address)?.clone();
        let text = data.as_str().ok_or_else(|| invalid("the message"))?;
        // Hex when it is hex (as clients send bytes), else the text itself.
        let bytes = match text.strip_prefix("0x").map(hex::decode) {
            Some(Ok(b)) => b,
            _ => text.as_bytes().to_vec(),
        };
        let payload = EthPayload::PersonalMessage(bytes);
        let result = self.request(&account, &payload).await?;
        Ok(json!(result.signature))
    }

    async fn sign_typed(&self, address: &Value, typed: &Value) -> Result<Value, RpcError> {
        let account = self.account(address)?.clone();
        let text = match typed {
            Value::String(s) => s.clone(),
            Value::Object(_) => typed.to_string(),
            _ => return Err(invalid("typed data (JSON text or object)")),
        };
        let result = self.request(&account, &EthPayload::TypedData(text)).await?;
        Ok(json!(result.signature))
    }

    /// Signs the transaction `tx` (its missing nonce, gas, fees and chain id filled from the
    /// downstream node): the raw signed transaction, hex.
    async fn sign_transaction(&self, tx: &Value) -> Result<String, RpcError> {
        let mut request: TransactionRequest =
            serde_json::from_value(tx.clone()).map_err(|e| invalid(format!("transaction: {e}")))?;
        let from = request
            .from
            .ok_or_else(|| invalid("the transaction names no `from`"))?;
        let account = self.account(&json!(from.to_string()))?.clone();
        // An empty access list is no access list (some clients always send one).
        if request.access_list.as_ref().is_some_and(|l| l.0.is_empty()) {
            request.access_list = None;
        }
        self.fill(&mut request, from).await?;
        let typed = request
            .build_typed_tx()
            .map_err(|_| invalid("the transaction is incomplete"))?;
        let mut payload = Vec::new();
        match typed {
            TypedTransaction::Legacy(t) => t.encode_for_signing(&mut payload),
            TypedTransaction::Eip1559(t) => t.encode_for_signing(&mut payload),
            other => {
                return Err(invalid(format!(
                    "transaction type {} (legacy and EIP-1559 only)",
                    other.tx_type()
                )))
            }
        }
        let payload = EthPayload::Transaction(payload);
        let result = self.request(&account, &payload).await?;
        let raw = result
            .raw_transaction
            .ok_or_else(|| server("the signature came without its transaction"))?;
        // The transaction broadcast is the one asked for, whatever the server answered.
        let bytes = hex::decode(raw.trim_start_matches("0x"))
            .map_err(|e| server(format!("raw transaction: {e}")))?;
        let envelope = TxEnvelope::decode_2718(&mut bytes.as_slice())
            .map_err(|e| server(format!("raw transaction: {e}")))?;
        let expected = custos_tx::eth::signing_hash(&payload).map_err(|e| server(e.to_string()))?;
        if envelope.signature_hash().0 != expected {
            return Err(server("the server answered another transaction"));
        }
        Ok(raw)
    }

    /// Fills what the caller left out from the downstream node.
    async fn fill(&self, tx: &mut TransactionRequest, from: Address) -> Result<(), RpcError> {
        let quantity = |v: Value, what: &str| -> Result<u128, RpcError> {
            let text = v.as_str().unwrap_or_default();
            u128::from_str_radix(text.trim_start_matches("0x"), 16)
                .map_err(|e| server(format!("{what} from the node: {e}")))
        };
        let node_chain = quantity(self.downstream("eth_chainId", json!([])).await?, "chain id")?;
        let node_chain = u64::try_from(node_chain).map_err(|_| server("chain id over 64 bits"))?;
        match tx.chain_id {
            None => tx.chain_id = Some(node_chain),
            Some(c) if c != node_chain => {
                return Err(invalid(format!(
                    "chain id {c}, the node serves chain {node_chain}"
                )))
            }
            Some(_) => {}
        }
        if tx.nonce.is_none() {
            let n = self
                .downstream(
                    "eth_getTransactionCount",
                    json!([from.to_string(), "pending"]),
                )
                .await?;
            tx.nonce = Some(quantity(n, "nonce")? as u64);
        }
        if tx.gas_price.is_none() && tx.max_fee_per_gas.is_none() {
            let tip = quantity(
                self.downstream("eth_maxPriorityFeePerGas", json!([]))
                    .await?,
                "tip",
            )?;
            let block = self
                .downstream("eth_getBlockByNumber", json!(["latest", false]))
                .await?;
            let base = quantity(block["baseFeePerGas"].clone(), "base fee")?;
            tx.max_priority_fee_per_gas = Some(tip);
            tx.max_fee_per_gas = Some(base.saturating_mul(2).saturating_add(tip));
        }
        if tx.gas.is_none() {
            let estimate = serde_json::to_value(&*tx).map_err(|e| server(e.to_string()))?;
            let gas = quantity(
                self.downstream("eth_estimateGas", json!([estimate]))
                    .await?,
                "gas",
            )?;
            tx.gas = Some(gas as u64);
        }
        if tx.value.is_none() {
            tx.value = Some(U256::ZERO);
        }
        Ok(())
    }

    /// Records an Ethereum signing request of `account` for `payload`, waits for its end,
    /// and checks that the signature is the account's over the payload's own signing hash
    /// (the cloud server is not trusted with that).
    async fn request(
        &self,
        account: &Account,
        payload: &EthPayload,
    ) -> Result<custos_cloud_api::EthereumResult, RpcError> {
        let mut body = SignEthereumBody {
            root_id: self.root.clone(),
            path: account.path.clone(),
            transaction: None,
            message: None,
            typed_data: None,
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        };
        match payload {
            EthPayload::Transaction(t) => body.transaction = Some(hex::encode(t)),
            EthPayload::PersonalMessage(m) => body.message = Some(hex::encode(m)),
            EthPayload::TypedData(d) => body.typed_data = Some(d.clone()),
        }
        let view = self
            .client
            .sign_ethereum(&body)
            .await
            .map_err(|e| server(e.to_string()))?;
        let done = wait_for(&self.client, &view.id, self.wait)
            .await
            .map_err(|e| server(e.to_string()))?;
        match (done.status, done.result) {
            (RequestStatus::Completed, Some(RequestResult::Ethereum(r))) => {
                let signer = recover(payload, &r.signature)
                    .ok_or_else(|| server("the signature does not recover"))?;
                if signer != account.address {
                    return Err(server(format!(
                        "signed by {signer}, not the account {}",
                        account.address
                    )));
                }
                Ok(r)
            }
            (status, _) => Err(server(format!(
                "request {} is {}{}",
                done.id,
                status.as_str(),
                done.error
                    .map(|e| format!(": {} ({})", e.code, e.message))
                    .unwrap_or_default()
            ))),
        }
    }

    /// `method(params)` on the downstream node: its result, or its error.
    async fn downstream(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let answer = self
            .post(&json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }))
            .await?;
        match (answer.get("result"), answer.get("error")) {
            (Some(r), None) => Ok(r.clone()),
            (_, Some(e)) => Err(RpcError {
                code: e["code"].as_i64().unwrap_or(SERVER_ERROR),
                message: e["message"]
                    .as_str()
                    .unwrap_or("downstream error")
                    .to_string(),
            }),
            _ => Err(server(format!("{method}: the node answered no result"))),
        }
    }

    /// `request` sent to the downstream node as it came; its answer as it came.
    async fn forward(&self, request: &Value) -> Value {
        match self.post(request).await {
            Ok(v) => v,
            Err(e) => json!({
                "jsonrpc": "2.0", "id": request.get("id").cloned().unwrap_or(Value::Null),
                "error": { "code": e.code, "message": e.message },
            }),
        }
    }

    async fn post(&self, body: &Value) -> Result<Value, RpcError> {
        let answer = self
            .http
            .post(&self.downstream)
            .json(body)
            .send()
            .await
            // Never the node's URL (it may hold an API key) in what callers read.
            .map_err(|e| server(format!("downstream node: {}", e.without_url())))?;
        answer
            .json()
            .await
            .map_err(|e| server(format!("downstream node: {}", e.without_url())))
    }
}

/// The address `signature` (`0x` r‖s‖v) recovers to over `payload`'s signing hash.
fn recover(payload: &EthPayload, signature: &str) -> Option<Address> {
    let bytes = hex::decode(signature.trim_start_matches("0x")).ok()?;
    let hash = custos_tx::eth::signing_hash(payload).ok()?;
    let (rs, v) = bytes.split_at_checked(64)?;
    let recid = RecoveryId::from_i32(i32::from(v.first()?.checked_sub(27)?)).ok()?;
    let sig = RecoverableSignature::from_compact(rs, recid).ok()?;
    let key = Secp256k1::verification_only()
        .recover_ecdsa(&Message::from_digest(hash), &sig)
        .ok()?;
    Some(custos_tx::eth::address_of(&key))
}

fn param(params: &[Value], i: usize) -> &Value {
    params.get(i).unwrap_or(&Value::Null)
}
