//! The REST API's wire types with their OpenAPI schemas.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zeroize::Zeroizing;

mod clusters;
mod governance;
mod key_policy;
mod measurement;
mod rules;
mod schema;
mod threshold;

pub use clusters::*;
pub use governance::*;
pub use key_policy::*;
pub use measurement::*;
pub use rules::*;
pub use threshold::*;

/// A compressed secp256k1 public key: a wallet's root id or a threshold key's id.
pub type KeyId = [u8; 33];

/// What a request asks a cluster to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// Generate a new wallet (BIP-32 root seed) inside a TEE.
    CreateWallet,
    /// Import an existing seed, sealed to one node's device key.
    ImportWallet,
    /// Sign a 32-byte digest with a wallet's child key.
    Sign,
    /// Import one cluster's share of a dealt threshold key (a dealer bundle sealed to one
    /// node).
    ImportThresholdKey,
    /// Sign a 32-byte digest with the child key of a threshold key, by t of its clusters.
    ThresholdSign,
    /// Create a threshold key by distributed key generation between its clusters' TEEs.
    CreateThresholdKey,
    /// Append an entry to a cluster's governance log (genesis, admit, remove, revoke, set
    /// governors), approved by its governors.
    Governance,
    /// Replace a wallet's approver group and quorum, approved by a quorum of the group in
    /// force.
    SetKeyPolicy,
    /// Sign a Bitcoin PSBT spending a wallet's coins: approvers see and sign its intent
    /// (inputs, recipients, amounts, change, fee) as the TEE computed it.
    SignPsbt,
    /// Sign an Ethereum transaction, personal message or typed data with a wallet's key:
    /// approvers see and sign its intent as the TEE computed it.
    SignEthereum,
}

impl RequestKind {
    /// The stable name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::CreateWallet => "create_wallet",
            RequestKind::ImportWallet => "import_wallet",
            RequestKind::Sign => "sign",
            RequestKind::ImportThresholdKey => "import_threshold_key",
            RequestKind::ThresholdSign => "threshold_sign",
            RequestKind::CreateThresholdKey => "create_threshold_key",
            RequestKind::Governance => "governance",
            RequestKind::SetKeyPolicy => "set_key_policy",
            RequestKind::SignPsbt => "sign_psbt",
            RequestKind::SignEthereum => "sign_ethereum",
        }
    }

    /// Every kind.
    pub const ALL: [RequestKind; 10] = [
        Self::CreateWallet,
        Self::ImportWallet,
        Self::Sign,
        Self::ImportThresholdKey,
        Self::ThresholdSign,
        Self::CreateThresholdKey,
        Self::Governance,
        Self::SetKeyPolicy,
        Self::SignPsbt,
        Self::SignEthereum,
    ];

    /// Whether the request concerns a threshold key.
    pub fn is_threshold(self) -> bool {
        matches!(
            self,
            Self::ImportThresholdKey | Self::ThresholdSign | Self::CreateThresholdKey
        )
    }

    /// Parses [`RequestKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a request is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Waiting for admin approvals.
    PendingApproval,
    /// Quorum reached; sent to the cluster, answer not yet recorded.
    Submitting,
    /// The cluster executed it; `result` holds the verified answer.
    Completed,
    /// The TEE or the bridge refused it (final); `error` says why.
    Refused,
    /// The cluster could not be reached or its answer did not verify; may be retried with
    /// the same request id (the link executes each id at most once).
    Failed,
    /// The approval window passed without quorum.
    Expired,
}

impl RequestStatus {
    /// The stable name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::PendingApproval => "pending_approval",
            RequestStatus::Submitting => "submitting",
            RequestStatus::Completed => "completed",
            RequestStatus::Refused => "refused",
            RequestStatus::Failed => "failed",
            RequestStatus::Expired => "expired",
        }
    }

    /// Parses [`RequestStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::PendingApproval,
            Self::Submitting,
            Self::Completed,
            Self::Refused,
            Self::Failed,
            Self::Expired,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A secret text field (mnemonic, passphrase, seed hex): zeroized on drop, never printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        SecretText(Zeroizing::new(s.into()))
    }

    /// The secret itself; callers must not log or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Longest certificate PEM of an approval (a Custos P-256 certificate is under 1 KiB), so
