//! Intel TDX: the dcap-qvl 0.7.1 sample quote (v4) with its collateral.

use custos_attest::{expect_binding, verify_tdx, AttestError, TdxPolicy, MAX_TDX_COLLATERAL};

use crate::{code, fixture};

/// 2025-06-20T00:00:00Z; the collateral is valid 2025-06-19T10:32:27Z–2025-07-19T10:00:35Z.
const AT: u64 = 1_750_377_600;

fn quote() -> Vec<u8> {
    fixture("tdx/tdx_quote")
}

fn collateral() -> Vec<u8> {
    fixture("tdx/tdx_quote_collateral.json")
}

#[test]
fn genuine_quote_verifies_at_its_time() {
    let ev = verify_tdx(&quote(), &collateral(), AT, &TdxPolicy::intel()).unwrap();
    assert_eq!(hex::encode(&ev.report_data[..4]), "9a9d48e7");
    assert_eq!(ev.tcb_status, "UpToDate");
    assert_ne!(ev.mr_td, [0; 48]);
}

#[test]
fn flipped_quote_byte_is_signature_invalid() {
    let mut q = quote();
    q[200] ^= 1;
    assert_eq!(
        code(verify_tdx(&q, &collateral(), AT, &TdxPolicy::intel())),
        "signature_invalid"
    );
}

#[test]
fn edited_tcb_status_in_the_collateral_is_signature_invalid() {
    // The host supplies the collateral: it could try to report an outdated platform as
    // up to date. The TCB info JSON is signed by Intel.
    let mut c: serde_json::Value = serde_json::from_slice(&collateral()).unwrap();
    let tcb_info = c["tcb_info"].as_str().unwrap().to_string();
    let edited = tcb_info.replacen("\"OutOfDate\"", "\"UpToDate\"", 1);
    assert_ne!(edited, tcb_info, "the sample lists an OutOfDate level");
    c["tcb_info"] = serde_json::Value::String(edited);
    let c = serde_json::to_vec(&c).unwrap();
    assert_eq!(
        code(verify_tdx(&quote(), &c, AT, &TdxPolicy::intel())),
        "signature_invalid"
    );
}

#[test]
fn another_root_is_wrong_root() {
    let policy = TdxPolicy {
        root_der: fixture("snp/vcek_milan.der"),
    };
    assert_eq!(
        code(verify_tdx(&quote(), &collateral(), AT, &policy)),
        "wrong_root"
    );
}

#[test]
fn after_the_collateral_expired_is_tcb_expired() {
    assert_eq!(
        code(verify_tdx(
            &quote(),
            &collateral(),
            1_753_000_000,
            &TdxPolicy::intel()
        )),
        "tcb_expired"
    );
}

#[test]
fn oversize_and_malformed_inputs_are_refused_by_name() {
    let big = vec![b' '; MAX_TDX_COLLATERAL + 1];
    assert!(matches!(
        verify_tdx(&quote(), &big, AT, &TdxPolicy::intel()),
        Err(AttestError::Oversize { .. })
    ));
    assert_eq!(
        code(verify_tdx(&quote(), b"{}", AT, &TdxPolicy::intel())),
        "malformed"
    );
    let q = quote();
    assert_eq!(
        code(verify_tdx(&q[..40], &collateral(), AT, &TdxPolicy::intel())),
        "malformed"
    );
}

#[test]
fn binding_is_the_first_half_of_report_data() {
    let ev = verify_tdx(&quote(), &collateral(), AT, &TdxPolicy::intel()).unwrap();
    let bound: [u8; 32] = ev.report_data[..32].try_into().unwrap();
    assert_eq!(expect_binding(&ev, &bound), Ok(()));
    assert_eq!(
        expect_binding(&ev, &[0; 32]),
        Err(AttestError::BindingMismatch)
    );
}
