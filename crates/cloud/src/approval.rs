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

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(cert_pem: String) -> ApprovalBody {
        ApprovalBody {
            admin_cert_pem: cert_pem,
            admin_ca_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
            signature_hex: "3006020101020101".into(),
        }
    }

    #[test]
    fn a_certificate_pem_over_the_documented_limit_is_refused_by_name() {
        let pem = |body_len: usize| {
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                "A".repeat(body_len)
            )
        };
        let frame = pem(0).len();
        let at_limit = pem(MAX_APPROVAL_PEM - frame);
        assert_eq!(at_limit.len(), MAX_APPROVAL_PEM);
        // At the limit the PEM is read (and fails only as base64 of no certificate).
        let e = decode_approval(&approval(at_limit))
            .err()
            .unwrap_or_default();
        assert!(!e.contains("at most"), "{e}");
        let over = pem(MAX_APPROVAL_PEM - frame + 1);
        let e = decode_approval(&approval(over)).err().expect("refused");
        assert!(
            e.contains("admin certificate PEM of 1537 bytes, at most 1536"),
            "{e}"
        );
    }
}
