//! `custos bitcoin-signer`: a Bitcoin Core external signer (`bitcoind -signer=<command>`,
//! the contract HWI defines) backed by a Custos wallet. Bitcoin Core runs it as
//!
//! * `<command> enumerate`
//! * `<command> --fingerprint <fp> --chain <chain> getdescriptors --account <n>`
//! * `<command> --fingerprint <fp> --chain <chain> displayaddress --desc <descriptor>`
//! * `<command> --stdin --fingerprint <fp> --chain <chain>`, with `signtx <psbt>` on stdin
//!
//! and reads the first line of standard output as JSON. As HWI, every answer is one line
//! of JSON and a refusal is `{"error": ..., "code": ...}` with exit code 0 (argument errors
//! exit 2, as clap does). The wallet's keys never leave its TEEs: account keys below
//! hardened steps come from a TEE through the cloud API, and `signtx` is a PSBT signing
//! request that waits for the wallet's approvers (who read the TEE's intent) and its
//! policy.

use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bitcoin::bip32::{ChildNumber, DerivationPath, Fingerprint, Xpub};
use bitcoin::secp256k1::Secp256k1;
use bitcoin::{Network, NetworkKind};
use clap::{Parser, Subcommand};
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::{RequestResult, RequestStatus, SignPsbtBody};
use miniscript::descriptor::DescriptorType;
use miniscript::descriptor::{DescriptorPublicKey, SinglePubKey};
use miniscript::{Descriptor, ForEachKey};
use serde_json::{json, Value};

use crate::wallet::psbt::wait_for;

/// HWI's error codes, as Bitcoin Core users know them.
mod code {
    /// Missing or malformed arguments.
    pub const BAD_ARGUMENT: i32 = -7;
    /// The wallet or the server could not be reached or read.
    pub const DEVICE_CONN_ERROR: i32 = -3;
    /// The transaction is not one the wallet signs.
    pub const INVALID_TX: i32 = -5;
    /// Refused (by the approvers, the TEE's policy) or not approved in time.
    pub const ACTION_CANCELED: i32 = -14;
    /// The request is not one this signer serves (a chain or script kind).
    pub const UNAVAILABLE_ACTION: i32 = -9;
}

/// `custos bitcoin-signer`.
#[derive(Clone, Debug, Parser)]
#[command(name = "custos bitcoin-signer", no_binary_name = true)]
pub struct SignerArgs {
    /// Cloud server base URL.
    #[arg(long, env = "CUSTOS_API_URL")]
    pub api: String,
    /// API token (scopes `read` and `request`).
    #[arg(long, env = "CUSTOS_API_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Root certificate (PEM) to trust for an HTTPS API.
    #[arg(long, env = "CUSTOS_API_ROOT_CA")]
    pub api_root_ca: Option<PathBuf>,
    /// The wallet (hex of its root public key).
    #[arg(long, env = "CUSTOS_SIGNER_ROOT")]
    pub root: String,
    /// How long `signtx` waits for the approvals, seconds.
    #[arg(long, env = "CUSTOS_SIGNER_WAIT", default_value_t = 3600)]
    pub wait: u64,
    /// The signer's fingerprint, as `enumerate` answered it (Bitcoin Core's).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// `main`, `test`, `signet` or `regtest` (Bitcoin Core's chain names).
    #[arg(long, default_value = "main")]
    pub chain: String,
    /// Read the command from standard input (Bitcoin Core's `signtx`).
    #[arg(long)]
    pub stdin: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Option<SignerCommand>,
}

/// The calls of the external signer contract.
#[derive(Clone, Debug, Subcommand)]
pub enum SignerCommand {
    /// The signers present: this wallet.
    Enumerate,
    /// The wallet's descriptors of an account (BIP-49, BIP-84, BIP-86).
    Getdescriptors {
        /// The account (hardened).
        #[arg(long, default_value_t = 0)]
        account: u32,
    },
    /// Checks that a single-key descriptor is the wallet's and echoes its address.
    Displayaddress {
        /// The descriptor (one key with its origin).
        #[arg(long)]
        desc: String,
    },
    /// Signs a PSBT once the wallet's approvers approved its intent.
    Signtx {
        /// The PSBT, base64.
        psbt: String,
    },
}

