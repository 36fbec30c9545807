//! The OpenAPI document against the running server, with requests made from the document
//! itself: every request valid under it is accepted, or refused only for a reason the
//! document names that no schema can state (state, authorisation, the clock, a rule across
//! fields written in its text); every request that breaks it in one place is refused with a
//! 4xx its route documents; no input gets a 5xx; every answer matches its documented schema.

mod generate;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use custos_cloud_api::ErrorCode;
use custos_test_kit::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, Url};
use serde_json::Value;

use generate::{unanchored, Doc, Gen, Known};

/// Generated requests per operation and kind (valid, broken): bounded in count, and the
/// whole run in time.
const PER_OPERATION: usize = 64;
const TIME_LIMIT: Duration = Duration::from_secs(240);
/// Most further valid calls of a creation route made until one is accepted.
const EXTRA_CREATIONS: usize = 512;

/// Refusals a request valid under the document may still get on any route: what the
/// server holds (unknown ids, duplicates, lifecycle), who approved (signatures and
/// certificates), and the clock (`expires_at` relative to now).
const STATE_CODES: &[&str] = &[
    "unknown_cluster",
    "unknown_wallet",
    "unknown_request",
    "unknown_threshold_key",
    "request_exists",
    "wallet_exists",
    "duplicate_approval",
    "not_pending",
    "request_expired",
    "conflict",
    "threshold_key_mismatch",
    "bundle_recipient_unknown",
    "approval_invalid",
    "approver_not_in_group",
    "approval_format_changed",
    "unknown_executor",
    "invalid_expiry",
    "already_governed",
    "not_governed",
    "unknown_member",
    "approver_not_a_governor",
    "admin_revoked",
];

/// Rules no JSON Schema can state, written in the route's text instead: contents checked
/// by parsing (BIP-39 words and checksum, a dealer bundle), relations between fields, and
/// what a recorded key allows.
fn text_rules(method: &str, path: &str) -> &'static [&'static str] {
    match (method, path) {
        // Exactly one of mnemonic and seed_hex; passphrase with a mnemonic; BIP-39 words;
        // a group's quorum at most its size (and a group once the cluster is governed).
        // Rules with a group only, making a valid policy.
        ("post", "/v1/wallets/import") => &["invalid_secret", "invalid_group", "invalid_rules"],
        // quorum at most the group's size; fingerprints distinct whatever their case.
        // Rules: a valid policy (transactions_only with any other rule, tiers above the
        // quorum, ...), amounts in range.
        ("post", "/v1/wallets") => &["invalid_group", "invalid_rules"],
        // The new quorum at most the new group's size; fingerprints distinct whatever their
        // case.
        // Rules: a valid policy, and a change the TEE's rules allow.
        ("put", "/v1/wallets/{root_id}/policy") => &["invalid_group", "invalid_rules"],
        // As a wallet's, and the quorum must be the threshold key's own; a window counted on
        // one of its shares.
        ("put", "/v1/threshold/keys/{key_id}/policy") => {
            &["invalid_group", "invalid_quorum", "invalid_rules"]
        }
        // The bundle's own encoding, signature and facts.
        ("post", "/v1/threshold/keys/import") => &["invalid_bundle"],
        // t <= n, the number of clusters named; a group's quorum at most its size.
        // Rules with a group only, making a valid policy, a window on one of its shares.
        ("post", "/v1/threshold/keys") => &["invalid_threshold", "invalid_group", "invalid_rules"],
        // digest required without message and SHA-256 of it with one; the named clusters
        // hold shares of the key, at least t; a key without chain code signs only at m.
        ("post", "/v1/threshold/sign") => &[
            "invalid_digest",
            "invalid_message",
            "invalid_clusters",
            "invalid_path",
        ],
        // The named clusters hold shares of the key.
        ("post", "/v1/threshold/keys/{key_id}/presignatures") => &["invalid_clusters"],
        // Base64 of at most 1 MiB; a transaction the wallet's TEE signs (its own inputs,
        // values proven, SIGHASH_ALL), which only the TEE can tell; clusters named for a
        // threshold key only, holding its shares.
        ("post", "/v1/psbt-requests") => {
            &["invalid_psbt", "transaction_rejected", "invalid_clusters"]
        }
        // Exactly one of the three payloads; a payload the wallet's TEE parses and signs.
        ("post", "/v1/eth-requests") => &["invalid_ethereum", "transaction_rejected"],
        // start needs count; start + count at most 2^31.
        ("get", "/v1/wallets/{root_id}/derive") => &["invalid_range"],
        // Governance: the log's own rules (quorum at most the governors, a revocation names
        // a key, ...), and members named by nodes the bridge knows, with verifying chains.
        ("post", "/v1/clusters/{name}/genesis") => &["invalid_governance", "invalid_chain"],
        ("post", "/v1/clusters/{name}/members") => &["invalid_governance", "invalid_chain"],
        // A ticket: the node's chain must verify, its TPM identity must parse.
        ("post", "/v1/clusters/{name}/members/tickets") => &["invalid_governance", "invalid_chain"],
        ("post", "/v1/clusters/{name}/revocations")
        | ("post", "/v1/clusters/{name}/governors")
        | ("post", "/v1/clusters/{name}/members/{node}/remove") => &["invalid_governance"],
        _ => &[],
    }
}

