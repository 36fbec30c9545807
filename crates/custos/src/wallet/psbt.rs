//! `custos wallet sign-psbt`: a Bitcoin PSBT submitted for signing. The server records it
//! with the intent a TEE computed (what approvers read and sign); with `--wait` the command
//! stays until the request ends and writes the signed PSBT.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bitcoin::base64::engine::general_purpose::STANDARD as BASE64;
use bitcoin::base64::Engine;
use clap::Args;
use custos_cloud_api::client::CloudClient;
use custos_cloud_api::{RequestResult, RequestStatus, RequestView, SignPsbtBody};

use super::{client, read_bytes, show_request, WalletCliError};

/// Options of `custos wallet sign-psbt`.
#[derive(Clone, Debug, Args)]
pub struct SignPsbtArgs {
    /// Cloud server base URL.
    #[arg(long, env = "CUSTOS_API_URL")]
    pub api: String,
    /// API token.
    #[arg(long, env = "CUSTOS_API_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Root certificate (PEM) to trust for an HTTPS API.
    #[arg(long)]
    pub api_root_ca: Option<PathBuf>,
    /// The wallet (hex of its root public key), or a threshold key with HD derivation (hex
    /// of its joint public key).
    #[arg(long)]
    pub root: String,
    /// A threshold key's clusters to sign with, comma-separated, in order of preference
    /// (default: the server chooses).
    #[arg(long, value_delimiter = ',')]
    pub clusters: Option<Vec<String>>,
    /// `bitcoin`, `testnet`, `signet` or `regtest`.
    #[arg(long, default_value = "bitcoin")]
    pub network: String,
    /// The PSBT file, binary or base64 (`-`: standard input).
    #[arg(long)]
    pub psbt: PathBuf,
    /// Wait this many seconds for the approvals and the signature.
    #[arg(long)]
    pub wait: Option<u64>,
    /// Where the signed PSBT (base64) goes once signed (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The PSBT in `bytes` as base64: a binary PSBT (its magic first) is encoded, base64 text
/// is passed on trimmed.
pub fn psbt_base64(bytes: &[u8]) -> String {
    if bytes.starts_with(b"psbt\xff") {
        BASE64.encode(bytes)
    } else {
        String::from_utf8_lossy(bytes).trim().to_string()
    }
}

/// Runs `custos wallet sign-psbt`: records the request, shows its intent, and with `--wait`
/// waits for its end, writing the signed PSBT.
pub async fn run(args: &SignPsbtArgs, out: &mut dyn Write) -> Result<RequestView, WalletCliError> {
    let bytes = if args.psbt.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .take(2 * custos_cloud_api::MAX_PSBT_BYTES as u64)
            .read_to_end(&mut b)
            .map_err(|source| WalletCliError::Io {
                path: "stdin".into(),
                source,
            })?;
        b
    } else {
        read_bytes(&args.psbt)?
    };
    let client = client(&args.api, &args.token, args.api_root_ca.as_deref())?;
    let view = client
        .sign_psbt(&SignPsbtBody {
            root_id: args.root.clone(),
            network: args.network.clone(),
            psbt: psbt_base64(&bytes),
            clusters: args.clusters.clone(),
            request_id: None,
            expires_at: None,
            approvals: Vec::new(),
        })
        .await?;
    show_request(&view, out)?;
    let Some(secs) = args.wait else {
        return Ok(view);
    };
    let done = wait_for(&client, &view.id, Duration::from_secs(secs)).await?;
    match &done.result {
        Some(RequestResult::Psbt(r)) => {
            let text = format!("{}\n", r.psbt);
            match &args.out {
                Some(p) => std::fs::write(p, text).map_err(|source| WalletCliError::Io {
                    path: p.clone(),
                    source,
                })?,
                None => out
                    .write_all(text.as_bytes())
                    .map_err(|source| WalletCliError::Io {
                        path: "stdout".into(),
                        source,
                    })?,
            }
            Ok(done)
        }
        _ => Err(WalletCliError::NotSigned {
            id: done.id.clone(),
            status: done.status.as_str().to_string(),
            error: done
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_default(),
        }),
    }
}

/// The request `id` once it ended (completed, refused, failed, expired), or as it stands
/// when `timeout` passed.
pub async fn wait_for(
    client: &CloudClient,
    id: &str,
    timeout: Duration,
) -> Result<RequestView, WalletCliError> {
    let deadline = Instant::now() + timeout;
    loop {
        let view = client.request(id).await?;
        let open = matches!(
            view.status,
            RequestStatus::PendingApproval | RequestStatus::Submitting
        );
        if !open || Instant::now() >= deadline {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
