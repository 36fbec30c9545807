//! Cluster governance (issue 12, plan step G2): requests that append an entry to a cluster's
//! governance log, the governors' approvals of them, their application through the bridge to
//! every member's TEE, and views of the members and the log.
//!
//! The cloud server never trusts the bridge's word for the log: it reads it from a member's
//! TEE (answers signed by D and checked like every TEE answer) and replays it from the
//! genesis with the verifier every TEE uses ([`verify_log`]) before it proposes an entry,
//! checks an approver or shows a member. The TEEs still decide: this server only refuses early
//! what they would refuse.

use custos_wire::governance::{
    device_key_fingerprint, entry_hash, verify_log, Evidence, GovChange, GovEntry, GovState,
    MemberRecord, MAX_EVIDENCE,
};

use super::*;
use crate::terms::GovTerms;

mod views;
use custos_wire::protocol::CertChain;

/// Most entries of a log this server reads (a page of the TEE holds at most 256).
const MAX_LOG_ENTRIES: usize = 100_000;
/// Most entries one `GET …/governance` page shows.
const LOG_PAGE: usize = 256;

/// A cluster's log as a member's TEE holds it, verified from the genesis.
pub(super) struct VerifiedLog {
    /// The state it leads to.
    pub state: GovState,
    /// Every entry, from the genesis.
    pub entries: Vec<GovEntry>,
}

fn gov_error(code: ErrorCode, m: impl Into<String>) -> ApiError {
    ApiError::new(code, m)
}

