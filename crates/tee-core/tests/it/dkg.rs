//! Distributed key generation in the TEE core: three cores (clusters dc1, dc2, dc3) make a
//! 2-of-3 HD key through relayed keygen and aux-info, each ending with its own share; two of
//! them then sign with it. Refusals: wrong approvals, a node that is not a participant, a
//! participant certified for another cluster, replays, no primes; a tampered message aborts
//! naming its sender's cluster; an aborted session gives its unused primes back. Repeats
//! (lost answers, a restarted TEE) answer the running session or the key made, never a
//! second session or key. A key generation with an approver group (issue 12, items 3 and 5)
//! runs only on the nodes its approvals name, with the participants they name, and the key
//! it makes counts only its group's approvals.
//!
//! The cores run in-process over an in-memory platform, provisioned by a real PKI. Their
//! Paillier primes are the TEST-ONLY fixture of `custos-threshold` (feature `test-fixtures`,
//! dev-dependency only), sealed into each store as a host does with a primes file.
//! Aux-info generation costs about 12 s of one core per party; the three run in parallel.

use custos_test_kit::{now, MemPlatform};

use std::time::{Duration, Instant};

use bitcoin::bip32::{ChainCode, ChildNumber, DerivationPath, Fingerprint, Xpub};
use bitcoin::secp256k1::{ecdsa, Message, PublicKey, Secp256k1};
use custos_tee_core::threshold::primes::{GENERATED_PREFIX, PRIMES_PREFIX};
use custos_tee_core::TeeCore;
use custos_threshold::fixtures;
use custos_wire::approval::{Action, Approval, THRESHOLD_SCOPE};
use custos_wire::policy::KeyPolicy;
use custos_wire::protocol::{
    encode_request, CertChain, Outcome, PresignSignParams, PrimesFault, Request, RequestMeta,
    Response, SessionRef, SignedResponse, TeeError, ThresholdKeyInfo, ThresholdKeygenParams,
    ThresholdMessage, ThresholdOrigin, ThresholdSignParams, ThresholdSigner,
};
use rand::RngCore;

use crate::governance::{approvals_by, group_policy, refused_outsider};

const CLUSTERS: [&str; 3] = ["dc1", "dc2", "dc3"];

pub(crate) struct Node {
    pub(crate) core: TeeCore<MemPlatform>,
    pub(crate) chain: CertChain,
}

impl Node {
    pub(crate) fn call(&mut self, req: &Request) -> Outcome {
        let signed: SignedResponse =
            postcard::from_bytes(&self.core.handle_bytes(&encode_request(req))).unwrap();
        postcard::from_bytes(&signed.body).unwrap()
    }

    fn primes_left(&self) -> usize {
        self.core
            .platform()
            .committed
            .keys()
            .filter(|k| k.starts_with(PRIMES_PREFIX))
            .count()
    }
}

