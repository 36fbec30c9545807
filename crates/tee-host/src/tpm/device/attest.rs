//! Attestation commands: the endorsement key (EK) and its certificate, the attestation key
//! (AK), credential activation and quotes, all through tss-esapi's abstractions where they
//! exist (`ek`, `ak`, `nv`). Every transient object is flushed before returning (a software
//! TPM holds three); a persistent EK is only closed.

use std::convert::TryFrom;

use tss_esapi::abstraction::{ak, ek, nv, AsymmetricAlgorithmSelection, DefaultKey};
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{
    AuthHandle, KeyHandle, NvIndexTpmHandle, ObjectHandle, PersistentTpmHandle, SessionHandle,
    TpmHandle,
};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Data, EncryptedSecret, HashScheme, IdObject, Private, Public, SignatureScheme,
    SymmetricDefinition,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use zeroize::Zeroizing;

use super::{fail, kind, FailureKind, PcrSelection, TpmDevice, TpmFailure};

/// Where TPMs provisioned per the TCG keep the RSA-2048 EK (TCG EK Credential Profile).
const EK_PERSISTENT: u32 = 0x8101_0001;
/// The TCG EK Credential Profile's NV range for the EK certificate chain (intermediates).
const EK_CHAIN_FIRST: u32 = 0x01C0_0100;
const EK_CHAIN_LAST: u32 = 0x01C0_01FF;

/// The AK as the TPM made it (marshalled TPMT_PUBLIC, TPM2B_PRIVATE content): only these
/// blobs are stored; the private part is wrapped by the EK and loads in this TPM only.
#[derive(Clone)]
pub(crate) struct AkBlobs {
    pub(crate) public: Vec<u8>,
    pub(crate) private: Vec<u8>,
}

/// What a quote gives: the marshalled TPMS_ATTEST and TPMT_SIGNATURE, and the PCR values.
pub(crate) struct Quoted {
    pub(crate) attest: Vec<u8>,
    pub(crate) signature: Vec<u8>,
    pub(crate) pcr_values: Vec<(u8, Vec<u8>)>,
}

/// The EK in use: a persistent one stays in the TPM, a transient one is flushed.
struct Ek {
    handle: KeyHandle,
    transient: bool,
}

