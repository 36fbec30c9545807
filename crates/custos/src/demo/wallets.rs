//! The demo's steps over BIP-32 wallets: provisioning, creation under quorum, import of a
//! mnemonic, sync, public derivation, signing through the full path, quorum, audits, and a
//! node killed while requests are still served.

use super::*;

impl Demo {
    /// Every node of every cluster registered, healthy, certified.
    pub(super) async fn provisioning(&mut self) -> Result<(), AnyError> {
        for c in ["dc1", "dc2", "dc3"] {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let st = self.client.cluster(c).await?;
                if st.nodes.len() == 3 && st.nodes.iter().all(|n| n.healthy) {
                    let names: Vec<_> = st.nodes.iter().map(|n| n.node.clone()).collect();
                    self.steps.ok(
                        "provisioning",
                        format!(
                            "{c}: {} healthy, device keys certified by the Cluster CA",
                            names.join(", ")
                        ),
                    );
                    break;
                }
                if Instant::now() > deadline {
                    return Err(fail(&format!("{c} nodes not all healthy: {st:?}")));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// The approver group of the demo's wallets: alice, bob and carol, by the fingerprints
    /// of their certified keys (hex).
    fn admin_group(&self) -> Result<Vec<String>, AnyError> {
        ["alice", "bob", "carol"]
            .iter()
            .map(|a| Ok(hex::encode(self.dep.admin(a)?.key_fingerprint())))
            .collect()
    }

    /// Wallet creation under quorum of the group alice, bob, carol: dc1 needs two of them
    /// (alice and bob approve), dc2 one (alice). The cloud server names the node that makes
    /// each wallet in what the admins approve.
    pub(super) async fn create_wallets(&mut self) -> Result<(), AnyError> {
        let group = self.admin_group()?;
        for (cluster, quorum, signers) in [
            ("dc1", 2u8, vec![&self.alice, &self.bob]),
            ("dc2", 1u8, vec![&self.alice]),
        ] {
            let view = self
                .client
                .create_wallet(&CreateWalletBody {
                    rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
                    cluster: cluster.into(),
                    quorum,
                    group: group.clone(),
                    executor: None,
                    request_id: None,
                    expires_at: None,
                    approvals: Vec::new(),
                })
                .await?;
            let executor = view.target_node.clone().unwrap_or_default();
            let view = approve_all(&self.client, view, &signers).await?;
            status_is(&view, RequestStatus::Completed, "wallet creation")?;
            let (root_id, xpub) = wallet_of(&view)?;
            self.steps.ok(
                "create-wallet",
                format!(
                    "{cluster}: {quorum} of the group alice/bob/carol, made by {executor} only, \
                     root {}…, {}…",
                    &root_id[..16],
                    &xpub[..20]
                ),
            );
            self.wallets.push(Wallet {
                cluster: cluster.into(),
                root_id,
                xpub,
                quorum,
                origin: "created",
            });
        }
        Ok(())
    }

    /// Import from a BIP-39 mnemonic: sealed by the cloud server to one node's device key; the
    /// root xpub must be the one the mnemonic yields.
    pub(super) async fn import_wallet(&mut self) -> Result<(), AnyError> {
        let view = self
            .client
            .import_wallet(&ImportWalletBody {
                cluster: "dc1".into(),
                quorum: 1,
                mnemonic: Some(SecretText::new(DEMO_MNEMONIC)),
                passphrase: None,
                seed_hex: None,
                request_id: None,
                expires_at: None,
                approvals: Vec::new(),
                // dc1 is governed: the imported wallet gets its approver group too, and
                // signs raw digests below (asked for, as its approvers read).
                group: Some(self.admin_group()?),
                rules: Some(custos_cloud_api::PolicyRules::raw_digests()),
            })
            .await?;
        let target = view.target_node.clone().unwrap_or_default();
        let view = approve_all(&self.client, view, &[&self.alice]).await?;
        status_is(&view, RequestStatus::Completed, "wallet import")?;
        let (root_id, xpub) = wallet_of(&view)?;
        let seed = bip39::Mnemonic::parse_normalized(DEMO_MNEMONIC)?.to_seed("");
        let secp = Secp256k1::new();
        let expected =
            Xpub::from_priv(&secp, &Xpriv::new_master(bitcoin::Network::Bitcoin, &seed)?);
        if xpub != expected.to_string() {
            return Err(fail("imported wallet's xpub differs from the mnemonic's"));
        }
        self.steps.ok(
        "import-wallet",
        format!("dc1: BIP-39 mnemonic sealed (HPKE) to {target}'s device key, imported under the group alice/bob/carol (1 of them); root xpub matches the mnemonic"),
    );
        self.wallets.push(Wallet {
            cluster: "dc1".into(),
            root_id,
            xpub,
            quorum: 1,
            origin: "imported",
        });
        Ok(())
    }

    /// Every node of each cluster holds every wallet of its cluster.
    pub(super) async fn sync(&mut self) -> Result<(), AnyError> {
        for c in ["dc1", "dc2"] {
            let want = self.wallets.iter().filter(|w| w.cluster == c).count() as u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let st = self.client.cluster(c).await?;
                if st.nodes.iter().all(|n| n.keys_held >= want) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(fail(&format!("{c} not synced to {want} keys: {st:?}")));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            self.steps.ok(
                "sync",
                format!("{c}: all 3 nodes hold its {want} wallet(s)"),
            );
        }
        Ok(())
    }

    /// Public derivation without any TEE.
    pub(super) async fn derive(&mut self) -> Result<(), AnyError> {
        let w = &self.wallets[0];
        let d = self
            .client
            .derive(
                &w.root_id,
                &DeriveQuery {
                    path: Some("m/0".into()),
                    start: Some(0),
                    count: Some(3),
                },
            )
            .await?;
        let local = public_child(&w.xpub, &DerivationPath::from_str("m/0/2")?)?;
        let listed = d
            .addresses
            .as_ref()
            .and_then(|a| a.get(2))
            .ok_or_else(|| fail("no address list"))?;
        if listed.public_key != hex::encode(local.serialize()) {
            return Err(fail("derived public key differs from local derivation"));
        }
        self.steps.ok(
            "derive",
            format!(
                "dc1 wallet m/0/0..2 from the xpub, no TEE: {}",
                listed.address
            ),
        );
        Ok(())
    }

    /// Signing through the full path, with approvals.
    pub(super) async fn sign(&mut self) -> Result<(), AnyError> {
        let seed = bip39::Mnemonic::parse_normalized(DEMO_MNEMONIC)?.to_seed("");
        let secp = Secp256k1::new();
        let jobs: Vec<(usize, &str, [u8; 32], &'static str)> = vec![
            (
                0,
                "m/0/7",
                [0x11; 32],
                "quorum 2 (alice, bob), non-hardened path",
            ),
            (
                0,
                "m/44'/0'/0'/0/0",
                [0x12; 32],
                "quorum 2, hardened BIP-44 path",
            ),
            (1, "m/0/0", [0x21; 32], "dc2 via the spool link"),
            (
                2,
                "m/84'/0'/0'/0/0",
                [0x31; 32],
                "imported wallet, BIP-84 path",
            ),
        ];
        for (wi, path, digest, note) in jobs {
            let w = &self.wallets[wi];
            let signers: Vec<&AdminSigner> = [&self.alice, &self.bob][..w.quorum as usize].to_vec();
            let (view, sig) =
                sign_approved(&self.client, &w.root_id, path, digest, &signers).await?;
            let dpath = DerivationPath::from_str(path)?;
            let expected = if w.origin == "imported" {
                // The demo knows this seed: check even hardened paths independently.
                let xprv = Xpriv::new_master(bitcoin::Network::Bitcoin, &seed)?
                    .derive_priv(&secp, &dpath)?;
                PublicKey::from_secret_key(&secp, &xprv.private_key)
            } else if dpath.into_iter().any(|c| c.is_hardened()) {
                // Hardened: only the signer's own answer names the key; the signature must
                // still verify and recover to it.
                PublicKey::from_slice(&hex::decode(&sig.public_key)?)?
            } else {
                public_child(&w.xpub, &dpath)?
            };
            verify_signature(&sig, &digest, &expected)?;
            self.steps.ok(
                "sign",
                format!(
                    "{} {path}: {note}; verified (ECDSA, low-s, key recovery)",
                    w.cluster
                ),
            );
            self.signed.push(Signed {
                cluster: w.cluster.clone(),
                root_id: w.root_id.clone(),
                path: path.into(),
                digest,
                sig,
                request_id: view.id.clone(),
                note,
            });
        }
        Ok(())
    }

    /// One approval of two leaves the request pending; it is never signed.
    pub(super) async fn quorum(&mut self) -> Result<(), AnyError> {
        let w = &self.wallets[0];
        let pending = self
            .client
            .sign(&SignRequestBody {
                root_id: w.root_id.clone(),
                path: "m/0/8".into(),
                digest: hex::encode([0x13; 32]),
                request_id: None,
                expires_at: None,
                approvals: Vec::new(),
            })
            .await?;
        let pending = approve(&self.client, &self.alice, &pending.id).await?;
        status_is(
            &pending,
            RequestStatus::PendingApproval,
            "one of two approvals",
        )?;
        if pending.result.is_some() || pending.attempts != 0 {
            return Err(fail("a request without quorum reached a TEE"));
        }
        self.steps.ok(
            "quorum",
            "1 of 2 approvals: request stays pending, never submitted",
        );
        Ok(())
    }

    /// Audit through the cloud server: every key on every node signs a fresh message.
    pub(super) async fn audit(&mut self) -> Result<(), AnyError> {
        for c in ["dc1", "dc2"] {
            let a = self.client.run_audit(c).await?;
            let bad: Vec<_> = a.nodes.iter().filter(|n| !audit_clean(n)).collect();
            if !bad.is_empty() || a.nodes.len() != 3 {
                return Err(fail(&format!("audit of {c} flagged nodes: {a:?}")));
            }
            let checked: u64 = a.nodes.iter().map(|n| n.checked).sum();
            self.steps.ok(
                "audit",
                format!("{c}: {checked} key checks on 3 nodes, all verified against the key list"),
            );
            self.audits.push(serde_json::to_value(&a)?);
        }
        Ok(())
    }

    /// A node killed (server and TEE): the cluster still serves.
    pub(super) fn node_killed(&mut self, rt: &Runtime) -> Result<(), AnyError> {
        {
            let c = self.dep.cluster_mut("dc1").ok_or_else(|| fail("no dc1"))?;
            c.kill_node_server(0);
            c.kill_tee(0);
        }
        rt.block_on(async {
            let w = &self.wallets[0];
            let digest = [0x14u8; 32];
            let view = self
                .client
                .sign(&SignRequestBody {
                    root_id: w.root_id.clone(),
                    path: "m/0/9".into(),
                    digest: hex::encode(digest),
                    request_id: None,
                    expires_at: None,
                    approvals: Vec::new(),
                })
                .await?;
            let view = approve_all(&self.client, view, &[&self.alice, &self.bob]).await?;
            status_is(&view, RequestStatus::Completed, "signing with a node down")?;
            let sig = signature_of(&view)?;
            verify_signature(
                &sig,
                &digest,
                &public_child(&w.xpub, &DerivationPath::from_str("m/0/9")?)?,
            )?;
            self.steps.ok(
                "node-killed",
                "dc1-node1 (server and TEE) killed; request served by another node, verified",
            );
            self.signed.push(Signed {
                cluster: w.cluster.clone(),
                root_id: w.root_id.clone(),
                path: "m/0/9".into(),
                digest,
                sig,
                request_id: view.id.clone(),
                note: "served with dc1-node1 down",
            });
            Ok::<(), AnyError>(())
        })
    }
}
