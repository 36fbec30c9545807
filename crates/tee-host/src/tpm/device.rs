//! The TPM 2.0 commands the TPM platform uses, through `tss-esapi` (the TCG's ESAPI, never
//! our own marshalling): the storage key, the sealed store key, the NV counter, randomness
//! and (in `attest`) the endorsement and attestation keys, credentials and quotes. Every object loaded here is flushed after use: a software TPM has no resource
//! manager, and a process killed with objects loaded leaves them there (see
//! [`TpmDevice::connect`]).

mod attest;
mod counter;

use std::convert::TryFrom;
use std::str::FromStr;

use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::{tss, CapabilityType, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, CapabilityData, Digest, EccPoint, KeyedHashScheme, PcrSelectionList,
    PcrSelectionListBuilder, PcrSlot, Private, Public, PublicBuilder, PublicEccParametersBuilder,
    PublicKeyedHashParameters, SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;
use zeroize::Zeroizing;

pub(crate) use attest::AkBlobs;
#[cfg(test)]
pub(crate) use counter::nv_rate_backoff;

/// What kind of refusal a TPM failure is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// The auth value was wrong (the operator's key is not the store's).
    WrongAuth,
    /// A policy failed: the PCRs are not the values the key was sealed to.
    Policy,
    /// Anything else.
    Other,
}

/// A TPM failure: which operation, and what the TPM or the TSS said.
#[derive(Debug)]
pub(crate) struct TpmFailure {
    pub(crate) what: &'static str,
    pub(crate) reason: String,
    pub(crate) kind: FailureKind,
}

fn kind(e: &tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    match e {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

fn fail(what: &'static str) -> impl Fn(tss_esapi::Error) -> TpmFailure {
    move |e| TpmFailure {
        what,
        reason: e.to_string(),
        kind: match kind(&e) {
            Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth) => {
                FailureKind::WrongAuth
            }
            Some(Tss2ResponseCodeKind::PolicyFail) => FailureKind::Policy,
            _ => FailureKind::Other,
        },
    }
}

fn build<T, E: std::fmt::Display>(what: &'static str, r: Result<T, E>) -> Result<T, TpmFailure> {
    r.map_err(|e| TpmFailure {
        what,
        reason: e.to_string(),
        kind: FailureKind::Other,
    })
}

/// The PCRs a store is sealed to: SHA-256 bank, the given indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrSelection(pub Vec<u8>);

impl PcrSelection {
    /// Parses `sha256:7` or `sha256:7,23` (the SHA-256 bank only).
    pub fn parse(text: &str) -> Result<Self, String> {
        let list = text.strip_prefix("sha256:").ok_or_else(|| {
            format!("PCR selection {text:?}: expected sha256:<index>[,<index>...]")
        })?;
        let mut pcrs = Vec::new();
        for part in list.split(',') {
            let n: u8 = part
                .trim()
                .parse()
                .map_err(|_| format!("PCR selection {text:?}: {part:?} is not a PCR index"))?;
            if n > 23 {
                return Err(format!(
                    "PCR selection {text:?}: PCR {n} does not exist (0-23)"
                ));
            }
            if !pcrs.contains(&n) {
                pcrs.push(n);
            }
        }
        pcrs.sort_unstable();
        Ok(PcrSelection(pcrs))
    }

    fn list(&self) -> Result<PcrSelectionList, TpmFailure> {
        let slots: Vec<PcrSlot> = self
            .0
            .iter()
            .map(|n| PcrSlot::try_from(1u32 << n))
            .collect::<Result<_, _>>()
            .map_err(fail("PCR selection"))?;
        build(
            "PCR selection",
            PcrSelectionListBuilder::new()
                .with_selection(HashingAlgorithm::Sha256, &slots)
                .build(),
        )
    }
}

impl std::fmt::Display for PcrSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.0.iter().map(u8::to_string).collect();
        write!(f, "sha256:{}", list.join(","))
    }
}

/// The sealed store key as the TPM made it: only these blobs are written to disk.
pub(crate) struct SealedKeyBlobs {
    pub(crate) public: Vec<u8>,
    pub(crate) private: Vec<u8>,
}

/// One connection to a TPM.
pub(crate) struct TpmDevice {
    ctx: Context,
}

fn srk_template() -> Result<Public, TpmFailure> {
    let attrs = build(
        "storage key template",
        ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_no_da(true)
            .with_restricted(true)
            .with_decrypt(true)
            .build(),
    )?;
    let params = build(
        "storage key template",
        PublicEccParametersBuilder::new_restricted_decryption_key(
            SymmetricDefinitionObject::AES_128_CFB,
            EccCurve::NistP256,
        )
        .build(),
    )?;
    build(
        "storage key template",
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_ecc_parameters(params)
            .with_ecc_unique_identifier(EccPoint::default())
            .build(),
    )
}