fn other(what: &'static str, reason: impl Into<String>) -> TpmFailure {
    TpmFailure {
        what,
        reason: reason.into(),
        kind: FailureKind::Other,
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

impl TpmDevice {
    /// The RSA-2048 EK certificate (DER) from NV 0x01C00002, `None` if the TPM has none.
    pub(crate) fn ek_certificate(&mut self) -> Result<Option<Vec<u8>>, TpmFailure> {
        match ek::retrieve_ek_pubcert(
            &mut self.ctx,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        ) {
            Ok(cert) => Ok(Some(cert)),
            Err(e) if kind(&e) == Some(Tss2ResponseCodeKind::Handle) => Ok(None),
            Err(e) => Err(fail("read EK certificate")(e)),
        }
    }

    /// The EK certificate chain the TPM carries: the content of each NV index of the TCG
    /// range 0x01C00100–0x01C001FF (each one or more DER certificates), in handle order.
    pub(crate) fn ek_chain(&mut self) -> Result<Vec<Vec<u8>>, TpmFailure> {
        let (caps, _) = self
            .ctx
            .get_capability(CapabilityType::Handles, EK_CHAIN_FIRST, 32)
            .map_err(fail("list EK chain indexes"))?;
        let CapabilityData::Handles(list) = caps else {
            return Ok(Vec::new());
        };
        let mut chain = Vec::new();
        for handle in list.into_inner() {
            let raw = tss_esapi::tss2_esys::TPM2_HANDLE::from(handle);
            if !(EK_CHAIN_FIRST..=EK_CHAIN_LAST).contains(&raw) {
                continue;
            }
            let index = NvIndexTpmHandle::new(raw).map_err(fail("EK chain index"))?;
            let mut object = self
                .ctx
                .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(index)))
                .map_err(fail("EK chain index"))?;
            let read = self.ctx.execute_with_nullauth_session(|c| {
                nv::read_full(c, NvAuth::NvIndex(object.into()), index)
            });
            self.ctx.tr_close(&mut object).ok();
            chain.push(read.map_err(fail("read EK chain"))?);
        }
        Ok(chain)
    }

    /// The EK: the persistent one at 0x81010001 when its key is the certificate's, else the
    /// TCG default RSA-2048 EK re-derived from the endorsement seed (the same key every time).
    fn endorsement_key(&mut self) -> Result<Ek, TpmFailure> {
        if let Some(handle) = self.persistent_ek_matching_certificate()? {
            return Ok(Ek {
                handle,
                transient: false,
            });
        }
        let handle = ek::create_ek_object_2(
            &mut self.ctx,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            DefaultKey,
        )
        .map_err(fail("create EK"))?;
        Ok(Ek {
            handle,
            transient: true,
        })
    }

    fn persistent_ek_matching_certificate(&mut self) -> Result<Option<KeyHandle>, TpmFailure> {
        let Some(cert) = self.ek_certificate()? else {
            return Ok(None);
        };
        let Ok(modulus) = custos_attest::tpm::ek_certificate_modulus(&cert) else {
            return Ok(None);
        };
        let tpm = PersistentTpmHandle::new(EK_PERSISTENT).map_err(fail("EK handle"))?;
        let object = match self
            .ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(tpm)))
        {
            Ok(o) => o,
            Err(e) if kind(&e) == Some(Tss2ResponseCodeKind::Handle) => return Ok(None),
            Err(e) => return Err(fail("EK handle")(e)),
        };
        let handle = KeyHandle::from(object);
        let matches = match self.ctx.read_public(handle) {
            Ok((Public::Rsa { unique, .. }, _, _)) => strip_zeros(unique.value()) == modulus,
            _ => false,
        };
        if matches {
            Ok(Some(handle))
        } else {
            self.ctx.tr_close(&mut ObjectHandle::from(handle)).ok();
            Ok(None)
        }
    }

    fn release(&mut self, ek: Ek) {
        if ek.transient {
            self.flush(ek.handle);
        } else {
            self.ctx.tr_close(&mut ObjectHandle::from(ek.handle)).ok();
        }
    }

    /// Creates the AK under the EK: ECC P-256, ECDSA-SHA256, restricted signing, fixedTPM
    /// (`create_ak_2` authorises the EK with PolicySecret(endorsement) itself).
    pub(crate) fn create_ak(&mut self) -> Result<AkBlobs, TpmFailure> {
        let ek = self.endorsement_key()?;
        let created = ak::create_ak_2(
            &mut self.ctx,
            ek.handle,
            HashingAlgorithm::Sha256,
            AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
            SignatureSchemeAlgorithm::EcDsa,
            None,
            DefaultKey,
        )
        .map_err(fail("create attestation key"));
        self.release(ek);
        let created = created?;
        Ok(AkBlobs {
            public: created
                .out_public
                .marshall()
                .map_err(fail("attestation key public"))?,
            private: created.out_private.value().to_vec(),
        })
    }

    /// Loads the AK under `ek`; the caller flushes it.
    fn load_ak(&mut self, ek: &Ek, blobs: &AkBlobs) -> Result<KeyHandle, TpmFailure> {
        let public = Public::unmarshall(&blobs.public).map_err(fail("attestation key public"))?;
        let private =
            Private::try_from(blobs.private.clone()).map_err(fail("attestation key private"))?;
        ak::load_ak(&mut self.ctx, ek.handle, None, private, public).map_err(|e| {
            let f = fail("load attestation key")(e);
            other(
                "load attestation key",
                format!(
                    "this TPM cannot load the store's attestation key (another TPM, or its EK \
                     changed): {}",
                    f.reason
                ),
            )
        })
    }

    /// The AK loaded (its parent EK released at once: a loaded key needs no parent).
    fn loaded_ak(&mut self, blobs: &AkBlobs) -> Result<KeyHandle, TpmFailure> {
        let ek = self.endorsement_key()?;
        let ak = self.load_ak(&ek, blobs);
        self.release(ek);
        ak
    }

    /// Quotes `pcrs` (SHA-256 bank) with the AK over `qualifying`, and reads their values.
    /// The values are read after the quote: a PCR extended in between makes the verifier
    /// refuse the quote (the values no longer digest to what the TPM signed), never accept it.
    pub(crate) fn quote(
        &mut self,
        blobs: &AkBlobs,
        qualifying: &[u8; 32],
        pcrs: &PcrSelection,
    ) -> Result<Quoted, TpmFailure> {
        let selection = pcrs.list()?;
        let data = Data::try_from(qualifying.to_vec()).map_err(fail("qualifying data"))?;
        let ak = self.loaded_ak(blobs)?;
        let quoted = self
            .ctx
            .execute_with_nullauth_session(|c| {
                c.quote(
                    ak,
                    data,
                    SignatureScheme::EcDsa {
                        hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                    },
                    selection,
                )
            })
            .map_err(fail("quote"));
        self.flush(ak);
        let (attest, signature) = quoted?;
        Ok(Quoted {
            attest: attest.marshall().map_err(fail("quote"))?,
            signature: signature.marshall().map_err(fail("quote signature"))?,
            pcr_values: self.pcr_values(pcrs)?,
        })
    }

    /// The SHA-256 values of `pcrs`, one read per PCR (a read returns at most eight).
    fn pcr_values(&mut self, pcrs: &PcrSelection) -> Result<Vec<(u8, Vec<u8>)>, TpmFailure> {
        let mut values = Vec::with_capacity(pcrs.0.len());
        for &index in &pcrs.0 {
            let one = PcrSelection(vec![index]).list()?;
            let (_, _, digests) = self
                .ctx
                .execute_without_session(|c| c.pcr_read(one))
                .map_err(fail("read PCR"))?;
            let value = digests
                .value()
                .first()
                .ok_or_else(|| other("read PCR", format!("PCR {index}: no SHA-256 value")))?;
            values.push((index, value.value().to_vec()));
        }
        Ok(values)
    }

    /// A policy session satisfying the EK's policy: PolicySecret(endorsement).
    fn ek_policy_session(&mut self) -> Result<AuthSession, TpmFailure> {
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(fail("start EK policy session"))?
            .ok_or_else(|| other("start EK policy session", "no session returned"))?;
        let run = PolicySession::try_from(session).and_then(|ps| {
            self.ctx.execute_with_nullauth_session(|c| {
                c.policy_secret(
                    ps,
                    AuthHandle::Endorsement,
                    Default::default(),
                    Default::default(),
                    Default::default(),
                    None,
                )
            })
        });
        match run {
            Ok(_) => Ok(session),
            Err(e) => {
                self.flush(SessionHandle::from(session));
                Err(fail("EK policy")(e))
            }
        }
    }

    /// TPM2_ActivateCredential with the AK loaded: the secret of a credential made for this
    /// TPM's EK and this AK's name. The TPM refuses any other (its integrity check fails).
    pub(crate) fn activate_credential(
        &mut self,
        blobs: &AkBlobs,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, TpmFailure> {
        let id_object = IdObject::try_from(id_object.to_vec()).map_err(fail("credential"))?;
        let encrypted_secret =
            EncryptedSecret::try_from(encrypted_secret.to_vec()).map_err(fail("credential"))?;
        let ek = self.endorsement_key()?;
        let out = self.activate_with(&ek, blobs, id_object, encrypted_secret);
        self.release(ek);
        let digest = out?;
        let bytes = Zeroizing::new(digest.value().to_vec());
        let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            other(
                "activate credential",
                format!("a secret of {} bytes, not 32", bytes.len()),
            )
        })?;
        Ok(Zeroizing::new(secret))
    }

    fn activate_with(
        &mut self,
        ek: &Ek,
        blobs: &AkBlobs,
        id_object: IdObject,
        encrypted_secret: EncryptedSecret,
    ) -> Result<tss_esapi::structures::Digest, TpmFailure> {
        let ak = self.load_ak(ek, blobs)?;
        let out = self.ek_policy_session().and_then(|session| {
            // The AK (admin role) with its empty auth value, the EK (user role) by policy.
            let r = self
                .ctx
                .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| {
                    c.activate_credential(ak, ek.handle, id_object, encrypted_secret)
                })
                .map_err(fail("activate credential"));
            self.flush(SessionHandle::from(session));
            r
        });
        self.flush(ak);
        out
    }
}
