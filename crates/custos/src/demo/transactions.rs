//! The demo's transactions (issue 14): a wallet whose rules the TEE enforces (transactions
//! only, limits with a rolling window counted by one node, an allowlist under a time lock);
//! a PSBT with P2WPKH and P2TR key-path inputs signed under quorum once its intent was
//! approved, finalized and run through miniscript's interpreter; each policy refusal with
//! the full quorum present; and, when anvil and cast are at hand, an EIP-1559 transfer sent
//! by `cast send --unlocked` through `custos eth-signer` to a local anvil and mined.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use bitcoin::psbt::Psbt;
use bitcoin::ScriptBuf;
use custos_cloud_api::{
    AllowEntryView, AllowlistView, KeyPolicyBody, PolicyRules, SignPsbtBody, SpendLimitView,
};
use custos_tx::synthetic::Spend;
use custos_tx::InputKind;
use miniscript::psbt::PsbtExt;

use super::*;

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A regtest P2WSH script of `byte` (nobody's) and its address.
pub(super) fn outside(byte: u8) -> Result<(ScriptBuf, String), AnyError> {
    let script = ScriptBuf::new_p2wsh(&bitcoin::WScriptHash::from_raw_hash(
        bitcoin::hashes::Hash::from_byte_array([byte; 32]),
    ));
    let address = custos_tx::btc::address_of(script.as_bytes(), "regtest")
        .ok_or_else(|| fail("a P2WSH script without address"))?;
    Ok((script, address))
}

const BOB_ETH: &str = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";

impl Demo {
    /// The PSBT of `xpub`'s wallet paying `sat` to `to` from a 300 000 sat P2WPKH and a
    /// 300 000 sat P2TR input, the rest but 1 000 sat of fee back as change.
    pub(super) fn psbt(xpub: &str, to: ScriptBuf, sat: u64) -> String {
        let psbt = Spend::from(xpub)
            .input(InputKind::P2wpkh, &[0, 1], 300_000)
            .input(InputKind::P2trKeyPath, &[0, 2], 300_000)
            .pay(to, sat)
            .change(&[1, 0], 600_000 - sat - 1_000)
            .psbt();
        use bitcoin::base64::Engine;
        bitcoin::base64::engine::general_purpose::STANDARD.encode(psbt.serialize())
    }

    /// A PSBT request of `root` for `psbt`, approved by alice and bob.
    async fn psbt_approved(&self, root: &str, psbt: String) -> Result<RequestView, AnyError> {
        let view = self.psbt_request(root, psbt).await?;
        approve_all(&self.client, view, &[&self.alice, &self.bob]).await
    }

    /// A dc1 wallet of `group`, quorum 2, under `rules`, executed by `executor` (else the
    /// server's choice), approved by alice and bob: its root id and xpub.
    pub(super) async fn ruled_wallet(
        &self,
        rules: &PolicyRules,
        group: Vec<String>,
        executor: Option<String>,
    ) -> Result<(String, String), AnyError> {
        let view = self
            .client
            .create_wallet(&CreateWalletBody {
                rules: Some(rules.clone()),
                cluster: "dc1".into(),
                quorum: 2,
                group,
                executor,
                request_id: None,
                expires_at: None,
                approvals: vec![],
            })
            .await?;
        let view = approve_all(&self.client, view, &[&self.alice, &self.bob]).await?;
        status_is(&view, RequestStatus::Completed, "wallet with rules")?;
        wallet_of(&view)
    }

    /// A PSBT request of `root` for `psbt` (regtest), not yet approved.
    pub(super) async fn psbt_request(
        &self,
        root: &str,
        psbt: String,
    ) -> Result<RequestView, AnyError> {
        Ok(self
            .client
            .sign_psbt(&SignPsbtBody {
                root_id: root.into(),
                network: "regtest".into(),
                psbt,
                clusters: None,
                request_id: None,
                expires_at: None,
                approvals: vec![],
            })
            .await?)
    }

    /// The refusal of `view`: its code and message, which must name `rule`.
    fn refused_by(view: &RequestView, rule: &str) -> Result<serde_json::Value, AnyError> {
        let e = view
            .error
            .as_ref()
            .filter(|e| {
                view.status == RequestStatus::Refused
                    && (e.code.contains(rule) || e.message.contains(rule))
            })
            .ok_or_else(|| {
                fail(&format!(
                    "request {} not refused by {rule}: {view:?}",
                    view.id
                ))
            })?;
        Ok(json!({ "request_id": view.id, "code": e.code, "rule": rule, "message": e.message }))
    }

    /// A PSBT signed with the DKG key `key_id` by two of its clusters: its group (alice and
    /// bob) gives it rules for every cluster (transactions only, 500 000 sat per
    /// transaction); a PSBT with P2WPKH and P2SH-P2WPKH inputs is approved as its intent and
    /// signed one session per input, each TEE checking the PSBT and its share's policy, then
    /// finalized; one over the limit is refused by the TEEs. Returns its part of the report.
    pub(super) async fn threshold_psbt(
        &mut self,
        key_id: &str,
        xpub: &str,
    ) -> Result<serde_json::Value, AnyError> {
        let rules = PolicyRules {
            transactions_only: true,
            spend_limits: vec![SpendLimitView {
                asset: "bitcoin:regtest".into(),
                per_transaction: "500000".into(),
                window_secs: 0,
                per_window: "500000".into(),
                count_per_window: 1,
            }],
            ..PolicyRules::default()
        };
        let group = [&self.alice, &self.bob]
            .map(|a| hex::encode(a.key_fingerprint()))
            .to_vec();
        let change = self
            .client
            .set_threshold_key_policy(
                key_id,
                &KeyPolicyBody {
                    rules: Some(rules),
                    group,
                    quorum: 2,
                    request_id: None,
                    expires_at: None,
                },
            )
            .await?;
        let change = approve_all(&self.client, change, &[&self.alice, &self.bob]).await?;
        status_is(
            &change,
            RequestStatus::Completed,
            "the threshold key's rules",
        )?;
        let (to, _) = outside(9)?;
        let psbt = |sat: u64| {
            let psbt = Spend::from(xpub)
                .input(InputKind::P2wpkh, &[0, 1], 300_000)
                .input(InputKind::P2shP2wpkh, &[0, 2], 300_000)
                .pay(to.clone(), sat)
                .change(&[1, 0], 600_000 - sat - 1_000)
                .psbt();
            use bitcoin::base64::Engine;
            bitcoin::base64::engine::general_purpose::STANDARD.encode(psbt.serialize())
        };
        let t = Instant::now();
        let signed = self.psbt_approved(key_id, psbt(250_000)).await?;
        status_is(&signed, RequestStatus::Completed, "the threshold PSBT")?;
        let took = t.elapsed();
        let Some(RequestResult::Psbt(result)) = &signed.result else {
            return Err(fail("the threshold PSBT request produced no PSBT"));
        };
        let mut finalized: Psbt = result.psbt.parse()?;
        finalized
            .finalize_mut(&Secp256k1::verification_only())
            .map_err(|e| fail(&format!("the signed PSBT does not finalize: {e:?}")))?;
        let tx = finalized.extract_tx()?;
        let over = self.psbt_approved(key_id, psbt(550_000)).await?;
        let refusal = Self::refused_by(&over, "transaction_limit")?;
        self.steps.ok(
            "threshold-psbt",
            format!(
                "DKG key {}… given rules by alice and bob on every cluster (transactions only, \
                 500 000 sat per transaction): a PSBT with P2WPKH and P2SH-P2WPKH inputs paying \
                 250 000 sat approved as its intent and signed by two clusters in {:.1} s (one \
                 session per input, each TEE checking the PSBT and its share's policy), \
                 finalized and checked by miniscript's interpreter (txid {}); 550 000 sat \
                 refused by the TEEs (transaction_limit)",
                &key_id[..16],
                took.as_secs_f64(),
                tx.compute_txid()
            ),
        );
        Ok(json!({
            "key_id": key_id,
            "rules_request": change.id,
            "request_id": signed.id,
            "intent": signed.transaction.as_ref().map(|t| t.intent.clone()),
            "intent_hash": result.intent_hash,
            "txid": tx.compute_txid().to_string(),
            "refusal": refusal,
        }))
    }

    /// The step; returns its part of the report.
    pub(super) async fn transactions(&mut self) -> Result<serde_json::Value, AnyError> {
        let chain = self.dep.node_chain("dc1", 0)?;
        let holder = hex::encode(custos_pki::cert_key_fingerprint(&chain.device)?);
        let (to_a, a) = outside(7)?;
        let (to_b, _) = outside(8)?;
        let limit =
            |asset: &str, max: &str, window: u64, per_window: &str, count: u32| SpendLimitView {
                asset: asset.into(),
                per_transaction: max.into(),
                window_secs: window,
                per_window: per_window.into(),
                count_per_window: count,
            };
        let entry = |asset: &str, destination: &str| AllowEntryView {
            asset: asset.into(),
            destination: destination.into(),
            not_before: 0,
        };
        let rules = PolicyRules {
            transactions_only: true,
            spend_limits: vec![
                limit("bitcoin:regtest", "500000", 3600, "600000", 3),
                limit(
                    "ethereum:31337",
                    "2000000000000000000",
                    0,
                    "2000000000000000000",
                    1,
                ),
            ],
            velocity_holder: Some(holder.clone()),
            velocity_share: None,
            allowlist: Some(AllowlistView {
                time_lock_secs: 86_400,
                entries: vec![
                    entry("bitcoin:regtest", &a),
                    entry("ethereum:31337", BOB_ETH),
                ],
            }),
            approval_tiers: vec![],
        };
        let group = [&self.alice, &self.bob, &self.carol]
            .map(|a| hex::encode(a.key_fingerprint()))
            .to_vec();
        let (root, xpub) = self
            .ruled_wallet(&rules, group.clone(), Some(holder.clone()))
            .await?;

        // Signed under quorum: the intent approved is the TEE's; every input verifies.
        let signed = self
            .psbt_approved(&root, Self::psbt(&xpub, to_a.clone(), 250_000))
            .await?;
        status_is(&signed, RequestStatus::Completed, "PSBT")?;
        let Some(RequestResult::Psbt(result)) = &signed.result else {
            return Err(fail("the PSBT request produced no PSBT"));
        };
        let mut psbt: Psbt = result.psbt.parse()?;
        psbt.finalize_mut(&Secp256k1::verification_only())
            .map_err(|e| fail(&format!("the signed PSBT does not finalize: {e:?}")))?;
        let tx = psbt.extract_tx()?;
        let intent = signed
            .transaction
            .as_ref()
            .map(|t| t.intent.clone())
            .unwrap_or_default();
        self.steps.ok(
            "psbt",
            format!(
                "wallet {}… (rules: transactions only, 500 000 sat per transaction, 600 000 sat \
                 or 3 transactions an hour counted by dc1-node1, allowlist under a 24 h lock): a \
                 PSBT with P2WPKH and P2TR key-path inputs paying 250 000 sat was shown to \
                 alice and bob as its intent, signed by dc1-node1, finalized and each input \
                 checked by miniscript's interpreter (txid {})",
                &root[..16],
                tx.compute_txid()
            ),
        );

        // Each refusal with the full quorum present.
        let mut refusals = Vec::new();
        let off_list = self
            .psbt_approved(&root, Self::psbt(&xpub, to_b, 100_000))
            .await?;
        refusals.push(Self::refused_by(&off_list, "not_allowlisted")?);
        let over = self
            .psbt_approved(&root, Self::psbt(&xpub, to_a.clone(), 550_000))
            .await?;
        refusals.push(Self::refused_by(&over, "transaction_limit")?);
        let window = self
            .psbt_approved(&root, Self::psbt(&xpub, to_a, 400_000))
            .await?;
        refusals.push(Self::refused_by(&window, "window_amount")?);
        let digest = self
            .client
            .sign(&SignRequestBody {
                root_id: root.clone(),
                path: "m/0/1".into(),
                digest: "44".repeat(32),
                request_id: None,
                expires_at: None,
                approvals: vec![],
            })
            .await?;
        let digest = approve_all(&self.client, digest, &[&self.alice, &self.bob]).await?;
        refusals.push(Self::refused_by(&digest, "raw_signing_off")?);
        let mut early = rules.clone();
        if let Some(list) = early.allowlist.as_mut() {
            list.entries.push(AllowEntryView {
                asset: "bitcoin:regtest".into(),
                destination: outside(9)?.1,
                not_before: custos_pki::clock::now_unix(),
            });
        }
        let change = self
            .client
            .set_wallet_policy(
                &root,
                &KeyPolicyBody {
                    rules: Some(early),
                    group,
                    quorum: 2,
                    request_id: None,
                    expires_at: None,
                },
            )
            .await?;
        let change = approve_all(&self.client, change, &[&self.alice, &self.bob]).await?;
        refusals.push(Self::refused_by(&change, "time lock")?);
        self.steps.ok(
            "policy refusals",
            "with alice and bob approving each: a destination off the allowlist, 550 000 sat \
             over the per-transaction limit, 400 000 sat over what the window has left, a raw \
             digest, an allowlist entry payable before the 24 h lock ends — each refused by \
             the TEE, naming its rule",
        );
        let tier_group = self.tier_group().await?;
        let ethereum = self.ethereum(&root).await?;
        Ok(json!({
            "tier_group": tier_group,
            "wallet": root,
            "rules": rules,
            "psbt": {
                "request_id": signed.id,
                "intent_hash": result.intent_hash,
                "intent": intent,
                "signed_psbt": result.psbt,
                "txid": tx.compute_txid().to_string(),
                "verified": "finalized; every input run by miniscript's interpreter",
            },
            "refusals": refusals,
            "ethereum": ethereum,
        }))
    }

    /// An EIP-1559 transfer by `cast send --unlocked` through `custos eth-signer` to a local
    /// anvil, approved by alice and bob; skipped (and said so) without anvil and cast.
    async fn ethereum(&mut self, root: &str) -> Result<serde_json::Value, AnyError> {
        let Some((anvil_bin, cast_bin)) = custos::foundry::anvil_and_cast() else {
            let why = "skipped: anvil and cast (npm) are not installed and npm could not \
                       install them (bash scripts/test-deps.sh installs them)";
            self.steps.ok("ethereum", why);
            return Ok(json!({ "skipped": why }));
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let _anvil = Running(custos::foundry::start_anvil(&anvil_bin, port)?);
        let anvil = format!("http://127.0.0.1:{port}");
        let rpc = |url: String, method: &'static str, params: serde_json::Value| async move {
            let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
            let answer: serde_json::Value = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await?
                .json()
                .await?;
            Ok::<_, AnyError>(answer)
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while rpc(anvil.clone(), "eth_chainId", json!([])).await.is_err() {
            if Instant::now() > deadline {
                return Err(fail("anvil did not answer"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut signer = Command::new(std::env::current_exe()?)
            .args([
                "eth-signer",
                "--listen",
                "127.0.0.1:0",
                "--downstream",
                &anvil,
            ])
            .args(["--root", root, "--wait", "120"])
            .env("CUSTOS_API_URL", &self.dep.api_url)
            .env("CUSTOS_API_TOKEN", &self.dep.api_token)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(signer.stdout.take().ok_or_else(|| fail("signer output"))?)
            .read_line(&mut line)?;
        let _signer = Running(signer);
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| fail(&format!("the signer said {line:?}")))?
            .to_string();
        let accounts = rpc(url.clone(), "eth_accounts", json!([])).await?;
        let from = accounts["result"][0]
            .as_str()
            .ok_or_else(|| fail("no account"))?
            .to_string();
        rpc(
            anvil.clone(),
            "anvil_setBalance",
            json!([from, "0x56bc75e2d63100000"]),
        )
        .await?;
        let cast = {
            let (url, from) = (url.clone(), from.clone());
            tokio::task::spawn_blocking(move || {
                Command::new(cast_bin)
                    .args([
                        "send",
                        "--json",
                        "--unlocked",
                        "--from",
                        &from,
                        "--rpc-url",
                        &url,
                    ])
                    .args(["--value", "1ether", BOB_ETH])
                    .output()
            })
        };
        // Approve the request the signer makes, after reading its intent.
        let deadline = Instant::now() + Duration::from_secs(120);
        let approved = loop {
            let pending = self
                .client
                .requests(&custos_cloud_api::RequestQuery {
                    status: Some(RequestStatus::PendingApproval),
                    kind: Some(custos_cloud_api::RequestKind::SignEthereum),
                    limit: None,
                })
                .await?;
            if let Some(v) = pending.requests.first() {
                let v = self.client.request(&v.id).await?;
                break approve_all(&self.client, v, &[&self.alice, &self.bob]).await?;
            }
            if Instant::now() > deadline {
                return Err(fail("the signer made no request"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let out = cast.await??;
        let receipt: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|_| fail(&String::from_utf8_lossy(&out.stderr)))?;
        if receipt["status"] != "0x1" {
            return Err(fail(&format!("the transfer was not mined: {receipt}")));
        }
        let hash = receipt["transactionHash"].as_str().unwrap_or_default();
        let mined = rpc(anvil.clone(), "eth_getTransactionByHash", json!([hash])).await?;
        if !mined["result"]["from"]
            .as_str()
            .is_some_and(|f| f.eq_ignore_ascii_case(&from))
        {
            return Err(fail("anvil recovered another sender"));
        }
        self.steps.ok(
            "ethereum",
            format!(
                "`cast send --unlocked --from {from}` through custos eth-signer: 1 ether to an \
                 allowlisted address on a local anvil (chain 31337), EIP-1559, its intent \
                 approved by alice and bob, mined (transaction {hash}), sender recovered by \
                 anvil"
            ),
        );
        Ok(json!({
            "from": from,
            "transaction_hash": hash,
            "request_id": approved.id,
            "intent": approved.transaction.map(|t| t.intent),
            "receipt_status": receipt["status"],
        }))
    }
}
