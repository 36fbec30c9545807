//! Threshold keys in the TEE core: dealer bundles sealed to one node and imported under admin
//! approval, cluster sync of a share, and signing sessions relayed between TEE cores as the
//! cloud server would, with the refusals of tampered, misaddressed and replayed traffic.
//!
//! Three clusters (dc1, dc2, dc3) hold the shares of a dealt 2-of-3 HD key; dc1 has a second
//! node, dc4 holds no share. The cores run in-process over an in-memory platform and are
//! provisioned by a real PKI. The key is dealt from the TEST-ONLY fixture primes
//! (`custos-threshold` feature `test-fixtures`, dev-dependency only).

use custos_test_kit::{call_core as call, now, MemPlatform};

use crate::crash;

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Instant;

use bitcoin::bip32::{ChainCode, ChildNumber, Fingerprint, Xpub};
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, Secp256k1};
use custos_pki::DeviceIdentity;
use custos_tee_core::threshold::bundle::seal_bundle;
use custos_tee_core::threshold::key_info;
use custos_tee_core::TeeCore;
use custos_threshold::{combine, deal, fixtures, PartialSig, PresignaturePublic, ThresholdShare};
use custos_wire::approval::{Action, Approval, THRESHOLD_SCOPE};
use custos_wire::protocol::{
    CertChain, EcdsaSignature, Outcome, PresignSignParams, PrimesFault, Request, RequestMeta,
    Response, SessionRef, TeeError, ThresholdBundle, ThresholdKeyInfo, ThresholdMessage,
    ThresholdOrigin, ThresholdSignParams, ThresholdSigner,
};
use custos_wire::threshold::{bundle_context, bundle_transcript};
use rand::RngCore;
use sha2::{Digest, Sha256};

const CLUSTERS: [&str; 3] = ["dc1", "dc2", "dc3"];
const QUORUM: u8 = 2;
const PATH: [u32; 3] = [0, 1, 7];

/// The dealt 2-of-3 HD key, dealt once per test binary (fixture primes: ~0.1 s).
pub(crate) fn shares() -> &'static [ThresholdShare] {
    static SHARES: OnceLock<Vec<ThresholdShare>> = OnceLock::new();
    SHARES.get_or_init(|| {
        let primes = fixtures::test_primes();
        deal(2, 3, true, Some(primes[..3].to_vec()), &mut |_| {}).expect("deal")
    })
}

/// One provisioned TEE core with its certificate chain.
pub(crate) struct Node {
    pub(crate) core: TeeCore<MemPlatform>,
    pub(crate) chain: CertChain,
    pub(crate) identity: DeviceIdentity,
}

impl Node {
    pub(crate) fn call(&mut self, req: &Request) -> Outcome {
        call(&mut self.core, req)
    }
}

/// A TEE core a session's messages are relayed to (the nodes of these tests and of `dkg`).
pub(crate) trait Participant {
    /// Handles one request.
    fn handle(&mut self, req: &Request) -> Outcome;
}

impl Participant for Node {
    fn handle(&mut self, req: &Request) -> Outcome {
        self.call(req)
    }
}

impl Participant for crate::dkg::Node {
    fn handle(&mut self, req: &Request) -> Outcome {
        self.call(req)
    }
}

/// The test kit's PKI with clusters dc1..dc4 (its admins and dealer).
pub(crate) struct Pki(custos_test_kit::Pki);

impl std::ops::Deref for Pki {
    type Target = custos_test_kit::Pki;
    fn deref(&self) -> &custos_test_kit::Pki {
        &self.0
    }
}

impl Pki {
    pub(crate) fn new() -> Self {
        let clusters: Vec<&str> = CLUSTERS.iter().copied().chain(["dc4"]).collect();
        Self::with_clusters(&clusters)
    }

    /// The test kit's PKI with `clusters`.
    pub(crate) fn with_clusters(clusters: &[&str]) -> Self {
        Pki(custos_test_kit::Pki::with_clusters(clusters))
    }

    /// A core of `cluster` with Root pinned, D generated and its certificate installed.
    pub(crate) fn node(&self, cluster: &str, name: &str) -> Node {
        let mut core = TeeCore::open(MemPlatform::default(), "memory").unwrap();
        let (chain, _) = self.0.provision(&mut core, cluster, name);
        // What the dealer program does before sealing: verify the node's chain itself.
        let identity = self
            .root
            .verify_device(&chain.clone().into(), Some(cluster), now())
            .unwrap();
        Node {
            core,
            chain,
            identity,
        }
    }

    /// Approvals by the first `n` admins of `action` in `scope`.
    pub(crate) fn approvals(
        &self,
        n: usize,
        action: &Action<'_>,
        scope: &str,
        meta: &RequestMeta,
    ) -> Vec<Approval> {
        self.0.approvals(n, &action.message(scope, meta))
    }

    /// The dealer's bundle of share `i` for `node`.
    fn bundle(&self, i: usize, node: &Node) -> ThresholdBundle {
        self.bundle_of(&shares()[i], node)
    }

    /// The dealer's bundle of `share` for `node`.
    fn bundle_of(&self, share: &ThresholdShare, node: &Node) -> ThresholdBundle {
        let clusters: Vec<String> = CLUSTERS.iter().map(|c| c.to_string()).collect();
        let info = key_info(share, &clusters, QUORUM, ThresholdOrigin::Dealer).unwrap();
        seal_bundle(share, info, &node.identity, &self.dealer).unwrap()
    }

    /// The import request of `bundle` with `approvers` approvals of exactly its terms.
    pub(crate) fn import(&self, bundle: &ThresholdBundle, approvers: usize) -> Request {
        let meta = meta();
        let cluster = &bundle.key.clusters[usize::from(bundle.key.share_index)];
        let action = Action::ImportThresholdKey {
            quorum: bundle.key.quorum,
            key_id: &bundle.key.key_id,
            share_index: bundle.key.share_index,
        };
        Request::ImportThresholdBundle {
            approvals: self.approvals(approvers, &action, cluster, &meta),
            meta,
            bundle: bundle.clone(),
        }
    }
}

