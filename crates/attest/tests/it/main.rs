//! Genuine vendor-signed samples (tests/fixtures/*/SOURCE.md) verified at their pinned times,
//! and the refusals an attacker or a stale sample must meet. No network.

mod nitro;
mod snp;
mod tdx;

/// A fixture file's bytes.
pub fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The snake_case code of a refusal, with its text in the panic message if it succeeded.
pub fn code<T: std::fmt::Debug>(r: Result<T, custos_attest::AttestError>) -> &'static str {
    match r {
        Ok(v) => panic!("verified, expected a refusal: {v:?}"),
        Err(e) => e.code(),
    }
}
