//! Views of a cluster's governance state and log, from its log as a member's TEE holds it,
//! verified from the genesis.

use custos_wire::governance::{entry_hash, GovEntry};

use super::*;

impl Cloud {
    /// `GET /v1/clusters/{name}/members`.
    pub async fn members(&self, cluster: &str) -> Result<MembersView, ApiError> {
        let log = self.governed(cluster).await?;
        // The bridge's word on who serves is informational: shown when it answers.
        let status = self.clusters.status(cluster, false).await.ok();
        let s = &log.state;
        let revoked = |m: &std::collections::BTreeMap<[u8; 32], u64>| {
            m.iter()
                .map(|(fp, v)| RevokedView {
                    fingerprint: hex::encode(fp),
                    version: *v,
                })
                .collect()
        };
        Ok(MembersView {
            cluster: cluster.to_string(),
            genesis_id: hex::encode(s.genesis_id),
            version: s.version,
            head: hex::encode(s.head),
            governors: s.governors.iter().map(hex::encode).collect(),
            quorum: s.quorum,
            members: s
                .members
                .iter()
                .map(|(fp, m)| {
                    let node = status
                        .as_ref()
                        .and_then(|st| st.nodes.iter().find(|n| n.node == m.record.node));
                    MemberView {
                        node: m.record.node.clone(),
                        key_fingerprint: hex::encode(fp),
                        admitted_version: m.admitted_version,
                        admitted_at: m.record.admitted_at,
                        evidence_format: m.record.evidence.format,
                        serving: status.as_ref().map(|_| node.is_some_and(|n| n.healthy)),
                        cert_not_after: node.map(|n| n.cert_not_after).filter(|t| *t != 0),
                    }
                })
                .collect(),
            revoked_admins: revoked(&s.revoked_admins),
            revoked_devices: revoked(&s.revoked_devices),
        })
    }

    /// `GET /v1/clusters/{name}/governance`.
    pub async fn governance_log(
        &self,
        cluster: &str,
        q: &GovernanceQuery,
    ) -> Result<GovernanceLogView, ApiError> {
        let log = self.governed(cluster).await?;
        let since = usize::try_from(q.since.unwrap_or(0)).unwrap_or(usize::MAX);
        let entries = log
            .entries
            .iter()
            .skip(since)
            .take(LOG_PAGE)
            .map(|e| self.entry_view(cluster, e))
            .collect();
        Ok(GovernanceLogView {
            cluster: cluster.to_string(),
            genesis_id: hex::encode(log.state.genesis_id),
            version: log.state.version,
            head: hex::encode(log.state.head),
            entries,
        })
    }

    fn entry_view(&self, cluster: &str, e: &GovEntry) -> GovEntryView {
        let approvers = e
            .approvals
            .iter()
            .filter_map(|a| {
                // The log verified, so each certificate was valid within the entry's window;
                // it is read at the last instant of that window it was valid.
                let (_, not_after) =
                    custos_pki::validity_window(&[&a.admin_cert, &a.admin_ca]).ok()?;
                let at = e.meta.expires_at.min(not_after);
                let admin = self
                    .trust_root
                    .verify_admin(&a.admin_cert, &a.admin_ca, at)
                    .ok()?;
                Some(EntryApproverView {
                    admin: admin.identity.name.clone(),
                    key_fingerprint: hex::encode(admin.identity.key),
                })
            })
            .collect();
        GovEntryView {
            version: e.version,
            hash: hex::encode(entry_hash(cluster, e)),
            prev: hex::encode(e.prev),
            request_id: hex::encode(e.meta.request_id),
            expires_at: e.meta.expires_at,
            change: custos_cloud_api::governance::change_view(&e.change),
            approvers,
        }
    }
}
