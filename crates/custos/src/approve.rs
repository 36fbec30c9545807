//! `custos approve`: an admin reviews a pending request and signs its approval with the
//! admin's own key (a file made by `custos admin keygen`, or a PKCS#11 token).
//!
//! The approval message is recomputed here from the request's fields with the TEE core's
//! encoder; the server's copy is only compared against it (a server showing one thing and
//! asking to sign another is refused). What will be signed is printed in full, and the
//! admin confirms it unless `--yes`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use custos_cloud_api::client::{ClientError, CloudClient};
use custos_cloud_api::review::{list_pending, review_and_approve, ReviewError};
use custos_cloud_api::RequestView;

use crate::admin::{AdminKeyError, KeySource};

/// Options of `custos approve`.
#[derive(Clone, Debug)]
pub struct ApproveArgs {
    /// Base URL of the cloud server.
    pub api: String,
    /// API token.
    pub token: String,
    /// Root certificate (PEM) to trust for HTTPS, if not a public one.
    pub api_root_ca: Option<PathBuf>,
    /// The admin's certificate chain file (admin certificate, then Admin CA).
    pub cert: PathBuf,
    /// The admin's key: a file or a token.
    pub key: KeySource,
    /// Request to approve; `None` lists pending requests.
    pub request: Option<String>,
    /// Skip the confirmation prompt.
    pub yes: bool,
}

/// Failures of `custos approve`.
#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    /// The server refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The admin's key or certificate could not be loaded.
    #[error(transparent)]
    Key(#[from] AdminKeyError),
    /// The root certificate could not be read.
    #[error("API root certificate: {0}")]
    Io(#[from] std::io::Error),
    /// The review or the approval did not go through.
    #[error(transparent)]
    Review(#[from] ReviewError),
}

/// Runs `custos approve`: lists pending requests, or reviews, confirms (reading `input`),
/// signs and posts one approval, writing to `out`.
pub async fn approve(
    args: &ApproveArgs,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<Option<RequestView>, ApproveError> {
    let client = match &args.api_root_ca {
        Some(p) => {
            CloudClient::with_root_pem(&args.api, &args.token, &std::fs::read_to_string(p)?)?
        }
        None => CloudClient::new(&args.api, &args.token)?,
    };
    let Some(id) = &args.request else {
        list_pending(&client, out).await?;
        return Ok(None);
    };
    // Load the key before anything is shown, so a wrong key, PIN or chain fails before the
    // prompt.
    let signer = args.key.signer(&args.cert)?;
    let updated =
        review_and_approve(&client, id, signer.name(), &signer, args.yes, input, out).await?;
    Ok(Some(updated))
}
