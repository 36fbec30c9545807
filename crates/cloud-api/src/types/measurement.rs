//! A cluster's measurement policy over the API (issue 13): which platforms nodes are admitted
//! on and what their attestation evidence must show, every field shown to approvers.
//! Hashes and measurements are hex.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which platforms a cluster admits nodes on, and what their evidence must show. A platform
/// without an entry is not admitted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MeasurementPolicyView {
    /// Admit nodes on the software development stand-in, with no evidence: demonstration and
    /// test clusters only.
    pub allow_software: bool,
    /// TPM 2.0 quotes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmMeasurementView>,
    /// AWS Nitro attestation documents (chained to the AWS root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nitro: Option<NitroMeasurementView>,
    /// AMD SEV-SNP reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp: Option<SnpMeasurementView>,
    /// Intel TDX quotes (chained to Intel's DCAP root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdx: Option<TdxMeasurementView>,
}

/// One expected register value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterView {
    /// Register index.
    pub index: u8,
    /// Expected value, hex.
    #[schema(pattern = "^[0-9a-f]+$", max_length = 96)]
    pub value: String,
}

/// What a TPM quote must show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TpmMeasurementView {
    /// SHA-256 of each accepted endorsement-key root certificate, hex, sorted.
    pub ek_roots_sha256: Vec<String>,
    /// Expected SHA-256 PCR values, by increasing index.
    pub pcrs: Vec<RegisterView>,
}

/// What a Nitro attestation document must show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NitroMeasurementView {
    /// Expected PCR values (SHA-384), by increasing index.
    pub pcrs: Vec<RegisterView>,
}

/// What an SEV-SNP report must show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnpMeasurementView {
    /// SHA-256 of the AMD root key certificate (ARK), hex.
    pub ark_sha256: String,
    /// Expected launch measurement, hex (48 bytes).
    pub measurement: String,
    /// Whether a guest that allows debugging is admitted.
    pub allow_debug: bool,
}

/// What a TDX quote must show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TdxMeasurementView {
    /// Expected MRTD, hex (48 bytes).
    pub mr_td: String,
    /// Accepted TCB statuses, sorted (`UpToDate`, ...).
    pub tcb_statuses: Vec<String>,
}
