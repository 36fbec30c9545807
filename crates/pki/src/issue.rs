//! Issuance: the operating company's CA directory and its commands.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::{
    check_name, role, PkiError, EKU_ADMIN_APPROVAL, EKU_BRIDGE, EKU_DEALER, EKU_RELAY,
    EKU_VAULT_DEVICE,
};

/// A certificate validity window.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// First instant the certificate is valid.
    pub not_before: OffsetDateTime,
    /// Last instant the certificate is valid.
    pub not_after: OffsetDateTime,
}

/// Lifetime of a device certificate unless the operator chooses another
/// (`custos pki sign-csr --days`): short, so that a lost or retired device stops being
/// trusted on its own, and renewed with the same device key D (`custos node renew-cert`).
pub const DEVICE_CERT_DAYS: u32 = 90;

/// Longest device certificate lifetime accepted, in days (the CA/Browser Forum's old
/// ceiling): anything longer defeats short lifetimes and is most likely a typo.
pub const MAX_DEVICE_CERT_DAYS: u32 = 825;

impl Validity {
    /// A device certificate's window of `days` days, refused unless `days` is
    /// 1..=[`MAX_DEVICE_CERT_DAYS`] ([`PkiError::DeviceLifetime`]).
    pub fn device_days(days: u32) -> Result<Self, PkiError> {
        if days == 0 || days > MAX_DEVICE_CERT_DAYS {
            return Err(PkiError::DeviceLifetime {
                days: i64::from(days),
                max: MAX_DEVICE_CERT_DAYS,
            });
        }
        Ok(Validity::days(i64::from(days)))
    }

    /// Whole days from `not_before` to `not_after` (negative if they are reversed).
    fn whole_days(&self) -> i64 {
        (self.not_after - self.not_before).whole_days()
    }

    /// Valid from a minute ago (clock skew between hosts) for `days` days.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::minutes(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// A freshly issued key and certificate, PEM encoded. The key is zeroized on drop.
pub struct IssuedKey {
    /// Certificate (PEM).
    pub cert_pem: String,
    /// PKCS#8 private key (PEM), never printed.
    pub key_pem: Zeroizing<String>,
}

/// The CA directory of the operating company (`custos pki ...`).
///
/// Layout: `root-ca.{crt,key}`, `admin-ca.*`, `device-ca.*`, `clusters/<c>/cluster-ca.*`,
/// `admins/<name>.crt` and `dealers/<name>.crt` (certificates only: admins and the dealer
/// keep their keys),
/// `devices/<c>/<node>.crt`. Private keys are written 0600.
pub struct PkiDir {
    dir: PathBuf,
}

pub(crate) fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|e| PkiError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let err = |e: std::io::Error| PkiError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    // The mode given to open() is filtered by the umask; set it explicitly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

pub(crate) fn gen_err(e: rcgen::Error) -> PkiError {
    PkiError::Generate(e.to_string())
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("operating system random source failed");
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn dn(cn: &str, ou: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Custos");
    dn.push(DnType::OrganizationalUnitName, ou);
    dn.push(DnType::CommonName, cn);
    dn
}

/// Extended key usages a CA carries. webpki applies the EKU check to every certificate of
/// a path, so each CA lists the purposes it may issue for ("EKU chaining"): the Admin CA can
/// then never issue a device certificate, nor the Device CA an admin one.
fn admin_ekus() -> Vec<ExtendedKeyUsagePurpose> {
    vec![ExtendedKeyUsagePurpose::Other(EKU_ADMIN_APPROVAL.to_vec())]
}

pub(crate) fn dealer_ekus() -> Vec<ExtendedKeyUsagePurpose> {
    vec![ExtendedKeyUsagePurpose::Other(EKU_DEALER.to_vec())]
}

/// What the Admin CA may issue for: admins and the threshold-key dealer. Each leaf carries
/// exactly one of the two, so neither role can act as the other.
fn admin_ca_ekus() -> Vec<ExtendedKeyUsagePurpose> {
    let mut ekus = admin_ekus();
    ekus.extend(dealer_ekus());
    ekus
}

fn device_ekus() -> Vec<ExtendedKeyUsagePurpose> {
    vec![
        ExtendedKeyUsagePurpose::Other(EKU_VAULT_DEVICE.to_vec()),
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ]
}

fn service_ekus(eku: &[u64]) -> Vec<ExtendedKeyUsagePurpose> {
    vec![
        ExtendedKeyUsagePurpose::Other(eku.to_vec()),
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ]
}

/// What the Device CA and Cluster CAs may issue for: vault devices, bridge servers and
/// external relays.
fn cluster_member_ekus() -> Vec<ExtendedKeyUsagePurpose> {
    let mut ekus = device_ekus();
    ekus.push(ExtendedKeyUsagePurpose::Other(EKU_BRIDGE.to_vec()));
    ekus.push(ExtendedKeyUsagePurpose::Other(EKU_RELAY.to_vec()));
    ekus
}

/// The cluster services without a TEE that hold a certificate of the Cluster CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The bridge server (internal relay).
    Bridge,
    /// The external relay (Internet side of the link).
    Relay,
}

impl Service {
    /// Certificate common name, file name and reserved node name.
    pub fn name(self) -> &'static str {
        match self {
            Service::Bridge => "bridge",
            Service::Relay => "relay",
        }
    }

