//! Approvals as the server receives them: certificates, signature and a passkey's assertion
//! decoded from the API's form, before the certificate chain and the signature are checked.

use custos_cloud_api::{ApprovalBody, MAX_APPROVAL_PEM};
use custos_pki::pem_to_der;
use custos_pki::webauthn::{MAX_AUTHENTICATOR_DATA, MAX_CLIENT_DATA};
use custos_wire::approval::{Approval, PasskeyAssertion};

/// Decodes hex of at most `max` bytes.
fn hex_at_most(s: &str, max: usize, what: &str) -> Result<Vec<u8>, String> {
    if s.len() > 2 * max {
        return Err(format!("{what} is over {max} bytes"));
    }
    hex::decode(s).map_err(|_| format!("{what} is not hex"))
}

/// Decodes an approval's certificates, signature and assertion, as the TEE takes them.
pub(crate) fn decode_approval(a: &ApprovalBody) -> Result<Approval, String> {
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
    let signature = hex_at_most(&a.signature_hex, 80, "signature")?;
    let webauthn = match &a.webauthn {
        None => None,
        Some(w) => Some(PasskeyAssertion {
            authenticator_data: hex_at_most(
                &w.authenticator_data_hex,
                MAX_AUTHENTICATOR_DATA,
                "authenticator data",
            )?,
            client_data_json: hex_at_most(&w.client_data_json_hex, MAX_CLIENT_DATA, "client data")?,
        }),
    };
    Ok(Approval {
        admin_cert: cert,
        admin_ca: ca,
        signature,
        webauthn,
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
            webauthn: None,
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
        let e = decode_approval(&approval(over)).expect_err("refused");
        assert!(
            e.contains("admin certificate PEM of 1537 bytes, at most 1536"),
            "{e}"
        );
    }
}
