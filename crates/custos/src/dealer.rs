//! `custos dealer`: the operating company's dealer program (patent [0070]-[0072]).
//!
//! It creates a t-of-n threshold key (T_1 … T_n with the Paillier material P of every party),
//! seals share i to the certified device key D of the node that will import it in cluster i,
//! signs every bundle with the dealer's certificate (Admin CA, dealer role) so that the TEE
//! can check it came from the operating company, and writes one bundle file per cluster.
//! The dealer holds the whole key while it runs; distributed key generation is the other way
//! to create a threshold key, where no one ever does.
//!
//! Safe-prime generation takes minutes per party (one thread per party, with progress bars).
//! `deal --primes` takes sets made ahead of time (a JSON array, the dealer's own secret).
//! `custos dealer primes` makes sets for distributed key generation instead: one per node,
//! sealed to that node's device key (a TEE that gets none generates its own).

use std::path::{Path, PathBuf};
use std::time::Duration;

use custos_pki::{DealerSigner, DeviceChain, TrustRoot};
use custos_tee_core::threshold::bundle::seal_bundle;
use custos_tee_core::threshold::key_info;
use custos_threshold::{deal, DealerProgress, Primes};
use custos_wire::protocol::{CertChain, ThresholdBundle, ThresholdKeyInfo, ThresholdOrigin};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use zeroize::Zeroizing;

/// Largest primes file read (n sets of four 1536-bit primes in JSON are a few KB each).
const MAX_PRIMES_FILE: u64 = 1024 * 1024;

/// Why the dealer stopped. Nothing is written unless every bundle was sealed.
#[derive(Debug, thiserror::Error)]
pub enum DealerError {
    /// Bad parameters.
    #[error("invalid dealer parameters: {0}")]
    Invalid(String),
    /// A recipient's certificate chain did not verify.
    #[error("recipient for cluster {cluster}: {reason}")]
    Recipient {
        /// Cluster.
        cluster: String,
        /// Why.
        reason: String,
    },
    /// The threshold library failed.
    #[error("key generation failed: {0}")]
    Threshold(String),
    /// Sealing failed.
    #[error("sealing share {index}: {reason}")]
    Seal {
        /// Share index.
        index: u16,
        /// Why.
        reason: String,
    },
    /// File input/output.
    #[error("{path}: {reason}")]
    Io {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Where the Paillier primes come from.
pub enum PrimeSource {
    /// Generate real safe primes now (minutes per party, in parallel).
    Generate,
    /// Primes generated ahead of time for the dealer: a JSON array of n sets.
    File(PathBuf),
}

/// What to deal.
pub struct DealOptions {
    /// Signers needed (t).
    pub threshold: u16,
    /// Distinct admins needed to use the key (and to import each share).
    pub quorum: u8,
    /// BIP-32 derivation (HD) enabled; such keys never use presignatures.
    pub hd: bool,
    /// For each share index: the cluster and the certificate chain of the node that imports.
    pub recipients: Vec<(String, CertChain)>,
    /// Paillier primes.
    pub primes: PrimeSource,
}

/// The dealt key: its public facts (share index 0's view) and one bundle per cluster.
pub struct Dealt {
    /// Public facts of the key.
    pub key: ThresholdKeyInfo,
    /// Bundle i for cluster i.
    pub bundles: Vec<ThresholdBundle>,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> DealerError {
    DealerError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Reads a dealer's primes file (a JSON array of sets, e.g. the TEST-ONLY fixture).
pub fn read_primes(path: &Path) -> Result<Vec<Primes>, DealerError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.len() > MAX_PRIMES_FILE {
        return Err(io_err(path, "primes file too large"));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| io_err(path, e))?);
    Primes::list_from_bytes(&bytes).map_err(|e| io_err(path, format!("not a primes file: {e}")))
}

/// Reads a node's certificate chain: a PEM file with the device certificate, its Cluster CA
/// and the Device CA, in that order.
pub fn read_chain(path: &Path) -> Result<CertChain, DealerError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let certs: Vec<Vec<u8>> = pem::parse_many(text.as_bytes())
        .map_err(|e| io_err(path, e))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect();
    match <[Vec<u8>; 3]>::try_from(certs) {
        Ok([device, cluster_ca, device_ca]) => Ok(CertChain {
            device,
            cluster_ca,
            device_ca,
        }),
        Err(v) => Err(io_err(
            path,
            format!(
                "{} certificates; expected device, Cluster CA, Device CA",
                v.len()
            ),
        )),
    }
}

/// Writes a node's certificate chain as PEM (the input of [`read_chain`]).
pub fn chain_pem(chain: &CertChain) -> String {
    [&chain.device, &chain.cluster_ca, &chain.device_ca]
        .into_iter()
        .map(|der| custos_pki::der_to_pem(der, "CERTIFICATE"))
        .collect()
}

/// Writes secret material readable by its owner only.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), DealerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    f.write_all(bytes).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

/// Progress bars for prime generation: one per party, ticking while it runs.
struct Bars {
    multi: MultiProgress,
    bars: Vec<ProgressBar>,
}

impl Bars {
    fn new(parties: u16, visible: bool) -> Self {
        let multi = if visible {
            MultiProgress::new()
        } else {
            MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        };
        let style = ProgressStyle::with_template("{spinner} party {prefix}: {msg} [{elapsed}]")
            .expect("valid template");
        let bars = (0..parties)
            .map(|i| {
                let b = multi.add(ProgressBar::new_spinner());
                b.set_style(style.clone());
                b.set_prefix(i.to_string());
                b.set_message("generating 4 safe primes of 1536 bits");
                b.enable_steady_tick(Duration::from_millis(200));
                b
            })
            .collect();
        Bars { multi, bars }
    }

