//! `custos demo --platform tpm` end to end (each TEE on a swtpm of its own, skipped where
//! swtpm is not installed unless `CUSTOS_TEST_REQUIRE_SWTPM` is set): it exits 0, and its
//! report names every TEE's platform as the TEE reports it, each cluster's founder and its
//! two nodes admitted by TPM quote, and the store copy put back and refused
//! (`store_rolled_back`).

use std::collections::BTreeMap;

use crate::common::exe;
use crate::metrics::{parsed, total};
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
    // after it (issue 15), then the webhook receiver's check of every request (issue 17),
    // and last the metrics as the demo ends (issue 16).
    let rollback_at = steps.iter().position(|s| *s == "rollback-refused");
    assert_eq!(rollback_at, Some(steps.len() - 4), "{steps:?}");
    assert_eq!(steps[steps.len() - 3], "qr-link", "{steps:?}");
    assert_eq!(steps[steps.len() - 2], "webhooks", "{steps:?}");
    assert_eq!(steps.last(), Some(&"metrics"), "{steps:?}");
    metrics_moved(&doc["metrics"]);
}

/// Every service's metrics, kept as the demo started and as it ended, parse with the
/// independent OpenMetrics parser, and the counters of what the demo did moved: the cloud
/// server's requests, and in each cluster the bridge's routed requests, the relay's
/// forwards and its nodes' TEE calls (issue 16).
fn metrics_moved(metrics: &serde_json::Value) {
    type Pages = BTreeMap<String, BTreeMap<String, f64>>;
    // Whole OpenMetrics pages with counters, whether or not the parser is here.
    for when in ["start", "end"] {
        for s in metrics[when]["scraped"].as_array().unwrap() {
            let text = std::fs::read_to_string(s["file"].as_str().unwrap()).unwrap();
            assert!(text.trim_end().ends_with("# EOF"), "{s}");
            assert!(text.contains("_total"), "{s}");
        }
    }
    let read = |when: &str| -> Option<Pages> {
        metrics[when]["scraped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let text = std::fs::read_to_string(s["file"].as_str().unwrap()).unwrap();
                Some((s["service"].as_str().unwrap().to_string(), parsed(&text)?))
            })
            .collect()
    };
    let (Some(start), Some(end)) = (read("start"), read("end")) else {
        return; // no parser here, and none required
    };
    let moved = |service: &str, counter: &str| {
        let at = |pages: &Pages| pages.get(service).map_or(0.0, |m| total(m, counter));
        let (before, after) = (at(&start), at(&end));
        assert!(after > before, "{service}: {counter} {before} -> {after}");
    };
    moved("cloud", "custos_cloud_requests_created");
    moved("cloud", "custos_cloud_requests_ended");
    moved("cloud", "custos_cloud_tee_calls");
    for c in ["dc1", "dc2", "dc3", "dc4"] {
        moved(&format!("{c}-bridge"), "custos_bridge_requests");
        moved(&format!("{c}-relay"), "custos_relay_forwards");
        // Summed over the cluster's nodes (a node restarted by a step counts from 0 again).
        let calls = |pages: &Pages| -> f64 {
            pages
                .iter()
                .filter(|(service, _)| service.starts_with(&format!("{c}-node")))
                .map(|(_, m)| total(m, "custos_node_tee_calls"))
                .sum()
        };
        let (before, after) = (calls(&start), calls(&end));
        assert!(after > before, "{c}: node TEE calls {before} -> {after}");
    }
    // Every service answered again at the end (the node a step killed is back by then).
    for service in start.keys() {
        assert!(
            end.contains_key(service),
            "{service} not scraped at the end: {metrics}"
        );
    }
}
