//! `custos demo --platform tpm` end to end (each TEE on a swtpm of its own, skipped where
//! swtpm is not installed unless `CUSTOS_TEST_REQUIRE_SWTPM` is set): it exits 0, and its
//! report names every TEE's platform as the TEE reports it, each cluster's founder and its
//! two nodes admitted by TPM quote, and the store copy put back and refused
//! (`store_rolled_back`).

use crate::common::exe;
use custos_test_kit::swtpm::available;

#[test]
fn demo_on_the_tpm_platform_reports_each_tee_on_a_tpm_and_a_rollback_refused() {
    if !available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("report.json");
    let out = std::process::Command::new(exe())
        .args(["demo", "--platform", "tpm", "--dir"])
        .arg(tmp.path().join("demo"))
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(doc["all_verified"], true);
    // The webhook receiver heard of every request's state, each delivery verified.
    assert_eq!(doc["webhooks"]["verified"], true);
    assert!(
        doc["webhooks"]["events"].as_u64().unwrap() > doc["webhooks"]["requests"].as_u64().unwrap()
    );
    assert_eq!(doc["platform"]["requested"], "tpm");
    let tees = doc["tees"].as_array().unwrap();
    assert_eq!(tees.len(), 9, "{tees:?}");
    let mut quoted = 0;
    for t in tees {
        assert_eq!(t["platform"], "tpm", "{t}");
        assert!(t["tpm"].as_str().unwrap().starts_with("swtpm:"), "{t}");
        let a = &t["attestation"];
        if a["founder"] == true {
            assert_eq!(a["verified"], false, "{t}");
            continue;
        }
        // Admitted after the genesis: by its TPM's quote, the nonce sealed to that TPM.
        assert_eq!(a["verified"], true, "{t}");
        assert_eq!(a["evidence"], "tpm2-quote", "{t}");
        assert_eq!(a["nonce_sealed_to_tpm"], true, "{t}");
        assert_eq!(a["ek_root_sha256"].as_str().unwrap().len(), 64, "{t}");
        assert_ne!(a["ticket_issuer"], t["node"], "{t}");
        quoted += 1;
    }
    assert_eq!(
        quoted, 6,
        "two nodes of each cluster admitted by quote: {tees:?}"
    );
    for g in doc["governance"]["clusters"].as_array().unwrap() {
        assert_eq!(g["founders"].as_array().unwrap().len(), 1, "{g}");
        assert_eq!(g["members"].as_array().unwrap().len(), 3, "{g}");
    }
    let rollback = &doc["platform"]["rollback"];
    assert_eq!(rollback["run"], true, "{rollback}");
    assert_eq!(rollback["code"], "store_rolled_back", "{rollback}");
    assert!(rollback["refusal"]
        .as_str()
        .unwrap()
        .starts_with("error: store_rolled_back: "));
    let steps: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert!(steps.contains(&"tee-platforms"), "{steps:?}");
    assert_eq!(
        steps.iter().filter(|s| **s == "admission").count(),
        3,
        "{steps:?}"
    );
    // The rollback is refused once every TEE ran; the cluster behind the QR channel comes
    // after it (issue 15), and last the webhook receiver's check of every request (issue 17).
    let rollback_at = steps.iter().position(|s| *s == "rollback-refused");
    assert_eq!(rollback_at, Some(steps.len() - 3), "{steps:?}");
    assert_eq!(steps[steps.len() - 2], "qr-link", "{steps:?}");
    assert_eq!(steps.last(), Some(&"webhooks"), "{steps:?}");
}
