//! Governance entries between their wire form ([`GovChange`]) and the API's views: the server
//! shows every field of a proposed entry, and an approver rebuilds the exact change from
//! those fields (never trusting the server's bytes) to recompute what it signs.

use custos_wire::governance::{Evidence, GovChange, MeasurementPolicy, MemberRecord, MAX_EVIDENCE};
use custos_wire::protocol::CertChain;

use crate::approval::parse_fingerprint;
use crate::measurement::{describe_policy, parse_policy, policy_view};
use crate::{GovChangeView, GovernanceTerms, MemberRecordView};

/// The API view of a member record.
pub fn member_view(m: &MemberRecord) -> MemberRecordView {
    MemberRecordView {
        node: m.node.clone(),
        key_fingerprint: hex::encode(m.key_fingerprint),
        device_cert_pem: custos_pki::der_to_pem(&m.chain.device, "CERTIFICATE"),
        cluster_ca_pem: custos_pki::der_to_pem(&m.chain.cluster_ca, "CERTIFICATE"),
        device_ca_pem: custos_pki::der_to_pem(&m.chain.device_ca, "CERTIFICATE"),
        evidence_format: m.evidence.format,
        evidence_hex: hex::encode(&m.evidence.document),
        admitted_at: m.admitted_at,
    }
}

/// The API view of a change.
pub fn change_view(change: &GovChange) -> GovChangeView {
    let fps = |v: &[[u8; 32]]| v.iter().map(hex::encode).collect::<Vec<_>>();
    match change {
        GovChange::Genesis {
            governors,
            quorum,
            members,
            rules,
        } => GovChangeView::Genesis {
            governors: fps(governors),
            quorum: *quorum,
            members: members.iter().map(member_view).collect(),
            // A genesis' rules were checked when it was built or verified; one that does not
            // read shows no policy, and its rebuilt change then differs (nobody signs it).
            measurement_policy: MeasurementPolicy::from_rules(rules)
                .ok()
                .flatten()
                .as_ref()
                .map(policy_view),
        },
        GovChange::Admit { member } => GovChangeView::Admit {
            member: member_view(member),
        },
        GovChange::Remove {
            key_fingerprint,
            reason,
        } => GovChangeView::Remove {
            key_fingerprint: hex::encode(key_fingerprint),
            reason: reason.clone(),
        },
        GovChange::Revoke {
            admins,
            devices,
            reason,
        } => GovChangeView::Revoke {
            admins: fps(admins),
            devices: fps(devices),
            reason: reason.clone(),
        },
        GovChange::SetGovernors { governors, quorum } => GovChangeView::SetGovernors {
            governors: fps(governors),
            quorum: *quorum,
        },
        GovChange::SetMeasurementPolicy { policy } => GovChangeView::SetMeasurementPolicy {
            policy: policy_view(policy),
        },
    }
}

/// The terms view of entry `version` after `prev` with `change`.
pub fn terms_view(version: u64, prev: &[u8; 32], change: &GovChange) -> GovernanceTerms {
    GovernanceTerms {
        version,
        prev: hex::encode(prev),
        change: change_view(change),
    }
}

fn cert(pem: &str, what: &'static str) -> Result<Vec<u8>, String> {
    custos_pki::pem_to_der(pem, what).map_err(|e| e.to_string())
}

/// The member record a view shows, rebuilt field by field.
pub fn parse_member(m: &MemberRecordView) -> Result<MemberRecord, String> {
    let document = hex::decode(&m.evidence_hex).map_err(|_| "evidence is not hex")?;
    if document.len() > MAX_EVIDENCE {
        return Err(format!("evidence over {MAX_EVIDENCE} bytes"));
    }
    Ok(MemberRecord {
        node: m.node.clone(),
        key_fingerprint: parse_fingerprint(&m.key_fingerprint)?,
        chain: CertChain {
            device: cert(&m.device_cert_pem, "device certificate")?,
            cluster_ca: cert(&m.cluster_ca_pem, "Cluster CA certificate")?,
            device_ca: cert(&m.device_ca_pem, "Device CA certificate")?,
        },
        evidence: Evidence {
            format: m.evidence_format,
            document,
        },
        admitted_at: m.admitted_at,
    })
}

/// The change a view shows, rebuilt field by field (a genesis' only rule is its measurement
/// policy).
pub fn parse_change(view: &GovChangeView) -> Result<GovChange, String> {
    let fps = |v: &[String]| {
        v.iter()
            .map(|s| parse_fingerprint(s))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match view {
        GovChangeView::Genesis {
            governors,
            quorum,
            members,
            measurement_policy,
        } => GovChange::Genesis {
            governors: fps(governors)?,
            quorum: *quorum,
            members: members.iter().map(parse_member).collect::<Result<_, _>>()?,
            rules: match measurement_policy {
                Some(p) => vec![parse_policy(p)?.rule()],
                None => Vec::new(),
            },
        },
        GovChangeView::Admit { member } => GovChange::Admit {
            member: parse_member(member)?,
        },
        GovChangeView::Remove {
            key_fingerprint,
            reason,
        } => GovChange::Remove {
            key_fingerprint: parse_fingerprint(key_fingerprint)?,
            reason: reason.clone(),
        },
        GovChangeView::Revoke {
            admins,
            devices,
            reason,
        } => GovChange::Revoke {
            admins: fps(admins)?,
            devices: fps(devices)?,
            reason: reason.clone(),
        },
        GovChangeView::SetGovernors { governors, quorum } => GovChange::SetGovernors {
            governors: fps(governors)?,
            quorum: *quorum,
        },
        GovChangeView::SetMeasurementPolicy { policy } => GovChange::SetMeasurementPolicy {
            policy: parse_policy(policy)?,
        },
    })
}

