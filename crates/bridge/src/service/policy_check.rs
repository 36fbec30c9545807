//! Holders confirmed under a key's latest policy before they are routed it (issue 12 item
//! 3): a node whose TEE missed a group change (it was down) still enforces the old group,
//! so routing it the key again would let the admins the change removed sign.
//!
//! The bridge records the latest policy version each change reached (`key_policy` table,
//! written before the change is answered). A node that reports such a key as held, when it
//! registers or after a sync, is put in `checking`: it is routed nothing for the key until
//! its TEE's own signed [`Request::GetKeyPolicy`] answer shows at least that version. A node
//! behind is treated as lacking the key (`missing`), so its next sync fetches the record
//! from a confirmed holder, which upgrades its policy, and it is checked again. A node that
//! does not answer stays in `checking` and is asked again at the next policy round.

use std::collections::HashMap;

use custos_metadata::KeyPolicyRecord;

use super::*;

/// Most keys checked on one node per pass (each one a TEE round trip); the rest wait for the
/// next pass, so one node with many changed keys cannot hold the check lock for long.
const MAX_CHECKS_PER_PASS: usize = 256;

/// A key's latest known policy: version and hash.
pub(super) type PolicyMark = (u32, [u8; 32]);

/// Longest one pass spends on one node: a slow member cannot hold the check lock for long.
const MAX_PASS: std::time::Duration = std::time::Duration::from_secs(30);

/// What one node's TEE said of the keys checked: the policy it enforces for each (`None`:
/// it lacks the key). Judged against the recorded policy only when applied (`settle`), so
/// that a change recorded while the TEE was being asked is not missed.
#[derive(Default)]
struct Verdicts {
    answers: Vec<(Vec<u8>, Option<PolicyMark>)>,
    unanswered: usize,
}

/// The recorded policies, keyed by key id, as loaded when the bridge starts.
pub(super) async fn load(db: &MetadataDb) -> Result<HashMap<Vec<u8>, PolicyMark>, BridgeError> {
    Ok(db
        .key_policies()
        .await?
        .into_iter()
        .filter_map(|r| Some((hex::decode(&r.key_id).ok()?, (r.version, r.hash))))
        .collect())
}

impl BridgeService {
    /// Splits the keys a node reports as held into those it may be routed now and those
    /// whose policy must be confirmed first (a change was recorded for them).
    pub(super) fn split_by_policy(
        &self,
        keys: impl IntoIterator<Item = Vec<u8>>,
    ) -> (HashSet<Vec<u8>>, HashSet<Vec<u8>>) {
        let policies = self
            .state
            .policies
            .read()
            .unwrap_or_else(|p| p.into_inner());
        keys.into_iter().partition(|k| !policies.contains_key(k))
    }

    /// Records that `key` is now under `mark`, unless a later version is known already: in
    /// memory first, so that routing holds every holder to it at once even if the database
    /// write then fails (the caller reports that failure), then durably.
    pub(super) async fn record_policy(&self, key: &[u8], mark: PolicyMark) -> Result<(), Status> {
        {
            let mut policies = self
                .state
                .policies
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let entry = policies.entry(key.to_vec()).or_insert(mark);
            if entry.0 < mark.0 {
                *entry = mark;
            }
        }
        self.state
            .db
            .record_key_policy(&KeyPolicyRecord {
                key_id: hex::encode(key),
                version: mark.0,
                hash: mark.1,
            })
            .await
            .map_err(|e| Status::unavailable(format!("key policy not recorded: {e}")))
    }

    /// Asks `node`'s TEE the policy of each key waiting in its `checking` set and moves each
    /// to `held` (at least the recorded version) or `missing` (behind, or lacking the key).
    pub(super) async fn confirm_policies(&self, node: &str) {
        let _one = self.state.policy_checks.lock().await;
        let keys: Vec<Vec<u8>> = {
            let nodes = self.state.nodes.read().unwrap_or_else(|p| p.into_inner());
            match nodes.get(node) {
                Some(n) => n
                    .checking
                    .iter()
                    .take(MAX_CHECKS_PER_PASS)
                    .cloned()
                    .collect(),
                None => return,
            }
        };
        if keys.is_empty() {
            return;
        }
        let mut v = Verdicts::default();
        let started = Instant::now();
        for key in keys {
            if started.elapsed() > MAX_PASS {
                break;
            }
            let asked = Request::GetKeyPolicy {
                key_id: key.clone(),
            };
            match self.node_outcome(node, &asked).await {
                Some(Ok(Response::KeyPolicy { policy, hash, .. })) => {
                    v.answers.push((key, Some((policy.version, hash))))
                }
                Some(Err(e)) if node_lacks_key(&e) => v.answers.push((key, None)),
                // A refusal of this key: it stays waiting, the others are asked.
                Some(_) => v.unanswered += 1,
                // Unreachable or slow: the rest waits for the next pass rather than each
                // key waiting out its own timeout.
                None => {
                    v.unanswered += 1;
                    break;
                }
            }
        }
        self.settle(node, v).await;
    }