    fn role_prefix(self) -> &'static str {
        match self {
            Service::Bridge => role::BRIDGE_PREFIX,
            Service::Relay => role::RELAY_PREFIX,
        }
    }

    fn eku(self) -> &'static [u64] {
        match self {
            Service::Bridge => &EKU_BRIDGE,
            Service::Relay => &EKU_RELAY,
        }
    }

    /// TLS server name of the service of `cluster` (`<name>.<cluster>.custos`).
    pub fn server_name(self, cluster: &str) -> String {
        format!("{}.{cluster}.custos", self.name())
    }
}

fn ca_params(
    cn: &str,
    ou: &str,
    path_len: u8,
    validity: Validity,
    ekus: Vec<ExtendedKeyUsagePurpose>,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.extended_key_usages = ekus;
    p.distinguished_name = dn(cn, ou);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    p
}

pub(crate) fn leaf_params(cn: &str, ou: &str, validity: Validity) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn, ou);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    p
}

/// A CA loaded from disk, ready to sign.
pub(crate) struct Ca {
    pub(crate) cert: rcgen::Certificate,
    pub(crate) key: KeyPair,
}

/// Issues an admin certificate from the admin's CSR, signed by the Admin CA in `pki`, with a
/// chosen validity window (tests use this to make expired certificates). Writes nothing.
///
/// The CSR's signature and key type (P-256, signed with ECDSA SHA-256) are checked first
/// ([`PkiError::CsrSignature`], [`PkiError::CsrKeyType`]); only its public key and common
/// name (the admin's display name) are taken, every other field is set here. No private key
/// of the admin is involved: it stays where the admin made it.
pub fn issue_admin_from_csr_with_validity(
    pki: &PkiDir,
    csr_pem: &str,
    validity: Validity,
) -> Result<AdminCert, PkiError> {
    let (name, mut csr) = crate::csr::checked_p256_csr(csr_pem, "admin CSR")?;
    let ca = pki.load_ca(&pki.admin_ca_base())?;
    let mut params = leaf_params(&name, role::ADMIN, validity);
    params.extended_key_usages = admin_ekus();
    csr.params = params;
    let cert = csr.signed_by(&ca.cert, &ca.key).map_err(gen_err)?;
    Ok(AdminCert {
        name,
        cert_pem: cert.pem(),
        admin_ca_pem: pki.admin_ca_pem()?,
    })
}

