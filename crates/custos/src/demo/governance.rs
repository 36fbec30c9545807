//! Demo steps of issue 12: each cluster's governance log started through the REST API
//! (governors alice, bob and carol, any two of them), an impostor node refused by a governed
//! bridge and node server although its certificate is genuine, and a revoked admin's
//! approval refused by name; a wallet's approver group changed by its group in force.

use custos_cloud_api::{GenesisBody, KeyPolicyBody, RevokeBody, SignRequestBody};
use serde_json::json;

use super::{approve_all, fail, status_is, AnyError, Demo, RequestStatus};

/// The clusters the demo governs.
const CLUSTERS: [&str; 3] = ["dc1", "dc2", "dc3"];

impl Demo {
    /// Key fingerprints (hex) of the three demo admins: the governors.
    fn governors(&self) -> Vec<String> {
        [&self.alice, &self.bob, &self.carol]
            .iter()
            .map(|a| hex::encode(a.key_fingerprint()))
            .collect()
    }

    /// Every cluster gets a genesis proposed through `POST /v1/clusters/{c}/genesis`,
    /// approved by alice and bob, with all its nodes as members (on `--platform tpm`: its
    /// first node, the others then admitted by TPM quote, see the `admission` module); the
    /// members list read back through `GET /v1/clusters/{c}/members` names every node.
    pub(super) async fn governance(&mut self) -> Result<(), AnyError> {
        for c in CLUSTERS {
            let nodes: Vec<String> = self
                .dep
                .cluster(c)
                .ok_or_else(|| fail(&format!("no cluster {c}")))?
                .nodes
                .iter()
                .map(|n| n.name.clone())
                .collect();
            let (founders, policy) = self.genesis_plan(c, &nodes)?;
            let proposed = self
                .client
                .propose_genesis(
                    c,
                    &GenesisBody {
                        governors: self.governors(),
                        quorum: 2,
                        members: founders.clone(),
                        measurement_policy: Some(policy),
                        request_id: None,
                        expires_at: None,
                    },
                )
                .await?;
            let done = approve_all(&self.client, proposed, &[&self.alice, &self.bob]).await?;
            status_is(&done, RequestStatus::Completed, "genesis")?;
            let genesis = self.client.members(c).await?;
            self.steps.ok(
                "governance",
                format!(
                    "{c}: genesis {}… applied in every TEE (governors alice, bob, carol; \
                     2 of 3; founders {})",
                    &genesis.genesis_id[..16],
                    founders.join(", "),
                ),
            );
            self.admit_by_quote(c, &founders, &nodes).await?;
            let members = self.client.members(c).await?;
            let mut listed: Vec<String> = members.members.iter().map(|m| m.node.clone()).collect();
            listed.sort();
            if listed != nodes {
                return Err(fail(&format!(
                    "{c}: members {listed:?}, expected {nodes:?}"
                )));
            }
            self.governance.push(json!({
                "cluster": c, "genesis_id": members.genesis_id, "version": members.version,
                "founders": founders, "members": listed,
            }));
        }
        Ok(())
    }

    /// An impostor: a P-256 key made outside any TEE, with a certificate genuinely issued
    /// by dc1's Cluster CA for dc1-node1's name. The bridge refuses its registration (the
    /// name is not taken over) and node2's server refuses its key export, both with
    /// `not_a_member`.
    pub(super) async fn rogue_node(&mut self) -> Result<(), AnyError> {
        let c = self.dep.cluster("dc1").ok_or_else(|| fail("no dc1"))?;
        let victim = c.nodes[0].name.clone();
        let server = (c.nodes[1].name.clone(), c.nodes[1].addr);
        let bridge = c.bridge_addr;
        let root = custos_pki::pem_to_der(&self.dep.pki.root_pem()?, "root")?;
        let rogue = custos::rogue::identity(&self.dep.pki, "dc1", &victim)?;
        let mut refusals = Vec::new();
        let register = custos::rogue::try_register(bridge, "dc1", &victim, &rogue, &root).await;
        refusals.push(("register", refused_as_non_member(register, "register")?));
        let (name, addr) = server;
        let addr = addr.ok_or_else(|| fail("dc1 node2 has no server address"))?;
        let export = custos::rogue::try_export(addr, "dc1", &name, &rogue, &root).await;
        refusals.push(("export_keys", refused_as_non_member(export, "export")?));
        let still = self.client.cluster("dc1").await?;
        if !still.nodes.iter().any(|n| n.node == victim && n.healthy) {
            return Err(fail(&format!(
                "{victim} lost its registration to the rogue"
            )));
        }
        self.steps.ok(
            "rogue_node",
            format!(
                "a genuine dc1 certificate on a key made outside any TEE: register as {victim} \
                 refused ({}), key export from {name} refused ({}); {victim} still serves",
                refusals[0].1, refusals[1].1
            ),
        );
        self.rogue_refused = refusals
            .into_iter()
            .map(|(call, why)| json!({"call": call, "refused": why}))
            .collect();
        Ok(())
    }

