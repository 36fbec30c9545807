//! API access control: who holds a token (its name and tenant), what it may do (its
//! scopes) and how fast (its rate limit).
//!
//! The scope each route needs is written once, in the route's OpenAPI annotation
//! (`security(("bearer" = ["request"]))`); the server reads its own document to build the
//! table it enforces ([`RouteScopes`]), so the document and the checks cannot disagree.
//! [`document`] adds to every protected operation the text naming its scope, an
//! `x-custos-scope` extension and the 403 and 429 answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use sha2::{Digest, Sha256};
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, OpenApi as OpenApiDoc, Ref, ResponseBuilder};

use crate::config::ApiTokenConfig;
use crate::error::{ApiError, ErrorCode};
use crate::service::Cloud;
use custos_cloud_api::Scope;

/// Who called: the API token's holder, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (recorded on the requests it creates).
    pub name: String,
    /// The tenant the token belongs to: it sees only this tenant's requests, wallets and
    /// threshold keys.
    pub tenant: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// Whether the token holds `scope`.
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Refuses approvals carried inline by a request-creating call of a token without the
/// `approve` scope: creating a request and approving it are separate powers, so a
/// `request` token cannot execute what no approver token approved. The call is refused as a
/// whole (403 `scope_missing`, naming `approve`) rather than its approvals dropped, so the
/// caller is never left guessing what was recorded: nothing is.
pub fn check_inline_approvals(caller: &Principal, approvals: usize) -> Result<(), ApiError> {
    if approvals == 0 || caller.may(Scope::Approve) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::ScopeMissing,
        format!(
            "token {:?} lacks the `approve` scope that approvals given inline need \
             ({approvals} given); create the request without them and have them added with \
             `POST /v1/requests/{{id}}/approvals`",
            caller.name
        ),
    ))
}

/// The text added to every request-creating operation (those whose body carries
/// `approvals`).
pub const INLINE_APPROVALS_TEXT: &str = "Approvals given inline in `approvals` need the \
    `approve` scope as well: a token without it is refused as a whole (403 `scope_missing` \
    naming `approve`) and nothing is recorded.";

/// A token bucket: `burst` calls at once, refilled at `rate` calls per second.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        Bucket {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one call's token, or tells how many whole seconds until one is there (at
    /// least 1, as `Retry-After` counts).
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / self.rate;
        Err((wait.ceil() as u64).max(1))
    }
}

struct Entry {
    hash: [u8; 32],
    principal: Principal,
    bucket: Mutex<Bucket>,
}

/// The configured API tokens (hashes only), each with its rate-limit bucket.
pub struct Tokens {
    entries: Vec<Entry>,
}

/// Why a token's call is not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Throttled {
    /// Over its rate limit: retry after this many seconds.
    RetryAfter(u64),
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    /// The tokens of a (validated) configuration; an entry whose hash is not 64 hex
    /// characters matches nothing.
    pub fn new(config: &[ApiTokenConfig]) -> Self {
        let now = Instant::now();
        let entries = config
            .iter()
            .filter_map(|t| {
                let hash: [u8; 32] = hex::decode(&t.sha256).ok()?.try_into().ok()?;
                Some(Entry {
                    hash,
                    principal: Principal {
                        name: t.name.clone(),
                        tenant: t.tenant.clone(),
                        scopes: t.scopes.clone(),
                    },
                    bucket: Mutex::new(Bucket::new(t.rate_per_sec, t.burst, now)),
                })
            })
            .collect();
        Tokens { entries }
    }

    fn find(&self, token: &str) -> Option<&Entry> {
        let h: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every entry is compared, so the time taken does not tell which one matched.
        let mut found = None;
        for e in &self.entries {
            if constant_time_eq(&h, &e.hash) {
                found = Some(e);
            }
        }
        found
    }

    /// The holder of `token`, if it is configured (no rate limit taken).
    pub fn principal(&self, token: &str) -> Option<&Principal> {
        self.find(token).map(|e| &e.principal)
    }

    /// The holder of `token` with one call taken from its rate limit: `None` for an
    /// unknown token, `Some(Err(..))` when the token is over its limit.
    pub fn admit(&self, token: &str) -> Option<Result<&Principal, Throttled>> {
        let e = self.find(token)?;
        // A poisoned lock only means a panic elsewhere mid-update of two floats.
        let mut bucket = e.bucket.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            bucket
                .take(Instant::now())
                .map(|()| &e.principal)
                .map_err(Throttled::RetryAfter),
        )
    }
}

/// The scope each protected route needs, by method and axum route path (`/v1/requests/:id`),
/// read from the OpenAPI document.
pub struct RouteScopes(HashMap<(String, String), Scope>);