fn sealed_template(policy: Digest) -> Result<Public, TpmFailure> {
    // Only the policy (PCRs + auth value) authorises unsealing; dictionary-attack protection
    // stays on for the auth value.
    let attrs = build(
        "sealed key template",
        ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_admin_with_policy(true)
            .with_user_with_auth(false)
            .build(),
    )?;
    build(
        "sealed key template",
        PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_auth_policy(policy)
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Default::default())
            .build(),
    )
}

impl TpmDevice {
    /// Connects through `tcti` (`swtpm:host=127.0.0.1,port=2321`, `device:/dev/tpmrm0`) and
    /// flushes transient objects and sessions a killed earlier process left loaded (a
    /// software TPM holds only three; under the kernel's resource manager there are none).
    pub(crate) fn connect(tcti: &str) -> Result<Self, TpmFailure> {
        let conf = TctiNameConf::from_str(tcti).map_err(fail("TCTI"))?;
        let ctx = Context::new(conf).map_err(|e| TpmFailure {
            what: "connect",
            reason: format!("cannot reach a TPM at {tcti:?} ({e})"),
            kind: FailureKind::Other,
        })?;
        let mut device = TpmDevice { ctx };
        device.flush_leftovers()?;
        Ok(device)
    }

    fn flush_leftovers(&mut self) -> Result<(), TpmFailure> {
        for first in [
            tss::TPM2_TRANSIENT_FIRST,
            tss::TPM2_LOADED_SESSION_FIRST,
            tss::TPM2_POLICY_SESSION_FIRST,
        ] {
            let (caps, _) = self
                .ctx
                .get_capability(CapabilityType::Handles, first, 64)
                .map_err(fail("list loaded handles"))?;
            if let CapabilityData::Handles(list) = caps {
                for h in list.into_inner() {
                    let obj = self
                        .ctx
                        .execute_without_session(|c| c.tr_from_tpm_public(h))
                        .map_err(fail("leftover handle"))?;
                    self.ctx
                        .flush_context(obj)
                        .map_err(fail("flush leftover"))?;
                }
            }
        }
        Ok(())
    }

    /// Random bytes from the TPM.
    pub(crate) fn random(&mut self, n: usize) -> Result<Zeroizing<Vec<u8>>, TpmFailure> {
        // A TPM may return fewer bytes than asked: ask again, a bounded number of times.
        let mut out = Zeroizing::new(Vec::with_capacity(n));
        for _ in 0..8 {
            let d = self
                .ctx
                .get_random(n - out.len())
                .map_err(fail("get random"))?;
            out.extend_from_slice(d.value());
            if out.len() >= n {
                out.truncate(n);
                return Ok(out);
            }
        }
        Err(TpmFailure {
            what: "get random",
            reason: format!("the TPM gave {} of {n} bytes", out.len()),
            kind: FailureKind::Other,
        })
    }

    /// The storage key: a primary key derived from the owner hierarchy's seed, so the same
    /// TPM makes it again at every start and it is never stored.
    fn srk(&mut self) -> Result<KeyHandle, TpmFailure> {
        let template = srk_template()?;
        let r = self
            .ctx
            .execute_with_nullauth_session(|c| {
                c.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })
            .map_err(fail("create storage key"))?;
        Ok(r.key_handle)
    }

    fn flush(&mut self, h: impl Into<ObjectHandle>) {
        // Best effort: a handle the TPM already dropped is no error worth stopping for.
        let _ = self.ctx.flush_context(h.into());
    }

