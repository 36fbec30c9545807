//! The demo's attestation-verified membership (`--platform tpm`): each cluster's genesis names
//! one founder and a measurement policy that admits TPMs only (the endorsement root of the
//! cluster's TPM maker, PCR 7 as a software TPM boots); its other two nodes are then admitted
//! the way a node joins a production cluster: a member TEE's ticket seals a nonce to the
//! node's TPM, the node's TEE answers with a quote binding its device key, the governors
//! approve, and every TEE of the cluster verifies that quote before it applies the entry.
//! The verdicts are the report's `tees[].attestation`.

use std::time::{Duration, Instant};

use custos::admission::{answer_ticket, device_chain_pem, identity_with_chain};
use custos::tee_plan::{swtpm_ca, PlatformName};
use custos_cloud_api::{
    AdmitBody, MeasurementPolicyView, RegisterView, TicketBody, TpmMeasurementView,
};
use custos_tee_host::swtpm::{EK_CA_ISSUER, EK_CA_ROOT};
use custos_wire::governance::EVIDENCE_ADMISSION_V1;
use sha2::{Digest, Sha256};

use super::*;

/// The PCR the TEEs quote (the TPM platform's default selection, `sha256:7`) and its value
/// on a software TPM that booted with nothing measured. A real host pins its measured
/// boot's value here.
const PCR: (u8, [u8; 32]) = (7, [0; 32]);

/// How long an admitted node may take to register with its bridge.
const REGISTER_WITHIN: Duration = Duration::from_secs(30);

impl Demo {
    /// The genesis members and measurement policy of cluster `c`: every node on the software
    /// platform (the policy allows the development stand-in); on `--platform tpm`, the first
    /// node only, with a policy admitting TPMs whose endorsement certificate chains to the
    /// cluster's TPM maker's root and whose PCR 7 is [`PCR`]'s.
    pub(super) fn genesis_plan(
        &self,
        c: &str,
        nodes: &[String],
    ) -> Result<(Vec<String>, MeasurementPolicyView), AnyError> {
        if self.platform != PlatformName::Tpm {
            let policy = MeasurementPolicyView {
                allow_software: true,
                ..Default::default()
            };
            return Ok((nodes.to_vec(), policy));
        }
        let (root, _) = self.ek_ca(c)?;
        let policy = MeasurementPolicyView {
            allow_software: false,
            tpm: Some(TpmMeasurementView {
                ek_roots_sha256: vec![hex::encode(Sha256::digest(root))],
                pcrs: vec![RegisterView {
                    index: PCR.0,
                    value: hex::encode(PCR.1),
                }],
            }),
            ..Default::default()
        };
        Ok((nodes[..1].to_vec(), policy))
    }

    /// The DER root and PEM chain (issuer, root) of cluster `c`'s TPM maker: what its TPMs'
    /// endorsement certificates chain to (a TPM does not carry the chain; the operator has it
    /// from the maker).
    fn ek_ca(&self, c: &str) -> Result<(Vec<u8>, String), AnyError> {
        let cluster = self.dep.cluster(c).ok_or_else(|| fail(c))?;
        let ca = swtpm_ca(&cluster.dir);
        let root_pem = std::fs::read_to_string(ca.join(EK_CA_ROOT))?;
        let issuer_pem = std::fs::read_to_string(ca.join(EK_CA_ISSUER))?;
        let root = custos_pki::pem_to_der(&root_pem, "TPM maker's root")?;
        Ok((root, issuer_pem + &root_pem))
    }

