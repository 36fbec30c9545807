//! The node server's copy of its cluster's member list (issue 12, item 1), used to refuse
//! TLS peers that are not current members.
//!
//! This is a second line: the TEE checks membership itself in `ExportKeys`/`ImportKeys` and
//! is the authority. The node server only holds the TEE's D-signed view of the log, so that
//! a removed or revoked node is turned away before its request reaches the TEE at all, and
//! is named in the node's log.
//!
//! A TEE that is not governed (or does not know governance yet) refuses the `Governance`
//! request; the node then stays ungoverned and checks peers by certificate only, as before.

use std::sync::{Arc, RwLock};

use custos_pki::DeviceIdentity;
use custos_wire::client::ClientError;
use custos_wire::governance::{device_key_fingerprint, DeviceRefusal};
use custos_wire::protocol::{GovView, MemberInfo, Request, Response};

use crate::TeePool;

/// Why a peer that holds a valid certificate of this cluster is still refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {refusal}, in cluster {cluster:?} at governance version {version}", self.code())]
pub struct PeerRefused {
    /// The membership verdict.
    pub refusal: DeviceRefusal,
    /// Cluster of the view that refused it.
    pub cluster: String,
    /// Version of the view that refused it.
    pub version: u64,
}

impl PeerRefused {
    /// Stable prefix of the refusal message: `device_revoked` or `not_a_member` (a key that
    /// is a member under another name is not a member under the name it presents).
    pub fn code(&self) -> &'static str {
        match self.refusal {
            DeviceRefusal::Revoked { .. } => "device_revoked",
            DeviceRefusal::NotAMember { .. } | DeviceRefusal::WrongName { .. } => "not_a_member",
        }
    }
}

/// Whether a device whose chain verified for this cluster is a current member of `view`
/// under the name its certificate carries. Mirrors `GovState::check_device` over the view
/// the TEE reports, since the node holds the view, not the log.
pub fn check_member<'v>(
    view: &'v GovView,
    id: &DeviceIdentity,
) -> Result<&'v MemberInfo, DeviceRefusal> {
    // A key that is not a P-256 point could not have verified; the zero id matches nothing.
    let key_fingerprint = device_key_fingerprint(&id.public_key).unwrap_or([0; 32]);
    let node = id.node.clone();
    if view
        .revoked_devices
        .iter()
        .any(|(k, _)| *k == key_fingerprint)
    {
        return Err(DeviceRefusal::Revoked {
            node,
            key_fingerprint,
        });
    }
    let member = view
        .members
        .iter()
        .find(|m| m.key_fingerprint == key_fingerprint)
        .filter(|_| id.cluster == view.cluster);
    let Some(member) = member else {
        return Err(DeviceRefusal::NotAMember {
            node,
            key_fingerprint,
        });
    };
    if member.node != id.node {
        return Err(DeviceRefusal::WrongName {
            node,
            member: member.node.clone(),
            key_fingerprint,
        });
    }
    Ok(member)
}

/// Why a view the TEE answered is not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ViewRejected {
    /// The view is of another cluster than the one asked for.
    #[error("view of cluster {got:?}, asked for {asked:?}")]
    OtherCluster {
        /// Cluster asked for.
        asked: String,
        /// Cluster answered.
        got: String,
    },
    /// The view starts from another genesis than the one held.
    #[error("view of genesis {got}, held {held}")]
    OtherGenesis {
        /// Genesis id held (hex).
        held: String,
        /// Genesis id answered (hex).
        got: String,
    },
    /// The view is older than the one held.
    #[error("view at version {got}, held {held}")]
    Older {
        /// Version held.
        held: u64,
        /// Version answered.
        got: u64,
    },
}

