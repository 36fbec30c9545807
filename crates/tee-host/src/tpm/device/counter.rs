//! The store's NV counter: defined once, read and incremented with an auth value derived from
//! the store key, checked to still be the counter it was (a counter never goes back, an
//! ordinary index could be written back).

use std::time::Duration;

use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::nv_index_type::NvIndexType;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::structures::{Auth, NvPublicBuilder};

use super::{build, fail, kind, FailureKind, TpmDevice, TpmFailure};

/// How many times an NV write refused with TPM_RC_NV_RATE is tried again.
const NV_RATE_RETRIES: u32 = 7;

/// The pause before trying an NV write again, or `None` to give up. Only TPM_RC_NV_RATE is
/// retried: a physical TPM refuses NV writes for a while when they come too fast (wear
/// protection), which is no failure of the commit. The pauses grow from 25 ms to 1.6 s (3.2 s
/// in all), then the failure stands (and the store refuses commits until a restart, as for
/// any failed increment). libtss2 itself already retries TPM_RC_RETRY, YIELDED and TESTING.
pub(crate) fn nv_rate_backoff(e: &tss_esapi::Error, attempt: u32) -> Option<Duration> {
    (kind(e) == Some(Tss2ResponseCodeKind::NvRate) && attempt < NV_RATE_RETRIES)
        .then(|| Duration::from_millis(25 << attempt))
}

impl TpmDevice {
    fn nv_handle(&mut self, index: u32) -> Result<Option<NvIndexHandle>, TpmFailure> {
        let tpm = NvIndexTpmHandle::new(index).map_err(fail("NV index"))?;
        match self
            .ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(tpm)))
        {
            Ok(h) => Ok(Some(h.into())),
            // Nothing defined there.
            Err(e) if kind(&e) == Some(Tss2ResponseCodeKind::Handle) => Ok(None),
            Err(e) => Err(fail("NV index")(e)),
        }
    }

    /// Defines the counter at `index`, writable and readable only with `auth`, and
    /// increments it once (a counter has no value before), returning its value. An index
    /// already defined there is refused: it may be another store's counter.
    pub(crate) fn define_counter(
        &mut self,
        index: u32,
        auth: &[u8; 32],
    ) -> Result<u64, TpmFailure> {
        if self.nv_handle(index)?.is_some() {
            return Err(TpmFailure {
                what: "define counter",
                reason: format!(
                    "NV index {index:#010x} is already defined (another store's counter?); \
                     choose another index or undefine it"
                ),
                kind: FailureKind::Other,
            });
        }
        let tpm = NvIndexTpmHandle::new(index).map_err(fail("NV index"))?;
        // Not TPMA_NV_ORDERLY: an orderly counter jumps ahead after an unclean shutdown,
        // which would look like a rollback of the store.
        let attrs = build(
            "counter attributes",
            NvIndexAttributesBuilder::new()
                .with_nv_index_type(NvIndexType::Counter)
                .with_auth_write(true)
                .with_auth_read(true)
                .with_no_da(true)
                .build(),
        )?;
        let public = build(
            "counter public",
            NvPublicBuilder::new()
                .with_nv_index(tpm)
                .with_index_name_algorithm(HashingAlgorithm::Sha256)
                .with_index_attributes(attrs)
                .with_data_area_size(8)
                .build(),
        )?;
        let auth_value = Auth::try_from(auth.to_vec()).map_err(fail("auth value"))?;
        let h = self
            .ctx
            .execute_with_nullauth_session(|c| {
                c.nv_define_space(Provision::Owner, Some(auth_value), public)
            })
            .map_err(fail("define counter"))?;
        self.ctx.tr_close(&mut ObjectHandle::from(h)).ok();
        self.increment(index, auth)?;
        self.counter(index, auth)
    }

    fn counter_handle(&mut self, index: u32, auth: &[u8; 32]) -> Result<NvIndexHandle, TpmFailure> {
        let h = self.nv_handle(index)?.ok_or_else(|| TpmFailure {
            what: "counter",
            reason: format!(
                "NV index {index:#010x} is not defined (another TPM, or it was removed)"
            ),
            kind: FailureKind::Other,
        })?;
        let auth = Auth::try_from(auth.to_vec()).map_err(fail("auth value"))?;
        self.ctx
            .tr_set_auth(h.into(), auth)
            .map_err(fail("counter auth"))?;
        Ok(h)
    }

    /// Advances the counter at `index` by one, waiting out a TPM that rate-limits NV writes
    /// ([`nv_rate_backoff`]).
    pub(crate) fn increment(&mut self, index: u32, auth: &[u8; 32]) -> Result<(), TpmFailure> {
        let h = self.counter_handle(index, auth)?;
        let mut attempt = 0;
        let r = loop {
            match self
                .ctx
                .execute_with_nullauth_session(|c| c.nv_increment(NvAuth::NvIndex(h), h))
            {
                Ok(()) => break Ok(()),
                Err(e) => match nv_rate_backoff(&e, attempt) {
                    Some(pause) => {
                        tracing::warn!(attempt, ?pause, "TPM rate-limits NV writes; retrying");
                        std::thread::sleep(pause);
                        attempt += 1;
                    }
                    None => break Err(fail("increment counter")(e)),
                },
            }
        };
        self.ctx.tr_close(&mut ObjectHandle::from(h)).ok();
        r
    }

    /// The counter's value. The index must still be what [`TpmDevice::define_counter`] made:
    /// a counter (which never goes back, even undefined and defined again) that only its auth
    /// value writes; an ordinary index defined in its place could be set to any value.
    pub(crate) fn counter(&mut self, index: u32, auth: &[u8; 32]) -> Result<u64, TpmFailure> {
        let h = self.counter_handle(index, auth)?;
        let public = self
            .ctx
            .execute_without_session(|c| c.nv_read_public(h))
            .map(|(public, _name)| public)
            .map_err(fail("read counter public"));
        let attrs = match public {
            Ok(p) => p.attributes(),
            Err(e) => {
                self.ctx.tr_close(&mut ObjectHandle::from(h)).ok();
                return Err(e);
            }
        };
        let is_counter = matches!(attrs.index_type(), Ok(NvIndexType::Counter));
        if !is_counter
            || !attrs.auth_write()
            || attrs.owner_write()
            || attrs.pp_write()
            || attrs.policy_write()
        {
            self.ctx.tr_close(&mut ObjectHandle::from(h)).ok();
            return Err(TpmFailure {
                what: "read counter",
                reason: format!(
                    "NV index {index:#010x} is no longer the store's counter (another kind of \
                     index, or writable by others): it was replaced"
                ),
                kind: FailureKind::Other,
            });
        }
        let r = self
            .ctx
            .execute_with_nullauth_session(|c| c.nv_read(NvAuth::NvIndex(h), h, 8, 0))
            .map_err(fail("read counter"));
        self.ctx.tr_close(&mut ObjectHandle::from(h)).ok();
        let bytes = r?;
        let raw: [u8; 8] = bytes.value().try_into().map_err(|_| TpmFailure {
            what: "read counter",
            reason: format!("{} bytes, not 8", bytes.value().len()),
            kind: FailureKind::Other,
        })?;
        Ok(u64::from_be_bytes(raw))
    }
}
