//! The passkey registration ceremony of the PKI tooling (issue 17, step P1): an admin's
//! WebAuthn passkey becomes an admin key once the Admin CA certified it for one console.
//!
//! The PKI operator runs three steps, the admin's browser two, each handing a JSON file to
//! the other (the Admin CA may be offline):
//!
//! 1. [`begin`]: the operator picks the challenge (`custos pki passkey begin`): the ceremony
//!    state, kept by the operator, and the options for `navigator.credentials.create`.
//! 2. The browser creates the credential on the console's origin, user verified.
//! 3. [`prove`]: the operator checks the registration with `webauthn-rs` (client data type,
//!    challenge, origin, RP id hash, user-verified flag, attestation statement, ES256) and
//!    asks for an assertion by the new credential over a fresh challenge: the options for
//!    `navigator.credentials.get`.
//! 4. The browser signs it with the passkey, user verified.
//! 5. [`certify`]: the operator checks the assertion (proof of possession of the private key,
//!    whatever attestation the authenticator gave: passkeys synced between devices give
//!    none) and the Admin CA certifies the credential's P-256 key for the console's origin
//!    ([`custos_pki::issue_passkey_admin`]).
//!
//! Every step refuses by name ([`CeremonyError`]) and writes nothing on a refusal.

use custos_pki::{issue_passkey_admin, AdminCert, PkiDir, Validity};
use p256::pkcs8::EncodePublicKey;
use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{
    COSEAlgorithm, COSEKeyType, CreationChallengeResponse, ECDSACurve, Passkey,
    PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, Url, Uuid, Webauthn, WebauthnBuilder,
};

/// Largest browser response accepted (a registration with its attestation statement and
/// certificates is a few KiB).
pub const MAX_RESPONSE: usize = 64 * 1024;

