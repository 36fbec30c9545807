//! Device certificates are short-lived (issue 12, item 4): 90 days unless the operator
//! chooses 1 to 825 days; anything else is refused before a certificate is made.

use custos_pki::{
    pem_to_der, validity_window, PkiDir, PkiError, Validity, DEVICE_CERT_DAYS, MAX_DEVICE_CERT_DAYS,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

const DAY: u64 = 86_400;

fn pki() -> (tempfile::TempDir, PkiDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = PkiDir::new(dir.path());
    pki.init().unwrap();
    pki.create_cluster_ca("dc1").unwrap();
    (dir, pki)
}

fn csr() -> String {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "node-1");
    params.distinguished_name = dn;
    params.serialize_request(&key).unwrap().pem().unwrap()
}

/// (notBefore, notAfter) of a PEM certificate, Unix seconds.
fn window(pem: &str) -> (u64, u64) {
    validity_window(&[&pem_to_der(pem, "device certificate").unwrap()]).unwrap()
}

#[test]
fn device_certificates_live_ninety_days_by_default() {
    let (_d, pki) = pki();
    let (nb, na) = window(&pki.sign_device_csr("dc1", &csr()).unwrap());
    // One minute of back-dating for clock skew, then exactly the default lifetime.
    assert_eq!(na - nb, u64::from(DEVICE_CERT_DAYS) * DAY + 60);
    assert_eq!(DEVICE_CERT_DAYS, 90);
}

#[test]
fn a_chosen_lifetime_is_used_within_bounds() {
    let (_d, pki) = pki();
    for days in [1, 30, MAX_DEVICE_CERT_DAYS] {
        let validity = Validity::device_days(days).unwrap();
        let cert = pki
            .sign_device_csr_with_validity("dc1", &csr(), validity)
            .unwrap();
        let (nb, na) = window(&cert);
        assert_eq!(na - nb, u64::from(days) * DAY + 60, "{days} days");
    }
}

#[test]
fn zero_and_absurd_lifetimes_are_refused_by_name() {
    let (_d, pki) = pki();
    for days in [0, MAX_DEVICE_CERT_DAYS + 1, 36_500, u32::MAX] {
        let err = Validity::device_days(days).unwrap_err();
        assert!(
            matches!(err, PkiError::DeviceLifetime { days: d, max: 825 } if d == i64::from(days)),
            "{err}"
        );
        assert!(err.to_string().contains("choose 1 to 825 days"), "{err}");
    }
    // A hand-made window is held to the same bounds, and nothing is written.
    let now = time::OffsetDateTime::now_utc();
    for (validity, days) in [
        (Validity::days(826), 826),
        (
            Validity {
                not_before: now,
                not_after: now,
            },
            0,
        ),
        (
            Validity {
                not_before: now,
                not_after: now - time::Duration::days(3),
            },
            -3,
        ),
    ] {
        let err = pki
            .sign_device_csr_with_validity("dc1", &csr(), validity)
            .unwrap_err();
        assert!(
            matches!(err, PkiError::DeviceLifetime { days: d, .. } if d == days),
            "{err}"
        );
    }
    assert!(!pki.path().join("devices/dc1/node-1.crt").exists());
}
