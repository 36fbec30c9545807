//! The one error of this crate: what was wrong with a transaction, named.

/// Why a transaction is refused. Each names the input or output at fault; [`TxError::code`]
/// is the stable name clients match on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    /// Larger than this signer accepts.
    #[error("{what}: {len}, at most {max}")]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An Ethereum request of a kind this signer does not sign (a transaction type other
    /// than legacy with EIP-155 and EIP-1559, an access list).
    #[error("not signed: {0}")]
    EthUnsupported(String),
    /// The bytes are not a well-formed transaction of the kind announced.
    #[error("malformed transaction: {0}")]
    Malformed(String),
    /// A transaction without inputs.
    #[error("the transaction has no inputs")]
    NoInputs,
    /// A transaction without outputs.
    #[error("the transaction has no outputs")]
    NoOutputs,
    /// An input spending the same output as an earlier one (invalid, and its value would
    /// count twice).
    #[error("input #{input} spends the same output as an earlier input")]
    DuplicateInput {
        /// Input index.
        input: usize,
    },
    /// An input already carries its final script or witness.
    #[error("input #{input} is finalized already")]
    InputFinalized {
        /// Input index.
        input: usize,
    },
    /// A signature hash type other than `SIGHASH_ALL` (or taproot's default): any other lets
    /// a signature be reused on a transaction nobody approved.
    #[error("input #{input} asks for sighash type {sighash_type:#x}; only SIGHASH_ALL is signed")]
    SighashTypeRefused {
        /// Input index.
        input: usize,
        /// The type asked for.
        sighash_type: u32,
    },
    /// The output an input spends is not given (neither its witness_utxo nor its previous
    /// transaction).
    #[error("input #{input} gives neither the output it spends (witness_utxo) nor its previous transaction (non_witness_utxo)")]
    MissingUtxo {
        /// Input index.
        input: usize,
    },
    /// A segwit v0 input, or a taproot input next to one, without its whole previous
    /// transaction: its value would be unproven, and a signer shown false values can be made
    /// to pay a fee it never saw (a v0 signature commits to its own input's value only).
    #[error("input #{input} does not give its previous transaction (non_witness_utxo), so its value is unproven (segwit v0, or taproot next to segwit v0)")]
    InputValueUnproven {
        /// Input index.
        input: usize,
    },
    /// The previous transaction given does not match the input's outpoint or output.
    #[error("input #{input}: {reason}")]
    UtxoMismatch {
        /// Input index.
        input: usize,
        /// What differs.
        reason: String,
    },
    /// An input of a script kind this signer does not sign.
    #[error("input #{input} spends a script this signer does not sign ({script}); P2WPKH, P2SH-P2WPKH and P2TR key path are")]
    UnsupportedScript {
        /// Input index.
        input: usize,
        /// The script, hex.
        script: String,
    },
    /// A taproot input committing to a script tree: only key-path outputs without scripts
    /// are the wallet's own.
    #[error("input #{input} is a taproot output with a script tree; only key-path outputs without scripts are signed")]
    TaprootScriptTree {
        /// Input index.
        input: usize,
    },
    /// An input with no key of this wallet (no derivation under its fingerprint).
    #[error("input #{input} names no key of this wallet (fingerprint {fingerprint})")]
    ForeignInput {
        /// Input index.
        input: usize,
        /// The wallet's fingerprint, hex.
        fingerprint: String,
    },
    /// The key the wallet derives at the input's path is not the key the input names, or
    /// does not own the script it spends.
    #[error("input #{input}: {reason}")]
    KeyMismatch {
        /// Input index.
        input: usize,
        /// What differs.
        reason: String,
    },
    /// An amount above the 21 million bitcoin that can exist.
    #[error("{what} is above the money supply")]
    ValueOutOfRange {
        /// Where.
        what: String,
    },
    /// Outputs spend more than the inputs hold.
    #[error("outputs total {outputs} sat, inputs only {inputs} sat")]
    OutputsExceedInputs {
        /// Sum of input values.
        inputs: u64,
        /// Sum of output amounts.
        outputs: u64,
    },
    /// A key could not be derived or a signature made or placed.
    #[error("{0}")]
    Signing(String),
}

impl TxError {
    /// Stable snake-case name of the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            TxError::TooLarge { .. } => "tx_too_large",
            TxError::Malformed(_) => "tx_malformed",
            TxError::NoInputs => "tx_no_inputs",
            TxError::NoOutputs => "tx_no_outputs",
            TxError::DuplicateInput { .. } => "input_duplicate",
            TxError::InputFinalized { .. } => "input_finalized",
            TxError::SighashTypeRefused { .. } => "sighash_type_refused",
            TxError::MissingUtxo { .. } => "input_utxo_missing",
            TxError::InputValueUnproven { .. } => "input_value_unproven",
            TxError::UtxoMismatch { .. } => "input_utxo_mismatch",
            TxError::UnsupportedScript { .. } => "input_script_unsupported",
            TxError::TaprootScriptTree { .. } => "taproot_script_tree",
            TxError::ForeignInput { .. } => "input_not_ours",
            TxError::KeyMismatch { .. } => "input_key_mismatch",
            TxError::ValueOutOfRange { .. } => "value_out_of_range",
            TxError::OutputsExceedInputs { .. } => "outputs_exceed_inputs",
            TxError::Signing(_) => "signing_failed",
            TxError::EthUnsupported(_) => "eth_unsupported",
        }
    }
}
