//! The requests a TEE core answers, and which of them may be relayed from outside the node.

use serde::{Deserialize, Serialize};

// One module split in files: every protocol type is in scope, for the code and the doc links.
use super::*;
use crate::approval::Approval;
use crate::governance::GovEntry;
use crate::import::SealedImport;

/// A request to the TEE core.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Request {
    /// State of the core (provisioning, keys, corrupt records).
    Status,
    /// Pins the Root CA certificate (DER). Once only.
    PinRoot {
        /// Root CA certificate, DER.
        root_cert: Vec<u8>,
    },
    /// Generates the device key D inside and returns a CSR for it.
    GenerateDeviceKey {
        /// Cluster the node will belong to.
        cluster: String,
        /// Node name (CSR common name).
        node: String,
    },
    /// Installs the device certificate issued for D, with its CA chain.
    InstallDeviceCert {
        /// Device certificate, DER.
        device: Vec<u8>,
        /// Cluster CA certificate, DER.
        cluster_ca: Vec<u8>,
        /// Device CA certificate, DER.
        device_ca: Vec<u8>,
    },
    /// Generates a new BIP-32 root seed (B key).
    CreateWallet {
        /// Request id and expiry.
        meta: RequestMeta,
        /// Number of distinct admins required to use (and to create) this key.
        quorum: u8,
        /// Admin approvals.
        approvals: Vec<Approval>,
    },
    /// Imports an existing seed.
    ImportWallet {
        /// Request id and expiry.
        meta: RequestMeta,
        /// Quorum for the key.
        quorum: u8,
        /// Root public key the admins approved importing.
        key_id: KeyId,
        /// The secret.
        secret: ImportSecret,
        /// Admin approvals.
        approvals: Vec<Approval>,
    },
    /// Lists the wallets held.
    ListKeys,
    /// Extended public key at a path (hardened steps allowed; public data only).
    GetXpub {
        /// Wallet.
        key_id: KeyId,
        /// BIP-32 path (hardened indices have bit 31 set).
        path: Vec<u32>,
    },
    /// Signs a 32-byte digest with the child key at `path`.
    Sign {
        /// Request id and expiry.
        meta: RequestMeta,
        /// Wallet.
        key_id: KeyId,
        /// BIP-32 path.
        path: Vec<u32>,
        /// Digest to sign.
        digest: [u8; 32],
        /// Admin approvals.
        approvals: Vec<Approval>,
    },
    /// Signs a short audit message with the root key m (patent [0086]).
    AuditSign {
        /// Wallet.
        key_id: KeyId,
        /// At most [`MAX_AUDIT_MESSAGE`] bytes.
        message: Vec<u8>,
    },
    /// Attestation over a challenge.
    Attest {
        /// Caller's challenge (at most 64 bytes).
        challenge: Vec<u8>,
    },
    /// The installed device certificate chain (for TLS and sync requests).
    DeviceChain,
    /// Signs a TLS 1.3 CertificateVerify message with D (mutual TLS with the device
    /// certificate); any other message is refused.
    SignTls {
        /// The exact message rustls asks to sign.
        message: Vec<u8>,
    },
    /// Seals the given wallets to a requesting node of the same cluster.
    ExportKeys {
        /// The requester's certificate chain.
        requester: CertChain,
        /// Wallets wanted (at most `MAX_TRANSFER_KEYS`).
        key_ids: Vec<KeyId>,
    },
    /// Opens and stores a transfer addressed to this node.
    ImportKeys {
        /// The transfer.
        transfer: KeyTransfer,
    },
    /// Imports an existing seed sealed to this node's device key D
    /// ([`crate::import::seal_import`]): handled as [`Request::ImportWallet`] once opened,
    /// and safe to relay since only ciphertext travels.
    ImportWalletSealed {
        /// Request id and expiry (bound into the ciphertext's context).
        meta: RequestMeta,
        /// Quorum for the key (bound into the ciphertext's context).
        quorum: u8,
        /// Root public key the admins approved importing (bound into the context).
        key_id: KeyId,
        /// The secret, HPKE-sealed to this node.
        sealed: SealedImport,
        /// Admin approvals, of [`crate::approval::Action::ImportWallet`].
        approvals: Vec<Approval>,
    },
    /// Imports a dealer bundle (this cluster's threshold share T_i with its Paillier
    /// material P), sealed to this node and signed by the operating company's dealer
    /// (patent [0070]-[0072]).
    ImportThresholdBundle {
        /// Request id and expiry.
        meta: RequestMeta,
        /// The bundle.
        bundle: ThresholdBundle,
        /// Admin approvals, of [`crate::approval::Action::ImportThresholdKey`].
        approvals: Vec<Approval>,
    },
    /// Lists the threshold shares held.
    ListThresholdKeys,
    /// Opens a threshold signing session in this TEE and returns its first messages
    /// (phase getAB). Every participating TEE receives the same request.
    ThresholdStart {
        /// Request id (with `attempt`, the session id) and expiry.
        meta: RequestMeta,
        /// Attempt number under the same approvals (a retry with other clusters), from 0 up
        /// to [`MAX_THRESHOLD_ATTEMPTS`]` - 1`; each (request id, attempt) runs once.
        attempt: u8,
        /// What to sign and with whom.
        params: ThresholdSignParams,
        /// Admin approvals, of [`crate::approval::Action::ThresholdSign`].
        approvals: Vec<Approval>,
    },
    /// Delivers relayed messages of a running session; returns this TEE's next messages,
    /// and the signature (or the new key) once the session is done. A distributed key
    /// generation also takes an empty feed, to collect what the TEE computed since.
    ThresholdFeed {
        /// The session.
        session: SessionRef,
        /// Messages from other participants, in any order.
        messages: Vec<ThresholdMessage>,
    },
    /// Aborts a session (another participant failed or the cloud server gave up).
    ThresholdAbort {
        /// The session.
        session: SessionRef,
        /// Why, for the log.
        reason: String,
    },
    /// Opens a distributed key generation session in this TEE (one per cluster of the new
    /// key; every participant receives the same request) and returns its first messages
    /// (phase `keygen`). The session runs threshold key generation, then aux-info
    /// generation (phase `auxInfo`, this TEE's Paillier key), and stores this cluster's share
    /// of the new key; its rounds use [`Request::ThresholdFeed`] and [`Request::ThresholdAbort`],
    /// and are answered with [`Response::ThresholdKeygenRound`].
    ThresholdKeygenStart {
        /// Request id (with `attempt`, the session id) and expiry.
        meta: RequestMeta,
        /// Attempt number under the same approvals (see [`Request::ThresholdStart`]).
        attempt: u8,
        /// The key to make and who makes it.
        params: ThresholdKeygenParams,
        /// Admin approvals, of [`crate::approval::Action::CreateThresholdKey`].
        approvals: Vec<Approval>,
    },
    /// Opens a threshold audit session (patent [0086]): like [`Request::ThresholdStart`], but
    /// the session signs `audit_digest(message)` with the root of the threshold key (empty
    /// path) and nothing else, so it needs no admin approvals (the domain-separated digest
    /// can never be a transaction digest). The session is recorded as used before any
    /// message leaves, its execution id is derived under its own domain tag, and its rounds
    /// use [`Request::ThresholdFeed`] and [`Request::ThresholdAbort`] and are answered with
    /// [`Response::ThresholdRound`].
    ThresholdAuditStart {
        /// The session (each one runs once).
        session: SessionRef,
        /// Joint public key.
        key_id: KeyId,
        /// At most [`MAX_AUDIT_MESSAGE`] bytes.
        message: Vec<u8>,
        /// Participants, in signing order (exactly t, distinct share indexes).
        signers: Vec<ThresholdSigner>,
    },
    /// Opens a presignature session for a threshold key without chain code (presignatures
    /// and HD derivation never mix, RUSTSEC-2025-0127). It signs nothing, so it needs no
    /// approvals; its rounds (phase `presign`) use [`Request::ThresholdFeed`] and
    /// [`Request::ThresholdAbort`] and are answered with [`Response::ThresholdPresignRound`].
    /// The finished presignature is sealed and committed before the last answer leaves; it
    /// is never copied to another node.
    ThresholdPresignStart {
        /// The session (each one runs once); its execution id names the presignature.
        session: SessionRef,
        /// Joint public key.
        key_id: KeyId,
        /// Participants, in signing order (exactly t, distinct share indexes).
        signers: Vec<ThresholdSigner>,
    },
    /// Online signing with a stored presignature: the TEE hashes the full `message` itself
    /// (SHA-256), checks the approvals of [`crate::approval::Action::ThresholdSign`] for that
    /// digest (empty path), deletes the presignature and commits the deletion, and only then
    /// returns its partial signature ([`Response::ThresholdPartial`]). A presignature is used
    /// at most once, whatever happens after the commit.
    ThresholdPresignSign {
        /// Request id (with `attempt`, recorded as used) and expiry.
        meta: RequestMeta,
        /// Attempt number under the same approvals.
        attempt: u8,
        /// The presignature and what to sign.
        params: PresignSignParams,
        /// Admin approvals, of [`crate::approval::Action::ThresholdSign`].
        approvals: Vec<Approval>,
    },
    /// Lists the presignatures this TEE holds for a threshold key.
    ListPresignatures {
        /// Joint public key.
        key_id: KeyId,
    },
    /// Applies entries of `cluster`'s governance log (at most
    /// [`crate::governance::MAX_GOV_ENTRIES_PER_APPLY`]): the genesis first when the TEE has
    /// none, entries it holds already are checked to be the same, and the rest are verified
    /// and sealed. Answered with [`Response::Governance`]. Relayed: every entry carries its
    /// governors' approvals, so what travels is public and self-verifying.
    ApplyGovernance {
        /// Cluster whose log it is.
        cluster: String,
        /// Consecutive entries.
        entries: Vec<GovEntry>,
    },
    /// The TEE's view of `cluster`'s governance log, with its entries from version `since` on
    /// (a page of at most [`crate::governance::MAX_GOV_ENTRIES_PER_APPLY`]; 0 for the whole
    /// log from its genesis).
    Governance {
        /// Cluster whose log is asked for.
        cluster: String,
        /// First version whose entry is listed.
        since: u64,
    },
    /// A fresh CSR for the existing device key D, to renew its certificate
    /// ([`Response::DeviceCsr`]); the new certificate goes in with
    /// [`Request::InstallDeviceCert`]. D never changes, so neither does the node's
    /// membership (keyed by D's fingerprint). Refused with [`TeeError::NotProvisioned`]
    /// while no D exists.
    DeviceCsr,
    /// Pins the id of the genesis this node will accept as its cluster's governance log
    /// ([`crate::governance::genesis_id`]), at provisioning, once, before any log is held.
    /// Without a pin the first valid genesis that names the node is adopted.
    PinGenesis {
        /// The genesis id.
        genesis_id: [u8; 32],
    },
    /// Generates a new BIP-32 root seed whose approver group is fixed at creation
    /// ([`crate::approval::Action::CreateGroupWallet`]): only the node named as `executor`
    /// makes it, and only with approvals by `policy.quorum` admins of `policy.group`.
    CreateGroupWallet {
        /// Request id and expiry.
        meta: RequestMeta,
        /// Approver group, quorum and rules of the new key.
        policy: crate::policy::KeyPolicy,
        /// SHA-256 of the executing node's certified device key.
        executor: [u8; 32],
        /// Admin approvals.
        approvals: Vec<Approval>,
    },
    /// Replaces the approver group (policy) of a wallet, approved by a quorum of its
    /// **current** group ([`crate::approval::Action::SetKeyPolicy`]): version +1 over the
    /// current one, whose hash `prev` names (a legacy wallet's current policy is
    /// [`crate::policy::KeyPolicy::legacy`] of its quorum, approved by the cluster's
    /// governors once governed). Answered with [`Response::KeyPolicy`]; the bridge sends it
    /// to every node, so no holder keeps signing under the old group.
    SetKeyPolicy {
        /// Request id and expiry.
        meta: RequestMeta,
        /// The wallet (root public key).
        key_id: KeyId,
        /// [`crate::policy::KeyPolicy::hash`] of the policy replaced.
        prev: [u8; 32],
        /// The new policy.
        policy: crate::policy::KeyPolicy,
        /// Approvals by the current group.
        approvals: Vec<Approval>,
    },
    /// A wallet's current policy and its hash (what a [`Request::SetKeyPolicy`] names as
    /// `prev`). Public facts, no approval needed.
    GetKeyPolicy {
        /// The wallet (root public key).
        key_id: KeyId,
    },
    /// [`Request::ThresholdKeygenStart`] for a key whose approver group is fixed at creation
    /// ([`crate::approval::Action::CreateGroupThresholdKey`]): only the node named in
    /// `executors[i]` runs share i (any other node of that cluster refuses, so a retry there
    /// cannot make a second key), every participant's certificate must certify the device
    /// key named for its share, and the approvals are by `policy.quorum` admins of
    /// `policy.group`. `params.quorum` must equal `policy.quorum`. Answered like the legacy
    /// start, and continued with [`Request::ThresholdFeed`] and [`Request::ThresholdAbort`].
    ThresholdGroupKeygenStart {
        /// Request id (with `attempt`, the session id) and expiry.
        meta: RequestMeta,
        /// Attempt number under the same approvals (see [`Request::ThresholdStart`]).
        attempt: u8,
        /// The key to make and who makes it.
        params: ThresholdKeygenParams,
        /// Approver group, quorum and rules of the new key.
        policy: crate::policy::KeyPolicy,
        /// SHA-256 of the certified device key of the node executing each share, by share
        /// index (one per cluster).
        executors: Vec<[u8; 32]>,
        /// Approvals by the new key's group.
        approvals: Vec<Approval>,
    },
    /// [`Request::ImportWalletSealed`] for a wallet whose approver group is fixed at import
    /// ([`crate::approval::Action::ImportGroupWallet`], approved by `policy.quorum` admins of
    /// `policy.group`); the seed's context binds `policy.quorum` as the quorum.
    ImportGroupWalletSealed {
        /// Request id and expiry (bound into the ciphertext's context).
        meta: RequestMeta,
        /// Approver group, quorum and rules of the imported key.
        policy: crate::policy::KeyPolicy,
        /// Root public key the admins approved importing (bound into the context).
        key_id: KeyId,
        /// The secret, HPKE-sealed to this node.
        sealed: SealedImport,
        /// Approvals by the key's group.
        approvals: Vec<Approval>,
    },
    /// The platform's attestation identity (a TPM's endorsement certificate and attestation
    /// key), which a member needs to make this node's admission ticket.
    AttestationIdentity,
    /// As a member of a governed cluster, issue an admission ticket for a candidate node
    /// ([`crate::governance::AdmissionTicket`]).
    IssueAdmissionTicket {
        /// The candidate's device key fingerprint.
        node_key: [u8; 32],
        /// The candidate's TPM identity (its TEE's [`Request::AttestationIdentity`]), to seal
        /// the nonce to; `None` for platforms without a TPM.
        tpm: Option<crate::governance::TpmIdentity>,
    },
    /// As the candidate, answer an admission ticket with the platform's evidence.
    AdmissionEvidence {
        /// The ticket (and its nonce, unless sealed to this TPM).
        challenge: crate::governance::AdmissionChallenge,
    },
    /// Sign every input of a Bitcoin PSBT (BIP-174, binary) spending the wallet `key_id`: the
    /// TEE parses it, builds its intent and computes each signature hash itself (`custos-tx`),
    /// and signs only if the approvals are for that intent.
    SignPsbt {
        /// Request id and expiry.
        meta: RequestMeta,
        /// Root public key of the wallet.
        key_id: KeyId,
        /// The network its addresses are written for.
        network: BitcoinNetwork,
        /// The PSBT, binary (at most 1 MiB).
        psbt: Vec<u8>,
        /// The intent hash the approvals were made for: a transaction whose intent is
        /// another is refused by name (`intent_mismatch`) before approvals are counted.
        intent_hash: [u8; 32],
        /// Approvals of [`crate::approval::Action::SignTransaction`] for that intent.
        approvals: Vec<Approval>,
    },
    /// The intent of a Bitcoin PSBT spending the wallet `key_id`, as this TEE computes it
    /// (what [`Request::SignPsbt`] would sign, before any approval): for approvers who
    /// cannot derive the wallet's keys below hardened steps themselves. Changes nothing.
    /// `key_id` may also be a threshold key this TEE holds a share of (what
    /// [`Request::ThresholdPsbtStart`] would sign).
    PreviewPsbt {
        /// Root public key of the wallet (or joint key of the threshold key).
        key_id: KeyId,
        /// The network its addresses are written for.
        network: BitcoinNetwork,
        /// The PSBT, binary (at most 1 MiB).
        psbt: Vec<u8>,
    },
    /// Sign an Ethereum transaction, personal message or typed data with the wallet's key at
    /// `path`: the TEE parses it, builds its intent and computes the hash it signs itself
    /// (`custos-tx`), and signs only if the approvals are for that intent.
    SignEthereum {
        /// Request id and expiry.
        meta: RequestMeta,
        /// Root public key of the wallet.
        key_id: KeyId,
        /// BIP-32 path of the signing key (e.g. `m/44'/60'/0'/0/0`; hardened steps allowed).
        path: Vec<u32>,
        /// What is signed.
        payload: EthPayload,
        /// The intent hash the approvals were made for (`intent_mismatch` otherwise).
        intent_hash: [u8; 32],
        /// Approvals of [`crate::approval::Action::SignTransaction`] for that intent.
        approvals: Vec<Approval>,
    },
    /// The intent of an Ethereum payload signed by the wallet's key at `path`, as this TEE
    /// computes it (what [`Request::SignEthereum`] would sign). Changes nothing.
    PreviewEthereum {
        /// Root public key of the wallet.
        key_id: KeyId,
        /// BIP-32 path of the signing key.
        path: Vec<u32>,
        /// What would be signed.
        payload: EthPayload,
    },
    /// Opens the threshold signing session of one input of a Bitcoin PSBT spending the
    /// threshold key `params.key_id` (segwit v0 inputs: ECDSA) and returns its first
    /// messages. Every participating TEE receives the same request and, before it takes
    /// part, parses the PSBT, builds its intent with the key's public derivation, checks the
    /// approvals of that intent and applies the policy sealed with its share (counting the
    /// transaction once per request id, whichever input comes first); the session signs the
    /// signature hash of input `input` it computed itself. The session is
    /// [`crate::threshold::input_session`] of the request id, input and attempt; its rounds
    /// are [`Request::ThresholdFeed`]s answered with [`Response::ThresholdRound`].
    ThresholdPsbtStart {
        /// Request id (the approval's; each input's session id derives from it) and expiry.
        meta: RequestMeta,
        /// Attempt number, as for [`Request::ThresholdStart`].
        attempt: u8,
        /// The input whose signature this session makes.
        input: u16,
        /// The PSBT, what its approvals were for, and the participants.
        params: ThresholdPsbtParams,
        /// Approvals of [`crate::approval::Action::SignTransaction`] for the intent.
        approvals: Vec<Approval>,
    },
}

