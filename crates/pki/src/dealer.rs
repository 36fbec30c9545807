//! The threshold-key dealer's own key (as approvers own theirs, issue 12 item 2): the dealer
//! makes its P-256 key on its side — a 0600 file in its own folder ([`DealerFolder`]) — and
//! hands only the CSR to the PKI, which issues the dealer certificate from it
//! ([`PkiDir::sign_dealer_csr`]) and never writes or reads the dealer's private key.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::admin_key::{own_folder, role_csr};
use crate::issue::{dealer_ekus, gen_err, leaf_params, read, write_file};
use crate::{pem_to_der, role, AdminKey, FileKey, PkiDir, PkiError, TrustRoot, Validity};

/// A dealer certificate issued from a CSR: no private key in it.
#[derive(Clone, Debug)]
pub struct DealerCert {
    /// The dealer's name (the CSR's common name).
    pub name: String,
    /// The dealer certificate (PEM).
    pub cert_pem: String,
    /// The Admin CA certificate that issued it (PEM).
    pub admin_ca_pem: String,
}

impl DealerCert {
    /// The chain file the dealer keeps: the dealer certificate, then the Admin CA.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.admin_ca_pem)
    }
}

/// The CSR (PEM) of dealer `name` for `key`, signed with that key: what the dealer hands to
/// the PKI (`custos pki sign-dealer-csr`).
pub fn dealer_csr(name: &str, key: Arc<dyn AdminKey>) -> Result<String, PkiError> {
    role_csr(name, role::DEALER, key)
}

/// Issues a dealer certificate from the dealer's CSR, signed by the Admin CA in `pki`, with a
/// chosen validity window (tests make expired certificates): OU [`role::DEALER`], dealer EKU
/// only, so it never passes as an admin. Writes nothing.
///
/// The CSR goes through the checks every CSR does (size, P-256 with ECDSA SHA-256,
/// self-signature, name). The result is checked against the Root before it is returned: an
/// Admin CA made before the dealer role existed does not list the dealer EKU, and webpki
/// applies EKUs to every certificate of a path, so its dealer certificates could never
/// verify; such a PKI is refused with [`PkiError::ChainRejected`].
pub fn issue_dealer_from_csr_with_validity(
    pki: &PkiDir,
    csr_pem: &str,
    validity: Validity,
) -> Result<DealerCert, PkiError> {
    let (name, mut csr) = crate::csr::checked_p256_csr(csr_pem, "dealer CSR")?;
    let ca = pki.load_ca(&pki.admin_ca_base())?;
    let mut params = leaf_params(&name, role::DEALER, validity);
    params.extended_key_usages = dealer_ekus();
    csr.params = params;
    let cert = csr.signed_by(&ca.cert, &ca.key).map_err(gen_err)?;
    let root = TrustRoot::from_der(&pem_to_der(&pki.root_pem()?, "Root CA certificate")?)?;
    let admin_ca_pem = pki.admin_ca_pem()?;
    let admin_ca = pem_to_der(&admin_ca_pem, "Admin CA certificate")?;
    let now = OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    match root.verify_dealer(cert.der(), &admin_ca, now) {
        // A window chosen outside "now" (tests make expired certificates) is not the issue.
        Ok(_) | Err(PkiError::NotValidNow { .. }) => {}
        Err(e) => {
            return Err(PkiError::ChainRejected {
                what: "dealer",
                reason: format!(
                    "the Admin CA of this PKI cannot issue dealer certificates (it predates \
                     the dealer role; re-create the PKI): {e}"
                ),
            })
        }
    }
    Ok(DealerCert {
        name,
        cert_pem: cert.pem(),
        admin_ca_pem,
    })
}

impl PkiDir {
    /// `custos pki sign-dealer-csr`: issues a dealer certificate valid for one year from the
    /// dealer's CSR and records it (certificate only) under `dealers/<name>.crt`; a dealer of
    /// that name already recorded is refused. The dealer's private key is never read or
    /// written here.
    pub fn sign_dealer_csr(&self, csr_pem: &str) -> Result<DealerCert, PkiError> {
        let issued = issue_dealer_from_csr_with_validity(self, csr_pem, Validity::days(365))?;
        let crt = self.dealer_cert_file(&issued.name);
        if crt.exists() {
            return Err(PkiError::AlreadyExists(crt.display().to_string()));
        }
        write_file(&crt, issued.cert_pem.as_bytes(), 0o644)?;
        Ok(issued)
    }

    /// Where the PKI records the certificate it issued to dealer `name` (never a key).
    pub fn dealer_cert_file(&self, name: &str) -> PathBuf {
        self.dealer_base(name).with_extension("crt")
    }
}

/// The threshold-key dealer's signing key with its certificate chain, as the dealer program
/// uses it to sign share bundles. Its certificate passes [`TrustRoot::verify_dealer`] only.
pub struct DealerSigner {
    key: Arc<FileKey>,
    /// Dealer certificate (DER).
    pub cert_der: Vec<u8>,
    /// Admin CA certificate (DER) that issued it.
    pub admin_ca_der: Vec<u8>,
}