/// One operation of the document.
struct Operation {
    method: String,
    path: String,
    op: Value,
}

impl Operation {
    fn all(doc: &Value) -> Vec<Operation> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                out.push(Operation {
                    method: method.clone(),
                    path: path.clone(),
                    op: op.clone(),
                });
            }
        }
        out
    }

    fn params(&self, place: &str) -> Vec<&Value> {
        self.op["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["in"] == place).collect())
            .unwrap_or_default()
    }

    fn body_schema(&self) -> Option<&Value> {
        let s = &self.op["requestBody"]["content"]["application/json"]["schema"];
        (!s.is_null()).then_some(s)
    }

    fn is_public(&self) -> bool {
        self.op["security"].as_array().is_some_and(|s| {
            s.iter()
                .any(|r| r.as_object().is_some_and(|o| o.is_empty()))
        })
    }

    /// The error codes the operation documents, by HTTP status (codes are named in each
    /// response's description).
    fn documented(&self) -> HashMap<u16, HashSet<&'static str>> {
        let mut out: HashMap<u16, HashSet<&'static str>> = HashMap::new();
        for (status, r) in self.op["responses"].as_object().expect("responses") {
            let text = r["description"].as_str().unwrap_or_default();
            let words: HashSet<&str> = text
                .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .collect();
            let codes = ErrorCode::ALL
                .into_iter()
                .map(ErrorCode::as_str)
                .filter(|c| words.contains(c));
            out.entry(status.parse().expect("numeric status"))
                .or_default()
                .extend(codes);
        }
        out
    }
}

/// One generated call: path and query parameters, body, and what was broken, if anything.
struct Call {
    path: Vec<(String, Value)>,
    query: Vec<(String, Value)>,
    body: Option<Value>,
    broken: Option<String>,
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn url_of(base: &str, op: &Operation, call: &Call) -> Url {
    let mut url = Url::parse(base).expect("base url");
    {
        let mut segments = url.path_segments_mut().expect("base");
        segments.clear();
        for part in op.path.trim_start_matches('/').split('/') {
            match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) => {
                    let v = &call.path.iter().find(|(n, _)| n == name).expect("path").1;
                    segments.push(&text_of(v).unwrap_or_default());
                }
                None => {
                    segments.push(part);
                }
            }
        }
    }
    for (name, v) in &call.query {
        if let Some(t) = text_of(v) {
            url.query_pairs_mut().append_pair(name, &t);
        }
    }
    url
}

struct Run<'a> {
    gen: Gen<'a>,
    server: &'a TestServer,
    http: reqwest::Client,
    seed: u64,
    sent: usize,
}

