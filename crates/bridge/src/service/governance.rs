//! Cluster membership at the bridge (issue 12 item 1, plan steps F1 and F2): the governance
//! log the admins approved, verified against the pinned Root, decides which nodes may
//! register and under which name. The bridge relays new entries to every member TEE, keeps
//! the log in its metadata DB, and brings a member whose TEE is behind up to date when it
//! registers. Its own view never decides anything the log does not say.

use custos_metadata::{GovernanceRow, MetadataError, MAX_GOVERNANCE_PAGE};
use custos_pki::AdminCache;
use custos_wire::governance::{
    device_key_fingerprint, entry_hash, verify_log, DeviceRefusal, GovChange, GovEntry, GovError,
    GovState, MAX_GOV_ENTRIES_PER_APPLY,
};

use super::*;
use crate::routing::names;

/// Why the governance log stored in the metadata DB stops the bridge at start: a row the
/// bridge cannot account for means its member list cannot be trusted, so it does not serve.
#[derive(Debug, thiserror::Error)]
pub enum GovernanceLoadError {
    /// A row's bytes are not an encoded entry.
    #[error("governance row {version}: not an encoded entry: {reason}")]
    Decode {
        /// The row's version.
        version: u64,
        /// Decoder message.
        reason: String,
    },
    /// A row holds an entry of another version.
    #[error("governance row {version} holds the entry of version {found}")]
    Position {
        /// The row's version.
        version: u64,
        /// The entry's own version.
        found: u64,
    },
    /// A row's stored hash is not its entry's hash.
    #[error("governance row {version}: stored hash {stored} is not the entry's hash {computed}")]
    Hash {
        /// The row's version.
        version: u64,
        /// Hash in the row (hex).
        stored: String,
        /// Hash of the entry (hex).
        computed: String,
    },
    /// The log does not verify against the Root (or the pinned genesis).
    #[error("the stored governance log does not verify: {0}")]
    Verify(#[source] GovError),
}

/// Why a relayed governance request is refused, with the code its history row carries.
struct Refused {
    code: &'static str,
    detail: String,
}

impl Refused {
    fn status(&self) -> Status {
        let message = format!("{}: {}", self.code, self.detail);
        match self.code {
            "unavailable" => Status::unavailable(message),
            _ => Status::failed_precondition(message),
        }
    }
}

/// Entries new to the cluster must be relayed while their approvals are current. A TEE
/// cannot tell an entry new to the cluster from one it missed (a returning node replays old
/// entries, long expired), so the cluster's gate for fresh changes is here, before any TEE
/// hears of them: approvals collected for a change that was then shelved cannot be applied
/// months later. Entries the bridge already stores are never re-checked, nor a whole log
/// relayed to a bridge that has none. An entry the TEEs applied but the bridge failed to
/// store can no longer be relayed once expired: the bridge learns it from a member's TEE
/// instead (`catch_up_from`, at that member's next registration).
fn unexpired(entries: &[GovEntry]) -> Result<(), Refused> {
    let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
    match entries.iter().find(|e| e.meta.expires_at < now) {
        Some(e) => Err(Refused {
            code: "governance_expired",
            detail: format!(
                "the approvals of entry {} expired at {} (now {now}): approve the change anew",
                e.version, e.meta.expires_at
            ),
        }),
        None => Ok(()),
    }
}

/// The log's entries stored from version `from` on, each decoded and its stored hash checked.
pub(super) async fn stored_entries(
    db: &MetadataDb,
    cluster: &str,
    from: u64,
) -> Result<Vec<GovEntry>, BridgeError> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let page = db.governance_entries(next).await?;
        let full = page.len() == MAX_GOVERNANCE_PAGE;
        for row in page {
            out.push(decode_row(cluster, &row)?);
            next = row.version.saturating_add(1);
        }
        if !full {
            return Ok(out);
        }
    }
}

fn decode_row(cluster: &str, row: &GovernanceRow) -> Result<GovEntry, GovernanceLoadError> {
    let e: GovEntry =
        GovEntry::decode_stored(&row.entry).map_err(|err| GovernanceLoadError::Decode {
            version: row.version,
            reason: err.to_string(),
        })?;
    if e.version != row.version {
        return Err(GovernanceLoadError::Position {
            version: row.version,
            found: e.version,
        });
    }
    let computed = entry_hash(cluster, &e);
    if computed != row.hash {
        return Err(GovernanceLoadError::Hash {
            version: row.version,
            stored: hex::encode(row.hash),
            computed: hex::encode(computed),
        });
    }
    Ok(e)
}

