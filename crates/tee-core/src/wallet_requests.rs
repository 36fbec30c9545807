//! The wallet requests: create, import (plain or sealed to this node) and sign, each under
//! its admin quorum.

use custos_wire::approval::{Action, Approval};
use custos_wire::governance::device_key_fingerprint;
use custos_wire::import;
use custos_wire::policy::KeyPolicy;
use custos_wire::protocol::*;
use zeroize::Zeroizing;

use crate::approval::Who;
use crate::platform::{Platform, RecordId};
use crate::policy_requests::{check_key_kind, check_new_policy};
use crate::wallet::{key_hex, Wallet};
use crate::{replayed, storage, TeeCore, Undo, WALLET_PREFIX};

/// A new wallet's policy: valid at version 1, and without a threshold key's rules (a
/// wallet spans no clusters to anchor, no shares to count by).
fn check_wallet_policy(policy: &KeyPolicy) -> Result<(), TeeError> {
    check_new_policy(policy)?;
    check_key_kind(policy, None)
}

impl<P: Platform> TeeCore<P> {
    pub(crate) fn wallet(&self, key_id: &[u8]) -> Result<&Wallet, TeeError> {
        if let Some(w) = self.wallets.get(key_id) {
            return Ok(w);
        }
        let hex = key_hex(key_id);
        match self.corrupt.get(&format!("{WALLET_PREFIX}{hex}")) {
            Some(reason) => Err(TeeError::KeyRecordCorrupt {
                key: hex,
                reason: reason.clone(),
            }),
            None => Err(TeeError::UnknownKey(hex)),
        }
    }

    pub(crate) fn store_wallet(&mut self, wallet: Wallet) -> Outcome {
        let hex = key_hex(&wallet.info.key_id);
        // One key id, one key: a wallet under a threshold key's id would be read with the
        // share's policy, or the share with the wallet's.
        if self.wallets.contains_key(&wallet.info.key_id)
            || self.threshold.keys.contains_key(&wallet.info.key_id)
        {
            return Err(TeeError::KeyExists(hex));
        }
        let id = RecordId::new(format!("{WALLET_PREFIX}{hex}")).map_err(storage)?;
        // Pending until the batch commits; no response leaves before that.
        self.platform
            .seal(&id, &wallet.to_record())
            .map_err(storage)?;
        let info = wallet.info.clone();
        self.journal
            .push((self.current, Undo::Wallet(info.key_id.clone())));
        self.wallets.insert(info.key_id.clone(), wallet);
        Ok(Response::Wallet(info))
    }

    pub(crate) fn create_wallet(
        &mut self,
        meta: &RequestMeta,
        quorum: u8,
        approvals: &[Approval],
    ) -> Outcome {
        Self::check_quorum_value(quorum)?;
        // Whoever creates a key under an m-of-k policy must meet that policy themselves.
        self.approve(meta, Action::CreateWallet { quorum }, approvals, quorum)?;
        if let Some(made) = self.first_made(meta)? {
            return self.first_wallet(meta, &made, Origin::Generated, quorum, None);
        }
        // A repeat above still answers the wallet made before the cluster was governed.
        if self.gov.is_some() {
            return Err(TeeError::LegacyRequest(
                "CreateWallet names no approver group and no executing node; a governed \
                 cluster creates wallets with CreateGroupWallet"
                    .into(),
            ));
        }
        let mut seed = Zeroizing::new(vec![0u8; 32]);
        self.platform.random(&mut seed).map_err(storage)?;
        let wallet = Wallet::from_seed(
            &self.secp,
            seed,
            quorum,
            Origin::Generated,
            self.platform.now_unix(),
        )?;
        self.consume_request(meta, Some(&wallet.info.key_id))?;
        self.store_wallet(wallet)
    }

