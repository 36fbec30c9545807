//! The demo's TEE platform (`custos demo --platform software|tpm`): with `tpm`, each TEE
//! process on a software TPM of its own (`swtpm`, started and stopped by the demo), what each
//! TEE's `Status` reports, and the step that shows what the TPM adds: a copy of a TEE's store
//! put back is refused at start (`store_rolled_back`). With `software` the report says the
//! TEEs run on the development stand-in, which cannot tell such a copy.

use custos::cluster::ClusterError;
use custos::tee_plan::{PlatformName, TeeChoice, TeePlan};
use custos::tee_process::{SpawnError, TeePlatform};
use custos_tee_host::swtpm::{copy_dir, replace_dir};
use custos_wire::protocol::{Request, Response};

use super::*;

/// The node whose store the TPM run copies after start-up and puts back at the end (the
/// node the `node-killed` step stops anyway).
const ROLLBACK_NODE: (&str, usize) = ("dc1", 0);

/// The TEE plan of a demo on `platform`: every TEE on the software platform, or each on a
/// `swtpm` of its own (refused up front where `custos` lacks the feature `tpm` or `swtpm`
/// is not installed, naming what to do).
pub(super) fn plan(platform: PlatformName) -> Result<TeePlan, AnyError> {
    match platform {
        PlatformName::Software => Ok(TeePlan::default()),
        PlatformName::Tpm => {
            if !cfg!(feature = "tpm") {
                return Err(
                    "custos demo --platform tpm: this custos was built without the \
                            TPM platform (cargo build --release -p custos --features tpm)"
                        .into(),
                );
            }
            if !custos_tee_host::swtpm::installed() {
                return Err(
                    "custos demo --platform tpm runs each TEE on a software TPM: \
                            swtpm is not installed (Debian: apt-get install swtpm)"
                        .into(),
                );
            }
            Ok(TeePlan::all(TeeChoice::Swtpm))
        }
    }
}

/// The name of the platform in the report.
pub(super) fn name(platform: PlatformName) -> &'static str {
    match platform {
        PlatformName::Software => "software",
        PlatformName::Tpm => "tpm",
    }
}

impl Demo {
    /// Each TEE's platform as its `Status` reports it, with the TPM it was started on; the
    /// report's `tees`. Their `attestation` verdicts are filled in by the governance step.
    pub(super) fn tee_platforms(&mut self) -> Result<(), AnyError> {
        let mut tees = Vec::new();
        for c in &self.dep.clusters {
            for n in &c.nodes {
                let Response::Status(status) = n.tee.client()?.call(&Request::Status)? else {
                    return Err(fail(&format!("{}: Status answered another kind", n.name)));
                };
                let tpm = match n.tee.platform() {
                    TeePlatform::Software => None,
                    TeePlatform::Tpm(t) => Some(t.tcti.clone()),
                };
                let want = if tpm.is_some() { "tpm" } else { "software" };
                if status.platform != want {
                    return Err(fail(&format!(
                        "{} reports platform {:?}, started on {want}",
                        n.name, status.platform
                    )));
                }
                tees.push(json!({
                    "cluster": c.name, "node": n.name, "platform": status.platform,
                    "tpm": tpm, "attestation": null,
                }));
            }
        }
        let detail = match self.platform {
            PlatformName::Tpm => format!(
                "{} TEEs report platform tpm, each on a software TPM of its own (swtpm)",
                tees.len()
            ),
            PlatformName::Software => format!(
                "{} TEEs report platform software: the development stand-in (no protection \
                 against a store copy put back; --platform tpm shows it)",
                tees.len()
            ),
        };
        self.steps.ok("tee-platforms", detail);
        self.tees = tees;
        Ok(())
    }

    /// With `--platform tpm`: stops [`ROLLBACK_NODE`] (server and TEE), copies its store and
    /// starts it again; [`Demo::rollback_refused`] puts the copy back at the end.
    pub(super) fn copy_early_store(&mut self) -> Result<(), AnyError> {
        if self.platform != PlatformName::Tpm {
            return Ok(());
        }
        let (cluster, i) = ROLLBACK_NODE;
        let c = self.dep.cluster_mut(cluster).ok_or_else(|| fail(cluster))?;
        c.kill_node_server(i);
        c.kill_tee(i);
        let copy = self.dir.join("rollback").join("store-early");
        copy_dir(&c.nodes[i].tee.store, &copy)?;
        c.restart_node(i)?;
        Ok(())
    }

    /// With `--platform tpm`, once every other step is done: [`ROLLBACK_NODE`]'s TEE stopped,
    /// the store copied after start-up put back, and a start refused with
    /// `store_rolled_back` (the TPM's counter has moved on); then its latest store is put
    /// back. With `software`: nothing is run, the report says why.
    pub(super) fn rollback_refused(&mut self) -> Result<serde_json::Value, AnyError> {
        if self.platform != PlatformName::Tpm {
            return Ok(json!({
                "run": false,
                "why": "the software platform keeps its counter in the store, so a whole store \
                        copied and put back opens (its documented limit); --platform tpm shows \
                        the refusal",
            }));
        }
        let (cluster, i) = ROLLBACK_NODE;
        let dir = self.dir.join("rollback");
        let c = self.dep.cluster_mut(cluster).ok_or_else(|| fail(cluster))?;
        c.kill_node_server(i);
        c.kill_tee(i);
        let node = &mut c.nodes[i];
        let store = node.tee.store.clone();
        copy_dir(&store, &dir.join("store-latest"))?;
        replace_dir(&store, &dir.join("store-early"))?;
        let refusal = match node.tee.restart() {
            Err(SpawnError::Exited { stderr, .. }) => stderr,
            Err(e) => return Err(fail(&format!("the early store's start: {e}"))),
            Ok(()) => {
                node.tee.kill();
                return Err(fail(&format!(
                    "{}'s store copy put back opened on the TPM platform",
                    node.name
                )));
            }
        };
        if !refusal.starts_with("error: store_rolled_back: ") {
            return Err(fail(&format!("unexpected refusal: {refusal}")));
        }
        let name = node.name.clone();
        replace_dir(&store, &dir.join("store-latest"))?;
        c.restart_node(i)
            .map_err(|e: ClusterError| fail(&e.to_string()))?;
        self.steps.ok(
            "rollback-refused",
            format!(
                "{name}'s TEE stopped, its store copied after start-up put back: the TPM \
                 refuses it at start ({refusal}); the latest store put back opens again"
            ),
        );
        Ok(json!({
            "run": true, "node": name, "code": "store_rolled_back", "refusal": refusal,
            "latest_store_reopened": true,
        }))
    }
}