/// The row an entry is stored as: postcard, the encoding the TEE seals.
fn row_of(cluster: &str, e: &GovEntry) -> Result<GovernanceRow, postcard::Error> {
    Ok(GovernanceRow {
        version: e.version,
        hash: entry_hash(cluster, e),
        entry: postcard::to_allocvec(e)?,
    })
}

/// The state the stored log leads to (`None` while the cluster has no genesis), verified
/// from the genesis against the Root and the pin.
pub(super) async fn load_governance(
    db: &MetadataDb,
    root: &TrustRoot,
    cluster: &str,
    pin: Option<[u8; 32]>,
) -> Result<Option<GovState>, BridgeError> {
    let entries = stored_entries(db, cluster, 0).await?;
    if entries.is_empty() {
        if pin.is_none() {
            tracing::warn!(
                %cluster,
                "no genesis_id pinned: the first genesis relayed to this bridge will be trusted"
            );
        }
        return Ok(None);
    }
    let state = verify_log(root, cluster, pin, &entries).map_err(GovernanceLoadError::Verify)?;
    if pin.is_none() {
        tracing::warn!(
            %cluster,
            genesis_id = %hex::encode(state.genesis_id),
            "no genesis_id pinned: trusting the stored genesis; pin it in the bridge config"
        );
    }
    tracing::info!(
        %cluster,
        version = state.version,
        members = state.members.len(),
        "governance log verified"
    );
    Ok(Some(state))
}

/// Whether the registry entry `name` with device key `device_key` is a current member under
/// that name in `gov`.
fn is_member(gov: &GovState, name: &str, device_key: &[u8]) -> bool {
    device_key_fingerprint(device_key)
        .and_then(|fp| gov.member(&fp))
        .is_some_and(|m| m.record.node == name)
}

/// What a change does, for the history: its kind and the nodes it names.
fn describe_change(change: &GovChange, before: Option<&GovState>) -> (&'static str, Vec<String>) {
    let name_of = |fp: &[u8; 32]| {
        before
            .and_then(|g| g.members.get(fp))
            .map(|m| m.record.node.clone())
            .unwrap_or_else(|| format!("key {}", hex::encode(fp)))
    };
    match change {
        GovChange::Genesis { members, .. } => {
            ("genesis", members.iter().map(|m| m.node.clone()).collect())
        }
        GovChange::Admit { member } => ("member-admit", vec![member.node.clone()]),
        GovChange::Remove {
            key_fingerprint, ..
        } => ("member-remove", vec![name_of(key_fingerprint)]),
        GovChange::Revoke { devices, .. } => ("revoke", devices.iter().map(name_of).collect()),
        GovChange::SetGovernors { .. } => ("set-governors", Vec::new()),
        GovChange::SetMeasurementPolicy { .. } => ("set-measurement-policy", Vec::new()),
    }
}

impl BridgeService {
    /// Refuses a node whose device is not a current member under the name its certificate
    /// carries, once the cluster is governed (an ungoverned cluster serves any device of the
    /// cluster, as before). `leaf` is its device certificate, sampled in the refusal row;
    /// `what` names the call in it.
    pub(super) fn check_member(
        &self,
        id: &DeviceIdentity,
        leaf: Option<&[u8]>,
        what: &str,
    ) -> Result<(), Status> {
        let st = &self.state;
        let gov = st.gov.read().unwrap_or_else(|p| p.into_inner());
        let Some(gov) = gov.as_ref() else {
            return Ok(());
        };
        // `check_device` also requires the certified name to be the member's: a genuine
        // certificate for a member's name with another key is not that member, so a name is
        // never taken over, and since names are unique among members the registry entry of
        // a name only ever holds that member's key.
        let refusal = match gov.check_device(id) {
            Ok(_) => return Ok(()),
            Err(r) => r,
        };
        let code = match refusal {
            DeviceRefusal::Revoked { .. } => "device_revoked",
            DeviceRefusal::NotAMember { .. } | DeviceRefusal::WrongName { .. } => "not_a_member",
        };
        let leaf_fp = leaf.and_then(|c| {
            let digest = ring::digest::digest(&ring::digest::SHA256, c);
            <[u8; 32]>::try_from(digest.as_ref()).ok()
        });
        st.refusals.record(Layer::App, code, leaf_fp, now_ms(), || {
            format!("{what} as {:?}: {refusal}", id.node)
        });
        Err(Status::permission_denied(format!("{code}: {refusal}")))
    }

