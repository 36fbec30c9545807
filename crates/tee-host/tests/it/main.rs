//! Tests of the TEE host's platforms against their stores on disk (the TPM platform's are
//! unit tests of `tpm`, next to the TPM commands they drive).

mod admission;
#[cfg(feature = "tpm")]
mod admission_tpm;
mod store;