/// that [`MAX_APPROVALS`](custos_wire::protocol::MAX_APPROVALS) approvals fit in a request
/// body.
pub const MAX_APPROVAL_PEM: usize = 1536;

/// One admin's approval: the admin certificate with its Admin CA, and an ECDSA P-256
/// signature over the request's approval message (`approval_message` of the request).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    /// Admin certificate (PEM).
    #[schema(
        min_length = 1,
        max_length = 1536,
        pattern = "^[-A-Za-z0-9+/= \\r\\n]+$"
    )]
    pub admin_cert_pem: String,
    /// Admin CA certificate (PEM).
    #[schema(
        min_length = 1,
        max_length = 1536,
        pattern = "^[-A-Za-z0-9+/= \\r\\n]+$"
    )]
    pub admin_ca_pem: String,
    /// DER signature, hex (an ECDSA P-256 signature is at most 72 bytes): over the request's
    /// approval message, or for a passkey over `webauthn`'s authenticator data and the
    /// SHA-256 of its client data.
    #[schema(pattern = "^([0-9a-fA-F]{2}){1,80}$", max_length = 160)]
    pub signature_hex: String,
    /// A passkey's WebAuthn assertion (the console's approvals), required exactly when the
    /// admin certificate certifies a passkey; its challenge is the base64url SHA-256 of the
    /// approval message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webauthn: Option<WebAuthnBody>,
}

/// The parts of a WebAuthn assertion besides its signature, as the browser returned them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebAuthnBody {
    /// `authenticatorData`, hex (at most 256 bytes).
    #[schema(pattern = "^([0-9a-fA-F]{2}){37,256}$", max_length = 512)]
    pub authenticator_data_hex: String,
    /// `clientDataJSON`, hex (at most 512 bytes).
    #[schema(pattern = "^([0-9a-fA-F]{2}){1,512}$", max_length = 1024)]
    pub client_data_json_hex: String,
}

/// `POST /v1/wallets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWalletBody {
    /// Cluster that generates and holds the wallet (a configured cluster's name).
    #[schema(pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48)]
    pub cluster: String,
    /// Distinct admins of `group` required to create and to use the wallet (1..=16, at
    /// most the group's size).
    #[schema(minimum = 1, maximum = 16)]
    pub quorum: u8,
    /// The wallet's approver group, fixed at creation and sealed with the key: the key
    /// fingerprints (hex SHA-256 of the certified SubjectPublicKeyInfo) of the admins who
    /// approve its creation and every use. 1 to 32 distinct admins, any order (the server
    /// sorts them); an admin outside it never counts, whatever certificate it holds.
    #[schema(schema_with = schema::approver_group)]
    pub group: Vec<String>,
    /// The node that executes the creation, by its device key fingerprint (hex SHA-256 of
    /// the certified SubjectPublicKeyInfo), needed up front only to pre-sign approvals; the
    /// server chooses a serving node otherwise. The approvals name it, so no other node can
    /// ever make a wallet from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{64}$", max_length = 64)]
    pub executor: Option<String>,
    /// Request id (32 hex characters); chosen by the server if absent. Needed up front
    /// only to pre-sign approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// Unix seconds after which approvals are void (default: the server's request TTL).
    /// Relative to the server's clock: must be after now and at most 7 days ahead, or the
    /// request is refused with `invalid_expiry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Approvals signed in advance (at most 16); reaching quorum submits at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub approvals: Vec<ApprovalBody>,
    /// The wallet's transaction rules, sealed with it and part of what is approved:
    /// transactions only, spend limits, allowlist, approval tiers (`invalid_rules` when
    /// they do not make a valid policy). Absent: transactions only (raw digests are off for
    /// new wallets; with no spend limit the wallet signs nothing until its group adds one).
    /// `{}`: no rule, the wallet signs raw digests (its approvers see that they approve it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<PolicyRules>,
}

