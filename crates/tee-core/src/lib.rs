//! Custos TEE core (patent FIG. 3, "TEE core 302"): the only code that ever sees key
//! material.
//!
//! It is a pure request handler, [`TeeCore::handle_bytes`]: bytes in, signed bytes out.
//! Randomness, time and sealed storage come through the [`platform::Platform`] interface, so
//! the same core runs on the software backend (its own process, `custos-tee-host`) and on a
//! real TEE. This crate depends on no networking or async runtime crate.
//!
//! Units, as in the patent: the key management unit ([`wallet`], [`device`], [`threshold`]),
//! the verification unit ([`approval`]), and secure storage (sealed records via the platform).
//!
//! Threshold sessions run on worker threads the core owns ([`custos_threshold::SessionHost`]):
//! the protocol's state machines cannot move between threads, and the core is moved into its
//! host's serving thread. Distributed key generation has a worker of its own (its aux-info
//! steps compute for seconds), and safe primes are generated on another when needed.

pub mod approval;
pub mod device;
pub mod platform;
pub mod sync;
pub mod threshold;
pub mod wallet;

use std::collections::BTreeMap;

use bitcoin::secp256k1::{All, Secp256k1};
use custos_pki::{cert_fingerprint, DeviceChain, DeviceIdentity, PkiError, TrustRoot};
use zeroize::Zeroizing;

use approval::check_quorum;
use custos_pki::AdminCache;
use custos_threshold::StoredPresignature;
use custos_wire::approval::{Action, Approval};
use custos_wire::field::{put, take};
use custos_wire::import;
use custos_wire::protocol::*;
use device::DeviceKey;
use platform::{Platform, PlatformError, RecordId};
use threshold::engine::{parse_session_record, ThresholdState};
use threshold::HeldKey;
use wallet::{key_hex, Wallet};

const REC_ROOT: &str = "root";
const REC_DEVICE_KEY: &str = "device-key";
const REC_DEVICE_CERT: &str = "device-cert";
const WALLET_PREFIX: &str = "wallet/";
const CONSUMED_PREFIX: &str = "consumed/";
/// Largest plaintext of one key transfer: the import request that carries it must stay under
/// [`MAX_REQUEST_LEN`] (a threshold share is about 14 KB, a wallet record under 100 bytes).
const MAX_TRANSFER_PLAINTEXT: usize = 3 * 1024 * 1024;

fn rec(name: &str) -> RecordId {
    RecordId::new(name).expect("static record names are valid")
}

fn storage(e: PlatformError) -> TeeError {
    TeeError::Storage(e.to_string())
}

/// Failure to bring the core up from its sealed state. The host reports it and refuses to
/// serve, rather than running with part of its identity missing.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A record the core cannot run without failed to open.
    #[error("essential sealed record {record} cannot be used: {reason}")]
    Essential {
        /// Record name.
        record: String,
        /// Why.
        reason: String,
    },
    /// The platform failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// The threshold session worker thread could not be started.
    #[error("cannot start the threshold session thread: {0}")]
    SessionThread(String),
}

/// Refuses a key list that names a key twice (a transfer must land whole or not at all).
fn reject_duplicates(key_ids: &[Vec<u8>]) -> Result<(), TeeError> {
    let mut seen = std::collections::HashSet::with_capacity(key_ids.len());
    match key_ids.iter().find(|k| !seen.insert(k.as_slice())) {
        Some(k) => Err(TeeError::InvalidRequest(format!(
            "key {} listed twice",
            key_hex(k)
        ))),
        None => Ok(()),
    }
}

/// One in-memory change of a batch, undone if the batch's commit fails.
enum Undo {
    /// A wallet was added.
    Wallet(Vec<u8>),
    /// A threshold share was added.
    Share(Vec<u8>),
    /// A request id was consumed.
    Consumed([u8; 16]),
}

/// What [`TeeCore::open`] does with a sealed record that does not load.
#[derive(Clone, Copy)]
enum OnBadRecord {
    /// Remove it (an index entry: expired, or rebuilt from nothing).
    Remove,
    /// Keep it untouched and report it (a key: never used, never silently dropped).
    SetAside,
}

