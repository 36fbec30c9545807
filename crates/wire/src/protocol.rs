//! Messages between the vault node server (REE) and the TEE core, and their encoding.
//!
//! Encoding is `postcard` (compact, deterministic, no self-describing overhead); an encoded
//! request starts with [`PROTOCOL_VERSION`], and the same byte is the version of every frame on
//! the TEE socket, so a peer of another version is refused by name
//! ([`TeeError::UnsupportedProtocol`], [`crate::frame::RefusalCode::UnsupportedVersion`]) rather
//! than misread. Golden vectors (`tests/golden.rs`) pin the encoding of every variant. Every
//! response travels inside a [`SignedResponse`] signed with the device key D once it exists.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::approval::Approval;
use crate::import::SealedImport;

/// Version of the message schema; bumped on any incompatible change (a reordered, removed or
/// changed variant or field). Version 2: requests carry it as their first byte.
pub const PROTOCOL_VERSION: u8 = 2;
/// Largest encoded request the core accepts.
pub const MAX_REQUEST_LEN: usize = 4 * 1024 * 1024;
/// Most approvals one request may carry.
pub const MAX_APPROVALS: usize = 16;
/// Deepest BIP-32 path accepted.
pub const MAX_PATH_DEPTH: usize = 32;
/// Largest quorum of a key: distinct admins, each with one approval on the request.
pub const MAX_QUORUM: u8 = MAX_APPROVALS as u8;
/// Bit 31 of a BIP-32 index: a hardened step.
pub const HARDENED: u32 = 1 << 31;
/// Longest audit message (patent [0086]: short enough never to be a transaction digest).
pub const MAX_AUDIT_MESSAGE: usize = 8;
/// Most keys in one key transfer (keeps an import request under the frame limit).
pub const MAX_TRANSFER_KEYS: usize = 20_000;

/// 33-byte compressed secp256k1 public key of a wallet's root key m: the wallet's id.
pub type KeyId = Vec<u8>;

/// Secret bytes crossing into the TEE (seed import). Zeroized on drop, never printed.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretBytes(pub Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([redacted; {} bytes])", self.0.len())
    }
}

/// Secret text crossing into the TEE (BIP-39 mnemonic). Zeroized on drop, never printed.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([redacted])")
    }
}

/// What a wallet import brings in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ImportSecret {
    /// BIP-39 mnemonic (English word list) with optional passphrase.
    Mnemonic {
        /// The words.
        phrase: SecretString,
        /// BIP-39 passphrase ("" if none).
        passphrase: SecretString,
    },
    /// A raw BIP-32 seed of 16 to 64 bytes.
    Seed(SecretBytes),
}

/// Fields every approved request carries.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestMeta {
    /// Unique id chosen by the requester (the cloud server).
    pub request_id: [u8; 16],
    /// Unix time after which the approvals are void.
    pub expires_at: u64,
}

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
            | Request::ThresholdKeygenStart { .. }
            | Request::ThresholdAuditStart { .. }
            | Request::ThresholdFeed { .. }
            | Request::ThresholdAbort { .. }
            | Request::ThresholdPresignStart { .. }
            | Request::ThresholdPresignSign { .. }
            | Request::ListPresignatures { .. } => RelayClass::Relayed,
            Request::PinRoot { .. }
            | Request::GenerateDeviceKey { .. }
            | Request::InstallDeviceCert { .. }
            | Request::ImportWallet { .. }
            | Request::SignTls { .. }
            | Request::ExportKeys { .. }
            | Request::ImportKeys { .. } => RelayClass::NodeOnly,
        }
    }
}

/// What an online signing uses and signs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresignSignParams {
    /// Joint public key (no chain code).
    pub key_id: KeyId,
    /// The presignature (its execution id).
    pub presignature: [u8; 32],
    /// The full message, at most [`MAX_PRESIGN_MESSAGE`] bytes; the TEE signs SHA-256 of it.
    pub message: Vec<u8>,
}

/// Longest message signed with a presignature.
pub const MAX_PRESIGN_MESSAGE: usize = 64 * 1024;
/// Most presignatures a TEE holds (and generates at once) for one key.
pub const MAX_PRESIGNATURES_PER_KEY: usize = 256;

/// A presignature this TEE finished and stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresignatureInfo {
    /// Its id (the session's execution id, the same at every signer).
    pub id: [u8; 32],
    /// Joint public key.
    pub key_id: KeyId,
    /// Share indexes of its signers, in signing order.
    pub signers: Vec<u16>,
}

