//! An admin's own signing key (issue 12, item 2: approvers own their keys).
//!
//! The key is made on the admin's side — a 0600 PKCS#8 file ([`FileKey`]) or a key on a
//! PKCS#11 token (the `custos` tool's backend) — and only its CSR goes to the PKI. The PKI
//! issues the certificate from the CSR ([`crate::PkiDir::sign_admin_csr`]) and never writes
//! or reads the private key. [`AdminSigner`] joins a key of either kind with its certificate.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::{check_name, pem_to_der, role, PkiError};

/// A P-256 signing key an admin holds: in a file, on a token, anywhere the admin chooses.
pub trait AdminKey: Send + Sync {
    /// The public key as an uncompressed SEC1 point (65 bytes).
    fn public_key(&self) -> &[u8];
    /// An ECDSA P-256 / SHA-256 signature (ASN.1 DER) over `message`.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError>;
}

/// An admin key in a PKCS#8 file readable by its owner only, made by `custos admin keygen`.
pub struct FileKey {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

fn key_err(path: &Path, e: impl std::fmt::Display) -> PkiError {
    PkiError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl FileKey {
    /// Makes a new P-256 key and writes it to `path` (PEM PKCS#8, mode 0600, created only if
    /// absent so an existing key is never replaced).
    pub fn generate(path: &Path) -> Result<Self, PkiError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|e| PkiError::Generate(e.to_string()))?;
        let pem = Zeroizing::new(crate::der_to_pem(pkcs8.as_ref(), "PRIVATE KEY"));
        let err = |e: std::io::Error| PkiError::Write {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    PkiError::AlreadyExists(path.display().to_string())
                } else {
                    err(e)
                }
            })?;
        // The mode given to open() is filtered by the umask; set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(err)?;
        f.write_all(pem.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        Self::from_pkcs8_pem(&pem)
    }

    /// Loads a key file, refusing one that group or others may read or write
    /// ([`PkiError::KeyFileExposed`]): a key others could read is no longer the admin's own.
    pub fn load(path: &Path) -> Result<Self, PkiError> {
        let mut f = fs::File::open(path).map_err(|e| key_err(path, e))?;
        // The opened file's own metadata: no window between the check and the read.
        let meta = f.metadata().map_err(|e| key_err(path, e))?;
        if !meta.is_file() {
            return Err(key_err(path, "not a regular file"));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PkiError::KeyFileExposed {
                path: path.display().to_string(),
                mode,
            });
        }
        let mut pem = Zeroizing::new(String::new());
        f.read_to_string(&mut pem).map_err(|e| key_err(path, e))?;
        Self::from_pkcs8_pem(&pem)
    }

    /// A key from PKCS#8 PEM held in memory (tests, scripted identities).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, PkiError> {
        let der = Zeroizing::new(pem_to_der(pem, "admin private key")?);
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, &rng).map_err(|e| {
                PkiError::Malformed {
                    what: "admin private key",
                    reason: e.to_string(),
                }
            })?;
        Ok(FileKey { key, rng })
    }
}

impl AdminKey for FileKey {
    fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        let sig = self
            .key
            .sign(&self.rng, message)
            .map_err(|e| PkiError::Sign(e.to_string()))?;
        Ok(sig.as_ref().to_vec())
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKey").finish_non_exhaustive()
    }
}

/// Lets rcgen sign a CSR with any [`AdminKey`] (a token key never leaves the token).
struct Remote {
    key: Arc<dyn AdminKey>,
    public: Vec<u8>,
    /// rcgen's error type carries no text: the key's own error is kept for the caller.
    error: Arc<Mutex<Option<String>>>,
}

