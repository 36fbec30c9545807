//! AMD SEV-SNP attestation reports: a 1184-byte report signed (ECDSA P-384) by the chip's
//! VCEK, whose certificate is signed by the product's ASK, signed by its ARK. Parsing and the
//! signatures are the `sev` crate's (virtee, RustCrypto backend, no OpenSSL); the ARK and ASK
//! are sev's built-in copies, selected by the policy's pinned ARK fingerprint. sev checks no
//! certificate dates, so this module checks notBefore/notAfter of ARK, ASK and VCEK itself.

use sev::certs::snp::{builtin, ca, Certificate, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use crate::error::{check_validity, limit, sha256, AttestError};

/// SHA-256 of the DER of AMD's ARK-Milan (AMD KDS `/vcek/v1/Milan/cert_chain`).
pub const AMD_ARK_MILAN_SHA256: [u8; 32] =
    crate::hex32("69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd");
/// SHA-256 of the DER of AMD's ARK-Genoa, as built into sev 8.0.0.
pub const AMD_ARK_GENOA_SHA256: [u8; 32] =
    crate::hex32("4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1");
/// SHA-256 of the DER of AMD's ARK-Turin, as built into sev 8.0.0.
pub const AMD_ARK_TURIN_SHA256: [u8; 32] =
    crate::hex32("1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a");

/// The size of an SEV-SNP attestation report (SNP ABI, MSG_REPORT_RSP body).
pub const SNP_REPORT_LEN: usize = 1184;
/// The signed part of the report (bytes 0..0x2A0, SNP ABI).
const SIGNED_LEN: usize = 0x2a0;
/// Largest VCEK certificate accepted (AMD's are ~1.4 KiB).
pub const MAX_VCEK_CERT: usize = 16 * 1024;

/// Which AMD root the report must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpPolicy {
    /// SHA-256 of the ARK's DER; one of the built-in ARKs must have it.
    pub ark_sha256: [u8; 32],
}

impl SnpPolicy {
    /// AMD EPYC 7003 (Milan).
    pub fn milan() -> Self {
        SnpPolicy {
            ark_sha256: AMD_ARK_MILAN_SHA256,
        }
    }

    /// AMD EPYC 9004 (Genoa).
    pub fn genoa() -> Self {
        SnpPolicy {
            ark_sha256: AMD_ARK_GENOA_SHA256,
        }
    }
}

/// A TCB version (security version numbers of the firmware components).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpTcb {
    /// PSP bootloader SVN.
    pub bootloader: u8,
    /// PSP OS SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Lowest microcode patch level of all cores.
    pub microcode: u8,
    /// FMC SVN (Turin and later).
    pub fmc: Option<u8>,
}

impl From<sev::firmware::host::TcbVersion> for SnpTcb {
    fn from(t: sev::firmware::host::TcbVersion) -> Self {
        SnpTcb {
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
            fmc: t.fmc,
        }
    }
}

/// The verified content of an SEV-SNP report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpEvidence {
    /// Report format version.
    pub version: u32,
    /// The launch measurement.
    pub measurement: [u8; 48],
    /// The 64 bytes the guest asked to be signed.
    pub report_data: [u8; 64],
    /// Data the hypervisor provided at launch.
    pub host_data: [u8; 32],
    /// The guest policy (bit 19 = debugging allowed).
    pub policy: u64,
    /// The VMPL the report was requested from.
    pub vmpl: u32,
    /// The guest SVN.
    pub guest_svn: u32,
    /// The TCB the signing VCEK was derived for.
    pub reported_tcb: SnpTcb,
    /// The chip identifier (zero when masked).
    pub chip_id: [u8; 64],
}

impl SnpEvidence {
    /// Whether the guest policy allows a debugger (its memory is then readable by the host).
    pub fn debug_allowed(&self) -> bool {
        self.policy & (1 << 19) != 0
    }
}

