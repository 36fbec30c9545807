//! Cluster governance over the API (issue 12): the bodies of the routes that propose log
//! entries (genesis, admit, remove, revoke, set governors), the terms of a governance request
//! as an approver reads them, and the views of a cluster's members and log.
//!
//! Fingerprints are SHA-256 of a certified key's SubjectPublicKeyInfo, as 64 hex characters:
//! an admin (governor) is named by its key (`custos admin fingerprint`), a member by its
//! device key D.

use custos_wire::governance::{MAX_GOVERNORS, MAX_MEMBERS};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::Array;
use utoipa::ToSchema;

/// Most admins, and most devices, one revocation request names (the log holds at most
/// [`custos_wire::governance::MAX_REVOKED`] revoked keys in all); bounded so that a
/// revocation body fits the server's body limit.
pub const MAX_REVOKE_PER_REQUEST: usize = 512;

/// Longest device chain PEM an admission names (three P-256 certificates of well under 1 KiB
/// each, as PEM).
pub const MAX_CHAIN_PEM: usize = 8192;

/// `POST /v1/clusters/{name}/genesis`: the first entry of the cluster's governance log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenesisBody {
    /// Governor key fingerprints (hex, 1 to 32; order and repeats do not matter).
    #[schema(schema_with = governor_list)]
    pub governors: Vec<String>,
    /// Distinct governors needed for this genesis and every later entry (1..=16, at most the
    /// number of governors: `invalid_governance` otherwise).
    #[schema(minimum = 1, maximum = 16)]
    pub quorum: u8,
    /// The first members: names of nodes registered with the cluster's bridge (1 to 64),
    /// whose device chains the bridge hands out.
    #[schema(schema_with = member_list)]
    pub members: Vec<String>,
    /// The platforms nodes are admitted on after the genesis (absent: none, until the
    /// governors set a policy). The demo's clusters allow the software platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement_policy: Option<crate::MeasurementPolicyView>,
    /// See [`crate::CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// See [`crate::CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// `POST /v1/clusters/{name}/members`: admit a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdmitBody {
    /// The node's name (its device certificate's).
    #[schema(pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48)]
    pub node: String,
    /// The node's device chain (device certificate, Cluster CA, Device CA; PEM, as
    /// `custos tee provision` prints it). Needed for a node that is not a member yet: the
    /// bridge of a governed cluster registers members only, so it cannot hand the chain out.
    /// Without it the bridge is asked (`invalid_chain` if it does not know the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[-A-Za-z0-9+/= \\r\\n]+$", max_length = 8192)]
    pub chain_pem: Option<String>,
    /// Format of attestation evidence (0 or absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 65535)]
    pub evidence_format: Option<u16>,
    /// Attestation evidence, hex (at most 48 KiB; format 1: the node's answer to a ticket,
    /// `custos tee admission-evidence`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^([0-9a-fA-F]{2})*$", max_length = 98304)]
    pub evidence_hex: Option<String>,
    /// See [`crate::CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// See [`crate::CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// `POST /v1/clusters/{name}/members/tickets`: a member TEE's admission ticket for a node
/// that asks to join (what its own TEE answers with evidence, `custos tee admission-evidence`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketBody {
    /// The node's name (its device certificate's).
    #[schema(pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48)]
    pub node: String,
    /// The node's device chain (PEM, `custos tee chain`): the ticket names its device key.
    #[schema(pattern = "^[-A-Za-z0-9+/= \\r\\n]+$", max_length = 8192)]
    pub chain_pem: String,
    /// The node's TPM identity (`custos tee attestation-identity`), for a node on a TPM: the
    /// nonce is then sealed to that TPM. Absent for other platforms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_identity: Option<TpmIdentityView>,
}

/// A TPM's attestation identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TpmIdentityView {
    /// The endorsement key's certificate (PEM), from the TPM.
    #[schema(pattern = "^[-A-Za-z0-9+/= \\r\\n]+$", max_length = 8192)]
    pub ek_cert_pem: String,
    /// The certificates from it up to the manufacturer's root, root last (PEM; the root's
    /// SHA-256 must be pinned by the cluster's measurement policy).
    #[schema(pattern = "^[-A-Za-z0-9+/= \\r\\n]*$", max_length = 16384)]
    pub ek_chain_pem: String,
    /// The attestation key's public area (marshalled TPMT_PUBLIC), hex.
    #[schema(pattern = "^([0-9a-fA-F]{2})*$", max_length = 2048)]
    pub ak_public_hex: String,
}

