//! An admin key on a PKCS#11 token (smart card, HSM, SoftHSM2 in tests) through `cryptoki`:
//! the key is generated on the token, marked sensitive and not extractable, and signs there.
//!
//! The token's `CKM_ECDSA` signs a digest the caller computed and returns raw `r || s`; the
//! approval format is ECDSA P-256 / SHA-256 in ASN.1 DER, so the message is hashed here and
//! the signature re-encoded with `p256`. The PIN comes from an environment variable or a file,
//! never from the command line (where other users of the host could read it).

use std::path::PathBuf;
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use custos_pki::{AdminKey, PkiError};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// DER of the named curve prime256v1 (1.2.840.10045.3.1.7), the token's `CKA_EC_PARAMS`.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Where the token's PIN comes from.
#[derive(Clone, Debug)]
pub enum PinSource {
    /// The value of this environment variable.
    Env(String),
    /// The first line of this file.
    File(PathBuf),
}

/// Which token and key: the module, the token label, the key label and the PIN's source.
#[derive(Clone, Debug)]
pub struct TokenKeyOptions {
    /// The PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Label of the token holding the key.
    pub token: String,
    /// Label of the key pair on the token.
    pub key_label: String,
    /// Where the user PIN comes from.
    pub pin: PinSource,
}

/// Failures of the PKCS#11 backend, each naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The module could not be loaded or initialised.
    #[error("PKCS#11 module {module}: {reason}")]
    Module {
        /// Module path.
        module: String,
        /// Why.
        reason: String,
    },
    /// No token with this label is present.
    #[error("no PKCS#11 token labelled {0:?}")]
    NoToken(String),
    /// The PIN could not be read.
    #[error("PIN: {0}")]
    Pin(String),
    /// Logging in to the token failed (wrong PIN, locked token).
    #[error("login to token {token:?}: {reason}")]
    Login {
        /// Token label.
        token: String,
        /// Why.
        reason: String,
    },
    /// No key pair, or more than one, under this label.
    #[error("token {token:?} holds {found} private keys labelled {label:?}; expected exactly one")]
    KeyCount {
        /// Token label.
        token: String,
        /// Key label.
        label: String,
        /// How many were found.
        found: usize,
    },
    /// A key with this label already exists (keygen never replaces one).
    #[error("token {token:?} already holds a key labelled {label:?}")]
    KeyExists {
        /// Token label.
        token: String,
        /// Key label.
        label: String,
    },
    /// The key on the token is not a P-256 EC key, or its public point is malformed.
    #[error("key {label:?} is not a usable P-256 key: {reason}")]
    KeyType {
        /// Key label.
        label: String,
        /// Why.
        reason: String,
    },
    /// A PKCS#11 call failed.
    #[error("PKCS#11 {call}: {reason}")]
    Call {
        /// The operation.
        call: &'static str,
        /// The token's error.
        reason: String,
    },
}

fn call(call: &'static str) -> impl FnOnce(cryptoki::error::Error) -> TokenError {
    move |e| TokenError::Call {
        call,
        reason: e.to_string(),
    }
}