/// Verifies a raw SEV-SNP report with its VCEK certificate (DER) at `now_unix` against `policy`.
pub fn verify(
    report: &[u8],
    vcek_der: &[u8],
    now_unix: u64,
    policy: &SnpPolicy,
) -> Result<SnpEvidence, AttestError> {
    limit("SEV-SNP report", report, SNP_REPORT_LEN)?;
    limit("VCEK certificate", vcek_der, MAX_VCEK_CERT)?;
    if report.len() != SNP_REPORT_LEN {
        return Err(AttestError::Malformed(format!(
            "SEV-SNP report of {} bytes, expected {SNP_REPORT_LEN}",
            report.len()
        )));
    }
    let (ark, ask) = builtin_ca(&policy.ark_sha256)?;
    let vcek = Certificate::from_der(vcek_der)
        .map_err(|e| AttestError::Malformed(format!("VCEK certificate: {e}")))?;
    let parsed = AttestationReport::from_bytes(report)
        .map_err(|e| AttestError::Malformed(format!("SEV-SNP report: {e}")))?;

    // ARK self-signed and ARK → ASK (built in, so a failure is a broken build), then ASK → VCEK:
    // a VCEK the pinned product's ASK did not sign is not under the pinned root.
    let chain = ca::Chain { ark, ask };
    let ask = chain
        .verify()
        .map_err(|e| AttestError::ChainInvalid(format!("built-in AMD CA chain: {e}")))?;
    (ask, &vcek).verify().map_err(|e| {
        AttestError::WrongRoot(format!("VCEK not signed by the pinned root's ASK: {e}"))
    })?;
    for (name, der) in [
        ("ARK", chain.ark.to_der()),
        ("ASK", chain.ask.to_der()),
        ("VCEK", Ok(vcek_der.to_vec())),
    ] {
        let der = der.map_err(|e| AttestError::Malformed(format!("{name}: {e}")))?;
        check_validity(&der, now_unix)?;
    }
    (&vcek, &parsed)
        .verify()
        .map_err(|e| AttestError::SignatureInvalid(format!("SEV-SNP report: {e}")))?;
    // sev checks the signature over its re-encoding of the parsed report, not over the bytes
    // received, so a byte its parser dropped would go unauthenticated. sev 8 refuses non-zero
    // reserved bytes itself; this keeps "the bytes received are the bytes signed" true
    // whatever a later parser keeps.
    let reencoded = parsed
        .to_bytes()
        .map_err(|e| AttestError::Malformed(format!("SEV-SNP report re-encoding: {e}")))?;
    if reencoded[..SIGNED_LEN] != report[..SIGNED_LEN] {
        return Err(AttestError::Malformed(
            "SEV-SNP report has bytes its parser does not keep (reserved fields set)".into(),
        ));
    }

    Ok(SnpEvidence {
        version: parsed.version,
        measurement: parsed.measurement,
        report_data: parsed.report_data,
        host_data: parsed.host_data,
        policy: u64::from(parsed.policy),
        vmpl: parsed.vmpl,
        guest_svn: parsed.guest_svn,
        reported_tcb: parsed.reported_tcb.into(),
        chip_id: parsed.chip_id,
    })
}

/// The built-in ARK and ASK whose ARK has the pinned fingerprint.
fn builtin_ca(ark_sha256: &[u8; 32]) -> Result<(Certificate, Certificate), AttestError> {
    type Loader = fn() -> std::io::Result<Certificate>;
    let products: [(&str, Loader, Loader); 3] = [
        ("Milan", builtin::milan::ark, builtin::milan::ask),
        ("Genoa", builtin::genoa::ark, builtin::genoa::ask),
        ("Turin", builtin::turin::ark, builtin::turin::ask),
    ];
    for (name, ark, ask) in products {
        let broken = |e: std::io::Error| AttestError::ChainInvalid(format!("built-in {name}: {e}"));
        let ark = ark().map_err(broken)?;
        let der = ark.to_der().map_err(broken)?;
        if &sha256(&der) == ark_sha256 {
            return Ok((ark, ask().map_err(broken)?));
        }
    }
    Err(AttestError::RootNotPinned(format!(
        "no built-in AMD ARK has SHA-256 {}",
        hex::encode(ark_sha256)
    )))
}
