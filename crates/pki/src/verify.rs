//! Chain verification with the Custos role rules on top of webpki.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use sha2::{Digest, Sha256};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{
    role, PkiError, EKU_ADMIN_APPROVAL_DER, EKU_BRIDGE_DER, EKU_DEALER_DER, EKU_RELAY_DER,
    EKU_VAULT_DEVICE_DER,
};

/// Largest certificate (DER) accepted anywhere; Custos certificates are well under 2 KiB.
pub const MAX_CERT_LEN: usize = 8 * 1024;

static ALGS: &[&dyn SignatureVerificationAlgorithm] = &[webpki::ring::ECDSA_P256_SHA256];

/// SHA-256 of a certificate's DER encoding.
pub fn cert_fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// A certificate that has not been checked yet (marker for APIs taking raw DER).
pub type Unverified<'a> = &'a [u8];

/// The identity an admin certificate proves once its chain verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminIdentity {
    /// Common name of the admin.
    pub name: String,
    /// DER of the subject name (shown; never enough to tell admins apart).
    pub subject: Vec<u8>,
    /// SHA-256 of the certified public key (SubjectPublicKeyInfo DER): who the admin is. Two
    /// certificates of one key are one admin, whatever their subjects.
    pub key: [u8; 32],
    /// SHA-256 of the admin certificate.
    pub fingerprint: [u8; 32],
}

/// An admin certificate whose chain to the pinned Root verified.
#[derive(Clone, Debug)]
pub struct VerifiedAdmin {
    /// Who it is.
    pub identity: AdminIdentity,
    /// The console its key was certified for, when the key is a WebAuthn passkey (the
    /// certificate's SubjectAltName URI): it approves only with assertions made there.
    pub passkey: Option<crate::webauthn::PasskeyBinding>,
    public_key: Vec<u8>,
    not_before: u64,
    not_after: u64,
}

impl VerifiedAdmin {
    /// Whether the admin certificate and its Admin CA are both within their validity
    /// periods at `now_unix`.
    pub fn valid_at(&self, now_unix: u64) -> bool {
        self.not_before <= now_unix && now_unix <= self.not_after
    }

    /// Verifies an ECDSA P-256 / SHA-256 signature (DER) by this admin over `message`.
    pub fn verify_signature(&self, message: &[u8], signature: &[u8]) -> Result<(), PkiError> {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.public_key,
        )
        .verify(message, signature)
        .map_err(|_| PkiError::BadSignature(format!("admin {:?}", self.identity.name)))
    }
}

/// A dealer certificate whose chain to the pinned Root verified (Root → Admin CA → dealer,
/// dealer EKU, dealer role). The identity fields mean what they mean for an admin.
#[derive(Clone, Debug)]
pub struct VerifiedDealer {
    /// Who it is (common name, subject, certificate fingerprint).
    pub identity: AdminIdentity,
    public_key: Vec<u8>,
    not_before: u64,
    not_after: u64,
}

impl VerifiedDealer {
    /// Whether the dealer certificate and its Admin CA are both within their validity
    /// periods at `now_unix`.
    pub fn valid_at(&self, now_unix: u64) -> bool {
        self.not_before <= now_unix && now_unix <= self.not_after
    }

    /// Verifies an ECDSA P-256 / SHA-256 signature (DER) by this dealer over `message`.
    pub fn verify_signature(&self, message: &[u8], signature: &[u8]) -> Result<(), PkiError> {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.public_key,
        )
        .verify(message, signature)
        .map_err(|_| PkiError::BadSignature(format!("dealer {:?}", self.identity.name)))
    }
}

/// The window in which every certificate of `certs` is valid: (latest notBefore, earliest
/// notAfter), Unix seconds. A verifier that caches a verified chain re-checks it with this.
pub fn validity_window(certs: &[&[u8]]) -> Result<(u64, u64), PkiError> {
    certs
        .iter()
        .map(|der| validity(der))
        .try_fold((0u64, u64::MAX), |(nb, na), v| {
            v.map(|(b, a)| (nb.max(b), na.min(a)))
        })
}

/// (notBefore, notAfter) of a certificate, Unix seconds.
fn validity(der: &[u8]) -> Result<(u64, u64), PkiError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Malformed {
        what: "certificate",
        reason: e.to_string(),
    })?;
    let v = cert.validity();
    Ok((
        v.not_before.timestamp().max(0) as u64,
        v.not_after.timestamp().max(0) as u64,
    ))
}

