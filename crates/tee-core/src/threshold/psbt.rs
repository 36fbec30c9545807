//! A Bitcoin PSBT signed with a threshold key (issue 14): one session per input, each
//! participating TEE parsing the PSBT, computing the intent with the key's public
//! derivation and applying the policy sealed with its own share before it takes part.
//!
//! Threshold ECDSA signs segwit v0 inputs only (P2WPKH, P2SH-P2WPKH): a taproot input
//! would need a Schnorr signature, which the protocol does not make, and is refused by name.

use custos_tx::btc::{plan_psbt, XpubKeys};
use custos_tx::intent::InputKind;
use custos_wire::approval::Approval;
use custos_wire::protocol::*;
use custos_wire::threshold::input_session;

use super::sign::SignPolicy;
use crate::platform::Platform;
use crate::transaction::rejected;
use crate::wallet::key_hex;
use crate::TeeCore;

impl<P: Platform> TeeCore<P> {
    /// The public keys of a held threshold key, as `custos-tx` asks for them: the joint
    /// key's extended public key (non-hardened children only).
    pub(crate) fn share_keys(&self, key_id: &[u8]) -> Result<XpubKeys, TeeError> {
        let held = self.threshold_key(key_id)?;
        let xpub = held.share.xpub().ok_or_else(|| {
            TeeError::InvalidPath(format!(
                "threshold key {} has no chain code: it signs no PSBT (its inputs' keys are \
                 its children)",
                key_hex(key_id)
            ))
        })?;
        Ok(XpubKeys(xpub))
    }

    /// [`Request::ThresholdPsbtStart`]: checks the approvals of the claimed intent (by the
    /// key's group, in the threshold scope), plans the PSBT with the key's public
    /// derivation and compares its intent with the claim, checks the approval tiers, then
    /// opens the session of input `input` over the signature hash computed here; the
    /// policy sealed with this share is applied as the session starts.
    pub(crate) fn threshold_psbt_start(
        &mut self,
        meta: &RequestMeta,
        attempt: u8,
        input: u16,
        params: &ThresholdPsbtParams,
        approvals: &[Approval],
    ) -> Outcome {
        self.identity()?;
        let key_id = &params.key_id[..];
        self.threshold_key(key_id)?;
        self.approve_intent(meta, key_id, &params.intent_hash, approvals)?;
        let keys = self.share_keys(key_id)?;
        let plan = plan_psbt(&params.psbt, params.network.network(), &keys).map_err(rejected)?;
        let computed = plan.intent().hash();
        if computed != params.intent_hash {
            return Err(TeeError::IntentMismatch {
                claimed: params.intent_hash,
                computed,
            });
        }
        self.check_tier(meta, key_id, &computed, plan.intent(), approvals)?;
        let job = plan.jobs().get(usize::from(input)).ok_or_else(|| {
            TeeError::InvalidRequest(format!(
                "input {input}: the PSBT has {} inputs",
                plan.jobs().len()
            ))
        })?;
        // Any taproot input refuses the whole transaction, before anything is counted: it
        // could never be completed.
        if let Some(t) = plan
            .jobs()
            .iter()
            .find(|j| j.kind == InputKind::P2trKeyPath)
        {
            return Err(TeeError::TransactionRejected {
                code: "threshold_taproot".into(),
                reason: format!(
                    "input #{} is a taproot key-path spend: a threshold key makes ECDSA \
                     signatures (P2WPKH, P2SH-P2WPKH) only",
                    t.input
                ),
            });
        }
        let session = input_session(&meta.request_id, input, attempt);
        let policy = SignPolicy::Transaction {
            meta,
            intent_hash: &computed,
            intent: plan.intent(),
        };
        let (path, digest) = (job.path.clone(), job.sighash);
        // The key the protocol signs with is the share's own derivation; it must be the key
        // whose script the plan checked (one derivation, two implementations).
        let derived = self
            .threshold_key(key_id)?
            .share
            .derive_child_public_key(&path)
            .map_err(|e| TeeError::InvalidPath(e.to_string()))?;
        if derived != job.public_key.serialize() {
            return Err(TeeError::ThresholdRejected(format!(
                "input #{input}: the share derives another key at its path than the PSBT's"
            )));
        }
        let out =
            self.start_sign_session(session, key_id, &path, &digest, &params.signers, policy)?;
        Ok(out)
    }
}