    /// dc2's wallet (1 of alice, bob, carol) gets a new approver group through
    /// `PUT /v1/wallets/{root_id}/policy`, approved by its group in force: 2 of alice and bob.
    /// Every dc2 TEE then enforces it: a request approved by carol and alice is refused by
    /// name, alice and bob sign.
    pub(super) async fn approver_group(&mut self) -> Result<(), AnyError> {
        let w = self
            .wallets
            .iter()
            .find(|w| w.cluster == "dc2")
            .ok_or_else(|| fail("no dc2 wallet"))?;
        let root_id = w.root_id.clone();
        let group = vec![
            hex::encode(self.alice.key_fingerprint()),
            hex::encode(self.bob.key_fingerprint()),
        ];
        let proposed = self
            .client
            .set_wallet_policy(
                &root_id,
                &KeyPolicyBody {
                    rules: None,
                    group: group.clone(),
                    quorum: 2,
                    request_id: None,
                    expires_at: None,
                },
            )
            .await?;
        let done = approve_all(&self.client, proposed, &[&self.alice]).await?;
        status_is(&done, RequestStatus::Completed, "approver group change")?;
        let policy = self.client.wallet_policy(&root_id).await?;
        let mut want = group.clone();
        want.sort();
        if policy.group != want || policy.quorum != 2 {
            return Err(fail(&format!(
                "dc2 wallet policy after the change: {policy:?}"
            )));
        }
        let sign = |digest: u8| sign_body(&root_id, "m/0/3", digest);
        let pending = self.client.sign(&sign(0x15)).await?;
        let refused = approve_all(&self.client, pending, &[&self.carol, &self.alice]).await?;
        let code = refused_with(&refused, "tee_approver_not_in_group", "carol's request")?;
        let pending = self.client.sign(&sign(0x16)).await?;
        let signed = approve_all(&self.client, pending, &[&self.alice, &self.bob]).await?;
        status_is(
            &signed,
            RequestStatus::Completed,
            "sign under the new group",
        )?;
        self.steps.ok(
            "approver-group",
            format!(
                "dc2 wallet {}…: group changed through REST from 1 of alice/bob/carol to 2 of \
                 alice/bob (policy version {}, approved by the group in force); carol's \
                 approval refused by the TEE ({code}); alice and bob sign",
                &root_id[..16],
                policy.version
            ),
        );
        self.group_changed = json!({"cluster": "dc2", "root_id": root_id,
            "version": policy.version, "group": ["alice", "bob"], "quorum": 2,
            "outsider_refused": code});
        Ok(())
    }

    /// Carol's key is revoked in dc1 through `POST /v1/clusters/dc1/revocations`, approved
    /// by alice and bob; her approval of a dc1 sign request is then refused by name, and
    /// alice and bob still sign.
    pub(super) async fn revoked_admin(&mut self) -> Result<(), AnyError> {
        let carol = hex::encode(self.carol.key_fingerprint());
        let proposed = self
            .client
            .revoke(
                "dc1",
                &RevokeBody {
                    admins: vec![carol.clone()],
                    devices: Vec::new(),
                    reason: "demo: carol left the company".into(),
                    request_id: None,
                    expires_at: None,
                },
            )
            .await?;
        let done = approve_all(&self.client, proposed, &[&self.alice, &self.bob]).await?;
        status_is(&done, RequestStatus::Completed, "revocation")?;
        let w = self
            .wallets
            .iter()
            .find(|w| w.cluster == "dc1")
            .ok_or_else(|| fail("no dc1 wallet"))?;
        let pending = self
            .client
            .sign(&sign_body(&w.root_id, "m/0/9", 0x14))
            .await?;
        // Carol's approval is taken as a signature over the request (the cloud server
        // checks signatures; only the TEE decides who counts), so with alice's it reaches
        // the quorum of two and goes to dc1, whose TEEs refuse it by name.
        let refused = approve_all(&self.client, pending, &[&self.carol, &self.alice]).await?;
        let code = refused_with(&refused, "tee_admin_revoked", "a revoked admin's request")?;
        let pending = self
            .client
            .sign(&sign_body(&w.root_id, "m/0/9", 0x14))
            .await?;
        let signed = approve_all(&self.client, pending, &[&self.alice, &self.bob]).await?;
        status_is(
            &signed,
            RequestStatus::Completed,
            "sign after the revocation",
        )?;
        self.steps.ok(
            "revoked_admin",
            format!(
                "carol revoked in dc1 (log version {}): a request approved by carol and alice refused \
                 by dc1's TEE ({code}); alice and bob still sign",
                done_version(&done)
            ),
        );
        self.revoked_refused = json!({"admin": "carol", "key_fingerprint": carol,
            "cluster": "dc1", "refused": code});
        Ok(())
    }
}

/// A sign request for `root_id` at `path` over a digest of 32 bytes `digest`, approvals
/// to follow.
fn sign_body(root_id: &str, path: &str, digest: u8) -> SignRequestBody {
    SignRequestBody {
        root_id: root_id.into(),
        path: path.into(),
        digest: hex::encode([digest; 32]),
        request_id: None,
        expires_at: None,
        approvals: Vec::new(),
    }
}

