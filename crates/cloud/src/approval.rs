//! Approvals as the server receives them: certificates and signature decoded from the
//! API's form before the certificate chain and the signature are checked.

use custos_cloud_api::ApprovalBody;
use custos_pki::pem_to_der;

/// An approval's parts, decoded: admin certificate, Admin CA certificate, signature (DER).
pub(crate) struct DecodedApproval {
    pub cert: Vec<u8>,
    pub ca: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Decodes an approval's certificates and signature (size-limited by the body limit).
pub(crate) fn decode_approval(a: &ApprovalBody) -> Result<DecodedApproval, String> {
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