/// A signed admission ticket, to be answered by the node's own TEE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdmissionTicketView {
    /// The node it is for.
    pub node: String,
    /// The member whose TEE signed it.
    pub issuer: String,
    /// Last admission time it covers (Unix seconds): propose the admission before.
    pub expires_at: u64,
    /// Whether the nonce is sealed to the node's TPM (else it travels in the ticket).
    pub sealed_to_tpm: bool,
    /// The challenge for the node's TEE (encoded `AdmissionChallenge`), hex.
    pub challenge_hex: String,
}

/// `POST /v1/clusters/{name}/members/{node}/remove`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveMemberBody {
    /// Why (recorded in the log; at most 1024 bytes of UTF-8).
    #[schema(max_length = 1024)]
    pub reason: String,
    /// See [`crate::CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// See [`crate::CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// `POST /v1/clusters/{name}/revocations`: revoke admin keys and device keys (at least one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// Admin key fingerprints (hex; at most 512).
    #[serde(default)]
    #[schema(schema_with = revoked_list)]
    pub admins: Vec<String>,
    /// Device key fingerprints (hex; at most 512). A revoked member leaves the cluster.
    #[serde(default)]
    #[schema(schema_with = revoked_list)]
    pub devices: Vec<String>,
    /// Why (recorded in the log; at most 1024 bytes of UTF-8).
    #[schema(max_length = 1024)]
    pub reason: String,
    /// See [`crate::CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// See [`crate::CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// `POST /v1/clusters/{name}/governors`: replace the governors and their quorum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GovernorsBody {
    /// The new governors' key fingerprints (hex, 1 to 32).
    #[schema(schema_with = governor_list)]
    pub governors: Vec<String>,
    /// Distinct governors needed from the next entry on (1..=16, at most their number).
    #[schema(minimum = 1, maximum = 16)]
    pub quorum: u8,
    /// See [`crate::CreateWalletBody::request_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", max_length = 32)]
    pub request_id: Option<String>,
    /// See [`crate::CreateWalletBody::expires_at`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// A list of strings each matching `pattern` (at most `max_length` characters).
pub(super) fn string_list(
    pattern: &str,
    max_length: usize,
    min: usize,
    max: usize,
    text: &str,
) -> Array {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern))
                .max_length(Some(max_length)),
        )
        .min_items(Some(min))
        .max_items(Some(max))
        .description(Some(text))
        .build()
}

const FINGERPRINT_PATTERN: &str = "^[0-9a-fA-F]{64}$";

fn governor_list() -> Array {
    string_list(
        FINGERPRINT_PATTERN,
        64,
        1,
        MAX_GOVERNORS,
        "Governor key fingerprints (hex, 1 to 32; order and repeats do not matter).",
    )
}

fn member_list() -> Array {
    string_list(
        super::schema::CLUSTER_NAME_PATTERN,
        48,
        1,
        MAX_MEMBERS,
        "Names of nodes registered with the cluster's bridge (1 to 64).",
    )
}

fn revoked_list() -> Array {
    string_list(
        FINGERPRINT_PATTERN,
        64,
        0,
        MAX_REVOKE_PER_REQUEST,
        "Key fingerprints (hex, at most 512).",
    )
}

/// `GET /v1/clusters/{name}/governance` query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GovernanceQuery {
    /// First version listed (default 0, the genesis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// A member as a log entry records it, with its device chain as PEM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemberRecordView {
    /// Node name.
    pub node: String,
    /// Fingerprint of its device key D, hex (its member id).
    pub key_fingerprint: String,
    /// Device certificate (PEM).
    pub device_cert_pem: String,
    /// Cluster CA certificate (PEM).
    pub cluster_ca_pem: String,
    /// Device CA certificate (PEM).
    pub device_ca_pem: String,
    /// Attestation evidence format (0: none).
    pub evidence_format: u16,
    /// Attestation evidence, hex.
    pub evidence_hex: String,
    /// When it is admitted (Unix seconds; signed, within the approval window).
    pub admitted_at: u64,
}

