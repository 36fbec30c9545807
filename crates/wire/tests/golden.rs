//! Golden vectors of the wire encoding: one sample of every request, response and refusal
//! kind, and of every approval message, with its exact bytes (`tests/golden/wire.txt`).
//!
//! A reordered variant, a changed field or a new encoding fails here; if the change is
//! meant, bump `PROTOCOL_VERSION` and rewrite the file with `CUSTOS_BLESS_GOLDEN=1 cargo test
//! -p custos-wire --test golden`. A variant without a sample fails too (the samples' variant
//! indexes must be exactly 0..n and index n must be unknown to the decoder).

use std::collections::BTreeMap;

use custos_wire::approval::{Action, Approval, PasskeyAssertion, THRESHOLD_SCOPE};
use custos_wire::governance::{
    admission_binding, entry_hash, genesis_id, nonce_hash, AdmissionChallenge, AdmissionEvidence,
    AdmissionTicket, Evidence, GovChange, GovEntry, MeasurementPolicy, MemberRecord,
    NitroMeasurement, SignedTicket, SnpMeasurement, TdxMeasurement, TicketCredential, TpmIdentity,
    TpmMeasurement, EVIDENCE_ADMISSION_V1,
};
use custos_wire::import::SealedImport;
use custos_wire::policy::{KeyPolicy, Rule, RULE_CLUSTER_ANCHORS};
use custos_wire::protocol::*;
use serde::Serialize;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/wire.txt");

fn meta() -> RequestMeta {
    RequestMeta {
        request_id: [0x11; 16],
        expires_at: 1_800_000_000,
    }
}

fn approval() -> Approval {
    Approval {
        admin_cert: vec![0xa1; 3],
        admin_ca: vec![0xa2; 2],
        signature: vec![0xa3; 4],
        webauthn: None,
    }
}

fn chain() -> CertChain {
    CertChain {
        device: vec![0xd1; 2],
        cluster_ca: vec![0xd2],
        device_ca: vec![0xd3],
    }
}

fn session() -> SessionRef {
    SessionRef {
        request_id: [0x22; 16],
        attempt: 1,
    }
}

fn signer(i: u16) -> ThresholdSigner {
    ThresholdSigner {
        share_index: i,
        chain: chain(),
    }
}

fn key_info() -> ThresholdKeyInfo {
    ThresholdKeyInfo {
        key_id: vec![0x02; 33],
        chain_code: Some([0x33; 32]),
        threshold: 2,
        clusters: vec!["dc1".into(), "dc2".into(), "dc3".into()],
        quorum: 2,
        origin: ThresholdOrigin::Dealer,
        share_index: 1,
    }
}

fn message() -> ThresholdMessage {
    ThresholdMessage {
        session: session(),
        sender: 0,
        recipient: Some(1),
        phase: "getAB".into(),
        round: 1,
        enc: vec![0x44; 2],
        payload: vec![0x45; 3],
        signature: vec![0x46; 2],
    }
}

fn wallet() -> KeyInfo {
    KeyInfo {
        key_id: vec![0x03; 33],
        xpub: "xpub-sample".into(),
        quorum: 1,
        origin: Origin::Generated,
    }
}

fn signature() -> EcdsaSignature {
    EcdsaSignature {
        r: [0x55; 32],
        s: [0x56; 32],
        v: 1,
        public_key: vec![0x02; 33],
    }
}

fn transfer() -> KeyTransfer {
    KeyTransfer {
        cluster: "dc1".into(),
        sender: chain(),
        recipient_fingerprint: [0x66; 32],
        key_ids: vec![vec![0x03; 33]],
        enc: vec![0x67; 2],
        ciphertext: vec![0x68; 3],
        signature: vec![0x69; 2],
    }
}

fn device() -> DeviceInfo {
    DeviceInfo {
        cluster: "dc1".into(),
        node: "node1".into(),
        public_key: vec![0x04; 65],
        cert_fingerprint: Some([0x77; 32]),
    }
}

fn presignature() -> PresignatureInfo {
    PresignatureInfo {
        id: [0x88; 32],
        key_id: vec![0x02; 33],
        signers: vec![0, 2],
    }
}