/// What an Ethereum signature is asked for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum EthPayload {
    /// An unsigned transaction as it is signed: a legacy transaction's EIP-155 signing
    /// payload `rlp([nonce, gasPrice, gas, to, value, data, chainId, 0, 0])`, or an EIP-1559
    /// one's `0x02 || rlp([chainId, nonce, ...])` (at most 128 KiB).
    Transaction(Vec<u8>),
    /// An EIP-191 personal message (`personal_sign`, at most 64 KiB).
    PersonalMessage(Vec<u8>),
    /// EIP-712 typed data, JSON as `eth_signTypedData_v4` takes it (at most 64 KiB).
    TypedData(String),
}

/// A Bitcoin network, as a [`Request::SignPsbt`] names it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum BitcoinNetwork {
    /// Mainnet.
    Bitcoin,
    /// Testnet (3).
    Testnet,
    /// Signet.
    Signet,
    /// Regtest.
    Regtest,
}

impl BitcoinNetwork {
    /// The `bitcoin` crate's network.
    pub fn network(self) -> bitcoin::Network {
        match self {
            BitcoinNetwork::Bitcoin => bitcoin::Network::Bitcoin,
            BitcoinNetwork::Testnet => bitcoin::Network::Testnet,
            BitcoinNetwork::Signet => bitcoin::Network::Signet,
            BitcoinNetwork::Regtest => bitcoin::Network::Regtest,
        }
    }
}