/// `POST /v1/wallets/import`: exactly one of `mnemonic` and `seed_hex`, and `passphrase`
/// only with `mnemonic` (`invalid_secret` otherwise). The secret is sealed at once to one
/// node's certified device key and never stored or logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportWalletBody {
    /// Cluster that will hold the wallet (a configured cluster's name).
    #[schema(pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48)]
    pub cluster: String,
    /// Distinct admins required to use the wallet (1..=16).
    #[schema(minimum = 1, maximum = 16)]
    pub quorum: u8,
    /// BIP-39 mnemonic (English words with a valid checksum; at most 1024 bytes of UTF-8),
    /// refused with `invalid_secret` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, max_length = 1024)]
    pub mnemonic: Option<SecretText>,
    /// BIP-39 passphrase (with `mnemonic` only; at most 1024 bytes of UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, max_length = 1024)]
    pub passphrase: Option<SecretText>,
    /// Raw BIP-32 seed, 16 to 64 bytes, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, pattern = "^([0-9a-fA-F]{2}){16,64}$", max_length = 128)]
    pub seed_hex: Option<SecretText>,
    /// See [`CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// See [`CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// See [`CreateWalletBody::approvals`]. Admins sign the import of the root public key
    /// the secret yields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub approvals: Vec<ApprovalBody>,
    /// The wallet's approver group, as [`CreateWalletBody::group`]: its admins approve the
    /// import (`import-wallet-v2`) and every use. Required once the cluster is governed
    /// (`invalid_group`); without it, the legacy import, approved by any `quorum` admins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schema::approver_group)]
    pub group: Option<Vec<String>>,
    /// The wallet's transaction rules, as [`CreateWalletBody::rules`] (with a `group` only):
    /// absent, the imported wallet signs transactions only (raw digests are off for new
    /// keys); `{}`, raw digests, which its approvers see they approve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<PolicyRules>,
}

impl fmt::Debug for ImportWalletBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secrets are SecretText (redacted) already; listed explicitly so a new field
        // cannot slip in unreviewed.
        f.debug_struct("ImportWalletBody")
            .field("cluster", &self.cluster)
            .field("quorum", &self.quorum)
            .field("mnemonic", &self.mnemonic.as_ref().map(|_| "[redacted]"))
            .field(
                "passphrase",
                &self.passphrase.as_ref().map(|_| "[redacted]"),
            )
            .field("seed_hex", &self.seed_hex.as_ref().map(|_| "[redacted]"))
            .field("request_id", &self.request_id)
            .field("expires_at", &self.expires_at)
            .field("approvals", &self.approvals.len())
            .field("group", &self.group)
            .field("rules", &self.rules)
            .finish()
    }
}

/// `POST /v1/sign-requests`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignRequestBody {
    /// Wallet (hex of the 33-byte root public key).
    #[schema(pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)]
    pub root_id: String,
    /// BIP-32 path, e.g. `m/44'/0'/0'/0/3` (hardened steps allowed; each index below
    /// 2^31, at most 32 steps).
    #[schema(
        pattern = "^m(/([0-9]{1,9}|[01][0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}|2147[0-3][0-9]{5}|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}|21474836[0-3][0-9]|214748364[0-7])['hH]?){0,32}$",
        max_length = 512
    )]
    pub path: String,
    /// The 32-byte digest to sign, hex.
    #[schema(pattern = "^[0-9a-fA-F]{64}$", max_length = 64)]
    pub digest: String,
    /// See [`CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// See [`CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// See [`CreateWalletBody::approvals`]: with quorum here, the request is signed in the
    /// same call (200).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub approvals: Vec<ApprovalBody>,
}

/// Largest PSBT accepted, bytes (the TEE's own limit).
pub const MAX_PSBT_BYTES: usize = 1024 * 1024;