/// The TEE core state machine.
pub struct TeeCore<P: Platform> {
    platform: P,
    secp: Secp256k1<All>,
    root: Option<TrustRoot>,
    device: Option<DeviceKey>,
    identity: Option<(DeviceIdentity, DeviceChain)>,
    wallets: BTreeMap<Vec<u8>, Wallet>,
    corrupt: BTreeMap<String, String>,
    platform_name: String,
    /// Request index within the current batch.
    current: usize,
    /// Verified admin certificate chains.
    admins: AdminCache,
    /// What the current batch changed in memory before its commit, with the request that
    /// did it: undone if the commit fails, so memory never holds what storage lost.
    journal: Vec<(usize, Undo)>,
    /// Requests of the current batch whose writes a failed commit discarded.
    failed: Vec<(usize, PlatformError)>,
    /// Create-wallet request ids already used, with their expiry: an approval creates one
    /// wallet, never more (sealed, so this survives restarts).
    consumed: BTreeMap<[u8; 16], u64>,
    /// Threshold shares, started sessions and the session worker.
    threshold: ThresholdState,
}

impl<P: Platform> TeeCore<P> {
    /// Opens the core over its platform, unsealing everything it holds. Corrupt wallet
    /// records are set aside (reported by `Status`, refused on use); a corrupt root, device
    /// key or certificate is fatal.
    pub fn open(mut platform: P, platform_name: &str) -> Result<Self, OpenError> {
        let mut secp = Secp256k1::new();
        let mut seed = Zeroizing::new([0u8; 32]);
        platform.random(&mut seed[..])?;
        // Blinds libsecp256k1's context against side channels.
        secp.seeded_randomize(&seed);

        let essential = |p: &mut P, name: &str| -> Result<Option<Zeroizing<Vec<u8>>>, OpenError> {
            p.unseal(&rec(name)).map_err(|e| OpenError::Essential {
                record: name.into(),
                reason: e.to_string(),
            })
        };
        let bad = |record: &str, reason: String| OpenError::Essential {
            record: record.into(),
            reason,
        };

        let root = match essential(&mut platform, REC_ROOT)? {
            Some(der) => Some(TrustRoot::from_der(&der).map_err(|e| bad(REC_ROOT, e.to_string()))?),
            None => None,
        };
        let device = match essential(&mut platform, REC_DEVICE_KEY)? {
            Some(body) => {
                let mut input: &[u8] = &body;
                let cluster = take(&mut input);
                let node = take(&mut input);
                let pkcs8 = take(&mut input);
                match (cluster, node, pkcs8) {
                    (Some(c), Some(n), Some(k)) if input.is_empty() => Some(
                        DeviceKey::from_pkcs8(
                            Zeroizing::new(k.to_vec()),
                            &String::from_utf8_lossy(c),
                            &String::from_utf8_lossy(n),
                        )
                        .map_err(|e| bad(REC_DEVICE_KEY, e.to_string()))?,
                    ),
                    _ => return Err(bad(REC_DEVICE_KEY, "malformed record".into())),
                }
            }
            None => None,
        };
        let mut core = TeeCore {
            platform,
            secp,
            root,
            device,
            identity: None,
            wallets: BTreeMap::new(),
            corrupt: BTreeMap::new(),
            platform_name: platform_name.to_string(),
            current: 0,
            admins: AdminCache::default(),
            journal: Vec::new(),
            failed: Vec::new(),
            consumed: BTreeMap::new(),
            threshold: ThresholdState::new()
                .map_err(|e| OpenError::SessionThread(e.to_string()))?,
        };
        // The device certificate may have expired or been tampered with while the node was
        // down: the node then keeps D but must be re-certified; it is not fatal.
        match core.platform.unseal(&rec(REC_DEVICE_CERT)) {
            Ok(Some(body)) => {
                let mut input: &[u8] = &body;
                let chain = DeviceChain {
                    device: take(&mut input).unwrap_or_default().to_vec(),
                    cluster_ca: take(&mut input).unwrap_or_default().to_vec(),
                    device_ca: take(&mut input).unwrap_or_default().to_vec(),
                };
                match core.check_device_chain(&chain) {
                    Ok(id) => core.identity = Some((id, chain)),
                    Err(e) => {
                        core.corrupt.insert(REC_DEVICE_CERT.into(), e.to_string());
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                core.corrupt.insert(REC_DEVICE_CERT.into(), e.to_string());
            }
        }
        // Consumed request ids and started threshold sessions: keep the live ones, forget the
        // expired (their approvals are void anyway) and the unreadable.
        let now = core.platform.now_unix();
        let live_until = |body: &[u8]| -> Result<u64, String> {
            let exp = body
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| "malformed expiry".to_string())?;
            if exp >= now {
                Ok(exp)
            } else {
                Err("expired".into())
            }
        };
        core.load_records(CONSUMED_PREFIX, OnBadRecord::Remove, |core, name, body| {
            let rid = hex::decode(&name[CONSUMED_PREFIX.len()..])
                .ok()
                .and_then(|v| <[u8; 16]>::try_from(v).ok())
                .ok_or("unparsable record name")?;
            core.consumed.insert(rid, live_until(body)?);
            Ok(())
        })?;
        core.load_records(
            threshold::SESSION_PREFIX,
            OnBadRecord::Remove,
            |core, name, body| {
                let session = parse_session_record(name).ok_or("unparsable record name")?;
                core.threshold
                    .used_sessions
                    .insert(session, live_until(body)?);
                Ok(())
            },
        )?;
        core.platform.commit()?;
        // Keys and presignatures: one that does not open is set aside, reported and never used.
        core.load_records(WALLET_PREFIX, OnBadRecord::SetAside, |core, name, body| {
            let key = hex::decode(&name[WALLET_PREFIX.len()..]).unwrap_or_default();
            let w = Wallet::from_record(&core.secp, body, &key)?;
            core.wallets.insert(key, w);
            Ok(())
        })?;
        core.load_records(
            threshold::SHARE_PREFIX,
            OnBadRecord::SetAside,
            |core, name, body| {
                let key = hex::decode(&name[threshold::SHARE_PREFIX.len()..]).unwrap_or_default();
                let k = HeldKey::from_record(body, &key)?;
                core.threshold.keys.insert(key, k);
                Ok(())
            },
        )?;
        core.load_records(
            threshold::PRESIGN_PREFIX,
            OnBadRecord::SetAside,
            |core, name, body| {
                let pid = threshold::presign::parse_presign_record(name)
                    .ok_or("unparsable record name")?;
                let p = StoredPresignature::from_bytes(body).map_err(|e| e.to_string())?;
                core.threshold.presigs.insert(pid, p);
                Ok(())
            },
        )?;
        Ok(core)
    }

    /// Unseals every record under `prefix` and hands its name and body to `load`. A record that
    /// does not open or does not load is removed (indexes that can be rebuilt or have
    /// expired) or set aside in `corrupt` (keys: reported by `Status`, refused on use).
    fn load_records(
        &mut self,
        prefix: &str,
        on_bad: OnBadRecord,
        mut load: impl FnMut(&mut Self, &str, &[u8]) -> Result<(), String>,
    ) -> Result<(), PlatformError> {
        for id in self.platform.list(prefix)? {
            let loaded = self
                .platform
                .unseal(&id)
                .map_err(|e| e.to_string())
                .and_then(|r| r.ok_or_else(|| "record vanished".to_string()))
                .and_then(|body| load(self, id.as_str(), &body));
            if let Err(reason) = loaded {
                match on_bad {
                    OnBadRecord::Remove => self.platform.remove(&id)?,
                    OnBadRecord::SetAside => {
                        self.corrupt.insert(id.as_str().to_string(), reason);
                    }
                }
            }
        }
        Ok(())
    }

    /// The platform (for the host's own bookkeeping).
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Whether this TEE may generate the safe primes of its Paillier key itself, in the
    /// background, when a distributed key generation finds no pregenerated set left (the
    /// default; see [`threshold::primes`]). Off, such a start is refused until the host
    /// provides sets.
    pub fn set_prime_generation(&mut self, allowed: bool) {
        self.threshold.generate_primes = allowed;
    }

    /// D's public key, once generated.
    pub fn device_public_key(&self) -> Option<Vec<u8>> {
        self.device.as_ref().map(|d| d.public_key())
    }

    /// Handles one encoded request and returns the encoded [`SignedResponse`].
    pub fn handle_bytes(&mut self, request: &[u8]) -> Vec<u8> {
        self.handle_batch(&[request])
            .pop()
            .expect("one response per request")
    }

    /// Handles several encoded requests with one storage commit (group commit), and
    /// returns one encoded [`SignedResponse`] per request, in order. No response is
    /// produced before the commit, so every acknowledged key is durable; if the commit
    /// fails, the keys of this batch are dropped from memory and their requests answered
    /// with a storage error.
    pub fn handle_batch(&mut self, requests: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(requests.len());
        for (i, request) in requests.iter().enumerate() {
            self.current = i;
            outcomes.push(decode_request(request).and_then(|r| self.handle(r)));
        }
        let _ = self.commit_pending();
        for (i, e) in std::mem::take(&mut self.failed) {
            outcomes[i] = Err(storage(e));
        }
        requests
            .iter()
            .zip(outcomes)
            .map(|(request, outcome)| {
                let body = postcard::to_allocvec(&outcome).expect("responses always serialize");
                let signature = self
                    .device
                    .as_ref()
                    .map(|d| d.sign(&response_transcript(request, &body)));
                postcard::to_allocvec(&SignedResponse { body, signature })
                    .expect("responses always serialize")
            })
            .collect()
    }

    /// Commits every pending write. On failure the platform has discarded them all, so
    /// the wallets of this batch leave memory too and their requests are marked failed:
    /// nothing is acknowledged that is not durable.
    fn commit_pending(&mut self) -> Result<(), PlatformError> {
        let result = self.platform.commit();
        for (i, change) in std::mem::take(&mut self.journal) {
            match (&result, change) {
                (Err(e), change) => {
                    match change {
                        Undo::Wallet(key) => {
                            self.wallets.remove(&key);
                        }
                        Undo::Share(key) => {
                            self.threshold.keys.remove(&key);
                        }
                        Undo::Consumed(rid) => {
                            self.consumed.remove(&rid);
                        }
                    }
                    self.failed.push((i, e.clone()));
                }
                // A key stored again under a name once reported corrupt replaces it.
                (Ok(()), Undo::Wallet(key)) => {
                    self.corrupt
                        .remove(&format!("{WALLET_PREFIX}{}", key_hex(&key)));
                }
                (Ok(()), Undo::Share(key)) => {
                    self.corrupt
                        .remove(&format!("{}{}", threshold::SHARE_PREFIX, key_hex(&key)));
                }
                (Ok(()), Undo::Consumed(_)) => {}
            }
        }
        result
    }

    /// Seals and commits a provisioning record at once (rare); anything pending from the
    /// batch commits with it.
    fn seal_now(&mut self, name: &str, body: &[u8]) -> Result<(), TeeError> {
        self.platform.seal(&rec(name), body).map_err(storage)?;
        self.commit_pending().map_err(storage)
    }

    /// Handles one decoded request (its writes are committed, and its answer signed, by
    /// [`TeeCore::handle_batch`]).
    fn handle(&mut self, request: Request) -> Outcome {
        match request {
            Request::Status => Ok(Response::Status(self.status())),
            Request::PinRoot { root_cert } => self.pin_root(&root_cert),
            Request::GenerateDeviceKey { cluster, node } => self.generate_device_key(cluster, node),
            Request::InstallDeviceCert {
                device,
                cluster_ca,
                device_ca,
            } => self.install_device_cert(DeviceChain {
                device,
                cluster_ca,
                device_ca,
            }),
            Request::CreateWallet {
                meta,
                quorum,
                approvals,
            } => self.create_wallet(&meta, quorum, &approvals),
            Request::ImportWallet {
                meta,
                quorum,
                key_id,
                secret,
                approvals,
            } => self.import_wallet(&meta, quorum, &key_id, &secret, &approvals),
            Request::ImportWalletSealed {
                meta,
                quorum,
                key_id,
                sealed,
                approvals,
            } => self.import_wallet_sealed(&meta, quorum, &key_id, &sealed, &approvals),
            Request::ListKeys => Ok(Response::Keys(
                self.wallets.values().map(|w| w.info.clone()).collect(),
            )),
            Request::GetXpub { key_id, path } => {
                let w = self.wallet(&key_id)?;
                let xpub = w.xpub_at(&self.secp, &path)?;
                Ok(Response::Xpub {
                    xpub: xpub.to_string(),
                    public_key: xpub.public_key.serialize().to_vec(),
                })
            }
            Request::Sign {
                meta,
                key_id,
                path,
                digest,
                approvals,
            } => self.sign(&meta, &key_id, &path, &digest, &approvals),
            Request::AuditSign { key_id, message } => {
                if message.len() > MAX_AUDIT_MESSAGE {
                    return Err(TeeError::AuditMessageTooLong {
                        len: message.len().min(u32::MAX as usize) as u32,
                        max: MAX_AUDIT_MESSAGE as u32,
                    });
                }
                let w = self.wallet(&key_id)?;
                Ok(Response::AuditSignature(
                    w.sign_root(&self.secp, &audit_digest(&message)),
                ))
            }
            Request::DeviceChain => {
                let (_, chain) = self.identity()?;
                Ok(Response::DeviceChain(chain.clone().into()))
            }
            Request::SignTls { message } => {
                if !is_tls13_certificate_verify_message(&message) {
                    return Err(TeeError::TlsSignRefused);
                }
                self.identity()?;
                let d = self.device.as_ref().expect("identity implies a device key");
                Ok(Response::TlsSignature(d.sign(&message)))
            }
            Request::ExportKeys { requester, key_ids } => self.export_keys(requester, &key_ids),
            Request::ImportKeys { transfer } => self.import_keys(&transfer),
            Request::ImportThresholdBundle {
                meta,
                bundle,
                approvals,
            } => self.import_threshold_bundle(&meta, &bundle, &approvals),
            Request::ListThresholdKeys => self.list_threshold_keys(),
            Request::ThresholdStart {
                meta,
                attempt,
                params,
                approvals,
            } => self.threshold_start(&meta, attempt, &params, &approvals),
            Request::ThresholdKeygenStart {
                meta,
                attempt,
                params,
                approvals,
            } => self.threshold_keygen_start(&meta, attempt, &params, &approvals),
            Request::ThresholdAuditStart {
                session,
                key_id,
                message,
                signers,
            } => self.threshold_audit_start(session, &key_id, &message, &signers),
            Request::ThresholdFeed { session, messages } => self.threshold_feed(session, &messages),
            Request::ThresholdAbort { session, reason: _ } => self.threshold_abort(session),
            Request::ThresholdPresignStart {
                session,
                key_id,
                signers,
            } => self.threshold_presign_start(session, &key_id, &signers),
            Request::ThresholdPresignSign {
                meta,
                attempt,
                params,
                approvals,
            } => self.threshold_presign_sign(&meta, attempt, &params, &approvals),
            Request::ListPresignatures { key_id } => self.list_presignatures(&key_id),
            Request::Attest { challenge } => {
                if challenge.len() > 64 {
                    return Err(TeeError::InvalidRequest(
                        "attestation challenge over 64 bytes".into(),
                    ));
                }
                let mut user_data = challenge;
                if let Some(d) = &self.device {
                    user_data.extend_from_slice(&d.public_key());
                }
                self.platform
                    .attest(&user_data)
                    .map(Response::Attestation)
                    .map_err(storage)
            }
        }
    }

    fn status(&self) -> Status {
        Status {
            protocol_version: PROTOCOL_VERSION.into(),
            platform: self.platform_name.clone(),
            root_fingerprint: self.root.as_ref().map(|r| cert_fingerprint(r.der())),
            device: self.device.as_ref().map(|d| self.device_info(d)),
            wallets: self.wallets.len() as u32,
            corrupt_records: self
                .corrupt
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    fn device_info(&self, d: &DeviceKey) -> DeviceInfo {
        DeviceInfo {
            cluster: d.cluster.clone(),
            node: d.node.clone(),
            public_key: d.public_key(),
            cert_fingerprint: self.identity.as_ref().map(|(id, _)| id.fingerprint),
        }
    }

    fn pin_root(&mut self, der: &[u8]) -> Outcome {
        if self.root.is_some() {
            return Err(TeeError::RootAlreadyPinned);
        }
        let root = TrustRoot::from_der(der).map_err(|e| TeeError::RootRejected(e.to_string()))?;
        self.seal_now(REC_ROOT, der)?;
        let fingerprint = cert_fingerprint(der);
        self.root = Some(root);
        Ok(Response::RootPinned { fingerprint })
    }

    fn root(&self) -> Result<&TrustRoot, TeeError> {
        self.root
            .as_ref()
            .ok_or_else(|| TeeError::NotProvisioned("no Root CA pinned".into()))
    }

    fn generate_device_key(&mut self, cluster: String, node: String) -> Outcome {
        self.root()?;
        if self.device.is_some() {
            return Err(TeeError::DeviceKeyExists);
        }
        for name in [&cluster, &node] {
            custos_pki::check_name(name).map_err(|e| TeeError::InvalidRequest(e.to_string()))?;
        }
        let key = DeviceKey::generate(&mut self.platform, &cluster, &node)?;
        let csr = key.csr()?;
        let mut body = Zeroizing::new(Vec::new());
        put(&mut body, cluster.as_bytes());
        put(&mut body, node.as_bytes());
        put(&mut body, key.pkcs8());
        self.seal_now(REC_DEVICE_KEY, &body)?;
        let public_key = key.public_key();
        self.device = Some(key);
        Ok(Response::DeviceCsr { csr, public_key })
    }

    /// Chain check against the pinned root at platform time, for this node's D and cluster.
    fn check_device_chain(&self, chain: &DeviceChain) -> Result<DeviceIdentity, TeeError> {
        let device = self
            .device
            .as_ref()
            .ok_or_else(|| TeeError::NotProvisioned("no device key".into()))?;
        let now = self.platform.now_unix();
        let id = self
            .root()?
            .verify_device(chain, Some(&device.cluster), now)
            .map_err(|e| match e {
                PkiError::WrongCluster { expected, found } => {
                    TeeError::DeviceCertWrongCluster { expected, found }
                }
                other => TeeError::DeviceCertRejected(other.to_string()),
            })?;
        if id.public_key != device.public_key() {
            return Err(TeeError::DeviceCertWrongKey);
        }
        Ok(id)
    }

    fn install_device_cert(&mut self, chain: DeviceChain) -> Outcome {
        let id = self.check_device_chain(&chain)?;
        let mut body = Vec::new();
        put(&mut body, &chain.device);
        put(&mut body, &chain.cluster_ca);
        put(&mut body, &chain.device_ca);
        self.seal_now(REC_DEVICE_CERT, &body)?;
        self.identity = Some((id, chain));
        self.corrupt.remove(REC_DEVICE_CERT);
        let d = self.device.as_ref().expect("checked by check_device_chain");
        Ok(Response::DeviceCertInstalled(self.device_info(d)))
    }

    /// This node's verified identity and chain, once fully provisioned.
    fn identity(&self) -> Result<&(DeviceIdentity, DeviceChain), TeeError> {
        self.identity
            .as_ref()
            .ok_or_else(|| TeeError::NotProvisioned("no device certificate installed".into()))
    }

    /// Cluster of this node, once fully provisioned.
    fn cluster(&self) -> Result<String, TeeError> {
        self.identity().map(|(id, _)| id.cluster.clone())
    }

    fn export_keys(&mut self, requester: CertChain, key_ids: &[Vec<u8>]) -> Outcome {
        let (own, own_chain) = self.identity()?.clone();
        if key_ids.is_empty() || key_ids.len() > MAX_TRANSFER_KEYS {
            return Err(TeeError::InvalidRequest(format!(
                "{} keys requested, 1..={} per transfer",
                key_ids.len(),
                MAX_TRANSFER_KEYS
            )));
        }
        reject_duplicates(key_ids)?;
        let now = self.platform.now_unix();
        let recipient = self
            .root()?
            .verify_device(&requester.into(), Some(&own.cluster), now)
            .map_err(|e| TeeError::RequesterRejected(e.to_string()))?;
        let mut records = Vec::with_capacity(key_ids.len());
        let mut total = 0usize;
        for k in key_ids {
            let record = self.transfer_record(k)?;
            total += record.len() + 4;
            if total > MAX_TRANSFER_PLAINTEXT {
                return Err(TeeError::InvalidRequest(format!(
                    "the keys requested exceed {MAX_TRANSFER_PLAINTEXT} bytes in one transfer; \
                     ask for fewer"
                )));
            }
            records.push(record);
        }
        let plaintext = sync::pack(&records);
        drop(records);
        let context = sync::transfer_context(
            &own.cluster,
            &own.fingerprint,
            &recipient.fingerprint,
            key_ids,
        );
        let (enc, ciphertext) = sync::seal(
            &mut self.platform,
            &recipient.public_key,
            &context,
            &plaintext,
        )?;
        let d = self.device.as_ref().expect("identity implies a device key");
        let signature = d.sign(&sync::transfer_transcript(&context, &enc, &ciphertext));
        Ok(Response::KeyTransfer(KeyTransfer {
            cluster: own.cluster,
            sender: own_chain.into(),
            recipient_fingerprint: recipient.fingerprint,
            key_ids: key_ids.to_vec(),
            enc,
            ciphertext,
            signature,
        }))
    }

    fn import_keys(&mut self, t: &KeyTransfer) -> Outcome {
        let reject = |m: String| TeeError::TransferRejected(m);
        let (own, _) = self.identity()?.clone();
        if t.cluster != own.cluster {
            return Err(reject(format!("transfer is for cluster {:?}", t.cluster)));
        }
        if t.recipient_fingerprint != own.fingerprint {
            return Err(reject("transfer is addressed to another node".into()));
        }
        if t.key_ids.is_empty() || t.key_ids.len() > MAX_TRANSFER_KEYS {
            return Err(reject(format!("{} keys in one transfer", t.key_ids.len())));
        }
        reject_duplicates(&t.key_ids)?;
        let now = self.platform.now_unix();
        let sender = self
            .root()?
            .verify_device(&t.sender.clone().into(), Some(&own.cluster), now)
            .map_err(|e| reject(format!("sender certificate: {e}")))?;
        let context = sync::transfer_context(
            &own.cluster,
            &sender.fingerprint,
            &own.fingerprint,
            &t.key_ids,
        );
        TrustRoot::verify_device_signature(
            &sender,
            &sync::transfer_transcript(&context, &t.enc, &t.ciphertext),
            &t.signature,
        )
        .map_err(|e| reject(e.to_string()))?;
        let d = self.device.as_ref().expect("identity implies a device key");
        let plaintext = sync::open(&d.private_scalar()?[..], t, &context)?;
        let records = sync::unpack(&plaintext, t.key_ids.len())?;
        // Every record is checked before any is stored: a transfer lands whole or not at all.
        let mut fresh = Vec::new();
        let mut fresh_shares = Vec::new();
        let mut already_held = 0u32;
        for (record, key_id) in records.into_iter().zip(&t.key_ids) {
            if HeldKey::is_record(record) {
                if self.threshold.keys.contains_key(key_id) {
                    already_held += 1;
                    continue;
                }
                let k = HeldKey::from_record(record, key_id)
                    .map_err(|e| reject(format!("record {}: {e}", key_hex(key_id))))?;
                // A cluster syncs its own share only.
                let holder = &k.info.clusters[usize::from(k.info.share_index)];
                if *holder != own.cluster {
                    return Err(reject(format!(
                        "record {}: share {} belongs to cluster {holder:?}",
                        key_hex(key_id),
                        k.info.share_index
                    )));
                }
                fresh_shares.push(k);
                continue;
            }
            if self.wallets.contains_key(key_id) {
                already_held += 1;
                continue;
            }
            let w = Wallet::from_record(&self.secp, record, key_id)
                .map_err(|e| reject(format!("record {}: {e}", key_hex(key_id))))?;
            fresh.push(w);
        }
        let mut imported = Vec::with_capacity(fresh.len() + fresh_shares.len());
        for w in fresh {
            imported.push(w.info.key_id.clone());
            self.store_wallet(w)?;
        }
        for k in fresh_shares {
            imported.push(k.info.key_id.clone());
            self.store_threshold_key(k)?;
        }
        Ok(Response::KeysImported {
            imported,
            already_held,
        })
    }

    /// The transfer record of a held key: a wallet's, or else a threshold share's.
    fn transfer_record(&self, key_id: &[u8]) -> Result<Zeroizing<Vec<u8>>, TeeError> {
        if let Some(w) = self.wallets.get(key_id) {
            return Ok(w.to_record());
        }
        match self.threshold_key(key_id) {
            Ok(k) => Ok(k.to_record()),
            Err(TeeError::UnknownKey(_)) => self.wallet(key_id).map(|w| w.to_record()),
            Err(e) => Err(e),
        }
    }

    fn wallet(&self, key_id: &[u8]) -> Result<&Wallet, TeeError> {
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

    /// Checks `required` distinct admins approved `action` for this node's cluster.
    fn approve(
        &mut self,
        meta: &RequestMeta,
        action: Action<'_>,
        approvals: &[Approval],
        required: u8,
    ) -> Result<(), TeeError> {
        let cluster = self.cluster()?;
        self.approve_in(&cluster, meta, action, approvals, required)
    }

    /// As [`Self::approve`], for approval messages made with `cluster` as scope (e.g.
    /// [`approval::THRESHOLD_SCOPE`] for actions that span clusters).
    fn approve_in(
        &mut self,
        cluster: &str,
        meta: &RequestMeta,
        action: Action<'_>,
        approvals: &[Approval],
        required: u8,
    ) -> Result<(), TeeError> {
        self.cluster()?;
        let root = self
            .root
            .as_ref()
            .ok_or_else(|| TeeError::NotProvisioned("no Root CA pinned".into()))?;
        check_quorum(
            &mut self.admins,
            root,
            cluster,
            self.platform.now_unix(),
            meta,
            &action,
            approvals,
            required,
        )?;
        Ok(())
    }

    fn check_quorum_value(quorum: u8) -> Result<(), TeeError> {
        if quorum == 0 || quorum > MAX_QUORUM {
            return Err(TeeError::InvalidRequest(format!(
                "quorum {quorum} outside 1..={MAX_QUORUM}"
            )));
        }
        Ok(())
    }

    fn store_wallet(&mut self, wallet: Wallet) -> Outcome {
        let hex = key_hex(&wallet.info.key_id);
        if self.wallets.contains_key(&wallet.info.key_id) {
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

    /// Marks a request id as used (pending until the batch commits): an approval of a
    /// one-off action works once. Refuses an id already used.
    fn consume_request(&mut self, meta: &RequestMeta) -> Result<(), TeeError> {
        if self.consumed.contains_key(&meta.request_id) {
            return Err(TeeError::RequestReplayed(hex::encode(meta.request_id)));
        }
        let rid = RecordId::new(format!("{CONSUMED_PREFIX}{}", hex::encode(meta.request_id)))
            .map_err(storage)?;
        self.platform
            .seal(&rid, &meta.expires_at.to_be_bytes())
            .map_err(storage)?;
        self.consumed.insert(meta.request_id, meta.expires_at);
        self.journal
            .push((self.current, Undo::Consumed(meta.request_id)));
        Ok(())
    }

    fn create_wallet(&mut self, meta: &RequestMeta, quorum: u8, approvals: &[Approval]) -> Outcome {
        Self::check_quorum_value(quorum)?;
        // Whoever creates a key under an m-of-k policy must meet that policy themselves.
        self.approve(meta, Action::CreateWallet { quorum }, approvals, quorum)?;
        self.consume_request(meta)?;
        let mut seed = Zeroizing::new(vec![0u8; 32]);
        self.platform.random(&mut seed).map_err(storage)?;
        let wallet = Wallet::from_seed(
            &self.secp,
            seed,
            quorum,
            Origin::Generated,
            self.platform.now_unix(),
        )?;
        self.store_wallet(wallet)
    }

    fn import_wallet(
        &mut self,
        meta: &RequestMeta,
        quorum: u8,
        key_id: &[u8],
        secret: &ImportSecret,
        approvals: &[Approval],
    ) -> Outcome {
        self.approve_import(meta, quorum, key_id, approvals)?;
        self.store_import(quorum, key_id, secret)
    }

    /// As [`Self::import_wallet`], with the secret sealed to this node. Approvals are checked
    /// before anything is decrypted, so an unapproved caller gets no answer about the
    /// ciphertext. The context uses this node's certified cluster and node names, so a
    /// ciphertext made for another node, or for other approved terms, does not open.
    fn import_wallet_sealed(
        &mut self,
        meta: &RequestMeta,
        quorum: u8,
        key_id: &[u8],
        sealed: &import::SealedImport,
        approvals: &[Approval],
    ) -> Outcome {
        self.approve_import(meta, quorum, key_id, approvals)?;
        let (own, _) = self.identity()?;
        let context = import::import_context(&own.cluster, &own.node, meta, quorum, key_id);
        let d = self.device.as_ref().expect("identity implies a device key");
        let secret = import::open_import(&d.private_scalar()?[..], &context, sealed)?;
        self.store_import(quorum, key_id, &secret)
    }

    /// The admin check of both import kinds: `quorum` distinct admins approved importing
    /// `key_id` with that quorum. (No request id is consumed: an import cannot repeat, the
    /// key then exists.)
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

    /// Builds the wallet from an approved secret and stores it if it is the approved key.
    fn store_import(&mut self, quorum: u8, key_id: &[u8], secret: &ImportSecret) -> Outcome {
        let wallet = Wallet::from_seed(
            &self.secp,
            import::import_seed(secret)?,
            quorum,
            Origin::Imported,
            self.platform.now_unix(),
        )?;
        if wallet.info.key_id != key_id {
            return Err(TeeError::ImportRejected(format!(
                "secret yields key {}, approvals are for {}",
                key_hex(&wallet.info.key_id),
                key_hex(key_id)
            )));
        }
        self.store_wallet(wallet)
    }

    fn sign(
        &mut self,
        meta: &RequestMeta,
        key_id: &[u8],
        path: &[u32],
        digest: &[u8; 32],
        approvals: &[Approval],
    ) -> Outcome {
        let quorum = self.wallet(key_id)?.info.quorum;
        if path.len() > MAX_PATH_DEPTH {
            return Err(TeeError::InvalidPath(format!(
                "{} levels, at most {MAX_PATH_DEPTH}",
                path.len()
            )));
        }
        self.approve(
            meta,
            Action::Sign {
                key_id,
                path,
                digest,
            },
            approvals,
            quorum,
        )?;
        let w = self.wallet(key_id)?;
        w.sign(&self.secp, path, digest).map(Response::Signature)
    }
}