/// A ceremony refused, by name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CeremonyError {
    /// The console origin is not an `https` origin with a domain.
    #[error("console origin {origin:?}: {reason}")]
    Origin {
        /// What was given.
        origin: String,
        /// Why it is refused.
        reason: String,
    },
    /// The state file is of another step (a registration given where an assertion is due).
    #[error("the ceremony of {name:?} is not at the {expected} step")]
    WrongStep {
        /// The admin.
        name: String,
        /// The step the call needs.
        expected: &'static str,
    },
    /// A browser response over [`MAX_RESPONSE`] or not JSON of the expected shape.
    #[error("{what}: {reason}")]
    Malformed {
        /// Which file.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// `webauthn-rs` refused the registration (origin, challenge, RP id, flags, attestation).
    #[error("registration refused: {0}")]
    Registration(String),
    /// `webauthn-rs` refused the assertion (another key, challenge, origin, user not verified).
    #[error("proof of possession refused: {0}")]
    Proof(String),
    /// The credential's key is not P-256 (ES256): the only key an admin certificate holds.
    #[error("the passkey's key is {0}, not P-256 (ES256)")]
    NotEs256(String),
    /// An admin of this name is already recorded in the PKI.
    #[error("an admin named {0:?} is already certified")]
    NameTaken(String),
    /// The key is already certified to an admin (the browser's answers carried another
    /// admin's passkey: one person would hold two seats of a group, as one approver).
    #[error("the passkey's key {fingerprint} is already certified to admin {holder:?}")]
    KeyTaken {
        /// Its fingerprint (hex).
        fingerprint: String,
        /// The admin it is certified to.
        holder: String,
    },
    /// The Admin CA refused to certify.
    #[error("certification: {0}")]
    Pki(#[from] custos_pki::PkiError),
}

/// Where a ceremony stands, as the operator keeps it between steps (a file of theirs: its
/// challenges are what the browser's answers are checked against).
#[derive(Serialize, Deserialize)]
pub struct Ceremony {
    /// The admin's certificate name.
    pub name: String,
    /// The console's origin the passkey is made on and certified for.
    pub origin: String,
    stage: Stage,
}

#[derive(Serialize, Deserialize)]
enum Stage {
    /// Waiting for the browser's registration.
    Registering(PasskeyRegistration),
    /// Registered; waiting for the assertion that proves possession.
    Proving {
        passkey: Box<Passkey>,
        authentication: PasskeyAuthentication,
    },
}

/// The relying party of `origin`: its host is the RP id.
fn relying_party(origin: &str) -> Result<Webauthn, CeremonyError> {
    let refuse = |reason: String| CeremonyError::Origin {
        origin: origin.into(),
        reason,
    };
    // The same rule the certificate applies (an https origin, nothing after the host).
    let binding = custos_pki::webauthn::PasskeyBinding::from_uri(origin).map_err(refuse)?;
    let url = Url::parse(&binding.origin).map_err(|e| refuse(e.to_string()))?;
    WebauthnBuilder::new(&binding.rp_id, &url)
        .and_then(|b| b.rp_name("Custos approvers' console").build())
        .map_err(|e| refuse(format!("not a relying party: {e}")))
}

/// Step 1: a new ceremony for admin `name` on the console at `origin`, and the options the
/// browser passes to `navigator.credentials.create` (ES256 only, user verification required).
pub fn begin(
    name: &str,
    origin: &str,
) -> Result<(Ceremony, CreationChallengeResponse), CeremonyError> {
    let rp = relying_party(origin)?;
    let (mut options, registration) = rp
        .start_passkey_registration(Uuid::new_v4(), name, name, None)
        .map_err(|e| CeremonyError::Registration(e.to_string()))?;
    // An admin certificate holds a P-256 key: ask for nothing else.
    options
        .public_key
        .pub_key_cred_params
        .retain(|p| p.alg == COSEAlgorithm::ES256 as i64);
    let ceremony = Ceremony {
        name: name.into(),
        origin: origin.into(),
        stage: Stage::Registering(registration),
    };
    Ok((ceremony, options))
}

fn parse<T: serde::de::DeserializeOwned>(
    json: &[u8],
    what: &'static str,
) -> Result<T, CeremonyError> {
    if json.len() > MAX_RESPONSE {
        return Err(CeremonyError::Malformed {
            what,
            reason: format!("{} bytes, at most {MAX_RESPONSE}", json.len()),
        });
    }
    serde_json::from_slice(json).map_err(|e| CeremonyError::Malformed {
        what,
        reason: e.to_string(),
    })
}

/// Step 3: checks the browser's registration (JSON of a `PublicKeyCredential` from
/// `create`) and asks the new credential for an assertion: the ceremony's next state and the
/// options for `navigator.credentials.get`.
pub fn prove(
    ceremony: Ceremony,
    registration_json: &[u8],
) -> Result<(Ceremony, RequestChallengeResponse), CeremonyError> {
    let Stage::Registering(state) = &ceremony.stage else {
        return Err(CeremonyError::WrongStep {
            name: ceremony.name,
            expected: "registration",
        });
    };
    let rp = relying_party(&ceremony.origin)?;
    let registration: RegisterPublicKeyCredential = parse(registration_json, "registration")?;
    let passkey = rp
        .finish_passkey_registration(&registration, state)
        .map_err(|e| CeremonyError::Registration(e.to_string()))?;
    es256_spki(&passkey)?;
    let (options, authentication) = rp
        .start_passkey_authentication(std::slice::from_ref(&passkey))
        .map_err(|e| CeremonyError::Proof(e.to_string()))?;
    let next = Ceremony {
        stage: Stage::Proving {
            passkey: Box::new(passkey),
            authentication,
        },
        ..ceremony
    };
    Ok((next, options))
}

/// The fingerprint (hex SHA-256 of the SubjectPublicKeyInfo) of the key the ceremony
/// registered, once registered: what the admin confirms out of band (the console shows it)
/// before the operator certifies, so that a key swapped on the way is never certified.
pub fn registered_key(ceremony: &Ceremony) -> Option<String> {
    match &ceremony.stage {
        Stage::Proving { passkey, .. } => es256_spki(passkey)
            .ok()
            .map(|spki| hex::encode(custos_pki::key_fingerprint(&spki))),
        Stage::Registering(_) => None,
    }
}

/// The credential id of the passkey the ceremony registered, once registered: what the
/// console's browser asks the authenticator for.
pub fn credential_id(ceremony: &Ceremony) -> Option<Vec<u8>> {
    match &ceremony.stage {
        Stage::Proving { passkey, .. } => Some(AsRef::<[u8]>::as_ref(passkey.cred_id()).to_vec()),
        Stage::Registering(_) => None,
    }
}

/// Writes what the console needs to let admin `issued` sign in into its admins folder
/// `dir`: `<name>.pem` (admin certificate, then Admin CA) and `<name>.credential` (the
/// credential id, base64url).
pub fn enroll_in_console(
    dir: &std::path::Path,
    ceremony: &Ceremony,
    issued: &AdminCert,
) -> std::io::Result<()> {
    use base64::Engine as _;
    let id = credential_id(ceremony).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the ceremony registered no passkey",
        )
    })?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("{}.pem", issued.name)), issued.chain_pem())?;
    std::fs::write(
        dir.join(format!("{}.credential", issued.name)),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id) + "\n",
    )
}

