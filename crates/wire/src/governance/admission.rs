//! Attestation-verified admission (issue 13, item 2): which platforms a cluster admits and what
//! their evidence must show ([`MeasurementPolicy`], approved by the governors like any entry),
//! and the challenge a member TEE issues to a node that asks to join ([`AdmissionTicket`]).
//!
//! The flow, one round trip through the candidate's own TEE:
//! 1. a member TEE signs a ticket for the candidate's device key with a fresh nonce. For a TPM
//!    the nonce travels only inside a credential that the candidate's TPM releases if the
//!    attestation key named in the ticket lives in the same TPM as the certified endorsement
//!    key (TPM2_ActivateCredential); for other platforms it is handed out in clear;
//! 2. the candidate's TEE attests over [`admission_binding`] (genesis, nonce, its device key)
//!    and returns [`AdmissionEvidence`], which the `Admit` entry carries as
//!    [`EVIDENCE_ADMISSION_V1`];
//! 3. every verifier of the log ([`super::GovState`]) checks the ticket: signed by a current
//!    member, for this cluster and this key, unexpired at admission, its nonce revealed and
//!    never used before in the log, and a platform the policy admits. The TEE core, which
//!    alone links the evidence verifiers, also verifies the platform's evidence itself
//!    against the policy before it applies the entry.
//!
//! Genesis members are the governors' own choice: their evidence is not checked.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{GovError, MAX_EVIDENCE};
use crate::field::put;
use crate::policy::{Rule, RULE_MEASUREMENT_POLICY};

/// Evidence format: none (admitted only where the policy allows the software platform).
pub const EVIDENCE_NONE: u16 = 0;
/// Evidence format: an encoded [`AdmissionEvidence`].
pub const EVIDENCE_ADMISSION_V1: u16 = 1;
/// Longest validity of a ticket, seconds: the admin proposes the entry right after the
/// candidate answered, so an hour is plenty, and an old answer is not replayable.
pub const MAX_TICKET_LIFETIME_SECS: u64 = 3600;
/// Longest time an admission's approvals may run past its ticket's expiry, seconds: the
/// evidence was fresh when the entry was proposed, and governors approve within a day, so an
/// answer withheld for days cannot be approved and applied later.
pub const MAX_APPROVAL_AFTER_TICKET_SECS: u64 = 24 * 3600;
/// Most PCRs, roots or statuses one platform's part of a policy lists.
pub const MAX_POLICY_ITEMS: usize = 24;
/// Domain separation tag of [`AdmissionTicket::message`].
pub const TICKET_DOMAIN: &[u8] = b"CUSTOS-ADMISSION-TICKET-V1\0";
/// Domain separation tag of [`nonce_hash`].
pub const NONCE_DOMAIN: &[u8] = b"CUSTOS-ADMISSION-NONCE-V1\0";
/// Domain separation tag of [`admission_binding`].
pub const BINDING_DOMAIN: &[u8] = b"CUSTOS-ADMISSION-BINDING-V1\0";
/// Platform name of the software development stand-in.
pub const PLATFORM_SOFTWARE: &str = "software";
/// Platform name of a TPM 2.0 (physical, or a confidential VM's vTPM).
pub const PLATFORM_TPM: &str = "tpm";
/// Platform name of an AWS Nitro enclave.
pub const PLATFORM_NITRO: &str = "nitro";
/// Platform name of an AMD SEV-SNP guest.
pub const PLATFORM_SNP: &str = "sev-snp";
/// Platform name of an Intel TDX trust domain.
pub const PLATFORM_TDX: &str = "tdx";
/// Length of a Nitro PCR, an SEV-SNP measurement and a TDX MRTD (SHA-384).
pub const MEASUREMENT_LEN: usize = 48;

/// Which platforms a cluster admits, and what each one's evidence must show. A platform
/// without an entry is not admitted.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeasurementPolicy {
    /// Nodes on the software development stand-in (no evidence) are admitted: a development
    /// or demonstration cluster only.
    pub allow_software: bool,
    /// TPM 2.0 quotes.
    pub tpm: Option<TpmMeasurement>,
    /// AWS Nitro attestation documents (the AWS root is pinned by the verifier).
    pub nitro: Option<NitroMeasurement>,
    /// AMD SEV-SNP reports.
    pub snp: Option<SnpMeasurement>,
    /// Intel TDX quotes (the Intel root is pinned by the verifier).
    pub tdx: Option<TdxMeasurement>,
}

