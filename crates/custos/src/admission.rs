//! The joining node's side of an attestation-verified admission (issue 13), at its own TEE
//! socket: `custos tee chain` reads its device chain, `custos tee attestation-identity` reads the TPM identity a member needs to make
//! the node's ticket, `custos tee admission-evidence` has the node's TEE answer the ticket.

use std::path::Path;

use custos_cloud_api::admission::{identity_view, parse_challenge};
use custos_cloud_api::{AdmissionTicketView, TpmIdentityView};
use custos_wire::client::TeeClient;
use custos_wire::protocol::{Request, Response};

/// Why the node's side of an admission failed.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionCliError {
    /// A file could not be read or is not what it should be.
    #[error("{path}: {reason}")]
    Input {
        /// File path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The TEE could not be reached or refused.
    #[error("TEE: {0}")]
    Tee(String),
    /// The platform has no TPM.
    #[error("this TEE's platform has no TPM identity (a node without a TPM asks for a ticket without one)")]
    NoTpm,
}

fn input(path: &Path, reason: impl ToString) -> AdmissionCliError {
    AdmissionCliError::Input {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn call(socket: &Path, request: &Request) -> Result<Response, AdmissionCliError> {
    let mut client =
        TeeClient::connect(socket).map_err(|e| AdmissionCliError::Tee(e.to_string()))?;
    client
        .call(request)
        .map_err(|e| AdmissionCliError::Tee(e.to_string()))
}

/// The device chain of the TEE at `socket` (device certificate, Cluster CA, Device CA), PEM:
/// what a ticket and an admission name the node by.
pub fn device_chain_pem(socket: &Path) -> Result<String, AdmissionCliError> {
    let chain = match call(socket, &Request::DeviceChain)? {
        Response::DeviceChain(c) => c,
        other => {
            return Err(AdmissionCliError::Tee(format!(
                "unexpected answer to DeviceChain: {other:?}"
            )))
        }
    };
    Ok([&chain.device, &chain.cluster_ca, &chain.device_ca]
        .iter()
        .map(|der| custos_pki::der_to_pem(der, "CERTIFICATE"))
        .collect())
}

/// The TPM identity of the TEE at `socket`, with the endorsement key's chain up to the
/// manufacturer's root taken from `ek_chain` (PEM, root last) when the TPM does not hold it.
pub fn attestation_identity(
    socket: &Path,
    ek_chain: Option<&Path>,
) -> Result<TpmIdentityView, AdmissionCliError> {
    let pem = match ek_chain {
        Some(path) => std::fs::read_to_string(path).map_err(|e| input(path, e))?,
        None => String::new(),
    };
    identity_with_chain(socket, &pem)
}

/// [`attestation_identity`] with the chain's PEM at hand.
pub fn identity_with_chain(
    socket: &Path,
    ek_chain_pem: &str,
) -> Result<TpmIdentityView, AdmissionCliError> {
    let identity = match call(socket, &Request::AttestationIdentity)? {
        Response::AttestationIdentity(Some(i)) => i,
        Response::AttestationIdentity(None) => return Err(AdmissionCliError::NoTpm),
        other => {
            return Err(AdmissionCliError::Tee(format!(
                "unexpected answer to AttestationIdentity: {other:?}"
            )))
        }
    };
    let mut view = identity_view(&identity);
    view.ek_chain_pem.push_str(ek_chain_pem);
    Ok(view)
}

/// The answer of the TEE at `socket` to the ticket in `ticket` (JSON, as `custos cluster
/// members ticket` writes it): the evidence document, hex.
pub fn admission_evidence(socket: &Path, ticket: &Path) -> Result<String, AdmissionCliError> {
    let text = std::fs::read_to_string(ticket).map_err(|e| input(ticket, e))?;
    let view: AdmissionTicketView = serde_json::from_str(&text).map_err(|e| input(ticket, e))?;
    answer_ticket(socket, &view).map_err(|e| match e {
        AdmissionCliError::Input { reason, .. } => input(ticket, reason),
        e => e,
    })
}

/// [`admission_evidence`] with the ticket at hand.
pub fn answer_ticket(
    socket: &Path,
    view: &AdmissionTicketView,
) -> Result<String, AdmissionCliError> {
    let challenge = parse_challenge(view).map_err(|e| AdmissionCliError::Input {
        path: "ticket".into(),
        reason: e.to_string(),
    })?;
    match call(socket, &Request::AdmissionEvidence { challenge })? {
        Response::AdmissionEvidence(e) => Ok(hex::encode(e.document)),
        other => Err(AdmissionCliError::Tee(format!(
            "unexpected answer to AdmissionEvidence: {other:?}"
        ))),
    }
}
