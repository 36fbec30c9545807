//! Key sync rounds (patent [0068]): key list from the bridge, missing keys from a peer.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use custos_net::connect_lazy;
use custos_proto::cluster::bridge_client::BridgeClient;
use custos_proto::cluster::vault_node_client::VaultNodeClient;
use custos_proto::cluster::{ExportRequest, KeyListRequest, SyncReport};
use custos_wire::protocol::MAX_TRANSFER_KEYS;
use custos_wire::protocol::{KeyTransfer, Request, Response};
use tokio::sync::Mutex;
use tonic::transport::Channel;

use crate::members::Members;
use crate::{TeePool, MAX_MESSAGE};

/// Why a sync round stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The bridge could not be asked.
    #[error("bridge: {0}")]
    Bridge(String),
    /// The bridge does not know this node (it restarted since the node registered): the
    /// node must register again before it is routed anything.
    #[error("bridge: this node is not registered: {0}")]
    NotRegistered(String),
    /// The local TEE failed.
    #[error("TEE: {0}")]
    Tee(String),
}

/// Runs sync rounds for one node; one round at a time.
pub struct Syncer {
    /// This node's name.
    pub node: String,
    cluster: String,
    tee: TeePool,
    bridge: BridgeClient<Channel>,
    client_cfg: Arc<rustls::ClientConfig>,
    peers: Mutex<HashMap<String, (String, VaultNodeClient<Channel>)>>,
    round: Mutex<()>,
    members: Arc<Members>,
}

impl Syncer {
    /// A syncer for `node` of `cluster`.
    pub fn new(
        node: String,
        cluster: String,
        tee: TeePool,
        bridge: BridgeClient<Channel>,
        client_cfg: Arc<rustls::ClientConfig>,
        members: Arc<Members>,
    ) -> Self {
        Syncer {
            node,
            cluster,
            tee,
            bridge,
            client_cfg,
            peers: Mutex::new(HashMap::new()),
            round: Mutex::new(()),
            members,
        }
    }

    /// Key ids the local TEE holds: wallets and threshold shares (both synced alike).
    pub async fn held_keys(&self) -> Result<Vec<Vec<u8>>, SyncError> {
        let mut held = match self.tee.call(Request::ListKeys).await {
            Ok(Response::Keys(k)) => k.into_iter().map(|k| k.key_id).collect::<Vec<_>>(),
            Ok(_) => return Err(SyncError::Tee("unexpected ListKeys response".into())),
            Err(e) => return Err(SyncError::Tee(e.to_string())),
        };
        match self.tee.call(Request::ListThresholdKeys).await {
            Ok(Response::ThresholdKeys(k)) => held.extend(k.into_iter().map(|k| k.key_id)),
            Ok(_) => {
                return Err(SyncError::Tee(
                    "unexpected ListThresholdKeys response".into(),
                ))
            }
            Err(e) => return Err(SyncError::Tee(e.to_string())),
        }
        Ok(held)
    }

    async fn peer(&self, node: &str, endpoint: &str) -> Option<VaultNodeClient<Channel>> {
        let mut peers = self.peers.lock().await;
        if let Some((ep, c)) = peers.get(node) {
            if ep == endpoint {
                return Some(c.clone());
            }
        }
        let addr: SocketAddr = endpoint.parse().ok()?;
        let channel = connect_lazy(
            addr,
            &format!("{node}.{}.custos", self.cluster),
            self.client_cfg.clone(),
        )
        .ok()?;
        let client = VaultNodeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        peers.insert(node.to_string(), (endpoint.to_string(), client.clone()));
        Some(client)
    }

    /// One round: returns (keys imported, keys still missing).
    pub async fn sync_once(&self) -> Result<(usize, usize), SyncError> {
        let _one_at_a_time = self.round.lock().await;
        // Each round also catches up the member list, in case an ApplyGovernance reached the
        // TEE by another path (or its refresh failed); it asks only for what is new.
        self.members.refresh_or_log(&self.tee).await;
        let list = self
            .bridge
            .clone()
            .key_list(KeyListRequest { missing_only: true })
            .await
            .map_err(|e| {
                if e.code() == tonic::Code::FailedPrecondition
                    && e.message().starts_with(custos_proto::NOT_REGISTERED)
                {
                    SyncError::NotRegistered(e.message().to_string())
                } else {
                    SyncError::Bridge(e.message().to_string())
                }
            })?
            .into_inner();
        let endpoints: BTreeMap<String, String> = list
            .nodes
            .iter()
            .filter(|n| n.healthy && n.node != self.node)
            .map(|n| (n.node.clone(), n.endpoint.clone()))
            .collect();
        // Group what is missing by a holder, rotating among holders to spread the load.
        let mut wanted: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        let mut unreachable = 0usize;
        // The bridge lists what this node is not known to hold; a key the TEE holds anyway
        // (stale list) is skipped by the TEE's import, so the TEE's full list is not needed.
        for (i, entry) in list.keys.iter().enumerate() {
            let holders: Vec<&String> = entry
                .holders
                .iter()
                .filter(|h| endpoints.contains_key(*h))
                .collect();
            if holders.is_empty() {
                unreachable += 1;
                continue;
            }
            let h = holders[i % holders.len()].clone();
            wanted.entry(h).or_default().push(entry.key_id.clone());
        }
        let mut imported_total = Vec::new();
        let mut missing = unreachable;
        for (holder, keys) in wanted {
            let Some(mut peer) = self.peer(&holder, &endpoints[&holder]).await else {
                missing += keys.len();
                continue;
            };
            for chunk in keys.chunks(MAX_TRANSFER_KEYS) {
                match self.fetch(&mut peer, chunk).await {
                    Ok(mut ids) => imported_total.append(&mut ids),
                    Err(e) => {
                        tracing::warn!(peer = %holder, error = %e, "key transfer failed");
                        missing += chunk.len();
                    }
                }
            }
        }
        let imported = imported_total.len();
        if imported > 0 || missing > 0 {
            let report = SyncReport {
                imported: imported_total,
                missing: missing as u64,
            };
            if let Err(e) = self.bridge.clone().report_sync(report).await {
                tracing::warn!(error = %e, "sync report not delivered");
            }
        }
        if imported > 0 {
            tracing::info!(imported, missing, "sync round");
        }
        Ok((imported, missing))
    }

    async fn fetch(
        &self,
        peer: &mut VaultNodeClient<Channel>,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Vec<u8>>, SyncError> {
        let reply = peer
            .export_keys(ExportRequest {
                key_ids: keys.to_vec(),
            })
            .await
            .map_err(|e| SyncError::Bridge(format!("peer export: {}", e.message())))?
            .into_inner();
        let transfer: KeyTransfer = postcard::from_bytes(&reply.transfer)
            .map_err(|e| SyncError::Tee(format!("undecodable transfer: {e}")))?;
        match self.tee.call(Request::ImportKeys { transfer }).await {
            // Newly imported or already held, the TEE now holds the whole chunk: report it
            // all, so a lost report cannot leave the bridge believing a key is missing.
            Ok(Response::KeysImported { .. }) => Ok(keys.to_vec()),
            Ok(_) => Err(SyncError::Tee("unexpected ImportKeys response".into())),
            Err(e) => Err(SyncError::Tee(e.to_string())),
        }
    }
}