fn requests() -> Vec<Request> {
    vec![
        Request::Status,
        Request::PinRoot {
            root_cert: vec![0x30, 0x82],
        },
        Request::GenerateDeviceKey {
            cluster: "dc1".into(),
            node: "node1".into(),
        },
        Request::InstallDeviceCert {
            device: vec![1],
            cluster_ca: vec![2],
            device_ca: vec![3],
        },
        Request::CreateWallet {
            meta: meta(),
            quorum: 2,
            approvals: vec![approval()],
        },
        Request::ImportWallet {
            meta: meta(),
            quorum: 1,
            key_id: vec![0x03; 33],
            secret: ImportSecret::Mnemonic {
                phrase: SecretString("abandon".into()),
                passphrase: SecretString(String::new()),
            },
            approvals: vec![approval()],
        },
        Request::ListKeys,
        Request::GetXpub {
            key_id: vec![0x03; 33],
            path: vec![0x8000_002c, 0],
        },
        Request::Sign {
            meta: meta(),
            key_id: vec![0x03; 33],
            path: vec![0x8000_002c, 7],
            digest: [0x99; 32],
            approvals: vec![approval(), approval()],
        },
        Request::AuditSign {
            key_id: vec![0x03; 33],
            message: vec![1, 2, 3, 4, 5, 6, 7, 8],
        },
        Request::Attest {
            challenge: vec![0xc0; 4],
        },
        Request::DeviceChain,
        Request::SignTls {
            message: vec![0x20; 3],
        },
        Request::ExportKeys {
            requester: chain(),
            key_ids: vec![vec![0x03; 33]],
        },
        Request::ImportKeys {
            transfer: transfer(),
        },
        Request::ImportWalletSealed {
            meta: meta(),
            quorum: 1,
            key_id: vec![0x03; 33],
            sealed: SealedImport {
                enc: vec![0x04; 3],
                ciphertext: vec![0x05; 4],
            },
            approvals: vec![approval()],
        },
        Request::ImportThresholdBundle {
            meta: meta(),
            bundle: ThresholdBundle {
                key: key_info(),
                recipient_fingerprint: [0x12; 32],
                dealer_cert: vec![0x13],
                dealer_ca: vec![0x14],
                enc: vec![0x15; 2],
                ciphertext: vec![0x16; 2],
                signature: vec![0x17; 2],
            },
            approvals: vec![approval()],
        },
        Request::ListThresholdKeys,
        Request::ThresholdStart {
            meta: meta(),
            attempt: 0,
            params: ThresholdSignParams {
                key_id: vec![0x02; 33],
                path: vec![0, 1],
                digest: [0x99; 32],
                signers: vec![signer(0), signer(2)],
            },
            approvals: vec![approval()],
        },
        Request::ThresholdFeed {
            session: session(),
            messages: vec![message()],
        },
        Request::ThresholdAbort {
            session: session(),
            reason: "peer failed".into(),
        },
        Request::ThresholdKeygenStart {
            meta: meta(),
            attempt: 0,
            params: ThresholdKeygenParams {
                threshold: 2,
                hd: true,
                clusters: vec!["dc1".into(), "dc2".into()],
                quorum: 1,
                participants: vec![signer(0), signer(1)],
            },
            approvals: vec![approval()],
        },
        Request::ThresholdAuditStart {
            session: session(),
            key_id: vec![0x02; 33],
            message: vec![9; 8],
            signers: vec![signer(0), signer(1)],
        },
        Request::ThresholdPresignStart {
            session: session(),
            key_id: vec![0x02; 33],
            signers: vec![signer(1), signer(2)],
        },
        Request::ThresholdPresignSign {
            meta: meta(),
            attempt: 1,
            params: PresignSignParams {
                key_id: vec![0x02; 33],
                presignature: [0x88; 32],
                message: b"pay 1 BTC".to_vec(),
            },
            approvals: vec![approval()],
        },
        Request::ListPresignatures {
            key_id: vec![0x02; 33],
        },
        Request::ApplyGovernance {
            cluster: "dc1".into(),
            entries: vec![gov_entry()],
        },
        Request::Governance {
            cluster: "dc1".into(),
            since: 3,
        },
        Request::DeviceCsr,
        Request::PinGenesis {
            genesis_id: [0xf5; 32],
        },
        Request::CreateGroupWallet {
            meta: meta(),
            policy: policy(),
            executor: [0xe7; 32],
            approvals: vec![approval()],
        },
        Request::SetKeyPolicy {
            meta: meta(),
            key_id: vec![0x03; 33],
            prev: [0x98; 32],
            policy: policy(),
            approvals: vec![approval()],
        },
        Request::GetKeyPolicy {
            key_id: vec![0x03; 33],
        },
        Request::ThresholdGroupKeygenStart {
            meta: meta(),
            attempt: 1,
            params: ThresholdKeygenParams {
                threshold: 2,
                hd: true,
                clusters: vec!["dc1".into(), "dc2".into()],
                quorum: 2,
                participants: vec![signer(0), signer(1)],
            },
            policy: policy(),
            executors: vec![[0xe7; 32], [0xe8; 32]],
            approvals: vec![approval()],
        },
        Request::ImportGroupWalletSealed {
            meta: meta(),
            policy: policy(),
            key_id: vec![0x03; 33],
            sealed: SealedImport {
                enc: vec![0x04; 3],
                ciphertext: vec![0x05; 4],
            },
            approvals: vec![approval()],
        },
        Request::AttestationIdentity,
        Request::IssueAdmissionTicket {
            node_key: [0xe4; 32],
            tpm: Some(tpm_identity()),
        },
        Request::AdmissionEvidence {
            challenge: challenge(),
        },
        Request::SignPsbt {
            meta: meta(),
            key_id: vec![0x03; 33],
            network: BitcoinNetwork::Regtest,
            psbt: b"psbt\xff".to_vec(),
            intent_hash: [0x1a; 32],
            approvals: vec![approval()],
        },
        Request::PreviewPsbt {
            key_id: vec![0x03; 33],
            network: BitcoinNetwork::Bitcoin,
            psbt: b"psbt\xff".to_vec(),
        },
        Request::SignEthereum {
            meta: meta(),
            key_id: vec![0x03; 33],
            path: vec![0x8000_002c, 0x8000_003c, 0x8000_0000, 0, 1],
            payload: EthPayload::Transaction(vec![0x02, 0xc0]),
            intent_hash: [0x1b; 32],
            approvals: vec![approval()],
        },
        Request::PreviewEthereum {
            key_id: vec![0x03; 33],
            path: vec![0, 1],
            payload: EthPayload::TypedData("{}".into()),
        },
        Request::ThresholdPsbtStart {
            meta: meta(),
            attempt: 1,
            input: 3,
            params: ThresholdPsbtParams {
                key_id: vec![0x02; 33],
                network: BitcoinNetwork::Testnet,
                psbt: b"psbt\xff".to_vec(),
                intent_hash: [0x1c; 32],
                signers: vec![signer(1), signer(0)],
            },
            approvals: vec![approval()],
        },
    ]
}

