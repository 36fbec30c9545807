//! The services' JSON logs (issue 16): a local deployment runs each service with
//! `--log-format json` (`CUSTOS_LOG_FORMAT=json`) and appends its log to `logs/<service>.log`.

use std::path::Path;

/// The lines of `log` whose `request_id` is `request_id`; every line of the file must be a
/// JSON object (a text line would mean the service did not log JSON).
pub fn lines_naming(log: &Path, request_id: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert!(!text.is_empty(), "{} is empty", log.display());
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", log.display()));
            assert!(value.is_object(), "{line}");
            assert!(
                value["timestamp"].is_string() && value["level"].is_string(),
                "{line}"
            );
            value
        })
        .filter(|v| v["request_id"] == request_id)
        .collect()
}
