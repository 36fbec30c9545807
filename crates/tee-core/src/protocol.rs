//! Messages between the vault node server (REE) and the TEE core, and their encoding.
//!
//! Encoding is `postcard` (compact, deterministic, no self-describing overhead). Every
//! response travels inside a [`SignedResponse`] signed with the device key D once it exists.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::approval::Approval;
use crate::import::SealedImport;

/// Version of the message schema; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest encoded request the core accepts.
pub const MAX_REQUEST_LEN: usize = 4 * 1024 * 1024;
/// Most approvals one request may carry.
pub const MAX_APPROVALS: usize = 16;
/// Deepest BIP-32 path accepted.
pub const MAX_PATH_DEPTH: usize = 32;
/// Longest audit message (patent [0086]: short enough never to be a transaction digest).
pub const MAX_AUDIT_MESSAGE: usize = 8;

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
    Attestation(crate::platform::Attestation),
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

/// Encodes a request.
pub fn encode_request(req: &Request) -> Vec<u8> {
    postcard::to_allocvec(req).expect("requests always serialize")
}

/// Decodes a request, enforcing the size limit and that nothing trails it.
pub fn decode_request(bytes: &[u8]) -> Result<Request, TeeError> {
    if bytes.len() > MAX_REQUEST_LEN {
        return Err(TeeError::InvalidRequest(format!(
            "{} bytes exceeds the {MAX_REQUEST_LEN}-byte limit",
            bytes.len()
        )));
    }
    let (req, rest) = postcard::take_from_bytes::<Request>(bytes)
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
