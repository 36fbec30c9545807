//! Issue 12, item 2: approvers own their keys. The PKI folder never holds an admin's private
//! key after a deployment is set up, and `custos pki` issues admin certificates from CSRs
//! without the key being anywhere it could read.

use std::path::{Path, PathBuf};

use custos::cluster::LinkTransport;
use custos::deployment::{Deployment, DeploymentOptions};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::common::exe;

/// Every file under `dir`, recursively (bounded depth: the deployment's folders are shallow).
fn files_under(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    assert!(
        depth < 16,
        "folder nesting deeper than any deployment makes"
    );
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, depth + 1, out);
        } else {
            out.push(path);
        }
    }
}

/// The public keys (SEC1 points) of the admin certificates (OU `custos-admin`) found anywhere
/// under `dir`.
fn admin_public_keys(dir: &Path) -> Vec<Vec<u8>> {
    let mut files = Vec::new();
    files_under(dir, 0, &mut files);
    let mut keys = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for block in pem::parse_many(&text).unwrap_or_default() {
            if block.tag() != "CERTIFICATE" {
                continue;
            }
            let (_, cert) = X509Certificate::from_der(block.contents()).unwrap();
            let is_admin = cert
                .subject()
                .iter_organizational_unit()
                .any(|ou| ou.as_str() == Ok(custos_pki::role::ADMIN));
            if is_admin {
                keys.push(cert.public_key().subject_public_key.data.to_vec());
            }
        }
    }
    keys
}

/// The public keys of every PEM private key found under `dir`.
fn private_keys_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    files_under(dir, 0, &mut files);
    let mut keys = Vec::new();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        if text.contains("PRIVATE KEY") {
            let key = rcgen::KeyPair::from_pem(&text).unwrap();
            keys.push((f, key.public_key_raw().to_vec()));
        }
    }
    keys
}

#[test]
fn pki_folder_holds_no_admin_private_key_after_deployment_setup() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::start(
        &exe(),
        dir.path(),
        &DeploymentOptions {
            clusters: vec![("dc1".into(), LinkTransport::Tcp)],
            nodes: 1,
            admins: vec!["alice".into(), "bob".into()],
            sync_interval_secs: 3600,
            audit_interval_secs: 0,
            cloud_db_url: None,
            webhooks: Vec::new(),
        },
    )
    .unwrap();
    let admins = admin_public_keys(&d.dir);
    assert!(admins.len() >= 2, "both admins are certified");
    let in_pki = private_keys_under(d.pki.path());
    assert!(
        !in_pki.is_empty(),
        "the CA keys are found, so the scan works"
    );
    for (path, public) in &in_pki {
        assert!(
            !admins.contains(public),
            "{} in the PKI folder is an admin's private key",
            path.display()
        );
    }
    // Each admin's key exists, outside the PKI folder, owner-only.
    let everywhere = private_keys_under(&d.dir);
    for admin in &admins {
        let (path, _) = everywhere
            .iter()
            .find(|(_, p)| p == admin)
            .expect("every admin's key is somewhere in the deployment");
        assert!(!path.starts_with(d.pki.path()), "{}", path.display());
    }
    drop(d);
}
