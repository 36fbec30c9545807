//! Attestation on the TPM platform: the TPM's identity (EK certificate, its chain, the
//! attestation key), credential activation, and quotes of the store's sealing PCRs.
//!
//! The EK chain is what the TPM carries in the TCG EK chain NV range (0x01C00100–0x01C001FF):
//! the host adds nothing, so the identity is the TPM's own word. A TPM without intermediates
//! there (swtpm, many physical TPMs) needs a verifier policy whose roots include the
//! manufacturer's issuing CA, or a host that writes the chain into that NV range once.

use custos_attest::{tpm_qualifying, TpmCredential, TpmIdentity, TpmQuote};
use custos_tee_core::platform::PlatformError;
use custos_wire::protocol::Attestation;
use zeroize::Zeroizing;

use super::device::TpmFailure;
use super::TpmPlatform;

fn refused(f: TpmFailure) -> PlatformError {
    PlatformError::Attestation(format!("TPM {}: {}", f.what, f.reason))
}

impl TpmPlatform {
    fn ak(&self) -> Result<&super::AkBlobs, PlatformError> {
        self.ak.as_ref().ok_or_else(|| {
            PlatformError::Attestation(
                "this store has no attestation key yet: making it failed when the store was \
                 opened (the TEE log says why); a restart tries again"
                    .into(),
            )
        })
    }

    /// The TPM's identity, read from the TPM once.
    pub(super) fn identity(&mut self) -> Result<TpmIdentity, PlatformError> {
        if let Some(identity) = &self.identity {
            return Ok(identity.clone());
        }
        let ak_public = self.ak()?.public.clone();
        let ek_cert = self
            .device
            .ek_certificate()
            .map_err(refused)?
            .ok_or_else(|| {
                PlatformError::Attestation(
                    "the TPM has no RSA-2048 EK certificate (NV 0x01c00002): nothing ties its \
                 keys to a manufacturer"
                        .into(),
                )
            })?;
        let ek_chain = self.device.ek_chain().map_err(refused)?;
        let identity = TpmIdentity {
            ek_cert,
            ek_chain,
            ak_public,
        };
        self.identity = Some(identity.clone());
        Ok(identity)
    }

    /// A quote of the sealing PCRs with qualifying data `tpm_qualifying(user_data)`, as an
    /// `Attestation` of platform `tpm` whose document is the postcard of a `TpmQuote`.
    pub(super) fn quote(&mut self, user_data: &[u8]) -> Result<Attestation, PlatformError> {
        let identity = self.identity()?;
        let ak = self.ak()?.clone();
        let quoted = self
            .device
            .quote(&ak, &tpm_qualifying(user_data), &self.pcrs)
            .map_err(refused)?;
        let quote = TpmQuote {
            identity,
            attest: quoted.attest,
            signature: quoted.signature,
            pcr_values: quoted.pcr_values,
        };
        Ok(Attestation {
            platform: "tpm".into(),
            document: quote.to_document(),
        })
    }

    /// Activates `credential` with the attestation key: the TPM releases the secret only for
    /// a credential made for its EK and this key's name.
    pub(super) fn activate(
        &mut self,
        credential: &TpmCredential,
    ) -> Result<Zeroizing<[u8; 32]>, PlatformError> {
        let ak = self.ak()?.clone();
        self.device
            .activate_credential(&ak, &credential.id_object, &credential.encrypted_secret)
            .map_err(|f| {
                if f.what == "activate credential" {
                    PlatformError::Attestation(format!(
                        "the TPM refused to activate the credential: it was made for another \
                         attestation key or another TPM's EK ({})",
                        f.reason
                    ))
                } else {
                    refused(f)
                }
            })
    }
}