/// The code of `view`'s refusal, which must be `want` (a refusal for another reason, or no
/// refusal, fails the step).
fn refused_with(
    view: &custos_cloud_api::RequestView,
    want: &str,
    what: &str,
) -> Result<String, AnyError> {
    status_is(view, RequestStatus::Refused, what)?;
    match &view.error {
        Some(e) if e.code == want => Ok(e.code.clone()),
        other => Err(fail(&format!(
            "{what}: refused as {other:?}, expected {want}"
        ))),
    }
}

fn done_version(view: &custos_cloud_api::RequestView) -> String {
    match &view.result {
        Some(custos_cloud_api::RequestResult::Governance(g)) => g.log_version.to_string(),
        _ => "?".into(),
    }
}

/// The error code of a refusal that must be `not_a_member` (gRPC PermissionDenied).
fn refused_as_non_member(
    r: Result<(), tonic::Status>,
    what: &str,
) -> Result<&'static str, AnyError> {
    match r {
        Ok(()) => Err(fail(&format!("the rogue's {what} was accepted"))),
        Err(e)
            if e.code() == tonic::Code::PermissionDenied
                && e.message().starts_with("not_a_member:") =>
        {
            Ok("not_a_member")
        }
        Err(e) => Err(fail(&format!(
            "the rogue's {what} failed for another reason: {e:?}"
        ))),
    }
}

impl Demo {
    /// A rogue co-signer (issue 12, plan step D5): a key made outside any TEE with a device
    /// certificate dc3's Cluster CA genuinely issued, named as dc3's co-signer of the DKG key
    /// in a signing start approved by the key's group and sent straight to each dc1 node's
    /// TEE, as a compromised coordinator could. The key anchors dc3 at its log, so the dc1
    /// node that just co-signed with dc3 (holding dc3's pushed log) refuses it as no member;
    /// any other dc1 node refuses too (without dc3's log or without the share).
    pub(super) fn rogue_co_signer(
        &mut self,
        key_id: &str,
        path: &[u32],
    ) -> Result<serde_json::Value, AnyError> {
        use custos_wire::approval::{Action, Approval, THRESHOLD_SCOPE};
        use custos_wire::protocol::{
            encode_request, Request, RequestMeta, ThresholdSignParams, ThresholdSigner,
        };

        let (_, rogue) = custos::rogue::certified_key(&self.dep.pki, "dc3", "dc3-rogue")?;
        let key_id = hex::decode(key_id)?;
        let digest: [u8; 32] = rand::random();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let meta = RequestMeta {
            request_id: rand::random(),
            expires_at: now + 600,
        };
        let message = Action::ThresholdSign {
            key_id: &key_id,
            path,
            digest: &digest,
        }
        .message(THRESHOLD_SCOPE, &meta);
        let mut approvals = Vec::new();
        for a in [&self.alice, &self.bob] {
            approvals.push(Approval::by_key_file(a, &message)?);
        }
        let nodes = self.dep.cluster("dc1").map_or(0, |c| c.nodes.len());
        let mut outcomes = Vec::new();
        for i in 0..nodes {
            let own = self.dep.node_chain("dc1", i)?;
            let start = Request::ThresholdStart {
                meta: meta.clone(),
                attempt: 0,
                approvals: approvals.clone(),
                params: ThresholdSignParams {
                    key_id: key_id.clone(),
                    path: path.to_vec(),
                    digest,
                    signers: vec![
                        ThresholdSigner {
                            share_index: 0,
                            chain: own,
                        },
                        ThresholdSigner {
                            share_index: 2,
                            chain: rogue.clone(),
                        },
                    ],
                },
            };
            let node = &self.dep.cluster("dc1").ok_or_else(|| fail("no dc1"))?.nodes[i];
            let answer = node.tee.client()?.call_bytes(&encode_request(&start))?;
            let code = match answer {
                Ok(_) => {
                    return Err(fail(&format!(
                        "{} started a session with the rogue as dc3's co-signer",
                        node.name
                    )))
                }
                Err(e) => e.code(),
            };
            outcomes.push((node.name.clone(), code));
        }
        if !outcomes.iter().any(|(_, c)| *c == "not_a_member") {
            return Err(fail(&format!(
                "no dc1 node refused the rogue as no member of dc3's log: {outcomes:?}"
            )));
        }
        let shown: Vec<String> = outcomes.iter().map(|(n, c)| format!("{n}: {c}")).collect();
        self.steps.ok(
            "rogue-co-signer",
            format!(
                "a genuine dc3 certificate on a key made outside any TEE, named as dc3's \
                 co-signer of the DKG key straight at dc1's TEEs: refused ({}); the key \
                 anchors dc3 at its governance log",
                shown.join(", ")
            ),
        );
        Ok(outcomes
            .into_iter()
            .map(|(node, code)| json!({"node": node, "refused": code}))
            .collect())
    }
}
