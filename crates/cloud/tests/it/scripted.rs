//! What the two scripted threshold TEEs (`dkg.rs`: key generation, `threshold.rs`: signing)
//! share: the clusters, the stand-in protocol's messages and their check on receipt, the
//! record of what each cluster was asked and how it is told to misbehave, and the cloud
//! server in front of them. Each file keeps only what its protocol does with a round.

use std::collections::HashMap;
use std::sync::Mutex;

use custos_cloud_api::RequestView;
use custos_wire::protocol::{SessionRef, ThresholdMessage};
use sha2::{Digest, Sha256};

use custos_test_kit::*;

pub const CLUSTERS: [&str; 3] = ["dc1", "dc2", "dc3"];

/// A stand-in of a threshold protocol at the level of its messages: rounds named after
/// `phases`, in each of which every participant broadcasts one message and sends one
/// point-to-point message to every other participant. A message's payload names its session,
/// phase, round, sender and recipient, padded with `padding(round)` zero bytes; its signature
/// is a mock (SHA-256 of the payload). A receiver checks every message arrives unaltered,
/// from another participant, for its session and round ([`StandIn::intact`]).
#[derive(Clone, Copy)]
pub struct StandIn {
    pub phases: &'static [&'static str],
    pub padding: fn(round: u16) -> usize,
}

impl StandIn {
    /// The phase of `round` (rounds count from 1).
    pub fn phase(&self, round: u16) -> &'static str {
        self.phases[usize::from(round) - 1]
    }

    /// The last round.
    pub fn last_round(&self) -> u16 {
        self.phases.len() as u16
    }

    pub fn payload(
        &self,
        session: &SessionRef,
        round: u16,
        sender: u16,
        recipient: Option<u16>,
    ) -> Vec<u8> {
        let mut payload = format!(
            "{}/{} {} (round {round}) from {sender} to {recipient:?}",
            hex::encode(session.request_id),
            session.attempt,
            self.phase(round)
        )
        .into_bytes();
        payload.resize(payload.len() + (self.padding)(round), 0);
        payload
    }

    /// The messages of participant `pos` of `n` in `round`: its broadcast, then one to each
    /// other participant.
    pub fn messages(
        &self,
        session: SessionRef,
        pos: u16,
        n: u16,
        round: u16,
    ) -> Vec<ThresholdMessage> {
        let message = |recipient: Option<u16>| {
            let payload = self.payload(&session, round, pos, recipient);
            ThresholdMessage {
                session,
                sender: pos,
                recipient,
                phase: self.phase(round).into(),
                round,
                enc: if recipient.is_some() {
                    vec![7; 32]
                } else {
                    vec![]
                },
                signature: mock_signature(&payload),
                payload,
            }
        };
        let mut out = vec![message(None)];
        out.extend((0..n).filter(|&q| q != pos).map(|q| message(Some(q))));
        out
    }

    /// How many messages each of `n` participants receives in a round.
    pub fn expected(n: u16) -> usize {
        2 * usize::from(n - 1)
    }

    /// Whether `m`, received by participant `pos` of `n` in `round` of `session`, is as its
    /// sender made it: the right session, round and phase, from another participant, to
    /// all or to `pos`, the payload and its signature unaltered.
    pub fn intact(
        &self,
        m: &ThresholdMessage,
        session: SessionRef,
        round: u16,
        pos: u16,
        n: u16,
    ) -> bool {
        m.session == session
            && m.round == round
            && m.sender != pos
            && m.sender < n
            && m.recipient.is_none_or(|r| r == pos)
            && m.phase == self.phase(round)
            && m.payload == self.payload(&session, round, m.sender, m.recipient)
            && m.signature == mock_signature(&m.payload)
    }
}

fn mock_signature(payload: &[u8]) -> Vec<u8> {
    Sha256::digest(payload).to_vec()
}

/// The state every scripted TEE of a test shares: how each cluster is told to misbehave
/// (`M`), the running sessions by cluster (`S`), and a log of what each cluster was asked.
pub struct Tees<M, S> {
    behaviour: Mutex<HashMap<String, M>>,
    pub sessions: Mutex<HashMap<(String, SessionRef), S>>,
    /// (cluster, what was asked, session)
    log: Mutex<Vec<(String, &'static str, SessionRef)>>,
}

impl<M: Clone, S> Default for Tees<M, S> {
    fn default() -> Self {
        Tees {
            behaviour: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
        }
    }
}

impl<M: Clone, S> Tees<M, S> {
    /// From now on the TEEs of `cluster` misbehave as `m`.
    pub fn misbehave(&self, cluster: &str, m: M) {
        self.behaviour.lock().unwrap().insert(cluster.into(), m);
    }

    /// Every cluster behaves from now on.
    pub fn behave(&self) {
        self.behaviour.lock().unwrap().clear();
    }

    /// How `cluster` misbehaves, if it does.
    pub fn behaviour(&self, cluster: &str) -> Option<M> {
        self.behaviour.lock().unwrap().get(cluster).cloned()
    }

    pub fn log(&self, cluster: &str, what: &'static str, session: SessionRef) {
        self.log
            .lock()
            .unwrap()
            .push((cluster.into(), what, session));
    }

    /// Which cluster was asked `what`, for which session, in order.
    pub fn logged(&self, what: &str) -> Vec<(String, SessionRef)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, w, _)| *w == what)
            .map(|(c, _, s)| (c.clone(), *s))
            .collect()
    }
}

/// The cloud server in front of clusters dc1 (two nodes), dc2 and dc3 of scripted TEEs that
/// answer with `script`.
pub async fn server(db: TestDb, script: Script) -> TestServer {
    let pki = Pki::new();
    let gateway = FakeGateway::scripted(&pki, &[("dc1", 2), ("dc2", 1), ("dc3", 1)], script);
    TestServer::start_with(pki, gateway, db).await
}

/// The session of attempt `attempt` of the request `view`.
pub fn session_of(view: &RequestView, attempt: u8) -> SessionRef {
    SessionRef {
        request_id: hex::decode(&view.id).unwrap().try_into().unwrap(),
        attempt,
    }
}

/// The clusters in `log` for `session`, sorted.
pub fn clusters_of(log: Vec<(String, SessionRef)>, session: SessionRef) -> Vec<String> {
    let mut v: Vec<String> = log
        .into_iter()
        .filter(|(_, s)| *s == session)
        .map(|(c, _)| c)
        .collect();
    v.sort();
    v
}

/// [`clusters_of`], each cluster once.
pub fn distinct_clusters_of(log: Vec<(String, SessionRef)>, session: SessionRef) -> Vec<String> {
    let mut v = clusters_of(log, session);
    v.dedup();
    v
}
