//! The PKI's integration tests, one binary (each module was a test binary of its own).

mod admin_keys;
mod chains;
mod dealer;
mod device_csr;
mod device_lifetime;
mod passkeys;

use std::sync::Arc;

use custos_pki::{admin_csr, AdminSigner, FileKey, PkiDir};

/// Admin `name` made the way an admin does: the key in a 0600 file in a folder of the admin's
/// own (a temporary directory, outside the PKI), its CSR issued by the PKI.
pub fn own_admin(pki: &PkiDir, name: &str) -> AdminSigner {
    let admin_dir = tempfile::tempdir().unwrap();
    let key = Arc::new(FileKey::generate(&admin_dir.path().join("admin.key")).unwrap());
    let csr = admin_csr(name, key.clone()).unwrap();
    let cert = pki.sign_admin_csr(&csr).unwrap();
    AdminSigner::new(key, &cert.cert_pem, &cert.admin_ca_pem).unwrap()
}