    /// Creates a wallet whose approver group is fixed now, by a quorum of that very group,
    /// on the one node the approvals name.
    pub(crate) fn create_group_wallet(
        &mut self,
        meta: &RequestMeta,
        policy: &KeyPolicy,
        executor: &[u8; 32],
        approvals: &[Approval],
    ) -> Outcome {
        check_wallet_policy(policy)?;
        let (own, _) = self.identity()?;
        let this_node = device_key_fingerprint(&own.public_key).unwrap_or([0; 32]);
        if *executor != this_node {
            return Err(TeeError::NotExecutor {
                executor: *executor,
                this_node,
            });
        }
        let who = Who::Group {
            group: policy.group.clone(),
            quorum: policy.quorum,
        };
        let action = Action::CreateGroupWallet { policy, executor };
        self.approve_by(meta, action, approvals, who)?;
        if let Some(made) = self.first_made(meta)? {
            let first = self.first_wallet(meta, &made, Origin::Generated, policy.quorum, None)?;
            if self.wallet(&made)?.policy.as_ref() != Some(policy) {
                return Err(replayed(
                    meta,
                    format!("it made wallet {} under another policy", key_hex(&made)),
                ));
            }
            return Ok(first);
        }
        let mut seed = Zeroizing::new(vec![0u8; 32]);
        self.platform.random(&mut seed).map_err(storage)?;
        let wallet = Wallet::from_seed(
            &self.secp,
            seed,
            policy.quorum,
            Origin::Generated,
            self.platform.now_unix(),
        )?
        .with_policy(policy.clone());
        self.consume_request(meta, Some(&wallet.info.key_id))?;
        self.store_wallet(wallet)
    }

    /// The answer to an approved wallet request whose id was used already: the wallet it
    /// made, never a second one. The repeat must ask for what the first made (a wallet of
    /// that origin and quorum, and for an import that key); anything else is another
    /// request under a used id, refused naming the difference.
    fn first_wallet(
        &self,
        meta: &RequestMeta,
        made: &[u8],
        origin: Origin,
        quorum: u8,
        key_id: Option<&[u8]>,
    ) -> Outcome {
        if self.threshold.keys.contains_key(made) {
            return Err(replayed(
                meta,
                format!("it made threshold key {}", key_hex(made)),
            ));
        }
        let info = &self.wallet(made)?.info;
        let asked = match key_id {
            Some(k) => format!("an import of key {} with quorum {quorum}", key_hex(k)),
            None => format!("a new wallet with quorum {quorum}"),
        };
        if info.origin != origin || info.quorum != quorum || key_id.is_some_and(|k| k != made) {
            return Err(replayed(
                meta,
                format!(
                    "it made wallet {} ({:?}, quorum {}), this repeat asks for {asked}",
                    key_hex(made),
                    info.origin,
                    info.quorum
                ),
            ));
        }
        Ok(Response::Wallet(info.clone()))
    }

    pub(crate) fn import_wallet(
        &mut self,
        meta: &RequestMeta,
        quorum: u8,
        key_id: &[u8],
        secret: &ImportSecret,
        approvals: &[Approval],
    ) -> Outcome {
        self.approve_import(meta, quorum, key_id, approvals)?;
        if let Some(made) = self.first_made(meta)? {
            return self.first_wallet(meta, &made, Origin::Imported, quorum, Some(key_id));
        }
        self.refuse_legacy_import("ImportWallet")?;
        self.store_import(meta, quorum, key_id, secret, None)
    }

    /// As [`Self::import_wallet`], with the secret sealed to this node. Approvals are checked
    /// before anything is decrypted, so an unapproved caller gets no answer about the
    /// ciphertext. The context uses this node's certified cluster and node names, so a
    /// ciphertext made for another node, or for other approved terms, does not open. A
    /// repeat of an import done here answers its wallet without opening anything.
    pub(crate) fn import_wallet_sealed(
        &mut self,
        meta: &RequestMeta,
        quorum: u8,
        key_id: &[u8],
        sealed: &import::SealedImport,
        approvals: &[Approval],
    ) -> Outcome {
        self.approve_import(meta, quorum, key_id, approvals)?;
        if let Some(made) = self.first_made(meta)? {
            return self.first_wallet(meta, &made, Origin::Imported, quorum, Some(key_id));
        }
        self.refuse_legacy_import("ImportWalletSealed")?;
        let (own, _) = self.identity()?;
        let context = import::import_context(&own.cluster, &own.node, meta, quorum, key_id);
        let secret = self.open_sealed_import(&context, sealed)?;
        self.store_import(meta, quorum, key_id, &secret, None)
    }

