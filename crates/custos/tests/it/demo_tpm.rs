//! `custos demo --platform tpm` end to end (each TEE on a swtpm of its own, skipped where
//! swtpm is not installed unless `CUSTOS_TEST_REQUIRE_SWTPM` is set): it exits 0, and its
//! report names every TEE's platform as the TEE reports it and the store copy put back and
//! refused (`store_rolled_back`).

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
    assert_eq!(doc["platform"]["requested"], "tpm");
    let tees = doc["tees"].as_array().unwrap();
    assert_eq!(tees.len(), 9, "{tees:?}");
    for t in tees {
        assert_eq!(t["platform"], "tpm", "{t}");
        assert!(t["tpm"].as_str().unwrap().starts_with("swtpm:"), "{t}");
        assert!(t["attestation"].is_null(), "{t}");
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
    assert_eq!(steps.last(), Some(&"rollback-refused"), "{steps:?}");
}