impl RouteScopes {
    /// The table of `doc`: every operation whose `bearer` security requirement names
    /// exactly one known scope.
    pub fn of(doc: &OpenApiDoc) -> Self {
        let mut table = HashMap::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in operations(item) {
                if let Some(scope) = declared_scope(op) {
                    table.insert((method.to_string(), axum_path(path)), scope);
                }
            }
        }
        RouteScopes(table)
    }

    /// The scope needed by `method` on the route `matched` (axum's matched path); `None`
    /// for a route that declares none (refused: closed by default).
    pub fn needed(&self, method: &str, matched: &str) -> Option<Scope> {
        self.0
            .get(&(method.to_ascii_lowercase(), matched.to_string()))
            .copied()
    }
}

/// `{id}` (OpenAPI) → `:id` (axum 0.7), as utoipa-axum registers routes.
fn axum_path(path: &str) -> String {
    path.replace('{', ":").replace('}', "")
}

fn operations(item: &utoipa::openapi::PathItem) -> Vec<(&'static str, &Operation)> {
    [
        ("get", &item.get),
        ("put", &item.put),
        ("post", &item.post),
        ("delete", &item.delete),
        ("patch", &item.patch),
        ("head", &item.head),
        ("options", &item.options),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_ref().map(|op| (m, op)))
    .collect()
}

fn operations_mut(item: &mut utoipa::openapi::PathItem) -> Vec<&mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
    .collect()
}

/// The scopes of the operation's `bearer` requirement (read through its JSON form, the
/// only public view of a requirement).
fn bearer_scopes(op: &Operation) -> Option<Vec<String>> {
    let security = serde_json::to_value(op.security.as_ref()?).ok()?;
    security.as_array()?.iter().find_map(|r| {
        r.get("bearer")?.as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
    })
}

/// The one scope an operation declares, if it declares exactly one known scope.
fn declared_scope(op: &Operation) -> Option<Scope> {
    match bearer_scopes(op)?.as_slice() {
        [one] => Scope::parse(one),
        _ => None,
    }
}

/// Adds to every operation that needs a token: its scope in the text and as
/// `x-custos-scope`, and the 403 (`scope_missing`) and 429 (`rate_limited`, with
/// `Retry-After`) answers every such route can give.
pub fn document(doc: &mut OpenApiDoc) {
    let components = doc.components.as_ref();
    for item in doc.paths.paths.values_mut() {
        for op in operations_mut(item) {
            let Some(scope) = declared_scope(op) else {
                continue;
            };
            let inline = carries_approvals(components, op);
            let mut text = op.description.take().unwrap_or_default();
            text.push_str(&format!(
                "\n\nNeeds a token with the `{scope}` scope (403 `scope_missing` otherwise)."
            ));
            let mut ext = ExtensionsBuilder::new().add("x-custos-scope", scope.as_str());
            let mut forbidden = format!("scope_missing: the token lacks the `{scope}` scope");
            if inline {
                text.push(' ');
                text.push_str(INLINE_APPROVALS_TEXT);
                ext = ext.add("x-custos-inline-approvals-scope", Scope::Approve.as_str());
                forbidden.push_str(", or gives approvals inline without the `approve` scope");
            }
            op.description = Some(text);
            let ext = ext.build();
            match &mut op.extensions {
                Some(e) => e.merge(ext),
                None => op.extensions = Some(ext),
            }
            let error = || {
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ApiErrorBody")))
                    .build()
            };
            op.responses.responses.insert(
                "403".into(),
                ResponseBuilder::new()
                    .description(forbidden)
                    .content("application/json", error())
                    .build()
                    .into(),
            );
            let retry_after = HeaderBuilder::new()
                .schema(
                    utoipa::openapi::ObjectBuilder::new()
                        .schema_type(utoipa::openapi::schema::Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some("Whole seconds until the token may call again"))
                .build();
            op.responses.responses.insert(
                "429".into(),
                ResponseBuilder::new()
                    .description(
                        "rate_limited: the token is over its rate limit; retry after \
                         `Retry-After` seconds",
                    )
                    .content("application/json", error())
                    .header("Retry-After", retry_after)
                    .build()
                    .into(),
            );
        }
    }
}

/// Whether the operation's JSON body (a schema of `components`) has an `approvals`
/// property: such a call can carry approvals inline (read through the JSON form, as
/// [`bearer_scopes`] does).
fn carries_approvals(components: Option<&utoipa::openapi::Components>, op: &Operation) -> bool {
    let Some(body) = op
        .request_body
        .as_ref()
        .and_then(|b| serde_json::to_value(b).ok())
    else {
        return false;
    };
    let Some(name) = body["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    else {
        return false;
    };
    components
        .and_then(|c| c.schemas.get(name))
        .and_then(|s| serde_json::to_value(s).ok())
        .is_some_and(|s| s["properties"].get("approvals").is_some())
}

/// The scope each route needs, read from this server's own OpenAPI document once.
fn route_scopes() -> &'static RouteScopes {
    static TABLE: OnceLock<RouteScopes> = OnceLock::new();
    TABLE.get_or_init(|| RouteScopes::of(&crate::http::openapi()))
}