    /// Admits every node of `c` the genesis did not name, each by its TPM's quote, and
    /// records each TEE's attestation verdict; then waits until every node serves again.
    pub(super) async fn admit_by_quote(
        &mut self,
        c: &str,
        founders: &[String],
        nodes: &[String],
    ) -> Result<(), AnyError> {
        for node in nodes {
            let verdict = if founders.contains(node) {
                founder_verdict(self.platform)
            } else {
                self.admit_one(c, node).await?
            };
            self.record_attestation(node, verdict)?;
        }
        if founders.len() < nodes.len() {
            self.wait_registered(c, nodes).await?;
            self.steps.ok(
                "admission",
                format!(
                    "{c}: {} admitted by TPM quote (ticket sealed to each node's TPM, quote over \
                     PCR 7 binding its device key, checked by every TEE of {c} against the \
                     quorum-approved measurement policy); each registered and serving",
                    nodes
                        .iter()
                        .filter(|n| !founders.contains(n))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        Ok(())
    }

    /// One node's admission by quote; its verdict.
    async fn admit_one(&mut self, c: &str, node: &str) -> Result<serde_json::Value, AnyError> {
        let cluster = self.dep.cluster(c).ok_or_else(|| fail(c))?;
        let tee = &cluster
            .nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| fail(node))?
            .tee;
        let socket = tee.socket.clone();
        let (root, ek_chain) = self.ek_ca(c)?;
        let chain_pem = device_chain_pem(&socket)?;
        let identity = identity_with_chain(&socket, &ek_chain)?;
        let ticket = self
            .client
            .admission_ticket(
                c,
                &TicketBody {
                    node: node.to_string(),
                    chain_pem: chain_pem.clone(),
                    tpm_identity: Some(identity),
                },
            )
            .await?;
        if !ticket.sealed_to_tpm {
            return Err(fail(&format!("{node}'s ticket is not sealed to its TPM")));
        }
        let evidence = answer_ticket(&socket, &ticket)?;
        let proposed = self
            .client
            .admit_member(
                c,
                &AdmitBody {
                    node: node.to_string(),
                    chain_pem: Some(chain_pem),
                    evidence_format: Some(EVIDENCE_ADMISSION_V1),
                    evidence_hex: Some(evidence.clone()),
                    request_id: None,
                    expires_at: None,
                },
            )
            .await?;
        let done = approve_all(&self.client, proposed, &[&self.alice, &self.bob]).await?;
        status_is(
            &done,
            RequestStatus::Completed,
            &format!("{node}'s admission"),
        )?;
        Ok(json!({
            "verified": true,
            "evidence": "tpm2-quote",
            "checked_by": format!("every TEE of {c}, before applying the Admit entry"),
            "ticket_issuer": ticket.issuer,
            "nonce_sealed_to_tpm": true,
            "ek_root_sha256": hex::encode(Sha256::digest(root)),
            "pcrs": [{"index": PCR.0, "value": hex::encode(PCR.1)}],
            "evidence_bytes": evidence.len() / 2,
            "admission_request": done.id,
        }))
    }

    fn record_attestation(
        &mut self,
        node: &str,
        verdict: serde_json::Value,
    ) -> Result<(), AnyError> {
        let tee = self
            .tees
            .iter_mut()
            .find(|t| t["node"] == node)
            .ok_or_else(|| fail(&format!("{node} has no platform record")))?;
        tee["attestation"] = verdict;
        Ok(())
    }

    /// Waits until the bridge of `c` lists every one of `nodes` healthy (an admitted node
    /// registers at its next heartbeat).
    async fn wait_registered(&self, c: &str, nodes: &[String]) -> Result<(), AnyError> {
        let deadline = Instant::now() + REGISTER_WITHIN;
        loop {
            let status = self.client.cluster(c).await?;
            let serving = |n: &String| status.nodes.iter().any(|s| &s.node == n && s.healthy);
            if nodes.iter().all(serving) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(fail(&format!(
                    "{c}: admitted nodes not serving after {REGISTER_WITHIN:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// What the report says of a TEE admitted without evidence.
fn founder_verdict(platform: PlatformName) -> serde_json::Value {
    match platform {
        PlatformName::Tpm => json!({
            "verified": false,
            "founder": true,
            "why": "named in the genesis the governors approved; the nodes admitted after it \
                    show their TPM quote",
        }),
        PlatformName::Software => json!({
            "verified": false,
            "founder": true,
            "why": "the software platform has no evidence to show; the cluster's policy allows \
                    the development stand-in",
        }),
    }
}