/// A refusal, written as `{"error": ..., "code": ...}`.
#[derive(Debug)]
pub struct SignerError {
    code: i32,
    message: String,
}

impl SignerError {
    fn new(code: i32, message: impl Into<String>) -> Self {
        SignerError {
            code,
            message: message.into(),
        }
    }

    /// The JSON answer.
    pub fn to_json(&self) -> Value {
        json!({ "error": self.message, "code": self.code })
    }
}

fn conn(e: impl std::fmt::Display) -> SignerError {
    SignerError::new(code::DEVICE_CONN_ERROR, e.to_string())
}

/// The arguments `args` (without the program and subcommand name) with, under `--stdin`,
/// the words read from standard input appended (Bitcoin Core writes `signtx <psbt>`, older
/// versions with the PSBT quoted and a newline).
pub fn with_stdin(args: Vec<String>, input: &mut dyn Read) -> std::io::Result<Vec<String>> {
    if !args.iter().any(|a| a == "--stdin") {
        return Ok(args);
    }
    let mut text = String::new();
    // A PSBT of at most 1 MiB, as base64, with its command word.
    input
        .take(2 * custos_cloud_api::MAX_PSBT_BYTES as u64)
        .read_to_string(&mut text)?;
    let words = text
        .split_whitespace()
        .map(|w| w.trim_matches('"').to_string());
    Ok(args.into_iter().chain(words).collect())
}

/// The API's network name, the BIP-44 coin type and the network of a Bitcoin Core chain
/// name.
fn chain_of(chain: &str) -> Result<(&'static str, u32, Network), SignerError> {
    match chain {
        "main" => Ok(("bitcoin", 0, Network::Bitcoin)),
        "test" => Ok(("testnet", 1, Network::Testnet)),
        "signet" => Ok(("signet", 1, Network::Signet)),
        "regtest" => Ok(("regtest", 1, Network::Regtest)),
        other => Err(SignerError::new(
            code::UNAVAILABLE_ACTION,
            format!("chain {other:?} is not served (main, test, signet, regtest)"),
        )),
    }
}

/// The signer of one wallet.
struct Signer {
    client: CloudClient,
    root: String,
    fingerprint: Fingerprint,
    xpub: Xpub,
}

impl Signer {
    async fn open(args: &SignerArgs) -> Result<Signer, SignerError> {
        let client = match &args.api_root_ca {
            Some(p) => {
                let pem = std::fs::read_to_string(p)
                    .map_err(|e| conn(format!("{}: {e}", p.display())))?;
                CloudClient::with_root_pem(&args.api, &args.token, &pem)
            }
            None => CloudClient::new(&args.api, &args.token),
        }
        .map_err(conn)?;
        let wallet = client.wallet(&args.root).await.map_err(conn)?;
        let xpub = Xpub::from_str(&wallet.xpub).map_err(conn)?;
        // The root key is the wallet named here, whatever the server says: its fingerprint
        // and every descriptor derive from it.
        if !hex::encode(xpub.public_key.serialize()).eq_ignore_ascii_case(&args.root) {
            return Err(conn(format!(
                "the server's xpub for wallet {} is another key's",
                args.root
            )));
        }
        let fingerprint = xpub.fingerprint();
        if let Some(asked) = &args.fingerprint {
            if !asked.eq_ignore_ascii_case(&fingerprint.to_string()) {
                return Err(SignerError::new(
                    code::DEVICE_CONN_ERROR,
                    format!("no wallet with fingerprint {asked} here (this one is {fingerprint})"),
                ));
            }
        }
        Ok(Signer {
            client,
            root: wallet.root_id,
            fingerprint,
            xpub,
        })
    }