impl DealerSigner {
    /// Joins `key` with its certificate; refuses a certificate of another key
    /// ([`PkiError::KeyMismatch`]).
    pub fn new(key: Arc<FileKey>, cert_pem: &str, admin_ca_pem: &str) -> Result<Self, PkiError> {
        let cert_der = pem_to_der(cert_pem, "dealer certificate")?;
        let (_, cert) = X509Certificate::from_der(&cert_der).map_err(|e| PkiError::Malformed {
            what: "dealer certificate",
            reason: e.to_string(),
        })?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key() {
            return Err(PkiError::KeyMismatch);
        }
        Ok(DealerSigner {
            key,
            cert_der: cert_der.clone(),
            admin_ca_der: pem_to_der(admin_ca_pem, "Admin CA certificate")?,
        })
    }

    /// A dealer whose PKCS#8 key (PEM) is held in memory (tests).
    pub fn from_pem(cert_pem: &str, key_pem: &str, admin_ca_pem: &str) -> Result<Self, PkiError> {
        Self::new(
            Arc::new(FileKey::from_pkcs8_pem(key_pem)?),
            cert_pem,
            admin_ca_pem,
        )
    }

    /// Joins `key` with a chain file's text: the dealer certificate, then the Admin CA
    /// certificate (what `custos pki sign-dealer-csr` writes).
    pub fn from_chain_pem(key: Arc<FileKey>, chain_pem: &str) -> Result<Self, PkiError> {
        let blocks = ::pem::parse_many(chain_pem).map_err(|e| PkiError::Malformed {
            what: "dealer certificate chain",
            reason: e.to_string(),
        })?;
        let [cert, ca] = &blocks[..] else {
            return Err(PkiError::Malformed {
                what: "dealer certificate chain",
                reason: format!(
                    "{} PEM blocks; expected the dealer certificate, then the Admin CA",
                    blocks.len()
                ),
            });
        };
        Self::new(key, &::pem::encode(cert), &::pem::encode(ca))
    }

    /// A dealer from its key file (0600, checked) and the chain file the PKI issued.
    pub fn from_files(chain: &Path, key: &Path) -> Result<Self, PkiError> {
        Self::from_chain_pem(Arc::new(FileKey::load(key)?), &read(chain)?)
    }

    /// ECDSA P-256 / SHA-256 signature (ASN.1 DER) over `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key
            .sign(message)
            .expect("P-256 signing with a valid key cannot fail")
    }
}

impl std::fmt::Debug for DealerSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DealerSigner").finish_non_exhaustive()
    }
}

/// Where the dealer keeps its files: `<dir>/dealer.key` (0600), `<dir>/dealer.csr` and
/// `<dir>/dealer.crt` (chain) — the dealer's own folder, never the PKI's.
#[derive(Clone, Debug)]
pub struct DealerFolder {
    dir: PathBuf,
}

impl DealerFolder {
    /// The dealer folder `dir` (not created).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DealerFolder { dir: dir.into() }
    }
    /// The private key file.
    pub fn key(&self) -> PathBuf {
        self.dir.join("dealer.key")
    }
    /// The certificate signing request.
    pub fn csr(&self) -> PathBuf {
        self.dir.join("dealer.csr")
    }
    /// The certificate chain (dealer certificate, then Admin CA).
    pub fn chain(&self) -> PathBuf {
        self.dir.join("dealer.crt")
    }

    /// Makes the dealer's key file and CSR in this folder (created owner-only if new), as
    /// `custos dealer keygen` does; returns the key and the CSR (PEM).
    pub fn keygen(&self, name: &str) -> Result<(Arc<FileKey>, String), PkiError> {
        crate::check_name(name)?;
        own_folder(&self.dir)?;
        let key = Arc::new(FileKey::generate(&self.key())?);
        let csr = dealer_csr(name, key.clone())?;
        fs::write(self.csr(), &csr).map_err(|e| PkiError::Write {
            path: self.csr().display().to_string(),
            reason: e.to_string(),
        })?;
        Ok((key, csr))
    }

    /// Local deployments and tests, where the dealer and the operating company share one
    /// machine: the dealer makes its key here ([`DealerFolder::keygen`]), the PKI issues from
    /// the CSR text alone ([`PkiDir::sign_dealer_csr`]), and the chain is stored beside the
    /// key.
    pub fn enroll(&self, name: &str, pki: &PkiDir) -> Result<DealerSigner, PkiError> {
        let (key, csr) = self.keygen(name)?;
        let issued = pki.sign_dealer_csr(&csr)?;
        fs::write(self.chain(), issued.chain_pem()).map_err(|e| PkiError::Write {
            path: self.chain().display().to_string(),
            reason: e.to_string(),
        })?;
        DealerSigner::from_chain_pem(key, &issued.chain_pem())
    }

    /// The dealer's signer from this folder's key file (mode checked) and chain.
    pub fn signer(&self) -> Result<DealerSigner, PkiError> {
        DealerSigner::from_files(&self.chain(), &self.key())
    }
}