/// What a distributed key generation makes, and who takes part.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThresholdKeygenParams {
    /// Signers the new key needs (t, 2 ≤ t ≤ n).
    pub threshold: u16,
    /// Whether the key gets a chain code (BIP-32 derivation of non-hardened children).
    pub hd: bool,
    /// Cluster holding each share, by share index (n entries, distinct).
    pub clusters: Vec<String>,
    /// Distinct admins required to use the new key (and to create it).
    pub quorum: u8,
    /// The node running the session for each cluster, in share-index order: entry i has
    /// `share_index` i and the certificate chain of a node of `clusters[i]`.
    pub participants: Vec<ThresholdSigner>,
}

/// Most attempts one approved threshold request may make.
pub const MAX_THRESHOLD_ATTEMPTS: u8 = 8;
/// Most messages in one [`Request::ThresholdFeed`].
pub const MAX_THRESHOLD_MESSAGES: usize = 64;
/// Largest payload of one [`ThresholdMessage`] (aux-info rounds are about 220 KB).
pub const MAX_THRESHOLD_PAYLOAD: usize = 1024 * 1024;

/// A threshold session: the approved request and the attempt under it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionRef {
    /// Request id of the approved request.
    pub request_id: [u8; 16],
    /// Attempt number.
    pub attempt: u8,
}

/// Public facts about a threshold key, as every share holder knows them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThresholdKeyInfo {
    /// Joint public key (compressed, 33 bytes): the key's id.
    pub key_id: KeyId,
    /// BIP-32 chain code when HD derivation is enabled (required for signing with a path;
    /// presignatures are refused for such keys).
    pub chain_code: Option<[u8; 32]>,
    /// Signers needed (t).
    pub threshold: u16,
    /// Cluster holding each share, by share index (n entries).
    pub clusters: Vec<String>,
    /// Distinct admins required to use the key.
    pub quorum: u8,
    /// How the key came to be.
    pub origin: ThresholdOrigin,
    /// Index of the share this node holds.
    pub share_index: u16,
}

/// How a threshold key was created.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ThresholdOrigin {
    /// Dealt by the operating company's dealer program.
    Dealer,
    /// Generated jointly by the clusters (no dealer ever held the key).
    Dkg,
}

/// One cluster's share of a dealt threshold key, sealed to a node and signed by the dealer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThresholdBundle {
    /// Public facts of the key; `share_index` is the share sealed inside.
    pub key: ThresholdKeyInfo,
    /// SHA-256 of the recipient node's device certificate.
    pub recipient_fingerprint: [u8; 32],
    /// The dealer's certificate (DER), issued by the Admin CA with the dealer role.
    pub dealer_cert: Vec<u8>,
    /// The Admin CA certificate (DER).
    pub dealer_ca: Vec<u8>,
    /// HPKE encapsulated key.
    pub enc: Vec<u8>,
    /// HPKE ciphertext of the share (T_i and P).
    pub ciphertext: Vec<u8>,
    /// The dealer's ECDSA P-256 signature (DER) over the bundle transcript.
    pub signature: Vec<u8>,
}

/// One participant of a threshold session (signing or distributed key generation).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThresholdSigner {
    /// Share index the participant holds.
    pub share_index: u16,
    /// Certificate chain of the node that runs the session for that cluster.
    pub chain: CertChain,
}

/// What a threshold session signs, and who takes part (in signing order).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThresholdSignParams {
    /// Joint public key.
    pub key_id: KeyId,
    /// Non-hardened BIP-32 path of the child key.
    pub path: Vec<u32>,
    /// Digest to sign.
    pub digest: [u8; 32],
    /// Participants, in signing order (exactly t, distinct share indexes).
    pub signers: Vec<ThresholdSigner>,
}

/// A protocol message between the TEEs of a session, relayed by the cloud server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThresholdMessage {
    /// Session.
    pub session: SessionRef,
    /// Sender's position in the signer list.
    pub sender: u16,
    /// Recipient's position, or `None` for a broadcast.
    pub recipient: Option<u16>,
    /// Phase: the patent's getAB, getAB_and_R, getR, getSig for signing; keygen and
    /// auxInfo for distributed key generation.
    pub phase: String,
    /// Protocol round.
    pub round: u16,
    /// HPKE encapsulated key (point-to-point messages; empty for broadcasts).
    pub enc: Vec<u8>,
    /// The message: plaintext for a broadcast, HPKE ciphertext sealed to the recipient's D
    /// key for a point-to-point message.
    pub payload: Vec<u8>,
    /// Sender's D signature (DER) over the message transcript.
    pub signature: Vec<u8>,
}