    /// The wallet's extended key at `path` (hardened steps derived by a TEE), encoded for
    /// `network`.
    async fn account_xpub(&self, path: &DerivationPath, test: bool) -> Result<Xpub, SignerError> {
        let text = format!("m/{}", origin_text(path));
        let view = self
            .client
            .wallet_xpub(&self.root, &text)
            .await
            .map_err(conn)?;
        let mut xpub = Xpub::from_str(&view.xpub).map_err(conn)?;
        if test {
            xpub.network = NetworkKind::Test;
        }
        Ok(xpub)
    }

    async fn getdescriptors(&self, chain: &str, account: u32) -> Result<Value, SignerError> {
        let (_, coin, network) = chain_of(chain)?;
        let test = network != Network::Bitcoin;
        let mut receive = Vec::new();
        let mut internal = Vec::new();
        for (purpose, wrap) in [(49, "sh(wpkh({}))"), (84, "wpkh({})"), (86, "tr({})")] {
            let path = hardened(&[purpose, coin, account])?;
            let xpub = self.account_xpub(&path, test).await?;
            for (branch, out) in [(0, &mut receive), (1, &mut internal)] {
                let key = format!(
                    "[{}/{}]{xpub}/{branch}/*",
                    self.fingerprint,
                    origin_text(&path)
                );
                let text = wrap.replace("{}", &key);
                // Parsed and written by miniscript: the checksum is the library's.
                let desc = Descriptor::<DescriptorPublicKey>::from_str(&text)
                    .map_err(|e| conn(format!("descriptor {text}: {e}")))?;
                out.push(desc.to_string());
            }
        }
        Ok(json!({ "receive": receive, "internal": internal }))
    }

    async fn displayaddress(&self, chain: &str, desc: &str) -> Result<Value, SignerError> {
        let (_, _, network) = chain_of(chain)?;
        let bad = |m: String| SignerError::new(code::BAD_ARGUMENT, m);
        let parsed = Descriptor::<DescriptorPublicKey>::from_str(desc)
            .map_err(|e| bad(format!("descriptor: {e}")))?;
        if !matches!(
            parsed.desc_type(),
            DescriptorType::Wpkh | DescriptorType::ShWpkh | DescriptorType::Tr
        ) {
            return Err(SignerError::new(
                code::UNAVAILABLE_ACTION,
                "only wpkh, sh(wpkh) and tr key-path descriptors are the wallet's",
            ));
        }
        let mut keys = Vec::new();
        parsed.for_each_key(|k| {
            keys.push(k.clone());
            true
        });
        let [DescriptorPublicKey::Single(single)] = keys.as_slice() else {
            return Err(bad("a descriptor of one key with its origin".into()));
        };
        let Some((fp, path)) = &single.origin else {
            return Err(bad("the key has no origin".into()));
        };
        if *fp != self.fingerprint {
            return Err(SignerError::new(
                code::DEVICE_CONN_ERROR,
                format!(
                    "the key's origin {fp} is not this wallet ({})",
                    self.fingerprint
                ),
            ));
        }
        let ours = self.public_key_at(path).await?;
        let same = match single.key {
            SinglePubKey::FullKey(k) => k.inner == ours,
            SinglePubKey::XOnly(k) => k == ours.x_only_public_key().0,
        };
        if !same {
            return Err(bad(format!(
                "the key is not the wallet's at {}",
                custos_tx::intent::path_string(&path.to_u32_vec())
            )));
        }
        let definite = parsed
            .at_derivation_index(0)
            .map_err(|e| bad(format!("descriptor: {e}")))?;
        let address = definite
            .address(network)
            .map_err(|e| bad(format!("address: {e}")))?;
        Ok(json!({ "address": address.to_string() }))
    }

    /// The wallet's public key at `path`: hardened steps by a TEE, the rest derived here.
    async fn public_key_at(
        &self,
        path: &DerivationPath,
    ) -> Result<bitcoin::secp256k1::PublicKey, SignerError> {
        let steps: Vec<ChildNumber> = path.into_iter().copied().collect();
        let split = steps
            .iter()
            .rposition(|c| c.is_hardened())
            .map_or(0, |i| i + 1);
        let base = if split == 0 {
            self.xpub
        } else {
            self.account_xpub(&DerivationPath::from(steps[..split].to_vec()), false)
                .await?
        };
        let child = base
            .derive_pub(&Secp256k1::verification_only(), &steps[split..].to_vec())
            .map_err(conn)?;
        Ok(child.public_key)
    }