fn tpm_identity() -> TpmIdentity {
    TpmIdentity {
        ek_cert: vec![0x30, 0x01],
        ek_chain: vec![vec![0x30, 0x02]],
        ak_public: vec![0x00, 0x23],
    }
}

fn ticket() -> AdmissionTicket {
    AdmissionTicket {
        cluster: "dc1".into(),
        genesis_id: [0xf5; 32],
        node_key: [0xe4; 32],
        issuer: [0xe1; 32],
        nonce_hash: nonce_hash(&[0x6e; 32]),
        issued_at: 1_799_999_000,
        expires_at: 1_800_002_600,
        tpm: Some(TicketCredential {
            ak_name: vec![0x00, 0x0b, 0x01],
            ek_cert_sha256: [0xec; 32],
            ek_chain: vec![vec![0x30, 0x03]],
            id_object: vec![0x1d; 3],
            encrypted_secret: vec![0x5e; 4],
        }),
    }
}

fn challenge() -> AdmissionChallenge {
    AdmissionChallenge {
        ticket: SignedTicket {
            ticket: ticket(),
            signature: vec![0x30, 0x45],
        },
        nonce: None,
    }
}

fn measurement_policy() -> MeasurementPolicy {
    MeasurementPolicy {
        allow_software: false,
        tpm: Some(TpmMeasurement {
            ek_roots_sha256: vec![[0xa1; 32]],
            pcrs: vec![(7, [0xa7; 32])],
        }),
        nitro: Some(NitroMeasurement {
            pcrs: vec![(0, vec![0xa0; 48])],
        }),
        snp: Some(SnpMeasurement {
            ark_sha256: [0xa2; 32],
            measurement: vec![0xa3; 48],
            allow_debug: false,
        }),
        tdx: Some(TdxMeasurement {
            mr_td: vec![0xa4; 48],
            rtmrs: vec![(1, vec![0xa5; 48]), (2, vec![0xa6; 48])],
            tcb_statuses: vec!["UpToDate".into()],
        }),
    }
}

