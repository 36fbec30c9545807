//! `custos`: the Custos command-line tool.
#![forbid(unsafe_code)]

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use custos_pki::PkiDir;
use custos_tee_core::TeeCore;
use custos_tee_host::{hardening, sealed, server, SealingKeySource, SoftwarePlatform};
use secrecy::SecretBox;

#[derive(Parser)]
#[command(
    name = "custos",
    version,
    about = "Custos key custody (US 2020/0259646 A1)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// TEE core process (software backend) and its tooling.
    Tee {
        #[command(subcommand)]
        command: TeeCommand,
    },
    /// Local walk-through on loopback: PKI, TEE processes, provisioning, wallets, approvals,
    /// signing, refusals, crash and restart. Exits 0 only if every step verified.
    Demo {
        /// Working directory (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Machine-readable report.
        #[arg(long, default_value = "custos-demo-report.json")]
        report: PathBuf,
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
    /// Issue an admin key and certificate (from the Admin CA).
    Admin {
        /// Admin name.
        name: String,
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
    },
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
    },
    /// Show a TEE's state.
    Status {
        /// Socket of the TEE process.
        #[arg(long)]
        socket: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CUSTOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

type AnyError = Box<dyn std::error::Error>;

fn run(cli: Cli) -> Result<(), AnyError> {
    match cli.command {
        Command::Pki { dir, command } => run_pki(PkiDir::new(dir), command),
        Command::Tee { command } => run_tee(command),
        Command::Demo { dir, report } => demo::run(dir, &report),
    }
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
        PkiCommand::Admin { name } => {
            pki.create_admin(&name)?;
            let (crt, key) = pki.admin_files(&name);
            println!(
                "issued admin {name}: {} (key {})",
                crt.display(),
                key.display()
            );
        }
        PkiCommand::SignCsr { cluster, csr, out } => {
            let pem = std::fs::read_to_string(&csr)
                .map_err(|e| format!("cannot read CSR {}: {e}", csr.display()))?;
            let cert = pki.sign_device_csr(&cluster, &pem)?;
            match out {
                Some(path) => std::fs::write(&path, cert)?,
                None => print!("{cert}"),
            }
        }
    }
    Ok(())
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
        } => {
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
            let platform = SoftwarePlatform::open(&store, &source, init)?;
            let core = TeeCore::open(platform, "software")?;
            let listener = server::bind(&socket)?;
            tracing::info!(socket = %socket.display(), store = %store.display(), "TEE core serving");
            println!("{}", custos::tee_process::READY_LINE);
            server::serve(listener, core)?;
        }
        TeeCommand::Provision {
            socket,
            pki,
            cluster,
            node,
        } => {
            let mut client = custos_tee_host::TeeClient::connect(&socket)?;
            let info = custos::ops::provision(&mut client, &PkiDir::new(pki), &cluster, &node)?;
            println!(
                "provisioned {}/{}: device key {}",
                info.cluster,
                info.node,
                hex::encode(&info.public_key)
            );
        }
        TeeCommand::Status { socket } => {
            let mut client = custos_tee_host::TeeClient::connect(&socket)?;
            let status = client.call(&custos_tee_core::protocol::Request::Status)?;
            println!("{status:#?}");
        }
    }
    Ok(())
}
