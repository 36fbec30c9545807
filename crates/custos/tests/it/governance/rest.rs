//! The operator surface of governance (plan steps G1, G2, G4) on a real deployment: a cluster
//! is governed, and an admin revoked, through the cloud server's REST routes only, each change
//! approved by governors with their own keys. Attacker first: a read-only token proposes
//! nothing, an admin who is not a governor does not count, and a revoked admin is refused by
//! name, early by the cloud server and in the end by the TEE itself.

use custos::cluster::LinkTransport;
use custos::deployment::{Deployment, DeploymentOptions};
use custos_cloud::config::ApiTokenConfig;
use custos_cloud_api::approval::{approval_message, sign_approval};
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::*;
use custos_pki::AdminSigner;

use crate::common::exe;

const DC: &str = "dc1";

/// Signs the approval message recomputed from the view (never the server's bytes), checks
/// that the server shows the same, and posts it.
async fn approve(
    client: &CloudClient,
    view: &RequestView,
    admin: &AdminSigner,
) -> Result<RequestView, custos_cloud_api::ClientError> {
    let message = approval_message(view).expect("a governance view carries its terms");
    assert_eq!(hex::encode(&message), view.approval_message);
    client
        .approve(&view.id, &sign_approval(admin, &message).unwrap())
        .await
}

/// `admin` approves request `id` with `custos approve`, which recomputes and describes it:
/// the request after, and what it showed.
async fn approve_with_cli(d: &Deployment, admin: &str, id: &str) -> (RequestView, String) {
    let folder = d.admin_folder(admin).unwrap();
    let mut shown = Vec::new();
    let done = custos::approve::approve(
        &custos::approve::ApproveArgs {
            api: d.api_url.clone(),
            token: d.api_token.clone(),
            api_root_ca: None,
            cert: folder.chain(),
            key: custos::admin::KeySource::File(folder.key()),
            request: Some(id.to_string()),
            yes: true,
        },
        &mut std::io::empty(),
        &mut shown,
    )
    .await
    .unwrap()
    .unwrap();
    (done, String::from_utf8(shown).unwrap())
}

fn fp(admin: &AdminSigner) -> String {
    hex::encode(admin.key_fingerprint())
}