fn responses() -> Vec<Response> {
    vec![
        Response::Status(Status {
            protocol_version: PROTOCOL_VERSION.into(),
            platform: "software".into(),
            root_fingerprint: Some([0x01; 32]),
            device: Some(device()),
            wallets: 3,
            corrupt_records: vec![("wallet/00".into(), "tag".into())],
        }),
        Response::RootPinned {
            fingerprint: [0x01; 32],
        },
        Response::DeviceCsr {
            csr: vec![0x30; 3],
            public_key: vec![0x04; 65],
        },
        Response::DeviceCertInstalled(device()),
        Response::Wallet(wallet()),
        Response::Keys(vec![wallet()]),
        Response::Xpub {
            xpub: "xpub-child".into(),
            public_key: vec![0x02; 33],
        },
        Response::Signature(signature()),
        Response::AuditSignature(signature()),
        Response::Attestation(Attestation {
            platform: "software".into(),
            document: vec![0xad; 4],
        }),
        Response::DeviceChain(chain()),
        Response::TlsSignature(vec![0x30, 0x44]),
        Response::KeyTransfer(transfer()),
        Response::KeysImported {
            imported: vec![vec![0x03; 33]],
            already_held: 2,
        },
        Response::ThresholdKey(key_info()),
        Response::ThresholdKeys(vec![key_info()]),
        Response::ThresholdRound {
            session: session(),
            phase: "getSig".into(),
            outgoing: vec![message()],
            signature: Some(signature()),
        },
        Response::ThresholdAborted(session()),
        Response::ThresholdKeygenRound {
            session: session(),
            phase: "auxInfo".into(),
            outgoing: vec![],
            computing: true,
            key: Some(ThresholdKeyInfo {
                origin: ThresholdOrigin::Dkg,
                chain_code: None,
                ..key_info()
            }),
        },
        Response::ThresholdPresignRound {
            session: session(),
            phase: "presign".into(),
            outgoing: vec![message()],
            presignature: Some(presignature()),
        },
        Response::ThresholdPartial {
            presignature: [0x88; 32],
            position: 1,
            sigma: [0x89; 32],
            public: b"{}".to_vec(),
        },
        Response::Presignatures(vec![presignature()]),
        Response::Governance(GovView {
            cluster: "dc1".into(),
            genesis_id: [0xf3; 32],
            version: 4,
            head: [0xf4; 32],
            governors: vec![[0xb1; 32], [0xb2; 32]],
            quorum: 2,
            members: vec![MemberInfo {
                node: "node1".into(),
                key_fingerprint: [0xe1; 32],
                admitted_version: 0,
                admitted_at: 1_799_999_000,
                evidence_format: 1,
            }],
            revoked_admins: vec![([0xb3; 32], 2)],
            revoked_devices: vec![([0xe3; 32], 3)],
            entries: vec![gov_entry()],
        }),
        Response::GenesisPinned {
            genesis_id: [0xf5; 32],
        },
        Response::KeyPolicy {
            key_id: vec![0x03; 33],
            policy: policy(),
            hash: policy().hash(),
        },
        Response::AttestationIdentity(Some(tpm_identity())),
        Response::AdmissionChallenge(challenge()),
        Response::AdmissionEvidence(Evidence {
            format: EVIDENCE_ADMISSION_V1,
            document: AdmissionEvidence {
                ticket: challenge().ticket,
                nonce: [0x6e; 32],
                platform: "tpm".into(),
                document: vec![0xd0; 3],
            }
            .encode(),
        }),
        Response::SignedPsbt {
            psbt: b"psbt\xff".to_vec(),
            intent_hash: [0x1a; 32],
        },
        Response::TransactionIntent {
            intent_hash: [0x1a; 32],
            intent_json: b"{}".to_vec(),
        },
        Response::SignedEthereum {
            signature: vec![0x5e; 65],
            raw_transaction: Some(vec![0x02, 0xf8]),
            intent_hash: [0x1b; 32],
        },
    ]
}