/// A device certificate with the two CA certificates above it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DeviceChain {
    /// The device (node) certificate, DER.
    pub device: Vec<u8>,
    /// The Cluster CA certificate, DER.
    pub cluster_ca: Vec<u8>,
    /// The Device CA certificate, DER.
    pub device_ca: Vec<u8>,
}

/// The identity a device certificate proves once its chain verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// Cluster the node belongs to (from its Cluster CA, cross-checked with its own subject).
    pub cluster: String,
    /// Node name (subject common name).
    pub node: String,
    /// Device key D public key, SEC1 uncompressed (65 bytes).
    pub public_key: Vec<u8>,
    /// SHA-256 of the device certificate.
    pub fingerprint: [u8; 32],
}

/// A pinned Root CA certificate and the checks that hang off it.
#[derive(Clone, Debug)]
pub struct TrustRoot {
    der: Vec<u8>,
}

/// Kinds of cluster member certificates issued by a Cluster CA.
#[derive(Clone, Copy)]
enum Member {
    Vault,
    Bridge,
    Relay,
}

/// An intermediate certificate and the check its subject role marker must pass.
type Intermediate<'a> = (&'a [u8], &'a dyn Fn(&str) -> bool);

struct Subject {
    cn: String,
    ou: String,
    raw: Vec<u8>,
    public_key: Vec<u8>,
    spki: Vec<u8>,
}

fn parse(der: &[u8], what: &'static str) -> Result<Subject, PkiError> {
    if der.len() > MAX_CERT_LEN {
        return Err(PkiError::Malformed {
            what,
            reason: format!("{} bytes exceeds the {MAX_CERT_LEN}-byte limit", der.len()),
        });
    }
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(PkiError::Malformed {
            what,
            reason: "trailing bytes after certificate".into(),
        });
    }
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let subject = cert.subject();
    let out = Subject {
        cn: first(&mut subject.iter_common_name()),
        ou: first(&mut subject.iter_organizational_unit()),
        raw: subject.as_raw().to_vec(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        spki: cert.public_key().raw.to_vec(),
    };
    Ok(out)
}

/// The passkey binding an admin certificate states in a SubjectAltName URI (at most one).
fn passkey_binding(der: &[u8]) -> Result<Option<crate::webauthn::PasskeyBinding>, PkiError> {
    let rejected = |reason: String| PkiError::ChainRejected {
        what: "admin",
        reason,
    };
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Malformed {
        what: "admin",
        reason: e.to_string(),
    })?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| rejected(format!("subject alternative name: {e}")))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Ok(None),
        [uri] => crate::webauthn::PasskeyBinding::from_uri(uri)
            .map(Some)
            .map_err(rejected),
        _ => Err(rejected("more than one passkey origin".into())),
    }
}

fn unix_time(now_unix: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(now_unix))
}

fn map_webpki(what: &'static str, e: webpki::Error) -> PkiError {
    match e {
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
            PkiError::NotValidNow {
                what,
                reason: format!("{e:?}"),
            }
        }
        other => PkiError::ChainRejected {
            what,
            reason: format!("{other:?}"),
        },
    }
}