impl Run<'_> {
    fn valid_call(&mut self, op: &Operation) -> Call {
        let values = |place: &str, gen: &mut Gen| {
            let mut out = Vec::new();
            for p in op.params(place) {
                if p["required"] == true || gen.rng.gen_bool(0.5) {
                    let name = p["name"].as_str().expect("name").to_string();
                    let v = gen.valid(&p["schema"], &name);
                    gen.doc.assert_valid(&p["schema"], &v);
                    out.push((name, v));
                }
            }
            out
        };
        let path = values("path", &mut self.gen);
        let query = values("query", &mut self.gen);
        let body = op.body_schema().map(|s| {
            let v = self.gen.valid(s, "");
            self.gen.doc.assert_valid(s, &v);
            v
        });
        Call {
            path,
            query,
            body,
            broken: None,
        }
    }

    /// A valid call broken in one parameter or in the body.
    fn broken_call(&mut self, op: &Operation) -> Option<Call> {
        let mut call = self.valid_call(op);
        let mut places: Vec<&str> = vec!["body", "path", "query"];
        places.retain(|p| match *p {
            "body" => op.body_schema().is_some(),
            place => !op.params(place).is_empty(),
        });
        let place = *places.get(self.gen.rng.gen_range(0..places.len().max(1)))?;
        if place == "body" {
            let schema = op.body_schema().expect("body");
            let (what, v) = self.gen.broken(schema, call.body.as_ref().expect("body"))?;
            call.body = Some(v);
            call.broken = Some(format!("body {what}"));
            return Some(call);
        }
        let params = op.params(place);
        let p = params[self.gen.rng.gen_range(0..params.len())];
        let name = p["name"].as_str().expect("name");
        let list = if place == "path" {
            &mut call.path
        } else {
            &mut call.query
        };
        let current = match list.iter().find(|(n, _)| n == name) {
            Some((_, v)) => v.clone(),
            None => self.gen.valid(&p["schema"], name),
        };
        let (what, v) = self.gen.broken(&p["schema"], &current)?;
        if v.is_object() || v.is_array() {
            return None; // not expressible in a path or query string
        }
        // A parameter is text: "1" for an integer is still 1, so only text the document
        // refuses as it is read counts as broken.
        let read = text_of(&v).map(|t| match t.parse::<i64>() {
            Ok(n) if generate::is_integer(self.gen.doc, &p["schema"]) => Value::from(n),
            _ => Value::String(t),
        });
        if self
            .gen
            .doc
            .check(&p["schema"], &read.unwrap_or(Value::Null))
            .is_ok()
        {
            return None;
        }
        list.retain(|(n, _)| n != name);
        list.push((name.to_string(), v));
        call.broken = Some(format!("{place} {name} {what}"));
        Some(call)
    }

    async fn send(&mut self, op: &Operation, call: &Call, token: bool) -> (u16, Value) {
        let token = token.then(|| self.server.token.clone());
        self.send_as(op, call, token.as_deref()).await
    }

    /// [`Run::send`] with a chosen bearer token (none: `None`).
    async fn send_as(&mut self, op: &Operation, call: &Call, token: Option<&str>) -> (u16, Value) {
        let url = url_of(&self.server.url(""), op, call);
        let method = Method::from_bytes(op.method.to_ascii_uppercase().as_bytes()).unwrap();
        let mut req = self.http.request(method, url);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(b) = &call.body {
            req = req.json(b);
        }
        self.sent += 1;
        let r = req.send().await.expect("the server answers");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Checks one answer: never 5xx, a documented status, an error code the route
    /// documents for that status, a body matching the documented schema.
    fn judge(&self, doc: &Doc, op: &Operation, call: &Call, status: u16, body: &Value) {
        let what = format!(
            "{} {} (seed {}): {:?} {:?} {:?} broken: {:?} -> {status} {body}",
            op.method, op.path, self.seed, call.path, call.query, call.body, call.broken
        );
        assert!(status < 500, "5xx answer: {what}");
        let documented = op.documented();
        let codes = documented
            .get(&status)
            .unwrap_or_else(|| panic!("status {status} not documented: {what}"));
        if status >= 400 {
            let code = body["error"]["code"].as_str().unwrap_or_default();
            assert!(
                codes.contains(code),
                "code {code} not documented for {status}: {what}"
            );
            if call.broken.is_none() {
                assert!(
                    STATE_CODES.contains(&code) || text_rules(&op.method, &op.path).contains(&code),
                    "a request valid under the document refused with {code}: {what}"
                );
            }
        } else {
            assert!(call.broken.is_none(), "a broken request accepted: {what}");
        }
        let schema =
            &op.op["responses"][status.to_string()]["content"]["application/json"]["schema"];
        if !schema.is_null() {
            if let Err(e) = doc.check(schema, body) {
                panic!("answer does not match its documented schema ({e}): {what}");
            }
        }
    }
}

