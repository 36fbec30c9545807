//! `custos bench psbt` runs end to end on a small PSBT: the TEE process signs it (the bench
//! fails otherwise) and the report gives both medians and their ratio. Nothing is asserted
//! on the times themselves.

use crate::common::exe;

#[test]
fn the_psbt_benchmark_signs_in_a_tee_process_and_reports_a_ratio() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(exe())
        .args(["bench", "psbt", "--inputs", "4", "--rounds", "2", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("signing a 4-input PSBT"), "{text}");
    assert!(text.contains("ms per PSBT"), "{text}");
    assert!(text.contains("ratio TEE / raw: "), "{text}");
}