/// What a TPM quote must show.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TpmMeasurement {
    /// SHA-256 of each accepted endorsement-key root certificate (the TPM manufacturer's CA;
    /// in tests `swtpm`'s local CA): sorted, distinct, 1..=[`MAX_POLICY_ITEMS`].
    pub ek_roots_sha256: Vec<[u8; 32]>,
    /// Expected SHA-256-bank PCR values, by strictly increasing index (0..=23), at least one.
    pub pcrs: Vec<(u8, [u8; 32])>,
}

/// What a Nitro attestation document must show.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NitroMeasurement {
    /// Expected PCR values (48 bytes each), by strictly increasing index (0..=31), at least
    /// one (PCR0: the enclave image).
    pub pcrs: Vec<(u8, Vec<u8>)>,
}

/// What an SEV-SNP report must show.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnpMeasurement {
    /// SHA-256 of the AMD root key certificate (ARK) of the accepted processor family.
    pub ark_sha256: [u8; 32],
    /// Expected launch measurement (48 bytes).
    pub measurement: Vec<u8>,
    /// Whether a guest whose policy allows debugging (its memory readable by the host) is
    /// admitted; never in production.
    pub allow_debug: bool,
}

/// What a TDX quote must show.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TdxMeasurement {
    /// Expected MRTD, the trust domain's initial contents (48 bytes): the firmware only.
    pub mr_td: Vec<u8>,
    /// Expected run-time measurement registers (48 bytes each), by strictly increasing index
    /// (0..=3), RTMR1 and RTMR2 at least: the kernel, its command line and initrd, which MRTD
    /// does not cover (stock firmware would admit any code otherwise).
    pub rtmrs: Vec<(u8, Vec<u8>)>,
    /// Accepted TCB statuses (`UpToDate`, `SWHardeningNeeded`, ...): sorted, distinct,
    /// 1..=[`MAX_POLICY_ITEMS`].
    pub tcb_statuses: Vec<String>,
}

fn bad(reason: impl Into<String>) -> GovError {
    GovError::MeasurementPolicy(reason.into())
}

fn increasing<T>(what: &str, items: &[(u8, T)], max_index: u8) -> Result<(), GovError> {
    if items.is_empty() || items.len() > MAX_POLICY_ITEMS {
        return Err(bad(format!(
            "{what}: {} entries, 1..={MAX_POLICY_ITEMS}",
            items.len()
        )));
    }
    if let Some((i, _)) = items.iter().find(|(i, _)| *i > max_index) {
        return Err(bad(format!("{what}: index {i} above {max_index}")));
    }
    if items.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(bad(format!("{what}: indexes not strictly increasing")));
    }
    Ok(())
}

fn sorted_set<T: Ord>(what: &str, items: &[T]) -> Result<(), GovError> {
    if items.is_empty() || items.len() > MAX_POLICY_ITEMS {
        return Err(bad(format!(
            "{what}: {} entries, 1..={MAX_POLICY_ITEMS}",
            items.len()
        )));
    }
    if items.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad(format!("{what}: not sorted and distinct")));
    }
    Ok(())
}

fn measurement(what: &str, m: &[u8]) -> Result<(), GovError> {
    if m.len() != MEASUREMENT_LEN {
        return Err(bad(format!(
            "{what}: {} bytes, a measurement is {MEASUREMENT_LEN}",
            m.len()
        )));
    }
    Ok(())
}