/// Every pattern in the document is anchored and compiles for the generator.
fn check_patterns(v: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(p)) = m.get("pattern") {
                rand_regex::Regex::compile(unanchored(p), 1).expect("pattern compiles");
            }
            m.values().for_each(check_patterns);
        }
        Value::Array(a) => a.iter().for_each(check_patterns),
        _ => {}
    }
}

/// A wallet and a pending request, so that generated ids sometimes name real ones.
async fn known_values(s: &TestServer) -> Known {
    let w = crate::api::wallet(s, "dc1", 1).await;
    let pending = s
        .client
        .create_wallet(&s.wallet_body("dc2", 2, 2))
        .await
        .expect("pending request");
    let mut k = Known::default();
    k.0.insert("cluster", vec!["dc1".into(), "dc2".into(), "dc3".into()]);
    k.0.insert("root_id", vec![w.root_id.clone()]);
    k.0.insert("id", vec![pending.id, w.created_by_request]);
    k
}

#[tokio::test]
async fn requests_made_from_the_document_get_only_the_answers_it_names() {
    let pki = Pki::new();
    let gateway = FakeGateway::new(&pki, &[("dc1", 2), ("dc2", 1), ("dc3", 1)]);
    let s = TestServer::start_with(pki, gateway, TestDb::sqlite()).await;
    let doc = Doc(serde_json::from_str(custos_cloud::http::openapi_text()).unwrap());
    check_patterns(&doc.0);
    let known = known_values(&s).await;
    let seed = std::env::var("CUSTOS_OPENAPI_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let mut run = Run {
        gen: Gen {
            doc: &doc,
            rng: StdRng::seed_from_u64(seed),
            known: &known,
        },
        server: &s,
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        seed,
        sent: 0,
    };
    let ops = Operation::all(&doc.0);
    assert!(ops.len() >= 25, "every route is in the document");
    let started = Instant::now();
    let mut broken_sent = 0;
    let mut answers = std::collections::BTreeMap::new();
    let mut accepted: HashMap<(String, String), usize> = HashMap::new();
    for op in &ops {
        if !op.is_public() {
            let mut call = run.valid_call(op);
            call.broken = Some("no token".into());
            let (status, body) = run.send(op, &call, false).await;
            assert_eq!(
                status, 401,
                "{} {} without a token: {body}",
                op.method, op.path
            );
            run.judge(&doc, op, &call, status, &body);
        }
        for _ in 0..PER_OPERATION {
            if started.elapsed() > TIME_LIMIT {
                break;
            }
            let call = run.valid_call(op);
            let (status, body) = run.send(op, &call, true).await;
            run.judge(&doc, op, &call, status, &body);
            let code = body["error"]["code"].as_str().unwrap_or("-").to_string();
            *answers.entry((status, code)).or_insert(0usize) += 1;
            if status < 300 {
                *accepted
                    .entry((op.method.clone(), op.path.clone()))
                    .or_default() += 1;
            }
            if let Some(call) = run.broken_call(op) {
                let (status, body) = run.send(op, &call, true).await;
                run.judge(&doc, op, &call, status, &body);
                broken_sent += 1;
            }
        }
    }
    eprintln!(
        "{} requests over {} operations (seed {seed}), {broken_sent} of them broken, in {:?}",
        run.sent,
        ops.len(),
        started.elapsed()
    );
    eprintln!("answers to valid requests: {answers:?}");
    assert!(broken_sent > ops.len(), "broken requests were made");
    // Requests that create something get through every check of the server, not only to
    // its refusals. A valid creation must satisfy relations no schema states (a quorum
    // within the group, no unknown executor), so a few percent of random ones pass: go on
    // with more of them, bounded, until one does.
    for route in ["/v1/wallets", "/v1/sign-requests"] {
        let key = ("post".to_string(), route.to_string());
        let op = ops
            .iter()
            .find(|o| (o.method.as_str(), o.path.as_str()) == ("post", route))
            .expect("the route is in the document");
        for _ in 0..EXTRA_CREATIONS {
            if accepted.contains_key(&key) {
                break;
            }
            let call = run.valid_call(op);
            let (status, body) = run.send(op, &call, true).await;
            run.judge(&doc, op, &call, status, &body);
            let code = body["error"]["code"].as_str().unwrap_or("-").to_string();
            *answers.entry((status, code)).or_insert(0usize) += 1;
            if status < 300 {
                accepted.insert(key.clone(), 1);
            }
        }
        assert!(
            accepted.contains_key(&("post".to_string(), route.to_string())),
            "no valid POST {route} was accepted (seed {seed}): {answers:?}"
        );
    }
    s.stop().await;
}

