//! Bringing the core up from its sealed store: the essential records (root, device key and
//! certificate), then the indexes (consumed request ids, started sessions) and the keys.

use std::collections::BTreeMap;

use bitcoin::secp256k1::Secp256k1;
use custos_pki::{AdminCache, DeviceChain, TrustRoot};
use custos_wire::field::take;
use zeroize::Zeroizing;

use crate::device::DeviceKey;
use crate::passkey::{CounterRecord, PASSKEY_PREFIX};
use crate::platform::{Platform, PlatformError};
use crate::threshold::engine::{parse_session_record, ThresholdState};
use crate::threshold::presign::HeldPresignature;
use crate::threshold::{self, HeldKey};
use crate::wallet::Wallet;
use crate::{
    rec, TeeCore, CONSUMED_PREFIX, REC_DEVICE_CERT, REC_DEVICE_KEY, REC_ROOT, VELOCITY_PREFIX,
    WALLET_PREFIX,
};

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

/// What [`TeeCore::open`] does with a sealed record that does not load.
#[derive(Clone, Copy)]
enum OnBadRecord {
    /// Remove it (an index entry: expired, or rebuilt from nothing).
    Remove,
    /// Keep it untouched and report it (a key: never used, never silently dropped).
    SetAside,
}

impl<P: Platform> TeeCore<P> {
    /// Opens the core over its platform, unsealing everything it holds. Corrupt wallet
    /// records are set aside (reported by `Status`, refused on use); a corrupt root or device
    /// key is fatal; a device certificate that no longer verifies is reported and the node
    /// must be re-certified (it keeps D).
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
            velocity: BTreeMap::new(),
            passkeys: BTreeMap::new(),
            threshold: ThresholdState::new()
                .map_err(|e| OpenError::SessionThread(e.to_string()))?,
            gov: None,
            gov_pin: None,
            foreign: Default::default(),
        };
        core.load_device_cert();
        core.load_governance()?;
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
            let consumed = crate::Consumed::from_record(body)?;
            live_until(&body[..8])?;
            core.consumed.insert(rid, consumed);
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
        // A window record that does not open is set aside: the key then signs no
        // transaction (its window cannot be counted) until it is restored.
        core.load_records(
            VELOCITY_PREFIX,
            OnBadRecord::SetAside,
            |core, name, body| {
                let key = hex::decode(&name[VELOCITY_PREFIX.len()..]).unwrap_or_default();
                let record =
                    custos_tx::policy::decode_record(body).ok_or("malformed window record")?;
                core.velocity.insert(key, record);
                Ok(())
            },
        )?;
        // A counter record that does not open is set aside: its passkey then approves
        // nothing here (a replay could not be told) until it is restored.
        core.load_records(PASSKEY_PREFIX, OnBadRecord::SetAside, |core, name, body| {
            let key = hex::decode(&name[PASSKEY_PREFIX.len()..])
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or("unparsable record name")?;
            core.passkeys.insert(key, CounterRecord::from_record(body)?);
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
                let p = HeldPresignature::from_record(body)?;
                core.threshold.presigs.insert(pid, p);
                Ok(())
            },
        )?;
        Ok(core)
    }

    /// Installs the sealed device certificate if it still verifies. It may have expired or
    /// been tampered with while the node was down: the node then keeps D but must be
    /// re-certified; it is not fatal.
    fn load_device_cert(&mut self) {
        match self.platform.unseal(&rec(REC_DEVICE_CERT)) {
            Ok(Some(body)) => {
                let mut input: &[u8] = &body;
                let chain = DeviceChain {
                    device: take(&mut input).unwrap_or_default().to_vec(),
                    cluster_ca: take(&mut input).unwrap_or_default().to_vec(),
                    device_ca: take(&mut input).unwrap_or_default().to_vec(),
                };
                match self.check_device_chain(&chain) {
                    Ok(id) => self.identity = Some((id, chain)),
                    Err(e) => {
                        self.corrupt.insert(REC_DEVICE_CERT.into(), e.to_string());
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                self.corrupt.insert(REC_DEVICE_CERT.into(), e.to_string());
            }
        }
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
}