#[test]
fn a_cluster_governed_and_an_admin_revoked_through_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Deployment::start(
        &exe(),
        dir.path(),
        &DeploymentOptions {
            clusters: vec![(DC.into(), LinkTransport::Tcp)],
            nodes: 2,
            admins: ["alice", "bob", "carol", "dave"].map(String::from).to_vec(),
            sync_interval_secs: 3600,
            audit_interval_secs: 0,
            cloud_db_url: None,
            webhooks: Vec::new(),
        },
    )
    .unwrap();
    let (reader_token, reader_hash) = custos_cloud::generate_api_token();
    d.reconfigure_cloud(|c| {
        c.api_tokens.push(ApiTokenConfig::new(
            "reader",
            reader_hash.clone(),
            &[Scope::Read],
        ))
    })
    .unwrap();
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|n| d.admin(n).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = d.client().unwrap();
        let reader = CloudClient::new(&d.api_url, &reader_token).unwrap();

        // `custos admin fingerprint` names an admin by the key its certificate certifies.
        let chain = std::fs::read_to_string(d.admin_folder("alice").unwrap().chain()).unwrap();
        let (key, name) = custos::governance::admin_fingerprint(&chain).unwrap();
        assert_eq!((key, name.as_str()), (alice.key_fingerprint(), "alice"));

        let genesis = GenesisBody {
            governors: vec![fp(&carol), fp(&alice), fp(&bob)],
            quorum: 2,
            members: vec![format!("{DC}-node1"), format!("{DC}-node2")],
            measurement_policy: Some(custos_cloud_api::MeasurementPolicyView {
                allow_software: true,
                ..Default::default()
            }),
            request_id: None,
            expires_at: None,
        };
        let revoke = RevokeBody {
            admins: vec![fp(&carol)],
            devices: vec![],
            reason: "laptop stolen".into(),
            request_id: None,
            expires_at: None,
        };
        let governors = GovernorsBody {
            governors: vec![fp(&alice), fp(&bob)],
            quorum: 2,
            request_id: None,
            expires_at: None,
        };
        // A read-only token proposes nothing, on every governance route.
        let refusals = [
            reader.propose_genesis(DC, &genesis).await.map(drop),
            reader
                .admit_member(
                    DC,
                    &AdmitBody {
                        node: format!("{DC}-node3"),
                        chain_pem: None,
                        evidence_format: None,
                        evidence_hex: None,
                        request_id: None,
                        expires_at: None,
                    },
                )
                .await
                .map(drop),
            reader
                .remove_member(
                    DC,
                    &format!("{DC}-node2"),
                    &RemoveMemberBody {
                        reason: "x".into(),
                        request_id: None,
                        expires_at: None,
                    },
                )
                .await
                .map(drop),
            reader.revoke(DC, &revoke).await.map(drop),
            reader.set_governors(DC, &governors).await.map(drop),
        ];
        for r in refusals {
            match r {
                Err(ClientError::Api { status, code, .. }) => {
                    assert_eq!((status, code.as_str()), (403, "scope_missing"))
                }
                other => panic!("a read-only token was not refused: {other:?}"),
            }
        }
        assert_eq!(
            client.members(DC).await.unwrap_err().code(),
            Some("not_governed")
        );

        // The genesis, proposed through REST with chains the bridge hands out.
        let view = client.propose_genesis(DC, &genesis).await.unwrap();
        assert_eq!(
            (view.kind, view.status, view.quorum),
            (RequestKind::Governance, RequestStatus::PendingApproval, 2)
        );
        assert_eq!(view.governance.as_ref().unwrap().version, 0);
        // Dave is a genuine admin, but no governor: his approval does not count.
        let e = approve(&client, &view, &dave).await.unwrap_err();
        assert_eq!(e.code(), Some("approver_not_a_governor"), "{e}");
        let view = approve(&client, &view, &alice).await.unwrap();
        assert_eq!(view.status, RequestStatus::PendingApproval);
        // Bob approves with `custos approve`, which recomputes and describes the entry.
        let (done, shown) = approve_with_cli(&d, "bob", &view.id).await;
        assert!(
            shown.contains("start the governance log of cluster dc1"),
            "{shown}"
        );
        assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
        let members = client.members(DC).await.unwrap();
        let names: Vec<&str> = members.members.iter().map(|m| m.node.as_str()).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"dc1-node1") && names.contains(&"dc1-node2"));
        assert_eq!((members.version, members.quorum), (0, 2));
        assert_eq!(members.governors.len(), 3);
        assert!(
            members.members.iter().all(|m| m.serving == Some(true)),
            "{members:?}"
        );
        match &done.result {
            Some(RequestResult::Governance(r)) => {
                assert_eq!((r.log_version, &r.head), (0, &members.head));
                assert_eq!(r.genesis_id, members.genesis_id);
            }
            other => panic!("no governance result: {other:?}"),
        }
        // A second genesis is refused.
        let e = client.propose_genesis(DC, &genesis).await.unwrap_err();
        assert_eq!(e.code(), Some("already_governed"));

        // A wallet made while carol still counts (alice approves it).
        let wallet = client
            .create_wallet(&CreateWalletBody {
                rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
                cluster: DC.into(),
                quorum: 1,
                group: vec![fp(&alice), fp(&bob), fp(&carol)],
                executor: None,
                request_id: None,
                expires_at: None,
                approvals: vec![],
            })
            .await
            .unwrap();
        let wallet = approve(&client, &wallet, &alice).await.unwrap();
        assert_eq!(wallet.status, RequestStatus::Completed, "{wallet:?}");
        let root_id = wallet.root_id.clone().unwrap();

        // Carol is revoked through REST, approved by alice and bob.
        let view = client.revoke(DC, &revoke).await.unwrap();
        assert_eq!(view.governance.as_ref().unwrap().version, 1);
        approve(&client, &view, &alice).await.unwrap();
        let done = approve(&client, &view, &bob).await.unwrap();
        assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
        let members = client.members(DC).await.unwrap();
        assert_eq!(members.version, 1);
        assert_eq!(
            members.revoked_admins,
            vec![RevokedView {
                fingerprint: fp(&carol),
                version: 1
            }]
        );
        let log = client.governance_log(DC, Some(1)).await.unwrap();
        assert_eq!(log.entries.len(), 1);
        let approvers: Vec<&str> = log.entries[0]
            .approvers
            .iter()
            .map(|a| a.admin.as_str())
            .collect();
        assert_eq!(approvers, ["alice", "bob"]);

        // Carol's approval of the next entry is refused by the cloud server, by name.
        let view = client.set_governors(DC, &governors).await.unwrap();
        let e = approve(&client, &view, &carol).await.unwrap_err();
        assert_eq!(e.code(), Some("admin_revoked"), "{e}");
        // And by the TEE: a signature of the wallet approved by carol alone is refused there.
        let sign = client
            .sign(&SignRequestBody {
                root_id,
                path: "m/0".into(),
                digest: "11".repeat(32),
                request_id: None,
                expires_at: None,
                approvals: vec![],
            })
            .await
            .unwrap();
        let refused = approve(&client, &sign, &carol).await.unwrap();
        assert_eq!(refused.status, RequestStatus::Refused, "{refused:?}");
        assert_eq!(
            refused.error.as_ref().map(|e| e.code.as_str()),
            Some("tee_admin_revoked"),
            "{refused:?}"
        );

        // `custos cluster members list` prints the same state.
        let mut out = Vec::new();
        custos::governance::run_cluster(
            custos::governance::ClusterGovCommand::Members {
                command: custos::governance::MembersCommand::List {
                    api: custos::governance::ApiArgs {
                        api: d.api_url.clone(),
                        token: reader_token.to_string(),
                        api_root_ca: None,
                    },
                    cluster: DC.into(),
                },
            },
            &mut out,
        )
        .await
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("log version 1") && out.contains(&fp(&carol)),
            "{out}"
        );
    });
}

