//! BIP-32 paths as the API writes them (`m/44'/0'/0'/0/3`) and public derivation from a
//! wallet's root xpub: addresses come from public data only, never from a TEE.

use std::str::FromStr;

use bitcoin::bip32::{ChildNumber, Xpub};
use bitcoin::secp256k1::{Secp256k1, Verification};
use bitcoin::{Address, CompressedPublicKey, Network};
use custos_wire::protocol::{HARDENED, MAX_PATH_DEPTH};

/// Longest path text accepted (32 levels of ten digits and a marker fit well within).
pub const MAX_PATH_TEXT: usize = 512;

/// What is wrong with a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not of the form `m/i/j'/...`, an index out of range, or too deep.
    #[error("invalid BIP-32 path: {0}")]
    Invalid(String),
    /// A hardened step where only public derivation is possible.
    #[error("hardened step {0} cannot be derived from an xpub")]
    Hardened(String),
}

/// Parses `m`, `m/0/7`, `m/44'/0h/0H/1` into raw indices (hardened ones have bit 31 set).
pub fn parse_path(text: &str) -> Result<Vec<u32>, PathError> {
    if text.len() > MAX_PATH_TEXT {
        return Err(PathError::Invalid(format!(
            "{} characters, at most {MAX_PATH_TEXT}",
            text.len()
        )));
    }
    let mut parts = text.split('/');
    if parts.next() != Some("m") {
        return Err(PathError::Invalid("must start with \"m\"".into()));
    }
    let mut out = Vec::new();
    for part in parts {
        let (digits, hardened) = match part.strip_suffix(['\'', 'h', 'H']) {
            Some(d) => (d, true),
            None => (part, false),
        };
        // Digits only: u32::from_str would also take a leading '+'.
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 10 {
            return Err(PathError::Invalid(format!("bad step {part:?}")));
        }
        let index: u64 = digits
            .parse()
            .map_err(|_| PathError::Invalid(format!("bad step {part:?}")))?;
        if index >= u64::from(HARDENED) {
            return Err(PathError::Invalid(format!(
                "step {part:?}: index must be below 2^31"
            )));
        }
        out.push(index as u32 | if hardened { HARDENED } else { 0 });
        if out.len() > MAX_PATH_DEPTH {
            return Err(PathError::Invalid(format!(
                "more than {MAX_PATH_DEPTH} levels"
            )));
        }
    }
    Ok(out)
}

/// Whether any step is hardened.
pub fn has_hardened(path: &[u32]) -> bool {
    path.iter().any(|i| i & HARDENED != 0)
}

/// Derives the public child at `path` (non-hardened steps only).
pub fn derive_xpub<C: Verification>(
    secp: &Secp256k1<C>,
    root: &Xpub,
    path: &[u32],
) -> Result<Xpub, PathError> {
    if let Some(&h) = path.iter().find(|&&i| i & HARDENED != 0) {
        return Err(PathError::Hardened(format!("{}'", h & !HARDENED)));
    }
    let steps: Vec<ChildNumber> = path.iter().map(|&i| ChildNumber::from(i)).collect();
    root.derive_pub(secp, &steps)
        .map_err(|e| PathError::Invalid(e.to_string()))
}

/// The P2WPKH address of a compressed public key.
pub fn p2wpkh_address(public_key: &bitcoin::secp256k1::PublicKey, network: Network) -> String {
    Address::p2wpkh(&CompressedPublicKey(*public_key), network).to_string()
}

/// Parses a network name (`bitcoin`, `testnet`, `testnet4`, `signet`, `regtest`).
pub fn parse_network(name: &str) -> Result<Network, String> {
    Network::from_str(name).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_wire::protocol::format_path;

    #[test]
    fn parse_and_format() {
        assert_eq!(parse_path("m").unwrap(), Vec::<u32>::new());
        let p = parse_path("m/44'/0h/0H/1/2").unwrap();
        assert_eq!(p, vec![44 | HARDENED, HARDENED, HARDENED, 1, 2]);
        assert_eq!(format_path(&p), "m/44'/0'/0'/1/2");
        for bad in [
            "",
            "M/1",
            "m/",
            "m//1",
            "m/+1",
            "m/-1",
            "m/1''",
            "m/2147483648",
            "m/x",
            "1/2",
            "m/99999999999",
        ] {
            assert!(parse_path(bad).is_err(), "{bad:?} accepted");
        }
        let deep = format!("m{}", "/1".repeat(MAX_PATH_DEPTH + 1));
        assert!(parse_path(&deep).is_err());
        assert!(parse_path(&format!("m{}", "/1".repeat(MAX_PATH_DEPTH))).is_ok());
        assert!(has_hardened(&p) && !has_hardened(&[1, 2]));
    }
}