/// `POST /v1/psbt-requests`: sign a Bitcoin PSBT spending the wallet's own coins. The
/// server asks a TEE of the wallet's cluster for the transaction's intent (what it does:
/// inputs, recipients, amounts, change, fee) before recording the request; approvers sign
/// that intent's hash, and the TEE signs only a PSBT whose intent is the approved one and
/// which the wallet's policy allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignPsbtBody {
    /// Wallet (hex of the 33-byte root public key), or threshold key with HD derivation
    /// (hex of the joint public key): its PSBT is signed by t of its clusters, one session
    /// per input, segwit v0 inputs (P2WPKH, P2SH-P2WPKH) under its children only, each
    /// participating TEE checking it and its share's policy.
    #[schema(pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)]
    pub root_id: String,
    /// The network the addresses are written for: `bitcoin`, `testnet`, `signet` or
    /// `regtest` (part of what is approved).
    #[schema(pattern = "^(bitcoin|testnet|signet|regtest)$", max_length = 7)]
    pub network: String,
    /// The PSBT (BIP-174, version 0), base64, at most 1 MiB decoded. Every input must be
    /// the wallet's own (P2WPKH, P2SH-P2WPKH or P2TR key path) with its BIP-32 origin under
    /// the wallet's fingerprint, segwit v0 inputs with their previous transaction.
    #[schema(pattern = "^[A-Za-z0-9+/]+={0,2}$", max_length = 1398104)]
    pub psbt: String,
    /// A threshold key's clusters to sign with, in order (as [`ThresholdSignBody::clusters`]);
    /// absent: the server chooses. Refused for a wallet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = schema::sign_clusters)]
    pub clusters: Option<Vec<String>>,
    /// See [`CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// See [`CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// See [`CreateWalletBody::approvals`]: approvals of the intent's hash, which the
    /// caller learns only from the TEE (so in practice none here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub approvals: Vec<ApprovalBody>,
}

impl SignPsbtBody {
    /// A request to sign `psbt` (serialized) with wallet or threshold key `root_id`, its
    /// addresses written for `network`, approvals to be added later.
    pub fn new(root_id: &str, network: &str, psbt: &[u8]) -> Self {
        use bitcoin::base64::Engine as _;
        SignPsbtBody {
            root_id: root_id.into(),
            network: network.into(),
            psbt: bitcoin::base64::engine::general_purpose::STANDARD.encode(psbt),
            clusters: None,
            request_id: None,
            expires_at: None,
            approvals: vec![],
        }
    }
}

/// Largest Ethereum transaction, message or typed data accepted, bytes (the TEE's limits:
/// 128 KiB for a transaction, 64 KiB for the others).
pub const MAX_ETHEREUM_BYTES: usize = 128 * 1024;

/// `POST /v1/eth-requests`: sign, with the wallet's key at `path`, exactly one of an
/// unsigned Ethereum transaction, a personal message or typed data. The server asks a TEE
/// of the wallet's cluster for its intent (chain, sender, recipient, value, nonce, gas and
/// fees, an ERC-20 transfer or approval decoded; the message; the typed data) before
/// recording the request; approvers sign that intent's hash, and the TEE signs only that
/// and only if the wallet's policy allows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignEthereumBody {
    /// Wallet (hex of the 33-byte root public key).
    #[schema(pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)]
    pub root_id: String,
    /// BIP-32 path of the signing key, e.g. `m/44'/60'/0'/0/0`.
    #[schema(
        pattern = "^m(/([0-9]{1,9}|[01][0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}|2147[0-3][0-9]{5}|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}|21474836[0-3][0-9]|214748364[0-7])['hH]?){0,32}$",
        max_length = 512
    )]
    pub path: String,
    /// An unsigned transaction as it is signed, hex (`0x` allowed): a legacy transaction's
    /// EIP-155 signing payload, or an EIP-1559 one's (`0x02 || rlp(...)`); at most 128 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(0x)?([0-9a-fA-F]{2})+$", max_length = 262146)]
    pub transaction: Option<String>,
    /// A personal message (EIP-191), hex (`0x` allowed); at most 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(0x)?([0-9a-fA-F]{2})*$", max_length = 131074)]
    pub message: Option<String>,
    /// EIP-712 typed data as `eth_signTypedData_v4` takes it (JSON text of at most 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 65536)]
    pub typed_data: Option<String>,
    /// See [`CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// See [`CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// See [`SignPsbtBody::approvals`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub approvals: Vec<ApprovalBody>,
}