/// Runs `custos` with `args`, which must succeed; returns its stdout.
fn run(args: &[&str]) -> String {
    let out = std::process::Command::new(exe())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "custos {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Issue 13, attestation-verified admission through REST and the CLI: a member's TEE signs a
/// ticket for node3, node3's own TEE answers it (`custos tee admission-evidence`), the
/// governors approve the admission carrying that answer. Attacks: the ticket answered by
/// another node's TEE, and the answer replayed after node3 was removed.
#[test]
fn a_node_is_admitted_with_its_answer_to_a_ticket_and_the_answer_admits_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::start(
        &exe(),
        dir.path(),
        &DeploymentOptions {
            clusters: vec![(DC.into(), LinkTransport::Tcp)],
            nodes: 3,
            admins: ["alice", "bob"].map(String::from).to_vec(),
            sync_interval_secs: 3600,
            audit_interval_secs: 0,
            cloud_db_url: None,
            webhooks: Vec::new(),
        },
    )
    .unwrap();
    let [alice, bob] = ["alice", "bob"].map(|n| d.admin(n).unwrap());
    let socket = |i: usize| d.cluster(DC).unwrap().nodes[i].tee.socket.clone();
    let files = dir.path().join("admission");
    std::fs::create_dir(&files).unwrap();
    let file = |name: &str| files.join(name).display().to_string();
    let node3 = format!("{DC}-node3");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = d.client().unwrap();
        let both = |view: RequestView| {
            let (client, alice, bob) = (&client, &alice, &bob);
            async move {
                approve(client, &view, alice).await.unwrap();
                approve(client, &view, bob).await.unwrap()
            }
        };
        let genesis = GenesisBody {
            governors: vec![fp(&alice), fp(&bob)],
            quorum: 2,
            members: vec![format!("{DC}-node1"), format!("{DC}-node2")],
            measurement_policy: Some(MeasurementPolicyView {
                allow_software: true,
                ..Default::default()
            }),
            request_id: None,
            expires_at: None,
        };
        let done = both(client.propose_genesis(DC, &genesis).await.unwrap()).await;
        assert_eq!(done.status, RequestStatus::Completed, "{done:?}");

        // At node3: its chain; at the admins' side: the ticket a member's TEE signs.
        let api = ["--api", d.api_url.as_str(), "--token", d.api_token.as_str()];
        let s3 = socket(2).display().to_string();
        run(&["tee", "chain", "--socket", &s3, "--out", &file("n3.pem")]);
        let (n3_pem, ticket_json) = (file("n3.pem"), file("ticket.json"));
        let ticket_args = [
            &["cluster", "members", "ticket", "--cluster", DC, "--node"][..],
            &[node3.as_str(), "--chain", &n3_pem, "--out", &ticket_json],
            &api,
        ]
        .concat();
        run(&ticket_args);
        let ticket: AdmissionTicketView =
            serde_json::from_str(&std::fs::read_to_string(file("ticket.json")).unwrap()).unwrap();
        assert!(!ticket.sealed_to_tpm);
        assert!(ticket.issuer == format!("{DC}-node1") || ticket.issuer == format!("{DC}-node2"));

        // Node2's TEE does not answer node3's ticket.
        let s2 = socket(1).display().to_string();
        let out = std::process::Command::new(exe())
            .args(["tee", "admission-evidence", "--socket", &s2, "--ticket"])
            .arg(file("ticket.json"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("admission_refused") || err.contains("admission refused"),
            "{err}"
        );

        // Node3's does; its answer is the admission's evidence.
        run(&[
            "tee",
            "admission-evidence",
            "--socket",
            &s3,
            "--ticket",
            &file("ticket.json"),
            "--out",
            &file("evidence.hex"),
        ]);
        let evidence = std::fs::read_to_string(file("evidence.hex")).unwrap();
        let admit = AdmitBody {
            node: node3.clone(),
            chain_pem: Some(std::fs::read_to_string(file("n3.pem")).unwrap()),
            evidence_format: Some(1),
            evidence_hex: Some(evidence.trim().to_string()),
            request_id: None,
            expires_at: None,
        };
        let view = client.admit_member(DC, &admit).await.unwrap();
        let shown = &view.governance.as_ref().unwrap().change;
        assert!(
            matches!(shown, GovChangeView::Admit { member } if member.evidence_format == 1),
            "{shown:?}"
        );
        // Bob approves with `custos approve`, which shows what the answer answers.
        approve(&client, &view, &alice).await.unwrap();
        let (done, shown) = approve_with_cli(&d, "bob", &view.id).await;
        assert!(shown.contains("ticket by"), "{shown}");
        assert!(shown.contains("\"software\""), "{shown}");
        assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
        let members = client.members(DC).await.unwrap();
        assert!(
            members.members.iter().any(|m| m.node == node3),
            "{members:?}"
        );

        // Removed, node3 cannot come back with the same answer: its nonce was used.
        let removal = RemoveMemberBody {
            reason: "rebuilt".into(),
            request_id: None,
            expires_at: None,
        };
        let done = both(client.remove_member(DC, &node3, &removal).await.unwrap()).await;
        assert_eq!(done.status, RequestStatus::Completed, "{done:?}");
        let e = client.admit_member(DC, &admit).await.unwrap_err();
        assert_eq!(e.code(), Some("invalid_governance"), "{e}");
        assert!(e.to_string().contains("admission_nonce_reused"), "{e}");
    });
}