    /// Routes [`Request::ApplyGovernance`]: verifies the entries against a copy of the
    /// bridge's state, drops the registry entries of nodes that stop being members, has
    /// every registered member's TEE apply them (each signed answer must show the new head),
    /// stores them and writes one `governance` history row. The answer is the signed view of
    /// the node the caller named, if it applied them, else of the first member that did.
    pub(super) async fn route_governance(
        &self,
        actor: String,
        call: TeeCall,
        cluster: String,
        entries: Vec<GovEntry>,
    ) -> Result<TeeReply, Status> {
        let st = &self.state;
        let t0 = Instant::now();
        // One change at a time, and no registration checked against a state being replaced.
        let _one = st.gov_apply.lock().await;
        let before = st.gov.read().unwrap_or_else(|p| p.into_inner()).clone();
        let last = entries.last();
        let (kind, named) = last
            .map(|e| describe_change(&e.change, before.as_ref()))
            .unwrap_or(("none", Vec::new()));
        let row = |outcome: &str, node: Option<String>, detail: String| NewEntry {
            kind: "governance".into(),
            request_id: last.map(|e| hex::encode(e.meta.request_id)),
            actor: actor.clone(),
            approvers: last.map(|e| names(&e.approvals)).unwrap_or_default(),
            node,
            outcome: outcome.into(),
            detail,
            duration_us: t0.elapsed().as_micros() as i64,
            ..Default::default()
        };
        let next = match self.next_state(before.as_ref(), &cluster, &entries).await {
            Ok(n) => n,
            Err(r) => {
                self.log(row(r.code, None, format!("{kind}: {}", r.detail)))
                    .await?;
                return Err(r.status());
            }
        };
        let dropped = self.drop_non_members(&next);
        let members: Vec<String> = st
            .nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut answer = None;
        let mut problems = Vec::new();
        for node in members {
            match self.apply_on(&node, &call.request, &next).await {
                Ok(response) => {
                    // The node the caller named answers when it applied them.
                    if answer.is_none() || node == call.node {
                        answer = Some((node, response));
                    }
                }
                Err(why) => {
                    tracing::warn!(%node, %why, "member did not apply the governance entries");
                    problems.push(format!("{node}: {why}"));
                }
            }
        }
        let detail = format!(
            "{kind} version {}, names {named:?}; dropped from the registry {dropped:?}; \
             not applied by {problems:?}",
            next.version
        );
        // The TEEs are the authority: without one that applied the entries, the bridge
        // does not adopt them (a retry is harmless, every TEE skips what it has).
        let Some((node, response)) = answer else {
            let r = Refused {
                code: "unavailable",
                detail: format!("no member TEE applied the entries; {detail}"),
            };
            self.log(row(r.code, None, r.detail.clone())).await?;
            return Err(r.status());
        };
        let rows: Result<Vec<GovernanceRow>, String> = entries
            .iter()
            .map(|e| row_of(&cluster, e).map_err(|err| format!("entry {}: {err}", e.version)))
            .collect();
        let stored = match rows {
            Ok(rows) => st
                .db
                .append_governance(&rows)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            let r = Refused {
                code: "unavailable",
                detail: format!("the log cannot be stored: {e}; {detail}"),
            };
            self.log(row(r.code, None, r.detail.clone())).await?;
            return Err(r.status());
        }
        *st.gov.write().unwrap_or_else(|p| p.into_inner()) = Some(next);
        self.log(row("ok", Some(node.clone()), detail)).await?;
        let chain = self.node_chain(&node);
        Ok(TeeReply {
            response,
            node,
            chain,
        })
    }