impl MeasurementPolicy {
    /// Checks the policy's form: canonical lists, lengths, indexes.
    pub fn check(&self) -> Result<(), GovError> {
        if let Some(t) = &self.tpm {
            sorted_set("tpm EK roots", &t.ek_roots_sha256)?;
            increasing("tpm PCRs", &t.pcrs, 23)?;
        }
        if let Some(n) = &self.nitro {
            increasing("nitro PCRs", &n.pcrs, 31)?;
            for (i, v) in &n.pcrs {
                measurement(&format!("nitro PCR{i}"), v)?;
            }
            // PCR0 is the enclave image: without it any enclave would do.
            if n.pcrs[0].0 != 0 {
                return Err(bad("nitro PCRs: PCR0 (the enclave image) is required"));
            }
        }
        if let Some(s) = &self.snp {
            measurement("sev-snp measurement", &s.measurement)?;
        }
        if let Some(t) = &self.tdx {
            measurement("tdx MRTD", &t.mr_td)?;
            increasing("tdx RTMRs", &t.rtmrs, 3)?;
            for (i, v) in &t.rtmrs {
                measurement(&format!("tdx RTMR{i}"), v)?;
            }
            if ![1, 2].iter().all(|i| t.rtmrs.iter().any(|(j, _)| j == i)) {
                return Err(bad(
                    "tdx RTMRs: RTMR1 and RTMR2 (kernel, initrd) are required",
                ));
            }
            sorted_set("tdx TCB statuses", &t.tcb_statuses)?;
            if let Some(s) = t.tcb_statuses.iter().find(|s| s.is_empty() || s.len() > 64) {
                return Err(bad(format!("tdx TCB status {s:?}: 1..=64 bytes")));
            }
        }
        Ok(())
    }

    /// Whether nodes on `platform` may be admitted at all.
    pub fn admits(&self, platform: &str) -> bool {
        match platform {
            PLATFORM_SOFTWARE => self.allow_software,
            PLATFORM_TPM => self.tpm.is_some(),
            PLATFORM_NITRO => self.nitro.is_some(),
            PLATFORM_SNP => self.snp.is_some(),
            PLATFORM_TDX => self.tdx.is_some(),
            _ => false,
        }
    }

    /// The canonical encoding (postcard): a rule's body, and what approvers sign.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a policy always encodes")
    }

    /// Reads a policy from its canonical encoding: it must decode, pass [`Self::check`] and
    /// encode back to the same bytes (one encoding per policy).
    pub fn decode(body: &[u8]) -> Result<Self, GovError> {
        let p: MeasurementPolicy = postcard::from_bytes(body)
            .map_err(|e| bad(format!("not an encoded measurement policy: {e}")))?;
        if p.encode() != body {
            return Err(bad("not the canonical encoding"));
        }
        p.check()?;
        Ok(p)
    }

    /// The policy as a genesis rule.
    pub fn rule(&self) -> Rule {
        Rule {
            tag: RULE_MEASUREMENT_POLICY,
            body: self.encode(),
        }
    }

    /// The policy a genesis' (checked) rules carry, if any.
    pub fn from_rules(rules: &[Rule]) -> Result<Option<Self>, GovError> {
        rules
            .iter()
            .find(|r| r.tag == RULE_MEASUREMENT_POLICY)
            .map(|r| Self::decode(&r.body))
            .transpose()
    }

    /// The development policy of the demo and of tests: the software platform only.
    pub fn development() -> Self {
        MeasurementPolicy {
            allow_software: true,
            ..Default::default()
        }
    }
}

/// A TPM's attestation identity, as its host reads it: what a member TEE needs to make the
/// credential of a ticket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TpmIdentity {
    /// The endorsement key's certificate (DER), from the TPM's NV.
    pub ek_cert: Vec<u8>,
    /// The certificates from it up to the manufacturer's root, root last (DER).
    pub ek_chain: Vec<Vec<u8>>,
    /// The attestation key's public area (marshalled TPMT_PUBLIC).
    pub ak_public: Vec<u8>,
}

/// The credential of a TPM ticket: the nonce, encrypted so that only the TPM holding the
/// certified endorsement key releases it, and only to the attestation key named.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TicketCredential {
    /// Name of the attestation key the credential is for (0x000B ‖ SHA-256 of its public area).
    pub ak_name: Vec<u8>,
    /// SHA-256 of the endorsement key certificate it was made to.
    pub ek_cert_sha256: [u8; 32],
    /// The certificates the issuer chained that endorsement certificate through, up to a root
    /// the policy pins (DER, root last): every verifier checks the quote's endorsement key
    /// against the same chain.
    pub ek_chain: Vec<Vec<u8>>,
    /// TPM2B_ID_OBJECT body (the encrypted nonce and its HMAC).
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET body (the seed, RSA-OAEP to the endorsement key).
    pub encrypted_secret: Vec<u8>,
}

