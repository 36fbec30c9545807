//! The link through real processes: external relay (gRPC, bearer token) → link (TCP frames
//! or spool files) → bridge → vault node → TEE. Retried envelopes return the first result,
//! a digest changed after approval is refused by the TEE, and a caller without the token or
//! with the wrong relay identity gets nothing.

use std::time::Duration;

use crate::common::*;
use custos::cluster::{Cluster, ClusterOptions, LinkChannel, LinkTransport};
use custos::link_channel::Direction;
use custos::ops::{approvals, new_meta};
use custos_link::qr::damage::Damage;
use custos_pki::{pem_to_der, TrustRoot};
use custos_proto::cluster::external_relay_client::ExternalRelayClient;
use custos_proto::cluster::link_reply::Result as Answer;
use custos_proto::cluster::link_request::Op;
use custos_proto::cluster::{LinkReply, LinkRequest, RelayCall, StatusRequest, TeeCall};
use custos_wire::approval::Action;
use custos_wire::protocol::{encode_request, Request, Response, TeeError};
use prost::Message;
use tonic::transport::Channel;

struct Relay {
    client: ExternalRelayClient<Channel>,
    token: String,
}

impl Relay {
    fn connect(pki: &Pki, cluster: &Cluster) -> Self {
        let root = TrustRoot::from_der(&pem_to_der(&pki.pki.root_pem().unwrap(), "root").unwrap())
            .unwrap();
        let relay = cluster.relay.clone().expect("cluster has a relay");
        let channel = custos_relay::connect_relay(relay.addr, &root, &cluster.name).unwrap();
        Relay {
            client: ExternalRelayClient::new(channel),
            token: relay.token,
        }
    }

    async fn forward_with(
        &mut self,
        token: &str,
        id: [u8; 16],
        op: Op,
    ) -> Result<LinkReply, tonic::Status> {
        let mut req = tonic::Request::new(RelayCall {
            request_id: id.to_vec(),
            payload: LinkRequest { op: Some(op) }.encode_to_vec(),
        });
        req.metadata_mut().insert(
            custos_relay::RELAY_TOKEN_HEADER,
            format!("Bearer {token}").parse().unwrap(),
        );
        let answer = self.client.forward(req).await?.into_inner();
        Ok(LinkReply::decode(answer.payload.as_slice()).unwrap())
    }

    async fn forward(&mut self, id: [u8; 16], op: Op) -> LinkReply {
        let token = self.token.clone();
        self.forward_with(&token, id, op).await.unwrap()
    }

    async fn tee(
        &mut self,
        id: [u8; 16],
        req: &Request,
    ) -> (Vec<u8>, custos_wire::protocol::Outcome) {
        match self
            .forward(
                id,
                Op::Submit(TeeCall {
                    request: encode_request(req),
                    ..Default::default()
                }),
            )
            .await
            .result
        {
            Some(Answer::Submitted(reply)) => {
                let outcome = custos_wire::client::decode_outcome(&reply.response).unwrap();
                (reply.response, outcome)
            }
            other => panic!("expected a TEE reply, got {other:?}"),
        }
    }
}

fn start(pki: &Pki, transport: LinkTransport) -> Cluster {
    Cluster::start(
        &exe(),
        &pki.pki,
        &pki.path().join("c"),
        &ClusterOptions {
            name: CLUSTER.into(),
            nodes: 2,
            db_url: None,
            sync_interval_secs: 2,
            audit_interval_secs: 0,
            link: Some(transport),
        },
    )
    .unwrap()
}