/// A cluster member's certificate chain (DER): device, Cluster CA, Device CA.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CertChain {
    /// Device certificate.
    pub device: Vec<u8>,
    /// Cluster CA certificate.
    pub cluster_ca: Vec<u8>,
    /// Device CA certificate.
    pub device_ca: Vec<u8>,
}

impl From<CertChain> for custos_pki::DeviceChain {
    fn from(c: CertChain) -> Self {
        custos_pki::DeviceChain {
            device: c.device,
            cluster_ca: c.cluster_ca,
            device_ca: c.device_ca,
        }
    }
}

impl From<custos_pki::DeviceChain> for CertChain {
    fn from(c: custos_pki::DeviceChain) -> Self {
        CertChain {
            device: c.device,
            cluster_ca: c.cluster_ca,
            device_ca: c.device_ca,
        }
    }
}

/// A batch of wallets sealed by one node's TEE to another node's device key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyTransfer {
    /// Cluster of both nodes.
    pub cluster: String,
    /// Sender's certificate chain.
    pub sender: CertChain,
    /// SHA-256 of the recipient's device certificate.
    pub recipient_fingerprint: [u8; 32],
    /// Wallets carried, in order.
    pub key_ids: Vec<KeyId>,
    /// HPKE encapsulated key.
    pub enc: Vec<u8>,
    /// HPKE ciphertext of the wallet records.
    pub ciphertext: Vec<u8>,
    /// Sender's D signature (DER) over the transfer transcript.
    pub signature: Vec<u8>,
}

/// Where a wallet came from.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Origin {
    /// Generated inside this cluster's TEE.
    Generated,
    /// Imported from a mnemonic or seed.
    Imported,
}

/// Public facts about a wallet.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyInfo {
    /// Root public key m (compressed, 33 bytes).
    pub key_id: KeyId,
    /// Root extended public key (`xpub...`).
    pub xpub: String,
    /// Distinct admins required.
    pub quorum: u8,
    /// Origin.
    pub origin: Origin,
}

/// Provisioning state of the node's device identity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Cluster.
    pub cluster: String,
    /// Node name.
    pub node: String,
    /// D public key, SEC1 uncompressed.
    pub public_key: Vec<u8>,
    /// SHA-256 of the installed device certificate, if installed.
    pub cert_fingerprint: Option<[u8; 32]>,
}

/// Answer to [`Request::Status`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// Message schema version.
    pub protocol_version: u16,
    /// Backend name.
    pub platform: String,
    /// SHA-256 of the pinned Root CA certificate.
    pub root_fingerprint: Option<[u8; 32]>,
    /// Device identity, once D exists.
    pub device: Option<DeviceInfo>,
    /// Number of wallets held.
    pub wallets: u32,
    /// Sealed records that failed to open: (record, reason). Never used.
    pub corrupt_records: Vec<(String, String)>,
}

/// An attestation document binding `user_data` to the platform's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// Which backend produced it (`software`, `nitro`, `sgx-dcap`, ...).
    pub platform: String,
    /// Backend-specific document (a COSE_Sign1 for Nitro, a quote for SGX, ...).
    pub document: Vec<u8>,
}

/// A secp256k1 ECDSA signature with recovery id.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EcdsaSignature {
    /// r (big-endian).
    pub r: [u8; 32],
    /// s (big-endian, low-s).
    pub s: [u8; 32],
    /// Recovery id (0 or 1).
    pub v: u8,
    /// Public key that signed (compressed, 33 bytes).
    pub public_key: Vec<u8>,
}