/// Refuses a name the PKI already recorded.
fn name_free(pki: &PkiDir, name: &str) -> Result<(), CeremonyError> {
    custos_pki::check_name(name)?;
    if pki.admin_cert_file(name).exists() {
        return Err(CeremonyError::NameTaken(name.into()));
    }
    Ok(())
}

/// Step 5: checks the browser's assertion (JSON of a `PublicKeyCredential` from `get`) and
/// has the Admin CA of `pki` certify the passkey's key for the ceremony's console, unless
/// the name or the key is certified already.
pub fn certify(
    pki: &PkiDir,
    ceremony: &Ceremony,
    assertion_json: &[u8],
    validity: Validity,
) -> Result<AdminCert, CeremonyError> {
    let Stage::Proving {
        passkey,
        authentication,
    } = &ceremony.stage
    else {
        return Err(CeremonyError::WrongStep {
            name: ceremony.name.clone(),
            expected: "proof of possession",
        });
    };
    let rp = relying_party(&ceremony.origin)?;
    let assertion: PublicKeyCredential = parse(assertion_json, "assertion")?;
    let result = rp
        .finish_passkey_authentication(&assertion, authentication)
        .map_err(|e| CeremonyError::Proof(e.to_string()))?;
    if result.cred_id() != passkey.cred_id() || !result.user_verified() {
        return Err(CeremonyError::Proof(
            "not the registered credential, or the user was not verified".into(),
        ));
    }
    let spki = es256_spki(passkey)?;
    name_free(pki, &ceremony.name)?;
    let key = custos_pki::key_fingerprint(&spki);
    if let Some(holder) = pki.admin_holding_key(&key)? {
        return Err(CeremonyError::KeyTaken {
            fingerprint: hex::encode(key),
            holder,
        });
    }
    Ok(issue_passkey_admin(
        pki,
        &ceremony.name,
        &spki,
        &ceremony.origin,
        validity,
    )?)
}

/// The passkey's public key as a SubjectPublicKeyInfo (DER), if it is P-256.
fn es256_spki(passkey: &Passkey) -> Result<Vec<u8>, CeremonyError> {
    let key = passkey.get_public_key();
    let COSEKeyType::EC_EC2(ec) = &key.key else {
        return Err(CeremonyError::NotEs256(format!("{:?}", key.type_)));
    };
    if ec.curve != ECDSACurve::SECP256R1 || key.type_ != COSEAlgorithm::ES256 {
        return Err(CeremonyError::NotEs256(format!(
            "{:?} on {:?}",
            key.type_, ec.curve
        )));
    }
    let mut point = vec![0x04];
    point.extend_from_slice(&ec.x);
    point.extend_from_slice(&ec.y);
    let public = p256::PublicKey::from_sec1_bytes(&point)
        .map_err(|e| CeremonyError::NotEs256(format!("not a P-256 point: {e}")))?;
    public
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| CeremonyError::NotEs256(e.to_string()))
}