fn errors() -> Vec<TeeError> {
    let s = || "detail".to_string();
    vec![
        TeeError::InvalidRequest(s()),
        TeeError::NotProvisioned(s()),
        TeeError::RootAlreadyPinned,
        TeeError::RootRejected(s()),
        TeeError::DeviceKeyExists,
        TeeError::DeviceCertRejected(s()),
        TeeError::DeviceCertWrongCluster {
            expected: "dc1".into(),
            found: "dc2".into(),
        },
        TeeError::DeviceCertWrongKey,
        TeeError::ApprovalMissing,
        TeeError::ApprovalRejected {
            index: 1,
            fault: ApprovalFault::BadSignature,
            detail: s(),
        },
        TeeError::QuorumNotMet {
            required: 2,
            approved: 1,
        },
        TeeError::RequestExpired {
            expires_at: 10,
            now: 11,
        },
        TeeError::RequestReplayed(s()),
        TeeError::UnknownKey(s()),
        TeeError::KeyExists(s()),
        TeeError::KeyRecordCorrupt {
            key: "03".into(),
            reason: s(),
        },
        TeeError::ImportRejected(s()),
        TeeError::AuditMessageTooLong { len: 9, max: 8 },
        TeeError::InvalidPath(s()),
        TeeError::TransferRejected(s()),
        TeeError::RequesterRejected(s()),
        TeeError::TlsSignRefused,
        TeeError::Storage(s()),
        TeeError::SealedImportRejected(s()),
        TeeError::ThresholdRejected(s()),
        TeeError::UnknownSession(s()),
        TeeError::ThresholdAborted {
            session: "22/1".into(),
            blamed: vec!["dc2".into()],
            phase: "getR".into(),
            detail: s(),
        },
        TeeError::PrimesNotReady(s()),
        TeeError::UnknownPresignature(s()),
        TeeError::UnsupportedProtocol {
            found: 1,
            supported: PROTOCOL_VERSION,
        },
        TeeError::AdminRevoked {
            index: 1,
            admin: "carol".into(),
            key_fingerprint: [0xc1; 32],
        },
        TeeError::ApproverNotInGroup {
            index: 2,
            admin: "mallory".into(),
            key_fingerprint: [0xc2; 32],
        },
        TeeError::NotAMember {
            node: "dc1-rogue".into(),
            key_fingerprint: [0xc3; 32],
        },
        TeeError::DeviceRevoked {
            node: "node3".into(),
            key_fingerprint: [0xc4; 32],
        },
        TeeError::GovernanceRejected(s()),
        TeeError::GovernanceGap { head: 4, first: 7 },
        TeeError::NotGoverned,
        TeeError::NotExecutor {
            executor: [0xe7; 32],
            this_node: [0xe8; 32],
        },
        TeeError::PolicyRejected(s()),
        TeeError::PolicyConflict {
            key: "03".repeat(33),
            expected: [0x97; 32],
            found: [0x98; 32],
        },
        TeeError::ParticipantNotExecutor {
            share_index: 1,
            executor: [0xe7; 32],
            found: [0xe9; 32],
        },
        TeeError::LegacyRequest(s()),
        TeeError::ForeignLogMissing {
            cluster: "dc2".into(),
            genesis_id: [0x9e; 32],
        },
        TeeError::AdmissionRefused(s()),
        TeeError::TransactionRejected {
            code: "input_not_ours".into(),
            reason: s(),
        },
        TeeError::IntentMismatch {
            claimed: [0x1a; 32],
            computed: [0x1b; 32],
        },
        TeeError::TransactionPolicyRefused {
            rule: "window_count".into(),
            reason: s(),
        },
        TeeError::RawSigningOff {
            key: "03".repeat(33),
        },
        TeeError::PrimesRefused {
            fault: PrimesFault::DuplicateModulus,
            detail: s(),
        },
    ]
}

fn member() -> MemberRecord {
    MemberRecord {
        node: "node1".into(),
        key_fingerprint: [0xe1; 32],
        chain: chain(),
        evidence: Evidence {
            format: 1,
            document: vec![0xe2; 3],
        },
        admitted_at: 1_799_999_000,
    }
}

/// One change of every kind, by its message tag.
fn gov_changes() -> Vec<(&'static str, GovChange)> {
    vec![
        (
            "gov-genesis",
            GovChange::Genesis {
                governors: vec![[0xb1; 32], [0xb2; 32], [0xb3; 32]],
                quorum: 2,
                members: vec![member()],
                rules: Vec::new(),
            },
        ),
        ("gov-admit", GovChange::Admit { member: member() }),
        (
            "gov-remove",
            GovChange::Remove {
                key_fingerprint: [0xe1; 32],
                reason: "retired".into(),
            },
        ),
        (
            "gov-revoke",
            GovChange::Revoke {
                admins: vec![[0xb3; 32]],
                devices: vec![[0xe1; 32]],
                reason: "lost".into(),
            },
        ),
        (
            "gov-set-governors",
            GovChange::SetGovernors {
                governors: vec![[0xb1; 32], [0xb2; 32]],
                quorum: 1,
            },
        ),
        (
            "gov-set-measurement-policy",
            GovChange::SetMeasurementPolicy {
                policy: measurement_policy(),
            },
        ),
    ]
}

/// A genesis entry.
fn gov_entry() -> GovEntry {
    let (_, genesis) = gov_changes().remove(0);
    GovEntry {
        version: 0,
        prev: [0; 32],
        meta: meta(),
        change: genesis,
        approvals: vec![approval()],
    }
}

fn policy() -> KeyPolicy {
    KeyPolicy {
        version: 2,
        group: vec![[0xb1; 32], [0xb2; 32]],
        quorum: 2,
        rules: vec![Rule {
            tag: RULE_CLUSTER_ANCHORS,
            body: [[0xf1; 32], [0xf2; 32]].concat(),
        }],
    }
}