    async fn signtx(&self, chain: &str, psbt: &str, wait: u64) -> Result<Value, SignerError> {
        let (network, _, _) = chain_of(chain)?;
        let psbt = psbt.trim();
        // One request per wallet and PSBT: Bitcoin Core calling again (after a timeout, say)
        // waits for the same request instead of asking the approvers twice.
        let id = {
            use sha2::{Digest, Sha256};
            let h = Sha256::new()
                .chain_update(b"custos-bitcoin-signer\0")
                .chain_update(self.root.as_bytes())
                .chain_update(psbt.as_bytes())
                .finalize();
            hex::encode(&h[..16])
        };
        let made = self
            .client
            .sign_psbt(&SignPsbtBody {
                root_id: self.root.clone(),
                network: network.into(),
                psbt: psbt.to_string(),
                clusters: None,
                request_id: Some(id.clone()),
                expires_at: None,
                approvals: Vec::new(),
            })
            .await;
        match made {
            Ok(_) => {}
            Err(e) if e.code() == Some("request_exists") => {}
            Err(e) if matches!(e.code(), Some("transaction_rejected" | "invalid_psbt")) => {
                return Err(SignerError::new(code::INVALID_TX, e.to_string()))
            }
            Err(e) => return Err(conn(e)),
        }
        let done = wait_for(&self.client, &id, Duration::from_secs(wait))
            .await
            .map_err(conn)?;
        match (&done.status, &done.result) {
            (RequestStatus::Completed, Some(RequestResult::Psbt(r))) => {
                Ok(json!({ "psbt": r.psbt, "signed": true }))
            }
            (status, _) => Err(SignerError::new(
                code::ACTION_CANCELED,
                format!(
                    "request {} is {}{}",
                    done.id,
                    status.as_str(),
                    done.error
                        .as_ref()
                        .map(|e| format!(": {} ({})", e.code, e.message))
                        .unwrap_or_default()
                ),
            )),
        }
    }
}

/// `path` as a key origin writes it (`84'/1'/0'`, no `m/`).
fn origin_text(path: &DerivationPath) -> String {
    let text = path.to_string();
    text.strip_prefix("m/")
        .or_else(|| text.strip_prefix('m'))
        .unwrap_or(&text)
        .to_string()
}

fn hardened(steps: &[u32]) -> Result<DerivationPath, SignerError> {
    steps
        .iter()
        .map(|&s| ChildNumber::from_hardened_idx(s))
        .collect::<Result<Vec<_>, _>>()
        .map(DerivationPath::from)
        .map_err(|e| SignerError::new(code::BAD_ARGUMENT, e.to_string()))
}

/// Runs one call and returns its JSON answer (a refusal as `{"error", "code"}`).
pub async fn run(args: &SignerArgs) -> Value {
    let answer = async {
        let Some(command) = &args.command else {
            return Err(SignerError::new(code::BAD_ARGUMENT, "no command given"));
        };
        let signer = Signer::open(args).await;
        match command {
            SignerCommand::Enumerate => Ok(match signer {
                Ok(s) => json!([{
                    "fingerprint": s.fingerprint.to_string(),
                    "model": "custos",
                    "name": format!("Custos wallet {}…", s.root.get(..16).unwrap_or(&s.root)),
                }]),
                // Per device, as HWI: Bitcoin Core names the error.
                Err(e) => json!([{ "error": e.message, "code": e.code }]),
            }),
            SignerCommand::Getdescriptors { account } => {
                signer?.getdescriptors(&args.chain, *account).await
            }
            SignerCommand::Displayaddress { desc } => {
                signer?.displayaddress(&args.chain, desc).await
            }
            SignerCommand::Signtx { psbt } => signer?.signtx(&args.chain, psbt, args.wait).await,
        }
    }
    .await;
    answer.unwrap_or_else(|e| e.to_json())
}
