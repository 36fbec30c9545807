//! The platform evidence of an `Admit` entry, verified by this TEE against the cluster's
//! measurement policy (the ticket, nonce and platform rules are checked by every verifier of
//! the log, in custos-wire). Certificates are checked at the admission time the governors
//! signed, so a TEE that joins later re-checks old evidence as it was when it was admitted.

use custos_attest::{expect_binding, AttestError};
use custos_wire::governance::{
    admission_binding, AdmissionEvidence, GovError, GovState, MeasurementPolicy, MemberRecord,
    EVIDENCE_ADMISSION_V1, PLATFORM_NITRO, PLATFORM_SNP, PLATFORM_SOFTWARE, PLATFORM_TDX,
    PLATFORM_TPM,
};
use serde::{Deserialize, Serialize};

/// The document of an SEV-SNP guest: its report and the VCEK certificate that signs it (the
/// host fetches the certificate from AMD's key distribution service).
#[derive(Serialize, Deserialize)]
pub(crate) struct SnpDocument {
    /// The raw attestation report.
    pub report: Vec<u8>,
    /// The VCEK certificate (DER).
    pub vcek: Vec<u8>,
}

/// The document of a TDX trust domain: its quote and the DCAP collateral (JSON) the host
/// fetched for it.
#[derive(Serialize, Deserialize)]
pub(crate) struct TdxDocument {
    /// The quote.
    pub quote: Vec<u8>,
    /// `QuoteCollateralV3` as JSON.
    pub collateral: Vec<u8>,
}

/// Checks the platform evidence of `m`, to be admitted into `state`'s cluster.
pub(crate) fn check_evidence(state: &GovState, m: &MemberRecord) -> Result<(), GovError> {
    // No evidence, or no policy: the log's own rules (custos-wire) decide those.
    let Some(policy) = &state.measurement else {
        return Ok(());
    };
    if m.evidence.format != EVIDENCE_ADMISSION_V1 {
        return Ok(());
    }
    let ev = AdmissionEvidence::decode(&m.node, &m.evidence.document)?;
    let refuse = |e: AttestError| GovError::Evidence {
        node: m.node.clone(),
        code: e.code(),
        reason: e.to_string(),
    };
    let mismatch = |reason: String| GovError::Evidence {
        node: m.node.clone(),
        code: "measurement_mismatch",
        reason,
    };
    // The candidate attested over the key its certificate certifies; wire's admission check
    // refuses a record whose certified key is not the member's.
    let key = custos_pki::cert_public_key(&m.chain.device).map_err(|e| GovError::MemberChain {
        node: m.node.clone(),
        admitted_at: m.admitted_at,
        reason: e.to_string(),
    })?;
    let binding = admission_binding(&state.genesis_id, &ev.nonce, &key);
    let at = m.admitted_at;
    match ev.platform.as_str() {
        PLATFORM_SOFTWARE if policy.allow_software => Ok(()),
        PLATFORM_TPM => tpm(policy, &ev, &binding, at).map_err(|e| match e {
            Check::Attest(e) => refuse(e),
            Check::Mismatch(r) => mismatch(r),
        }),
        PLATFORM_NITRO => {
            let Some(want) = &policy.nitro else {
                return Err(not_admitted(m, &ev));
            };
            let n =
                custos_attest::verify_nitro(&ev.document, at, &custos_attest::NitroPolicy::aws())
                    .map_err(refuse)?;
            expect_binding(&n, &binding).map_err(refuse)?;
            for (i, v) in &want.pcrs {
                if n.pcrs.get(i) != Some(v) {
                    return Err(mismatch(format!("Nitro PCR{i} is not the policy's")));
                }
            }
            Ok(())
        }
        PLATFORM_SNP => {
            let Some(want) = &policy.snp else {
                return Err(not_admitted(m, &ev));
            };
            let d: SnpDocument = decode(m, &ev.document)?;
            let policy = custos_attest::SnpPolicy {
                ark_sha256: want.ark_sha256,
            };
            let s = custos_attest::verify_snp(&d.report, &d.vcek, at, &policy).map_err(refuse)?;
            expect_binding(&s, &binding).map_err(refuse)?;
            if s.measurement.as_slice() != want.measurement.as_slice() {
                return Err(mismatch(
                    "SEV-SNP launch measurement is not the policy's".into(),
                ));
            }
            if s.debug_allowed() && !want.allow_debug {
                return Err(mismatch("SEV-SNP guest policy allows debugging".into()));
            }
            // Only VMPL 0 is the guest itself; a migration agent could read its memory.
            if s.vmpl != 0 {
                return Err(mismatch(format!("SEV-SNP report from VMPL {}", s.vmpl)));
            }
            if s.policy & (1 << 18) != 0 {
                return Err(mismatch(
                    "SEV-SNP guest policy allows a migration agent (MIGRATE_MA)".into(),
                ));
            }
            Ok(())
        }
        PLATFORM_TDX => {
            let Some(want) = &policy.tdx else {
                return Err(not_admitted(m, &ev));
            };
            let d: TdxDocument = decode(m, &ev.document)?;
            let t = custos_attest::verify_tdx(
                &d.quote,
                &d.collateral,
                at,
                &custos_attest::TdxPolicy::intel(),
            )
            .map_err(refuse)?;
            expect_binding(&t, &binding).map_err(refuse)?;
            if t.mr_td.as_slice() != want.mr_td.as_slice() {
                return Err(mismatch("TDX MRTD is not the policy's".into()));
            }
            for (i, v) in &want.rtmrs {
                if t.rtmrs.get(usize::from(*i)).map(|r| r.as_slice()) != Some(v.as_slice()) {
                    return Err(mismatch(format!("TDX RTMR{i} is not the policy's")));
                }
            }
            if !want.tcb_statuses.contains(&t.tcb_status) {
                return Err(mismatch(format!(
                    "TDX TCB status {:?} is not among the policy's {:?}",
                    t.tcb_status, want.tcb_statuses
                )));
            }
            Ok(())
        }
        _ => Err(not_admitted(m, &ev)),
    }
}

fn not_admitted(m: &MemberRecord, ev: &AdmissionEvidence) -> GovError {
    GovError::PlatformNotAdmitted {
        node: m.node.clone(),
        platform: ev.platform.clone(),
    }
}

fn decode<'a, T: Deserialize<'a>>(m: &MemberRecord, bytes: &'a [u8]) -> Result<T, GovError> {
    postcard::from_bytes(bytes).map_err(|e| GovError::Evidence {
        node: m.node.clone(),
        code: "malformed",
        reason: format!("platform document: {e}"),
    })
}

/// Why a TPM quote was refused.
pub(super) enum Check {
    /// The verifier refused it.
    #[cfg_attr(not(feature = "tpm"), allow(dead_code))]
    Attest(AttestError),
    /// It verified but does not show what the ticket or policy requires.
    Mismatch(String),
}

#[cfg(feature = "tpm")]
fn tpm(
    policy: &MeasurementPolicy,
    ev: &AdmissionEvidence,
    binding: &[u8; 32],
    at: u64,
) -> Result<(), Check> {
    super::tpm::verify(policy, ev, binding, at)
}

#[cfg(not(feature = "tpm"))]
fn tpm(_: &MeasurementPolicy, _: &AdmissionEvidence, _: &[u8; 32], _: u64) -> Result<(), Check> {
    Err(Check::Mismatch(
        "this TEE core was built without TPM support (cargo feature `tpm`), so it cannot \
         verify a TPM quote"
            .into(),
    ))
}