/// A member TEE's challenge to a node that asks to join.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdmissionTicket {
    /// The cluster.
    pub cluster: String,
    /// Its log's genesis id.
    pub genesis_id: [u8; 32],
    /// Device key fingerprint of the candidate.
    pub node_key: [u8; 32],
    /// Device key fingerprint of the issuing member.
    pub issuer: [u8; 32],
    /// [`nonce_hash`] of the nonce.
    pub nonce_hash: [u8; 32],
    /// Issue time (Unix seconds, the issuer's clock).
    pub issued_at: u64,
    /// Last admission time it covers; at most [`MAX_TICKET_LIFETIME_SECS`] after `issued_at`.
    pub expires_at: u64,
    /// For a TPM: the credential carrying the nonce.
    pub tpm: Option<TicketCredential>,
}

impl AdmissionTicket {
    /// The bytes the issuer signs: [`TICKET_DOMAIN`], then every field.
    pub fn message(&self) -> Vec<u8> {
        let mut out = TICKET_DOMAIN.to_vec();
        put(&mut out, self.cluster.as_bytes());
        put(&mut out, &self.genesis_id);
        put(&mut out, &self.node_key);
        put(&mut out, &self.issuer);
        put(&mut out, &self.nonce_hash);
        put(&mut out, &self.issued_at.to_be_bytes());
        put(&mut out, &self.expires_at.to_be_bytes());
        match &self.tpm {
            None => put(&mut out, &[0]),
            Some(c) => {
                put(&mut out, &[1]);
                put(&mut out, &c.ak_name);
                put(&mut out, &c.ek_cert_sha256);
                put(&mut out, &(c.ek_chain.len() as u32).to_be_bytes());
                for cert in &c.ek_chain {
                    put(&mut out, cert);
                }
                put(&mut out, &c.id_object);
                put(&mut out, &c.encrypted_secret);
            }
        }
        out
    }
}

/// A ticket and the issuer's signature of [`AdmissionTicket::message`] (ECDSA P-256 SHA-256,
/// DER, by its device key D).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignedTicket {
    /// The ticket.
    pub ticket: AdmissionTicket,
    /// The issuer's signature.
    pub signature: Vec<u8>,
}

/// What the candidate's TEE is given: the signed ticket, and the nonce in clear where it is
/// not sealed in the ticket's TPM credential.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdmissionChallenge {
    /// The signed ticket.
    pub ticket: SignedTicket,
    /// The nonce (absent for a TPM ticket).
    pub nonce: Option<[u8; 32]>,
}

/// The candidate's answer, carried by the `Admit` entry ([`EVIDENCE_ADMISSION_V1`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdmissionEvidence {
    /// The ticket it answers.
    pub ticket: SignedTicket,
    /// The nonce, revealed (its hash is in the ticket).
    pub nonce: [u8; 32],
    /// The candidate's platform ([`PLATFORM_TPM`], ...).
    pub platform: String,
    /// The platform's evidence over [`admission_binding`].
    pub document: Vec<u8>,
}

impl AdmissionEvidence {
    /// Its encoding, the `Admit` entry's evidence document.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("evidence always encodes")
    }

    /// Reads the evidence of node `node`'s `Admit` entry (at most [`MAX_EVIDENCE`] bytes).
    pub fn decode(node: &str, document: &[u8]) -> Result<Self, GovError> {
        if document.len() > MAX_EVIDENCE {
            return Err(GovError::TooLong {
                what: "evidence",
                len: document.len(),
                max: MAX_EVIDENCE,
            });
        }
        postcard::from_bytes(document).map_err(|e| GovError::Ticket {
            node: node.to_string(),
            reason: format!("undecodable admission evidence: {e}"),
        })
    }
}

/// The hash of a nonce a ticket commits to.
pub fn nonce_hash(nonce: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(NONCE_DOMAIN);
    h.update(nonce);
    h.finalize().into()
}

/// What the candidate's platform evidence binds: the log, the nonce and its device key D
/// (SEC1), so evidence answers one ticket, for one key, in one cluster.
pub fn admission_binding(genesis_id: &[u8; 32], nonce: &[u8; 32], device_key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(BINDING_DOMAIN);
    let mut fields = Vec::with_capacity(128);
    put(&mut fields, genesis_id);
    put(&mut fields, nonce);
    put(&mut fields, device_key);
    h.update(fields);
    h.finalize().into()
}