    /// Imports a wallet whose approver group is fixed now, approved by a quorum of that very
    /// group (as a group wallet's creation is); the seed is sealed to this node.
    pub(crate) fn import_group_wallet_sealed(
        &mut self,
        meta: &RequestMeta,
        policy: &KeyPolicy,
        key_id: &[u8],
        sealed: &import::SealedImport,
        approvals: &[Approval],
    ) -> Outcome {
        check_wallet_policy(policy)?;
        let who = Who::Group {
            group: policy.group.clone(),
            quorum: policy.quorum,
        };
        self.approve_by(
            meta,
            Action::ImportGroupWallet { policy, key_id },
            approvals,
            who,
        )?;
        let quorum = policy.quorum;
        if let Some(made) = self.first_made(meta)? {
            let first = self.first_wallet(meta, &made, Origin::Imported, quorum, Some(key_id))?;
            if self.wallet(&made)?.policy.as_ref() != Some(policy) {
                return Err(replayed(
                    meta,
                    format!("it imported wallet {} under another policy", key_hex(&made)),
                ));
            }
            return Ok(first);
        }
        let (own, _) = self.identity()?;
        let context = import::group_import_context(&own.cluster, &own.node, meta, policy, key_id);
        let secret = self.open_sealed_import(&context, sealed)?;
        self.store_import(meta, quorum, key_id, &secret, Some(policy))
    }

    /// A governed cluster imports only under an approver group: a legacy import would make
    /// a wallet any governor approves, with no group of its own.
    fn refuse_legacy_import(&self, kind: &str) -> Result<(), TeeError> {
        if self.gov.is_some() {
            return Err(TeeError::LegacyRequest(format!(
                "{kind} gives the wallet no approver group; a governed cluster imports wallets \
                 with ImportGroupWalletSealed"
            )));
        }
        Ok(())
    }

    /// Opens a seed sealed to this node under `context`, which carries this node's certified
    /// cluster and node names and the approved terms (the group too, for a group import), so
    /// a ciphertext made for another node, or for other terms, does not open.
    fn open_sealed_import(
        &self,
        context: &[u8],
        sealed: &import::SealedImport,
    ) -> Result<ImportSecret, TeeError> {
        let d = self.device.as_ref().expect("identity implies a device key");
        import::open_import(&d.private_scalar()?[..], context, sealed)
    }

    /// The admin check of both import kinds: `quorum` distinct admins approved importing
    /// `key_id` with that quorum.
    fn approve_import(
        &mut self,
        meta: &RequestMeta,
        quorum: u8,
        key_id: &[u8],
        approvals: &[Approval],
    ) -> Result<(), TeeError> {
        Self::check_quorum_value(quorum)?;
        self.approve(
            meta,
            Action::ImportWallet { quorum, key_id },
            approvals,
            quorum,
        )
    }

    /// Builds the wallet from an approved secret and stores it if it is the approved key and
    /// new here, consuming the request id with it: a repeat answers this wallet.
    fn store_import(
        &mut self,
        meta: &RequestMeta,
        quorum: u8,
        key_id: &[u8],
        secret: &ImportSecret,
        policy: Option<&KeyPolicy>,
    ) -> Outcome {
        let mut wallet = Wallet::from_seed(
            &self.secp,
            import::import_seed(secret)?,
            quorum,
            Origin::Imported,
            self.platform.now_unix(),
        )?;
        if let Some(p) = policy {
            wallet = wallet.with_policy(p.clone());
        }
        if wallet.info.key_id != key_id {
            return Err(TeeError::ImportRejected(format!(
                "secret yields key {}, approvals are for {}",
                key_hex(&wallet.info.key_id),
                key_hex(key_id)
            )));
        }
        // Held already (imported under another request, or synced): this request made
        // nothing, so its id stays unused.
        if self.wallets.contains_key(key_id) {
            return Err(TeeError::KeyExists(key_hex(key_id)));
        }
        self.consume_request(meta, Some(key_id))?;
        self.store_wallet(wallet)
    }

    pub(crate) fn sign(
        &mut self,
        meta: &RequestMeta,
        key_id: &[u8],
        path: &[u32],
        digest: &[u8; 32],
        approvals: &[Approval],
    ) -> Outcome {
        let wallet = self.wallet(key_id)?;
        Self::raw_signing(wallet.policy.as_ref(), key_id)?;
        let who = Self::approvers_for(wallet);
        if path.len() > MAX_PATH_DEPTH {
            return Err(TeeError::InvalidPath(format!(
                "{} levels, at most {MAX_PATH_DEPTH}",
                path.len()
            )));
        }
        self.approve_by(
            meta,
            Action::Sign {
                key_id,
                path,
                digest,
            },
            approvals,
            who,
        )?;
        let w = self.wallet(key_id)?;
        w.sign(&self.secp, path, digest).map(Response::Signature)
    }
}