fn approval_messages() -> Vec<(&'static str, Vec<u8>)> {
    let m = meta();
    let clusters: Vec<String> = vec!["dc1".into(), "dc2".into(), "dc3".into()];
    let digest = [0x99; 32];
    vec![
        (
            "create-wallet",
            Action::CreateWallet { quorum: 2 }.message("dc1", &m),
        ),
        (
            "import-wallet",
            Action::ImportWallet {
                quorum: 1,
                key_id: &[0x03; 33],
            }
            .message("dc1", &m),
        ),
        (
            "import-threshold-key",
            Action::ImportThresholdKey {
                quorum: 2,
                key_id: &[0x02; 33],
                share_index: 1,
            }
            .message("dc2", &m),
        ),
        (
            "threshold-sign",
            Action::ThresholdSign {
                key_id: &[0x02; 33],
                path: &[0, 1],
                digest: &digest,
            }
            .message(THRESHOLD_SCOPE, &m),
        ),
        (
            "create-threshold-key",
            Action::CreateThresholdKey {
                quorum: 2,
                threshold: 2,
                hd: true,
                clusters: &clusters,
            }
            .message(THRESHOLD_SCOPE, &m),
        ),
        (
            "sign",
            Action::Sign {
                key_id: &[0x03; 33],
                path: &[0x8000_002c, 7],
                digest: &digest,
            }
            .message("dc1", &m),
        ),
        (
            "set-key-policy",
            Action::SetKeyPolicy {
                key_id: &[0x03; 33],
                prev: &[0x98; 32],
                policy: &policy(),
            }
            .message("dc1", &m),
        ),
        (
            "create-wallet-v2",
            Action::CreateGroupWallet {
                policy: &policy(),
                executor: &[0xe7; 32],
            }
            .message("dc1", &m),
        ),
        (
            "create-threshold-key-v2",
            Action::CreateGroupThresholdKey {
                policy: &policy(),
                threshold: 2,
                hd: true,
                clusters: &clusters,
                executors: &[[0xe7; 32], [0xe8; 32], [0xe9; 32]],
            }
            .message(THRESHOLD_SCOPE, &m),
        ),
        (
            "import-wallet-v2",
            Action::ImportGroupWallet {
                policy: &policy(),
                key_id: &[0x03; 33],
            }
            .message("dc1", &m),
        ),
        (
            "sign-transaction",
            Action::SignTransaction {
                key_id: &[0x03; 33],
                intent_hash: &[0x1a; 32],
            }
            .message("dc1", &m),
        ),
        ("audit-digest", audit_digest(b"12345678").to_vec()),
        (
            "response-transcript",
            response_transcript(&encode_request(&Request::Status), b"body"),
        ),
    ]
}

/// serde's name of an enum value's variant (its external tag).
fn variant<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v).expect("serializes") {
        serde_json::Value::String(s) => s,
        serde_json::Value::Object(m) => m.keys().next().cloned().expect("tagged"),
        other => panic!("not an enum value: {other}"),
    }
}

/// Checks that `encoded` (each without any version prefix) start with the variant indexes
/// 0..n in order, and that index n is not a variant `T` knows.
fn assert_complete<T: serde::de::DeserializeOwned>(what: &str, encoded: &[Vec<u8>]) {
    for (i, e) in encoded.iter().enumerate() {
        assert_eq!(
            usize::from(e[0]),
            i,
            "{what} sample {i} is variant {}: samples must follow the enum's order",
            e[0]
        );
    }
    let n = u8::try_from(encoded.len()).expect("fewer than 128 variants");
    match postcard::from_bytes::<T>(&[n]) {
        Err(postcard::Error::DeserializeUnexpectedEnd) | Ok(_) => {
            panic!("{what} has a variant {n} without a golden sample: add one and bless the file")
        }
        Err(_) => {}
    }
}