/// A token holding only the `read` scope is refused with 403 `scope_missing`, naming the
/// scope the route documents, on every route of the document that is not a GET (each with
/// requests valid under the document, which the all-scopes token gets through), and the
/// refusal changes nothing: no request is recorded.
#[tokio::test]
async fn a_read_only_token_is_refused_on_every_mutating_route() {
    let pki = Pki::new();
    let gateway = FakeGateway::new(&pki, &[("dc1", 2), ("dc2", 1), ("dc3", 1)]);
    let s = TestServer::start_with(pki, gateway, TestDb::sqlite()).await;
    let doc = Doc(serde_json::from_str(custos_cloud::http::openapi_text()).unwrap());
    let known = known_values(&s).await;
    let seed = rand::random();
    let mut run = Run {
        gen: Gen {
            doc: &doc,
            rng: StdRng::seed_from_u64(seed),
            known: &known,
        },
        server: &s,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        seed,
        sent: 0,
    };
    let before = s.client.requests(&Default::default()).await.unwrap();
    let reader = s.guest_token("reader").to_string();
    let mut mutating = 0;
    for op in Operation::all(&doc.0) {
        if op.method == "get" || op.is_public() {
            continue;
        }
        mutating += 1;
        for _ in 0..4 {
            let call = run.valid_call(&op);
            let (status, body) = run.send_as(&op, &call, Some(&reader)).await;
            let what = format!("{} {} (seed {seed}) -> {status} {body}", op.method, op.path);
            assert_eq!(status, 403, "{what}");
            assert_eq!(body["error"]["code"], "scope_missing", "{what}");
            let needed = op.op["security"][0]["bearer"][0]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: the route names no scope"));
            assert_ne!(needed, "read", "{what}: a mutating route needing only read");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(&format!("`{needed}`")), "{what}");
            run.judge(
                &doc,
                &op,
                &Call {
                    broken: Some("read-only token".into()),
                    ..call
                },
                status,
                &body,
            );
        }
    }
    assert!(
        mutating >= 11,
        "only {mutating} mutating routes in the document"
    );
    let after = s.client.requests(&Default::default()).await.unwrap();
    assert_eq!(
        after.requests.len(),
        before.requests.len(),
        "a refused call recorded a request"
    );
    s.stop().await;
}