/// A successful answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Response {
    /// State.
    Status(Status),
    /// Root pinned.
    RootPinned {
        /// SHA-256 of the pinned certificate.
        fingerprint: [u8; 32],
    },
    /// CSR for the new device key.
    DeviceCsr {
        /// PKCS#10 request, DER.
        csr: Vec<u8>,
        /// D public key, SEC1 uncompressed.
        public_key: Vec<u8>,
    },
    /// Device certificate installed.
    DeviceCertInstalled(DeviceInfo),
    /// A wallet was created or imported.
    Wallet(KeyInfo),
    /// Wallet list.
    Keys(Vec<KeyInfo>),
    /// Extended public key at a path.
    Xpub {
        /// `xpub...` string.
        xpub: String,
        /// The child public key (compressed).
        public_key: Vec<u8>,
    },
    /// A transaction signature.
    Signature(EcdsaSignature),
    /// An audit signature over `audit_digest(message)` with the root key m.
    AuditSignature(EcdsaSignature),
    /// Attestation.
    Attestation(Attestation),
    /// The device certificate chain.
    DeviceChain(CertChain),
    /// A TLS CertificateVerify signature (DER).
    TlsSignature(Vec<u8>),
    /// Sealed wallets for another node.
    KeyTransfer(KeyTransfer),
    /// Result of an import.
    KeysImported {
        /// Wallets newly stored.
        imported: Vec<KeyId>,
        /// Wallets of the transfer this node already held.
        already_held: u32,
    },
    /// A threshold share was imported.
    ThresholdKey(ThresholdKeyInfo),
    /// Threshold shares held.
    ThresholdKeys(Vec<ThresholdKeyInfo>),
    /// A session advanced: messages to relay, and the signature once done.
    ThresholdRound {
        /// The session.
        session: SessionRef,
        /// Patent phase the session is in now.
        phase: String,
        /// Messages for the other participants.
        outgoing: Vec<ThresholdMessage>,
        /// The signature (for the child key of the approved path), when the session is done.
        signature: Option<EcdsaSignature>,
    },
    /// A session was aborted (or was not running).
    ThresholdAborted(SessionRef),
    /// A distributed key generation advanced: messages to relay, and this cluster's new key
    /// once its share is stored.
    ThresholdKeygenRound {
        /// The session.
        session: SessionRef,
        /// Phase the session is in now (`keygen`, `auxInfo`).
        phase: String,
        /// Messages for the other participants.
        outgoing: Vec<ThresholdMessage>,
        /// The TEE is still computing on messages already delivered (aux-info steps take
        /// seconds): call again with [`Request::ThresholdFeed`], with no messages if none are
        /// waiting, to collect what it produces.
        computing: bool,
        /// The new key's public facts (`share_index` is this cluster's), once the share is
        /// sealed and stored; `origin` is [`ThresholdOrigin::Dkg`].
        key: Option<ThresholdKeyInfo>,
    },
    /// A presignature session advanced: messages to relay, and the presignature once it is
    /// sealed and committed.
    ThresholdPresignRound {
        /// The session.
        session: SessionRef,
        /// Phase the session is in now (`presign`).
        phase: String,
        /// Messages for the other participants.
        outgoing: Vec<ThresholdMessage>,
        /// The stored presignature, when the session is done.
        presignature: Option<PresignatureInfo>,
    },
    /// This signer's partial signature (patent phase getSig) from a presignature that is
    /// now deleted durably.
    ThresholdPartial {
        /// The presignature used.
        presignature: [u8; 32],
        /// This signer's position among the presignature's signers.
        position: u16,
        /// σ, big-endian.
        sigma: [u8; 32],
        /// The presignature's public data (JSON, `custos_threshold::PresignaturePublic`),
        /// which the combiner checks every partial against.
        public: Vec<u8>,
    },
    /// Presignatures held for a key.
    Presignatures(Vec<PresignatureInfo>),
}

/// Why an approval was not accepted.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ApprovalFault {
    /// The certificate does not chain to the pinned Root through the Admin CA.
    UntrustedCertificate,
    /// The certificate is expired or not yet valid.
    CertificateNotValidNow,
    /// The signature does not cover this exact request.
    BadSignature,
    /// Unparsable certificate or signature.
    Malformed,
}

