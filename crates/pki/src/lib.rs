//! Custos PKI (patent FIG. 6–7): the operating company's certificate tooling and the chain
//! checks that both the TEE core and the servers rely on.
//!
//! Hierarchy, all ECDSA P-256 / SHA-256 X.509:
//!
//! ```text
//! Root CA ─┬─ Admin CA ─┬─ admin certificates        (approve requests that use a key)
//!          │            └─ dealer certificates       (sign threshold-key bundles)
//!          └─ Device CA ── Cluster CA (one per cluster) ── device certificates (key D)
//! ```
//!
//! Issuance uses `rcgen`; verification uses `rustls-webpki` (path building, validity period,
//! basic constraints, path length, key usage, extended key usage) with `ring`'s
//! assembly-backed P-256. On top of webpki's generic checks this crate enforces the Custos
//! roles: the exact chain depth of each kind of certificate, the role marker of every CA on
//! the path, and the cluster a device belongs to.

mod admin_cache;
mod admin_key;
pub mod clock;
mod csr;
mod dealer;
mod issue;
pub mod tls;
mod verify;
pub mod webauthn;

pub use admin_cache::AdminCache;
pub use admin_key::{
    admin_csr, cert_key_fingerprint, cert_public_key, chain_key_fingerprint, key_fingerprint,
    AdminFolder, AdminKey, AdminSigner, FileKey,
};
pub use csr::MAX_CSR_PEM;
pub use dealer::{
    dealer_csr, issue_dealer_from_csr_with_validity, DealerCert, DealerFolder, DealerSigner,
};
pub use issue::{
    issue_admin_from_csr_with_validity, issue_passkey_admin, AdminCert, IssuedKey, PkiDir, Service,
    Validity, DEVICE_CERT_DAYS, MAX_DEVICE_CERT_DAYS,
};
pub use verify::{
    cert_fingerprint, validity_window, AdminIdentity, DeviceChain, DeviceIdentity, TrustRoot,
    Unverified, VerifiedAdmin, VerifiedDealer,
};

/// Private enterprise arc used for Custos extended key usages.
///
/// `1.3.6.1.4.1.59999` is a placeholder arc for development deployments; an operator with
/// its own IANA enterprise number replaces it before issuing production certificates.
pub const CUSTOS_ARC: [u64; 7] = [1, 3, 6, 1, 4, 1, 59999];

/// EKU OID (as components) marking an admin certificate allowed to approve key use.
pub const EKU_ADMIN_APPROVAL: [u64; 9] = [1, 3, 6, 1, 4, 1, 59999, 1, 1];
/// EKU OID (as components) marking a vault node device certificate (key D).
pub const EKU_VAULT_DEVICE: [u64; 9] = [1, 3, 6, 1, 4, 1, 59999, 1, 2];

/// EKU OID (as components) marking a cluster's bridge server (internal relay).
pub const EKU_BRIDGE: [u64; 9] = [1, 3, 6, 1, 4, 1, 59999, 1, 3];

/// EKU OID (as components) marking a cluster's external relay (Internet side of the link).
pub const EKU_RELAY: [u64; 9] = [1, 3, 6, 1, 4, 1, 59999, 1, 4];

/// EKU OID (as components) marking the operating company's threshold-key dealer: it signs the
/// bundles that carry each cluster's key share (patent [0070]-[0072]). Issued by the Admin CA,
/// but never valid as an admin approval (and an admin certificate is never valid as a dealer).
pub const EKU_DEALER: [u64; 9] = [1, 3, 6, 1, 4, 1, 59999, 1, 5];

/// DER content octets of [`EKU_ADMIN_APPROVAL`] (what webpki compares).
pub const EKU_ADMIN_APPROVAL_DER: &[u8] =
    &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xd4, 0x5f, 0x01, 0x01];
/// DER content octets of [`EKU_VAULT_DEVICE`].
pub const EKU_VAULT_DEVICE_DER: &[u8] =
    &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xd4, 0x5f, 0x01, 0x02];
/// DER content octets of [`EKU_BRIDGE`].
pub const EKU_BRIDGE_DER: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xd4, 0x5f, 0x01, 0x03];
/// DER content octets of [`EKU_RELAY`].
pub const EKU_RELAY_DER: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xd4, 0x5f, 0x01, 0x04];
/// DER content octets of [`EKU_DEALER`].
pub const EKU_DEALER_DER: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xd4, 0x5f, 0x01, 0x05];

/// Organizational-unit role markers carried in every Custos CA subject; the verifier
/// requires the right marker at each position of a path so that, e.g., an Admin CA can
/// never stand in for a Cluster CA.
pub mod role {
    /// OU of the Root CA.
    pub const ROOT: &str = "custos-root-ca";
    /// OU of the Admin CA.
    pub const ADMIN_CA: &str = "custos-admin-ca";
    /// OU of the Device CA.
    pub const DEVICE_CA: &str = "custos-device-ca";
    /// OU prefix of a Cluster CA; the cluster name follows.
    pub const CLUSTER_CA_PREFIX: &str = "custos-cluster-ca:";
    /// OU prefix of a device certificate; the cluster name follows.
    pub const DEVICE_PREFIX: &str = "custos-device:";
    /// OU of an admin certificate.
    pub const ADMIN: &str = "custos-admin";
    /// OU of a threshold-key dealer certificate (issued by the Admin CA).
    pub const DEALER: &str = "custos-dealer";
    /// OU prefix of a bridge server certificate; the cluster name follows.
    pub const BRIDGE_PREFIX: &str = "custos-bridge:";
    /// OU prefix of an external relay certificate; the cluster name follows.
    pub const RELAY_PREFIX: &str = "custos-relay:";
}