/// Issues an admin certificate for a WebAuthn passkey (P-256, `spki_der`) bound to the
/// console at `origin` (SubjectAltName URI; [`crate::webauthn::PasskeyBinding`]), signed by
/// the Admin CA in `pki`. A passkey signs no CSR: the caller must have verified the key's
/// registration ceremony (its attestation over a challenge the caller chose) before asking.
/// Writes nothing.
pub fn issue_passkey_admin(
    pki: &PkiDir,
    name: &str,
    spki_der: &[u8],
    origin: &str,
    validity: Validity,
) -> Result<AdminCert, PkiError> {
    crate::check_name(name)?;
    let binding = crate::webauthn::PasskeyBinding::from_uri(origin).map_err(|reason| {
        PkiError::ChainRejected {
            what: "passkey",
            reason,
        }
    })?;
    let key = rcgen::SubjectPublicKeyInfo::from_der(spki_der).map_err(gen_err)?;
    if rcgen::PublicKeyData::algorithm(&key) != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(PkiError::ChainRejected {
            what: "passkey",
            reason: "the key is not P-256 (ES256)".into(),
        });
    }
    let ca = pki.load_ca(&pki.admin_ca_base())?;
    let mut params = leaf_params(name, role::ADMIN, validity);
    params.extended_key_usages = admin_ekus();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        binding.origin.clone().try_into().map_err(gen_err)?,
    )];
    let cert = params.signed_by(&key, &ca.cert, &ca.key).map_err(gen_err)?;
    Ok(AdminCert {
        name: name.to_string(),
        cert_pem: cert.pem(),
        admin_ca_pem: pki.admin_ca_pem()?,
    })
}

/// An admin certificate issued from a CSR: no private key in it.
#[derive(Clone, Debug)]
pub struct AdminCert {
    /// The admin's display name (the CSR's common name).
    pub name: String,
    /// The admin certificate (PEM).
    pub cert_pem: String,
    /// The Admin CA certificate that issued it (PEM).
    pub admin_ca_pem: String,
}

impl AdminCert {
    /// The chain file an admin keeps: the admin certificate, then the Admin CA.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.admin_ca_pem)
    }
}