/// A refusal: typed, and specific about what was wrong.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
pub enum TeeError {
    /// The request could not be decoded or violates a limit.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A provisioning step is missing.
    #[error("not provisioned: {0}")]
    NotProvisioned(String),
    /// The Root CA is already pinned and can never be replaced.
    #[error("a Root CA is already pinned and cannot be replaced")]
    RootAlreadyPinned,
    /// The offered Root CA certificate is not acceptable.
    #[error("root certificate rejected: {0}")]
    RootRejected(String),
    /// A device key D already exists.
    #[error("the device key already exists")]
    DeviceKeyExists,
    /// The device certificate chain did not verify.
    #[error("device certificate rejected: {0}")]
    DeviceCertRejected(String),
    /// The device certificate is for another cluster.
    #[error("device certificate is for cluster {found:?}, this node belongs to {expected:?}")]
    DeviceCertWrongCluster {
        /// Cluster of this node.
        expected: String,
        /// Cluster of the certificate.
        found: String,
    },
    /// The device certificate certifies another key than D.
    #[error("device certificate does not carry this node's device key")]
    DeviceCertWrongKey,
    /// No approval was attached.
    #[error("the request carries no admin approval")]
    ApprovalMissing,
    /// One approval failed.
    #[error("approval #{index} rejected ({fault:?}): {detail}")]
    ApprovalRejected {
        /// Position in the request's approval list.
        index: u32,
        /// Category.
        fault: ApprovalFault,
        /// Verifier message.
        detail: String,
    },
    /// Fewer distinct admins approved than the key requires.
    #[error("quorum not met: {required} distinct admins required, {approved} approved")]
    QuorumNotMet {
        /// Required.
        required: u8,
        /// Distinct valid approvers.
        approved: u8,
    },
    /// The approvals' validity window has passed.
    #[error("request expired at {expires_at} (now {now})")]
    RequestExpired {
        /// Expiry.
        expires_at: u64,
        /// Platform time.
        now: u64,
    },
    /// This create request id was already used: one approval creates one wallet.
    #[error("request {0} was already executed; a new request needs new approvals")]
    RequestReplayed(String),
    /// No such wallet.
    #[error("unknown key {0}")]
    UnknownKey(String),
    /// The wallet exists already.
    #[error("key {0} already exists")]
    KeyExists(String),
    /// The wallet's sealed record failed to open; it is never used.
    #[error("sealed record of key {key} is corrupt: {reason}")]
    KeyRecordCorrupt {
        /// Key id (hex).
        key: String,
        /// What failed.
        reason: String,
    },
    /// Imported secret does not match the approved key id, or is malformed.
    #[error("import rejected: {0}")]
    ImportRejected(String),
    /// Audit message over the limit.
    #[error("audit message is {len} bytes, at most {max} allowed")]
    AuditMessageTooLong {
        /// Length offered.
        len: u32,
        /// Limit.
        max: u32,
    },
    /// A BIP-32 path that cannot be used.
    #[error("invalid BIP-32 path: {0}")]
    InvalidPath(String),
    /// A key transfer (export or import) was refused.
    #[error("key transfer rejected: {0}")]
    TransferRejected(String),
    /// The requester's certificate does not entitle it to this cluster's keys.
    #[error("requester certificate rejected: {0}")]
    RequesterRejected(String),
    /// Only TLS 1.3 CertificateVerify messages are signed for TLS.
    #[error("refused to sign: not a TLS 1.3 CertificateVerify message")]
    TlsSignRefused,
    /// The sealed storage failed; this request's writes were discarded.
    #[error("sealed storage failure: {0}")]
    Storage(String),
    /// A sealed import does not open here: sealed to another node, for another request
    /// context, altered, or oversized.
    #[error("sealed import rejected: {0}")]
    SealedImportRejected(String),
    /// A dealer bundle or threshold request was refused.
    #[error("threshold request rejected: {0}")]
    ThresholdRejected(String),
    /// No such session (never started here, finished, aborted or expired).
    #[error("unknown threshold session {0}")]
    UnknownSession(String),
    /// The session was aborted; `blamed` names the clusters at fault when known.
    #[error("threshold session {session} aborted in {phase}: {detail} (blamed: {blamed:?})")]
    ThresholdAborted {
        /// Session (hex request id / attempt).
        session: String,
        /// Clusters at fault, if identified.
        blamed: Vec<String>,
        /// Phase reached.
        phase: String,
        /// What happened.
        detail: String,
    },
    /// No Paillier primes are ready for a distributed key generation in this TEE. Nothing
    /// was started or consumed; retry later (safe-prime generation takes minutes).
    #[error("no Paillier primes ready: {0}")]
    PrimesNotReady(String),
    /// This TEE holds no such presignature: never made here, or already used (each is used
    /// once, and deleted before its partial signature leaves).
    #[error("no presignature {0} here (never made here, or already used)")]
    UnknownPresignature(String),
    /// The request was encoded for another version of this protocol.
    #[error("request of protocol version {found}, this TEE speaks version {supported}")]
    UnsupportedProtocol {
        /// Version the request carries.
        found: u8,
        /// Version this side speaks.
        supported: u8,
    },
}