/// Token (401), then its rate limit (429 with `Retry-After`), then the scope the route
/// needs (403): a refused call reaches no handler. The caller's [`Principal`] is handed
/// to the handler.
pub(crate) async fn authenticate(
    State(cloud): State<Arc<Cloud>>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let principal = match token.and_then(|t| cloud.tokens().admit(t)) {
        Some(Ok(p)) => p.clone(),
        Some(Err(Throttled::RetryAfter(secs))) => {
            let mut r = ApiError::new(
                ErrorCode::RateLimited,
                format!("this token is over its rate limit; retry after {secs} s"),
            )
            .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return r;
        }
        None => {
            let mut r = ApiError::new(ErrorCode::Unauthorized, "a valid bearer token is required")
                .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    };
    // HEAD is served by the GET route and needs what GET needs.
    let method = match req.method().as_str() {
        "HEAD" => "get",
        m => m,
    };
    let needed = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| route_scopes().needed(method, m.as_str()));
    match needed {
        Some(scope) if principal.may(scope) => {}
        Some(scope) => {
            return ApiError::new(
                ErrorCode::ScopeMissing,
                format!(
                    "token {:?} lacks the `{scope}` scope this route needs",
                    principal.name
                ),
            )
            .into_response()
        }
        // Closed by default: a route that declares no scope serves no one.
        None => {
            return ApiError::new(
                ErrorCode::ScopeMissing,
                "this route declares no scope, so no token may call it",
            )
            .into_response()
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2, 3, t0);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Ok(()));
        }
        assert_eq!(b.take(t0), Err(1));
        // Half a second at 2 per second refills one call, and no more.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(b.take(t1), Ok(()));
        assert_eq!(b.take(t1), Err(1));
        // A long pause refills up to the burst only.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(b.take(t2), Ok(()));
        }
        assert!(b.take(t2).is_err());
        // A slow rate tells a longer wait, in whole seconds.
        let mut slow = Bucket::new(1, 1, t0);
        assert_eq!(slow.take(t0), Ok(()));
        assert_eq!(slow.take(t0), Err(1));
        let mut slower = Bucket::new(1, 1, t0);
        slower.rate = 0.25;
        assert_eq!(slower.take(t0), Ok(()));
        assert_eq!(slower.take(t0), Err(4));
    }

    #[test]
    fn every_protected_route_declares_one_scope_and_gets_are_read() {
        let doc = crate::http::openapi();
        let table = RouteScopes::of(&doc);
        let mut protected = 0;
        for (path, item) in &doc.paths.paths {
            for (method, op) in operations(item) {
                let public = serde_json::to_value(&op.security)
                    .unwrap()
                    .as_array()
                    .is_some_and(|a| {
                        a.iter()
                            .any(|r| r.as_object().is_some_and(|o| o.is_empty()))
                    });
                if public {
                    continue;
                }
                protected += 1;
                let scope = table
                    .needed(method, &axum_path(path))
                    .unwrap_or_else(|| panic!("{method} {path} declares no scope"));
                assert_eq!(
                    method == "get",
                    scope == Scope::Read,
                    "{method} {path}: {scope}"
                );
                let text = op.description.as_deref().unwrap_or_default();
                assert!(
                    text.contains(&format!("`{scope}` scope")),
                    "{method} {path}"
                );
                for status in ["403", "429"] {
                    assert!(
                        op.responses.responses.contains_key(status),
                        "{method} {path}"
                    );
                }
            }
        }
        assert!(protected >= 23, "{protected} protected routes");
    }

    #[test]
    fn routes_taking_inline_approvals_say_they_need_approve() {
        let doc = crate::http::openapi();
        let mut inline = Vec::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in operations(item) {
                if !carries_approvals(doc.components.as_ref(), op) {
                    continue;
                }
                inline.push(format!("{method} {path}"));
                let text = op.description.as_deref().unwrap_or_default();
                assert!(text.contains(INLINE_APPROVALS_TEXT), "{method} {path}");
                let json = serde_json::to_value(op).unwrap();
                assert_eq!(json["x-custos-inline-approvals-scope"], "approve");
                let forbidden = json["responses"]["403"]["description"].as_str().unwrap();
                assert!(forbidden.contains("`approve`"), "{method} {path}");
            }
        }
        inline.sort();
        assert_eq!(
            inline,
            [
                "post /v1/eth-requests",
                "post /v1/psbt-requests",
                "post /v1/sign-requests",
                "post /v1/threshold/keys",
                "post /v1/threshold/keys/import",
                "post /v1/threshold/sign",
                "post /v1/wallets",
                "post /v1/wallets/import",
            ]
        );
    }

    #[test]
    fn inline_approvals_are_refused_without_approve_naming_it() {
        let mut p = Principal {
            name: "ops".into(),
            tenant: "default".into(),
            scopes: vec![Scope::Request],
        };
        assert!(check_inline_approvals(&p, 0).is_ok());
        let e = check_inline_approvals(&p, 2).unwrap_err();
        assert_eq!(e.code, ErrorCode::ScopeMissing);
        assert!(e.message.contains("`approve`"), "{}", e.message);
        p.scopes.push(Scope::Approve);
        assert!(check_inline_approvals(&p, 2).is_ok());
    }
}