/// What a governance entry changes, every field of it (what approvers sign).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GovChangeView {
    /// The first entry.
    Genesis {
        /// Governor key fingerprints, hex, sorted.
        governors: Vec<String>,
        /// Distinct governors needed.
        quorum: u8,
        /// The first members.
        members: Vec<MemberRecordView>,
        /// The platforms later members are admitted on (absent: none, until a
        /// `set_measurement_policy` entry).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        measurement_policy: Option<crate::MeasurementPolicyView>,
    },
    /// Admits a node.
    Admit {
        /// The new member.
        member: MemberRecordView,
    },
    /// Removes a member.
    Remove {
        /// Its device key fingerprint, hex.
        key_fingerprint: String,
        /// Why.
        reason: String,
    },
    /// Revokes admin and device keys.
    Revoke {
        /// Admin key fingerprints, hex, sorted.
        admins: Vec<String>,
        /// Device key fingerprints, hex, sorted.
        devices: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Replaces the governors.
    SetGovernors {
        /// Governor key fingerprints, hex, sorted.
        governors: Vec<String>,
        /// Distinct governors needed.
        quorum: u8,
    },
    /// Replaces the measurement policy nodes are admitted under.
    SetMeasurementPolicy {
        /// The new policy.
        policy: crate::MeasurementPolicyView,
    },
}

/// The terms of a `governance` request: the entry it appends to the cluster's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GovernanceTerms {
    /// Position of the entry (0: genesis).
    pub version: u64,
    /// Hash of the entry before it, hex (zeros for a genesis).
    pub prev: String,
    /// The change.
    pub change: GovChangeView,
}

/// A completed governance request: the log's new head, as a member's TEE signed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GovernanceResult {
    /// Id of the log's genesis, hex.
    pub genesis_id: String,
    /// Version of the entry applied.
    pub log_version: u64,
    /// Its hash (the log's head), hex.
    pub head: String,
    /// The node whose TEE answered.
    pub applied_by: String,
}

/// A current member of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    /// Node name.
    pub node: String,
    /// Fingerprint of its device key D, hex.
    pub key_fingerprint: String,
    /// Version of the entry that admitted it.
    pub admitted_version: u64,
    /// When it was admitted (Unix seconds).
    pub admitted_at: u64,
    /// Attestation evidence format it was admitted with (0: none).
    pub evidence_format: u16,
    /// Registered with the bridge and healthy (absent if the bridge did not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    /// When its device certificate expires (Unix seconds), when the bridge knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_not_after: Option<u64>,
}

/// A revoked key with the version of the entry that revoked it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RevokedView {
    /// Key fingerprint, hex.
    pub fingerprint: String,
    /// Version of the revoking entry.
    pub version: u64,
}

/// `GET /v1/clusters/{name}/members`: the cluster's governance state, from its log as a
/// member's TEE signed it and the cloud server verified it from the genesis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MembersView {
    /// Cluster name.
    pub cluster: String,
    /// Id of the log's genesis, hex (pin it: `custos tee provision --genesis`).
    pub genesis_id: String,
    /// Version of the last entry.
    pub version: u64,
    /// Hash of the last entry, hex.
    pub head: String,
    /// Governor key fingerprints, hex.
    pub governors: Vec<String>,
    /// Distinct governors needed for the next entry.
    pub quorum: u8,
    /// Current members.
    pub members: Vec<MemberView>,
    /// Revoked admin keys.
    pub revoked_admins: Vec<RevokedView>,
    /// Revoked device keys.
    pub revoked_devices: Vec<RevokedView>,
}

/// An approval carried by a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EntryApproverView {
    /// Admin common name.
    pub admin: String,
    /// Admin key fingerprint, hex.
    pub key_fingerprint: String,
}

/// One entry of a cluster's governance log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GovEntryView {
    /// Position (0: genesis).
    pub version: u64,
    /// Its hash, hex.
    pub hash: String,
    /// Hash of the entry before it, hex.
    pub prev: String,
    /// The request id the governors signed, hex.
    pub request_id: String,
    /// Expiry of its approvals (Unix seconds).
    pub expires_at: u64,
    /// The change.
    pub change: GovChangeView,
    /// Who approved it.
    pub approvers: Vec<EntryApproverView>,
}

/// `GET /v1/clusters/{name}/governance`: a page of the log from `since` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GovernanceLogView {
    /// Cluster name.
    pub cluster: String,
    /// Id of the log's genesis, hex.
    pub genesis_id: String,
    /// Version of the last entry of the log.
    pub version: u64,
    /// Hash of the last entry, hex.
    pub head: String,
    /// Entries from `since` on, in order (at most 256; ask again from the next version).
    pub entries: Vec<GovEntryView>,
}
