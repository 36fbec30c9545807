//! The value a piece of evidence binds, and the admission check on it.

use crate::error::AttestError;
use crate::nitro::NitroEvidence;
use crate::snp::SnpEvidence;
use crate::tdx::TdxEvidence;

/// Evidence that carries a value chosen by the attested software, signed with the evidence.
/// Custos' convention: the value is the 32-byte SHA-256 of (domain ‖ challenge ‖ D key), so a
/// verified document proves that *this* TEE, running *this* code, answered *this* challenge.
pub trait Bound {
    /// The bound bytes, if the evidence carries any.
    fn bound_value(&self) -> Option<&[u8]>;
}

impl Bound for SnpEvidence {
    /// `report_data[0..32]`; the other 32 bytes are left to the guest.
    fn bound_value(&self) -> Option<&[u8]> {
        Some(&self.report_data[..32])
    }
}

impl Bound for TdxEvidence {
    /// `report_data[0..32]`; the other 32 bytes are left to the TD.
    fn bound_value(&self) -> Option<&[u8]> {
        Some(&self.report_data[..32])
    }
}

impl Bound for NitroEvidence {
    /// `user_data` when present, otherwise `public_key`: the NSM signs both verbatim.
    fn bound_value(&self) -> Option<&[u8]> {
        self.user_data.as_deref().or(self.public_key.as_deref())
    }
}

/// Refuses `evidence` unless it binds exactly `expected` (same length, same bytes).
pub fn expect_binding<E: Bound + ?Sized>(
    evidence: &E,
    expected: &[u8; 32],
) -> Result<(), AttestError> {
    match evidence.bound_value() {
        Some(value) if value == expected.as_slice() => Ok(()),
        _ => Err(AttestError::BindingMismatch),
    }
}
