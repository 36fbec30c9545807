//! The demo's threshold steps: a dealt 2-of-3 HD key signed by pairs of clusters and
//! audited, presignatures and online signing, and a key made by distributed key generation.

use super::*;

impl Demo {
    /// Threshold ECDSA across clusters (patent FIG. 12-15, 17): the dealer program deals a
    /// 2-of-3 HD key, one share per cluster sealed to its first node; each import is
    /// approved; then pairs of clusters sign through the cloud server, which only relays
    /// D-signed messages whose point-to-point content is sealed to the receiving node.
    pub(super) fn threshold_dealt(&mut self, rt: &Runtime) -> Result<serde_json::Value, AnyError> {
        let (primes, primes_note) = demo_primes(self.real_primes);
        let t_deal = Instant::now();
        let dealt = self
            .dep
            .deal_threshold("acme", 2, &["dc1", "dc2", "dc3"], 2, true, primes)?;
        let threshold_key = hex::encode(&dealt.key.key_id);
        self.steps.ok(
            "threshold-deal",
            format!(
                "dealer acme: 2-of-3 HD key {}… in {:.1} s with {primes_note}; bundles sealed to \
                 dc1-node1, dc2-node1, dc3-node1 and signed by the dealer certificate",
                &threshold_key[..16],
                t_deal.elapsed().as_secs_f64()
            ),
        );
        let mut threshold_sigs = Vec::new();
        let mut threshold_audit = None;
        let threshold_xpub = rt.block_on(async {
            let imports = import_threshold(&self.client, &dealt, &[&self.alice, &self.bob]).await?;
            for v in &imports {
                status_is(v, RequestStatus::Completed, "threshold share import")?;
            }
            let key = self.client.threshold_key(&threshold_key).await?;
            if !key.missing_shares.is_empty() {
                return Err(fail("threshold shares missing after import"));
            }
            let xpub = key
                .xpub
                .clone()
                .ok_or_else(|| fail("threshold key has no xpub"))?;
            self.steps.ok(
                "threshold-import",
                "each cluster's share imported by its first node's TEE (dealer signature, sealing \
                 and alice+bob's approvals checked there)",
            );
            for (i, pair) in [Some(["dc1", "dc2"]), Some(["dc2", "dc3"]), None]
                .into_iter()
                .enumerate()
            {
                let digest: [u8; 32] = rand::random();
                let path = format!("m/0/{i}");
                let t = Instant::now();
                let view = self.client
                    .threshold_sign(&ThresholdSignBody {
                        key_id: threshold_key.clone(),
                        path: path.clone(),
                        digest: hex::encode(digest),
                        message: None,
                        clusters: pair.map(|p| p.iter().map(|c| c.to_string()).collect()),
                        request_id: None,
                        expires_at: None,
                        approvals: Vec::new(),
                    })
                    .await?;
                let view = approve_all(&self.client, view, &[&self.alice, &self.bob]).await?;
                status_is(&view, RequestStatus::Completed, "threshold signing")?;
                let sig = signature_of(&view)?;
                verify_signature(
                    &sig,
                    &digest,
                    &public_child(&xpub, &DerivationPath::from_str(&path)?)?,
                )?;
                let used = sig.clusters.clone().unwrap_or_default();
                self.steps.ok(
                    "threshold-sign",
                    format!(
                        "{} signed {path} in {:.1} s (getAB, getAB_and_R, getR, getSig relayed by \
                         the cloud server); verified against the xpub's child",
                        used.join(" + "),
                        t.elapsed().as_secs_f64()
                    ),
                );
                threshold_sigs.push(json!({
                    "clusters": used, "path": path, "digest": hex::encode(digest),
                    "child_public_key": sig.public_key, "r": sig.r, "s": sig.s, "v": sig.v,
                    "request_id": view.id, "verified": true,
                }));
            }
            // Threshold audit ([0086]): every share-holding cluster signs a fresh 8-byte
            // message's audit digest with the joint root key, in groups of t.
            let audit = self.client.threshold_audit(&threshold_key).await?;
            let bad: Vec<_> = audit.clusters.iter().filter(|c| !c.ok).collect();
            if !bad.is_empty() || audit.sessions.iter().any(|s| !s.verified) {
                return Err(fail(&format!("threshold audit flagged: {audit:?}")));
            }
            self.steps.ok(
                "threshold-audit",
                format!(
                    "{} session(s) over {}: each signed a fresh 8-byte audit message with the joint \
                     root key; all verified",
                    audit.sessions.len(),
                    audit
                        .clusters
                        .iter()
                        .map(|c| c.cluster.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            threshold_audit = Some(serde_json::to_value(&audit)?);
            Ok::<String, AnyError>(xpub)
        })?;
        Ok(json!({
            "key_id": threshold_key,
            "xpub": threshold_xpub,
            "threshold": 2,
            "clusters": ["dc1", "dc2", "dc3"],
            "origin": "dealer",
            "primes": primes_note,
            "signatures": threshold_sigs,
            "audit": threshold_audit,
        }))
    }

    /// Presignatures (online getSig): a 2-of-3 key without chain code (presignatures never
    /// serve HD derivation); pairs of clusters make presignatures ahead of time, each held
    /// only inside their TEEs; a full message is then signed in one short exchange, each TEE
    /// hashing the message itself and deleting its presignature durably before answering.
    pub(super) fn presignatures(&mut self, rt: &Runtime) -> Result<serde_json::Value, AnyError> {
        let (primes, _) = demo_primes(self.real_primes);
        let plain = self
            .dep
            .deal_threshold("acme", 2, &["dc1", "dc2", "dc3"], 2, false, primes)?;
        let plain_key = hex::encode(&plain.key.key_id);
        let mut online_sigs = Vec::new();
        rt.block_on(async {
            for v in import_threshold(&self.client, &plain, &[&self.alice, &self.bob]).await? {
                status_is(&v, RequestStatus::Completed, "threshold share import")?;
            }
            let t = Instant::now();
            let pool = self
                .client
                .make_presignatures(
                    &plain_key,
                    &MakePresignaturesBody {
                        count: 3,
                        clusters: None,
                    },
                )
                .await?;
            if pool.made.len() != 3 || !pool.failed.is_empty() {
                return Err(fail(&format!("presignatures not made: {pool:?}")));
            }
            self.steps.ok(
                "threshold-presign",
                format!(
                    "2-of-3 key {}… without chain code dealt and imported; 3 presignatures made by \
                     {} in {:.1} s, each sealed inside both TEEs",
                    &plain_key[..16],
                    pool.made[0].clusters.join(" + "),
                    t.elapsed().as_secs_f64()
                ),
            );
            let key = PublicKey::from_slice(&plain.key.key_id)?;
            for i in 0..2 {
                let message = format!("custos demo: pay invoice {i} of 0.0{i}5 BTC to bc1qdemo");
                let digest = sha256::Hash::hash(message.as_bytes()).to_byte_array();
                let t = Instant::now();
                let view = self
                    .client
                    .threshold_sign(&ThresholdSignBody {
                        key_id: plain_key.clone(),
                        path: "m".into(),
                        digest: String::new(),
                        message: Some(hex::encode(message.as_bytes())),
                        clusters: None,
                        request_id: None,
                        expires_at: None,
                        approvals: Vec::new(),
                    })
                    .await?;
                let view = approve_all(&self.client, view, &[&self.alice, &self.bob]).await?;
                status_is(&view, RequestStatus::Completed, "online threshold signing")?;
                let sig = signature_of(&view)?;
                verify_signature(&sig, &digest, &key)?;
                let presignature = sig
                    .presignature
                    .clone()
                    .ok_or_else(|| fail("online signing used no presignature"))?;
                self.steps.ok(
                    "threshold-online",
                    format!(
                        "{:?} signed by {} from presignature {}… in {:.0} ms (request, alice's \
                         and bob's approvals, getSig only); verified against the joint key",
                        message,
                        sig.clusters.clone().unwrap_or_default().join(" + "),
                        &presignature[..16],
                        t.elapsed().as_secs_f64() * 1e3
                    ),
                );
                online_sigs.push(json!({
                    "message": message, "digest": hex::encode(digest),
                    "presignature": presignature, "clusters": sig.clusters,
                    "r": sig.r, "s": sig.s, "v": sig.v, "request_id": view.id, "verified": true,
                }));
            }
            let left = self.client.presignatures(&plain_key).await?;
            Ok::<_, AnyError>(json!({
                "key_id": plain_key,
                "threshold": 2,
                "clusters": ["dc1", "dc2", "dc3"],
                "presignatures_made": pool.made,
                "presignatures_left": left.ready.len(),
                "online_signatures": online_sigs,
            }))
        })
    }

    /// Distributed key generation: the three clusters' TEEs make a 2-of-3 HD key together
    /// through the cloud server (key generation, then each TEE's Paillier aux info); no dealer
    /// and no single process ever computes the key. Each TEE gets one primes set first (the
    /// TEST-ONLY fixture, or real safe primes generated now with --real-primes): whoever knows
    /// those primes could learn shares from the signing messages, which the report says.
    pub(super) fn dkg(&mut self, rt: &Runtime) -> Result<serde_json::Value, AnyError> {
        let (_, primes_note) = demo_primes(self.real_primes);
        let t_primes = Instant::now();
        let sets = match demo_primes(self.real_primes).0 {
            PrimeSource::File(f) => read_primes(&f)?,
            PrimeSource::Generate => generate_primes(3, true)?,
        };
        // Every node of a cluster gets its cluster's set, sealed to it: the cloud server names
        // which node makes each share (round-robin), and a cluster's nodes never take part in
        // one session together, so they need not differ.
        for (i, c) in ["dc1", "dc2", "dc3"].iter().enumerate() {
            let nodes = self.dep.cluster(c).map_or(0, |k| k.nodes.len());
            for n in 0..nodes {
                self.dep.provide_tee_primes("acme", c, n, &sets[i])?;
            }
        }
        drop(sets);
        rt.block_on(async {
            wait_healthy(&self.client, &["dc1", "dc2", "dc3"], Duration::from_secs(30)).await?;
            self.steps.ok(
                "threshold-dkg-primes",
                format!(
                    "one Paillier primes set per cluster sealed into each of its nodes' TEEs \
                     ({primes_note}) in {:.1} s",
                    t_primes.elapsed().as_secs_f64()
                ),
            );
            let t = Instant::now();
            let view =
                create_threshold_key(&self.client, &["dc1", "dc2", "dc3"], 2, 2, true, &[&self.alice, &self.bob])
                    .await?;
            status_is(
                &view,
                RequestStatus::Completed,
                "distributed key generation",
            )?;
            let Some(RequestResult::ThresholdKey(made)) = &view.result else {
                return Err(fail("distributed key generation returned no key"));
            };
            let view_anchors = view.anchors.clone();
            let xpub = made
                .xpub
                .clone()
                .ok_or_else(|| fail("the new HD key has no xpub"))?;
            self.steps.ok(
                "threshold-dkg",
                format!(
                    "2-of-3 HD key {}… made by dc1, dc2 and dc3 in {:.1} s (keygen, auxInfo relayed \
                     by the cloud server; alice+bob approved); no dealer, no process computed \
                     the key, but its Paillier primes are {primes_note}; each share's cluster \
                     anchored at its governance log ({} anchors)",
                    &made.key_id[..16],
                    t.elapsed().as_secs_f64(),
                    view_anchors.as_ref().map_or(0, Vec::len)
                ),
            );
            let digest: [u8; 32] = rand::random();
            let path = "m/1/5";
            let t = Instant::now();
            let view = self.client
                .threshold_sign(&ThresholdSignBody {
                    key_id: made.key_id.clone(),
                    path: path.into(),
                    digest: hex::encode(digest),
                    message: None,
                    clusters: Some(vec!["dc3".into(), "dc1".into()]),
                    request_id: None,
                    expires_at: None,
                    approvals: Vec::new(),
                })
                .await?;
            let view = approve_all(&self.client, view, &[&self.alice, &self.bob]).await?;
            status_is(&view, RequestStatus::Completed, "signing with the DKG key")?;
            let sig = signature_of(&view)?;
            verify_signature(
                &sig,
                &digest,
                &public_child(&xpub, &DerivationPath::from_str(path)?)?,
            )?;
            self.steps.ok(
                "threshold-dkg-sign",
                format!(
                    "dc3 + dc1 signed {path} with the DKG key in {:.1} s; verified against the xpub's \
                     child",
                    t.elapsed().as_secs_f64()
                ),
            );
            let steps: Vec<u32> = DerivationPath::from_str(path)?
                .into_iter()
                .map(|c| u32::from(*c))
                .collect();
            let rogue = self.rogue_co_signer(&made.key_id, &steps)?;
            // After the raw signings above: the rules switch the key's raw digests off.
            let psbt = self.threshold_psbt(&made.key_id, &xpub).await?;
            Ok::<_, AnyError>(json!({
                "key_id": made.key_id, "xpub": xpub, "threshold": 2,
                "clusters": ["dc1", "dc2", "dc3"], "origin": "dkg", "request_id": view.id,
                "anchors": view_anchors, "rogue_co_signer": rogue, "psbt": psbt,
                "signature": {
                    "clusters": sig.clusters, "path": path, "digest": hex::encode(digest),
                    "child_public_key": sig.public_key, "r": sig.r, "s": sig.s, "v": sig.v,
                    "verified": true,
                },
            }))
        })
    }
}
