//! A cluster's measurement policy over the API (issue 13): which platforms nodes are admitted
//! on and what their attestation evidence must show, every field shown to approvers.
//! Hashes and measurements are hex.

use custos_wire::governance::MAX_POLICY_ITEMS;
use serde::{Deserialize, Serialize};
use utoipa::openapi::Array;
use utoipa::ToSchema;

use super::governance::string_list;

fn root_list() -> Array {
    string_list(
        "^[0-9a-fA-F]{64}$",
        64,
        1,
        MAX_POLICY_ITEMS,
        "SHA-256 of each accepted endorsement-key root certificate, hex, sorted (1 to 24).",
    )
}

fn status_list() -> Array {
    string_list(
        "^[A-Za-z]{1,64}$",
        64,
        1,
        MAX_POLICY_ITEMS,
        "Accepted TCB statuses, sorted (`UpToDate`, ...; 1 to 24).",
    )
}

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
    #[schema(maximum = 31)]
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
    #[schema(schema_with = root_list)]
    pub ek_roots_sha256: Vec<String>,
    /// Expected SHA-256 PCR values, by increasing index.
    #[schema(min_items = 1, max_items = 24)]
    pub pcrs: Vec<RegisterView>,
}

/// What a Nitro attestation document must show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NitroMeasurementView {
    /// Expected PCR values (SHA-384), by increasing index.
    #[schema(min_items = 1, max_items = 24)]
    pub pcrs: Vec<RegisterView>,
}

/// What an SEV-SNP report must show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnpMeasurementView {
    /// SHA-256 of the AMD root key certificate (ARK), hex.
    #[schema(pattern = "^[0-9a-fA-F]{64}$", max_length = 64)]
    pub ark_sha256: String,
    /// Expected launch measurement, hex (48 bytes).
    #[schema(pattern = "^[0-9a-fA-F]{96}$", max_length = 96)]
    pub measurement: String,
    /// Whether a guest that allows debugging is admitted.
    pub allow_debug: bool,
}

/// What a TDX quote must show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TdxMeasurementView {
    /// Expected MRTD, hex (48 bytes).
    #[schema(pattern = "^[0-9a-fA-F]{96}$", max_length = 96)]
    pub mr_td: String,
    /// Expected RTMR values (SHA-384), by increasing index 0..=3, RTMR1 and RTMR2 at least.
    #[schema(min_items = 2, max_items = 4)]
    pub rtmrs: Vec<RegisterView>,
    /// Accepted TCB statuses, sorted (`UpToDate`, ...).
    #[schema(schema_with = status_list)]
    pub tcb_statuses: Vec<String>,
}