/// Everything that can go wrong issuing or checking certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A name (cluster, admin, node) is not of the allowed form.
    #[error("invalid name {0:?}: use 1-48 characters from a-z, 0-9, '-', '_', '.'")]
    InvalidName(String),
    /// A PKI file is missing or unreadable.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// File path.
        path: String,
        /// Underlying reason.
        reason: String,
    },
    /// A PKI file could not be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// File path.
        path: String,
        /// Underlying reason.
        reason: String,
    },
    /// Refusing to overwrite existing CA material.
    #[error("{0} already exists; refusing to overwrite CA material")]
    AlreadyExists(String),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// A PEM/DER blob did not parse.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being parsed.
        what: &'static str,
        /// Parser message.
        reason: String,
    },
    /// The certificate chain did not verify (signature, validity period, constraints, EKU).
    #[error("{what} certificate chain rejected: {reason}")]
    ChainRejected {
        /// Which certificate kind was checked.
        what: &'static str,
        /// Verifier message (webpki error or Custos role check).
        reason: String,
    },
    /// The certificate has expired or is not yet valid.
    #[error("{what} certificate is outside its validity period ({reason})")]
    NotValidNow {
        /// Which certificate kind was checked.
        what: &'static str,
        /// webpki message.
        reason: String,
    },
    /// A device certificate belongs to another cluster.
    #[error("device certificate is for cluster {found:?}, expected {expected:?}")]
    WrongCluster {
        /// Cluster the verifier required.
        expected: String,
        /// Cluster named by the certificate chain.
        found: String,
    },
    /// A key file may be read or written by group or others: it is no longer the owner's own.
    #[error("{path} has mode {mode:o}: an admin key file must be readable by its owner only (chmod 600)")]
    KeyFileExposed {
        /// File path.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A certificate was joined with a key it does not certify.
    #[error("the certificate does not certify this key (its public key differs)")]
    KeyMismatch,
    /// A CSR's self-signature does not verify: its sender does not prove holding the key.
    #[error("CSR signature does not verify: {0}")]
    CsrSignature(String),
    /// A CSR's key or signature algorithm is not P-256 with ECDSA SHA-256.
    #[error("CSR key type refused: {0}")]
    CsrKeyType(String),
    /// A CSR's text is longer than any request the PKI signs ([`MAX_CSR_PEM`]).
    #[error("{what} of {len} bytes refused: at most {max} bytes")]
    CsrTooLarge {
        /// Which CSR (admin or device).
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A signing key (file or token) failed to sign.
    #[error("signing failed: {0}")]
    Sign(String),
    /// A device certificate lifetime outside 1..=`max` days (`custos pki sign-csr --days`).
    #[error("device certificate lifetime of {days} day(s) refused: choose 1 to {max} days")]
    DeviceLifetime {
        /// Lifetime asked for, in whole days.
        days: i64,
        /// Longest lifetime accepted ([`MAX_DEVICE_CERT_DAYS`]).
        max: u32,
    },
    /// A signature made with a certified key did not verify.
    #[error("signature by {0} does not verify")]
    BadSignature(String),
}

/// Checks the syntax of a cluster, node or admin name.
pub fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidName(name.to_string()))
    }
}

/// Decodes the first PEM block of `pem` into DER.
pub fn pem_to_der(pem: &str, what: &'static str) -> Result<Vec<u8>, PkiError> {
    let block = ::pem::parse(pem).map_err(|e| PkiError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    Ok(block.into_contents())
}

/// Encodes DER as a PEM block with the given tag.
pub fn der_to_pem(der: &[u8], tag: &str) -> String {
    ::pem::encode(&::pem::Pem::new(tag, der.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid_der(components: &[u64]) -> Vec<u8> {
        let mut out = vec![(components[0] * 40 + components[1]) as u8];
        for &c in &components[2..] {
            let mut stack = vec![(c & 0x7f) as u8];
            let mut v = c >> 7;
            while v > 0 {
                stack.push(((v & 0x7f) as u8) | 0x80);
                v >>= 7;
            }
            out.extend(stack.iter().rev());
        }
        out
    }

    #[test]
    fn eku_der_constants_match_components() {
        assert_eq!(oid_der(&EKU_ADMIN_APPROVAL), EKU_ADMIN_APPROVAL_DER);
        assert_eq!(oid_der(&EKU_VAULT_DEVICE), EKU_VAULT_DEVICE_DER);
        assert_eq!(oid_der(&EKU_BRIDGE), EKU_BRIDGE_DER);
        assert_eq!(oid_der(&EKU_RELAY), EKU_RELAY_DER);
        assert_eq!(oid_der(&EKU_DEALER), EKU_DEALER_DER);
    }

    #[test]
    fn names() {
        assert!(check_name("dc-1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("A").is_err());
        assert!(check_name("../x").is_err());
        assert!(check_name(&"a".repeat(49)).is_err());
    }
}