impl TeeError {
    /// Stable snake_case code of the refusal (its kind, independent of the message): what the
    /// history records and, prefixed with `tee_`, what the REST API reports.
    pub fn code(&self) -> &'static str {
        match self {
            TeeError::InvalidRequest(_) => "invalid_request",
            TeeError::NotProvisioned(_) => "not_provisioned",
            TeeError::RootAlreadyPinned => "root_already_pinned",
            TeeError::RootRejected(_) => "root_rejected",
            TeeError::DeviceKeyExists => "device_key_exists",
            TeeError::DeviceCertRejected(_) => "device_cert_rejected",
            TeeError::DeviceCertWrongCluster { .. } => "device_cert_wrong_cluster",
            TeeError::DeviceCertWrongKey => "device_cert_wrong_key",
            TeeError::ApprovalMissing => "approval_missing",
            TeeError::ApprovalRejected { .. } => "approval_rejected",
            TeeError::QuorumNotMet { .. } => "quorum_not_met",
            TeeError::RequestExpired { .. } => "request_expired",
            TeeError::RequestReplayed(_) => "request_replayed",
            TeeError::UnknownKey(_) => "unknown_key",
            TeeError::KeyExists(_) => "key_exists",
            TeeError::KeyRecordCorrupt { .. } => "key_record_corrupt",
            TeeError::ImportRejected(_) => "import_rejected",
            TeeError::AuditMessageTooLong { .. } => "audit_message_too_long",
            TeeError::InvalidPath(_) => "invalid_path",
            TeeError::TransferRejected(_) => "transfer_rejected",
            TeeError::RequesterRejected(_) => "requester_rejected",
            TeeError::TlsSignRefused => "tls_sign_refused",
            TeeError::Storage(_) => "storage",
            TeeError::SealedImportRejected(_) => "sealed_import_rejected",
            TeeError::ThresholdRejected(_) => "threshold_rejected",
            TeeError::UnknownSession(_) => "unknown_session",
            TeeError::ThresholdAborted { .. } => "threshold_aborted",
            TeeError::PrimesNotReady(_) => "primes_not_ready",
            TeeError::UnknownPresignature(_) => "unknown_presignature",
            TeeError::UnsupportedProtocol { .. } => "unsupported_protocol",
        }
    }
}

/// The body of a response: success or typed refusal.
pub type Outcome = Result<Response, TeeError>;

/// What crosses the boundary back to the node server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedResponse {
    /// `postcard` encoding of an [`Outcome`].
    pub body: Vec<u8>,
    /// D's ECDSA P-256 signature (DER) over [`response_transcript`], once D exists.
    pub signature: Option<Vec<u8>>,
}

/// Domain tag of response signatures.
pub const RESPONSE_DOMAIN: &[u8] = b"CUSTOS-TEE-RESPONSE-V1\0";

/// What D signs for a response: the domain, SHA-256 of the exact request bytes (so a
/// response cannot be replayed for another request) and the response body.
pub fn response_transcript(request: &[u8], body: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut t = Vec::with_capacity(RESPONSE_DOMAIN.len() + 32 + body.len());
    t.extend_from_slice(RESPONSE_DOMAIN);
    t.extend_from_slice(&Sha256::digest(request));
    t.extend_from_slice(body);
    t
}

/// Domain tag of audit messages.
pub const AUDIT_DOMAIN: &[u8] = b"CUSTOS-AUDIT-V1\0";

/// The digest an audit signature covers: domain-separated, so an audit can never produce a
/// signature over a transaction digest.
pub fn audit_digest(message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(AUDIT_DOMAIN);
    h.update([message.len() as u8]);
    h.update(message);
    h.finalize().into()
}

/// The canonical text of a BIP-32 path: `m/44'/0'/0'/0/1` (`'` for hardened steps), as logs,
/// the history and the REST API show it.
pub fn format_path(path: &[u32]) -> String {
    let mut s = String::from("m");
    for &i in path {
        if i & HARDENED != 0 {
            s.push_str(&format!("/{}'", i & !HARDENED));
        } else {
            s.push_str(&format!("/{i}"));
        }
    }
    s
}