/// Who may send a request to a TEE core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayClass {
    /// May come from outside the node, through the bridge: what travels is public, sealed to
    /// this node (HPKE to its certified D key), or bound to admin approvals the TEE checks.
    Relayed,
    /// Only at the node's own TEE socket: provisioning, TLS signing, key transfers between
    /// nodes (the node server drives them itself) and plaintext wallet imports (their secret
    /// would cross every relay in clear).
    NodeOnly,
}

impl Request {
    /// Whether the bridge may relay this request to a node's TEE. The one list the vault node
    /// server enforces and the bridge routes by, so the two can never drift apart.
    pub fn relay_class(&self) -> RelayClass {
        match self {
            Request::Status
            | Request::ListKeys
            | Request::GetXpub { .. }
            | Request::CreateWallet { .. }
            | Request::ImportWalletSealed { .. }
            | Request::Sign { .. }
            | Request::AuditSign { .. }
            | Request::Attest { .. }
            | Request::DeviceChain
            | Request::ImportThresholdBundle { .. }
            | Request::ListThresholdKeys
            | Request::ThresholdStart { .. }
            | Request::ThresholdPsbtStart { .. }
            | Request::ThresholdKeygenStart { .. }
            | Request::ThresholdAuditStart { .. }
            | Request::ThresholdFeed { .. }
            | Request::ThresholdAbort { .. }
            | Request::ThresholdPresignStart { .. }
            | Request::ThresholdPresignSign { .. }
            | Request::ListPresignatures { .. }
            | Request::ApplyGovernance { .. }
            | Request::CreateGroupWallet { .. }
            | Request::SetKeyPolicy { .. }
            | Request::GetKeyPolicy { .. }
            | Request::ThresholdGroupKeygenStart { .. }
            | Request::ImportGroupWalletSealed { .. }
            | Request::IssueAdmissionTicket { .. }
            | Request::SignPsbt { .. }
            | Request::PreviewPsbt { .. }
            | Request::SignEthereum { .. }
            | Request::PreviewEthereum { .. }
            | Request::Governance { .. } => RelayClass::Relayed,
            Request::PinRoot { .. }
            | Request::GenerateDeviceKey { .. }
            | Request::InstallDeviceCert { .. }
            | Request::DeviceCsr
            | Request::PinGenesis { .. }
            | Request::ImportWallet { .. }
            | Request::SignTls { .. }
            | Request::ExportKeys { .. }
            | Request::ImportKeys { .. }
            | Request::AttestationIdentity
            | Request::AdmissionEvidence { .. } => RelayClass::NodeOnly,
        }
    }
}