/// The version, prev hash and change the terms show.
pub fn parse_terms(t: &GovernanceTerms) -> Result<(u64, [u8; 32], GovChange), String> {
    Ok((
        t.version,
        parse_fingerprint(&t.prev)?,
        parse_change(&t.change)?,
    ))
}

/// A short fingerprint for people: its first 8 hex characters and an ellipsis.
pub fn short(fp_hex: &str) -> String {
    let head: String = fp_hex.chars().take(8).collect();
    format!("{head}…")
}

/// One line saying what the terms do in `cluster`, e.g. `admit node "dc1-n4" (key 3fa2…) into
/// cluster dc1 as log version 4`; texts from the server are escaped.
pub fn describe_terms(cluster: &str, t: &GovernanceTerms) -> String {
    let v = t.version;
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter().map(|f| short(f)).collect::<Vec<_>>().join(", ")
        }
    };
    match &t.change {
        GovChangeView::Genesis {
            governors,
            quorum,
            members,
            measurement_policy,
        } => format!(
            "start the governance log of cluster {cluster} (version 0): governors {} with \
             quorum {quorum} of {}; members {}; admitting nodes on {}",
            list(governors),
            governors.len(),
            members
                .iter()
                .map(|m| format!("{:?} (key {})", m.node, short(&m.key_fingerprint)))
                .collect::<Vec<_>>()
                .join(", "),
            measurement_policy
                .as_ref()
                .map(describe_policy)
                .unwrap_or_else(|| "no platform yet".into())
        ),
        GovChangeView::Admit { member } => format!(
            "admit node {:?} (key {}) into cluster {cluster} as log version {v}",
            member.node,
            short(&member.key_fingerprint)
        ),
        GovChangeView::Remove {
            key_fingerprint,
            reason,
        } => format!(
            "remove the member with key {} from cluster {cluster} as log version {v} \
             (reason: {reason:?})",
            short(key_fingerprint)
        ),
        GovChangeView::Revoke {
            admins,
            devices,
            reason,
        } => format!(
            "revoke admin keys [{}] and device keys [{}] in cluster {cluster} as log version \
             {v} (reason: {reason:?})",
            list(admins),
            list(devices)
        ),
        GovChangeView::SetGovernors { governors, quorum } => format!(
            "make the governors of cluster {cluster} [{}] with quorum {quorum} of {} as log \
             version {v}",
            list(governors),
            governors.len()
        ),
        GovChangeView::SetMeasurementPolicy { policy } => format!(
            "admit nodes of cluster {cluster} on {} from log version {v} on",
            describe_policy(policy)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of change survives the trip through its view (what an approver rebuilds is
    /// what the server built), and a view that was tampered with rebuilds another change.
    #[test]
    fn changes_round_trip_through_their_views() {
        let member = MemberRecord {
            node: "dc1-n4".into(),
            key_fingerprint: [0x3f; 32],
            chain: CertChain {
                device: vec![1, 2, 3],
                cluster_ca: vec![4, 5],
                device_ca: vec![6],
            },
            evidence: Evidence {
                format: 1,
                document: vec![9; 10],
            },
            admitted_at: 1_700_000_000,
        };
        let changes = [
            GovChange::Genesis {
                governors: vec![[1; 32], [2; 32]],
                quorum: 2,
                members: vec![member.clone()],
                rules: vec![],
            },
            GovChange::Admit {
                member: member.clone(),
            },
            GovChange::Remove {
                key_fingerprint: [7; 32],
                reason: "old".into(),
            },
            GovChange::Revoke {
                admins: vec![[8; 32]],
                devices: vec![],
                reason: "lost".into(),
            },
            GovChange::SetGovernors {
                governors: vec![[1; 32]],
                quorum: 1,
            },
            GovChange::Genesis {
                governors: vec![[1; 32]],
                quorum: 1,
                members: vec![member.clone()],
                rules: vec![MeasurementPolicy::development().rule()],
            },
            GovChange::SetMeasurementPolicy {
                policy: MeasurementPolicy::development(),
            },
        ];
        for c in changes {
            let t = terms_view(4, &[5; 32], &c);
            assert_eq!(parse_terms(&t).unwrap(), (4, [5; 32], c.clone()));
        }
        let mut t = terms_view(
            4,
            &[5; 32],
            &GovChange::Admit {
                member: member.clone(),
            },
        );
        assert_eq!(
            describe_terms("dc1", &t),
            "admit node \"dc1-n4\" (key 3f3f3f3f…) into cluster dc1 as log version 4"
        );
        if let GovChangeView::Admit { member: m } = &mut t.change {
            m.node = "dc1-n5".into();
        }
        assert_ne!(
            parse_terms(&t).unwrap().2,
            GovChange::Admit { member },
            "a renamed member is another change"
        );
        t.prev = "zz".into();
        assert!(parse_terms(&t).is_err());
    }
}