/// Whether `new` may replace `held`. A TEE's sealed log only grows, so a view of another
/// cluster, another genesis or an older version means something is wrong (storage rolled
/// back, wrong TEE); keeping the held view fails closed.
pub fn admissible(
    held: Option<&GovView>,
    cluster: &str,
    new: &GovView,
) -> Result<(), ViewRejected> {
    if new.cluster != cluster {
        return Err(ViewRejected::OtherCluster {
            asked: cluster.to_string(),
            got: new.cluster.clone(),
        });
    }
    let Some(held) = held else { return Ok(()) };
    if held.genesis_id != new.genesis_id {
        return Err(ViewRejected::OtherGenesis {
            held: hex::encode(held.genesis_id),
            got: hex::encode(new.genesis_id),
        });
    }
    if new.version < held.version {
        return Err(ViewRejected::Older {
            held: held.version,
            got: new.version,
        });
    }
    Ok(())
}

/// The node's current view of its cluster's governance log (`None`: ungoverned).
pub struct Members {
    cluster: String,
    view: RwLock<Option<Arc<GovView>>>,
    // One refresh at a time, so a slow answer cannot land after (and over) a newer one.
    refreshing: tokio::sync::Mutex<()>,
}

impl Members {
    /// An ungoverned view of `cluster`, until [`Members::refresh`] learns otherwise.
    pub fn new(cluster: String) -> Self {
        Members {
            cluster,
            view: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The view held (`None` while the TEE is not governed).
    pub fn view(&self) -> Option<Arc<GovView>> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs `new` if [`admissible`]; returns whether the version changed.
    pub fn install(&self, new: GovView) -> Result<bool, ViewRejected> {
        let mut held = self.view.write().unwrap_or_else(|p| p.into_inner());
        admissible(held.as_deref(), &self.cluster, &new)?;
        let changed = held.as_ref().map(|h| h.version) != Some(new.version);
        *held = Some(Arc::new(new));
        Ok(changed)
    }

    /// Lets `id` through when ungoverned; otherwise requires it to be a current member.
    pub fn admit(&self, id: &DeviceIdentity) -> Result<(), PeerRefused> {
        let Some(view) = self.view() else {
            return Ok(());
        };
        check_member(&view, id)
            .map(|_| ())
            .map_err(|refusal| PeerRefused {
                refusal,
                cluster: view.cluster.clone(),
                version: view.version,
            })
    }

    /// Asks the TEE for its view (entries after the version held, so the answer stays small)
    /// and installs it. The pool checks the answer's signature against the certified device
    /// key, like every TEE answer the node uses. A refusal while ungoverned is the TEE saying
    /// it is not governed (`Ok`); any other failure is returned and keeps the view held: a
    /// TEE that cannot be asked right now does not make the node forget its members.
    pub async fn refresh(&self, tee: &TeePool) -> Result<(), ClientError> {
        let _one_at_a_time = self.refreshing.lock().await;
        // `since` is the first version listed: only entries not held yet (none at first, as
        // the node keeps the view, not the log).
        let since = self
            .view()
            .map_or(u64::MAX, |v| v.version.saturating_add(1));
        let request = Request::Governance {
            cluster: self.cluster.clone(),
            since,
        };
        match tee.call(request).await {
            Ok(Response::Governance(view)) => {
                let (version, members) = (view.version, view.members.len());
                match self.install(view) {
                    Ok(true) => tracing::info!(version, members, "governance view"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "TEE governance view not taken"),
                }
            }
            Ok(_) => {
                return Err(ClientError::Protocol(
                    "unexpected TEE response to Governance".into(),
                ))
            }
            Err(ClientError::Tee(e)) if self.view().is_none() => {
                tracing::debug!(reason = %e, "TEE is not governed; peers checked by certificate");
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// [`Members::refresh`], a failure logged: for refreshes whose caller goes on anyway.
    pub async fn refresh_or_log(&self, tee: &TeePool) {
        if let Err(e) = self.refresh(tee).await {
            tracing::warn!(error = %e, "governance view not refreshed; the one held stays");
        }
    }
}

#[cfg(test)]
mod refresh_tests;
#[cfg(test)]
mod tests;
