//! Approvers own their keys: `custos admin keygen` makes an admin's key on the admin's side —
//! a 0600 PKCS#8 file or a key generated on a PKCS#11 token — and writes the CSR the PKI
//! issues the certificate from (`custos pki sign-admin-csr`). `custos approve` signs with the
//! same file or token ([`KeySource`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use custos_pki::{admin_csr, AdminFolder, AdminKey, AdminSigner, FileKey, PkiError};

use crate::pkcs11::{PinSource, TokenError, TokenKey, TokenKeyOptions};

/// The PKCS#11 options shared by `custos admin keygen` and `custos approve`.
#[derive(clap::Args, Clone, Debug)]
pub struct TokenArgs {
    /// PKCS#11 module (shared library) of the admin's token, e.g.
    /// /usr/lib/softhsm/libsofthsm2.so; selects the token instead of a key file.
    #[arg(long, requires_all = ["pkcs11_token", "pkcs11_key"])]
    pub pkcs11_module: Option<PathBuf>,
    /// Label of the token.
    #[arg(long, requires = "pkcs11_module")]
    pub pkcs11_token: Option<String>,
    /// Label of the admin's key pair on the token.
    #[arg(long, requires = "pkcs11_module")]
    pub pkcs11_key: Option<String>,
    /// Environment variable holding the token's user PIN (never given on the command line).
    #[arg(long, default_value = "CUSTOS_PKCS11_PIN")]
    pub pkcs11_pin_env: String,
    /// File whose first line is the token's user PIN (instead of the environment variable).
    #[arg(long, requires = "pkcs11_module")]
    pub pkcs11_pin_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The token options, if a module was given.
    pub fn options(&self) -> Option<TokenKeyOptions> {
        let module = self.pkcs11_module.clone()?;
        Some(TokenKeyOptions {
            module,
            token: self.pkcs11_token.clone().unwrap_or_default(),
            key_label: self.pkcs11_key.clone().unwrap_or_default(),
            pin: match &self.pkcs11_pin_file {
                Some(f) => PinSource::File(f.clone()),
                None => PinSource::Env(self.pkcs11_pin_env.clone()),
            },
        })
    }
}

/// Failures of the admin key commands.
#[derive(Debug, thiserror::Error)]
pub enum AdminKeyError {
    /// The key file, CSR or certificate was refused or could not be read or written.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The PKCS#11 token refused or failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// File path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Where an admin's private key is.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// A PKCS#8 file made by `custos admin keygen` (owner-only, checked on load).
    File(PathBuf),
    /// A key pair on a PKCS#11 token.
    Token(TokenKeyOptions),
}

impl KeySource {
    /// Opens the key (loads the file, or logs in to the token).
    pub fn open(&self) -> Result<Arc<dyn AdminKey>, AdminKeyError> {
        Ok(match self {
            KeySource::File(path) => Arc::new(FileKey::load(path)?),
            KeySource::Token(opts) => Arc::new(TokenKey::open(opts)?),
        })
    }

    /// The admin's signer: this key joined with the chain file the PKI issued (admin
    /// certificate, then Admin CA); a chain of another key is refused.
    pub fn signer(&self, chain: &Path) -> Result<AdminSigner, AdminKeyError> {
        let chain_pem = std::fs::read_to_string(chain).map_err(|e| AdminKeyError::Io {
            path: chain.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(AdminSigner::from_chain_pem(self.open()?, &chain_pem)?)
    }
}

/// `custos admin …`.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum AdminCommand {
    /// Make an admin key — a 0600 file `<dir>/admin.key`, or a key pair generated on a
    /// PKCS#11 token with --pkcs11-… — and its CSR `<dir>/admin.csr` for the PKI.
    Keygen {
        /// Admin name (the certificate's common name; shown, never what identifies the admin).
        #[arg(long)]
        name: String,
        /// The admin's own folder (not the PKI's).
        #[arg(long)]
        dir: PathBuf,
        /// The PKCS#11 token to make the key on (instead of a key file).
        #[command(flatten)]
        token_key: TokenArgs,
    },
}

/// Runs `custos admin …`, printing what was made.
pub fn run(command: AdminCommand) -> Result<(), AdminKeyError> {
    match command {
        AdminCommand::Keygen {
            name,
            dir,
            token_key,
        } => {
            let token = token_key.options();
            let csr = keygen(&name, &dir, token.as_ref())?;
            match token {
                Some(t) => println!(
                    "made admin key {:?} on token {:?}; CSR {}",
                    t.key_label,
                    t.token,
                    csr.display()
                ),
                None => println!(
                    "made admin key {} (0600); CSR {}",
                    AdminFolder::new(&dir).key().display(),
                    csr.display()
                ),
            }
        }
    }
    Ok(())
}

/// `custos admin keygen`: makes admin `name`'s key — in `dir/admin.key` (0600), or on the
/// token when `token` is given — and writes its CSR to `dir/admin.csr`. Returns the CSR path.
pub fn keygen(
    name: &str,
    dir: &Path,
    token: Option<&TokenKeyOptions>,
) -> Result<PathBuf, AdminKeyError> {
    let folder = AdminFolder::new(dir);
    match token {
        None => {
            folder.keygen(name)?;
        }
        Some(opts) => {
            custos_pki::check_name(name)?;
            let key: Arc<dyn AdminKey> = Arc::new(TokenKey::generate(opts)?);
            let csr = admin_csr(name, key)?;
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(folder.csr(), csr))
                .map_err(|e| AdminKeyError::Io {
                    path: folder.csr().display().to_string(),
                    reason: e.to_string(),
                })?;
        }
    }
    Ok(folder.csr())
}