/// `custos pki passkey ...`: the ceremony's operator steps, each reading and writing files.
#[derive(clap::Subcommand, Debug)]
pub enum Step {
    /// Step 1: start admin `name`'s ceremony for the console at `origin`; writes the state
    /// (keep it) and the options for the browser's `navigator.credentials.create`.
    Begin {
        /// The admin's certificate name.
        #[arg(long)]
        name: String,
        /// The console's origin (`https://host[:port]`).
        #[arg(long)]
        origin: String,
        /// The ceremony state file to write.
        #[arg(long)]
        state: std::path::PathBuf,
        /// The options file to write (JSON, for the browser).
        #[arg(long)]
        options: std::path::PathBuf,
    },
    /// Step 3: check the browser's registration; writes the state and the options for
    /// `navigator.credentials.get` (the proof of possession).
    Prove {
        /// The ceremony state file (read, then rewritten).
        #[arg(long)]
        state: std::path::PathBuf,
        /// The browser's registration (JSON).
        #[arg(long)]
        registration: std::path::PathBuf,
        /// The options file to write (JSON, for the browser).
        #[arg(long)]
        options: std::path::PathBuf,
    },
    /// Step 5: check the browser's assertion and certify the passkey (Admin CA); writes the
    /// chain (admin certificate, then Admin CA) and records the certificate in the PKI.
    Certify {
        /// The ceremony state file.
        #[arg(long)]
        state: std::path::PathBuf,
        /// The browser's assertion (JSON).
        #[arg(long)]
        assertion: std::path::PathBuf,
        /// Output chain file (PEM).
        #[arg(long)]
        out: std::path::PathBuf,
        /// The console's admins folder (its `[console] admins`): also writes there the
        /// chain and the passkey's credential id, so that the admin can sign in.
        #[arg(long)]
        console: Option<std::path::PathBuf>,
    },
}

/// Runs one operator step with the PKI in `pki`.
pub fn run(pki: &PkiDir, step: Step) -> Result<(), Box<dyn std::error::Error>> {
    let read_state = |path: &std::path::Path| -> Result<Ceremony, Box<dyn std::error::Error>> {
        let bytes = std::fs::read(path)?;
        Ok(parse(&bytes, "ceremony state")?)
    };
    match step {
        Step::Begin {
            name,
            origin,
            state,
            options,
        } => {
            name_free(pki, &name)?;
            let (ceremony, create) = begin(&name, &origin)?;
            std::fs::write(&state, serde_json::to_vec_pretty(&ceremony)?)?;
            std::fs::write(&options, serde_json::to_vec_pretty(&create)?)?;
            eprintln!(
                "ceremony of {name} begun: hand {} to the browser",
                options.display()
            );
        }
        Step::Prove {
            state,
            registration,
            options,
        } => {
            let ceremony = read_state(&state)?;
            let (ceremony, get) = prove(ceremony, &read_limited(&registration)?)?;
            std::fs::write(&state, serde_json::to_vec_pretty(&ceremony)?)?;
            std::fs::write(&options, serde_json::to_vec_pretty(&get)?)?;
            eprintln!(
                "registration of {} verified, key {}: have the admin confirm this fingerprint \
                 (the console shows it), then hand {} to the browser",
                ceremony.name,
                registered_key(&ceremony).unwrap_or_default(),
                options.display()
            );
        }
        Step::Certify {
            state,
            assertion,
            out,
            console,
        } => {
            let ceremony = read_state(&state)?;
            let issued = certify(
                pki,
                &ceremony,
                &read_limited(&assertion)?,
                Validity::days(365),
            )?;
            pki.record_admin(&issued)?;
            std::fs::write(&out, issued.chain_pem())?;
            if let Some(dir) = &console {
                enroll_in_console(dir, &ceremony, &issued)?;
            }
            eprintln!(
                "certified the passkey of {} (key {}) for {}: {}",
                issued.name,
                registered_key(&ceremony).unwrap_or_default(),
                ceremony.origin,
                out.display()
            );
        }
    }
    Ok(())
}

/// Reads a browser response, at most [`MAX_RESPONSE`] bytes (one more is read to tell).
fn read_limited(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}
