//! The admins who may sign in to the console: a folder the operator fills with what
//! `custos pki passkey certify --console <folder>` writes for each, `<name>.pem` (the
//! admin certificate, then the Admin CA) and `<name>.credential` (the passkey's credential
//! id, base64url, which the browser needs to find the passkey). Read at each use, so that
//! adding an admin needs no restart and removing one ends their sessions.

use std::io::Read;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::{Console, ConsoleError};

/// Largest chain file read (two certificates).
const MAX_CHAIN: u64 = 8 * 1024;
/// Largest credential id file read (WebAuthn allows ids of up to 1023 bytes).
const MAX_CREDENTIAL: u64 = 2 * 1024;

/// An admin allowed to sign in, with their chain verified against the trust root.
pub(super) struct Admin {
    /// Certificate name.
    pub name: String,
    /// Admin certificate (PEM).
    pub cert_pem: String,
    /// Admin CA certificate (PEM).
    pub ca_pem: String,
    /// The passkey's credential id.
    pub credential_id: Vec<u8>,
    /// SHA-256 of the certified public key, hex: how approver groups name the admin.
    pub key_fingerprint: String,
}

impl Admin {
    /// The credential id as the script passes it to `navigator.credentials.get`.
    pub fn credential_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.credential_id)
    }
}

impl Console {
    /// Admin `name` of the admins folder: the chain verified now (trust root, validity) and
    /// certifying a passkey for this console's origin.
    pub(super) fn admin(&self, name: &str) -> Result<Admin, ConsoleError> {
        let refuse = |reason: String| ConsoleError::UnknownAdmin {
            name: name.chars().take(64).collect(),
            reason,
        };
        // The name becomes a file name: only what a certificate name may be.
        custos_pki::check_name(name).map_err(|e| refuse(e.to_string()))?;
        let dir = &self.config.admins;
        let chain = read_at_most(&dir.join(format!("{name}.pem")), MAX_CHAIN).map_err(&refuse)?;
        let credential = read_at_most(&dir.join(format!("{name}.credential")), MAX_CREDENTIAL)
            .map_err(&refuse)?;
        let credential_id = URL_SAFE_NO_PAD
            .decode(String::from_utf8_lossy(&credential).trim())
            .map_err(|e| refuse(format!("credential id: {e}")))?;
        if credential_id.is_empty() {
            return Err(refuse("empty credential id".into()));
        }
        let blocks = pem::parse_many(&chain).map_err(|e| refuse(format!("chain: {e}")))?;
        let [cert, ca] = blocks.as_slice() else {
            return Err(refuse(format!(
                "chain holds {} PEM blocks, not the admin certificate and the Admin CA",
                blocks.len()
            )));
        };
        let admin = self
            .cloud
            .verified_admin(cert.contents(), ca.contents())
            .map_err(refuse)?;
        match &admin.passkey {
            Some(b) if b.origin == self.config.origin => {}
            Some(b) => {
                return Err(refuse(format!(
                    "its passkey is certified for {}, not this console",
                    b.origin
                )))
            }
            None => return Err(refuse("its certificate is not a passkey's".into())),
        }
        if admin.identity.name != name {
            return Err(refuse(format!(
                "the certificate names {:?}",
                admin.identity.name
            )));
        }
        Ok(Admin {
            name: name.to_string(),
            cert_pem: custos_pki::der_to_pem(cert.contents(), "CERTIFICATE"),
            ca_pem: custos_pki::der_to_pem(ca.contents(), "CERTIFICATE"),
            credential_id,
            key_fingerprint: hex::encode(admin.identity.key),
        })
    }
}

fn read_at_most(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{}: more than {limit} bytes", path.display()));
    }
    Ok(bytes)
}
