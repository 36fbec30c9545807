//! The demo's metrics (issue 16): every service's `/metrics` scraped as the demo starts and
//! again as it ends, each kept exactly as Prometheus would read it
//! (`<dir>/metrics/<when>/<service>.txt`), so that an independent parser can compare them
//! (the demo test reads them with the Python `prometheus_client`). The demo checks only what
//! it can without parsing: each answer is OpenMetrics text, whole (`# EOF`).

use std::time::Duration;

use serde_json::json;
use tokio::runtime::Runtime;

use super::{fail, AnyError, Demo};

/// Largest metrics page kept (a cluster's bridge serves a few KB).
const MAX_PAGE: usize = 1 << 20;

impl Demo {
    /// Every service's metrics endpoint: (service, URL, whether it is a node server).
    fn metrics_endpoints(&self) -> Vec<(String, String, bool)> {
        let mut all = vec![("cloud".to_string(), self.dep.metrics_url.clone(), false)];
        for c in &self.dep.clusters {
            let bridge = format!("{}-bridge", c.name);
            all.push((bridge, c.bridge_metrics_url.clone(), false));
            if let Some(r) = &c.relay {
                all.push((format!("{}-relay", c.name), r.metrics_url.clone(), false));
            }
            for n in &c.nodes {
                all.push((n.name.clone(), n.metrics_url.clone(), true));
            }
        }
        all
    }

    /// Scrapes every service into `<dir>/metrics/<when>/` and records it as a step. The
    /// cloud server, every bridge and every relay must answer; a node server may be down
    /// (steps kill and restart nodes), and is then listed as such.
    pub(super) fn scrape_metrics(
        &mut self,
        rt: &Runtime,
        when: &str,
    ) -> Result<serde_json::Value, AnyError> {
        let folder = self.dir.join("metrics").join(when);
        std::fs::create_dir_all(&folder)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut scraped = Vec::new();
        let mut down = Vec::new();
        for (service, url, node) in self.metrics_endpoints() {
            match rt.block_on(page(&http, &url)) {
                Ok(text) => {
                    let file = folder.join(format!("{service}.txt"));
                    std::fs::write(&file, &text)?;
                    scraped.push(json!({
                        "service": service, "url": url, "file": file, "bytes": text.len(),
                    }));
                }
                Err(e) if node => down.push(json!({"service": service, "url": url, "error": e})),
                Err(e) => return Err(fail(&format!("metrics of {service} at {url}: {e}"))),
            }
        }
        self.steps.ok(
            "metrics",
            format!(
                "{when}: /metrics of {} services scraped as OpenMetrics text into {}{}",
                scraped.len(),
                folder.display(),
                if down.is_empty() {
                    String::new()
                } else {
                    format!(", {} node(s) down", down.len())
                }
            ),
        );
        Ok(json!({"scraped": scraped, "down": down}))
    }
}

/// `GET url`: the page, if it is whole OpenMetrics text.
async fn page(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let answer = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !answer.status().is_success() {
        return Err(format!("HTTP {}", answer.status()));
    }
    let kind = answer
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !kind.starts_with("application/openmetrics-text") {
        return Err(format!("content type {kind:?}"));
    }
    let mut answer = answer;
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_PAGE {
            return Err("page too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).map_err(|_| "not UTF-8".to_string())?;
    if !text.trim_end().ends_with("# EOF") {
        return Err("page cut short (no # EOF)".into());
    }
    Ok(text)
}