fn current() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let reqs: Vec<Vec<u8>> = requests().iter().map(encode_request).collect();
    for (r, bytes) in requests().iter().zip(&reqs) {
        assert_eq!(decode_request(bytes).as_ref(), Ok(r), "round trip");
        out.insert(format!("request {}", variant(r)), hex::encode(bytes));
    }
    let bodies: Vec<Vec<u8>> = reqs.iter().map(|b| b[1..].to_vec()).collect();
    assert_complete::<Request>("Request", &bodies);

    let resp: Vec<Vec<u8>> = responses()
        .iter()
        .map(|r| postcard::to_allocvec(r).unwrap())
        .collect();
    assert_complete::<Response>("Response", &resp);
    for (r, bytes) in responses().iter().zip(&resp) {
        let ok: Outcome = Ok(r.clone());
        let body = postcard::to_allocvec(&ok).unwrap();
        assert_eq!(postcard::from_bytes::<Outcome>(&body).unwrap(), ok);
        assert_eq!(
            body[1..],
            bytes[..],
            "Ok(response) is the response after tag 0"
        );
        out.insert(format!("response {}", variant(r)), hex::encode(&body));
    }

    let errs: Vec<Vec<u8>> = errors()
        .iter()
        .map(|e| postcard::to_allocvec(e).unwrap())
        .collect();
    assert_complete::<TeeError>("TeeError", &errs);
    let mut codes = std::collections::BTreeSet::new();
    for e in errors() {
        let body = postcard::to_allocvec(&Outcome::Err(e.clone())).unwrap();
        assert!(codes.insert(e.code()), "code {} used twice", e.code());
        out.insert(
            format!("refusal {} {}", variant(&e), e.code()),
            hex::encode(&body),
        );
    }

    let signed = SignedResponse {
        body: vec![0, 1],
        signature: Some(vec![0x30, 0x45]),
    };
    out.insert(
        "signed-response sample".into(),
        hex::encode(postcard::to_allocvec(&signed).unwrap()),
    );
    // A passkey's approval, as sealed in governance entries and sent to every TEE.
    let passkey = Approval {
        webauthn: Some(PasskeyAssertion {
            authenticator_data: vec![0xa4; 37],
            client_data_json: b"{}".to_vec(),
        }),
        ..approval()
    };
    out.insert(
        "approval passkey".into(),
        hex::encode(postcard::to_allocvec(&passkey).unwrap()),
    );
    let faults = [
        ApprovalFault::UntrustedCertificate,
        ApprovalFault::CertificateNotValidNow,
        ApprovalFault::BadSignature,
        ApprovalFault::Malformed,
        ApprovalFault::NotAPasskey,
        ApprovalFault::AssertionMissing,
        ApprovalFault::WrongType,
        ApprovalFault::WrongChallenge,
        ApprovalFault::WrongOrigin,
        ApprovalFault::CrossOrigin,
        ApprovalFault::WrongRpId,
        ApprovalFault::UserNotPresent,
        ApprovalFault::UserNotVerified,
        ApprovalFault::CounterReplayed,
    ];
    let encoded: Vec<Vec<u8>> = faults
        .iter()
        .map(|f| postcard::to_allocvec(f).unwrap())
        .collect();
    assert_complete::<ApprovalFault>("ApprovalFault", &encoded);
    let mut names = std::collections::BTreeSet::new();
    for (f, bytes) in faults.iter().zip(&encoded) {
        assert!(names.insert(f.as_str()), "{} named twice", f.as_str());
        out.insert(format!("approval-fault {}", f.as_str()), hex::encode(bytes));
    }
    for (name, bytes) in approval_messages() {
        out.insert(format!("message {name}"), hex::encode(bytes));
    }
    for (tag, change) in gov_changes() {
        assert_eq!(change.tag(), tag.as_bytes());
        let message = Action::Governance {
            version: 7,
            prev: &[0x97; 32],
            change: &change,
        }
        .message("dc1", &meta());
        out.insert(format!("message {tag}"), hex::encode(message));
    }
    // Sealed in every TEE (gov/e/*) and hashed by every verifier: pinned like the messages.
    let entry = gov_entry();
    let genesis = entry.change.clone();
    out.insert(
        "governance entry".into(),
        hex::encode(postcard::to_allocvec(&entry).unwrap()),
    );
    out.insert(
        "governance entry-hash".into(),
        hex::encode(entry_hash("dc1", &entry)),
    );
    out.insert(
        "governance genesis-id".into(),
        hex::encode(genesis_id("dc1", &genesis)),
    );
    out.insert("policy encoding".into(), hex::encode(policy().encode()));
    // Signed by a member TEE and checked by every verifier of the log.
    out.insert(
        "admission ticket-message".into(),
        hex::encode(ticket().message()),
    );
    out.insert(
        "admission binding".into(),
        hex::encode(admission_binding(&[0xf5; 32], &[0x6e; 32], &[0x04; 65])),
    );
    out.insert(
        "measurement-policy encoding".into(),
        hex::encode(measurement_policy().encode()),
    );
    out.insert("policy hash".into(), hex::encode(policy().hash()));
    out
}

#[test]
fn the_encoding_matches_the_golden_vectors() {
    let now = current();
    let text: String = now.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
    if std::env::var_os("CUSTOS_BLESS_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &text).unwrap();
        return;
    }
    let golden = std::fs::read_to_string(GOLDEN).expect("golden file present");
    let mut want = BTreeMap::new();
    for line in golden.lines() {
        let (k, v) = line.rsplit_once(' ').expect("name and hex");
        want.insert(k.to_string(), v.to_string());
    }
    for (k, v) in &want {
        match now.get(k) {
            None => panic!("{k}: in the golden file, no longer produced"),
            Some(got) => assert_eq!(got, v, "{k}: encoding changed"),
        }
    }
    for k in now.keys() {
        assert!(want.contains_key(k), "{k}: not in the golden file");
    }
}