pub(crate) fn meta() -> RequestMeta {
    let mut request_id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut request_id);
    RequestMeta {
        request_id,
        expires_at: now() + 600,
    }
}

pub(crate) fn key_id() -> Vec<u8> {
    shares()[0].public_key().to_vec()
}

fn rejected(o: Outcome) -> String {
    match o {
        Err(TeeError::ThresholdRejected(m)) => m,
        other => panic!("expected ThresholdRejected, got {other:?}"),
    }
}

/// Imports share i of the key into `node` with a quorum of approvals.
pub(crate) fn import_share(pki: &Pki, i: usize, node: &mut Node) -> ThresholdKeyInfo {
    let req = pki.import(&pki.bundle(i, node), 2);
    match node.call(&req).unwrap() {
        Response::ThresholdKey(info) => info,
        r => panic!("unexpected {r:?}"),
    }
}

/// Imports share i of the dealt key without chain code into `node` (quorum of approvals).
pub(crate) fn import_plain_share(pki: &Pki, i: usize, node: &mut Node) -> ThresholdKeyInfo {
    let req = pki.import(&pki.bundle_of(&plain_shares()[i], node), 2);
    match node.call(&req).unwrap() {
        Response::ThresholdKey(info) => info,
        r => panic!("unexpected {r:?}"),
    }
}

/// An approved signing request: `meta`, params with `signers` (share index, node chain) in
/// order, and a quorum of approvals in the threshold scope.
pub(crate) struct SignRequest {
    meta: RequestMeta,
    params: ThresholdSignParams,
    approvals: Vec<Approval>,
}

impl SignRequest {
    pub(crate) fn new(
        pki: &Pki,
        signers: &[(u16, &Node)],
        digest: [u8; 32],
        approvers: usize,
    ) -> Self {
        let meta = meta();
        let params = ThresholdSignParams {
            key_id: key_id(),
            path: PATH.to_vec(),
            digest,
            signers: signers
                .iter()
                .map(|(i, n)| ThresholdSigner {
                    share_index: *i,
                    chain: n.chain.clone(),
                })
                .collect(),
        };
        let action = Action::ThresholdSign {
            key_id: &params.key_id,
            path: &params.path,
            digest: &params.digest,
        };
        let approvals = pki.approvals(approvers, &action, THRESHOLD_SCOPE, &meta);
        SignRequest {
            meta,
            params,
            approvals,
        }
    }

    pub(crate) fn start(&self, attempt: u8) -> Request {
        Request::ThresholdStart {
            meta: self.meta.clone(),
            attempt,
            params: self.params.clone(),
            approvals: self.approvals.clone(),
        }
    }

    fn session(&self, attempt: u8) -> SessionRef {
        SessionRef {
            request_id: self.meta.request_id,
            attempt,
        }
    }
}