impl rcgen::RemoteKeyPair for Remote {
    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.key.sign(msg).map_err(|e| {
            if let Ok(mut slot) = self.error.lock() {
                *slot = Some(e.to_string());
            }
            rcgen::Error::RemoteKeyError
        })
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// The CSR (PEM) of admin `name` for `key`, signed with that key: what the admin hands to
/// the PKI (`custos pki sign-admin-csr`).
pub fn admin_csr(name: &str, key: Arc<dyn AdminKey>) -> Result<String, PkiError> {
    role_csr(name, role::ADMIN, key)
}

/// The CSR (PEM) of `name` in role `ou` for `key`, signed with that key (the key may be on a
/// token: only its signature is asked for).
pub(crate) fn role_csr(name: &str, ou: &str, key: Arc<dyn AdminKey>) -> Result<String, PkiError> {
    check_name(name)?;
    let public = key.public_key().to_vec();
    let error = Arc::new(Mutex::new(None::<String>));
    let pair = KeyPair::from_remote(Box::new(Remote {
        key,
        public,
        error: error.clone(),
    }))
    .map_err(|e| PkiError::Generate(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Custos");
    dn.push(DnType::OrganizationalUnitName, ou);
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&pair).map_err(|e| {
        let detail = error
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .unwrap_or_else(|| e.to_string());
        PkiError::Sign(format!("the key did not sign the CSR: {detail}"))
    })?;
    csr.pem().map_err(|e| PkiError::Generate(e.to_string()))
}

/// SHA-256 of a certified public key's SubjectPublicKeyInfo: how an admin is identified
/// (two certificates of the same key are the same admin, whatever their subjects).
pub fn key_fingerprint(spki_der: &[u8]) -> [u8; 32] {
    Sha256::digest(spki_der).into()
}

/// The key fingerprint ([`key_fingerprint`]) of the admin certificate that opens a chain
/// file (the admin certificate, then its CA, as `custos pki sign-admin-csr` writes it):
/// how an admin is named in an approver group, read without the admin's key.
pub fn chain_key_fingerprint(chain_pem: &str) -> Result<[u8; 32], PkiError> {
    let malformed = |reason: String| PkiError::Malformed {
        what: "admin certificate chain",
        reason,
    };
    let blocks = ::pem::parse_many(chain_pem).map_err(|e| malformed(e.to_string()))?;
    let first = blocks
        .first()
        .ok_or_else(|| malformed("no PEM block".into()))?;
    cert_key_fingerprint(first.contents())
}

/// The key fingerprint ([`key_fingerprint`]) of the key a certificate (DER) certifies: an
/// admin's identity, or a device's member id (the key a wallet creation's executor is
/// named by). The certificate is parsed, not verified.
pub fn cert_key_fingerprint(cert_der: &[u8]) -> Result<[u8; 32], PkiError> {
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| PkiError::Malformed {
        what: "certificate",
        reason: e.to_string(),
    })?;
    Ok(key_fingerprint(cert.public_key().raw))
}

/// The public key a certificate (DER) certifies, as its SubjectPublicKeyInfo holds it (for an
/// EC key the SEC1 point): what checks a signature of a device named by its key
/// fingerprint. The certificate is parsed, not verified.
pub fn cert_public_key(cert_der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| PkiError::Malformed {
        what: "certificate",
        reason: e.to_string(),
    })?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// An admin's key with its certificate chain, as `custos approve` signs with it.
pub struct AdminSigner {
    key: Arc<dyn AdminKey>,
    name: String,
    key_fingerprint: [u8; 32],
    /// Admin certificate (DER).
    pub cert_der: Vec<u8>,
    /// Admin CA certificate (DER) that issued it.
    pub admin_ca_der: Vec<u8>,
}

impl AdminSigner {
    /// Joins `key` with its certificate; refuses a certificate of another key
    /// ([`PkiError::KeyMismatch`]).
    pub fn new(
        key: Arc<dyn AdminKey>,
        cert_pem: &str,
        admin_ca_pem: &str,
    ) -> Result<Self, PkiError> {
        let cert_der = pem_to_der(cert_pem, "admin certificate")?;
        let (_, cert) = X509Certificate::from_der(&cert_der).map_err(|e| PkiError::Malformed {
            what: "admin certificate",
            reason: e.to_string(),
        })?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key() {
            return Err(PkiError::KeyMismatch);
        }
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let key_fingerprint = key_fingerprint(cert.public_key().raw);
        Ok(AdminSigner {
            key,
            name,
            key_fingerprint,
            cert_der: cert_der.clone(),
            admin_ca_der: pem_to_der(admin_ca_pem, "Admin CA certificate")?,
        })
    }

    /// Joins `key` with a chain file's text: the admin certificate, then the Admin CA
    /// certificate (what `custos pki sign-admin-csr` writes).
    pub fn from_chain_pem(key: Arc<dyn AdminKey>, chain_pem: &str) -> Result<Self, PkiError> {
        let blocks = ::pem::parse_many(chain_pem).map_err(|e| PkiError::Malformed {
            what: "admin certificate chain",
            reason: e.to_string(),
        })?;
        let [cert, ca] = &blocks[..] else {
            return Err(PkiError::Malformed {
                what: "admin certificate chain",
                reason: format!(
                    "{} PEM blocks; expected the admin certificate, then the Admin CA",
                    blocks.len()
                ),
            });
        };
        Self::new(key, &::pem::encode(cert), &::pem::encode(ca))
    }

