//! Dealer bundles: one cluster's threshold share T_i with its Paillier material P, sealed to
//! the certified D key of one node of that cluster and signed by the operating company's
//! dealer (patent [0070]-[0072], DESIGN flow 6).
//!
//! The context, transcript and sealing are [`custos_wire::threshold`]'s; here the share is
//! checked against its key facts before sealing (the dealer), and opened inside the TEE.

use custos_pki::{DealerSigner, DeviceIdentity};
use custos_threshold::ThresholdShare;
use zeroize::Zeroizing;

use super::check_share;
use custos_wire::protocol::{TeeError, ThresholdBundle, ThresholdKeyInfo};
use custos_wire::seal::open_with;

/// Largest bundle ciphertext accepted: a share of the largest accepted size plus the AEAD tag.
pub const MAX_BUNDLE_CIPHERTEXT: usize = custos_threshold::MAX_SHARE_BYTES + 16;

/// Seals `share` for the node `recipient` and signs the bundle as `dealer`
/// ([`custos_wire::threshold::seal_bundle`]), after checking that `key` describes `share`
/// (public key, chain code, threshold, n, index), so a dealer mistake is caught before the
/// bundle travels.
pub fn seal_bundle(
    share: &ThresholdShare,
    key: ThresholdKeyInfo,
    recipient: &DeviceIdentity,
    dealer: &DealerSigner,
) -> Result<ThresholdBundle, TeeError> {
    check_share(&key, share).map_err(TeeError::ThresholdRejected)?;
    let plaintext: Zeroizing<Vec<u8>> = share.to_sealed_bytes();
    custos_wire::threshold::seal_bundle(&plaintext, key, recipient, dealer)
}

/// Opens a bundle's ciphertext with D's private scalar under `context` and decodes the share.
/// The caller checks the share against the key info.
pub(crate) fn open_bundle(
    private_scalar: &[u8],
    context: &[u8],
    bundle: &ThresholdBundle,
) -> Result<ThresholdShare, TeeError> {
    if bundle.ciphertext.len() > MAX_BUNDLE_CIPHERTEXT {
        return Err(TeeError::ThresholdRejected(format!(
            "bundle ciphertext of {} bytes, at most {MAX_BUNDLE_CIPHERTEXT}",
            bundle.ciphertext.len()
        )));
    }
    let plaintext = open_with(
        private_scalar,
        &bundle.enc,
        &bundle.ciphertext,
        context,
        TeeError::ThresholdRejected,
    )?;
    ThresholdShare::from_bytes(&plaintext)
        .map_err(|e| TeeError::ThresholdRejected(format!("bundle share: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_wire::protocol::ThresholdOrigin;

    fn info() -> ThresholdKeyInfo {
        ThresholdKeyInfo {
            key_id: vec![2; 33],
            chain_code: Some([1; 32]),
            threshold: 2,
            clusters: vec!["dc1".into(), "dc2".into(), "dc3".into()],
            quorum: 1,
            origin: ThresholdOrigin::Dealer,
            share_index: 1,
        }
    }

    #[test]
    fn oversized_ciphertext_is_refused_before_opening() {
        let bundle = ThresholdBundle {
            key: info(),
            recipient_fingerprint: [0; 32],
            dealer_cert: vec![],
            dealer_ca: vec![],
            enc: vec![4; 65],
            ciphertext: vec![0; MAX_BUNDLE_CIPHERTEXT + 1],
            signature: vec![],
        };
        let e = open_bundle(&[1; 32], b"ctx", &bundle).unwrap_err();
        assert!(
            matches!(e, TeeError::ThresholdRejected(ref m) if m.contains("at most")),
            "{e:?}"
        );
    }
}
