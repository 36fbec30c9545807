//! Demo step of issue 15: a cluster reached only through animated QR codes. Its relay
//! draws each request as frames into a screen folder, a camera across a desk films them
//! (a third missed, the rest shuffled, noisy, blurred, tilted 3°) into the bridge's
//! captured folder, and the bridge's replies come back the same way. A wallet is made, a
//! BIP-32 digest signed and an audit run through the REST API, each envelope's frames
//! (shown, caught, decoded) recorded in the report.

use std::str::FromStr;

use bitcoin::bip32::DerivationPath;
use custos::cluster::{LinkChannel, LinkTransport};
use custos::link_channel::Direction;
use custos_cloud_api::CreateWalletBody;
use custos_link::qr::damage::Damage;
use serde_json::json;
use tokio::runtime::Runtime;

use super::{
    approve_all, audit_clean, fail, public_child, sign_approved, status_is, verify_signature,
    wallet_of, AnyError, Demo, RequestStatus,
};

/// The cluster behind the QR channel.
const CLUSTER: &str = "dc4";

impl Demo {
    /// Brings up `dc4` (one node) over the QR channel and runs a wallet creation, a
    /// signature and an audit through it; returns the report's `air_gap` section.
    pub(super) fn qr_cluster(&mut self, rt: &Runtime) -> Result<serde_json::Value, AnyError> {
        let plan = super::platform::plan(self.platform)?;
        let damage = Damage::across_a_desk(15);
        self.dep
            .add_cluster(CLUSTER, LinkTransport::Qr(damage), 1, &plan)?;
        self.client = self.dep.client()?;
        let (root_id, path, sig_request) = rt.block_on(self.through_the_camera())?;
        let cluster = self
            .dep
            .cluster(CLUSTER)
            .ok_or_else(|| fail("no dc4 cluster"))?;
        let Some(LinkChannel::Qr(cameras)) = &cluster.channel else {
            return Err(fail("dc4 has no QR cameras"));
        };
        let filmed = cameras.filmed();
        let (shown, caught, decoded) = filmed.iter().fold((0, 0, 0), |(s, c, d), (_, f)| {
            (s + f.shown, c + f.caught, d + f.decoded)
        });
        if caught >= shown {
            return Err(fail(
                "the camera missed no frame: the channel was not damaged",
            ));
        }
        self.steps.ok(
            "qr-link",
            format!(
                "{CLUSTER} reached only by animated QR codes through a camera across a desk \
                 (30 % of frames missed, shuffled, noise, blur, 3° tilt): wallet made, \
                 {path} signed and verified, audit clean; {} envelopes, {shown} frames \
                 shown, {caught} caught, {decoded} decoded",
                filmed.len()
            ),
        );
        Ok(json!({
            "cluster": CLUSTER,
            "link": "qr",
            "damage": {
                "drop": damage.drop, "noise": damage.noise,
                "rotate_degrees": damage.rotate_degrees, "blur": damage.blur,
            },
            "wallet": root_id,
            "sign_request_id": sig_request,
            "envelopes": filmed.iter().map(|(direction, f)| json!({
                "direction": direction,
                "kind": if *direction == Direction::ToBridge { "request" } else { "reply" },
                "folder": f.folder, "frames_shown": f.shown, "frames_caught": f.caught,
                "frames_decoded": f.decoded,
            })).collect::<Vec<_>>(),
            "frames": {"shown": shown, "caught": caught, "decoded": decoded},
        }))
    }

    /// The REST flows over dc4: (wallet root id, signed path, signing request id).
    async fn through_the_camera(&mut self) -> Result<(String, String, String), AnyError> {
        super::wait_healthy(&self.client, &[CLUSTER], std::time::Duration::from_secs(60)).await?;
        let group = vec![hex::encode(self.alice.key_fingerprint())];
        let view = self
            .client
            .create_wallet(&CreateWalletBody {
                rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
                cluster: CLUSTER.into(),
                quorum: 1,
                group,
                executor: None,
                request_id: None,
                expires_at: None,
                approvals: Vec::new(),
            })
            .await?;
        let view = approve_all(&self.client, view, &[&self.alice]).await?;
        status_is(&view, RequestStatus::Completed, "dc4 wallet creation")?;
        let (root_id, xpub) = wallet_of(&view)?;
        let (path, digest) = ("m/0/15", [0x15u8; 32]);
        let (view, sig) =
            sign_approved(&self.client, &root_id, path, digest, &[&self.alice]).await?;
        verify_signature(
            &sig,
            &digest,
            &public_child(&xpub, &DerivationPath::from_str(path)?)?,
        )?;
        let audit = self.client.run_audit(CLUSTER).await?;
        if audit.nodes.len() != 1 || !audit.nodes.iter().all(audit_clean) {
            return Err(fail(&format!("audit of dc4 flagged its node: {audit:?}")));
        }
        Ok((root_id, path.to_string(), view.id))
    }
}