impl TrustRoot {
    /// Accepts a Root CA certificate for pinning: it must parse, be self-signed and carry
    /// the Custos root role marker.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let subject = parse(der, "Root CA")?;
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::Malformed {
            what: "Root CA",
            reason: e.to_string(),
        })?;
        if subject.ou != role::ROOT || !cert.is_ca() {
            return Err(PkiError::ChainRejected {
                what: "Root CA",
                reason: format!("not a Custos Root CA (OU {:?})", subject.ou),
            });
        }
        cert.verify_signature(None)
            .map_err(|_| PkiError::BadSignature("Root CA self-signature".into()))?;
        Ok(TrustRoot { der: der.to_vec() })
    }

    /// The pinned certificate (DER).
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Verifies `ee` → `intermediates` → root with webpki, then checks that the path used
    /// exactly the given intermediates, each with the expected role marker.
    fn verify_path(
        &self,
        what: &'static str,
        ee: &[u8],
        intermediates: &[Intermediate<'_>],
        eku: &'static [u8],
        now_unix: u64,
    ) -> Result<(), PkiError> {
        parse(ee, what)?;
        let anchor_der = CertificateDer::from(self.der.as_slice());
        let anchor =
            webpki::anchor_from_trusted_cert(&anchor_der).map_err(|e| map_webpki("Root CA", e))?;
        let anchors = [anchor];
        let mut inter = Vec::with_capacity(intermediates.len());
        for (der, role_ok) in intermediates {
            let s = parse(der, "intermediate CA")?;
            if !role_ok(&s.ou) {
                return Err(PkiError::ChainRejected {
                    what,
                    reason: format!("intermediate {:?} has the wrong role {:?}", s.cn, s.ou),
                });
            }
            inter.push(CertificateDer::from(*der));
        }
        let ee_der = CertificateDer::from(ee);
        let cert = EndEntityCert::try_from(&ee_der).map_err(|e| map_webpki(what, e))?;
        let path = cert
            .verify_for_usage(
                ALGS,
                &anchors,
                &inter,
                unix_time(now_unix),
                KeyUsage::required(eku),
                None,
                None,
            )
            .map_err(|e| map_webpki(what, e))?;
        let used = path.intermediate_certificates().count();
        if used != intermediates.len() {
            return Err(PkiError::ChainRejected {
                what,
                reason: format!(
                    "path has {used} intermediate(s), a {what} certificate needs exactly {}",
                    intermediates.len()
                ),
            });
        }
        Ok(())
    }

    /// Verifies an admin certificate (Root → Admin CA → admin, admin-approval EKU) at
    /// `now_unix` and an ECDSA P-256 signature it made over `message`.
    pub fn verify_admin_signature(
        &self,
        admin: &[u8],
        admin_ca: &[u8],
        now_unix: u64,
        message: &[u8],
        signature: &[u8],
    ) -> Result<AdminIdentity, PkiError> {
        let verified = self.verify_admin(admin, admin_ca, now_unix)?;
        verified.verify_signature(message, signature)?;
        Ok(verified.identity)
    }

    /// Verifies an admin certificate chain at `now_unix`. The result can be kept (a TEE
    /// caches it) and reused while [`VerifiedAdmin::valid_at`] holds. A dealer certificate
    /// (same Admin CA, dealer EKU and role) is refused.
    pub fn verify_admin(
        &self,
        admin: &[u8],
        admin_ca: &[u8],
        now_unix: u64,
    ) -> Result<VerifiedAdmin, PkiError> {
        let (identity, public_key, not_before, not_after) = self.verify_admin_ca_leaf(
            "admin",
            admin,
            admin_ca,
            EKU_ADMIN_APPROVAL_DER,
            role::ADMIN,
            now_unix,
        )?;
        Ok(VerifiedAdmin {
            identity,
            passkey: passkey_binding(admin)?,
            public_key,
            not_before,
            not_after,
        })
    }

    /// Verifies a threshold-key dealer certificate chain (Root → Admin CA → dealer, dealer
    /// EKU, OU [`role::DEALER`]) at `now_unix`. An admin certificate is refused, as a dealer
    /// certificate is by [`TrustRoot::verify_admin`]: neither role can act as the other.
    pub fn verify_dealer(
        &self,
        dealer: &[u8],
        admin_ca: &[u8],
        now_unix: u64,
    ) -> Result<VerifiedDealer, PkiError> {
        let (identity, public_key, not_before, not_after) = self.verify_admin_ca_leaf(
            "dealer",
            dealer,
            admin_ca,
            EKU_DEALER_DER,
            role::DEALER,
            now_unix,
        )?;
        Ok(VerifiedDealer {
            identity,
            public_key,
            not_before,
            not_after,
        })
    }

    /// A leaf of the Admin CA with EKU `eku` and subject role `ou`: identity, public key and
    /// the validity window of leaf and CA together.
    fn verify_admin_ca_leaf(
        &self,
        what: &'static str,
        leaf: &[u8],
        admin_ca: &[u8],
        eku: &'static [u8],
        ou: &str,
        now_unix: u64,
    ) -> Result<(AdminIdentity, Vec<u8>, u64, u64), PkiError> {
        let is_admin_ca = |ou: &str| ou == role::ADMIN_CA;
        self.verify_path(what, leaf, &[(admin_ca, &is_admin_ca)], eku, now_unix)?;
        let s = parse(leaf, what)?;
        if s.ou != ou {
            return Err(PkiError::ChainRejected {
                what,
                reason: format!("subject role {:?} is not the {what} role", s.ou),
            });
        }
        let (not_before, not_after) = validity_window(&[leaf, admin_ca])?;
        Ok((
            AdminIdentity {
                name: s.cn,
                subject: s.raw,
                key: crate::key_fingerprint(&s.spki),
                fingerprint: cert_fingerprint(leaf),
            },
            s.public_key,
            not_before,
            not_after,
        ))
    }

    /// Verifies a vault device certificate: Root → Device CA → Cluster CA → device, device
    /// EKU, and (when given) that it belongs to `expected_cluster`.
    pub fn verify_device(
        &self,
        chain: &DeviceChain,
        expected_cluster: Option<&str>,
        now_unix: u64,
    ) -> Result<DeviceIdentity, PkiError> {
        self.verify_member(chain, Member::Vault, expected_cluster, now_unix)
    }

    /// Verifies a bridge server certificate (same path as a device, bridge EKU and role).
    /// A bridge certificate never passes [`TrustRoot::verify_device`], so a bridge can
    /// relay for a cluster but never receive its keys.
    pub fn verify_bridge(
        &self,
        chain: &DeviceChain,
        expected_cluster: Option<&str>,
        now_unix: u64,
    ) -> Result<DeviceIdentity, PkiError> {
        self.verify_member(chain, Member::Bridge, expected_cluster, now_unix)
    }

    /// Verifies an external relay certificate (same path as a device, relay EKU and role):
    /// what the bridge pins as the other end of the link, and the cloud server checks.
    pub fn verify_relay(
        &self,
        chain: &DeviceChain,
        expected_cluster: Option<&str>,
        now_unix: u64,
    ) -> Result<DeviceIdentity, PkiError> {
        self.verify_member(chain, Member::Relay, expected_cluster, now_unix)
    }

    fn verify_member(
        &self,
        chain: &DeviceChain,
        member: Member,
        expected_cluster: Option<&str>,
        now_unix: u64,
    ) -> Result<DeviceIdentity, PkiError> {
        let (what, eku, prefix) = match member {
            Member::Vault => ("device", EKU_VAULT_DEVICE_DER, role::DEVICE_PREFIX),
            Member::Bridge => ("bridge", EKU_BRIDGE_DER, role::BRIDGE_PREFIX),
            Member::Relay => ("external relay", EKU_RELAY_DER, role::RELAY_PREFIX),
        };
        let is_cluster_ca = |ou: &str| ou.starts_with(role::CLUSTER_CA_PREFIX);
        let is_device_ca = |ou: &str| ou == role::DEVICE_CA;
        self.verify_path(
            what,
            &chain.device,
            &[
                (&chain.cluster_ca, &is_cluster_ca),
                (&chain.device_ca, &is_device_ca),
            ],
            eku,
            now_unix,
        )?;
        let ca = parse(&chain.cluster_ca, "Cluster CA")?;
        let dev = parse(&chain.device, what)?;
        let ca_cluster = ca.ou.trim_start_matches(role::CLUSTER_CA_PREFIX);
        let Some(dev_cluster) = dev.ou.strip_prefix(prefix) else {
            return Err(PkiError::ChainRejected {
                what,
                reason: format!("subject role {:?} is not a {what}", dev.ou),
            });
        };
        if ca_cluster != dev_cluster {
            return Err(PkiError::ChainRejected {
                what,
                reason: format!(
                    "{what} names cluster {dev_cluster:?} but was issued by the CA of {ca_cluster:?}"
                ),
            });
        }
        if let Some(expected) = expected_cluster {
            if expected != ca_cluster {
                return Err(PkiError::WrongCluster {
                    expected: expected.to_string(),
                    found: ca_cluster.to_string(),
                });
            }
        }
        Ok(DeviceIdentity {
            cluster: ca_cluster.to_string(),
            node: dev.cn,
            public_key: dev.public_key,
            fingerprint: cert_fingerprint(&chain.device),
        })
    }

    /// Verifies a P-256 signature made by a device key over `message` (DER signature) using
    /// an already verified device identity.
    pub fn verify_device_signature(
        identity: &DeviceIdentity,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), PkiError> {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &identity.public_key,
        )
        .verify(message, signature)
        .map_err(|_| PkiError::BadSignature(format!("device {:?}", identity.node)))
    }
}
