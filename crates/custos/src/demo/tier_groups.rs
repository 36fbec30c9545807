//! The demo's approval tier naming another group (issue 14): a wallet of alice and bob
//! whose transactions above 100 000 sat need the risk officer's approval besides theirs.
//! A PSBT of 250 000 sat stays pending after alice and bob approved, showing what it still
//! needs; once the risk officer approved, the TEE checks every group's count itself and
//! signs, and the PSBT is finalized and run through miniscript's interpreter.

use bitcoin::psbt::Psbt;
use custos_cloud_api::{ApprovalTierView, PolicyRules, SpendLimitView};
use miniscript::psbt::PsbtExt;

use super::transactions::outside;
use super::*;

impl Demo {
    /// Runs the step; returns its part of the report.
    pub(super) async fn tier_group(&mut self) -> Result<serde_json::Value, AnyError> {
        let asset = "bitcoin:regtest";
        let rules = PolicyRules {
            transactions_only: true,
            spend_limits: vec![SpendLimitView {
                asset: asset.into(),
                per_transaction: "1000000".into(),
                window_secs: 0,
                per_window: "1000000".into(),
                count_per_window: 1,
            }],
            approval_tiers: vec![ApprovalTierView {
                asset: asset.into(),
                above: "100000".into(),
                quorum: 1,
                group: vec![hex::encode(self.risk.key_fingerprint())],
            }],
            ..PolicyRules::default()
        };
        let group = [&self.alice, &self.bob].map(|a| hex::encode(a.key_fingerprint()));
        let (root, xpub) = self.ruled_wallet(&rules, group.to_vec(), None).await?;
        let psbt = Self::psbt(&xpub, outside(10)?.0, 250_000);
        let mut view = self.psbt_request(&root, psbt).await?;
        for signer in [&self.alice, &self.bob] {
            view = approve(&self.client, signer, &view.id).await?;
        }
        // The key's whole group approved: the request waits for the risk officer.
        status_is(&view, RequestStatus::PendingApproval, "above the tier")?;
        let waiting = view.tiers.clone().unwrap_or_default();
        if waiting.len() != 1 || waiting[0].approved != 0 {
            return Err(fail(&format!(
                "the tier shown is not the one waiting: {waiting:?}"
            )));
        }
        let done = approve(&self.client, &self.risk, &view.id).await?;
        status_is(&done, RequestStatus::Completed, "with the risk officer")?;
        let Some(RequestResult::Psbt(result)) = &done.result else {
            return Err(fail("the tiered PSBT request produced no PSBT"));
        };
        let mut psbt: Psbt = result.psbt.parse()?;
        psbt.finalize_mut(&Secp256k1::verification_only())
            .map_err(|e| fail(&format!("the tiered PSBT does not finalize: {e:?}")))?;
        let txid = psbt.extract_tx()?.compute_txid();
        self.steps.ok(
            "approval tier of another group",
            format!(
                "wallet {}… of alice and bob, 2 of 2, above 100 000 sat also 1 of the risk \
                 group: a PSBT paying 250 000 sat stayed pending after alice and bob approved \
                 (1 approval of the risk group shown missing), was signed once risk approved \
                 — the TEE counting each group by its own admins — finalized and checked by \
                 miniscript's interpreter (txid {txid})",
                &root[..16]
            ),
        );
        Ok(json!({
            "wallet": root,
            "rules": rules,
            "request_id": done.id,
            "waiting_after_the_keys_group": waiting,
            "approved_by": done.approvals.iter().map(|a| a.admin.clone()).collect::<Vec<_>>(),
            "intent_hash": result.intent_hash,
            "txid": txid.to_string(),
        }))
    }
}
