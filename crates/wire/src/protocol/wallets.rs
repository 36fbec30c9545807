//! What a wallet is from outside the TEE: the secrets an import brings in, and the public
//! facts the core reports about a wallet it holds.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::KeyId;

/// Secret bytes crossing into the TEE (seed import). Zeroized on drop, never printed.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretBytes(pub Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([redacted; {} bytes])", self.0.len())
    }
}

/// Secret text crossing into the TEE (BIP-39 mnemonic). Zeroized on drop, never printed.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretString(pub String);

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([redacted])")
    }
}

/// What a wallet import brings in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ImportSecret {
    /// BIP-39 mnemonic (English word list) with optional passphrase.
    Mnemonic {
        /// The words.
        phrase: SecretString,
        /// BIP-39 passphrase ("" if none).
        passphrase: SecretString,
    },
    /// A raw BIP-32 seed of 16 to 64 bytes.
    Seed(SecretBytes),
}

/// Where a wallet came from.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Origin {
    /// Generated inside this cluster's TEE.
    Generated,
    /// Imported from a mnemonic or seed.
    Imported,
}

/// Public facts about a wallet.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyInfo {
    /// Root public key m (compressed, 33 bytes).
    pub key_id: KeyId,
    /// Root extended public key (`xpub...`).
    pub xpub: String,
    /// Distinct admins required.
    pub quorum: u8,
    /// Origin.
    pub origin: Origin,
}
