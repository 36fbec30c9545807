//! Approvals as the server receives them: certificates and signature decoded from the
//! API's form before the certificate chain and the signature are checked.

use custos_cloud_api::{ApprovalBody, MAX_APPROVAL_PEM};
use custos_pki::pem_to_der;

/// An approval's parts, decoded: admin certificate, Admin CA certificate, signature (DER).
pub(crate) struct DecodedApproval {
    pub cert: Vec<u8>,
    pub ca: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Decodes an approval's certificates and signature.
pub(crate) fn decode_approval(a: &ApprovalBody) -> Result<DecodedApproval, String> {
    // The API's stated limit: sixteen approvals of this size still fit in one body.
    for (pem, what) in [
        (&a.admin_cert_pem, "admin certificate"),
        (&a.admin_ca_pem, "Admin CA certificate"),
    ] {
        if pem.len() > MAX_APPROVAL_PEM {
            return Err(format!(
                "{what} PEM of {} bytes, at most {MAX_APPROVAL_PEM}",
                pem.len()
            ));
        }
    }
    let cert = pem_to_der(&a.admin_cert_pem, "admin certificate").map_err(|e| e.to_string())?;
    let ca = pem_to_der(&a.admin_ca_pem, "Admin CA certificate").map_err(|e| e.to_string())?;
    // An ECDSA P-256 DER signature is at most 72 bytes.
    if a.signature_hex.len() > 2 * 80 {
        return Err("signature is too long".into());
    }
    let sig = hex::decode(&a.signature_hex).map_err(|_| "signature is not hex".to_string())?;
    Ok(DecodedApproval {
        cert,
        ca,
        signature: sig,
    })
}