/// The first line of a PIN file that only its owner may read or write: a PIN others can
/// read is no longer the admin's alone (the same rule as key files).
fn read_pin_file(path: &std::path::Path) -> Result<Zeroizing<String>, TokenError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let cannot =
        |e: &dyn std::fmt::Display| TokenError::Pin(format!("cannot read {}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    // The opened file's own metadata: no window between the check and the read.
    let meta = f.metadata().map_err(|e| cannot(&e))?;
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_file() || mode & 0o077 != 0 {
        return Err(TokenError::Pin(format!(
            "{} must be a regular file only its owner may read or write (mode {mode:o}; \
             chmod 600)",
            path.display()
        )));
    }
    let mut text = Zeroizing::new(String::new());
    f.read_to_string(&mut text).map_err(|e| cannot(&e))?;
    Ok(Zeroizing::new(
        text.lines().next().unwrap_or_default().to_string(),
    ))
}

impl PinSource {
    fn read(&self) -> Result<AuthPin, TokenError> {
        let pin = match self {
            PinSource::Env(var) => Zeroizing::new(std::env::var(var).map_err(|_| {
                TokenError::Pin(format!(
                    "environment variable {var} is not set (or not UTF-8)"
                ))
            })?),
            PinSource::File(path) => read_pin_file(path)?,
        };
        if pin.is_empty() {
            return Err(TokenError::Pin("empty PIN".into()));
        }
        Ok(AuthPin::from(pin.as_str()))
    }
}

/// An admin key on a PKCS#11 token, logged in and ready to sign.
pub struct TokenKey {
    // One session used by one caller at a time (a Session is Send but not Sync).
    session: Mutex<Session>,
    private: ObjectHandle,
    public: Vec<u8>,
    // Keeps the module loaded as long as the session lives.
    _ctx: Pkcs11,
}

/// Loads the module, finds the token by label, opens a read-write session and logs in.
fn login(opts: &TokenKeyOptions) -> Result<(Pkcs11, Session), TokenError> {
    let module_err = |e: cryptoki::error::Error| TokenError::Module {
        module: opts.module.display().to_string(),
        reason: e.to_string(),
    };
    let ctx = Pkcs11::new(&opts.module).map_err(module_err)?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(module_err)?;
    let mut slot = None;
    for s in ctx.get_slots_with_token().map_err(call("C_GetSlotList"))? {
        let info = ctx.get_token_info(s).map_err(call("C_GetTokenInfo"))?;
        if info.label().trim_end() == opts.token {
            slot = Some(s);
            break;
        }
    }
    let slot = slot.ok_or_else(|| TokenError::NoToken(opts.token.clone()))?;
    let session = ctx.open_rw_session(slot).map_err(call("C_OpenSession"))?;
    let pin = opts.pin.read()?;
    session
        .login(UserType::User, Some(&pin))
        .map_err(|e| TokenError::Login {
            token: opts.token.clone(),
            reason: e.to_string(),
        })?;
    Ok((ctx, session))
}

fn key_template(label: &str, class: ObjectClass) -> Vec<Attribute> {
    vec![
        Attribute::Class(class),
        Attribute::KeyType(KeyType::EC),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// The 65-byte uncompressed point from `CKA_EC_POINT`, which tokens give DER-wrapped in an
/// OCTET STRING (PKCS#11 2.40) or, for some, raw.
fn uncompressed_point(label: &str, ec_point: &[u8]) -> Result<Vec<u8>, TokenError> {
    let point = match ec_point {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        raw if raw.len() == 65 => raw,
        other => {
            return Err(TokenError::KeyType {
                label: label.into(),
                reason: format!("EC point of {} bytes", other.len()),
            })
        }
    };
    if point[0] != 0x04 {
        return Err(TokenError::KeyType {
            label: label.into(),
            reason: "EC point is not uncompressed".into(),
        });
    }
    // A point off the curve would make every signature fail later; refuse it now.
    p256::PublicKey::from_sec1_bytes(point).map_err(|_| TokenError::KeyType {
        label: label.into(),
        reason: "EC point is not on P-256".into(),
    })?;
    Ok(point.to_vec())
}

impl TokenKey {
    /// `custos admin keygen --pkcs11-…`: generates a P-256 key pair on the token under
    /// `key_label` (private key sensitive, not extractable, sign-only); refuses a label that
    /// is already taken.
    pub fn generate(opts: &TokenKeyOptions) -> Result<Self, TokenError> {
        let (ctx, session) = login(opts)?;
        let existing = session
            .find_objects(&key_template(&opts.key_label, ObjectClass::PRIVATE_KEY))
            .map_err(call("C_FindObjects"))?;
        if !existing.is_empty() {
            return Err(TokenError::KeyExists {
                token: opts.token.clone(),
                label: opts.key_label.clone(),
            });
        }
        let label = opts.key_label.as_bytes().to_vec();
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(label.clone()),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Label(label.clone()),
            Attribute::Id(label),
        ];
        session
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(call("C_GenerateKeyPair"))?;
        Self::from_session(opts, ctx, session)
    }

    /// Opens the key pair labelled `key_label` on the token, logged in with the PIN.
    pub fn open(opts: &TokenKeyOptions) -> Result<Self, TokenError> {
        let (ctx, session) = login(opts)?;
        Self::from_session(opts, ctx, session)
    }

    fn from_session(
        opts: &TokenKeyOptions,
        ctx: Pkcs11,
        session: Session,
    ) -> Result<Self, TokenError> {
        let label = &opts.key_label;
        let one = |class: ObjectClass| -> Result<ObjectHandle, TokenError> {
            let found = session
                .find_objects(&key_template(label, class))
                .map_err(call("C_FindObjects"))?;
            match found[..] {
                [h] => Ok(h),
                _ => Err(TokenError::KeyCount {
                    token: opts.token.clone(),
                    label: label.clone(),
                    found: found.len(),
                }),
            }
        };
        let private = one(ObjectClass::PRIVATE_KEY)?;
        let public_handle = one(ObjectClass::PUBLIC_KEY)?;
        let attrs = session
            .get_attributes(
                public_handle,
                &[AttributeType::EcParams, AttributeType::EcPoint],
            )
            .map_err(call("C_GetAttributeValue"))?;
        let mut point = None;
        for a in attrs {
            match a {
                Attribute::EcParams(p) if p != P256_PARAMS => {
                    return Err(TokenError::KeyType {
                        label: label.clone(),
                        reason: "curve is not prime256v1".into(),
                    })
                }
                Attribute::EcPoint(p) => point = Some(uncompressed_point(label, &p)?),
                _ => {}
            }
        }
        let public = point.ok_or_else(|| TokenError::KeyType {
            label: label.clone(),
            reason: "the public key has no EC point".into(),
        })?;
        Ok(TokenKey {
            session: Mutex::new(session),
            private,
            public,
            _ctx: ctx,
        })
    }
}

impl AdminKey for TokenKey {
    fn public_key(&self) -> &[u8] {
        &self.public
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        let digest = Sha256::digest(message);
        let session = self
            .session
            .lock()
            .map_err(|_| PkiError::Sign("token session poisoned".into()))?;
        let raw = session
            .sign(&Mechanism::Ecdsa, self.private, &digest)
            .map_err(|e| PkiError::Sign(format!("PKCS#11 C_Sign: {e}")))?;
        let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|_| {
            PkiError::Sign(format!(
                "the token returned {} bytes, not an r || s P-256 signature",
                raw.len()
            ))
        })?;
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod pin_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::{read_pin_file, TokenError};

    #[test]
    fn a_pin_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "1234\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_pin_file(&path).unwrap_err();
            assert!(
                matches!(&e, TokenError::Pin(m) if m.contains("chmod 600")),
                "{mode:o}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_pin_file(&path).unwrap().as_str(), "1234");
    }
}
