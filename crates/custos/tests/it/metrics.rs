//! The cloud server's `/metrics` (issue 16), read as Prometheus reads it: fetched over HTTP
//! and parsed by an independent OpenMetrics parser (the Python `prometheus_client`
//! package, which `scripts/test-deps.sh` installs).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The Python with `prometheus_client`, or `None` to skip, unless
/// `CUSTOS_TEST_REQUIRE_PROMETHEUS` is set.
fn python() -> Option<PathBuf> {
    crate::common::python_with("prometheus_client", "CUSTOS_TEST_REQUIRE_PROMETHEUS")
}

/// `GET url` over plain HTTP/1.1 on loopback: (content type, body).
fn get(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut stream = std::net::TcpStream::connect(host).expect("metrics listener");
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (content_type, body.to_string())
}

/// Every sample of the metrics at `url`, `name{labels as JSON}` → value, as the
/// independent parser reads them; `None` without the parser.
pub fn metrics_at(url: &str) -> Option<BTreeMap<String, f64>> {
    python()?;
    let (content_type, body) = get(url);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    parsed(&body)
}

/// Every sample of an OpenMetrics page as the independent parser reads it (see
/// [`metrics_at`]); `None` without the parser.
pub fn parsed(body: &str) -> Option<BTreeMap<String, f64>> {
    let python = python()?;
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(s.name + json.dumps(s.labels, sort_keys=True) + " " + repr(float(s.value)))
"#;
    let out = crate::common::output_with_stdin(
        Command::new(python)
            .args(["-c", script])
            .stderr(Stdio::piped()),
        body.as_bytes(),
    );
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect(),
    )
}

/// The value of `sample` in `metrics`, 0 when absent.
pub fn sample(metrics: &BTreeMap<String, f64>, sample: &str) -> f64 {
    metrics.get(sample).copied().unwrap_or(0.0)
}

/// The sum of every sample of the counter family `name` (all label sets), 0 when absent.
pub fn total(metrics: &BTreeMap<String, f64>, name: &str) -> f64 {
    let prefix = format!("{name}_total{{");
    metrics
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
        .sum()
}