/// Runs the flows over `transport` and returns the cluster (its channel's record).
fn flows_over(transport: LinkTransport) -> Cluster {
    let pki = Pki::new();
    let cluster = start(&pki, transport);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut relay = Relay::connect(&pki, &cluster);
        let status = relay
            .forward(rand::random(), Op::Status(StatusRequest {}))
            .await;
        match status.result {
            Some(Answer::Status(s)) => assert_eq!(s.cluster, CLUSTER),
            other => panic!("expected a status, got {other:?}"),
        }

        // Create a wallet; the retried envelope (same id, same payload) returns the very
        // first answer, byte for byte, and no second wallet exists.
        let meta = new_meta(600);
        let create = Request::CreateWallet {
            meta: meta.clone(),
            quorum: 1,
            approvals: approvals(
                &[pki.admin("alice")],
                CLUSTER,
                &meta,
                &Action::CreateWallet { quorum: 1 },
            )
            .unwrap(),
        };
        let id: [u8; 16] = rand::random();
        let (first, outcome) = relay.tee(id, &create).await;
        let key = match outcome {
            Ok(Response::Wallet(k)) => k,
            other => panic!("wallet not created: {other:?}"),
        };
        let (again, _) = relay.tee(id, &create).await;
        assert_eq!(
            first, again,
            "a retried envelope must return the first result"
        );
        cluster.wait_synced(1, Duration::from_secs(30)).unwrap();
        for n in &cluster.nodes {
            let mut c = n.tee.client().unwrap();
            match c.call(&Request::ListKeys).unwrap() {
                Response::Keys(k) => assert_eq!(k.len(), 1, "the retry created a second wallet"),
                other => panic!("{other:?}"),
            }
        }

        // Sign; verify with an independent verifier against the TEE-reported child key.
        let path = [0u32, 7];
        let digest = [0x42u8; 32];
        let meta = new_meta(600);
        let action = Action::Sign {
            key_id: &key.key_id,
            path: &path,
            digest: &digest,
        };
        let approved = approvals(&[pki.admin("alice")], CLUSTER, &meta, &action).unwrap();
        let sign = Request::Sign {
            meta: meta.clone(),
            key_id: key.key_id.clone(),
            path: path.to_vec(),
            digest,
            approvals: approved.clone(),
        };
        let sig = match relay.tee(rand::random(), &sign).await.1 {
            Ok(Response::Signature(s)) => s,
            other => panic!("not signed: {other:?}"),
        };
        let xpub: bitcoin::bip32::Xpub = key.xpub.parse().unwrap();
        let secp = bitcoin::secp256k1::Secp256k1::verification_only();
        let child = xpub
            .derive_pub(
                &secp,
                &path
                    .iter()
                    .map(|i| bitcoin::bip32::ChildNumber::from_normal_idx(*i).unwrap())
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        verify_independently(&sig, &digest, &child.public_key.serialize());

        // A relay (or cloud server) that changes the digest after approval: the TEE refuses.
        let tampered = Request::Sign {
            meta,
            key_id: key.key_id.clone(),
            path: path.to_vec(),
            digest: [0x43; 32],
            approvals: approved,
        };
        match relay.tee(rand::random(), &tampered).await.1 {
            Err(TeeError::ApprovalRejected { .. }) | Err(TeeError::QuorumNotMet { .. }) => {}
            other => panic!("changed digest must be refused by the TEE, got {other:?}"),
        }

        // No token, wrong token: nothing crosses the link.
        let e = relay
            .forward_with("wrong", rand::random(), Op::Status(StatusRequest {}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    });
    cluster
}

#[test]
fn tcp_link_carries_the_flows() {
    flows_over(LinkTransport::Tcp);
}

#[test]
fn spool_link_carries_the_flows() {
    flows_over(LinkTransport::Spool);
}

#[test]
fn serial_link_carries_the_flows() {
    flows_over(LinkTransport::Serial);
}

#[test]
fn qr_link_carries_the_flows_through_a_damaged_camera() {
    let cluster = flows_over(LinkTransport::Qr(Damage::across_a_desk(15)));
    let Some(LinkChannel::Qr(cameras)) = &cluster.channel else {
        panic!("a QR link films its frames");
    };
    let filmed = cameras.filmed();
    eprintln!("filmed: {filmed:#?}");
    let requests = filmed
        .iter()
        .filter(|(d, _)| *d == Direction::ToBridge)
        .count();
    // Status, the wallet, its retry, the signature and the tampered signature.
    assert!(requests >= 5, "{filmed:?}");
    let shown: usize = filmed.iter().map(|(_, f)| f.shown).sum();
    let caught: usize = filmed.iter().map(|(_, f)| f.caught).sum();
    assert!(
        caught < shown * 4 / 5,
        "the camera missed frames ({caught} of {shown} caught)"
    );
}