/// Encodes a request: [`PROTOCOL_VERSION`], then the `postcard` encoding of `req`.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut out = vec![PROTOCOL_VERSION];
    postcard::to_io(req, &mut out).expect("requests always serialize");
    out
}

/// Decodes a request, enforcing the size limit, the protocol version and that nothing trails
/// it.
pub fn decode_request(bytes: &[u8]) -> Result<Request, TeeError> {
    if bytes.len() > MAX_REQUEST_LEN {
        return Err(TeeError::InvalidRequest(format!(
            "{} bytes exceeds the {MAX_REQUEST_LEN}-byte limit",
            bytes.len()
        )));
    }
    let Some((&version, body)) = bytes.split_first() else {
        return Err(TeeError::InvalidRequest("empty request".into()));
    };
    if version != PROTOCOL_VERSION {
        return Err(TeeError::UnsupportedProtocol {
            found: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let (req, rest) = postcard::take_from_bytes::<Request>(body)
        .map_err(|e| TeeError::InvalidRequest(format!("undecodable request: {e}")))?;
    if !rest.is_empty() {
        return Err(TeeError::InvalidRequest(format!(
            "{} trailing bytes after request",
            rest.len()
        )));
    }
    Ok(req)
}

pub use custos_pki::tls::is_tls13_certificate_verify_message;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::SealedImport;

    fn relayable(r: &Request) -> bool {
        r.relay_class() == RelayClass::Relayed
    }

    #[test]
    fn sealed_imports_are_relayed_plaintext_imports_are_not() {
        let meta = RequestMeta {
            request_id: [1; 16],
            expires_at: 0,
        };
        assert!(relayable(&Request::ImportWalletSealed {
            meta: meta.clone(),
            quorum: 1,
            key_id: vec![2; 33],
            sealed: SealedImport {
                enc: vec![4; 65],
                ciphertext: vec![0; 64],
            },
            approvals: Vec::new(),
        }));
        assert!(relayable(&Request::ThresholdKeygenStart {
            meta: meta.clone(),
            attempt: 0,
            params: ThresholdKeygenParams {
                threshold: 2,
                hd: true,
                clusters: vec!["dc1".into(), "dc2".into()],
                quorum: 1,
                participants: Vec::new(),
            },
            approvals: Vec::new(),
        }));
        assert!(!relayable(&Request::ImportWallet {
            meta,
            quorum: 1,
            key_id: vec![2; 33],
            secret: ImportSecret::Seed(SecretBytes(vec![0; 32])),
            approvals: Vec::new(),
        }));
    }

    #[test]
    fn provisioning_tls_and_transfers_stay_on_the_node() {
        for r in [
            Request::PinRoot { root_cert: vec![] },
            Request::SignTls { message: vec![] },
            Request::ExportKeys {
                requester: CertChain::default(),
                key_ids: vec![],
            },
        ] {
            assert_eq!(r.relay_class(), RelayClass::NodeOnly, "{r:?}");
        }
    }

    #[test]
    fn error_codes_are_stable_snake_case() {
        let samples = [
            TeeError::InvalidRequest(String::new()),
            TeeError::ApprovalMissing,
            TeeError::QuorumNotMet {
                required: 2,
                approved: 1,
            },
            TeeError::UnknownKey(String::new()),
            TeeError::UnsupportedProtocol {
                found: 1,
                supported: PROTOCOL_VERSION,
            },
        ];
        let codes: Vec<&str> = samples.iter().map(TeeError::code).collect();
        assert_eq!(
            codes,
            [
                "invalid_request",
                "approval_missing",
                "quorum_not_met",
                "unknown_key",
                "unsupported_protocol"
            ]
        );
    }

    #[test]
    fn requests_carry_the_protocol_version_first() {
        let bytes = encode_request(&Request::Status);
        assert_eq!(bytes[0], PROTOCOL_VERSION);
        assert_eq!(decode_request(&bytes), Ok(Request::Status));
        assert!(matches!(
            decode_request(&[]),
            Err(TeeError::InvalidRequest(_))
        ));
        let mut other = bytes.clone();
        other[0] = PROTOCOL_VERSION + 1;
        assert_eq!(
            decode_request(&other),
            Err(TeeError::UnsupportedProtocol {
                found: PROTOCOL_VERSION + 1,
                supported: PROTOCOL_VERSION
            })
        );
    }
}