/// The largest request each body schema allows fits in the route's body limit: strings at
/// their longest with the costliest characters their pattern admits (as serde_json writes
/// them), arrays at their longest.
#[test]
fn the_largest_documented_bodies_fit_the_body_limits() {
    let doc = Doc(serde_json::from_str(custos_cloud::http::openapi_text()).unwrap());
    for op in Operation::all(&doc.0) {
        let Some(schema) = op.body_schema() else {
            continue;
        };
        let largest = largest_size(&doc, schema);
        let limit = match op.path.as_str() {
            "/v1/threshold/keys/import" => custos_cloud::http::MAX_IMPORT_BODY,
            "/v1/threshold/sign" => custos_cloud::http::MAX_THRESHOLD_SIGN_BODY,
            "/v1/psbt-requests" => custos_cloud::http::MAX_PSBT_BODY,
            "/v1/eth-requests" => custos_cloud::http::MAX_ETHEREUM_BODY,
            _ => custos_cloud::http::MAX_BODY,
        };
        assert!(
            largest <= limit,
            "{} {}: largest body {largest} bytes, limit {limit}",
            op.method,
            op.path
        );
    }
}

/// Upper bound of the JSON size of any instance of `schema`.
fn largest_size(doc: &Doc, schema: &Value) -> usize {
    let s = doc.resolve(schema);
    if let Some(alts) = s["oneOf"].as_array().or(s["anyOf"].as_array()) {
        return alts.iter().map(|a| largest_size(doc, a)).max().unwrap_or(4);
    }
    let ts: Vec<&str> = match &s["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let mut size = 4; // null
    for t in ts {
        size = size.max(match t {
            "string" => {
                let max = s["maxLength"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("a request string without maxLength: {s}"));
                // Characters a pattern admits are ASCII without quote, backslash or control
                // character unless it names them; free text may need six bytes (\u00XX) or
                // four (UTF-8) per character.
                let per_char = match s["pattern"].as_str() {
                    Some(p) if !p.contains('\\') && !p.contains('"') && !p.contains(' ') => 1,
                    Some(_) => 2,
                    None => 6,
                };
                2 + per_char * max as usize
            }
            "integer" | "number" => 20,
            "boolean" => 5,
            "array" => {
                let max = s["maxItems"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("a request array without maxItems: {s}"));
                2 + max as usize * (largest_size(doc, &s["items"]) + 1)
            }
            "object" => {
                let props = s["properties"].as_object().cloned().unwrap_or_default();
                2 + props
                    .iter()
                    .map(|(k, v)| k.len() + 4 + largest_size(doc, v))
                    .sum::<usize>()
            }
            _ => 4,
        });
    }
    size
}

/// The limits the document states are the server's own constants, so a change of one
/// cannot leave the other behind.
#[test]
fn the_documents_limits_are_the_servers() {
    use custos_cloud::service::*;
    use custos_wire::protocol::{MAX_APPROVALS, MAX_PATH_DEPTH, MAX_PRESIGN_MESSAGE, MAX_QUORUM};
    let doc = Doc(serde_json::from_str(custos_cloud::http::openapi_text()).unwrap());
    let prop =
        |schema: &str, p: &str| doc.0["components"]["schemas"][schema]["properties"][p].clone();
    let param = |path: &str, name: &str| {
        let ps = doc.0["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .clone();
        ps.into_iter()
            .find(|p| p["name"] == name)
            .expect("parameter")["schema"]
            .clone()
    };
    let n = |v: usize| Value::from(v as u64);
    for body in [
        "CreateWalletBody",
        "ImportWalletBody",
        "CreateThresholdKeyBody",
    ] {
        assert_eq!(
            prop(body, "quorum")["maximum"],
            n(MAX_QUORUM.into()),
            "{body}"
        );
        assert_eq!(
            prop(body, "approvals")["maxItems"],
            n(MAX_APPROVALS),
            "{body}"
        );
    }
    assert_eq!(
        prop("CreateWalletBody", "group")["maxItems"],
        n(custos_wire::policy::MAX_GROUP)
    );
    for pem in ["admin_cert_pem", "admin_ca_pem"] {
        assert_eq!(
            prop("ApprovalBody", pem)["maxLength"],
            n(custos_cloud_api::MAX_APPROVAL_PEM)
        );
    }
    // A passkey assertion's parts, hex: twice the bytes every verifier accepts.
    for (part, max) in [
        (
            "authenticator_data_hex",
            custos_pki::webauthn::MAX_AUTHENTICATOR_DATA,
        ),
        (
            "client_data_json_hex",
            custos_pki::webauthn::MAX_CLIENT_DATA,
        ),
    ] {
        assert_eq!(
            prop("WebAuthnBody", part)["maxLength"],
            n(2 * max),
            "{part}"
        );
    }
    for secret in ["mnemonic", "passphrase"] {
        assert_eq!(
            prop("ImportWalletBody", secret)["maxLength"],
            n(custos_wire::import::MAX_MNEMONIC_LEN)
        );
    }
    assert_eq!(
        prop("ImportThresholdKeyBody", "bundle_hex")["maxLength"],
        n(2 * MAX_BUNDLE)
    );
    assert_eq!(
        prop("ThresholdSignBody", "message")["maxLength"],
        n(2 * MAX_PRESIGN_MESSAGE)
    );
    assert_eq!(
        prop("ThresholdSignBody", "clusters")["maxItems"],
        n(MAX_THRESHOLD_CLUSTERS)
    );
    assert_eq!(
        prop("CreateThresholdKeyBody", "threshold")["maximum"],
        n(MAX_THRESHOLD_CLUSTERS)
    );
    assert_eq!(
        prop("MakePresignaturesBody", "count")["maximum"],
        n(MAX_PRESIGNATURES_PER_CALL as usize)
    );
    for path in [
        prop("SignRequestBody", "path"),
        prop("ThresholdSignBody", "path"),
        param("/v1/wallets/{root_id}/derive", "path"),
    ] {
        assert_eq!(path["maxLength"], n(custos_cloud_api::path::MAX_PATH_TEXT));
        let pattern = path["pattern"].as_str().unwrap();
        assert!(
            pattern.ends_with(&format!("{{0,{MAX_PATH_DEPTH}}}$")),
            "{pattern}"
        );
    }
    // One cluster-name rule wherever a cluster is named (written out in each attribute).
    let cluster = prop("CreateWalletBody", "cluster");
    let by_path = doc.0["paths"]["/v1/clusters/{name}"]["get"]["parameters"][0]["schema"].clone();
    for other in [
        prop("ImportWalletBody", "cluster"),
        prop("CreateThresholdKeyBody", "clusters")["items"].clone(),
        prop("ThresholdSignBody", "clusters")["items"].clone(),
        prop("MakePresignaturesBody", "clusters")["items"].clone(),
        by_path,
    ] {
        assert_eq!(other["pattern"], cluster["pattern"], "{other}");
        assert_eq!(other["maxLength"], cluster["maxLength"], "{other}");
    }
    let derive_count = param("/v1/wallets/{root_id}/derive", "count");
    assert_eq!(derive_count["maximum"], n(MAX_DERIVE_COUNT as usize));
    assert_eq!(
        param("/v1/requests", "limit")["maximum"],
        n(MAX_LIST as usize)
    );
}

/// A full message of the largest size the document allows gets past the body limit of
/// threshold signing (its own, above the others'), to the key lookup, even in a body padded
/// (with JSON whitespace, which the limit counts) beyond the other routes' limit.
#[tokio::test]
async fn a_largest_message_fits_the_threshold_signing_body() {
    let s = TestServer::start().await;
    let message = "ab".repeat(custos_wire::protocol::MAX_PRESIGN_MESSAGE);
    let body = format!(
        r#"{{"key_id": "02{}", "path": "m", "message": "{message}",{} "approvals": []}}"#,
        "11".repeat(32),
        " ".repeat(custos_cloud::http::MAX_BODY.saturating_sub(message.len()) + 100),
    );
    assert!(body.len() > custos_cloud::http::MAX_BODY);
    assert!(body.len() <= custos_cloud::http::MAX_THRESHOLD_SIGN_BODY);
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(s.url("/v1/threshold/sign"))
        .bearer_auth(&s.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("unknown_threshold_key"))
    );
    s.stop().await;
}