    /// The state `entries` lead to from `before` (the genesis when `None`). Entries the
    /// bridge already has must be the stored ones: another one at a stored version is a fork.
    async fn next_state(
        &self,
        before: Option<&GovState>,
        cluster: &str,
        entries: &[GovEntry],
    ) -> Result<GovState, Refused> {
        let st = &self.state;
        let rejected = |e: GovError| Refused {
            code: "governance_rejected",
            detail: e.to_string(),
        };
        if cluster != st.cluster {
            return Err(Refused {
                code: "governance_rejected",
                detail: format!(
                    "the log of cluster {cluster:?} is not relayed by the bridge of {:?}",
                    st.cluster
                ),
            });
        }
        if entries.is_empty() || entries.len() > MAX_GOV_ENTRIES_PER_APPLY {
            return Err(Refused {
                code: "governance_rejected",
                detail: format!(
                    "{} entries, one request carries 1..={MAX_GOV_ENTRIES_PER_APPLY}",
                    entries.len()
                ),
            });
        }
        let Some(before) = before else {
            // A bridge without a log (new, or its database restored empty) relearns a log the
            // TEEs already hold, approved long ago: no expiry gate here.
            let next = verify_log(&st.root, cluster, st.gov_pin, entries).map_err(rejected)?;
            if st.gov_pin.is_none() {
                tracing::warn!(
                    genesis_id = %hex::encode(next.genesis_id),
                    "no genesis_id pinned: trusting the first genesis relayed; pin it"
                );
            }
            return Ok(next);
        };
        let known = entries
            .iter()
            .take_while(|e| e.version <= before.version)
            .count();
        if let Some(first) = entries.first().filter(|_| known > 0) {
            let stored =
                st.db
                    .governance_entries(first.version)
                    .await
                    .map_err(|e: MetadataError| Refused {
                        code: "unavailable",
                        detail: format!("the stored log cannot be read: {e}"),
                    })?;
            for e in &entries[..known] {
                let same = stored
                    .iter()
                    .find(|r| r.version == e.version)
                    .is_some_and(|r| r.hash == entry_hash(cluster, e));
                if !same {
                    return Err(Refused {
                        code: "governance_conflict",
                        detail: format!(
                            "entry {} is not the stored entry of that version",
                            e.version
                        ),
                    });
                }
            }
        }
        unexpired(&entries[known..])?;
        let mut next = before.clone();
        let mut cache = AdminCache::default();
        for e in &entries[known..] {
            next.apply(&st.root, &mut cache, e).map_err(rejected)?;
        }
        Ok(next)
    }