/// An Ethereum signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EthereumResult {
    /// The signer's address (EIP-55), recovered from the signature by the server.
    pub address: String,
    /// `r || s || v` (`v` 27 or 28), hex with `0x`: what `personal_sign` and
    /// `eth_signTypedData_v4` answer.
    pub signature: String,
    /// The signed transaction (EIP-2718), hex with `0x`, ready for
    /// `eth_sendRawTransaction`; absent for a message or typed data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_transaction: Option<String>,
    /// The hash of the intent it carries out, hex.
    pub intent_hash: String,
}

/// A transaction to sign, as a TEE of the wallet's cluster computed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransactionView {
    /// The network its addresses are written for.
    pub network: String,
    /// SHA-256 of the intent's canonical encoding, hex: what approvals sign. Approvers
    /// recompute it from `intent` and refuse to sign when it differs.
    pub intent_hash: String,
    /// What the transaction does (`custos_tx::Intent` as JSON): for Bitcoin every input
    /// (outpoint, value, kind, wallet path), every output (address, script, amount, the
    /// wallet path when it is change) and the fee.
    #[schema(value_type = Object)]
    pub intent: serde_json::Value,
}

/// A signed PSBT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PsbtResult {
    /// The PSBT, base64, with every input's signature (`partial_sigs` for segwit v0,
    /// `tap_key_sig` for taproot), ready to finalize.
    pub psbt: String,
    /// The hash of the intent it carries out, hex.
    pub intent_hash: String,
}

/// An approval recorded on a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalView {
    /// Admin common name.
    pub admin: String,
    /// SHA-256 of the admin certificate, hex.
    pub fingerprint: String,
    /// SHA-256 of the admin's certified public key, hex: who the admin is, as approver
    /// groups name admins. Empty for approvals recorded before admins were told apart by key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_fingerprint: String,
    /// When the cloud server accepted it (Unix milliseconds).
    pub approved_at_ms: u64,
}

/// One lifecycle event of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventView {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// What happened (`created`, `approved`, `submitting`, `completed`, ...).
    pub event: String,
    /// Details (never secrets).
    pub detail: String,
}

/// A verified secp256k1 signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignResult {
    /// r, 32 bytes hex.
    pub r: String,
    /// s, 32 bytes hex (low-s).
    pub s: String,
    /// Recovery id (0 or 1).
    pub v: u8,
    /// Compressed public key that signed, hex.
    pub public_key: String,
    /// The signature DER-encoded, hex.
    pub signature_der: String,
    /// Threshold signing: the clusters that signed, in signing order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<String>>,
    /// Threshold signing from a presignature: its id, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presignature: Option<String>,
}

/// A wallet created or imported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WalletResult {
    /// Hex of the root public key.
    pub root_id: String,
    /// Root extended public key.
    pub xpub: String,
}

/// What a completed request produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RequestResult {
    /// Of a `sign` or `threshold_sign` request.
    Signature(SignResult),
    /// Of a `create_wallet` or `import_wallet` request.
    Wallet(WalletResult),
    /// Of an `import_threshold_key` request.
    ThresholdShare(ThresholdShareResult),
    /// Of a `create_threshold_key` request.
    ThresholdKey(ThresholdKeyResult),
    /// Of a `governance` request.
    Governance(GovernanceResult),
    /// Of a `set_key_policy` request: the policy now in force.
    KeyPolicy(KeyPolicyView),
    /// Of a `sign_psbt` request.
    Psbt(PsbtResult),
    /// Of a `sign_ethereum` request.
    Ethereum(EthereumResult),
}

/// Why a request was refused or failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestError {
    /// Stable code, e.g. `tee_approval_rejected`, `cluster_unavailable`, `bad_signature`.
    pub code: String,
    /// For humans.
    pub message: String,
}