    fn on(&self, p: DealerProgress) {
        match p {
            DealerProgress::PrimesReady {
                party,
                done,
                total,
                elapsed,
            } => {
                if let Some(b) = self.bars.get(usize::from(party)) {
                    b.finish_with_message(format!(
                        "primes ready in {:.0} s ({done}/{total})",
                        elapsed.as_secs_f64()
                    ));
                }
            }
            DealerProgress::SharesReady => {
                let _ = self.multi.println("shares dealt");
            }
            _ => {}
        }
    }
}

/// Generates `parties` sets of safe primes, one thread each (minutes per set), with
/// progress bars when `progress`.
pub fn generate_primes(parties: u16, progress: bool) -> Result<Vec<Primes>, DealerError> {
    if parties == 0 || parties > 64 {
        return Err(DealerError::Invalid("parties must be 1..=64".into()));
    }
    let bars = Bars::new(parties, progress);
    Ok(std::thread::scope(|s| {
        let handles: Vec<_> = (0..parties)
            .map(|i| {
                let bar = bars.bars[usize::from(i)].clone();
                s.spawn(move || {
                    let t0 = std::time::Instant::now();
                    let p = Primes::generate(&mut rand_core::OsRng);
                    bar.finish_with_message(format!(
                        "primes ready in {:.0} s",
                        t0.elapsed().as_secs_f64()
                    ));
                    p
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("prime generation thread"))
            .collect()
    }))
}

/// `set` sealed to the node whose chain is `chain` (verified under `root` as a device of
/// `cluster`) and signed by `dealer`: the JSON of a [`custos_wire::primes::SealedPrimes`], the
/// file that node's TEE imports (`CUSTOS_TEE_PRIMES_FILE`). Returns the node's name and the
/// file's bytes.
pub fn seal_primes_for(
    root: &TrustRoot,
    dealer: &DealerSigner,
    cluster: &str,
    chain: &CertChain,
    set: &Primes,
) -> Result<(String, Vec<u8>), DealerError> {
    let bad = |reason: String| DealerError::Recipient {
        cluster: cluster.to_string(),
        reason,
    };
    let id = root
        .verify_device(
            &chain.clone().into(),
            Some(cluster),
            custos_pki::clock::now_unix(),
        )
        .map_err(|e| bad(e.to_string()))?;
    let sealed = custos_wire::primes::seal_primes(&id, &set.to_sealed_bytes(), dealer)
        .map_err(|e| bad(e.to_string()))?;
    let json = serde_json::to_vec_pretty(&sealed).expect("a sealed set serializes");
    Ok((id.node, json))
}

/// `custos dealer primes`: one set of safe primes per node of `nodes` (cluster, chain),
/// generated in parallel, each sealed to its node and signed by `dealer`
/// ([`seal_primes_for`]) and written to `<out>/<cluster>-<node>.primes.json` (never
/// overwriting). Every chain is verified before any generation starts; nothing is written
/// unless every set was sealed. Returns the files.
pub fn write_sealed_primes(
    root: &TrustRoot,
    dealer: &DealerSigner,
    nodes: &[(String, CertChain)],
    out: &Path,
    progress: bool,
) -> Result<Vec<PathBuf>, DealerError> {
    let now = custos_pki::clock::now_unix();
    for (cluster, chain) in nodes {
        root.verify_device(&chain.clone().into(), Some(cluster), now)
            .map_err(|e| DealerError::Recipient {
                cluster: cluster.clone(),
                reason: e.to_string(),
            })?;
    }
    let parties =
        u16::try_from(nodes.len()).map_err(|_| DealerError::Invalid("too many nodes".into()))?;
    let sets = generate_primes(parties, progress)?;
    let files = nodes
        .iter()
        .zip(&sets)
        .map(|((cluster, chain), set)| {
            let (node, json) = seal_primes_for(root, dealer, cluster, chain, set)?;
            Ok((out.join(format!("{cluster}-{node}.primes.json")), json))
        })
        .collect::<Result<Vec<_>, DealerError>>()?;
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    for (path, json) in &files {
        write_secret(path, json)?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// Deals a key for `opts.recipients` and seals every share. Each recipient chain must verify
/// against `root` as a vault device of its cluster; nothing is dealt otherwise.
pub fn deal_bundles(
    dealer: &DealerSigner,
    root: &TrustRoot,
    opts: &DealOptions,
    progress: bool,
) -> Result<Dealt, DealerError> {
    let n = opts.recipients.len();
    if !(2..=16).contains(&n) {
        return Err(DealerError::Invalid(format!(
            "{n} clusters; a threshold key needs 2 to 16"
        )));
    }
    let n16 = n as u16;
    if opts.threshold < 2 || opts.threshold > n16 {
        return Err(DealerError::Invalid(format!(
            "threshold {} with {n} clusters: need 2 <= t <= n",
            opts.threshold
        )));
    }
    if opts.quorum == 0 {
        return Err(DealerError::Invalid("quorum must be at least 1".into()));
    }
    let now = custos_pki::clock::now_unix();
    let clusters: Vec<String> = opts.recipients.iter().map(|(c, _)| c.clone()).collect();
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = clusters.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(DealerError::Invalid(format!("cluster {dup} named twice")));
    }
    root.verify_dealer(&dealer.cert_der, &dealer.admin_ca_der, now)
        .map_err(|e| DealerError::Invalid(format!("dealer certificate: {e}")))?;
    let identities = opts
        .recipients
        .iter()
        .map(|(cluster, chain)| {
            let chain: DeviceChain = chain.clone().into();
            root.verify_device(&chain, Some(cluster), now)
                .map_err(|e| DealerError::Recipient {
                    cluster: cluster.clone(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let primes = match &opts.primes {
        PrimeSource::Generate => None,
        PrimeSource::File(p) => {
            let sets = read_primes(p)?;
            if sets.len() < n {
                return Err(io_err(
                    p,
                    format!("{} prime sets for {n} parties", sets.len()),
                ));
            }
            Some(sets.into_iter().take(n).collect())
        }
    };
    let bars = Bars::new(if primes.is_none() { n16 } else { 0 }, progress);
    let shares = deal(opts.threshold, n16, opts.hd, primes, &mut |p| bars.on(p))
        .map_err(|e| DealerError::Threshold(e.to_string()))?;
    let mut bundles = Vec::with_capacity(n);
    let mut public = None;
    for (share, identity) in shares.iter().zip(&identities) {
        let info =
            key_info(share, &clusters, opts.quorum, ThresholdOrigin::Dealer).map_err(|reason| {
                DealerError::Seal {
                    index: share.index(),
                    reason,
                }
            })?;
        public.get_or_insert_with(|| info.clone());
        let bundle = seal_bundle(share, info, identity, dealer).map_err(|e| DealerError::Seal {
            index: share.index(),
            reason: e.to_string(),
        })?;
        bundles.push(bundle);
    }
    // `shares` (every T_i and P) is dropped here; the library zeroizes its secrets.
    drop(shares);
    Ok(Dealt {
        key: public.expect("n >= 2 shares"),
        bundles,
    })
}

/// Writes `bundle-<share index>-<cluster>.bin` (postcard) for every bundle into `dir`.
pub fn write_bundles(dir: &Path, dealt: &Dealt) -> Result<Vec<PathBuf>, DealerError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    dealt
        .bundles
        .iter()
        .map(|b| {
            let cluster = &b.key.clusters[usize::from(b.key.share_index)];
            let path = dir.join(format!("bundle-{}-{cluster}.bin", b.key.share_index));
            let bytes = postcard::to_allocvec(b).expect("bundles serialize");
            // Only ciphertext and public data: readable, but never overwritten.
            write_secret(&path, &bytes)?;
            Ok(path)
        })
        .collect()
}