    /// Removes every registry entry that is not a member of `gov` under its name, before any
    /// TEE hears of the change: a removed node gets no request from then on. Returns their
    /// names.
    fn drop_non_members(&self, gov: &GovState) -> Vec<String> {
        let mut nodes = self.state.nodes.write().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = nodes
            .iter()
            .filter(|(name, n)| !is_member(gov, name, &n.device_key))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            nodes.remove(name);
            tracing::warn!(node = %name, "no longer a member: dropped from the registry");
        }
        gone
    }

    /// Sends the encoded `ApplyGovernance` `request` to `node`'s TEE; its answer must be
    /// signed by that node's D and show `next`'s genesis, version and head.
    async fn apply_on(
        &self,
        node: &str,
        request: &[u8],
        next: &GovState,
    ) -> Result<Vec<u8>, String> {
        let (mut client, device_key) = self.node_client(node).ok_or("not registered")?;
        let call = TeeCall {
            request: request.to_vec(),
            ..Default::default()
        };
        let reply = match tokio::time::timeout(self.state.call_timeout, client.execute(call)).await
        {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Err(format!("failed ({})", status.message())),
            Err(_) => return Err("timed out".into()),
        };
        match verify_signed_response(&device_key, request, &reply.response) {
            Ok(Ok(Response::Governance(v)))
                if v.genesis_id == next.genesis_id
                    && v.version == next.version
                    && v.head == next.head =>
            {
                Ok(reply.response)
            }
            Ok(Ok(Response::Governance(v))) => Err(format!(
                "its TEE reports version {} head {}, not version {} head {}",
                v.version,
                hex::encode(v.head),
                next.version,
                hex::encode(next.head)
            )),
            Ok(Ok(_)) => Err("its TEE answered something other than its governance view".into()),
            Ok(Err(e)) => Err(format!("its TEE refused: {e}")),
            Err(e) => Err(format!("answer not signed by its TEE: {e}")),
        }
    }

    /// Brings the TEE of a member that just registered up to the bridge's log: asks where it
    /// stands and sends it the entries it lacks (all of them if it has none, or another
    /// genesis, which its TEE then refuses).
    pub(super) async fn push_governance(&self, node: &str) {
        let st = &self.state;
        let Some((genesis_id, version, head)) = st
            .gov
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|g| (g.genesis_id, g.version, g.head))
        else {
            return;
        };
        let asked = Request::Governance {
            cluster: st.cluster.clone(),
            since: version,
        };
        let from = match self.node_answer(node, &asked).await {
            Some(Response::Governance(v)) if v.genesis_id == genesis_id => {
                // Past the bridge's version, the TEE holds entries the bridge lacks (it failed
                // to store them, or its database came back older): learn them there. At the
                // bridge's version there is nothing to push; another head there would be a
                // fork, which the TEE refuses anyway.
                let _ = head;
                if v.version > version {
                    self.catch_up_from(node).await;
                    return;
                }
                if v.version == version {
                    return;
                }
                v.version.saturating_add(1)
            }
            _ => 0,
        };
        let entries = match stored_entries(&st.db, &st.cluster, from).await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(%node, error = %e, "cannot read the governance log to push it");
                return;
            }
        };
        for chunk in entries.chunks(MAX_GOV_ENTRIES_PER_APPLY) {
            let apply = Request::ApplyGovernance {
                cluster: st.cluster.clone(),
                entries: chunk.to_vec(),
            };
            match self.node_answer(node, &apply).await {
                Some(Response::Governance(v)) => {
                    tracing::info!(%node, version = v.version, "governance entries pushed")
                }
                _ => {
                    tracing::warn!(%node, from, "member's TEE did not take the governance entries");
                    return;
                }
            }
        }
    }

    /// Learns the entries past its log from `node`'s TEE (its signed `Governance` view,
    /// checked as every TEE answer is): each must extend the bridge's own state, approved by
    /// the governors in force then, as if relayed; the TEE's word alone is never enough.
    /// They are stored, non-members leave the registry, and one history row says so. Entries
    /// that do not verify are refused and logged; the bridge keeps its log.
    async fn catch_up_from(&self, node: &str) {
        let st = &self.state;
        let t0 = Instant::now();
        let _one = st.gov_apply.lock().await;
        let Some(before) = st.gov.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        let mut next = before.clone();
        let mut learned: Vec<GovEntry> = Vec::new();
        let mut cache = AdminCache::default();
        // Page by page; bounded, since each page moves the version on or ends the loop.
        while learned.len() < MAX_CATCH_UP_ENTRIES {
            let asked = Request::Governance {
                cluster: st.cluster.clone(),
                since: next.version.saturating_add(1),
            };
            let Some(Response::Governance(v)) = self.node_answer(node, &asked).await else {
                tracing::warn!(%node, "member's TEE did not show the entries the bridge lacks");
                break;
            };
            if v.entries.is_empty() {
                break;
            }
            for e in v.entries {
                if let Err(why) = next.apply(&st.root, &mut cache, &e) {
                    tracing::error!(%node, version = e.version, error = %why,
                        "an entry a member's TEE holds does not extend the bridge's log");
                    return;
                }
                learned.push(e);
            }
        }
        if learned.is_empty() {
            return;
        }
        let rows: Result<Vec<GovernanceRow>, postcard::Error> =
            learned.iter().map(|e| row_of(&st.cluster, e)).collect();
        let stored = match rows {
            Ok(rows) => {
                let mut done = Ok(());
                for page in rows.chunks(MAX_GOVERNANCE_PAGE) {
                    done = st
                        .db
                        .append_governance(page)
                        .await
                        .map_err(|e| e.to_string());
                    if done.is_err() {
                        break;
                    }
                }
                done
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stored {
            tracing::error!(%node, error = %e, "cannot store the entries learned from a member");
            return;
        }
        let first = before.version.saturating_add(1);
        *st.gov.write().unwrap_or_else(|p| p.into_inner()) = Some(next.clone());
        let dropped = self.drop_non_members(&next);
        let detail = format!(
            "caught up from {node}'s TEE: versions {first}..={} (the bridge's log ended at \
             {}); dropped from the registry {dropped:?}",
            next.version, before.version
        );
        tracing::warn!(%node, %detail, "governance log caught up from a member");
        let row = NewEntry {
            kind: "governance".into(),
            actor: "bridge".into(),
            approvers: learned
                .last()
                .map(|e| names(&e.approvals))
                .unwrap_or_default(),
            node: Some(node.to_string()),
            outcome: "ok".into(),
            detail,
            duration_us: t0.elapsed().as_micros() as i64,
            ..Default::default()
        };
        if let Err(e) = self.log(row).await {
            tracing::error!(error = %e, "history row of a governance catch-up not written");
        }
    }
}

/// Most entries one catch-up learns from a member (a log of ordinary length, many times
/// over); the rest follow at the next registration.
const MAX_CATCH_UP_ENTRIES: usize = 4 * MAX_GOV_ENTRIES_PER_APPLY;

#[cfg(test)]
mod tests;