    /// An admin whose PKCS#8 key (PEM) is held in memory (tests, scripted identities).
    pub fn from_pem(cert_pem: &str, key_pem: &str, admin_ca_pem: &str) -> Result<Self, PkiError> {
        Self::new(
            Arc::new(FileKey::from_pkcs8_pem(key_pem)?),
            cert_pem,
            admin_ca_pem,
        )
    }

    /// An admin from the key file `custos admin keygen` wrote (0600, checked) and the chain
    /// file the PKI issued.
    pub fn from_files(chain: &Path, key: &Path) -> Result<Self, PkiError> {
        let chain_pem = fs::read_to_string(chain).map_err(|e| key_err(chain, e))?;
        Self::from_chain_pem(Arc::new(FileKey::load(key)?), &chain_pem)
    }

    /// The common name of the certificate (shown to people; never what identifies the admin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the certified public key (SubjectPublicKeyInfo): the admin's identity.
    pub fn key_fingerprint(&self) -> [u8; 32] {
        self.key_fingerprint
    }

    /// ECDSA P-256 / SHA-256 signature (ASN.1 DER) over `message`, made by the admin's key.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        self.key.sign(message)
    }
}

impl std::fmt::Debug for AdminSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSigner")
            .field("name", &self.name)
            .field("key_fingerprint", &hex::encode(self.key_fingerprint))
            .finish_non_exhaustive()
    }
}

/// Creates `dir` owner-only if it is new: a key holder's folder is its alone; an existing
/// one keeps the mode its owner chose.
pub(crate) fn own_folder(dir: &Path) -> Result<(), PkiError> {
    if dir.exists() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PkiError::Write {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })
}

/// Where an admin keeps its files in a local deployment: `<dir>/admin.key` (0600),
/// `<dir>/admin.csr` and `<dir>/admin.crt` (chain) — the admin's own folder, never the PKI's.
#[derive(Clone, Debug)]
pub struct AdminFolder {
    dir: PathBuf,
}

impl AdminFolder {
    /// The admin folder `dir` (not created).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        AdminFolder { dir: dir.into() }
    }
    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }
    /// The private key file.
    pub fn key(&self) -> PathBuf {
        self.dir.join("admin.key")
    }
    /// The certificate signing request.
    pub fn csr(&self) -> PathBuf {
        self.dir.join("admin.csr")
    }
    /// The certificate chain (admin certificate, then Admin CA).
    pub fn chain(&self) -> PathBuf {
        self.dir.join("admin.crt")
    }

    /// Makes the admin's key file and CSR in this folder (created owner-only if new), as
    /// `custos admin keygen` does; returns the key and the CSR (PEM).
    pub fn keygen(&self, name: &str) -> Result<(Arc<FileKey>, String), PkiError> {
        check_name(name)?;
        let err = |e: std::io::Error| PkiError::Write {
            path: self.dir.display().to_string(),
            reason: e.to_string(),
        };
        own_folder(&self.dir)?;
        let key = Arc::new(FileKey::generate(&self.key())?);
        let csr = admin_csr(name, key.clone())?;
        fs::write(self.csr(), &csr).map_err(err)?;
        Ok((key, csr))
    }

    /// Local deployments (demo, `custos cluster up`, benchmarks, tests), where the admins and
    /// the operating company share one machine: the admin makes its key here
    /// ([`AdminFolder::keygen`]), the PKI issues from the CSR alone
    /// ([`crate::PkiDir::sign_admin_csr`]), and the chain is stored beside the key. The PKI
    /// side is handed the CSR text only.
    pub fn enroll(&self, name: &str, pki: &crate::PkiDir) -> Result<AdminSigner, PkiError> {
        let (key, csr) = self.keygen(name)?;
        let issued = pki.sign_admin_csr(&csr)?;
        fs::write(self.chain(), issued.chain_pem()).map_err(|e| PkiError::Write {
            path: self.chain().display().to_string(),
            reason: e.to_string(),
        })?;
        AdminSigner::from_chain_pem(key, &issued.chain_pem())
    }

    /// The admin's signer from this folder's key file (mode checked) and chain.
    pub fn signer(&self) -> Result<AdminSigner, PkiError> {
        AdminSigner::from_files(&self.chain(), &self.key())
    }
}
