//! `custos`: the Custos command-line tool.

mod bench;
mod bench_e2e;
mod bench_link;
mod bench_psbt;
mod bench_threshold;
mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use custos_pki::PkiDir;
use custos_tee_core::platform::Platform;
use custos_tee_core::TeeCore;
use custos_tee_host::{hardening, sealed, server, SealingKeySource, SoftwarePlatform, StoreError};
use secrecy::SecretBox;

/// `custos --version`: a build that can accept the published TEST-ONLY primes says so.
const VERSION: &str = if cfg!(feature = "insecure-test-primes") {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (insecure-test-primes: its TEEs accept the published TEST-ONLY Paillier primes when \
         asked; tests and the local demo only)"
    )
} else {
    env!("CARGO_PKG_VERSION")
};

#[derive(Parser)]
#[command(
    name = "custos",
    version = VERSION,
    about = "Custos key custody (US 2020/0259646 A1)"
)]
struct Cli {
    /// Log lines on standard error as text for people or as JSON objects for a log
    /// collector (one per line: timestamp, level, target, message and every field, such as
    /// the `request_id` each service logs for a request it handles).
    #[arg(long, global = true, env = "CUSTOS_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Operating company PKI (patent FIG. 6-7).
    Pki {
        /// CA directory.
        #[arg(long, env = "CUSTOS_PKI_DIR", default_value = "custos-pki")]
        dir: PathBuf,
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// An admin's own key (made on the admin's side; the PKI sees only its CSR).
    Admin {
        #[command(subcommand)]
        command: AdminCli,
    },
    /// TEE core process (software backend) and its tooling.
    Tee {
        #[command(subcommand)]
        command: TeeCommand,
    },
    /// Vault node server (relays for its TEE core, keeps the node in sync).
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Bridge server of a cluster (internal relay).
    Bridge {
        #[command(subcommand)]
        command: BridgeCommand,
    },
    /// External relay of a cluster (Internet side of the link).
    Relay {
        #[command(subcommand)]
        command: RelayCommand,
    },
    /// Cloud server (Internet-facing REST API, patent FIG. 1).
    Cloud {
        #[command(subcommand)]
        command: CloudCommand,
    },
    /// Review and approve a pending cloud request as an admin (lists them without
    /// --request). The approval message is recomputed locally, never taken from the server.
    Approve {
        /// Cloud server base URL.
        #[arg(long, env = "CUSTOS_API_URL")]
        api: String,
        /// API token.
        #[arg(long, env = "CUSTOS_API_TOKEN", hide_env_values = true)]
        token: String,
        /// Root certificate (PEM) to trust for an HTTPS API.
        #[arg(long)]
        api_root_ca: Option<PathBuf>,
        /// The admin's certificate chain (admin certificate, then Admin CA), as
        /// `custos pki sign-admin-csr` wrote it.
        #[arg(long, env = "CUSTOS_ADMIN_CERT")]
        cert: PathBuf,
        /// The admin's key file (from `custos admin keygen`, mode 0600); or the --pkcs11-…
        /// options for a key on a token.
        #[arg(
            long,
            env = "CUSTOS_ADMIN_KEY",
            required_unless_present = "pkcs11_module",
            conflicts_with = "pkcs11_module"
        )]
        key: Option<PathBuf>,
        #[command(flatten)]
        token_key: custos::admin::TokenArgs,
        /// Request id to approve.
        #[arg(long, conflicts_with = "list")]
        request: Option<String>,
        /// List pending requests (the default without --request).
        #[arg(long)]
        list: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Wallets on the cloud server (their creation names their approver group).
    Wallet {
        #[command(subcommand)]
        command: custos::wallet::WalletCommand,
    },
    /// A Bitcoin Core external signer backed by a Custos wallet (`bitcoind
    /// -signer="custos bitcoin-signer"`; the API, token and wallet from CUSTOS_API_URL,
    /// CUSTOS_API_TOKEN, CUSTOS_SIGNER_ROOT or the options). Answers one line of JSON.
    #[command(disable_help_flag = true)]
    BitcoinSigner {
        /// The external signer's arguments, as Bitcoin Core passes them.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// An Ethereum JSON-RPC signer (Web3Signer's eth1 calls) backed by a Custos wallet:
    /// signing calls become requests the wallet's approvers approve; the rest goes to the
    /// downstream node. Prints `listening on http://<address>` once it serves.
    EthSigner(custos::eth_signer::EthSignerArgs),
    /// Development cluster on loopback.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Metadata DB tools.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// The operating company's dealer program for threshold keys (patent [0070]).
    Dealer {
        #[command(subcommand)]
        command: DealerCommand,
    },
    /// Benchmarks (not tests): figures with the limit measured in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The local deployment on loopback: PKI, three clusters of three nodes (node server and
    /// TEE process each), bridges, external relays and links, the cloud server; then every
    /// flow through the REST API. Exits 0 only if every step verified.
    Demo {
        /// Working directory (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Machine-readable report.
        #[arg(long, default_value = "custos-demo-report.json")]
        report: PathBuf,
        /// Leave the deployment running afterwards (until Ctrl-C) and print how to reach it.
        #[arg(long)]
        keep_running: bool,
        /// Generate real Paillier safe primes for the threshold key (minutes) instead of the
        /// committed TEST-ONLY ones.
        #[arg(long)]
        real_primes: bool,
        /// Platform of the TEEs: software (the development stand-in) or tpm (each TEE on a
        /// software TPM of its own, swtpm, started and stopped by the demo; custos built with
        /// the cargo feature `tpm`), which adds a store copy put back and refused.
        #[arg(long, value_enum, default_value_t = custos::tee_plan::PlatformName::Software)]
        platform: custos::tee_plan::PlatformName,
    },
}

/// `custos admin …`: the admin's own key, and the governance commands that name admins.
#[derive(Subcommand)]
enum AdminCli {
    #[command(flatten)]
    Key(custos::admin::AdminCommand),
    #[command(flatten)]
    Governance(custos::governance::AdminGovCommand),
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Run a vault node server.
    Run {
        /// TOML configuration (fields overridable by CUSTOS_NODE_<FIELD>).
        #[arg(long)]
        config: PathBuf,
    },
    /// Ask the node's TEE for a CSR of its existing device key D, to renew its certificate
    /// (then `custos pki sign-csr --days N` and `custos node install-cert`).
    RenewCert {
        /// The node's TOML configuration (its TEE socket, node and cluster names).
        #[arg(long)]
        config: PathBuf,
        /// Output CSR file (PEM); stdout if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Install a renewed device certificate for the same D in the node's TEE; the node
    /// server presents it once restarted.
    InstallCert {
        /// The node's TOML configuration (its TEE socket, node and cluster names).
        #[arg(long)]
        config: PathBuf,
        /// The certificate (PEM): alone, as `custos pki sign-csr` writes it, or followed by
        /// its Cluster CA and Device CA.
        #[arg(long)]
        cert: PathBuf,
    },
}

#[derive(Subcommand)]
enum BridgeCommand {
    /// Run a bridge server.
    Run {
        /// TOML configuration (fields overridable by CUSTOS_BRIDGE_<FIELD>).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum CloudCommand {
    /// Run the cloud server; prints `custos cloud listening on <url>` once it serves.
    Run {
        /// TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Generate an API token; prints it once with the configuration entry of its hash.
    Token {
        /// Name recorded on the requests made with it.
        #[arg(long, default_value = "api")]
        name: String,
        /// What the token may do, repeatable: read, request, approve, operate, administer
        /// (default: read only).
        #[arg(long = "scope", default_value = "read")]
        scopes: Vec<String>,
        /// The tenant whose requests, wallets and threshold keys the token sees.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum RelayCommand {
    /// Run an external relay.
    Run {
        /// TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start a bridge, N TEE processes and N node servers on loopback, PKI and provisioning
    /// done, and keep them running until interrupted.
    Up {
        /// Number of vault nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Cluster name.
        #[arg(long, default_value = "dc1")]
        name: String,
        /// Working directory (PKI, stores, sockets, configs, SQLite DB).
        #[arg(long, default_value = "custos-cluster")]
        dir: PathBuf,
        /// Metadata DB URL (default: SQLite file in the directory).
        #[arg(long)]
        db_url: Option<String>,
        #[command(flatten)]
        tee: custos::tee_plan::PlatformArgs,
    },
    #[command(flatten)]
    Governance(custos::governance::ClusterGovCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Wallet creation rate of a cluster and time to sync every key to a fresh node.
    Cluster {
        /// Wallets to create (and then sync).
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Concurrent requests.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Working directory (default: temporary).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// End-to-end BIP-32 signing through the full path (REST to TEE and back): peak
    /// throughput and p50/p99 at half the peak, beside raw libsecp256k1 on one core.
    E2e {
        /// Signatures at peak load.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        /// Concurrent REST callers at peak.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Vault nodes in the cluster.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Working directory (default: temporary).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A many-input PSBT parsed, checked against its key's policy and signed in one TEE
    /// process, beside raw libsecp256k1 signing of the same hashes (ratio).
    Psbt {
        /// Inputs of the PSBT (P2WPKH and P2TR in turn).
        #[arg(long, default_value_t = 50)]
        inputs: usize,
        /// Signings to time each way.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Working directory (default: temporary).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The separate channel: a BIP-32 sign request and reply as QR frames through a camera
    /// across a desk (frames against the information-theoretic minimum), and a serial line
    /// over a pseudo-terminal pair (throughput against the line rate).
    Link {
        /// QR transfers timed each way.
        #[arg(long, default_value_t = 20)]
        trials: usize,
        /// Serial line rate, baud.
        #[arg(long, default_value_t = 115_200)]
        baud: u32,
        /// KiB sent over the serial line for its throughput.
        #[arg(long, default_value_t = 32)]
        serial_kib: usize,
        /// Working directory (default: temporary).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// End-to-end 2-of-3 threshold signing across three clusters, beside the same library
    /// with both parties in one thread.
    Threshold {
        /// Signings to time each way.
        #[arg(long, default_value_t = 10)]
        signings: usize,
        /// Working directory (default: temporary).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Check the history hash chain; exits non-zero if an entry was edited or deleted.
    Verify {
        /// Metadata DB URL (`sqlite://file` or `postgres://...`).
        #[arg(long)]
        url: String,
    },
}

#[derive(Subcommand)]
enum DealerCommand {
    /// Generate Paillier safe primes ahead of time (minutes per party; one thread each): one
    /// set per node, each sealed to that node's device key, one file per node. Whoever runs
    /// this knows those secrets while it runs; a TEE left without a file generates its own.
    Primes {
        /// The dealer's own folder (`dealer.key`, `dealer.crt`), as for `deal`: every set is
        /// signed by the dealer, and a TEE takes no set that is not.
        #[arg(long)]
        dir: PathBuf,
        /// The Root CA certificate (PEM) the nodes' chains must reach.
        #[arg(long)]
        root: PathBuf,
        /// `<cluster>=<chain.pem>`, once per node: the certificate chain (device, Cluster CA,
        /// Device CA; PEM) of a node to make a set for.
        #[arg(long = "for", required = true)]
        nodes: Vec<String>,
        /// Output directory: `<cluster>-<node>.primes.json` per node (never overwritten),
        /// for that node's `CUSTOS_TEE_PRIMES_FILE`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make the dealer's key — a 0600 file `<dir>/dealer.key` — and its CSR
    /// `<dir>/dealer.csr` for the PKI (`custos pki sign-dealer-csr`).
    Keygen {
        /// Dealer name (the certificate's common name).
        #[arg(long)]
        name: String,
        /// The dealer's own folder (not the PKI's).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Deal a t-of-n key: one bundle per cluster, sealed to the named node and signed.
    Deal {
        /// The dealer's own folder: `dealer.key` (0600) from `custos dealer keygen` and
        /// `dealer.crt`, the chain `custos pki sign-dealer-csr` issued.
        #[arg(long)]
        dir: PathBuf,
        /// The Root CA certificate (PEM) the recipients' chains must reach.
        #[arg(long)]
        root: PathBuf,
        /// Signers needed (t).
        #[arg(long)]
        threshold: u16,
        /// Distinct admins needed to use the key and to import each share.
        #[arg(long, default_value_t = 1)]
        quorum: u8,
        /// `<cluster>=<chain.pem>`, once per cluster in share order: the certificate chain
        /// (device, Cluster CA, Device CA; PEM) of the node that imports the cluster's share.
        #[arg(long = "recipient", required = true)]
        recipients: Vec<String>,
        /// Pregenerated primes (`custos dealer primes`); generated now if absent.
        #[arg(long)]
        primes: Option<PathBuf>,
        /// Deal a key without BIP-32 derivation (needed for the presignature pool).
        #[arg(long)]
        no_hd: bool,
        /// Output directory for the bundles.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the Root CA, Admin CA and Device CA.
    Init,
    /// Create a Cluster CA (signed by the Device CA).
    ClusterCa {
        /// Cluster name.
        cluster: String,
    },
    /// Issue an admin certificate (Admin CA) from the admin's CSR; writes the chain (admin
    /// certificate, then Admin CA). The admin's private key is never read or written here.
    SignAdminCsr {
        /// The admin's CSR (PEM), from `custos admin keygen`.
        #[arg(long)]
        csr: PathBuf,
        /// Output chain file (PEM); stdout if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Issue the threshold-key dealer's certificate (Admin CA, dealer role) from the dealer's
    /// CSR; writes the chain (dealer certificate, then Admin CA). The dealer's private key is
    /// never read or written here.
    SignDealerCsr {
        /// The dealer's CSR (PEM), from `custos dealer keygen`.
        #[arg(long)]
        csr: PathBuf,
        /// Output chain file (PEM); stdout if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Turn a node's CSR (PEM) into a device certificate from the cluster's Cluster CA.
    SignCsr {
        /// Cluster of the node.
        #[arg(long)]
        cluster: String,
        /// CSR file (PEM).
        #[arg(long)]
        csr: PathBuf,
        /// Output certificate file (PEM); stdout if absent.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Lifetime of the certificate in days (1 to 825).
        #[arg(long, default_value_t = custos_pki::DEVICE_CERT_DAYS)]
        days: u32,
    },
    /// Certify an admin's WebAuthn passkey for the approvers' console: a registration
    /// ceremony (attestation, then proof of possession) run with the admin's browser.
    Passkey {
        #[command(subcommand)]
        step: custos::passkey::Step,
    },
}

/// `custos tee serve --platform`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PlatformChoice {
    /// The development stand-in (`SoftwarePlatform`).
    Software,
    /// A TPM 2.0 (`TpmPlatform`, cargo feature `tpm`).
    Tpm,
}

/// The default of `--tpm-nv-index`, the TPM platform's own default (checked below when the
/// platform is built in; stated here so that the help reads the same without it).
const DEFAULT_TPM_NV_INDEX: u32 = 0x0100_C057;
#[cfg(feature = "tpm")]
const _: () = assert!(DEFAULT_TPM_NV_INDEX == custos_tee_host::tpm::DEFAULT_NV_INDEX);

/// An NV index as written on the command line: hexadecimal (`0x0100c057`) or decimal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NvIndex(u32);

impl std::str::FromStr for NvIndex {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => s.parse(),
        };
        let index = parsed.map_err(|_| format!("{s:?} is not an NV index (e.g. 0x0100c057)"))?;
        // The owner range of the TCG handle registry: other ranges belong to the platform
        // vendor or the TPM manufacturer, or are not NV indices at all.
        if !(0x0100_0000..=0x01BF_FFFF).contains(&index) {
            return Err(format!(
                "NV index {index:#010x} is outside the owner range 0x01000000-0x01bfffff"
            ));
        }
        Ok(NvIndex(index))
    }
}

impl std::fmt::Display for NvIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

#[derive(Subcommand)]
enum TeeCommand {
    /// Create a random 256-bit sealing key file (mode 0600).
    Keygen {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the TEE core as its own hardened process on a Unix socket.
    Serve {
        /// Socket path.
        #[arg(long)]
        socket: PathBuf,
        /// Sealed store directory.
        #[arg(long)]
        store: PathBuf,
        /// Create the store if it does not exist.
        #[arg(long)]
        init: bool,
        /// Sealing key file (32 bytes or 64 hex characters, mode 0600).
        #[arg(
            long,
            conflicts_with = "passphrase_env",
            required_unless_present = "passphrase_env"
        )]
        sealing_key_file: Option<PathBuf>,
        /// Name of an environment variable holding a passphrase (Argon2id-stretched).
        #[arg(long)]
        passphrase_env: Option<String>,
        /// One pregenerated Paillier primes set sealed to this node (`custos dealer primes
        /// --for <chain> --out DIR`): imported into the store at start-up, then the file is
        /// emptied. Same as the environment variable `CUSTOS_TEE_PRIMES_FILE`. Without
        /// either, the TEE generates safe primes itself in the background when a key
        /// generation needs them (the default: nobody else ever knows them).
        #[arg(long)]
        primes_file: Option<PathBuf>,
        /// What the TEE core runs on. software: the development stand-in (the store sealed
        /// under the operator's key, no protection against a copy put back); tpm: a TPM 2.0
        /// (`--tpm`) seals the store key to PCRs and the operator's key and binds the store's
        /// epoch to an NV counter, so a copy put back is refused (`store_rolled_back`);
        /// needs custos built with the cargo feature `tpm`.
        #[arg(long, value_enum, default_value_t = PlatformChoice::Software)]
        platform: PlatformChoice,
        /// TCTI of the TPM (`--platform tpm`): `device:/dev/tpmrm0` for the kernel's
        /// resource manager, `swtpm:host=127.0.0.1,port=2321` for a software TPM.
        #[arg(long, value_name = "TCTI", required_if_eq("platform", "tpm"))]
        tpm: Option<String>,
        /// PCRs a new store's key is sealed to (`--platform tpm`): `sha256:<index>[,<index>...]`;
        /// an existing store keeps those it was sealed to.
        #[arg(long, value_name = "PCRS", default_value = "sha256:7")]
        tpm_pcrs: String,
        /// NV index of a new store's counter (`--platform tpm`, owner range
        /// 0x01000000-0x01bfffff); an existing store keeps its own.
        #[arg(long, value_name = "INDEX", default_value_t = NvIndex(DEFAULT_TPM_NV_INDEX))]
        tpm_nv_index: NvIndex,
    },
    /// Provision a node's TEE: pin Root, generate D, CSR, certificate, install.
    Provision {
        /// Socket of the TEE process.
        #[arg(long)]
        socket: PathBuf,
        /// CA directory.
        #[arg(long, env = "CUSTOS_PKI_DIR", default_value = "custos-pki")]
        pki: PathBuf,
        /// Cluster.
        #[arg(long)]
        cluster: String,
        /// Node name.
        #[arg(long)]
        node: String,
        /// The id of the cluster's governance genesis (64 hex digits), when it is known:
        /// the TEE will then adopt that genesis only, never the first one it is offered.
        #[arg(long)]
        genesis: Option<String>,
    },
    /// Show a TEE's state.
    Status {
        /// Socket of the TEE process.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Write the node's device chain (device certificate, Cluster CA, Device CA; PEM), read
    /// at its TEE socket: what `custos cluster members admit --chain` takes.
    Chain {
        /// Socket of the TEE process.
        #[arg(long)]
        socket: PathBuf,
        /// Output file; stdout if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the TPM identity of a node on the TPM platform (endorsement certificate and
    /// attestation key; JSON): what `custos cluster members ticket --tpm-identity` takes.
    AttestationIdentity {
        /// Socket of the TEE process.
        #[arg(long)]
        socket: PathBuf,
        /// The endorsement certificate's issuers up to the manufacturer's root (PEM, root
        /// last), when the TPM does not hold them.
        #[arg(long)]
        ek_chain: Option<PathBuf>,
        /// Output file; stdout if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Have the node's TEE answer its admission ticket (`custos cluster members ticket`) with
    /// its platform's evidence (hex): what `custos cluster members admit --evidence` takes.
    AdmissionEvidence {
        /// Socket of the TEE process.
        #[arg(long)]
        socket: PathBuf,
        /// The ticket (JSON).
        #[arg(long)]
        ticket: PathBuf,
        /// Output file; stdout if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // tss-esapi logs an ERROR for every failed TPM command, the expected ones included (an
    // NV index looked up before it is defined); the TPM platform reports real failures in
    // its own errors. CUSTOS_LOG can turn them on.
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUSTOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tss_esapi=off"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

type AnyError = Box<dyn std::error::Error>;

/// The Root CA certificate (PEM) at `path`, as a verifier.
fn read_root(path: &std::path::Path) -> Result<custos_pki::TrustRoot, AnyError> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read Root CA certificate {}: {e}", path.display()))?;
    Ok(custos_pki::TrustRoot::from_der(&custos_pki::pem_to_der(
        &pem,
        "Root CA certificate",
    )?)?)
}

/// `<cluster>=<chain.pem>` arguments of `flag`: each cluster with the node chain read.
fn cluster_chains(
    flag: &str,
    args: &[String],
) -> Result<Vec<(String, custos_wire::protocol::CertChain)>, AnyError> {
    args.iter()
        .map(|r| {
            let (cluster, file) = r
                .split_once('=')
                .ok_or_else(|| format!("{flag} {r:?}: expected <cluster>=<chain.pem>"))?;
            Ok((
                cluster.to_string(),
                custos::dealer::read_chain(std::path::Path::new(file))?,
            ))
        })
        .collect()
}

/// `custos dealer deal`.
#[allow(clippy::too_many_arguments)]
fn run_dealer(
    dealer: &std::path::Path,
    root: &std::path::Path,
    threshold: u16,
    quorum: u8,
    recipients: &[String],
    primes: Option<PathBuf>,
    hd: bool,
    out: &std::path::Path,
) -> Result<(), AnyError> {
    use custos::dealer::{deal_bundles, write_bundles, DealOptions, PrimeSource};
    let signer = custos_pki::DealerFolder::new(dealer).signer()?;
    let root = read_root(root)?;
    let recipients = cluster_chains("--recipient", recipients)?;
    let dealt = deal_bundles(
        &signer,
        &root,
        &DealOptions {
            threshold,
            quorum,
            hd,
            recipients,
            primes: primes.map_or(PrimeSource::Generate, PrimeSource::File),
        },
        true,
    )?;
    let paths = write_bundles(out, &dealt)?;
    println!(
        "dealt {threshold}-of-{} key {} ({}):",
        dealt.key.clusters.len(),
        hex::encode(&dealt.key.key_id),
        if hd { "HD" } else { "no HD" }
    );
    for p in paths {
        println!("  {}", p.display());
    }
    Ok(())
}

fn run(cli: Cli) -> Result<(), AnyError> {
    match cli.command {
        Command::Pki { dir, command } => run_pki(PkiDir::new(dir), command),
        Command::Admin {
            command: AdminCli::Key(command),
        } => Ok(custos::admin::run(command)?),
        Command::Admin {
            command: AdminCli::Governance(command),
        } => Ok(runtime()?.block_on(custos::governance::run_admin(
            command,
            &mut std::io::stdout(),
        ))?),
        Command::Tee { command } => run_tee(command),
        Command::Demo {
            dir,
            report,
            keep_running,
            real_primes,
            platform,
        } => demo::run(dir, &report, keep_running, real_primes, platform),
        Command::Dealer { command } => run_dealer_command(command),
        Command::Bench { command } => run_bench(command),
        Command::Node { command } => run_node(command),
        Command::Bridge {
            command: BridgeCommand::Run { config },
        } => {
            let cfg = custos_bridge::BridgeConfig::load(&config)?;
            runtime()?.block_on(custos_bridge::run(cfg))?;
            Ok(())
        }
        Command::Cloud { command } => run_cloud(command),
        Command::Wallet {
            command: custos::wallet::WalletCommand::Create(args),
        } => {
            runtime()?.block_on(custos::wallet::create(&args, &mut std::io::stdout()))?;
            Ok(())
        }
        Command::Wallet {
            command: custos::wallet::WalletCommand::Policy(args),
        } => {
            runtime()?.block_on(custos::wallet::policy::run(&args, &mut std::io::stdout()))?;
            Ok(())
        }
        Command::Wallet {
            command: custos::wallet::WalletCommand::SignPsbt(args),
        } => {
            runtime()?.block_on(custos::wallet::psbt::run(&args, &mut std::io::stdout()))?;
            Ok(())
        }
        Command::EthSigner(args) => {
            runtime()?.block_on(custos::eth_signer::run(&args))?;
            Ok(())
        }
        Command::BitcoinSigner { args } => {
            let args = custos::bitcoin_signer::with_stdin(args, &mut std::io::stdin())?;
            let answer = match custos::bitcoin_signer::SignerArgs::try_parse_from(&args) {
                Ok(parsed) => runtime()?.block_on(custos::bitcoin_signer::run(&parsed)),
                Err(e) => {
                    // As HWI: the refusal in JSON on standard output, usage on stderr, 2.
                    println!(
                        "{}",
                        serde_json::json!({ "error": e.to_string().lines().next().unwrap_or_default(), "code": -2 })
                    );
                    eprintln!("{e}");
                    std::process::exit(2);
                }
            };
            println!("{answer}");
            Ok(())
        }
        Command::Approve {
            api,
            token,
            api_root_ca,
            cert,
            key,
            token_key,
            request,
            list,
            yes,
        } => {
            let key = match (key, token_key.options()) {
                (_, Some(opts)) => custos::admin::KeySource::Token(opts),
                (Some(file), None) => custos::admin::KeySource::File(file),
                (None, None) => return Err("--key or --pkcs11-module is required".into()),
            };
            let args = custos::approve::ApproveArgs {
                api,
                token,
                api_root_ca,
                cert,
                key,
                request: if list { None } else { request },
                yes,
            };
            runtime()?.block_on(custos::approve::approve(
                &args,
                &mut std::io::stdin().lock(),
                &mut std::io::stdout(),
            ))?;
            Ok(())
        }
        Command::Relay {
            command: RelayCommand::Run { config },
        } => {
            let cfg = custos_relay::RelayConfig::load(&config)?;
            runtime()?.block_on(custos_relay::run(cfg))?;
            Ok(())
        }
        Command::Cluster {
            command:
                ClusterCommand::Up {
                    nodes,
                    name,
                    dir,
                    db_url,
                    tee,
                },
        } => cluster_up(nodes, &name, &dir, db_url, &tee.plan(&name, nodes)?),
        Command::Cluster {
            command: ClusterCommand::Governance(command),
        } => Ok(runtime()?.block_on(custos::governance::run_cluster(
            command,
            &mut std::io::stdout(),
        ))?),
        Command::Db {
            command: DbCommand::Verify { url },
        } => {
            let report = runtime()?.block_on(async {
                let db = custos_metadata::MetadataDb::connect(&url).await?;
                db.verify().await
            })?;
            println!("{}", serde_json::to_string(&report)?);
            if report.is_ok() {
                Ok(())
            } else {
                Err("history chain is broken".into())
            }
        }
    }
}

/// `custos dealer ...`.
fn run_dealer_command(command: DealerCommand) -> Result<(), AnyError> {
    match command {
        DealerCommand::Primes {
            dir,
            root,
            nodes,
            out,
        } => {
            let signer = custos_pki::DealerFolder::new(&dir).signer()?;
            let root = read_root(&root)?;
            let nodes = cluster_chains("--for", &nodes)?;
            let files = custos::dealer::write_sealed_primes(&root, &signer, &nodes, &out, true)?;
            println!("one primes set sealed to each node:");
            for f in files {
                println!("  {}", f.display());
            }
            Ok(())
        }
        DealerCommand::Keygen { name, dir } => {
            let folder = custos_pki::DealerFolder::new(&dir);
            folder.keygen(&name)?;
            println!(
                "made dealer key {} (0600); CSR {}",
                folder.key().display(),
                folder.csr().display()
            );
            Ok(())
        }
        DealerCommand::Deal {
            dir,
            root,
            threshold,
            quorum,
            recipients,
            primes,
            no_hd,
            out,
        } => run_dealer(
            &dir,
            &root,
            threshold,
            quorum,
            &recipients,
            primes,
            !no_hd,
            &out,
        ),
    }
}

/// `custos bench ...`.
fn run_bench(command: BenchCommand) -> Result<(), AnyError> {
    match command {
        BenchCommand::E2e {
            requests,
            concurrency,
            nodes,
            dir,
        } => bench_e2e::run(requests, concurrency, nodes, dir.as_deref()),
        BenchCommand::Threshold { signings, dir } => bench_threshold::run(signings, dir.as_deref()),
        BenchCommand::Link {
            trials,
            baud,
            serial_kib,
            dir,
        } => bench_link::run(trials, baud, serial_kib, dir.as_deref()),
        BenchCommand::Psbt {
            inputs,
            rounds,
            dir,
        } => bench_psbt::run(inputs, rounds, dir.as_deref()),
        BenchCommand::Cluster {
            keys,
            concurrency,
            dir,
        } => bench::run(keys, concurrency, dir.as_deref()),
    }
}

/// `custos cloud ...`.
fn run_cloud(command: CloudCommand) -> Result<(), AnyError> {
    match command {
        CloudCommand::Run { config } => {
            let cfg = custos_cloud::CloudConfig::load(&config)?;
            let scheme = if cfg.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            runtime()?.block_on(custos_cloud::run(cfg, move |addr| {
                use std::io::Write;
                println!("custos cloud listening on {scheme}://{addr}");
                let _ = std::io::stdout().flush();
            }))?;
            Ok(())
        }
        CloudCommand::Token {
            name,
            scopes,
            tenant,
        } => {
            let scopes = scopes
                .iter()
                .map(|s| {
                    custos_cloud_api::Scope::parse(s)
                        .ok_or_else(|| format!("--scope {s:?}: not a scope"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (token, hash) = custos_cloud::generate_api_token();
            let mut entry = custos_cloud::config::ApiTokenConfig::new(name, hash, &scopes);
            entry.tenant = tenant;
            let mut table = toml::value::Table::new();
            table.insert(
                "api_tokens".into(),
                toml::Value::try_from(vec![entry]).map_err(|e| e.to_string())?,
            );
            println!("token: {}", token.as_str());
            print!("{}", toml::to_string(&table).map_err(|e| e.to_string())?);
            Ok(())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, AnyError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn cluster_up(
    nodes: usize,
    name: &str,
    dir: &std::path::Path,
    db_url: Option<String>,
    plan: &custos::tee_plan::TeePlan,
) -> Result<(), AnyError> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let pki = PkiDir::new(dir.join("pki"));
    if pki.root_pem().is_err() {
        pki.init()?;
    }
    let opts = custos::cluster::ClusterOptions {
        name: name.to_string(),
        nodes,
        db_url,
        sync_interval_secs: 10,
        audit_interval_secs: 3600,
        link: None,
    };
    let cluster =
        custos::cluster::Cluster::start_on(&std::env::current_exe()?, &pki, &dir, &opts, plan)?;
    println!(
        "cluster {name} up: bridge {}, metadata {}",
        cluster.bridge_addr,
        custos_metadata::redact_url(&cluster.db_url)
    );
    for n in &cluster.nodes {
        println!(
            "  {}: node server {}, TEE socket {} ({})",
            n.name,
            n.addr.map(|a| a.to_string()).unwrap_or_default(),
            n.tee.socket.display(),
            match n.tee.platform() {
                custos::tee_process::TeePlatform::Software => "software platform".to_string(),
                custos::tee_process::TeePlatform::Tpm(t) => format!("TPM {}", t.tcti),
            }
        );
    }
    println!("press Ctrl-C to stop");
    runtime()?.block_on(tokio::signal::ctrl_c())?;
    drop(cluster);
    Ok(())
}

/// A CSR file's text, read no further than one byte past the longest CSR the PKI signs (so
/// the PKI refuses an oversized one by its size without it being read whole).
fn read_csr(path: &std::path::Path) -> Result<String, AnyError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(custos_pki::MAX_CSR_PEM as u64 + 1)
                .read_to_string(&mut text)
        })
        .map_err(|e| format!("cannot read CSR {}: {e}", path.display()))?;
    Ok(text)
}

fn run_pki(pki: PkiDir, command: PkiCommand) -> Result<(), AnyError> {
    match command {
        PkiCommand::Init => {
            pki.init()?;
            println!(
                "created Root CA, Admin CA and Device CA in {}",
                pki.path().display()
            );
        }
        PkiCommand::ClusterCa { cluster } => {
            pki.create_cluster_ca(&cluster)?;
            println!("created Cluster CA for {cluster}");
        }
        PkiCommand::SignDealerCsr { csr, out } => {
            let issued = pki.sign_dealer_csr(&read_csr(&csr)?)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, issued.chain_pem())?;
                    eprintln!("issued dealer {}: {}", issued.name, path.display());
                }
                None => print!("{}", issued.chain_pem()),
            }
        }
        PkiCommand::SignAdminCsr { csr, out } => {
            let issued = pki.sign_admin_csr(&read_csr(&csr)?)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, issued.chain_pem())?;
                    eprintln!("issued admin {}: {}", issued.name, path.display());
                }
                None => print!("{}", issued.chain_pem()),
            }
        }
        PkiCommand::SignCsr {
            cluster,
            csr,
            out,
            days,
        } => {
            // The lifetime is checked before the CSR is even read.
            let validity = custos_pki::Validity::device_days(days)?;
            let cert = pki.sign_device_csr_with_validity(&cluster, &read_csr(&csr)?, validity)?;
            match out {
                Some(path) => std::fs::write(&path, cert)?,
                None => print!("{cert}"),
            }
        }
        PkiCommand::Passkey { step } => custos::passkey::run(&pki, step)?,
    }
    Ok(())
}

fn run_node(command: NodeCommand) -> Result<(), AnyError> {
    use custos::renewal::{install_cert, renewal_csr};
    match command {
        NodeCommand::Run { config } => {
            let cfg = custos_vault_node::NodeConfig::load(&config)?;
            runtime()?.block_on(custos_vault_node::run(cfg))?;
        }
        NodeCommand::RenewCert { config, out } => {
            let cfg = custos_vault_node::NodeConfig::load(&config)?;
            let mut client = custos_wire::client::TeeClient::connect(&cfg.tee_socket)?;
            let csr = renewal_csr(&mut client, &cfg.cluster, &cfg.node)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, csr)?;
                    eprintln!(
                        "CSR for the device key of {}/{}: {} (next: custos pki sign-csr)",
                        cfg.cluster,
                        cfg.node,
                        path.display()
                    );
                }
                None => print!("{csr}"),
            }
        }
        NodeCommand::InstallCert { config, cert } => {
            let cfg = custos_vault_node::NodeConfig::load(&config)?;
            let mut client = custos_wire::client::TeeClient::connect(&cfg.tee_socket)?;
            let done = install_cert(&mut client, &cfg.cluster, &cfg.node, &cert)?;
            println!(
                "installed certificate {} for {}/{}, valid until {} (Unix); restart the node \
                 server (custos node run) to present it",
                done.info
                    .cert_fingerprint
                    .map(hex::encode)
                    .unwrap_or_default(),
                done.info.cluster,
                done.info.node,
                done.not_after
            );
        }
    }
    Ok(())
}

/// A store's refusal to open as the operator reads it (the last line of the TEE process's
/// stderr, which supervisors such as `TeeProcess` report): its stable code, then why.
fn named_refusal(e: StoreError) -> AnyError {
    format!("{}: {e}", e.code()).into()
}

/// What `custos tee serve` does once its platform is open, whichever platform it is.
struct Serving<'a> {
    socket: &'a std::path::Path,
    store: &'a std::path::Path,
    primes_file: Option<&'a std::path::Path>,
}

impl Serving<'_> {
    /// Seals the primes file in, opens the TEE core (`name` is what Status reports as its
    /// platform), binds the socket, says ready and serves until the process ends.
    fn run<P: Platform + Send + 'static>(self, platform: P, name: &str) -> Result<(), AnyError> {
        let mut core = TeeCore::open(platform, name)?;
        let test_primes = custos_tee_host::primes::test_primes_requested();
        core.set_test_primes(test_primes);
        if test_primes && cfg!(feature = "insecure-test-primes") {
            tracing::warn!(
                "this TEE accepts the committed TEST-ONLY Paillier primes, whose secrets are \
                 published: tests and the local demo only"
            );
        }
        let primes_file = self
            .primes_file
            .map(std::path::Path::to_path_buf)
            .or_else(custos_tee_host::primes::primes_file_from_env);
        if let Some(file) = primes_file {
            if custos_tee_host::primes::import_primes_file(&mut core, &file)
                .map_err(named_refusal)?
            {
                tracing::info!(file = %file.display(), "Paillier primes set imported");
            }
        }
        let listener = server::bind(self.socket)?;
        tracing::info!(
            socket = %self.socket.display(),
            store = %self.store.display(),
            platform = name,
            "TEE core serving"
        );
        println!("{}", custos::tee_process::READY_LINE);
        server::serve(listener, core)?;
        Ok(())
    }
}

fn run_tee(command: TeeCommand) -> Result<(), AnyError> {
    match command {
        TeeCommand::Keygen { out } => {
            sealed::generate_key_file(&out)?;
            println!("wrote sealing key {} (0600)", out.display());
        }
        TeeCommand::Serve {
            socket,
            store,
            init,
            sealing_key_file,
            passphrase_env,
            primes_file,
            platform,
            tpm,
            tpm_pcrs,
            tpm_nv_index,
        } => {
            // A panic anywhere leaves no half-alive TEE holding its socket: the process ends
            // and its supervisor (node server, operator) sees it and restarts it.
            std::panic::set_hook(Box::new(|info| {
                eprintln!("error: TEE core panicked: {info}");
                std::process::exit(70);
            }));
            if platform == PlatformChoice::Software && tpm.is_some() {
                return Err(
                    "--tpm names the TPM of --platform tpm; it is not used by the \
                            software platform"
                        .into(),
                );
            }
            #[cfg(not(feature = "tpm"))]
            if platform == PlatformChoice::Tpm {
                let _ = (&tpm_pcrs, tpm_nv_index);
                return Err(
                    "--platform tpm: this custos was built without the TPM platform; \
                            build it with the cargo feature `tpm` (cargo build --release \
                            --features custos/tpm, needs libtss2-dev)"
                        .into(),
                );
            }
            let report = hardening::harden_process()?;
            if let Some(why) = &report.memory_not_locked {
                tracing::warn!(%why, "TEE memory is not locked");
            }
            let source = match (sealing_key_file, passphrase_env) {
                (Some(f), _) => SealingKeySource::KeyFile(f),
                (None, Some(var)) => {
                    let pass = std::env::var(&var)
                        .map_err(|_| format!("environment variable {var} is not set"))?;
                    // The passphrase must not linger in the environment of this process.
                    std::env::remove_var(&var);
                    SealingKeySource::Passphrase(SecretBox::new(Box::new(pass)))
                }
                (None, None) => unreachable!("clap requires one sealing key source"),
            };
            let serving = Serving {
                socket: &socket,
                store: &store,
                primes_file: primes_file.as_deref(),
            };
            match platform {
                PlatformChoice::Software => {
                    let platform =
                        SoftwarePlatform::open(&store, &source, init).map_err(named_refusal)?;
                    serving.run(platform, "software")?;
                }
                #[cfg(not(feature = "tpm"))]
                PlatformChoice::Tpm => unreachable!("refused above"),
                #[cfg(feature = "tpm")]
                PlatformChoice::Tpm => {
                    use custos_tee_host::tpm::{PcrSelection, TpmOptions, TpmPlatform};
                    // libtss2 logs an ERROR line for every failed TPM command, expected ones
                    // included (an absent NV index at creation); the TPM's answer reaches
                    // the operator inside the store's own error instead. An operator who
                    // sets TSS2_LOG keeps it. Set while this process has one thread, before
                    // libtss2 first reads it.
                    if std::env::var_os("TSS2_LOG").is_none() {
                        std::env::set_var("TSS2_LOG", "all+none");
                    }
                    let options = TpmOptions {
                        tcti: tpm.expect("clap requires --tpm with --platform tpm"),
                        pcrs: PcrSelection::parse(&tpm_pcrs)
                            .map_err(|e| format!("--tpm-pcrs {tpm_pcrs:?}: {e}"))?,
                        nv_index: tpm_nv_index.0,
                    };
                    let platform = TpmPlatform::open(&store, &source, &options, init)
                        .map_err(named_refusal)?;
                    serving.run(platform, "tpm")?;
                }
            }
        }
        TeeCommand::Provision {
            socket,
            pki,
            cluster,
            node,
            genesis,
        } => {
            // Checked before anything is provisioned, so a typo leaves the TEE untouched.
            let genesis = genesis
                .map(|g| {
                    hex::decode(&g)
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .ok_or_else(|| format!("--genesis {g:?} is not 64 hex digits"))
                })
                .transpose()?;
            let mut client = custos_wire::client::TeeClient::connect(&socket)?;
            let info = custos::ops::provision(&mut client, &PkiDir::new(pki), &cluster, &node)?;
            println!(
                "provisioned {}/{}: device key {}",
                info.cluster,
                info.node,
                hex::encode(&info.public_key)
            );
            if let Some(genesis_id) = genesis {
                client.expect_device_key(info.public_key.clone());
                match client.call(&custos_wire::protocol::Request::PinGenesis { genesis_id })? {
                    custos_wire::protocol::Response::GenesisPinned { genesis_id } => {
                        println!("governance genesis pinned: {}", hex::encode(genesis_id));
                    }
                    other => {
                        return Err(format!("unexpected answer to PinGenesis: {other:?}").into())
                    }
                }
            }
        }
        TeeCommand::Status { socket } => {
            let mut client = custos_wire::client::TeeClient::connect(&socket)?;
            let status = client.call(&custos_wire::protocol::Request::Status)?;
            println!("{status:#?}");
        }
        TeeCommand::Chain { socket, out } => {
            let pem = custos::admission::device_chain_pem(&socket)?;
            match out {
                Some(path) => std::fs::write(&path, pem)?,
                None => print!("{pem}"),
            }
        }
        TeeCommand::AttestationIdentity {
            socket,
            ek_chain,
            out,
        } => {
            let view = custos::admission::attestation_identity(&socket, ek_chain.as_deref())?;
            let json = serde_json::to_string_pretty(&view)? + "\n";
            match out {
                Some(path) => std::fs::write(&path, json)?,
                None => print!("{json}"),
            }
        }
        TeeCommand::AdmissionEvidence {
            socket,
            ticket,
            out,
        } => {
            let hex = custos::admission::admission_evidence(&socket, &ticket)? + "\n";
            match out {
                Some(path) => std::fs::write(&path, hex)?,
                None => print!("{hex}"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::NvIndex;

    #[test]
    fn nv_index_is_read_in_hex_or_decimal_and_only_in_the_owner_range() {
        assert_eq!("0x0100c057".parse::<NvIndex>(), Ok(NvIndex(0x0100_C057)));
        assert_eq!("0X0100C057".parse::<NvIndex>(), Ok(NvIndex(0x0100_C057)));
        assert_eq!("16777216".parse::<NvIndex>(), Ok(NvIndex(0x0100_0000)));
        assert_eq!(NvIndex(0x0100_C057).to_string(), "0x0100c057");
        // The platform's, the manufacturer's and persistent-object handles are refused.
        for bad in [
            "0x01c00002",
            "0x81000001",
            "0x00ffffff",
            "0x",
            "c057",
            "-1",
            "",
        ] {
            assert!(bad.parse::<NvIndex>().is_err(), "{bad}");
        }
    }
}
