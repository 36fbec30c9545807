//! Cluster key audits (patent \[0086\]) as one tenant's token sees them.
//!
//! A cluster's bridge audits every key the cluster holds, whoever's it is; the key ids it
//! names (missing on a node, or failing their audit signature) are key ids of wallets and
//! threshold keys of any tenant. A token sees named only its own tenant's: the others'
//! findings are counted, so a node's trouble still shows to every operator, but a tenant
//! never learns another's key ids from an audit.

use std::collections::HashSet;

use custos_cloud_api::{AuditReportView, NodeAuditView};
use custos_proto::cluster::AuditReport;

use super::{call_api_error, Cloud};
use crate::error::ApiError;

impl Cloud {
    /// `POST /v1/clusters/{name}/audits` (`latest` false) and
    /// `GET /v1/clusters/{name}/audits/latest` (`latest` true), for a token of `tenant`.
    pub async fn audit(
        &self,
        tenant: &str,
        name: &str,
        latest: bool,
    ) -> Result<AuditReportView, ApiError> {
        self.cluster_config(name)?;
        let report = self
            .clusters
            .audit(name, latest)
            .await
            .map_err(call_api_error)?;
        tracing::info!(
            cluster = name,
            latest,
            nodes = report.nodes.len(),
            "audit report relayed"
        );
        let own = self.key_ids_of(tenant).await?;
        Ok(audit_view(report, &own))
    }

    /// The key ids (lower-case hex) of `tenant`'s wallets and threshold keys.
    async fn key_ids_of(&self, tenant: &str) -> Result<HashSet<String>, ApiError> {
        let wallets = self.store.wallets_of(Some(tenant)).await?;
        let threshold = self.store.threshold_keys_of(Some(tenant)).await?;
        Ok(wallets
            .into_iter()
            .map(|w| w.root_id)
            .chain(threshold.into_iter().map(|k| k.key_id))
            .collect())
    }
}

/// The report with only the key ids in `own` named; the other findings counted per node.
pub(super) fn audit_view(a: AuditReport, own: &HashSet<String>) -> AuditReportView {
    AuditReportView {
        started_at_ms: a.started_at_ms,
        finished_at_ms: a.finished_at_ms,
        keys: a.keys,
        nodes: a
            .nodes
            .into_iter()
            .map(|n| {
                let (missing, hidden_missing) = split_own(&n.missing, own);
                let (wrong, hidden_wrong) = split_own(&n.wrong, own);
                NodeAuditView {
                    node: n.node,
                    checked: n.checked,
                    ok: n.ok,
                    missing,
                    wrong,
                    hidden: hidden_missing + hidden_wrong,
                    error: (!n.error.is_empty()).then_some(n.error),
                }
            })
            .collect(),
    }
}

/// The ids of `ids` that are in `own` (as hex), and how many are not.
fn split_own(ids: &[Vec<u8>], own: &HashSet<String>) -> (Vec<String>, u64) {
    let mut named = Vec::new();
    let mut hidden = 0u64;
    for id in ids.iter().map(hex::encode) {
        if own.contains(&id) {
            named.push(id);
        } else {
            hidden += 1;
        }
    }
    (named, hidden)
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_proto::cluster::NodeAudit;

    #[test]
    fn only_own_key_ids_are_named_and_the_rest_counted() {
        let own: HashSet<String> = [hex::encode([3; 33])].into_iter().collect();
        let report = AuditReport {
            started_at_ms: 1,
            finished_at_ms: 2,
            keys: 3,
            nodes: vec![NodeAudit {
                node: "node1".into(),
                checked: 3,
                ok: 0,
                missing: vec![vec![3; 33], vec![2; 33]],
                wrong: vec![vec![4; 33]],
                error: String::new(),
            }],
        };
        let view = audit_view(report, &own);
        assert_eq!(view.nodes[0].missing, vec![hex::encode([3; 33])]);
        assert!(view.nodes[0].wrong.is_empty());
        assert_eq!(view.nodes[0].hidden, 2);
        assert_eq!(view.nodes[0].error, None);
    }
}