impl PkiDir {
    /// Opens (does not create) a CA directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PkiDir { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn admin_ca_base(&self) -> PathBuf {
        self.dir.join("admin-ca")
    }
    fn device_ca_base(&self) -> PathBuf {
        self.dir.join("device-ca")
    }
    fn root_base(&self) -> PathBuf {
        self.dir.join("root-ca")
    }
    fn cluster_ca_base(&self, cluster: &str) -> PathBuf {
        self.dir.join("clusters").join(cluster).join("cluster-ca")
    }

    pub(crate) fn load_ca(&self, base: &Path) -> Result<Ca, PkiError> {
        let cert_pem = read(&base.with_extension("crt"))?;
        let key_pem = Zeroizing::new(read(&base.with_extension("key"))?);
        let key = KeyPair::from_pem(&key_pem).map_err(gen_err)?;
        let params = CertificateParams::from_ca_cert_pem(&cert_pem).map_err(gen_err)?;
        // rcgen needs a Certificate value to act as issuer; re-signing the parsed params
        // reproduces subject, key identifier and key usages, which is all an issuer needs.
        let cert = params.self_signed(&key).map_err(gen_err)?;
        Ok(Ca { cert, key })
    }

    fn save(&self, base: &Path, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
        write_file(&base.with_extension("key"), key_pem.as_bytes(), 0o600)?;
        write_file(&base.with_extension("crt"), cert_pem.as_bytes(), 0o644)
    }

    fn refuse_existing(&self, base: &Path) -> Result<(), PkiError> {
        let crt = base.with_extension("crt");
        if crt.exists() {
            return Err(PkiError::AlreadyExists(crt.display().to_string()));
        }
        Ok(())
    }

    /// `custos pki init`: creates the Root CA, Admin CA and Device CA.
    pub fn init(&self) -> Result<(), PkiError> {
        for base in [
            self.root_base(),
            self.admin_ca_base(),
            self.device_ca_base(),
        ] {
            self.refuse_existing(&base)?;
        }
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let root = ca_params(
            "Custos Root CA",
            role::ROOT,
            2,
            Validity::days(365 * 20),
            Vec::new(),
        )
        .self_signed(&root_key)
        .map_err(gen_err)?;
        self.save(&self.root_base(), &root.pem(), &root_key.serialize_pem())?;

        for (base, cn, ou, path_len, ekus) in [
            (
                self.admin_ca_base(),
                "Custos Admin CA",
                role::ADMIN_CA,
                0u8,
                admin_ca_ekus(),
            ),
            (
                self.device_ca_base(),
                "Custos Device CA",
                role::DEVICE_CA,
                1u8,
                cluster_member_ekus(),
            ),
        ] {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
            let cert = ca_params(cn, ou, path_len, Validity::days(365 * 10), ekus)
                .signed_by(&key, &root, &root_key)
                .map_err(gen_err)?;
            self.save(&base, &cert.pem(), &key.serialize_pem())?;
        }
        Ok(())
    }

    /// `custos pki cluster-ca <cluster>`: a Cluster CA signed by the Device CA.
    pub fn create_cluster_ca(&self, cluster: &str) -> Result<(), PkiError> {
        check_name(cluster)?;
        let base = self.cluster_ca_base(cluster);
        self.refuse_existing(&base)?;
        let device_ca = self.load_ca(&self.device_ca_base())?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let ou = format!("{}{}", role::CLUSTER_CA_PREFIX, cluster);
        let cert = ca_params(
            &format!("Custos Cluster CA {cluster}"),
            &ou,
            0,
            Validity::days(365 * 5),
            cluster_member_ekus(),
        )
        .signed_by(&key, &device_ca.cert, &device_ca.key)
        .map_err(gen_err)?;
        self.save(&base, &cert.pem(), &key.serialize_pem())
    }

    /// `custos pki sign-admin-csr`: issues an admin certificate valid for one year from the
    /// admin's CSR and records it (certificate only) under `admins/<name>.crt`; an admin of
    /// that name already recorded is refused. The admin's private key is never read or
    /// written here.
    pub fn sign_admin_csr(&self, csr_pem: &str) -> Result<AdminCert, PkiError> {
        let issued = issue_admin_from_csr_with_validity(self, csr_pem, Validity::days(365))?;
        self.record_admin(&issued)?;
        Ok(issued)
    }

    /// Records an issued admin certificate under `admins/<name>.crt`; an admin of that name
    /// already recorded is refused.
    pub fn record_admin(&self, issued: &AdminCert) -> Result<(), PkiError> {
        let crt = self.admin_cert_file(&issued.name);
        if crt.exists() {
            return Err(PkiError::AlreadyExists(crt.display().to_string()));
        }
        write_file(&crt, issued.cert_pem.as_bytes(), 0o644)
    }

    pub(crate) fn dealer_base(&self, name: &str) -> PathBuf {
        self.dir.join("dealers").join(name)
    }

    /// `custos pki sign-csr --cluster <c>`: turns a node's CSR into a device certificate
    /// from that cluster's Cluster CA, valid for [`DEVICE_CERT_DAYS`] days. The CSR is checked
    /// as an admin CSR is (size, P-256 key signed with ECDSA SHA-256, self-signature, name:
    /// [`PkiError::CsrTooLarge`], [`PkiError::CsrKeyType`], [`PkiError::CsrSignature`],
    /// [`PkiError::InvalidName`]); only its public key and common name (the node name) are
    /// taken, every other field is set by the CA.
    pub fn sign_device_csr(&self, cluster: &str, csr_pem: &str) -> Result<String, PkiError> {
        let validity = Validity::device_days(DEVICE_CERT_DAYS)?;
        self.sign_device_csr_with_validity(cluster, csr_pem, validity)
    }

    /// [`PkiDir::sign_device_csr`] with a chosen window (`custos pki sign-csr --days`; tests
    /// use it for certificates partly or wholly elapsed). A window that ends before it
    /// starts or spans more than [`MAX_DEVICE_CERT_DAYS`] days is refused
    /// ([`PkiError::DeviceLifetime`]) before the CSR is read.
    pub fn sign_device_csr_with_validity(
        &self,
        cluster: &str,
        csr_pem: &str,
        validity: Validity,
    ) -> Result<String, PkiError> {
        let days = validity.whole_days();
        if validity.not_after <= validity.not_before || days > i64::from(MAX_DEVICE_CERT_DAYS) {
            return Err(PkiError::DeviceLifetime {
                days,
                max: MAX_DEVICE_CERT_DAYS,
            });
        }
        check_name(cluster)?;
        let (node, mut csr) = crate::csr::checked_p256_csr(csr_pem, "device CSR")?;
        let ca = self.load_ca(&self.cluster_ca_base(cluster))?;
        if [Service::Bridge, Service::Relay]
            .iter()
            .any(|s| s.name() == node)
        {
            // `<service>.<cluster>.custos` is the TLS name of that cluster service.
            return Err(PkiError::InvalidName(format!(
                "{node} (reserved for the cluster's {node} service)"
            )));
        }
        let mut params = leaf_params(
            &node,
            &format!("{}{}", role::DEVICE_PREFIX, cluster),
            validity,
        );
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = device_ekus();
        params.subject_alt_names = vec![rcgen::SanType::DnsName(
            format!("{node}.{cluster}.custos")
                .try_into()
                .map_err(gen_err)?,
        )];
        csr.params = params;
        let cert = csr.signed_by(&ca.cert, &ca.key).map_err(gen_err)?;
        let out = self
            .dir
            .join("devices")
            .join(cluster)
            .join(format!("{node}.crt"));
        write_file(&out, cert.pem().as_bytes(), 0o644)?;
        Ok(cert.pem())
    }

    /// Issues (or re-issues) the certificate and key of a cluster's bridge server, signed
    /// by the Cluster CA. The bridge has no TEE: its key lives in a 0600 file beside it.
    pub fn issue_bridge(&self, cluster: &str) -> Result<IssuedKey, PkiError> {
        self.issue_service(cluster, Service::Bridge)
    }

    /// Issues (or re-issues) a cluster service certificate and key, signed by the Cluster
    /// CA, to `clusters/<cluster>/<service>.{crt,key}` (key 0600).
    pub fn issue_service(&self, cluster: &str, service: Service) -> Result<IssuedKey, PkiError> {
        check_name(cluster)?;
        let ca = self.load_ca(&self.cluster_ca_base(cluster))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = leaf_params(
            service.name(),
            &format!("{}{}", service.role_prefix(), cluster),
            Validity::days(365 * 2),
        );
        params.extended_key_usages = service_ekus(service.eku());
        params.subject_alt_names = vec![rcgen::SanType::DnsName(
            service.server_name(cluster).try_into().map_err(gen_err)?,
        )];
        let cert = params.signed_by(&key, &ca.cert, &ca.key).map_err(gen_err)?;
        let issued = IssuedKey {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        };
        self.save(
            &self.service_base(cluster, service),
            &issued.cert_pem,
            &issued.key_pem,
        )?;
        Ok(issued)
    }

    /// Paths of a cluster service's certificate and key.
    pub fn service_files(&self, cluster: &str, service: Service) -> (PathBuf, PathBuf) {
        let base = self.service_base(cluster, service);
        (base.with_extension("crt"), base.with_extension("key"))
    }

    fn service_base(&self, cluster: &str, service: Service) -> PathBuf {
        self.dir.join("clusters").join(cluster).join(service.name())
    }

    /// Root CA certificate (PEM).
    pub fn root_pem(&self) -> Result<String, PkiError> {
        read(&self.root_base().with_extension("crt"))
    }
    /// Admin CA certificate (PEM).
    pub fn admin_ca_pem(&self) -> Result<String, PkiError> {
        read(&self.admin_ca_base().with_extension("crt"))
    }
    /// Device CA certificate (PEM).
    pub fn device_ca_pem(&self) -> Result<String, PkiError> {
        read(&self.device_ca_base().with_extension("crt"))
    }
    /// A cluster's Cluster CA certificate (PEM).
    pub fn cluster_ca_pem(&self, cluster: &str) -> Result<String, PkiError> {
        check_name(cluster)?;
        read(&self.cluster_ca_base(cluster).with_extension("crt"))
    }
    /// Where the PKI records the certificate it issued to admin `name` (never a key).
    pub fn admin_cert_file(&self, name: &str) -> PathBuf {
        self.dir.join("admins").join(format!("{name}.crt"))
    }

    /// The recorded admin whose certificate certifies the key with fingerprint `key`, if
    /// any: a key certified twice would make two seats one approver.
    pub fn admin_holding_key(&self, key: &[u8; 32]) -> Result<Option<String>, PkiError> {
        let dir = self.dir.join("admins");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(PkiError::Read {
                    path: dir.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("crt") {
                continue;
            }
            if crate::chain_key_fingerprint(&read(&path)?)? == *key {
                let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
                return Ok(Some(name.to_string()));
            }
        }
        Ok(None)
    }
}