fn fingerprints(list: &[String]) -> Result<Vec<[u8; 32]>, ApiError> {
    let mut out = list
        .iter()
        .map(|s| {
            custos_cloud_api::approval::parse_fingerprint(s)
                .map_err(|m| gov_error(ErrorCode::InvalidFingerprint, format!("{s:?}: {m}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The log wants sets in one canonical order: the caller's order and repeats do not
    // change what is meant.
    out.sort();
    out.dedup();
    Ok(out)
}

/// The device chain in a PEM text: exactly the device certificate, its Cluster CA and the
/// Device CA, in that order.
fn chain_from_pem(text: &str) -> Result<CertChain, ApiError> {
    let invalid = |m: String| gov_error(ErrorCode::InvalidChain, m);
    let blocks = pem::parse_many(text).map_err(|e| invalid(format!("chain PEM: {e}")))?;
    let [device, cluster_ca, device_ca] = &blocks[..] else {
        return Err(invalid(format!(
            "{} PEM blocks; expected the device certificate, the Cluster CA and the Device CA",
            blocks.len()
        )));
    };
    if blocks.iter().any(|b| b.tag() != "CERTIFICATE") {
        return Err(invalid("every PEM block must be a CERTIFICATE".into()));
    }
    Ok(CertChain {
        device: device.contents().to_vec(),
        cluster_ca: cluster_ca.contents().to_vec(),
        device_ca: device_ca.contents().to_vec(),
    })
}

impl Cloud {
    /// The log of `cluster`, read page by page from one member's TEE and verified from its
    /// genesis; `None` while the cluster is not governed.
    pub(super) async fn read_log(&self, cluster: &str) -> Result<Option<VerifiedLog>, ApiError> {
        let log = self.read_any_log(cluster).await?;
        match (log, self.genesis_pin(cluster)?) {
            // A pinned cluster has a log: a node saying otherwise is no member (an impostor
            // a bridge relays), not news that the cluster lost its governance.
            (None, Some(pin)) => Err(gov_error(
                ErrorCode::UnverifiedResponse,
                format!(
                    "a node answered that {cluster} has no governance log, but the \
                     configuration pins its genesis {}",
                    hex::encode(pin)
                ),
            )),
            (log, _) => Ok(log),
        }
    }

    /// A registered node of `cluster` other than `asked` whose TEE holds a governance log,
    /// if there is one.
    async fn governed_node(&self, cluster: &str, asked: &str) -> Option<String> {
        let status = self.clusters.status(cluster, false).await.ok()?;
        let probe = encode_request(&Request::Governance {
            cluster: cluster.to_string(),
            since: 0,
        });
        for n in status.nodes.iter().filter(|n| n.node != asked) {
            let answer = self
                .clusters
                .tee_call(cluster, random_id(), &probe, Some(&n.node))
                .await;
            if matches!(answer, Ok(a) if a.outcome.is_ok()) {
                return Some(n.node.clone());
            }
        }
        None
    }

    /// The genesis id the configuration pins for `cluster`, if any.
    fn genesis_pin(&self, cluster: &str) -> Result<Option<[u8; 32]>, ApiError> {
        // Checked when the configuration was loaded.
        self.cluster_config(cluster)?
            .genesis_pin()
            .map_err(|e| gov_error(ErrorCode::Internal, e))
    }

    /// [`Cloud::read_log`], also believing "no log" when a genesis is pinned: for the
    /// genesis itself, which may be pinned before it is proposed (its id is known from its
    /// content) and is then checked against the pin.
    async fn read_any_log(&self, cluster: &str) -> Result<Option<VerifiedLog>, ApiError> {
        let pin = self.genesis_pin(cluster)?;
        let mut entries: Vec<GovEntry> = Vec::new();
        let mut node: Option<String> = None;
        let view = loop {
            let since = entries.len() as u64;
            let request = encode_request(&Request::Governance {
                cluster: cluster.to_string(),
                since,
            });
            // Later pages come from the node that answered the first, so that every page
            // is of one TEE's log.
            let answer = self
                .clusters
                .tee_call(cluster, random_id(), &request, node.as_deref())
                .await
                .map_err(call_api_error)?;
            let view = match answer.outcome {
                Ok(Response::Governance(v)) => v,
                Err(TeeError::NotGoverned) if since == 0 => {
                    // One node without a log may be one waiting for its admission: the
                    // cluster has none only if no registered node has one.
                    match self.governed_node(cluster, &answer.node).await {
                        Some(other) => {
                            node = Some(other);
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
                Err(e) => {
                    return Err(gov_error(
                        ErrorCode::BridgeRefused,
                        format!("node {} refused to show the log: {e}", answer.node),
                    ))
                }
                Ok(other) => {
                    return Err(gov_error(
                        ErrorCode::UnverifiedResponse,
                        format!("Governance answered with {}", response_name(&other)),
                    ))
                }
            };
            node = Some(answer.node);
            let unverified = |m: String| gov_error(ErrorCode::UnverifiedResponse, m);
            if view.cluster != cluster {
                return Err(unverified(format!(
                    "asked for the log of {cluster}, got the log of {}",
                    view.cluster
                )));
            }
            if view.entries.is_empty() && view.version >= since {
                return Err(unverified(format!(
                    "the log is at version {} but a page from {since} is empty",
                    view.version
                )));
            }
            for (i, e) in view.entries.iter().enumerate() {
                if e.version != since + i as u64 {
                    return Err(unverified(format!(
                        "a page from {since} holds entry {} at position {i}",
                        e.version
                    )));
                }
            }
            let last = since + view.entries.len() as u64;
            entries.extend(view.entries.iter().cloned());
            if entries.len() > MAX_LOG_ENTRIES {
                return Err(unverified(format!(
                    "the log is longer than {MAX_LOG_ENTRIES} entries"
                )));
            }
            if last > view.version {
                break view;
            }
        };
        let state = verify_log(&self.trust_root, cluster, pin, &entries).map_err(|e| {
            gov_error(
                ErrorCode::UnverifiedResponse,
                format!("the governance log of {cluster} does not verify: {e}"),
            )
        })?;
        if (state.genesis_id, state.version, state.head)
            != (view.genesis_id, view.version, view.head)
        {
            return Err(gov_error(
                ErrorCode::UnverifiedResponse,
                "the TEE's signed head is not the head of the entries it sent",
            ));
        }
        Ok(Some(VerifiedLog { state, entries }))
    }

    async fn governed(&self, cluster: &str) -> Result<VerifiedLog, ApiError> {
        self.cluster_config(cluster)?;
        self.read_log(cluster).await?.ok_or_else(|| {
            gov_error(
                ErrorCode::NotGoverned,
                format!("cluster {cluster} has no governance log yet; propose its genesis"),
            )
        })
    }

    /// Records a request for `change` as the next entry of `cluster`'s log (`log` its
    /// current state; `None` for a genesis).
    async fn propose(
        &self,
        caller: &Principal,
        cluster: &str,
        log: Option<&GovState>,
        change: GovChange,
        request_id: Option<&str>,
        expires_at: Option<u64>,
    ) -> Result<RequestOutcome, ApiError> {
        change
            .check_limits()
            .map_err(|e| gov_error(ErrorCode::InvalidGovernance, e.to_string()))?;
        if let Some(state) = log {
            precheck(state, &change)?;
        }
        let (version, prev, quorum) = match (log, &change) {
            (None, GovChange::Genesis { quorum, .. }) => (0, [0; 32], *quorum),
            (Some(s), _) => (s.version + 1, s.head, s.quorum),
            (None, _) => {
                return Err(gov_error(
                    ErrorCode::NotGoverned,
                    format!("cluster {cluster} has no governance log yet"),
                ))
            }
        };
        let (id, expires_at) = self.request_id_and_expiry(request_id, expires_at)?;
        self.create(
            caller,
            Draft {
                cluster: cluster.to_string(),
                quorum,
                terms: Terms::Governance(GovTerms {
                    version,
                    prev,
                    change,
                }),
                id,
                expires_at,
                approvals: Vec::new(),
                wallet_xpub: None,
            },
        )
        .await
    }

    /// A member record for `node` with the verified `chain`, admitted now.
    fn member_record(
        &self,
        cluster: &str,
        node: &str,
        chain: CertChain,
        evidence: Evidence,
    ) -> Result<MemberRecord, ApiError> {
        let invalid = |m: String| gov_error(ErrorCode::InvalidChain, m);
        let now = self.now_secs();
        let id = self
            .trust_root
            .verify_device(&chain.clone().into(), Some(cluster), now)
            .map_err(|e| invalid(format!("device chain of {node}: {e}")))?;
        if id.node != node {
            return Err(invalid(format!(
                "the device certificate names {:?}, not {node:?}",
                id.node
            )));
        }
        let key_fingerprint = device_key_fingerprint(&id.public_key)
            .ok_or_else(|| invalid(format!("the device key of {node} is not a P-256 key")))?;
        Ok(MemberRecord {
            node: node.to_string(),
            key_fingerprint,
            chain,
            evidence,
            admitted_at: now,
        })
    }

    /// The chain of `node` as the bridge hands it out (verified like every device chain).
    async fn chain_from_bridge(&self, cluster: &str, node: &str) -> Result<CertChain, ApiError> {
        match self.clusters.device(cluster, node, true).await {
            Ok(d) => Ok(d.chain),
            Err(CallError::Refused { code, message }) => Err(gov_error(
                ErrorCode::InvalidChain,
                format!(
                    "the bridge of {cluster} has no chain of node {node:?} ({}: {message}); a \
                     node that is not a member cannot register with a governed cluster's \
                     bridge: give its chain (`custos tee chain`)",
                    code.as_str()
                ),
            )),
            Err(e) => Err(call_api_error(e)),
        }
    }

    /// `POST /v1/clusters/{name}/genesis`.
    pub async fn propose_genesis(
        &self,
        caller: &Principal,
        cluster: &str,
        body: GenesisBody,
    ) -> Result<RequestOutcome, ApiError> {
        self.cluster_config(cluster)?;
        Self::check_quorum(body.quorum)?;
        let governors = fingerprints(&body.governors)?;
        let rules = match &body.measurement_policy {
            Some(p) => vec![custos_cloud_api::measurement::parse_policy(p)
                .map_err(|e| gov_error(ErrorCode::InvalidGovernance, e))?
                .rule()],
            None => Vec::new(),
        };
        // Before anything else: each member named costs a call to the bridge.
        if body.members.len() > custos_wire::governance::MAX_MEMBERS {
            return Err(gov_error(
                ErrorCode::InvalidGovernance,
                format!(
                    "{} members named, a genesis names at most {}",
                    body.members.len(),
                    custos_wire::governance::MAX_MEMBERS
                ),
            ));
        }
        let mut names = body.members.clone();
        names.sort();
        names.dedup();
        if names.len() != body.members.len() {
            return Err(gov_error(
                ErrorCode::InvalidGovernance,
                "a member is named twice",
            ));
        }
        // Limits first, so that a body that can never make a genesis costs no cluster call.
        let shape = GovChange::Genesis {
            governors: governors.clone(),
            quorum: body.quorum,
            members: Vec::new(),
            rules: rules.clone(),
        };
        match shape.check_limits() {
            Err(custos_wire::governance::GovError::TooMany { what, .. })
                if what.starts_with("genesis members") => {}
            Err(e) => return Err(gov_error(ErrorCode::InvalidGovernance, e.to_string())),
            Ok(()) => {}
        }
        if self.read_any_log(cluster).await?.is_some() {
            return Err(gov_error(
                ErrorCode::AlreadyGoverned,
                format!("cluster {cluster} already has a governance log"),
            ));
        }
        let mut members = Vec::with_capacity(body.members.len());
        for node in &body.members {
            custos_pki::check_name(node)
                .map_err(|e| gov_error(ErrorCode::InvalidGovernance, e.to_string()))?;
            let chain = self.chain_from_bridge(cluster, node).await?;
            members.push(self.member_record(cluster, node, chain, Evidence::default())?);
        }
        let change = GovChange::Genesis {
            governors,
            quorum: body.quorum,
            members,
            rules,
        };
        if let Some(pin) = self.genesis_pin(cluster)? {
            let id = custos_wire::governance::genesis_id(cluster, &change);
            if id != pin {
                return Err(gov_error(
                    ErrorCode::InvalidGovernance,
                    format!(
                        "this genesis has id {}, but the configuration pins {} for {cluster}",
                        hex::encode(id),
                        hex::encode(pin)
                    ),
                ));
            }
        }
        self.propose(
            caller,
            cluster,
            None,
            change,
            body.request_id.as_deref(),
            body.expires_at,
        )
        .await
    }

    /// `POST /v1/clusters/{name}/members`.
    pub async fn admit_member(
        &self,
        caller: &Principal,
        cluster: &str,
        body: AdmitBody,
    ) -> Result<RequestOutcome, ApiError> {
        custos_pki::check_name(&body.node)
            .map_err(|e| gov_error(ErrorCode::InvalidGovernance, e.to_string()))?;
        let document = match &body.evidence_hex {
            Some(h) => hex::decode(h)
                .map_err(|_| gov_error(ErrorCode::InvalidGovernance, "evidence is not hex"))?,
            None => Vec::new(),
        };
        if document.len() > MAX_EVIDENCE {
            return Err(gov_error(
                ErrorCode::InvalidGovernance,
                format!("evidence over {MAX_EVIDENCE} bytes"),
            ));
        }
        let chain = body.chain_pem.as_deref().map(chain_from_pem).transpose()?;
        let log = self.governed(cluster).await?;
        let chain = match chain {
            Some(c) => c,
            None => self.chain_from_bridge(cluster, &body.node).await?,
        };
        let evidence = Evidence {
            format: body.evidence_format.unwrap_or(0),
            document,
        };
        let member = self.member_record(cluster, &body.node, chain, evidence)?;
        self.propose(
            caller,
            cluster,
            Some(&log.state),
            GovChange::Admit { member },
            body.request_id.as_deref(),
            body.expires_at,
        )
        .await
    }

    /// `POST /v1/clusters/{name}/members/tickets`: a member TEE signs an admission ticket
    /// for the node whose chain is given (verified as a device of this cluster named
    /// `node`). The ticket's fields are checked against the verified log before it is
    /// handed out; the TEEs check them all again when the `Admit` entry applies.
    pub async fn admission_ticket(
        &self,
        cluster: &str,
        body: TicketBody,
    ) -> Result<AdmissionTicketView, ApiError> {
        custos_pki::check_name(&body.node)
            .map_err(|e| gov_error(ErrorCode::InvalidGovernance, e.to_string()))?;
        let chain = chain_from_pem(&body.chain_pem)?;
        let tpm = body
            .tpm_identity
            .as_ref()
            .map(custos_cloud_api::admission::parse_identity)
            .transpose()
            .map_err(|e| gov_error(ErrorCode::InvalidGovernance, e))?;
        let log = self.governed(cluster).await?;
        let candidate = self.member_record(cluster, &body.node, chain, Evidence::default())?;
        let sealed_to_tpm = tpm.is_some();
        let request = encode_request(&Request::IssueAdmissionTicket {
            node_key: candidate.key_fingerprint,
            tpm,
        });
        // Asked of a current member by name: another node (one waiting for its admission,
        // or not yet holding the log) would only refuse.
        let mut members: Vec<String> = log
            .state
            .members
            .values()
            .map(|m| m.record.node.clone())
            .collect();
        let start = usize::from(random_id()[0]) % members.len().max(1);
        members.rotate_left(start);
        let mut answer = Err(CallError::Unavailable("the log names no member".into()));
        for node in &members {
            answer = self
                .clusters
                .tee_call(cluster, random_id(), &request, Some(node))
                .await;
            if answer.is_ok() {
                break;
            }
        }
        let answer = answer.map_err(call_api_error)?;
        let challenge = match answer.outcome {
            Ok(Response::AdmissionChallenge(c)) => c,
            Err(e) => {
                return Err(gov_error(
                    ErrorCode::InvalidGovernance,
                    format!("{}: node {}: {e}", tee_code(&e), answer.node),
                ))
            }
            Ok(other) => {
                return Err(gov_error(
                    ErrorCode::UnverifiedResponse,
                    format!(
                        "IssueAdmissionTicket answered with {}",
                        response_name(&other)
                    ),
                ))
            }
        };
        let t = &challenge.ticket.ticket;
        let issuer = log.state.member(&t.issuer).map(|m| m.record.node.clone());
        let fits = t.cluster == cluster
            && t.genesis_id == log.state.genesis_id
            && t.node_key == candidate.key_fingerprint
            && t.tpm.is_some() == sealed_to_tpm
            && challenge.nonce.is_some() != sealed_to_tpm;
        let Some(issuer) = issuer.filter(|_| fits) else {
            return Err(gov_error(
                ErrorCode::UnverifiedResponse,
                format!(
                    "node {} answered a ticket that is not for {} of this log",
                    answer.node, body.node
                ),
            ));
        };
        Ok(AdmissionTicketView {
            node: body.node,
            issuer,
            expires_at: t.expires_at,
            sealed_to_tpm,
            challenge_hex: custos_cloud_api::admission::challenge_hex(&challenge),
        })
    }

    /// `POST /v1/clusters/{name}/members/{node}/remove`.
    pub async fn remove_member(
        &self,
        caller: &Principal,
        cluster: &str,
        node: &str,
        body: RemoveMemberBody,
    ) -> Result<RequestOutcome, ApiError> {
        let log = self.governed(cluster).await?;
        let key_fingerprint = log
            .state
            .members
            .iter()
            .find(|(_, m)| m.record.node == node)
            .map(|(fp, _)| *fp)
            .ok_or_else(|| {
                gov_error(
                    ErrorCode::UnknownMember,
                    format!("cluster {cluster} has no member named {node:?}"),
                )
            })?;
        let change = GovChange::Remove {
            key_fingerprint,
            reason: body.reason,
        };
        self.propose(
            caller,
            cluster,
            Some(&log.state),
            change,
            body.request_id.as_deref(),
            body.expires_at,
        )
        .await
    }

    /// `POST /v1/clusters/{name}/revocations`.
    pub async fn revoke(
        &self,
        caller: &Principal,
        cluster: &str,
        body: RevokeBody,
    ) -> Result<RequestOutcome, ApiError> {
        let change = GovChange::Revoke {
            admins: fingerprints(&body.admins)?,
            devices: fingerprints(&body.devices)?,
            reason: body.reason,
        };
        self.propose_next(
            caller,
            cluster,
            change,
            body.request_id.as_deref(),
            body.expires_at,
        )
        .await
    }

    /// Proposes `change` as the next entry of `cluster`'s log, after the log's own limits.
    async fn propose_next(
        &self,
        caller: &Principal,
        cluster: &str,
        change: GovChange,
        request_id: Option<&str>,
        expires_at: Option<u64>,
    ) -> Result<RequestOutcome, ApiError> {
        change
            .check_limits()
            .map_err(|e| gov_error(ErrorCode::InvalidGovernance, e.to_string()))?;
        let log = self.governed(cluster).await?;
        self.propose(
            caller,
            cluster,
            Some(&log.state),
            change,
            request_id,
            expires_at,
        )
        .await
    }

    /// `POST /v1/clusters/{name}/governors`.
    pub async fn set_governors(
        &self,
        caller: &Principal,
        cluster: &str,
        body: GovernorsBody,
    ) -> Result<RequestOutcome, ApiError> {
        Self::check_quorum(body.quorum)?;
        let change = GovChange::SetGovernors {
            governors: fingerprints(&body.governors)?,
            quorum: body.quorum,
        };
        self.propose_next(
            caller,
            cluster,
            change,
            body.request_id.as_deref(),
            body.expires_at,
        )
        .await
    }

    /// The approval pre-check of a governance request: the approver must be a governor the
    /// entry counts (the genesis' own governors; else the log's current ones) whose key is
    /// not revoked. The TEE decides anyway; this refuses early, by name.
    pub(super) async fn check_governor(
        &self,
        row: &RequestRow,
        approval: &StoredApproval,
    ) -> Result<(), ApiError> {
        let Terms::Governance(g) = &row.terms else {
            return Ok(());
        };
        let key = custos_cloud_api::approval::parse_fingerprint(&approval.key)
            .map_err(|m| ApiError::internal("a verified approval's key", &m))?;
        let (governors, revoked_at) = match &g.change {
            GovChange::Genesis { governors, .. } => (governors.clone(), None),
            _ => {
                let log = self.governed(&row.cluster).await?;
                let revoked = log.state.revoked_admins.get(&key).copied();
                (log.state.governors, revoked)
            }
        };
        if let Some(version) = revoked_at {
            return Err(gov_error(
                ErrorCode::AdminRevoked,
                format!(
                    "admin {:?} (key {}) was revoked by entry {version} of the governance log \
                     of {}",
                    approval.admin, approval.key, row.cluster
                ),
            ));
        }
        if !governors.contains(&key) {
            return Err(gov_error(
                ErrorCode::ApproverNotAGovernor,
                format!(
                    "admin {:?} (key {}) is not a governor of cluster {}",
                    approval.admin, approval.key, row.cluster
                ),
            ));
        }
        Ok(())
    }

    /// Submits an approved governance request: checks that the log still stands where the
    /// request found it, then has the bridge apply the entry on every member's TEE and
    /// records the head a member's TEE signed.
    pub(super) async fn execute_governance(
        &self,
        row: RequestRow,
    ) -> Result<RequestRow, StoreError> {
        let verdict = self.governance_verdict(&row).await;
        if matches!(verdict, Verdict::Completed(_)) {
            self.governance_changed(&row.cluster);
        }
        self.finish(row, verdict).await
    }

    async fn governance_verdict(&self, row: &RequestRow) -> Verdict {
        let refused = |code: &str, m: String| Verdict::Refused(Failure::new(code, m));
        let Terms::Governance(g) = &row.terms else {
            return refused("bad_request_row", "not a governance request".into());
        };
        let (id, approvals) = match (parse_request_id(&row.id), tee_approvals(row)) {
            (Ok(id), Ok(a)) => (id, a),
            (Err(e), _) | (_, Err(e)) => {
                return refused("bad_request_row", format!("stored request unusable: {e}"))
            }
        };
        let meta = RequestMeta {
            request_id: id,
            expires_at: row.expires_at,
        };
        let entry = g.entry(meta, approvals);
        let hash = entry_hash(&row.cluster, &entry);
        let completed = |genesis_id: [u8; 32], node: String| {
            let result = GovernanceResult {
                genesis_id: hex::encode(genesis_id),
                log_version: g.version,
                head: hex::encode(hash),
                applied_by: node.clone(),
            };
            Verdict::completed(node, RequestResult::Governance(result), Record::Nothing)
        };
        let read = if g.version == 0 {
            self.read_any_log(&row.cluster).await
        } else {
            self.read_log(&row.cluster).await
        };
        let log = match read {
            Ok(l) => l,
            // Nothing was sent: the same request may be submitted again.
            Err(e) => return Verdict::Failed(Failure::new(e.code.as_str(), e.message)),
        };
        match &log {
            None if g.version == 0 => {}
            None => {
                return refused(
                    "governance_rejected",
                    format!("cluster {} has no governance log", row.cluster),
                )
            }
            Some(l) => {
                let at = usize::try_from(g.version).unwrap_or(usize::MAX);
                if let Some(e) = l.entries.get(at) {
                    // A resubmission after a lost answer finds its own entry applied.
                    if entry_hash(&row.cluster, e) == hash {
                        return completed(l.state.genesis_id, "(already in the log)".into());
                    }
                    return refused(
                        "governance_head_moved",
                        format!(
                            "version {} of the log of {} is another entry now: this one can \
                             never apply; propose it again",
                            g.version, row.cluster
                        ),
                    );
                }
                if l.state.version + 1 != g.version || l.state.head != g.prev {
                    return refused(
                        "governance_head_moved",
                        format!(
                            "the log of {} is at version {}, head {}; the request extends \
                             version {} (prev {})",
                            row.cluster,
                            l.state.version,
                            hex::encode(l.state.head),
                            g.version.saturating_sub(1),
                            hex::encode(g.prev)
                        ),
                    );
                }
            }
        }
        let request = encode_request(&Request::ApplyGovernance {
            cluster: row.cluster.clone(),
            entries: vec![entry],
        });
        match self
            .clusters
            .tee_call(&row.cluster, id, &request, None)
            .await
        {
            Ok(TeeAnswer {
                node,
                outcome: Ok(Response::Governance(v)),
                ..
            }) if v.version == g.version && v.head == hash => completed(v.genesis_id, node),
            Ok(TeeAnswer {
                node,
                outcome: Ok(Response::Governance(v)),
                ..
            }) => Verdict::Failed(Failure::new(
                "bad_result",
                format!(
                    "node {node} reports version {} head {}, not version {} head {}",
                    v.version,
                    hex::encode(v.head),
                    g.version,
                    hex::encode(hash)
                ),
            )),
            Ok(TeeAnswer {
                node,
                outcome: Ok(other),
                ..
            }) => Verdict::Failed(Failure::new(
                "relay_protocol",
                format!(
                    "node {node} answered {} to ApplyGovernance",
                    response_name(&other)
                ),
            )),
            Ok(TeeAnswer {
                node,
                outcome: Err(e),
                ..
            }) => refused(&tee_code(&e), format!("node {node}: {e}")),
            // Applying an entry twice is harmless (every TEE skips what it has), so an
            // answer lost on the way is resubmitted like a failure.
            Err(e @ CallError::OutcomeUnknown { .. }) => {
                Verdict::Failed(Failure::new(e.code(), e.to_string()))
            }
            Err(e) => Verdict::ended(Failure::new(e.code(), e.to_string()), e.may_retry()),
        }
    }
}

/// What the log would refuse of `change` on `state`, refused now with `invalid_governance`
/// or `unknown_member` (the TEEs check it all again).
fn precheck(state: &GovState, change: &GovChange) -> Result<(), ApiError> {
    let invalid = |m: String| Err(gov_error(ErrorCode::InvalidGovernance, m));
    match change {
        GovChange::Genesis { .. } => invalid("the cluster already has a genesis".into()),
        GovChange::Admit { member } => {
            let fp = member.key_fingerprint;
            if state.revoked_devices.contains_key(&fp) {
                return invalid(format!("device key {} is revoked", hex::encode(fp)));
            }
            if state.members.contains_key(&fp) {
                return invalid(format!(
                    "device key {} is a member already",
                    hex::encode(fp)
                ));
            }
            if state.members.values().any(|m| m.record.node == member.node) {
                return invalid(format!("a member is named {:?} already", member.node));
            }
            // The ticket, nonce and platform rules every verifier applies; the platform's
            // evidence itself is the TEEs' to verify.
            state
                .check_admission(member, None)
                .map(drop)
                .or_else(|e| invalid(e.to_string()))
        }
        GovChange::Remove {
            key_fingerprint, ..
        } => {
            if state.member(key_fingerprint).is_none() {
                return Err(gov_error(
                    ErrorCode::UnknownMember,
                    format!("device key {} is no member", hex::encode(key_fingerprint)),
                ));
            }
            Ok(())
        }
        GovChange::Revoke {
            admins, devices, ..
        } => {
            if let Some(fp) = admins
                .iter()
                .find(|f| state.revoked_admins.contains_key(*f))
                .or_else(|| {
                    devices
                        .iter()
                        .find(|f| state.revoked_devices.contains_key(*f))
                })
            {
                return invalid(format!("key {} is revoked already", hex::encode(fp)));
            }
            let left = state
                .governors
                .iter()
                .filter(|g| !state.revoked_admins.contains_key(*g) && !admins.contains(g))
                .count();
            if left < usize::from(state.quorum) {
                return invalid(format!(
                    "{left} governors would be left, fewer than the quorum {}",
                    state.quorum
                ));
            }
            Ok(())
        }
        GovChange::SetGovernors { governors, .. } => {
            if let Some(g) = governors
                .iter()
                .find(|g| state.revoked_admins.contains_key(*g))
            {
                return invalid(format!("governor {} is revoked", hex::encode(g)));
            }
            Ok(())
        }
        GovChange::SetMeasurementPolicy { .. } => Ok(()),
    }
}