    /// Applies one node's verdicts to the routing table, against the policies recorded now,
    /// and writes one history row when any key was found behind or ahead.
    async fn settle(&self, node: &str, v: Verdicts) {
        // Keys whose TEE holds a later policy than recorded (a change the bridge did not
        // see): recorded first, so the judgement below uses them.
        let recorded: Vec<(Vec<u8>, PolicyMark)> = {
            let policies = self
                .state
                .policies
                .read()
                .unwrap_or_else(|p| p.into_inner());
            v.answers
                .iter()
                .filter_map(|(k, seen)| {
                    let seen = (*seen)?;
                    let known = policies.get(k).copied();
                    known
                        .is_some_and(|r| seen.0 > r.0)
                        .then(|| (k.clone(), seen))
                })
                .collect()
        };
        let mut ahead = Vec::new();
        for (key, mark) in &recorded {
            if self.record_policy(key, *mark).await.is_ok() {
                ahead.push(key.clone());
            }
        }
        let mut behind = Vec::new();
        let mut confirmed = 0usize;
        {
            let mut nodes = self.state.nodes.write().unwrap_or_else(|p| p.into_inner());
            let policies = self
                .state
                .policies
                .read()
                .unwrap_or_else(|p| p.into_inner());
            // The other holders were confirmed against an older version: checked again.
            for key in &ahead {
                for (name, n) in nodes.iter_mut() {
                    if name != node && n.held.remove(key) {
                        n.checking.insert(key.clone());
                    }
                }
            }
            let Some(n) = nodes.get_mut(node) else {
                return;
            };
            for (key, seen) in v.answers {
                if !n.checking.remove(&key) {
                    continue;
                }
                let up_to_date = match (seen, policies.get(&key)) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(s), Some(r)) => s.0 > r.0 || *r == s,
                };
                if up_to_date {
                    confirmed += 1;
                    n.missing.remove(&key);
                    n.held.insert(key);
                } else {
                    n.missing.insert(key.clone());
                    behind.push(key);
                }
            }
        }
        if !behind.is_empty() {
            self.state.sync_trigger.notify_one();
        }
        if behind.is_empty() && ahead.is_empty() {
            return;
        }
        // A few names and the count: the row stays small whatever the number of keys.
        let hexes = |keys: &[Vec<u8>]| {
            let named: Vec<String> = keys.iter().take(8).map(hex::encode).collect();
            format!("{} {named:?}", keys.len())
        };
        let _ = self
            .log(NewEntry {
                kind: "policy-check".into(),
                actor: "bridge".into(),
                node: Some(node.to_string()),
                outcome: if behind.is_empty() { "ok" } else { "behind" }.into(),
                detail: format!(
                    "{confirmed} key(s) confirmed; behind the recorded policy (not routed, \
                     fetched again by sync): {}; ahead of it (recorded, other holders checked \
                     again): {}; {} unanswered",
                    hexes(&behind),
                    hexes(&ahead),
                    v.unanswered
                ),
                ..Default::default()
            })
            .await;
    }

    /// Checks, on every healthy node with keys waiting, the keys that wait (after a node did
    /// not answer a first check).
    pub(super) async fn policy_round(&self) {
        let waiting: Vec<String> = {
            let nodes = self.state.nodes.read().unwrap_or_else(|p| p.into_inner());
            nodes
                .iter()
                .filter(|(_, n)| n.healthy && !n.checking.is_empty())
                .map(|(name, _)| name.clone())
                .collect()
        };
        for node in waiting {
            self.confirm_policies(&node).await;
        }
    }
}