/// Property tests of the decoders, starting from every golden sample (each request and
/// response kind): bytes changed, inserted or removed anywhere decode to an error or to a
/// value whose encoding decodes to the same value; nothing panics. (`fuzz/` runs the same
/// decoders coverage-guided.)
mod mutated {
    use super::*;
    use proptest::prelude::*;

    /// One edit at a position taken modulo the length: replace, insert or remove a byte.
    fn apply(bytes: &mut Vec<u8>, edits: &[(usize, u8, u8)]) {
        for &(at, value, how) in edits {
            let at = at % (bytes.len() + 1);
            match how % 3 {
                0 if at < bytes.len() => bytes[at] = value,
                1 => bytes.insert(at, value),
                _ if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.push(value),
            }
        }
    }

    fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
        proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn requests_decode_or_refuse(sample in any::<prop::sample::Index>(), edits in edits()) {
            let all = requests();
            let mut bytes = encode_request(sample.get(&all));
            apply(&mut bytes, &edits);
            if let Ok(request) = decode_request(&bytes) {
                let again = encode_request(&request);
                prop_assert_eq!(decode_request(&again), Ok(request));
            }
        }

        #[test]
        fn outcomes_decode_or_refuse(sample in any::<prop::sample::Index>(), edits in edits()) {
            let all: Vec<Outcome> = responses()
                .into_iter()
                .map(Ok)
                .chain(errors().into_iter().map(Err))
                .collect();
            let mut bytes = postcard::to_allocvec(sample.get(&all)).unwrap();
            apply(&mut bytes, &edits);
            if let Ok(outcome) = postcard::from_bytes::<Outcome>(&bytes) {
                let again = postcard::to_allocvec(&outcome).unwrap();
                prop_assert_eq!(postcard::from_bytes::<Outcome>(&again).ok(), Some(outcome));
            }
        }
    }
}

/// Logs sealed before passkeys (protocol 2, approvals without a `webauthn` part) still open
/// after the upgrade: the entry of protocol 2's golden file, and one with two approvals of
/// certificate-sized fields, read as the same entries; today's encoding reads as itself.
#[test]
fn governance_entries_stored_by_protocol_2_still_read() {
    let old = hex::decode(include_str!("golden/gov-entry-v2.hex").trim()).unwrap();
    assert!(postcard::from_bytes::<GovEntry>(&old).is_err());
    assert_eq!(GovEntry::decode_stored(&old).unwrap(), gov_entry());

    #[derive(Serialize)]
    struct ApprovalV2 {
        admin_cert: Vec<u8>,
        admin_ca: Vec<u8>,
        signature: Vec<u8>,
    }
    #[derive(Serialize)]
    struct EntryV2 {
        version: u64,
        prev: [u8; 32],
        meta: RequestMeta,
        change: GovChange,
        approvals: Vec<ApprovalV2>,
    }
    let mut entry = gov_entry();
    entry.approvals = (0..2u8)
        .map(|i| Approval {
            admin_cert: vec![0xc0 + i; 480],
            admin_ca: vec![0xca; 530],
            signature: vec![0x30; 71],
            webauthn: None,
        })
        .collect();
    let v2 = EntryV2 {
        version: entry.version,
        prev: entry.prev,
        meta: entry.meta.clone(),
        change: entry.change.clone(),
        approvals: entry
            .approvals
            .iter()
            .map(|a| ApprovalV2 {
                admin_cert: a.admin_cert.clone(),
                admin_ca: a.admin_ca.clone(),
                signature: a.signature.clone(),
            })
            .collect(),
    };
    let bytes = postcard::to_allocvec(&v2).unwrap();
    assert!(postcard::from_bytes::<GovEntry>(&bytes).is_err());
    assert_eq!(GovEntry::decode_stored(&bytes).unwrap(), entry);

    entry.approvals[1].webauthn = Some(PasskeyAssertion {
        authenticator_data: vec![0xa4; 37],
        client_data_json: b"{}".to_vec(),
    });
    let now = postcard::to_allocvec(&entry).unwrap();
    assert_eq!(GovEntry::decode_stored(&now).unwrap(), entry);
    // A current entry altered in its last byte (a `None` tag made `Some`) reads neither way,
    // nor does one with a byte appended.
    let mut plain = gov_entry();
    plain.approvals[0].webauthn = None;
    let mut altered = postcard::to_allocvec(&plain).unwrap();
    *altered.last_mut().unwrap() ^= 1;
    assert!(GovEntry::decode_stored(&altered).is_err());
    let mut longer = postcard::to_allocvec(&plain).unwrap();
    longer.push(0);
    assert!(GovEntry::decode_stored(&longer).is_err());
}
