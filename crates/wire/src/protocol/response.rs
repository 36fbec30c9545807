//! The answers of a TEE core and the public facts they carry.

use serde::{Deserialize, Serialize};

// One module split in files: every protocol type is in scope, for the code and the doc links.
use super::*;

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
    /// The TEE's view of a cluster's governance log.
    Governance(GovView),
    /// The genesis id this node now accepts ([`Request::PinGenesis`]).
    GenesisPinned {
        /// The pinned id.
        genesis_id: [u8; 32],
    },
    /// A wallet's policy (now in force, after a [`Request::SetKeyPolicy`]), and its hash.
    KeyPolicy {
        /// The wallet.
        key_id: KeyId,
        /// Its policy ([`crate::policy::KeyPolicy::legacy`] for a wallet sealed before
        /// policies existed).
        policy: crate::policy::KeyPolicy,
        /// [`crate::policy::KeyPolicy::hash`] of `policy`.
        hash: [u8; 32],
    },
    /// The platform's TPM identity ([`Request::AttestationIdentity`]; `None`: no TPM).
    AttestationIdentity(Option<crate::governance::TpmIdentity>),
    /// A signed admission ticket ([`Request::IssueAdmissionTicket`]).
    AdmissionChallenge(crate::governance::AdmissionChallenge),
    /// The candidate's evidence for its `Admit` entry ([`Request::AdmissionEvidence`]).
    AdmissionEvidence(crate::governance::Evidence),
    /// A PSBT with every input signed ([`Request::SignPsbt`]).
    SignedPsbt {
        /// The PSBT, binary, with `partial_sigs` (segwit v0) and `tap_key_sig` (taproot) set.
        psbt: Vec<u8>,
        /// The hash of the intent signed.
        intent_hash: [u8; 32],
    },
    /// A transaction's intent ([`Request::PreviewPsbt`]).
    TransactionIntent {
        /// Its hash (what approvals sign).
        intent_hash: [u8; 32],
        /// The intent, JSON (`custos_tx::Intent`): whoever shows it checks that it hashes to
        /// `intent_hash`.
        intent_json: Vec<u8>,
    },
    /// An Ethereum signature ([`Request::SignEthereum`]).
    SignedEthereum {
        /// `r || s || v`, `v` 27 or 28 (as `personal_sign` and `eth_signTypedData` answer;
        /// the raw transaction carries its own `v`).
        signature: Vec<u8>,
        /// The signed transaction, EIP-2718 encoded (ready for `eth_sendRawTransaction`);
        /// `None` for a message or typed data.
        raw_transaction: Option<Vec<u8>>,
        /// The hash of the intent signed.
        intent_hash: [u8; 32],
    },
}