/// A request with everything an approver needs to check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    /// 16 bytes, hex: also the TEE request id and the link's exactly-once key.
    pub id: String,
    /// What it asks.
    pub kind: RequestKind,
    /// Target cluster (`*threshold*` for threshold signing and key creation, which span
    /// clusters).
    pub cluster: String,
    /// Lifecycle state.
    pub status: RequestStatus,
    /// Wallet (sign, import; create once completed), or threshold key (threshold kinds;
    /// key creation once completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_id: Option<String>,
    /// Threshold import: index of the share imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_index: Option<u16>,
    /// Threshold key creation: signers the new key needs (t).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u16>,
    /// Threshold key creation: whether the key gets a chain code (HD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hd: Option<bool>,
    /// Threshold key creation: the cluster of each share, by share index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<String>>,
    /// BIP-32 path (sign).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Digest, hex (sign).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Threshold signing of a full message: the message, hex (`digest` is its SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Governance: the log entry approvers sign, every field of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<GovernanceTerms>,
    /// Approver group change: the group in force and the one that replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_policy: Option<KeyPolicyChange>,
    /// Transaction signing: what the transaction does, as a TEE computed it, and the hash
    /// approvals sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<TransactionView>,
    /// Distinct admin approvals required (of the key's group, when it has one).
    pub quorum: u8,
    /// Transaction signing above a tier of another group, or a change of the rules of a
    /// policy with such tiers: each tier's group approves too, besides `quorum` of the
    /// key's group (whose admins are counted apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<TierNeedView>>,
    /// Wallet or threshold key creation: the new key's approver group, admin key
    /// fingerprints (hex), sorted. Only these admins' approvals count, for the creation and
    /// every later use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Vec<String>>,
    /// Threshold key creation with a group: the device key fingerprint (hex) of the one node
    /// executing each share, by share index (their names are in `target_node`,
    /// comma-separated). Any other node refuses the approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executors: Option<Vec<String>>,
    /// Threshold key creation with a group, every cluster governed: the genesis id (hex) of
    /// each share's cluster's governance log, by share index, sealed into the key's policy
    /// (`RULE_CLUSTER_ANCHORS`). A co-signer of another cluster then counts only as a
    /// current member of that log. Absent: other clusters' co-signers are checked by
    /// certificate only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchors: Option<Vec<String>>,
    /// Wallet creation: the new wallet's transaction rules, part of its policy and of what
    /// is approved (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<PolicyRules>,
    /// Wallet creation: the device key fingerprint (hex) of the one node that executes it
    /// (its name is in `target_node`). Any other node refuses the approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// Approvals so far (distinct admins).
    pub approvals: Vec<ApprovalView>,
    /// Unix seconds after which approvals are void.
    pub expires_at: u64,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// Unix milliseconds.
    pub updated_at_ms: u64,
    /// API token name that created it.
    pub created_by: String,
    /// Import: the node the secret (or threshold bundle) is sealed to. Wallet creation: the
    /// node that executes it (see `executor`). Threshold key creation with a group: the node
    /// executing each share, by share index, comma-separated (see `executors`). Threshold
    /// signing: the clusters the caller named, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// Submissions so far.
    pub attempts: u32,
    /// Hex of the exact bytes an admin signs to approve (Custos approval message).
    /// Approvers should recompute it from the fields above rather than trust it.
    pub approval_message: String,
    /// One-line description for humans.
    pub summary: String,
    /// Verified result, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RequestResult>,
    /// Refusal or failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RequestError>,
    /// Lifecycle log, oldest first (empty in lists).
    #[serde(default)]
    pub events: Vec<EventView>,
}

/// `GET /v1/requests` query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RequestQuery {
    /// Only requests in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<RequestStatus>)]
    pub status: Option<RequestStatus>,
    /// Only requests of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<RequestKind>)]
    pub kind: Option<RequestKind>,
    /// At most this many (default 100, at most 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// `GET /v1/requests`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RequestList {
    /// Newest first.
    pub requests: Vec<RequestView>,
}

/// The error document of every failed API call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    /// The error.
    pub error: ApiErrorDetail,
}

/// Inside [`ApiErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorDetail {
    /// Stable snake_case code (see the API description).
    pub code: String,
    /// For humans.
    pub message: String,
    /// The request concerned, when one was created (e.g. `cluster_unavailable` after a
    /// request was recorded: retry it with `POST /v1/requests/{id}/retry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
}
