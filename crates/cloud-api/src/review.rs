//! What an approver sees before signing: the request described field by field, and its
//! approval message recomputed from those fields with the TEE's own encoder. The server's
//! copy of the message is only compared against it: a server showing one request and asking
//! to sign other bytes is refused.

use std::io::{BufRead, Write};

use custos_pki::AdminSigner;

use crate::approval::{approval_message, sign_approval};
use crate::client::{ClientError, CloudClient};
use crate::{RequestKind, RequestQuery, RequestStatus, RequestView};

/// Why a review or an approval did not go through.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The server refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Terminal I/O.
    #[error("terminal: {0}")]
    Io(#[from] std::io::Error),
    /// The request cannot be approved as shown (not pending, fields unusable, a message
    /// other than the one recomputed, not confirmed).
    #[error("{0}")]
    Refused(String),
    /// The admin's key did not sign.
    #[error("admin key: {0}")]
    Key(#[from] custos_pki::PkiError),
}

fn expiry_text(expires_at: u64) -> String {
    let now = custos_pki::clock::now_unix();
    if expires_at <= now {
        format!("{expires_at} (Unix time; already passed)")
    } else {
        let left = expires_at - now;
        format!(
            "{expires_at} (Unix time; in {}h{:02}m)",
            left / 3600,
            left % 3600 / 60
        )
    }
}

/// Checks that `view` is the request asked for and that the server's approval message is
/// the one recomputed from its fields; returns that message.
pub fn checked_message(view: &RequestView, requested_id: &str) -> Result<Vec<u8>, ReviewError> {
    if !view.id.eq_ignore_ascii_case(requested_id) {
        return Err(ReviewError::Refused(format!(
            "asked for request {requested_id}, the server answered with {}",
            view.id
        )));
    }
    misplaced_fields(view).map_err(ReviewError::Refused)?;
    let message = approval_message(view)
        .map_err(|e| ReviewError::Refused(format!("request fields are unusable: {e}")))?;
    if hex::encode(&message) != view.approval_message.to_ascii_lowercase() {
        return Err(ReviewError::Refused(
            "the server's approval message differs from the one computed from the request's \
             fields; refusing to sign"
                .into(),
        ));
    }
    Ok(message)
}

/// A transaction or rules shown on a request whose approval does not cover them: a server
/// could dress a raw digest up as a harmless payment, or an import up as a limited wallet.
fn misplaced_fields(view: &RequestView) -> Result<(), String> {
    if view.transaction.is_some()
        && !matches!(view.kind, RequestKind::SignPsbt | RequestKind::SignEthereum)
    {
        return Err(format!(
            "a {} request shows a transaction its approval does not cover; refusing",
            view.kind.as_str()
        ));
    }
    // An import's rules are sealed with its group: a legacy import's message has none.
    let covers_rules = match view.kind {
        RequestKind::CreateWallet => true,
        RequestKind::ImportWallet | RequestKind::CreateThresholdKey => view.group.is_some(),
        _ => false,
    };
    if view.rules.is_some() && !covers_rules {
        return Err(format!(
            "a {} request shows rules its approval does not cover; refusing",
            view.kind.as_str()
        ));
    }
    Ok(())
}

/// What the admin is about to approve, field by field.
pub fn describe(view: &RequestView) -> String {
    let mut s = String::new();
    if let Err(e) = misplaced_fields(view) {
        return format!("  UNUSABLE REQUEST: {e}\n");
    }
    // A threshold key's request (a group change, a PSBT): one approval for every cluster of
    // the key.
    let threshold = view.cluster == custos_wire::approval::THRESHOLD_SCOPE;
    let line = |s: &mut String, k: &str, v: &str| s.push_str(&format!("  {k:<14}{v}\n"));
    line(&mut s, "request", &view.id);
    line(
        &mut s,
        "kind",
        match view.kind {
            RequestKind::CreateWallet => "create a new wallet",
            RequestKind::ImportWallet => "import a wallet",
            RequestKind::Sign => "sign a digest",
            RequestKind::ImportThresholdKey => "import a share of a threshold key",
            RequestKind::ThresholdSign => "sign a digest with a threshold key",
            RequestKind::CreateThresholdKey => {
                "create a threshold key by distributed key generation"
            }
            RequestKind::Governance => "change the cluster's governance log",
            RequestKind::SetKeyPolicy if threshold => {
                "change a threshold key's approver group (on every cluster of the key)"
            }
            RequestKind::SetKeyPolicy => "change a wallet's approver group",
            RequestKind::SignPsbt if threshold => {
                "sign a Bitcoin transaction (PSBT) with a threshold key"
            }
            RequestKind::SignPsbt => "sign a Bitcoin transaction (PSBT)",
            RequestKind::SignEthereum => "sign an Ethereum transaction or message",
        },
    );
    if let (Some(c), Some(w)) = (&view.key_policy, &view.root_id) {
        describe_policy_change(&mut s, threshold, w, c);
    }
    if let Some(t) = &view.governance {
        line(
            &mut s,
            "change",
            &crate::governance::describe_terms(&view.cluster, t),
        );
        line(&mut s, "log version", &t.version.to_string());
        line(&mut s, "after entry", &t.prev);
        describe_change_fields(&mut s, &t.change);
    }
    if view.kind == RequestKind::ThresholdSign || (threshold && view.kind == RequestKind::SignPsbt)
    {
        line(
            &mut s,
            "cluster",
            &format!("{} (any t of the key's clusters)", view.cluster),
        );
    } else if view.kind == RequestKind::CreateThresholdKey || threshold {
        line(
            &mut s,
            "cluster",
            &format!("{} (every cluster of the key)", view.cluster),
        );
    } else {
        line(&mut s, "cluster", &view.cluster);
    }
    if let Some(w) = &view.root_id {
        let label = if view.kind.is_threshold() || threshold {
            "threshold key"
        } else {
            "wallet"
        };
        line(&mut s, label, w);
    }
    if let Some(i) = view.share_index {
        line(&mut s, "share", &i.to_string());
    }
    if let (Some(t), Some(clusters)) = (view.threshold, &view.clusters) {
        line(
            &mut s,
            "threshold",
            &format!("{t} of {} (any {t} clusters sign)", clusters.len()),
        );
        let shares: Vec<String> = clusters
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{i}: {c}"))
            .collect();
        line(&mut s, "shares", &shares.join(", "));
    } else if let (true, Some(clusters)) = (threshold, &view.clusters) {
        line(
            &mut s,
            "applies on",
            &format!(
                "{} (every cluster holding a share, by share index)",
                clusters.join(", ")
            ),
        );
    }
    if let Some(hd) = view.hd {
        line(
            &mut s,
            "hd",
            if hd {
                "yes (non-hardened child keys)"
            } else {
                "no (root key only)"
            },
        );
    }
    if let Some(p) = &view.path {
        line(&mut s, "path", p);
    }
    if let Some(d) = &view.digest {
        line(&mut s, "digest", d);
    }
    if let Some(tx) = &view.transaction {
        // Shown only once it hashes to what is signed; never the server's prose.
        match crate::transaction::checked_intent(tx) {
            Ok((intent, hash)) => {
                line(&mut s, "intent hash", &hex::encode(hash));
                for l in intent.describe() {
                    line(&mut s, "transaction", &l);
                }
            }
            Err(e) => line(&mut s, "transaction", &format!("UNUSABLE: {e}")),
        }
    }
    if let Some(n) = &view.target_node {
        // Threshold signing keeps the caller's preferred clusters there; they are not
        // part of what is approved.
        let label = match view.kind {
            RequestKind::ThresholdSign => "preferred",
            RequestKind::SignPsbt if threshold => "preferred",
            RequestKind::CreateWallet | RequestKind::CreateThresholdKey => "executed by",
            // The velocity holder: its TEE alone counts the wallet's rolling window.
            RequestKind::SignPsbt | RequestKind::SignEthereum => "signed by",
            _ => "sealed to",
        };
        line(&mut s, label, n);
    }
    describe_group(&mut s, view);
    for l in view.rules.iter().flat_map(|r| r.describe()) {
        line(&mut s, "rule", &l);
    }
    if matches!(
        view.kind,
        RequestKind::CreateWallet | RequestKind::ImportWallet | RequestKind::CreateThresholdKey
    ) && view.group.is_some()
        && view.rules.is_none()
    {
        line(
            &mut s,
            "rule",
            "none: this wallet signs raw digests its approvers cannot read",
        );
    }
    line(&mut s, "quorum", &view.quorum.to_string());
    // A rules change needs every tier group whatever the amount; a transaction, the tiers
    // its amount reaches.
    let (label, why) = match view.kind {
        RequestKind::SetKeyPolicy => ("rules change", "a tier of the rules in force: "),
        _ => ("also needs", ""),
    };
    for t in view.tiers.iter().flatten() {
        line(
            &mut s,
            label,
            &format!(
                "{} of group {} ({why}{}; {} so far)",
                t.tier.quorum,
                t.tier.group.join(", "),
                t.tier.describe(),
                t.approved
            ),
        );
    }
    let approvers: Vec<&str> = view.approvals.iter().map(|a| a.admin.as_str()).collect();
    line(
        &mut s,
        "approved by",
        &if approvers.is_empty() {
            "nobody yet".to_string()
        } else {
            approvers.join(", ")
        },
    );
    line(&mut s, "expires", &expiry_text(view.expires_at));
    line(&mut s, "requested", &view.created_by);
    s
}

/// Every field of a governance change, in full (fingerprints unshortened), so that an
/// approver can compare them with what the operator announced. Texts the server supplies are
/// printed escaped (`{:?}`): a line break or terminal escape in them cannot redraw the lines
/// around them.
fn describe_change_fields(s: &mut String, change: &crate::GovChangeView) {
    use crate::GovChangeView as C;
    let mut line = |k: &str, v: &str| s.push_str(&format!("  {k:<14}{v}\n"));
    let member = |line: &mut dyn FnMut(&str, &str), m: &crate::MemberRecordView| {
        line(
            "member",
            &format!(
                "{:?} key {} admitted at {} evidence format {}",
                m.node, m.key_fingerprint, m.admitted_at, m.evidence_format
            ),
        );
        evidence_lines(line, m);
    };
    match change {
        C::Genesis {
            governors,
            quorum,
            members,
            measurement_policy,
        } => {
            governors.iter().for_each(|g| line("governor", g));
            line("gov. quorum", &quorum.to_string());
            members.iter().for_each(|m| member(&mut line, m));
            match measurement_policy {
                Some(p) => policy_lines(&mut line, p),
                None => line("admits", "no platform yet"),
            }
        }
        C::Admit { member: m } => member(&mut line, m),
        C::Remove {
            key_fingerprint,
            reason,
        } => {
            line("removed key", key_fingerprint);
            line("reason", &format!("{reason:?}"));
        }
        C::Revoke {
            admins,
            devices,
            reason,
        } => {
            admins.iter().for_each(|a| line("revoked admin", a));
            devices.iter().for_each(|d| line("revoked dev.", d));
            line("reason", &format!("{reason:?}"));
        }
        C::SetGovernors { governors, quorum } => {
            governors.iter().for_each(|g| line("governor", g));
            line("gov. quorum", &quorum.to_string());
        }
        C::SetMeasurementPolicy { policy } => policy_lines(&mut line, policy),
    }
}

/// What an admission's evidence answers: the ticket's issuer, window and nonce, the
/// platform, and for a TPM the keys its credential was made for. An approver checks that the
/// issuer is a member and the window is recent; the TEEs verify the evidence itself.
fn evidence_lines(line: &mut dyn FnMut(&str, &str), m: &crate::MemberRecordView) {
    use custos_wire::governance::{AdmissionEvidence, EVIDENCE_ADMISSION_V1};
    if m.evidence_format != EVIDENCE_ADMISSION_V1 {
        return;
    }
    let decoded = hex::decode(&m.evidence_hex)
        .ok()
        .and_then(|b| AdmissionEvidence::decode(&m.node, &b).ok());
    let Some(ev) = decoded else {
        line("evidence", "UNREADABLE (the TEEs will refuse it)");
        return;
    };
    let t = &ev.ticket.ticket;
    line("ticket by", &hex::encode(t.issuer));
    line(
        "ticket valid",
        &format!("from {} to {}", t.issued_at, expiry_text(t.expires_at)),
    );
    line("platform", &format!("{:?}", ev.platform));
    if let Some(c) = &t.tpm {
        line("tpm AK name", &hex::encode(&c.ak_name));
        line("tpm EK cert", &hex::encode(c.ek_cert_sha256));
    }
}

/// Every field of a measurement policy, one line each.
fn policy_lines(line: &mut dyn FnMut(&str, &str), p: &crate::MeasurementPolicyView) {
    line("admits", &crate::measurement::describe_policy(p));
    if let Some(t) = &p.tpm {
        t.ek_roots_sha256
            .iter()
            .for_each(|r| line("tpm EK root", r));
        t.pcrs
            .iter()
            .for_each(|r| line(&format!("tpm PCR{}", r.index), &r.value));
    }
    if let Some(n) = &p.nitro {
        n.pcrs
            .iter()
            .for_each(|r| line(&format!("nitro PCR{}", r.index), &r.value));
    }
    if let Some(s) = &p.snp {
        line("snp ARK", &s.ark_sha256);
        line("snp measure", &s.measurement);
        line("snp debug ok", &s.allow_debug.to_string());
    }
    if let Some(t) = &p.tdx {
        line("tdx MRTD", &t.mr_td);
        line("tdx TCB", &format!("{:?}", t.tcb_statuses));
    }
}

/// An approver group change in words, then both groups in full: the approvals come from the
/// group in force, and the new group alone counts afterwards.
fn describe_policy_change(
    s: &mut String,
    threshold: bool,
    root_id: &str,
    c: &crate::KeyPolicyChange,
) {
    let mut line = |k: &str, v: &str| s.push_str(&format!("  {k:<14}{v}\n"));
    let what = if threshold { "threshold key" } else { "wallet" };
    line(
        "change",
        &crate::key_policy::describe_change(what, root_id, c),
    );
    line(
        "in force",
        &format!(
            "version {}: {} of these {} admins approve this change:",
            c.current_version,
            c.current_quorum,
            c.current_group.len()
        ),
    );
    if c.current_group.is_empty() {
        line("", "(none named: sealed before approver groups)");
    }
    c.current_group.iter().for_each(|g| line("", g));
    line(
        "new group",
        &format!(
            "version {}: {} of these {} admins, and no other, approve every later use:",
            c.version,
            c.quorum,
            c.group.len()
        ),
    );
    c.group.iter().for_each(|g| line("", g));
    if c.rules != c.current_rules {
        let lines = |r: &Option<crate::PolicyRules>| match r {
            Some(r) => r.describe(),
            None => vec!["none: raw digests are signed, no transaction".to_string()],
        };
        line("rules now", "");
        lines(&c.current_rules).iter().for_each(|l| line("", l));
        line("rules after", "");
        lines(&c.rules).iter().for_each(|l| line("", l));
    } else if let Some(r) = &c.current_rules {
        line("rules", "unchanged:");
        r.describe().iter().for_each(|l| line("", l));
    }
}

/// A wallet creation's approver group and executing node, in words: who alone will ever
/// approve the key, and that no other node may make it.
fn describe_group(s: &mut String, view: &RequestView) {
    let line = |s: &mut String, k: &str, v: &str| s.push_str(&format!("  {k:<14}{v}\n"));
    if let Some(executor) = &view.executor {
        line(
            s,
            "executor key",
            &format!("{executor} (only this node may create it)"),
        );
    }
    if let Some(executors) = &view.executors {
        let nodes: Vec<&str> = view
            .target_node
            .as_deref()
            .map(|n| n.split(',').collect())
            .unwrap_or_default();
        line(
            s,
            "executors",
            "only these nodes (device key fingerprints, by share) may make the key:",
        );
        for (i, fp) in executors.iter().enumerate() {
            let node = nodes.get(i).copied().unwrap_or("?");
            line(s, "", &format!("{i}: {node} {fp}"));
        }
    }
    if let Some(anchors) = view.anchors.as_ref().filter(|a| !a.is_empty()) {
        let clusters = view.clusters.as_deref().unwrap_or_default();
        line(
            s,
            "anchors",
            "co-signers of each cluster count only as members of this governance log \
             (genesis id, by share):",
        );
        for (i, genesis) in anchors.iter().enumerate() {
            let cluster = clusters.get(i).map_or("?", String::as_str);
            line(s, "", &format!("{i}: {cluster} {genesis}"));
        }
    } else if view.executors.is_some() {
        line(
            s,
            "anchors",
            "none: co-signers of other clusters are checked by certificate only",
        );
    }
    if let Some(group) = &view.group {
        line(
            s,
            "group",
            &format!(
                "{} of these {} admins (key fingerprints) approve its creation and every use; \
                 no other admin counts:",
                view.quorum,
                group.len()
            ),
        );
        for fp in group {
            line(s, "", fp);
        }
    }
}

/// Lists the requests waiting for approval, one line each.
pub async fn list_pending(client: &CloudClient, out: &mut dyn Write) -> Result<(), ReviewError> {
    let list = client
        .requests(&RequestQuery {
            status: Some(RequestStatus::PendingApproval),
            kind: None,
            limit: Some(100),
        })
        .await?;
    if list.requests.is_empty() {
        writeln!(out, "no request is waiting for approval")?;
    }
    for r in &list.requests {
        writeln!(
            out,
            "{}  {:<20} {:<11} {}  expires {}",
            r.id,
            r.kind.as_str(),
            r.cluster,
            progress(r),
            r.expires_at
        )?;
    }
    Ok(())
}

/// Reviews request `id` and approves it as `admin` (whose key `signer` is): fetches it,
/// refuses unless it waits for approval and its approval message is the one recomputed
/// from its fields, prints what will be signed in full, asks for `yes` on `input` unless
/// `yes` is set, then signs and posts the approval. Returns the request as it is after.
/// `admin` is only the name shown to the approver (the server and the TEE identify the
/// approver by the certified key, never by a name).
pub async fn review_and_approve(
    client: &CloudClient,
    id: &str,
    admin: &str,
    signer: &AdminSigner,
    yes: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<RequestView, ReviewError> {
    let view = client.request(id).await?;
    if view.status != RequestStatus::PendingApproval {
        return Err(ReviewError::Refused(format!(
            "request {} is {}, not waiting for approval",
            view.id,
            view.status.as_str()
        )));
    }
    let message = checked_message(&view, id)?;
    writeln!(
        out,
        "You ({}) are asked to approve:\n{}",
        admin,
        describe(&view)
    )?;
    writeln!(
        out,
        "  signing       {} bytes, SHA-256 {}",
        message.len(),
        {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&message))
        }
    )?;
    if !yes {
        write!(out, "Approve? Type 'yes' to sign: ")?;
        out.flush()?;
        let mut answer = String::new();
        input.read_line(&mut answer)?;
        if answer.trim() != "yes" {
            return Err(ReviewError::Refused("not approved".into()));
        }
    }
    let approval = sign_approval(signer, &message)?;
    let updated = client.approve(&view.id, &approval).await?;
    writeln!(
        out,
        "request {}: {} ({})",
        updated.id,
        updated.status.as_str(),
        progress(&updated)
    )?;
    if let Some(e) = &updated.error {
        writeln!(out, "  {}: {}", e.code, e.message)?;
    }
    if let Some(r) = &updated.result {
        writeln!(
            out,
            "  result: {}",
            serde_json::to_string(r).unwrap_or_default()
        )?;
    }
    Ok(updated)
}

/// Approvals so far against what the request needs: "1/2 approvals"; with tiers of other
/// groups, the key's group's count and each tier group's ("1/2 of the key's group, 0/1 of a
/// tier group"). The server admits only admins of those groups, and a tier's group shares
/// none with the key's, so an approval of no tier group is one of the key's group.
pub fn progress(view: &RequestView) -> String {
    let (n, quorum) = (view.approvals.len(), view.quorum);
    let Some(tiers) = view.tiers.as_ref().filter(|t| !t.is_empty()) else {
        return format!("{n}/{quorum} approvals");
    };
    let own = view
        .approvals
        .iter()
        .filter(|a| {
            !tiers
                .iter()
                .any(|t| t.tier.group.contains(&a.key_fingerprint))
        })
        .count();
    let tiers: Vec<String> = tiers
        .iter()
        .map(|t| format!("{}/{} of a tier group", t.approved, t.tier.quorum))
        .collect();
    format!("{own}/{quorum} of the key's group, {}", tiers.join(", "))
}