    /// Runs PolicyPCR (the PCRs' current values) and PolicyAuthValue in a session of `kind`
    /// (trial: to compute the policy digest); returns the session and the digest.
    fn pcr_auth_policy(
        &mut self,
        kind: SessionType,
        salt: Option<KeyHandle>,
        pcrs: &PcrSelection,
    ) -> Result<(AuthSession, Digest), TpmFailure> {
        let session = self
            .ctx
            .start_auth_session(
                salt,
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(fail("start policy session"))?
            .ok_or_else(|| TpmFailure {
                what: "start policy session",
                reason: "no session returned".into(),
                kind: FailureKind::Other,
            })?;
        let run = |ctx: &mut Context| -> Result<Digest, TpmFailure> {
            let (attrs, mask) = SessionAttributesBuilder::new()
                .with_decrypt(true)
                .with_encrypt(true)
                .build();
            ctx.tr_sess_set_attributes(session, attrs, mask)
                .map_err(fail("session attributes"))?;
            let ps = PolicySession::try_from(session).map_err(fail("policy session"))?;
            // An empty digest: the TPM takes the PCRs' current values.
            ctx.policy_pcr(ps, Digest::default(), pcrs.list()?)
                .map_err(fail("policy PCR"))?;
            ctx.policy_auth_value(ps)
                .map_err(fail("policy auth value"))?;
            ctx.policy_get_digest(ps).map_err(fail("policy digest"))
        };
        match run(&mut self.ctx) {
            Ok(d) => Ok((session, d)),
            Err(e) => {
                self.flush(SessionHandle::from(session));
                Err(e)
            }
        }
    }

    /// An HMAC session salted with `key` (the storage key), encrypting command and response
    /// parameters.
    fn salted_session(&mut self, key: KeyHandle) -> Result<AuthSession, TpmFailure> {
        let session = self
            .ctx
            .start_auth_session(
                Some(key),
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(fail("start salted session"))?
            .ok_or_else(|| TpmFailure {
                what: "start salted session",
                reason: "no session returned".into(),
                kind: FailureKind::Other,
            })?;
        let (attrs, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .build();
        if let Err(e) = self.ctx.tr_sess_set_attributes(session, attrs, mask) {
            self.flush(SessionHandle::from(session));
            return Err(fail("session attributes")(e));
        }
        Ok(session)
    }

    /// Seals `key` under the storage key, unsealable only with `auth` while `pcrs` hold
    /// their current values.
    pub(crate) fn seal_key(
        &mut self,
        key: &[u8; 32],
        auth: &[u8; 32],
        pcrs: &PcrSelection,
    ) -> Result<SealedKeyBlobs, TpmFailure> {
        let (trial, policy) = self.pcr_auth_policy(SessionType::Trial, None, pcrs)?;
        self.flush(SessionHandle::from(trial));
        let template = sealed_template(policy)?;
        let secret = SensitiveData::try_from(key.to_vec()).map_err(fail("store key"))?;
        let auth = Auth::try_from(auth.to_vec()).map_err(fail("auth value"))?;
        let srk = self.srk()?;
        // A session salted with the storage key and parameter encryption: the key and the
        // auth value never cross the bus in clear.
        let created = self.salted_session(srk).and_then(|session| {
            let r = self
                .ctx
                .execute_with_session(Some(session), |c| {
                    c.create(srk, template, Some(auth), Some(secret), None, None)
                })
                .map_err(fail("seal store key"));
            self.flush(SessionHandle::from(session));
            r
        });
        self.flush(srk);
        let created = created?;
        Ok(SealedKeyBlobs {
            public: created
                .out_public
                .marshall()
                .map_err(fail("sealed key public"))?,
            private: created.out_private.value().to_vec(),
        })
    }

    /// Unseals the store key: refused by the TPM (`auth` set) for a wrong auth value or PCRs
    /// that changed; another TPM cannot load the blobs at all.
    pub(crate) fn unseal_key(
        &mut self,
        blobs: &SealedKeyBlobs,
        auth: &[u8; 32],
        pcrs: &PcrSelection,
    ) -> Result<Zeroizing<[u8; 32]>, TpmFailure> {
        let public = Public::unmarshall(&blobs.public).map_err(fail("sealed key public"))?;
        let private =
            Private::try_from(blobs.private.clone()).map_err(fail("sealed key private"))?;
        let srk = self.srk()?;
        let loaded = self
            .ctx
            .execute_with_nullauth_session(|c| c.load(srk, private, public))
            .map_err(fail("load sealed key"));
        let obj = match loaded {
            Ok(o) => o,
            Err(e) => {
                self.flush(srk);
                return Err(e);
            }
        };
        let out = (|| {
            let auth = Auth::try_from(auth.to_vec()).map_err(fail("auth value"))?;
            self.ctx
                .tr_set_auth(obj.into(), auth)
                .map_err(fail("auth value"))?;
            // Salted with the storage key and with parameter encryption, so the store key
            // never crosses the bus in clear.
            let (session, _) = self.pcr_auth_policy(SessionType::Policy, Some(srk), pcrs)?;
            let r = self
                .ctx
                .execute_with_session(Some(session), |c| c.unseal(obj.into()))
                .map_err(fail("unseal store key"));
            self.flush(SessionHandle::from(session));
            r
        })();
        self.flush(obj);
        self.flush(srk);
        let data = out?;
        let bytes = Zeroizing::new(data.value().to_vec());
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| TpmFailure {
            what: "unseal store key",
            reason: format!("{} bytes, not 32", bytes.len()),
            kind: FailureKind::Other,
        })?;
        Ok(Zeroizing::new(key))
    }
}