/// Starts a session at a node; returns its first messages.
pub(crate) fn start(node: &mut Node, req: &Request) -> Vec<ThresholdMessage> {
    match node.call(req) {
        Ok(Response::ThresholdRound {
            phase,
            outgoing,
            signature: None,
            ..
        }) => {
            assert_eq!(phase, "getAB");
            outgoing
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn feed(node: &mut Node, session: SessionRef, messages: Vec<ThresholdMessage>) -> Outcome {
    node.call(&Request::ThresholdFeed { session, messages })
}

/// Relays the messages of one session between its participants (`nodes[p]` at position p,
/// `first[p]` its start messages) until every one outputs a signature, as the cloud server
/// does: broadcasts to every other participant, p2p to its recipient, each node's pending
/// messages in one feed. With `duplicate`, every batch is delivered twice over.
pub(crate) fn relay(
    nodes: &mut [&mut Node],
    session: SessionRef,
    first: Vec<Vec<ThresholdMessage>>,
    duplicate: bool,
) -> (Vec<EcdsaSignature>, BTreeSet<String>) {
    let (outputs, phases) = relay_outputs(nodes, session, first, duplicate);
    let sigs = outputs
        .into_iter()
        .map(|o| match o {
            Response::ThresholdRound {
                signature: Some(s), ..
            } => s,
            other => panic!("expected a signature, got {other:?}"),
        })
        .collect();
    (sigs, phases)
}

/// What a participant answered: its next messages, and its answer if the session is done
/// there.
fn round_of(r: Response) -> (Vec<ThresholdMessage>, Option<Response>) {
    let (outgoing, done) = match &r {
        Response::ThresholdRound {
            outgoing,
            signature,
            ..
        } => (outgoing.clone(), signature.is_some()),
        Response::ThresholdPresignRound {
            outgoing,
            presignature,
            ..
        } => (outgoing.clone(), presignature.is_some()),
        other => panic!("unexpected {other:?}"),
    };
    (outgoing, done.then_some(r))
}

/// [`relay`] for any session kind: returns each participant's final answer.
pub(crate) fn relay_outputs<N: Participant>(
    nodes: &mut [&mut N],
    session: SessionRef,
    first: Vec<Vec<ThresholdMessage>>,
    duplicate: bool,
) -> (Vec<Response>, BTreeSet<String>) {
    let t = nodes.len();
    let mut inbox: Vec<Vec<ThresholdMessage>> = vec![Vec::new(); t];
    let mut phases = BTreeSet::new();
    let mut route = |inbox: &mut Vec<Vec<ThresholdMessage>>, msgs: Vec<ThresholdMessage>| {
        for m in msgs {
            assert_eq!(m.session, session);
            phases.insert(m.phase.clone());
            match m.recipient {
                None => {
                    for (p, b) in inbox.iter_mut().enumerate() {
                        if p != usize::from(m.sender) {
                            b.push(m.clone());
                        }
                    }
                }
                Some(j) => inbox[usize::from(j)].push(m),
            }
        }
    };
    for out in first {
        route(&mut inbox, out);
    }
    let mut outputs: Vec<Option<Response>> = vec![None; t];
    loop {
        let mut progressed = false;
        for p in 0..t {
            if inbox[p].is_empty() {
                continue;
            }
            progressed = true;
            let mut batch = std::mem::take(&mut inbox[p]);
            if duplicate {
                batch.extend(batch.clone());
            }
            let answer = nodes[p]
                .handle(&Request::ThresholdFeed {
                    session,
                    messages: batch,
                })
                .unwrap_or_else(|e| panic!("position {p}: unexpected {e:?}"));
            let (outgoing, done) = round_of(answer);
            route(&mut inbox, outgoing);
            if let Some(d) = done {
                assert!(outputs[p].is_none(), "two outputs from position {p}");
                outputs[p] = Some(d);
            }
        }
        if !progressed {
            break;
        }
    }
    let outputs = outputs
        .into_iter()
        .enumerate()
        .map(|(p, s)| s.unwrap_or_else(|| panic!("position {p} produced no output")))
        .collect();
    (outputs, phases)
}

/// The child key at PATH, derived with the `bitcoin` crate from the joint xpub alone.
fn child_key() -> PublicKey {
    let root = PublicKey::from_slice(&key_id()).unwrap();
    let xpub = Xpub {
        network: bitcoin::NetworkKind::Main,
        depth: 0,
        parent_fingerprint: Fingerprint::default(),
        child_number: ChildNumber::Normal { index: 0 },
        public_key: root,
        chain_code: ChainCode::from(shares()[0].chain_code().unwrap()),
    };
    let path: Vec<ChildNumber> = PATH.iter().map(|&i| ChildNumber::from(i)).collect();
    xpub.derive_pub(&Secp256k1::new(), &path)
        .unwrap()
        .public_key
}

/// libsecp256k1 verification against the independently derived child: valid, low-s, and `v`
/// recovers the key.
fn verify_independently(sig: &EcdsaSignature, digest: &[u8; 32]) {
    let secp = Secp256k1::new();
    let child = child_key();
    assert_eq!(sig.public_key, child.serialize().to_vec());
    let mut rs = [0u8; 64];
    rs[..32].copy_from_slice(&sig.r);
    rs[32..].copy_from_slice(&sig.s);
    let msg = Message::from_digest(*digest);
    let plain = ecdsa::Signature::from_compact(&rs).unwrap();
    let mut low = plain;
    low.normalize_s();
    assert_eq!(low, plain, "high-s signature");
    secp.verify_ecdsa(&msg, &plain, &child).unwrap();
    let rec = ecdsa::RecoverableSignature::from_compact(
        &rs,
        ecdsa::RecoveryId::from_i32(i32::from(sig.v)).unwrap(),
    )
    .unwrap();
    assert_eq!(secp.recover_ecdsa(&msg, &rec).unwrap(), child);
}

fn digest(label: &str) -> [u8; 32] {
    Sha256::digest(format!("custos threshold test {label}")).into()
}

#[test]
fn bundles_import_only_where_sealed_signed_by_the_dealer_and_approved() {
    let t0 = Instant::now();
    let pki = Pki::new();
    let mut a = pki.node("dc1", "node-a");
    let mut b = pki.node("dc1", "node-b");
    let mut c = pki.node("dc2", "node-c");

    let good = pki.bundle(0, &a);

    // A bad dealer signature.
    let mut bad_sig = good.clone();
    let last = bad_sig.signature.len() - 1;
    bad_sig.signature[last] ^= 1;
    let m = rejected(a.call(&pki.import(&bad_sig, 2)));
    assert!(m.contains("dealer signature"), "{m}");

    // An admin certificate in the dealer's place, signing the very same transcript.
    let admin = &pki.admins[0];
    let mut by_admin = good.clone();
    by_admin.dealer_cert = admin.cert_der.clone();
    by_admin.dealer_ca = admin.admin_ca_der.clone();
    let ctx = bundle_context("dc1", &a.identity.fingerprint, &good.key);
    by_admin.signature = admin
        .sign(&bundle_transcript(&ctx, &good.enc, &good.ciphertext))
        .unwrap();
    let m = rejected(a.call(&pki.import(&by_admin, 2)));
    assert!(m.contains("dealer certificate"), "{m}");

    // Sealed to another node of the same cluster: refused by address, and re-addressed it
    // no longer carries the dealer's signature.
    let for_b = pki.bundle(0, &b);
    let m = rejected(a.call(&pki.import(&for_b, 2)));
    assert!(m.contains("another node"), "{m}");
    let mut readdressed = for_b.clone();
    readdressed.recipient_fingerprint = a.identity.fingerprint;
    let m = rejected(a.call(&pki.import(&readdressed, 2)));
    assert!(m.contains("dealer signature"), "{m}");

    // A share of another cluster.
    let m = rejected(c.call(&pki.import(&good, 2)));
    assert!(m.contains("belongs to cluster \"dc1\""), "{m}");

    // Altered public facts (the quorum) break the dealer's signature.
    let mut lower_quorum = good.clone();
    lower_quorum.key.quorum = 1;
    let m = rejected(a.call(&pki.import(&lower_quorum, 1)));
    assert!(m.contains("dealer signature"), "{m}");

    // Without a quorum of admins, or with approvals of another share index.
    let e = a.call(&pki.import(&good, 1)).unwrap_err();
    assert!(
        matches!(
            e,
            TeeError::QuorumNotMet {
                required: 2,
                approved: 1
            }
        ),
        "{e:?}"
    );
    let Request::ImportThresholdBundle {
        meta, approvals: _, ..
    } = pki.import(&good, 2)
    else {
        unreachable!()
    };
    let wrong = Action::ImportThresholdKey {
        quorum: QUORUM,
        key_id: &good.key.key_id,
        share_index: 1,
    };
    let e = a
        .call(&Request::ImportThresholdBundle {
            approvals: pki.approvals(2, &wrong, "dc1", &meta),
            meta,
            bundle: good.clone(),
        })
        .unwrap_err();
    assert!(matches!(e, TeeError::ApprovalRejected { .. }), "{e:?}");

    // Nothing was stored by any refusal.
    assert_eq!(
        a.call(&Request::ListThresholdKeys).unwrap(),
        Response::ThresholdKeys(vec![])
    );

    // The genuine bundle imports once; the same request again answers that import, a new
    // one finds the key held.
    let req = pki.import(&good, 2);
    let Response::ThresholdKey(info) = a.call(&req).unwrap() else {
        panic!("expected a threshold key");
    };
    assert_eq!(info.key_id, key_id());
    assert_eq!(info.share_index, 0);
    assert_eq!(info.chain_code, shares()[0].chain_code());
    assert_eq!((info.threshold, info.quorum), (2, QUORUM));
    assert_eq!(
        a.call(&Request::ListThresholdKeys).unwrap(),
        Response::ThresholdKeys(vec![info.clone()])
    );
    assert_eq!(a.call(&req), Ok(Response::ThresholdKey(info.clone())));
    let e = a.call(&pki.import(&good, 2)).unwrap_err();
    assert!(matches!(e, TeeError::KeyExists(_)), "{e:?}");

    // The share survives a restart (sealed, committed) ...
    let mut reopened = TeeCore::open(a.core.platform().after_restart(), "memory").unwrap();
    assert_eq!(
        call(&mut reopened, &Request::ListThresholdKeys).unwrap(),
        Response::ThresholdKeys(vec![info.clone()])
    );
    drop(reopened);

    // ... and travels to the other node of its cluster through key sync, not elsewhere.
    let Response::KeyTransfer(transfer) = a
        .call(&Request::ExportKeys {
            requester: b.chain.clone(),
            key_ids: vec![key_id()],
        })
        .unwrap()
    else {
        panic!("expected a transfer");
    };
    assert!(
        transfer.ciphertext.len() > 10_000,
        "share and aux info travel"
    );
    let e = a
        .call(&Request::ExportKeys {
            requester: c.chain.clone(),
            key_ids: vec![key_id()],
        })
        .unwrap_err();
    assert!(matches!(e, TeeError::RequesterRejected(_)), "{e:?}");
    assert_eq!(
        b.call(&Request::ImportKeys {
            transfer: transfer.clone()
        })
        .unwrap(),
        Response::KeysImported {
            imported: vec![key_id()],
            already_held: 0
        }
    );
    assert_eq!(
        b.call(&Request::ListThresholdKeys).unwrap(),
        Response::ThresholdKeys(vec![info])
    );
    assert_eq!(
        b.call(&Request::ImportKeys { transfer }).unwrap(),
        Response::KeysImported {
            imported: vec![],
            already_held: 1
        }
    );
    eprintln!(
        "bundle import and refusals: {:.2} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn two_signer_pairs_sign_and_the_signatures_verify_independently() {
    let t0 = Instant::now();
    let pki = Pki::new();
    let mut a = pki.node("dc1", "node-a");
    let mut b = pki.node("dc1", "node-b");
    let mut n1 = pki.node("dc2", "node-1");
    let mut n2 = pki.node("dc3", "node-2");
    import_share(&pki, 0, &mut a);
    import_share(&pki, 1, &mut n1);
    import_share(&pki, 2, &mut n2);
    // dc1's second node gets share 0 by sync only, and signs with it.
    let Response::KeyTransfer(transfer) = a
        .call(&Request::ExportKeys {
            requester: b.chain.clone(),
            key_ids: vec![key_id()],
        })
        .unwrap()
    else {
        panic!("expected a transfer");
    };
    b.call(&Request::ImportKeys { transfer }).unwrap();
    eprintln!("setup: {:.2} s", t0.elapsed().as_secs_f64());

    let all_phases: BTreeSet<String> = ["getAB", "getAB_and_R", "getR", "getSig"]
        .iter()
        .map(|s| s.to_string())
        .collect();

    // Shares {0, 1}: the synced node of dc1 and dc2, every batch delivered twice.
    let t = Instant::now();
    let d = digest("pair 0 1");
    let req = SignRequest::new(&pki, &[(0, &b), (1, &n1)], d, 2);
    let first = vec![start(&mut b, &req.start(0)), start(&mut n1, &req.start(0))];
    let (sigs, phases) = relay(&mut [&mut b, &mut n1], req.session(0), first, true);
    assert_eq!(sigs[0], sigs[1]);
    verify_independently(&sigs[0], &d);
    assert_eq!(phases, all_phases);
    eprintln!("signers {{0, 1}}: {:.2} s", t.elapsed().as_secs_f64());

    // The finished session is gone, and its start cannot run again.
    let e = feed(&mut b, req.session(0), vec![]).unwrap_err();
    assert!(matches!(e, TeeError::UnknownSession(_)), "{e:?}");
    let e = b.call(&req.start(0)).unwrap_err();
    assert!(matches!(e, TeeError::RequestReplayed(_)), "{e:?}");

    // Shares {1, 2} in the order (2, 1): dc3 and dc2.
    let t = Instant::now();
    let d = digest("pair 2 1");
    let req = SignRequest::new(&pki, &[(2, &n2), (1, &n1)], d, 2);
    let first = vec![start(&mut n2, &req.start(3)), start(&mut n1, &req.start(3))];
    let (sigs, _) = relay(&mut [&mut n2, &mut n1], req.session(3), first, false);
    assert_eq!(sigs[0], sigs[1]);
    verify_independently(&sigs[0], &d);
    eprintln!("signers {{2, 1}}: {:.2} s", t.elapsed().as_secs_f64());
    eprintln!("total: {:.2} s", t0.elapsed().as_secs_f64());
}

/// The first message of `msgs` that is a broadcast (`p2p` false) or a p2p message.
fn pick(msgs: &[ThresholdMessage], p2p: bool) -> ThresholdMessage {
    msgs.iter()
        .find(|m| m.recipient.is_some() == p2p)
        .cloned()
        .expect("a message of that kind")
}

fn aborted(o: Outcome) -> (Vec<String>, String, String) {
    match o {
        Err(TeeError::ThresholdAborted {
            blamed,
            phase,
            detail,
            ..
        }) => (blamed, phase, detail),
        other => panic!("expected ThresholdAborted, got {other:?}"),
    }
}

#[test]
fn sessions_refuse_unapproved_replayed_foreign_and_tampered_traffic() {
    let t0 = Instant::now();
    let pki = Pki::new();
    let mut a = pki.node("dc1", "node-a");
    let mut b = pki.node("dc1", "node-b");
    let mut n1 = pki.node("dc2", "node-1");
    let x = pki.node("dc4", "node-x");
    import_share(&pki, 0, &mut a);
    import_share(&pki, 1, &mut n1);
    let Response::KeyTransfer(transfer) = a
        .call(&Request::ExportKeys {
            requester: b.chain.clone(),
            key_ids: vec![key_id()],
        })
        .unwrap()
    else {
        panic!("expected a transfer");
    };
    b.call(&Request::ImportKeys { transfer }).unwrap();
    let d = digest("refusals");

    // Parameters and approvals are checked before anything starts.
    let unapproved = SignRequest::new(&pki, &[(0, &a), (1, &n1)], d, 1);
    let e = a.call(&unapproved.start(0)).unwrap_err();
    assert!(
        matches!(
            e,
            TeeError::QuorumNotMet {
                required: 2,
                approved: 1
            }
        ),
        "{e:?}"
    );
    let mut req = SignRequest::new(&pki, &[(0, &a), (1, &n1)], d, 2);
    // Approvals made for one cluster do not authorize a threshold signing.
    let action = Action::ThresholdSign {
        key_id: &req.params.key_id,
        path: &req.params.path,
        digest: &req.params.digest,
    };
    let scoped = pki.approvals(2, &action, "dc1", &req.meta);
    let e = a
        .call(&Request::ThresholdStart {
            meta: req.meta.clone(),
            attempt: 0,
            params: req.params.clone(),
            approvals: scoped,
        })
        .unwrap_err();
    assert!(matches!(e, TeeError::ApprovalRejected { .. }), "{e:?}");
    let wrong_node = SignRequest::new(&pki, &[(0, &b), (1, &n1)], d, 2);
    let m = rejected(a.call(&wrong_node.start(0)));
    assert!(m.contains("another node"), "{m}");
    let outsider = SignRequest::new(&pki, &[(0, &a), (1, &x)], d, 2);
    let m = rejected(a.call(&outsider.start(0)));
    assert!(m.contains("dc4"), "{m}");
    let alone = SignRequest::new(&pki, &[(0, &a)], d, 2);
    let m = rejected(a.call(&alone.start(0)));
    assert!(m.contains("exactly 2"), "{m}");
    let e = a.call(&req.start(8)).unwrap_err();
    assert!(matches!(e, TeeError::InvalidRequest(_)), "{e:?}");
    let mut hardened = SignRequest::new(&pki, &[(0, &a), (1, &n1)], d, 2);
    hardened.params.path = vec![0x8000_0000];
    let e = a.call(&hardened.start(0)).unwrap_err();
    assert!(matches!(e, TeeError::InvalidPath(_)), "{e:?}");

    // Attempt 0 and 1 of one approved request, at both signers.
    let a0 = start(&mut a, &req.start(0));
    let n0 = start(&mut n1, &req.start(0));
    let a1 = start(&mut a, &req.start(1));
    start(&mut n1, &req.start(1));
    assert!(!a0.is_empty() && !n0.is_empty());

    // A replayed start is refused, also after a restart of the TEE.
    let e = a.call(&req.start(0)).unwrap_err();
    assert!(matches!(e, TeeError::RequestReplayed(_)), "{e:?}");
    let mut reopened = TeeCore::open(a.core.platform().after_restart(), "memory").unwrap();
    let e = call(&mut reopened, &req.start(1)).unwrap_err();
    assert!(matches!(e, TeeError::RequestReplayed(_)), "{e:?}");
    drop(reopened);

    // A message of another session is refused without harming this one, which then accepts
    // its own messages.
    let m = rejected(feed(&mut n1, req.session(0), vec![pick(&a1, false)]));
    assert!(m.contains("belongs to session"), "{m}");
    let mut misaddressed = pick(&a0, true);
    misaddressed.recipient = Some(0);
    let m = rejected(feed(&mut n1, req.session(0), vec![misaddressed]));
    assert!(m.contains("addressed to position"), "{m}");
    match feed(&mut n1, req.session(0), a0.clone()).unwrap() {
        Response::ThresholdRound {
            signature: None, ..
        } => {}
        r => panic!("unexpected {r:?}"),
    }
    // The other session's message relabelled as this session's does not carry a signature
    // valid for it: the session aborts naming the claimed sender's cluster.
    let mut relabelled = pick(&a1, false);
    relabelled.session = req.session(0);
    let (blamed, phase, detail) = aborted(feed(&mut n1, req.session(0), vec![relabelled]));
    assert_eq!(blamed, vec!["dc1".to_string()]);
    assert_eq!(phase, "getAB");
    assert!(detail.contains("signature"), "{detail}");
    let e = feed(&mut n1, req.session(0), a0.clone()).unwrap_err();
    assert!(matches!(e, TeeError::UnknownSession(_)), "{e:?}");

    // Attempt 1: a flipped payload byte of a sealed p2p message.
    let mut flipped = pick(&a1, true);
    let mid = flipped.payload.len() / 2;
    flipped.payload[mid] ^= 1;
    let (blamed, _, _) = aborted(feed(&mut n1, req.session(1), vec![flipped]));
    assert_eq!(blamed, vec!["dc1".to_string()]);

    // Attempt 2: a broadcast with a flipped byte.
    let a2 = start(&mut a, &req.start(2));
    start(&mut n1, &req.start(2));
    let mut flipped = pick(&a2, false);
    flipped.payload[10] ^= 1;
    let (blamed, _, _) = aborted(feed(&mut n1, req.session(2), vec![flipped]));
    assert_eq!(blamed, vec!["dc1".to_string()]);

    // Attempt 3: messages signed by a node that is not a participant (dc1's other node,
    // which holds the same share, run by a cloud server that swapped nodes behind the
    // signers' backs) do not pass as position 0's.
    start(&mut a, &req.start(3));
    start(&mut n1, &req.start(3));
    let mut swapped = SignRequest::new(&pki, &[(0, &b), (1, &n1)], d, 2);
    swapped.meta = req.meta.clone();
    swapped.approvals = req.approvals.clone();
    let from_b = start(&mut b, &swapped.start(3));
    let (blamed, _, detail) = aborted(feed(&mut n1, req.session(3), vec![pick(&from_b, false)]));
    assert_eq!(blamed, vec!["dc1".to_string()]);
    assert!(detail.contains("signature"), "{detail}");

    // An aborted session is gone; ThresholdAbort answers for any session.
    let e = feed(&mut n1, req.session(3), vec![]).unwrap_err();
    assert!(matches!(e, TeeError::UnknownSession(_)), "{e:?}");
    assert_eq!(
        a.call(&Request::ThresholdAbort {
            session: req.session(3),
            reason: "peer aborted".into()
        })
        .unwrap(),
        Response::ThresholdAborted(req.session(3))
    );
    let e = feed(&mut a, req.session(3), vec![]).unwrap_err();
    assert!(matches!(e, TeeError::UnknownSession(_)), "{e:?}");
    req.meta.request_id[0] ^= 1;
    let e = feed(&mut a, req.session(0), vec![]).unwrap_err();
    assert!(matches!(e, TeeError::UnknownSession(_)), "{e:?}");
    eprintln!("session refusals: {:.2} s", t0.elapsed().as_secs_f64());
}

/// A dealt share whose Paillier primes are the published fixture is refused by a TEE that
/// does not accept test primes (as every production build), and one whose parties share a
/// modulus by every TEE: `primes_refused`, nothing stored, the approved request not used up.
#[test]
fn dealt_shares_with_published_or_shared_primes_are_refused() {
    let pki = Pki::new();
    let mut node = pki.node("dc1", "dc1-node1");
    node.core.set_test_primes(false);
    let req = pki.import(&pki.bundle(0, &node), 2);
    match node.call(&req) {
        Err(TeeError::PrimesRefused {
            fault: PrimesFault::TestFixture,
            detail,
        }) => assert!(detail.contains("TEST-ONLY"), "{detail}"),
        other => panic!("expected test_fixture, got {other:?}"),
    }
    let none = node.call(&Request::ListThresholdKeys).unwrap();
    assert_eq!(none, Response::ThresholdKeys(Vec::new()));
    // The refusal consumed nothing: where test primes are accepted the same request imports.
    node.core.set_test_primes(true);
    assert!(matches!(node.call(&req), Ok(Response::ThresholdKey(_))));

    // One primes set dealt to two parties (a dealer's mistake): parties 0 and 1 share both
    // moduli, so each could decrypt the other's Paillier ciphertexts.
    let primes = fixtures::test_primes();
    let shared = vec![primes[0].clone(), primes[0].clone(), primes[2].clone()];
    let shares = deal(2, 3, true, Some(shared), &mut |_| {}).expect("deal");
    let mut other = pki.node("dc3", "dc3-node1");
    let req = pki.import(&pki.bundle_of(&shares[2], &other), 2);
    match other.call(&req) {
        Err(TeeError::PrimesRefused {
            fault: PrimesFault::DuplicateModulus,
            detail,
        }) => assert!(
            detail.contains("party 0") && detail.contains("party 1"),
            "{detail}"
        ),
        other => panic!("expected duplicate_modulus, got {other:?}"),
    }
    let none = other.call(&Request::ListThresholdKeys).unwrap();
    assert_eq!(none, Response::ThresholdKeys(Vec::new()));
}

/// The host moves the core into its serving thread: the session worker must not make it
/// `!Send`.
#[test]
fn the_core_stays_send() {
    fn must_be_send<T: Send>() {}
    must_be_send::<TeeCore<MemPlatform>>();
}

#[test]
fn audit_sessions_sign_the_audit_digest_with_the_root_key_without_approvals() {
    let pki = Pki::new();
    let mut a = pki.node("dc1", "node-a");
    let mut n1 = pki.node("dc2", "node-1");
    import_share(&pki, 0, &mut a);
    import_share(&pki, 1, &mut n1);
    let session = SessionRef {
        request_id: meta().request_id,
        attempt: 0,
    };
    let audit = |message: &[u8]| Request::ThresholdAuditStart {
        session,
        key_id: key_id(),
        message: message.to_vec(),
        signers: [(0u16, &a), (1, &n1)]
            .iter()
            .map(|(i, n)| ThresholdSigner {
                share_index: *i,
                chain: n.chain.clone(),
            })
            .collect(),
    };
    let too_long = audit(&[7u8; 9]);
    let req = audit(b"audit-01");
    let e = a.call(&too_long).unwrap_err();
    assert!(
        matches!(e, TeeError::AuditMessageTooLong { len: 9, max: 8 }),
        "{e:?}"
    );

    let first = vec![start(&mut a, &req), start(&mut n1, &req)];
    let (sigs, _) = relay(&mut [&mut a, &mut n1], session, first, false);
    assert_eq!(sigs[0], sigs[1]);
    // The root key (not the child at any path) over the domain-separated audit digest.
    let root = PublicKey::from_slice(&key_id()).unwrap();
    assert_eq!(sigs[0].public_key, root.serialize().to_vec());
    let mut rs = [0u8; 64];
    rs[..32].copy_from_slice(&sigs[0].r);
    rs[32..].copy_from_slice(&sigs[0].s);
    let plain = ecdsa::Signature::from_compact(&rs).unwrap();
    let mut low = plain;
    low.normalize_s();
    assert_eq!(low, plain, "high-s signature");
    Secp256k1::new()
        .verify_ecdsa(
            &Message::from_digest(custos_wire::protocol::audit_digest(b"audit-01")),
            &plain,
            &root,
        )
        .unwrap();

    // Each audit session runs once.
    let e = a.call(&req).unwrap_err();
    assert!(matches!(e, TeeError::RequestReplayed(_)), "{e:?}");
}

/// The dealt 2-of-3 key without chain code (presignatures are for such keys only).
fn plain_shares() -> &'static [ThresholdShare] {
    static SHARES: OnceLock<Vec<ThresholdShare>> = OnceLock::new();
    SHARES.get_or_init(|| {
        let primes = fixtures::test_primes();
        deal(2, 3, false, Some(primes[..3].to_vec()), &mut |_| {}).expect("deal")
    })
}

/// Runs one presignature session between `nodes` (share index, node) and returns the id
/// every participant stored.
pub(crate) fn presign(nodes: &mut [(u16, &mut Node)], key: &[u8]) -> [u8; 32] {
    let session = SessionRef {
        request_id: meta().request_id,
        attempt: 0,
    };
    let signers: Vec<ThresholdSigner> = nodes
        .iter()
        .map(|(i, n)| ThresholdSigner {
            share_index: *i,
            chain: n.chain.clone(),
        })
        .collect();
    let req = Request::ThresholdPresignStart {
        session,
        key_id: key.to_vec(),
        signers: signers.clone(),
    };
    let first: Vec<Vec<ThresholdMessage>> = nodes
        .iter_mut()
        .map(|(_, n)| match n.call(&req) {
            Ok(Response::ThresholdPresignRound {
                phase,
                outgoing,
                presignature: None,
                ..
            }) => {
                assert_eq!(phase, "presign");
                outgoing
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let mut refs: Vec<&mut Node> = nodes.iter_mut().map(|(_, n)| &mut **n).collect();
    let (outputs, phases) = relay_outputs(&mut refs, session, first, false);
    assert_eq!(phases, BTreeSet::from(["presign".to_string()]));
    let ids: Vec<[u8; 32]> = outputs
        .into_iter()
        .map(|o| match o {
            Response::ThresholdPresignRound {
                presignature: Some(p),
                ..
            } => {
                assert_eq!(p.key_id, key);
                assert_eq!(
                    p.signers,
                    signers.iter().map(|s| s.share_index).collect::<Vec<_>>()
                );
                p.id
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "participants disagree on the id"
    );
    ids[0]
}

/// An approved online signing of `message` with presignature `id`.
fn presign_sign(pki: &Pki, key: &[u8], id: [u8; 32], message: &[u8]) -> (RequestMeta, Request) {
    let meta = meta();
    let digest: [u8; 32] = Sha256::digest(message).into();
    let action = Action::ThresholdSign {
        key_id: key,
        path: &[],
        digest: &digest,
    };
    let approvals = pki.approvals(2, &action, THRESHOLD_SCOPE, &meta);
    let req = Request::ThresholdPresignSign {
        meta: meta.clone(),
        attempt: 0,
        params: PresignSignParams {
            key_id: key.to_vec(),
            presignature: id,
            message: message.to_vec(),
        },
        approvals,
    };
    (meta, req)
}

fn with_attempt(req: &Request, n: u8) -> Request {
    match req.clone() {
        Request::ThresholdPresignSign {
            meta,
            params,
            approvals,
            ..
        } => Request::ThresholdPresignSign {
            meta,
            attempt: n,
            params,
            approvals,
        },
        other => other,
    }
}

pub(crate) fn partial(o: Outcome) -> (PartialSig, PresignaturePublic) {
    match o {
        Ok(Response::ThresholdPartial {
            position,
            sigma,
            public,
            ..
        }) => (
            PartialSig { position, sigma },
            PresignaturePublic::from_bytes(&public).unwrap(),
        ),
        other => panic!("expected a partial signature, got {other:?}"),
    }
}

pub(crate) fn held(node: &mut Node, key: &[u8]) -> Vec<[u8; 32]> {
    match node.call(&Request::ListPresignatures {
        key_id: key.to_vec(),
    }) {
        Ok(Response::Presignatures(list)) => list.into_iter().map(|p| p.id).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn presignatures_sign_full_messages_once_even_across_a_crash() {
    let pki = Pki::new();
    let mut a = pki.node("dc1", "node-a");
    let mut n1 = pki.node("dc2", "node-1");
    let key = plain_shares()[0].public_key().to_vec();
    for (i, node) in [(0usize, &mut a), (1, &mut n1)] {
        let req = pki.import(&pki.bundle_of(&plain_shares()[i], node), 2);
        node.call(&req).unwrap();
    }
    // An HD key never gets presignatures (RUSTSEC-2025-0127).
    import_share(&pki, 0, &mut a);
    let e = rejected(a.call(&Request::ThresholdPresignStart {
        session: SessionRef {
            request_id: meta().request_id,
            attempt: 0,
        },
        key_id: key_id(),
        signers: vec![],
    }));
    assert!(e.contains("RUSTSEC-2025-0127"), "{e}");

    let id = presign(&mut [(0, &mut a), (1, &mut n1)], &key);
    assert_eq!(held(&mut a, &key), vec![id]);
    assert_eq!(held(&mut n1, &key), vec![id]);

    // Online signing: each TEE hashes the full message; the combined signature verifies
    // under the joint key with libsecp256k1.
    let message = b"custos presignature test: pay 0.1 BTC to bc1q...";
    let (_, req) = presign_sign(&pki, &key, id, message);
    let (pa, public) = partial(a.call(&req));
    let (pb, public_b) = partial(n1.call(&req));
    assert_eq!(public, public_b);
    let mut partials = [pa, pb];
    partials.sort_by_key(|p| p.position);
    let sig = combine(&partials, &public, message).unwrap();
    let pk = PublicKey::from_slice(&key).unwrap();
    let digest: [u8; 32] = Sha256::digest(message).into();
    let plain = ecdsa::Signature::from_compact(&sig.to_compact()).unwrap();
    let mut low = plain;
    low.normalize_s();
    assert_eq!(low, plain, "high-s signature");
    Secp256k1::new()
        .verify_ecdsa(&Message::from_digest(digest), &plain, &pk)
        .unwrap();
    // A bad partial is named by position.
    let mut bad = partials;
    bad[1].sigma[31] ^= 1;
    assert!(matches!(
        combine(&bad, &public, message),
        Err(custos_threshold::PublicError::BadPartial { position: 1 })
    ));

    // Used once: the same attempt is a replay, any other use finds no presignature.
    assert!(held(&mut a, &key).is_empty());
    let e = a.call(&req).unwrap_err();
    assert!(matches!(e, TeeError::RequestReplayed(_)), "{e:?}");
    let e = a.call(&with_attempt(&req, 1)).unwrap_err();
    assert!(matches!(e, TeeError::UnknownPresignature(_)), "{e:?}");
    let (_, other) = presign_sign(&pki, &key, id, b"another message");
    let e = a.call(&other).unwrap_err();
    assert!(matches!(e, TeeError::UnknownPresignature(_)), "{e:?}");
    // Approvals cover the digest of the full message the TEE hashed itself.
    let (_, mut forged) = presign_sign(&pki, &key, id, message);
    if let Request::ThresholdPresignSign { params, .. } = &mut forged {
        params.message = b"a message nobody approved".to_vec();
    }
    assert!(matches!(
        n1.call(&forged).unwrap_err(),
        TeeError::ApprovalRejected { .. } | TeeError::QuorumNotMet { .. }
    ));

    // The TEE process is killed right after the consumption is durable, before the partial
    // exists (`crash`): the presignature is gone after the restart, whatever is asked.
    let id2 = presign(&mut [(0, &mut a), (1, &mut n1)], &key);
    let (_, req2) = presign_sign(&pki, &key, id2, message);
    n1.core = crash::killed_after_commit(n1.core, &req2, pki.dir.path());
    assert!(held(&mut n1, &key).is_empty());
    let e = n1.call(&req2).unwrap_err();
    assert!(matches!(e, TeeError::RequestReplayed(_)), "{e:?}");
    for attempt in 1..3 {
        let e = n1.call(&with_attempt(&req2, attempt)).unwrap_err();
        assert!(matches!(e, TeeError::UnknownPresignature(_)), "{e:?}");
    }
    // The other signer's copy survives its own restart, until used.
    a.core = TeeCore::open(a.core.platform().after_restart(), "memory").unwrap();
    assert_eq!(held(&mut a, &key), vec![id2]);
}

#[test]
fn bundle_import_crash_after_commit_then_replay() {
    let pki = Pki::new();
    let mut a = pki.node("dc1", "dc1-node1");
    let good = pki.bundle(0, &a);
    let req = pki.import(&good, 2);
    // The import commits and the TEE is killed before it answers.
    a.core = crash::killed_after_commit(a.core, &req, pki.dir.path());
    // The caller asks again with the same id: the share the first imported, not a refusal.
    let Ok(Response::ThresholdKey(info)) = a.call(&req) else {
        panic!("expected the imported key");
    };
    assert_eq!(info, good.key);
    let held = Response::ThresholdKeys(vec![info.clone()]);
    assert_eq!(a.call(&Request::ListThresholdKeys), Ok(held.clone()));
    // A bundle sealed again by the dealer for the same facts is the same approved import.
    let resealed = pki.bundle(0, &a);
    assert_ne!(resealed.ciphertext, good.ciphertext);
    let Request::ImportThresholdBundle {
        meta, approvals, ..
    } = req.clone()
    else {
        unreachable!()
    };
    let same = Request::ImportThresholdBundle {
        meta: meta.clone(),
        bundle: resealed,
        approvals,
    };
    assert_eq!(a.call(&same), Ok(Response::ThresholdKey(info.clone())));

    // Another key, or other facts of this one, under the used id: refused, naming both.
    let clusters: Vec<String> = CLUSTERS.iter().map(|c| c.to_string()).collect();
    let refused = |a: &mut Node, share: &ThresholdShare, quorum: u8| {
        let key = key_info(share, &clusters, quorum, ThresholdOrigin::Dealer).unwrap();
        let bundle = seal_bundle(share, key, &a.identity, &pki.dealer).unwrap();
        let action = Action::ImportThresholdKey {
            quorum,
            key_id: &bundle.key.key_id,
            share_index: 0,
        };
        match a.call(&Request::ImportThresholdBundle {
            approvals: pki.approvals(2, &action, "dc1", &meta),
            meta: meta.clone(),
            bundle,
        }) {
            Err(TeeError::RequestReplayed(m)) => m,
            other => panic!("expected RequestReplayed, got {other:?}"),
        }
    };
    let m = refused(&mut a, &plain_shares()[0], QUORUM);
    let other_key = hex::encode(plain_shares()[0].public_key());
    assert!(
        m.contains(&hex::encode(&info.key_id)) && m.contains(&other_key),
        "{m}"
    );
    let m = refused(&mut a, &shares()[0], 1);
    assert!(m.contains("quorum 2") && m.contains("quorum 1"), "{m}");

    // After another restart, the same first outcome; one key held throughout.
    a.core = TeeCore::open(a.core.platform().after_restart(), "memory").unwrap();
    assert_eq!(a.call(&req), Ok(Response::ThresholdKey(info)));
    assert_eq!(a.call(&Request::ListThresholdKeys), Ok(held));
}