/// The test kit's PKI with clusters dc1..dc4.
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
        Pki(custos_test_kit::Pki::with_clusters(&clusters))
    }

    /// A provisioned core of `cluster` holding `primes` pregenerated primes sets (fixture
    /// sets starting at `first`, each sealed to it as `custos dealer primes --for` seals it).
    pub(crate) fn node(&self, cluster: &str, name: &str, first: usize, primes: usize) -> Node {
        let mut core = TeeCore::open(MemPlatform::default(), "memory").unwrap();
        let (chain, _) = self.0.provision(&mut core, cluster, name);
        for set in &fixtures::test_primes()[first..first + primes] {
            let file = self.sealed_primes(&chain, cluster, &set.to_sealed_bytes());
            core.import_sealed_primes(&file).unwrap();
        }
        Node { core, chain }
    }

    fn approvals(&self, n: usize, action: &Action<'_>, meta: &RequestMeta) -> Vec<Approval> {
        self.0.approvals(n, &action.message(THRESHOLD_SCOPE, meta))
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

/// An approved key generation: 2-of-n HD over `clusters`, quorum 2, run by `nodes` (one per
/// cluster, in share order).
struct KeygenRequest {
    meta: RequestMeta,
    params: ThresholdKeygenParams,
    approvals: Vec<Approval>,
}

impl KeygenRequest {
    fn new(pki: &Pki, nodes: &[&Node]) -> Self {
        let meta = meta();
        let params = ThresholdKeygenParams {
            threshold: 2,
            hd: true,
            clusters: CLUSTERS[..nodes.len()]
                .iter()
                .map(|c| c.to_string())
                .collect(),
            quorum: 2,
            participants: in_share_order(nodes),
        };
        let approvals = pki.approvals(2, &action(&params), &meta);
        KeygenRequest {
            meta,
            params,
            approvals,
        }
    }

    fn start(&self, attempt: u8) -> Request {
        Request::ThresholdKeygenStart {
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

fn action(p: &ThresholdKeygenParams) -> Action<'_> {
    Action::CreateThresholdKey {
        quorum: p.quorum,
        threshold: p.threshold,
        hd: p.hd,
        clusters: &p.clusters,
    }
}

/// The answer to a key generation start or feed: (phase, outgoing, computing, key).
fn round(
    o: Outcome,
) -> (
    String,
    Vec<ThresholdMessage>,
    bool,
    Option<ThresholdKeyInfo>,
) {
    match o {
        Ok(Response::ThresholdKeygenRound {
            phase,
            outgoing,
            computing,
            key,
            ..
        }) => (phase, outgoing, computing, key),
        other => panic!("expected a key generation round, got {other:?}"),
    }
}

fn route(inbox: &mut [Vec<ThresholdMessage>], msgs: Vec<ThresholdMessage>) {
    for m in msgs {
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
}

/// Relays a key generation as the cloud server does: every participant with messages
/// waiting, or still computing, gets a feed (an empty one to collect), until each reported
/// the key. With `duplicate`, every feed carries its messages twice (relays may repeat).
/// Returns the keys and the phases seen in order.
fn relay(
    nodes: &mut [&mut Node],
    session: SessionRef,
    first: Vec<Vec<ThresholdMessage>>,
    duplicate: bool,
) -> (Vec<ThresholdKeyInfo>, Vec<String>) {
    let (ends, phases) = relay_to_the_end(nodes, session, first, duplicate);
    let keys = ends
        .into_iter()
        .map(|end| match end {
            Some(Ok(key)) => key,
            other => panic!("a participant ended without its key: {other:?}"),
        })
        .collect();
    (keys, phases)
}

/// How a participant's key generation ended: its key, its refusal, or `None` if it was left
/// waiting for messages a refusing participant never sent.
type End = Option<Result<ThresholdKeyInfo, TeeError>>;

/// [`relay`] where participants may refuse: a refusing participant gets nothing more, and
/// relaying stops when nobody has messages waiting or is computing.
fn relay_to_the_end(
    nodes: &mut [&mut Node],
    session: SessionRef,
    first: Vec<Vec<ThresholdMessage>>,
    duplicate: bool,
) -> (Vec<End>, Vec<String>) {
    let n = nodes.len();
    let mut inbox: Vec<Vec<ThresholdMessage>> = vec![Vec::new(); n];
    for out in first {
        route(&mut inbox, out);
    }
    let mut computing = vec![false; n];
    let mut ends: Vec<End> = vec![None; n];
    let mut phases: Vec<String> = Vec::new();
    let began = Instant::now();
    while ends.iter().any(Option::is_none) {
        assert!(
            began.elapsed() < Duration::from_secs(300),
            "key generation stalled"
        );
        let mut any = false;
        for p in 0..n {
            if ends[p].is_some() || (inbox[p].is_empty() && !computing[p]) {
                continue;
            }
            any = true;
            let mut messages = std::mem::take(&mut inbox[p]);
            if duplicate {
                messages.extend(messages.clone());
            }
            let answer = nodes[p].call(&Request::ThresholdFeed { session, messages });
            if let Err(e) = answer {
                ends[p] = Some(Err(e));
                continue;
            }
            let (phase, out, busy, key) = round(answer);
            if phases.last() != Some(&phase) {
                phases.push(phase);
            }
            computing[p] = busy;
            ends[p] = key.map(Ok);
            route(&mut inbox, out);
        }
        if !any {
            break;
        }
    }
    (ends, phases)
}

fn rejected(o: Outcome) -> String {
    match o {
        Err(TeeError::ThresholdRejected(m)) => m,
        other => panic!("expected ThresholdRejected, got {other:?}"),
    }
}

#[test]
fn three_tees_make_a_key_none_of_them_holds_whole_and_two_sign_with_it() {
    let pki = Pki::new();
    let mut nodes: Vec<Node> = CLUSTERS
        .iter()
        .enumerate()
        .map(|(i, c)| pki.node(c, &format!("{c}-node1"), i, 1))
        .collect();
    let req = {
        let refs: Vec<&Node> = nodes.iter().collect();
        KeygenRequest::new(&pki, &refs)
    };

    // Refusals first (nothing is consumed by them).
    let mut wrong = req.start(0);
    if let Request::ThresholdKeygenStart { params, .. } = &mut wrong {
        params.threshold = 3; // the admins approved 2
    }
    assert!(matches!(
        nodes[0].call(&wrong),
        Err(TeeError::ApprovalRejected { .. })
    ));
    let mut one = req.start(0);
    if let Request::ThresholdKeygenStart { approvals, .. } = &mut one {
        approvals.truncate(1);
    }
    assert!(matches!(
        nodes[0].call(&one),
        Err(TeeError::QuorumNotMet {
            required: 2,
            approved: 1
        })
    ));
    assert_eq!(nodes.iter().map(Node::primes_left).sum::<usize>(), 3);

    let began = Instant::now();
    let mut first = Vec::new();
    for node in nodes.iter_mut() {
        let (phase, out, computing, key) = round(node.call(&req.start(0)));
        assert_eq!((phase.as_str(), computing, key), ("keygen", false, None));
        first.push(out);
        // The primes set is consumed with the durable start.
        assert_eq!(node.primes_left(), 0);
    }
    // A start cannot run twice: its repeat answers the running session's first messages.
    let (phase, again, _, key) = round(nodes[0].call(&req.start(0)));
    assert_eq!((phase.as_str(), &again, key), ("keygen", &first[0], None));
    let session = req.session(0);
    let (keys, phases) = {
        let mut refs: Vec<&mut Node> = nodes.iter_mut().collect();
        relay(&mut refs, session, first, true)
    };
    eprintln!(
        "DKG of 3 in-process TEEs [{:.1} s]",
        began.elapsed().as_secs_f64()
    );
    assert_eq!(phases.first().map(String::as_str), Some("keygen"));
    assert_eq!(phases.last().map(String::as_str), Some("auxInfo"));
    // Every participant computed the same key and holds its own share of it.
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(k.share_index, i as u16);
        assert_eq!(k.origin, ThresholdOrigin::Dkg);
        assert_eq!(
            ThresholdKeyInfo {
                share_index: 0,
                ..k.clone()
            },
            ThresholdKeyInfo {
                share_index: 0,
                ..keys[0].clone()
            }
        );
        let Response::ThresholdKeys(held) = nodes[i].call(&Request::ListThresholdKeys).unwrap()
        else {
            panic!("expected the key list");
        };
        assert_eq!(held, vec![k.clone()]);
    }
    let key = keys[0].clone();
    assert_eq!(key.threshold, 2);
    assert_eq!(key.quorum, 2);
    // The set that made dc1's share, handed over again, serves no second key.
    let again = pki.sealed_primes(
        &nodes[0].chain,
        "dc1",
        &fixtures::test_primes()[0].to_sealed_bytes(),
    );
    assert!(matches!(
        nodes[0].core.import_sealed_primes(&again),
        Err(TeeError::PrimesRefused {
            fault: PrimesFault::AlreadyUsed,
            ..
        })
    ));
    assert_eq!(nodes[0].primes_left(), 0);
    // One approval makes one key: a further attempt under it answers that key.
    let (_, out, computing, again) = round(nodes[1].call(&req.start(1)));
    assert_eq!(
        (out.len(), computing, again),
        (0, false, Some(keys[1].clone()))
    );

    // dc3 and dc1 sign with their shares: the signature verifies with libsecp256k1 under
    // the child of the key's xpub.
    let digest = [0x5a; 32];
    let path = vec![3u32, 9];
    let sign_meta = meta();
    let params = ThresholdSignParams {
        key_id: key.key_id.clone(),
        path: path.clone(),
        digest,
        signers: [2usize, 0]
            .iter()
            .map(|&i| ThresholdSigner {
                share_index: i as u16,
                chain: nodes[i].chain.clone(),
            })
            .collect(),
    };
    let sign_approvals = pki.approvals(
        2,
        &Action::ThresholdSign {
            key_id: &params.key_id,
            path: &params.path,
            digest: &params.digest,
        },
        &sign_meta,
    );
    let sign_start = Request::ThresholdStart {
        meta: sign_meta.clone(),
        attempt: 0,
        params,
        approvals: sign_approvals,
    };
    let signers = [2usize, 0];
    let mut inbox: Vec<Vec<ThresholdMessage>> = vec![Vec::new(); 2];
    for &i in &signers {
        match nodes[i].call(&sign_start) {
            Ok(Response::ThresholdRound { outgoing, .. }) => route(&mut inbox, outgoing),
            other => panic!("unexpected {other:?}"),
        }
    }
    let sign_session = SessionRef {
        request_id: sign_meta.request_id,
        attempt: 0,
    };
    let mut sig = None;
    while sig.is_none() {
        for (pos, &i) in signers.iter().enumerate() {
            if inbox[pos].is_empty() {
                continue;
            }
            let messages = std::mem::take(&mut inbox[pos]);
            match nodes[i].call(&Request::ThresholdFeed {
                session: sign_session,
                messages,
            }) {
                Ok(Response::ThresholdRound {
                    outgoing,
                    signature,
                    ..
                }) => {
                    route(&mut inbox, outgoing);
                    if signature.is_some() {
                        sig = signature;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let sig = sig.unwrap();
    let secp = Secp256k1::new();
    let xpub = Xpub {
        network: bitcoin::NetworkKind::Main,
        depth: 0,
        parent_fingerprint: Fingerprint::default(),
        child_number: ChildNumber::Normal { index: 0 },
        public_key: PublicKey::from_slice(&key.key_id).unwrap(),
        chain_code: ChainCode::from(key.chain_code.unwrap()),
    };
    let child = xpub
        .derive_pub(
            &secp,
            &DerivationPath::from(
                path.iter()
                    .map(|&i| ChildNumber::Normal { index: i })
                    .collect::<Vec<_>>(),
            ),
        )
        .unwrap()
        .public_key;
    assert_eq!(sig.public_key, child.serialize().to_vec());
    let mut compact = [0u8; 64];
    compact[..32].copy_from_slice(&sig.r);
    compact[32..].copy_from_slice(&sig.s);
    secp.verify_ecdsa(
        &Message::from_digest(digest),
        &ecdsa::Signature::from_compact(&compact).unwrap(),
        &child,
    )
    .unwrap();
}

#[test]
fn refusals_tampering_and_primes_handling() {
    let pki = Pki::new();
    let mut a = pki.node("dc1", "dc1-node1", 0, 1);
    let b = pki.node("dc2", "dc2-node1", 1, 1);
    let outsider = pki.node("dc1", "dc1-node2", 2, 1);
    let foreign = pki.node("dc4", "dc4-node1", 3, 1);
    let req = KeygenRequest::new(&pki, &[&a, &b]);

    // A node that is not a participant refuses; so does one told another node's cluster.
    let mut not_me = outsider;
    assert!(rejected(not_me.call(&req.start(0))).contains("not among the participants"));
    let swapped = KeygenRequest::new(&pki, &[&b, &a]);
    assert!(rejected(a.call(&swapped.start(0))).contains("cluster"));
    // A participant whose certificate is of another cluster than its share's.
    let mixed = KeygenRequest::new(&pki, &[&a, &foreign]);
    assert!(rejected(a.call(&mixed.start(0))).contains("participant 1 (cluster dc2)"));
    // Participants out of share order.
    let mut disordered = req.start(0);
    if let Request::ThresholdKeygenStart { params, .. } = &mut disordered {
        params.participants[1].share_index = 0;
    }
    assert!(rejected(a.call(&disordered)).contains("share-index order"));
    assert_eq!(a.primes_left(), 1);

    // A tampered keygen message aborts the session and names its sender's cluster.
    let (_, out_a, _, _) = round(a.call(&req.start(0)));
    assert_eq!(a.primes_left(), 0);
    let mut b = b;
    let (_, mut out_b, _, _) = round(b.call(&req.start(0)));
    let m = out_b
        .iter_mut()
        .find(|m| m.recipient.is_none())
        .expect("keygen starts with a broadcast");
    let last = m.payload.len() - 2;
    m.payload[last] ^= 1;
    match a.call(&Request::ThresholdFeed {
        session: req.session(0),
        messages: out_b,
    }) {
        Err(TeeError::ThresholdAborted { blamed, phase, .. }) => {
            assert_eq!(blamed, vec!["dc2".to_string()]);
            assert_eq!(phase, "keygen");
        }
        other => panic!("expected an abort, got {other:?}"),
    }
    // The set aux-info never used is back in the store, and serves the next attempt.
    assert_eq!(a.primes_left(), 1);
    let (phase, _, _, _) = round(a.call(&req.start(1)));
    assert_eq!(phase, "keygen");
    assert_eq!(a.primes_left(), 0);
    // An explicit abort gives it back too.
    assert!(matches!(
        a.call(&Request::ThresholdAbort {
            session: req.session(1),
            reason: "test".into()
        }),
        Ok(Response::ThresholdAborted(_))
    ));
    assert_eq!(a.primes_left(), 1);
    assert!(matches!(
        b.call(&Request::ThresholdFeed {
            session: req.session(0),
            messages: out_a
        }),
        Ok(Response::ThresholdKeygenRound { .. })
    ));

    // Without primes, and not allowed to generate its own, a TEE refuses before consuming
    // anything; the same attempt is still usable.
    let mut empty = pki.node("dc1", "dc1-node3", 0, 0);
    empty.core.set_prime_generation(false);
    let req2 = KeygenRequest::new(&pki, &[&empty, &b]);
    for _ in 0..2 {
        match empty.call(&req2.start(0)) {
            Err(TeeError::PrimesNotReady(m)) => assert!(m.contains("no pregenerated"), "{m}"),
            other => panic!("expected PrimesNotReady, got {other:?}"),
        }
    }
}

/// Two clusters' TEEs given the same primes set (one set fed to both): the proofs of
/// aux-info hold, since each knows the factors, but each could decrypt the other's Paillier
/// ciphertexts. A TEE that finishes refuses the key with `primes_refused`
/// (`duplicate_modulus`); the other is left waiting for its last messages (the cloud server
/// then aborts the session); neither stores anything.
#[test]
fn a_key_whose_parties_share_primes_is_refused() {
    let pki = Pki::new();
    let mut a = pki.node("dc1", "dc1-node1", 0, 1);
    let mut b = pki.node("dc2", "dc2-node1", 0, 1);
    let req = KeygenRequest::new(&pki, &[&a, &b]);
    let mut first = Vec::new();
    for node in [&mut a, &mut b] {
        let (phase, out, _, _) = round(node.call(&req.start(0)));
        assert_eq!(phase, "keygen");
        first.push(out);
    }
    let (ends, _) = relay_to_the_end(&mut [&mut a, &mut b], req.session(0), first, false);
    let mut refused = 0;
    for end in ends {
        match end {
            Some(Err(TeeError::PrimesRefused {
                fault: PrimesFault::DuplicateModulus,
                detail,
            })) => {
                assert!(detail.contains("modulus of party"), "{detail}");
                refused += 1;
            }
            // Left waiting for the refusing TEE's last messages: the cloud server aborts it.
            None => {}
            other => panic!("expected duplicate_modulus, got {other:?}"),
        }
    }
    assert!(refused >= 1, "no TEE refused the shared primes");
    for node in [&mut a, &mut b] {
        assert_eq!(
            node.call(&Request::ListThresholdKeys).unwrap(),
            Response::ThresholdKeys(Vec::new()),
            "nothing stored"
        );
    }
}

/// A primes set whose primes are not safe primes (fresh 1536-bit primes, not the fixture)
/// is refused as the host hands it over, so is the fixture where test primes are not
/// accepted (as in every production build), and so is a set sealed to another node; nothing
/// is sealed.
#[test]
fn unsafe_published_or_misaddressed_primes_sets_are_refused() {
    let pki = Pki::new();
    let mut a = pki.node("dc1", "dc1-node1", 0, 0);
    let other = pki.node("dc1", "dc1-node2", 0, 0);
    let unsafe_set = {
        let primes: Vec<String> = (0..4)
            .map(|_| {
                let h = glass_pumpkin::prime::new(1536).unwrap().to_str_radix(16);
                format!("{{\"radix\":16,\"value\":\"{h}\"}}")
            })
            .collect();
        format!("{{\"primes\":[{}],\"_phantom\":null}}", primes.join(","))
    };
    match a
        .core
        .import_sealed_primes(&pki.sealed_primes(&a.chain, "dc1", unsafe_set.as_bytes()))
    {
        Err(TeeError::PrimesRefused {
            fault: PrimesFault::NotSafePrime,
            detail,
        }) => assert!(detail.contains("prime 0 of the set"), "{detail}"),
        other => panic!("expected not_safe_prime, got {other:?}"),
    }
    let fixture = fixtures::test_primes()[0].to_sealed_bytes();
    a.core.set_test_primes(false);
    match a
        .core
        .import_sealed_primes(&pki.sealed_primes(&a.chain, "dc1", &fixture))
    {
        Err(TeeError::PrimesRefused {
            fault: PrimesFault::TestFixture,
            ..
        }) => {}
        other => panic!("expected test_fixture, got {other:?}"),
    }
    a.core.set_test_primes(true);
    match a
        .core
        .import_sealed_primes(&pki.sealed_primes(&other.chain, "dc1", &fixture))
    {
        Err(TeeError::SealedImportRejected(m)) => assert!(m.contains("dc1-node2"), "{m}"),
        other => panic!("expected sealed_import_rejected, got {other:?}"),
    }
    // Sealed to this node, but not signed by a certified dealer: whoever controls the host
    // cannot hand the TEE primes they know.
    let mut forged: serde_json::Value =
        serde_json::from_slice(&pki.sealed_primes(&a.chain, "dc1", &fixture)).unwrap();
    let signed_by_admin = pki.admins[0]
        .sign(b"anything")
        .expect("a test admin's file key signs");
    forged["signature"] = hex::encode(signed_by_admin).into();
    match a
        .core
        .import_sealed_primes(&serde_json::to_vec(&forged).unwrap())
    {
        Err(TeeError::SealedImportRejected(m)) => assert!(m.contains("dealer signature"), "{m}"),
        other => panic!("expected sealed_import_rejected, got {other:?}"),
    }
    forged["dealer_cert"] = hex::encode(&pki.admins[0].cert_der).into();
    match a
        .core
        .import_sealed_primes(&serde_json::to_vec(&forged).unwrap())
    {
        Err(TeeError::SealedImportRejected(m)) => assert!(m.contains("dealer certificate"), "{m}"),
        other => panic!("expected sealed_import_rejected, got {other:?}"),
    }
    assert_eq!(a.primes_left(), 0);
    a.core
        .import_sealed_primes(&pki.sealed_primes(&a.chain, "dc1", &fixture))
        .unwrap();
    assert_eq!(a.primes_left(), 1);
}

/// A set the TEE's own background generation finished is sealed with the next batch's
/// commit, so a restart keeps it (generation takes minutes), and the next key generation
/// uses it. (The generation is scripted here; in production it makes safe primes.)
#[test]
fn primes_the_tee_generated_are_sealed_and_survive_a_restart() {
    let pki = Pki::new();
    let mut a = pki.node("dc1", "dc1-node1", 0, 0);
    let b = pki.node("dc2", "dc2-node1", 1, 1);
    a.core
        .script_prime_generation(fixtures::test_primes()[2..3].to_vec());
    let req = KeygenRequest::new(&pki, &[&a, &b]);
    match a.call(&req.start(0)) {
        Err(TeeError::PrimesNotReady(m)) => assert!(m.contains("started generating"), "{m}"),
        other => panic!("expected PrimesNotReady, got {other:?}"),
    }
    let began = Instant::now();
    while a.primes_left() == 0 {
        assert!(began.elapsed() < Duration::from_secs(30), "never sealed");
        std::thread::sleep(Duration::from_millis(10));
        a.call(&Request::Status).unwrap();
    }
    let generated = |node: &Node| {
        node.core
            .platform()
            .committed
            .keys()
            .filter(|k| k.starts_with(GENERATED_PREFIX))
            .count()
    };
    assert_eq!(generated(&a), 1);
    a.core = TeeCore::open(a.core.platform().after_restart(), "memory").unwrap();
    assert_eq!((a.primes_left(), generated(&a)), (1, 1));
    let (phase, _, _, _) = round(a.call(&req.start(0)));
    assert_eq!(phase, "keygen");
    assert_eq!(a.primes_left(), 0, "used by the session's durable start");
}

#[test]
fn dkg_crash_after_commit_then_replay() {
    let pki = Pki::new();
    let mut a = pki.node("dc1", "dc1-node1", 0, 1);
    let mut b = pki.node("dc2", "dc2-node1", 1, 1);
    let req = KeygenRequest::new(&pki, &[&a, &b]);
    let (_, out_a, _, _) = round(a.call(&req.start(0)));
    // The start's answer is lost: its repeat answers the same first messages and starts no
    // second session.
    let (phase, again, _, key) = round(a.call(&req.start(0)));
    assert_eq!((phase.as_str(), &again, key), ("keygen", &out_a, None));
    // The caller gives up on attempt 0 (its abort lost): attempt 1 ends it here, with its
    // primes set given back for attempt 1; attempt 0 cannot come back.
    let session = req.session(1);
    let (_, out_a, _, _) = round(a.call(&req.start(1)));
    let (_, again, _, _) = round(a.call(&req.start(1)));
    assert_eq!(again, out_a);
    assert_eq!(a.primes_left(), 0);
    let running = format!("{}/1", hex::encode(req.meta.request_id));
    let m = rejected(a.call(&req.start(0)));
    assert!(m.contains(&running) && m.contains("attempt 0"), "{m}");
    let (_, out_b, _, _) = round(b.call(&req.start(1)));
    let (keys, _) = relay(
        &mut [&mut a, &mut b],
        session,
        vec![out_a, again, out_b],
        false,
    );

    // a's last answer (with its key) is lost: the repeated feed answers that key.
    let empty_feed = |attempt| Request::ThresholdFeed {
        session: req.session(attempt),
        messages: Vec::new(),
    };
    let (_, _, computing, key) = round(a.call(&empty_feed(1)));
    assert_eq!((computing, key), (false, Some(keys[0].clone())));

    // The TEE restarts from what it committed: a start of any attempt, and a feed of a
    // session it ran, answer the key made; a session it never ran stays unknown.
    a.core = TeeCore::open(a.core.platform().after_restart(), "memory").unwrap();
    for attempt in [0, 1, 2] {
        let (phase, out, computing, key) = round(a.call(&req.start(attempt)));
        assert_eq!(
            (phase.as_str(), out.len(), computing, key),
            ("auxInfo", 0, false, Some(keys[0].clone()))
        );
    }
    for attempt in [0, 1] {
        let (_, _, _, key) = round(a.call(&empty_feed(attempt)));
        assert_eq!(key, Some(keys[0].clone()));
    }
    assert!(matches!(
        a.call(&empty_feed(2)),
        Err(TeeError::UnknownSession(_))
    ));

    // Other terms under the used id are another request: refused, naming what was made.
    let mut other = req.params.clone();
    other.quorum = 1;
    let changed = Request::ThresholdKeygenStart {
        meta: req.meta.clone(),
        attempt: 3,
        approvals: pki.approvals(2, &action(&other), &req.meta),
        params: other,
    };
    match a.call(&changed) {
        Err(TeeError::RequestReplayed(m)) => {
            assert!(
                m.contains(&hex::encode(&keys[0].key_id)) && m.contains("quorum 1"),
                "{m}"
            )
        }
        other => panic!("expected RequestReplayed, got {other:?}"),
    }
    // Exactly one key held, and no primes set went to a second session.
    let held = a.call(&Request::ListThresholdKeys);
    assert_eq!(held, Ok(Response::ThresholdKeys(vec![keys[0].clone()])));
    assert_eq!(a.primes_left(), 0);
}

/// A node's device key fingerprint (its member id): what approvals name as an executor.
fn executor_id(pki: &Pki, node: &Node) -> [u8; 32] {
    custos_test_kit::governance::member(pki, &node.chain).key_fingerprint
}

/// Records of `prefix` a node committed (consumed request ids, started sessions, shares).
fn committed(node: &Node, prefix: &str) -> usize {
    node.core
        .platform()
        .committed
        .keys()
        .filter(|k| k.starts_with(prefix))
        .count()
}

/// `nodes` as the participants (or signers) of shares 0, 1, … in order.
pub(crate) fn in_share_order(nodes: &[&Node]) -> Vec<ThresholdSigner> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| ThresholdSigner {
            share_index: i as u16,
            chain: n.chain.clone(),
        })
        .collect()
}

/// A signing start of `key` (digest 0x5a…, path m) on shares 0 and 1 by `nodes`, approved
/// by the admins named `approvers`.
pub(crate) fn sign_start(
    pki: &Pki,
    key: &ThresholdKeyInfo,
    approvers: &[&str],
    nodes: [&Node; 2],
) -> Request {
    let meta = meta();
    let digest = [0x5a; 32];
    let action = Action::ThresholdSign {
        key_id: &key.key_id,
        path: &[],
        digest: &digest,
    };
    Request::ThresholdStart {
        approvals: approvals_by(pki, approvers, &action.message(THRESHOLD_SCOPE, &meta)),
        meta,
        attempt: 0,
        params: ThresholdSignParams {
            key_id: key.key_id.clone(),
            path: vec![],
            digest,
            signers: in_share_order(&nodes),
        },
    }
}

/// Runs the approved group key generation `req` between `a` and `b` (attempt 0) and returns
/// the key made.
pub(crate) fn make_group_key(req: &GroupKeygen, a: &mut Node, b: &mut Node) -> ThresholdKeyInfo {
    let (_, out_a, _, _) = round(a.call(&req.start(0)));
    let (_, out_b, _, _) = round(b.call(&req.start(0)));
    let (keys, _) = relay(&mut [a, b], req.session(0), vec![out_a, out_b], false);
    keys[0].clone()
}

/// An approved key generation with an approver group: t = 2 over the first clusters, run by
/// `nodes` (one per cluster, in share order), each named as its share's executor.
pub(crate) struct GroupKeygen {
    meta: RequestMeta,
    params: ThresholdKeygenParams,
    policy: KeyPolicy,
    executors: Vec<[u8; 32]>,
    approvals: Vec<Approval>,
}

impl GroupKeygen {
    pub(crate) fn new(
        pki: &Pki,
        nodes: &[&Node],
        hd: bool,
        policy: &KeyPolicy,
        signers: &[&str],
    ) -> Self {
        let KeygenRequest {
            meta, mut params, ..
        } = KeygenRequest::new(pki, nodes);
        params.hd = hd;
        params.quorum = policy.quorum;
        let mut keygen = GroupKeygen {
            meta,
            params,
            policy: policy.clone(),
            executors: nodes.iter().map(|n| executor_id(pki, n)).collect(),
            approvals: Vec::new(),
        };
        keygen.approvals = approvals_by(pki, signers, &keygen.message());
        keygen
    }

    fn message(&self) -> Vec<u8> {
        Action::CreateGroupThresholdKey {
            policy: &self.policy,
            threshold: self.params.threshold,
            hd: self.params.hd,
            clusters: &self.params.clusters,
            executors: &self.executors,
        }
        .message(THRESHOLD_SCOPE, &self.meta)
    }

    pub(crate) fn start(&self, attempt: u8) -> Request {
        Request::ThresholdGroupKeygenStart {
            meta: self.meta.clone(),
            attempt,
            params: self.params.clone(),
            policy: self.policy.clone(),
            executors: self.executors.clone(),
            approvals: self.approvals.clone(),
        }
    }

    /// The same approved request with `node` as the participant of share `i`: what a cloud
    /// server sends when it fails over to another node of that cluster (the approvals do
    /// not cover the participant list).
    fn failed_over(&self, attempt: u8, i: usize, node: &Node) -> Request {
        let mut request = self.start(attempt);
        if let Request::ThresholdGroupKeygenStart { params, .. } = &mut request {
            params.participants[i].chain = node.chain.clone();
        }
        request
    }

    pub(crate) fn session(&self, attempt: u8) -> SessionRef {
        SessionRef {
            request_id: self.meta.request_id,
            attempt,
        }
    }
}

/// Attacker first (issue 12 item 5, for key generation): one approval, one key. A lost
/// answer made the cloud server retry a key generation on another node of a cluster; with
/// the legacy approval that node starts a second session (a second key under one approval),
/// with the group one it refuses by name, and so does every other participant given the
/// substituted list. Nothing is consumed or stored by a refusal.
#[test]
fn a_group_keygen_runs_only_on_its_approved_executors() {
    let pki = Pki::new();
    let mut a1 = pki.node("dc1", "dc1-node1", 0, 1);
    let mut a2 = pki.node("dc1", "dc1-node2", 2, 2);
    let mut b = pki.node("dc2", "dc2-node1", 1, 1);
    let (a1_id, a2_id) = (executor_id(&pki, &a1), executor_id(&pki, &a2));

    // The hole the legacy request keeps: its approvals name no node, so dc1's second node
    // runs the same approved key generation as a second session.
    let legacy = KeygenRequest::new(&pki, &[&a1, &b]);
    let mut failover = legacy.start(1);
    if let Request::ThresholdKeygenStart { params, .. } = &mut failover {
        params.participants[0].chain = a2.chain.clone();
    }
    let (phase, _, _, _) = round(a2.call(&failover));
    assert_eq!(phase, "keygen", "the legacy request binds no executor");
    assert_eq!(a2.primes_left(), 1);

    let policy = group_policy(&pki, &["alice", "bob"], 2);
    let req = GroupKeygen::new(&pki, &[&a1, &b], true, &policy, &["alice", "bob"]);
    let untouched = |node: &mut Node| {
        assert_eq!(committed(node, "consumed/"), 0, "a request id was consumed");
        assert_eq!(committed(node, "tshare/"), 0, "a share was stored");
        assert_eq!(
            node.call(&Request::ListThresholdKeys),
            Ok(Response::ThresholdKeys(Vec::new()))
        );
    };

    // The same group request failed over to dc1's second node (named as participant), and
    // as sent (where it is not one): refused, naming the executor and this node.
    for request in [req.failed_over(1, 0, &a2), req.start(1)] {
        match a2.call(&request) {
            Err(TeeError::NotExecutor {
                executor,
                this_node,
            }) => assert_eq!((executor, this_node), (a1_id, a2_id)),
            other => panic!("a node the approvals do not name ran the key generation: {other:?}"),
        }
    }
    assert_eq!(a2.primes_left(), 1, "a refused start took a primes set");
    untouched(&mut a2);
    // dc2's node, given the substituted participant list, refuses to run with it.
    match b.call(&req.failed_over(1, 0, &a2)) {
        Err(TeeError::ParticipantNotExecutor {
            share_index,
            executor,
            found,
        }) => assert_eq!((share_index, executor, found), (0, a1_id, a2_id)),
        other => panic!("a session ran with a substituted participant: {other:?}"),
    }
    assert_eq!(b.primes_left(), 1);
    assert_eq!(committed(&b, "tsession/"), 0, "a session was recorded");
    untouched(&mut b);

    // The creating quorum is the new group's own: an admin outside it is named.
    let outsider = GroupKeygen::new(&pki, &[&a1, &b], true, &policy, &["alice", "carol"]);
    refused_outsider(a1.call(&outsider.start(0)), "carol");
    // The policy's quorum is the key's.
    let mut other_quorum = req.start(0);
    if let Request::ThresholdGroupKeygenStart { params, .. } = &mut other_quorum {
        params.quorum = 1;
    }
    assert!(matches!(
        a1.call(&other_quorum),
        Err(TeeError::PolicyRejected(m)) if m.contains("quorum")
    ));
    assert_eq!(a1.primes_left(), 1);
    untouched(&mut a1);

    // The approved executors, with the approved participants, start it.
    for node in [&mut a1, &mut b] {
        let (phase, _, computing, key) = round(node.call(&req.start(1)));
        assert_eq!((phase.as_str(), computing, key), ("keygen", false, None));
        assert_eq!(node.primes_left(), 0);
    }
}

/// A threshold key made with an approver group counts only that group: an admin outside it
/// is refused by name for signing and for online signing with a presignature, on the nodes
/// that made it, after a restart and on a peer that synced the share; a repeat of the
/// request answers the key, and a legacy request under its id is another request.
#[test]
fn a_group_threshold_key_counts_only_its_group() {
    let pki = Pki::new();
    let mut a = pki.node("dc1", "dc1-node1", 0, 1);
    let mut b = pki.node("dc2", "dc2-node1", 1, 1);
    let mut peer = pki.node("dc1", "dc1-node2", 2, 0);
    let policy = group_policy(&pki, &["alice", "bob"], 2);
    // No chain code, so that online signing with presignatures applies to it.
    let req = GroupKeygen::new(&pki, &[&a, &b], false, &policy, &["alice", "bob"]);
    let key = make_group_key(&req, &mut a, &mut b);
    assert_eq!((key.quorum, key.origin), (2, ThresholdOrigin::Dkg));

    let sign = |signers: &[&str], nodes: [&Node; 2]| sign_start(&pki, &key, signers, nodes);
    let presign_sign = |signers: &[&str]| {
        let meta = meta();
        let message = b"pay 1 BTC".to_vec();
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&message).into();
        let action = Action::ThresholdSign {
            key_id: &key.key_id,
            path: &[],
            digest: &digest,
        };
        Request::ThresholdPresignSign {
            approvals: approvals_by(&pki, signers, &action.message(THRESHOLD_SCOPE, &meta)),
            meta,
            attempt: 0,
            params: PresignSignParams {
                key_id: key.key_id.clone(),
                presignature: [0x77; 32],
                message,
            },
        }
    };

    // carol holds a genuine Admin-CA certificate, but is not in the key's group.
    for signers in [&["alice", "carol"][..], &["carol", "bob"]] {
        refused_outsider(a.call(&sign(signers, [&a, &b])), "carol");
        refused_outsider(b.call(&sign(signers, [&a, &b])), "carol");
        refused_outsider(a.call(&presign_sign(signers)), "carol");
    }
    // The group itself is enough: the signing starts, and online signing gets as far as
    // the presignature (none exists).
    assert!(matches!(
        a.call(&sign(&["bob", "alice"], [&a, &b])),
        Ok(Response::ThresholdRound { .. })
    ));
    assert!(matches!(
        a.call(&presign_sign(&["alice", "bob"])),
        Err(TeeError::UnknownPresignature(_))
    ));

    // The group is sealed with the share: a restarted TEE still counts only it.
    a.core = TeeCore::open(a.core.platform().after_restart(), "memory").unwrap();
    refused_outsider(a.call(&sign(&["alice", "carol"], [&a, &b])), "carol");
    // And it travels with the share to a peer of the cluster.
    let Ok(Response::KeyTransfer(transfer)) = a.call(&Request::ExportKeys {
        requester: peer.chain.clone(),
        key_ids: vec![key.key_id.clone()],
    }) else {
        panic!("export refused")
    };
    assert!(matches!(
        peer.call(&Request::ImportKeys { transfer }),
        Ok(Response::KeysImported { .. })
    ));
    refused_outsider(peer.call(&sign(&["alice", "carol"], [&peer, &b])), "carol");
    assert!(matches!(
        peer.call(&sign(&["alice", "bob"], [&peer, &b])),
        Ok(Response::ThresholdRound { .. })
    ));

    // One approval, one key: a repeat answers it; the legacy request under the same id
    // (legacy approvals, same terms) is another request, refused naming the policy.
    let (_, _, _, again) = round(a.call(&req.start(2)));
    assert_eq!(again, Some(key.clone()));
    let legacy = Request::ThresholdKeygenStart {
        meta: req.meta.clone(),
        attempt: 3,
        approvals: pki.approvals(2, &action(&req.params), &req.meta),
        params: req.params.clone(),
    };
    match a.call(&legacy) {
        Err(TeeError::RequestReplayed(m)) => assert!(m.contains("no policy"), "{m}"),
        other => panic!("expected RequestReplayed, got {other:?}"),
    }
    assert_eq!(
        a.call(&Request::ListThresholdKeys),
        Ok(Response::ThresholdKeys(vec![key.clone()]))
    );
}

/// A group key's policy may anchor each share's cluster to its governance log: a node checks
/// its own cluster's anchor against the genesis of the log it holds (after the executor
/// check), and refuses anchors it cannot check.
#[test]
fn a_group_keygen_anchor_names_this_clusters_log_and_legacy_starts_are_refused() {
    use custos_test_kit::governance::{member, GovLog};
    use custos_wire::governance::genesis_id;

    let pki = Pki::new();
    let mut a = pki.node("dc1", "dc1-node1", 0, 1);
    let b = pki.node("dc2", "dc2-node1", 1, 1);
    let anchored = |anchors: &[[u8; 32]]| {
        crate::governance::anchored(group_policy(&pki, &["alice", "bob"], 2), anchors)
    };
    let start = |policy: &KeyPolicy, a: &Node| {
        GroupKeygen::new(&pki, &[a, &b], true, policy, &["alice", "bob"]).start(0)
    };
    // Ungoverned, this node holds no log to check its anchor against.
    assert_eq!(
        a.call(&start(&anchored(&[[1; 32], [2; 32]]), &a)),
        Err(TeeError::NotGoverned)
    );

    let log = GovLog::genesis(
        &pki,
        "dc1",
        &["alice", "bob"],
        2,
        vec![member(&pki, &a.chain)],
        &["alice", "bob"],
    );
    let applied = a.call(&Request::ApplyGovernance {
        cluster: "dc1".into(),
        entries: log.entries().to_vec(),
    });
    assert!(
        matches!(applied, Ok(Response::Governance(_))),
        "{applied:?}"
    );
    let genesis = genesis_id("dc1", &log.entries()[0].change);
    // A legacy start (no group, no executors) is refused by name once governed, even with
    // the governors' own approvals, and takes no primes.
    let legacy = KeygenRequest::new(&pki, &[&a, &b]);
    let e = a.call(&legacy.start(0)).unwrap_err();
    assert!(matches!(e, TeeError::LegacyRequest(_)), "{e:?}");
    assert_eq!(a.primes_left(), 1);

    for (anchors, why) in [
        (vec![[1; 32], [2; 32]], "genesis"),
        (vec![genesis], "anchors for 2 clusters"),
    ] {
        match a.call(&start(&anchored(&anchors), &a)) {
            Err(TeeError::PolicyRejected(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("expected PolicyRejected ({why}), got {other:?}"),
        }
    }
    assert_eq!(a.primes_left(), 1);
    let (phase, _, _, _) = round(a.call(&start(&anchored(&[genesis, [2; 32]]), &a)));
    assert_eq!(phase, "keygen");
}
