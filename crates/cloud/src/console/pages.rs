//! The console's pages, rendered on the server (maud escapes every value): sign-in, the
//! pending requests of the admin's groups, one request with its intent, the history,
//! cluster health with membership and audits, and the passkey registration helper.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{html, Markup, DOCTYPE};

use custos_cloud_api::review::{checked_message, describe, progress};
use custos_cloud_api::{RequestKind, RequestQuery, RequestStatus, RequestView};

use super::admins::Admin;
use super::session::challenge_of;
use super::{intent, Console, ConsoleError};
use crate::service::rejection_message;

type Shared = State<Arc<Console>>;

/// Most requests a list shows.
const LIST_LIMIT: u32 = 100;

fn page(title: &str, admin: Option<&Admin>, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Custos console" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body {
                header {
                    nav aria-label="Console" {
                        a href="/console" { "Pending" }
                        a href="/console/history" { "History" }
                        a href="/console/health" { "Health" }
                        @if let Some(a) = admin {
                            span.who { "Signed in as " strong { (a.name) } }
                            button #sign-out type="button" { "Sign out" }
                        } @else {
                            a href="/console/register" { "Register a passkey" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    p #status role="status" aria-live="polite" {}
                    (body)
                }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// A page that needs a session: the signed-in admin, or the way to the sign-in page.
async fn signed_in(console: &Console, headers: &HeaderMap) -> Result<Admin, Response> {
    match console.signed_in(headers).await {
        Ok(a) => Ok(a),
        Err(ConsoleError::NotSignedIn) => Err(Redirect::to("/console").into_response()),
        Err(e) => Err(failure(None, &e)),
    }
}

fn failure(admin: Option<&Admin>, e: &ConsoleError) -> Response {
    let mut r = page(
        "Something went wrong",
        admin,
        html! { p.error { (e.code()) ": " (e.to_string()) } },
    );
    *r.status_mut() = match e {
        ConsoleError::Api(a) => crate::http::status_of(a.code),
        _ => StatusCode::BAD_REQUEST,
    };
    r
}

fn sign_in_page() -> Response {
    page(
        "Sign in",
        None,
        html! {
            p { "Sign in with the passkey the Admin CA certified for this console." }
            form #sign-in {
                label for="name" { "Admin name" }
                input #name name="name" type="text" autocomplete="username webauthn" required
                    maxlength="48" pattern="[a-z0-9_-][a-z0-9._-]{0,47}";
                button type="submit" { "Sign in with passkey" }
            }
        },
    )
}

/// The admin keys whose approvals count for `view` (its group and tier groups, or its
/// key's group in force); `None`: not known here, the TEE decides.
async fn approvers_of(console: &Console, view: &RequestView) -> Option<Vec<String>> {
    match console
        .cloud
        .approvers(&console.config.tenant, &view.id)
        .await
    {
        Ok(keys) => keys,
        Err(e) => {
            tracing::warn!(request = %view.id, error = %e.message, "approvers unknown");
            None
        }
    }
}

fn holds(keys: &[String], admin: &Admin) -> bool {
    keys.iter()
        .any(|k| k.eq_ignore_ascii_case(&admin.key_fingerprint))
}

fn approved_by(view: &RequestView, admin: &Admin) -> bool {
    view.approvals.iter().any(|a| {
        a.key_fingerprint
            .eq_ignore_ascii_case(&admin.key_fingerprint)
    })
}

fn kind_text(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::CreateWallet => "Create a wallet",
        RequestKind::ImportWallet => "Import a wallet",
        RequestKind::Sign => "Sign a raw digest",
        RequestKind::ImportThresholdKey => "Import a threshold key share",
        RequestKind::ThresholdSign => "Threshold-sign a raw digest",
        RequestKind::CreateThresholdKey => "Create a threshold key",
        RequestKind::Governance => "Change cluster governance",
        RequestKind::SetKeyPolicy => "Change an approver group",
        RequestKind::SignPsbt => "Sign a Bitcoin transaction",
        RequestKind::SignEthereum => "Sign on Ethereum",
    }
}

fn request_table(requests: &[RequestView]) -> Markup {
    html! {
        table.requests {
            thead { tr { th scope="col" { "Request" } th scope="col" { "What" } th scope="col" { "Cluster" } th scope="col" { "Status" } th scope="col" { "Approvals" } } }
            tbody {
                @for r in requests {
                    tr {
                        td.mono { a href={ "/console/requests/" (r.id) } { (r.id) } }
                        td { (kind_text(r.kind)) br; small { (r.summary) } }
                        td { (r.cluster) }
                        td { (r.status.as_str()) }
                        td { (progress(r)) }
                    }
                }
            }
        }
    }
}

/// `GET /console`: the pending requests the admin may approve, or the sign-in page.
pub(super) async fn home(State(console): Shared, headers: HeaderMap) -> Response {
    let admin = match console.signed_in(&headers).await {
        Ok(a) => a,
        Err(ConsoleError::NotSignedIn) => return sign_in_page(),
        Err(e) => return failure(None, &e),
    };
    let q = RequestQuery {
        status: Some(RequestStatus::PendingApproval),
        kind: None,
        limit: Some(LIST_LIMIT),
    };
    let listed = match console.cloud.requests(&console.config.tenant, &q).await {
        Ok(l) => l.requests,
        Err(e) => return failure(Some(&admin), &e.into()),
    };
    let mut mine = Vec::new();
    // Read together: each may ask a TEE for its key's policy.
    let approvers =
        futures::future::join_all(listed.iter().map(|r| approvers_of(&console, r))).await;
    for (r, keys) in listed.into_iter().zip(approvers) {
        let member = keys.is_none_or(|g| holds(&g, &admin));
        if member && !approved_by(&r, &admin) {
            mine.push(r);
        }
    }
    page(
        "Waiting for your approval",
        Some(&admin),
        html! {
            p { "Your passkey's key: " span.mono { (admin.key_fingerprint) } }
            @if mine.is_empty() {
                p { "Nothing waits for your approval." }
            } @else {
                (request_table(&mine))
            }
        },
    )
}

/// `GET /console/requests/{id}`: one request, its intent, its approvals, the approve button.
pub(super) async fn request(
    State(console): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let admin = match signed_in(&console, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let view = match console.cloud.request(&console.config.tenant, &id).await {
        Ok(v) => v,
        Err(e) => return failure(Some(&admin), &e.into()),
    };
    let group = approvers_of(&console, &view).await;
    let in_group = group.as_ref().is_none_or(|g| holds(g, &admin));
    // What the passkey signs is recomputed from the fields shown, never taken as given.
    let message = checked_message(&view, &id);
    let intent = view.transaction.as_ref().map(intent::checked);
    let intent_ok = !matches!(intent, Some(Err(_)));
    let pending = view.status == RequestStatus::PendingApproval;
    let can_approve =
        pending && in_group && intent_ok && message.is_ok() && !approved_by(&view, &admin);
    page(
        kind_text(view.kind),
        Some(&admin),
        html! {
            p { "Request " span.mono { (view.id) } " · status " strong #request-status { (view.status.as_str()) } " · " (progress(&view)) }
            @match &intent {
                Some(Ok(i)) => { (intent::render(i)) }
                Some(Err(e)) => { p.error role="alert" { "Do not approve: " (e) } }
                None => {}
            }
            @if matches!(view.kind, RequestKind::Sign | RequestKind::ThresholdSign) {
                p.warning role="note" { "A raw digest: the console cannot show what it signs. Approve only a digest you computed yourself from the transaction or message it stands for." }
            }
            section aria-labelledby="approvals" {
                h2 #approvals { "Approvals" }
                p { (progress(&view)) ", " (view.quorum) " needed from the key's group." }
                ul {
                    @for a in &view.approvals { li { (a.admin) " " span.mono { (a.key_fingerprint) } } }
                }
                @if let Some(g) = &group {
                    p { "Missing: " }
                    ul {
                        @for k in g.iter().filter(|k| !view.approvals.iter().any(|a| a.key_fingerprint.eq_ignore_ascii_case(k))) {
                            li.mono { (k) @if k.eq_ignore_ascii_case(&admin.key_fingerprint) { " (you)" } }
                        }
                    }
                }
            }
            @if can_approve {
                @if let Ok(m) = &message {
                    div.actions {
                        button #approve type="button" data-request=(view.id) data-challenge=(challenge_of(m))
                            data-rp-id=(console.rp_id) data-credential=(admin.credential_b64()) { "Approve with passkey" }
                        // Only where this server knows who approves: it alone checks rejections.
                        @if group.is_some() {
                            button #reject.reject type="button" data-request=(view.id)
                                data-challenge=(challenge_of(&rejection_message(m)))
                                data-rp-id=(console.rp_id) data-credential=(admin.credential_b64()) { "Reject with passkey" }
                        }
                    }
                }
            } @else if pending && !in_group {
                p { "You are not in this request's approver group." }
            }
            @if let Err(e) = &message { p.error role="alert" { "Do not approve: " (e) } }
            @if let Some(r) = &view.result {
                section aria-labelledby="result" {
                    h2 #result { "Result" }
                    pre.mono { (serde_json::to_string_pretty(r).unwrap_or_default()) }
                }
            }
            @if let Some(e) = &view.error {
                p.error { (e.code) ": " (e.message) }
            }
            details {
                summary { "Every field approved" }
                pre { (describe(&view)) }
            }
        },
    )
}

/// `GET /console/history`: the latest requests and what became of them.
pub(super) async fn history(State(console): Shared, headers: HeaderMap) -> Response {
    let admin = match signed_in(&console, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let q = RequestQuery {
        status: None,
        kind: None,
        limit: Some(LIST_LIMIT),
    };
    match console.cloud.requests(&console.config.tenant, &q).await {
        Ok(l) => page("History", Some(&admin), request_table(&l.requests)),
        Err(e) => failure(Some(&admin), &e.into()),
    }
}

/// `GET /console/health`: each cluster's reachability, governance members and latest audit.
pub(super) async fn health(State(console): Shared, headers: HeaderMap) -> Response {
    let admin = match signed_in(&console, &headers).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let clusters = console.cloud.cluster_list().await.clusters;
    let mut sections = Vec::new();
    for c in &clusters {
        let members = console.cloud.members(&c.name).await;
        let audit = if c.reachable {
            Some(
                console
                    .cloud
                    .audit(&console.config.tenant, &c.name, true)
                    .await,
            )
        } else {
            None
        };
        sections.push(html! {
            section aria-labelledby={ "cluster-" (c.name) } {
                h2 id={ "cluster-" (c.name) } { "Cluster " (c.name) }
                @if c.reachable {
                    p { "Reachable: " (c.healthy_nodes.unwrap_or(0)) " of " (c.nodes.unwrap_or(0)) " nodes healthy, " (c.keys.unwrap_or(0)) " keys." }
                } @else {
                    p.error { "Unreachable: " (c.error.as_deref().unwrap_or("no answer")) }
                }
                @match &members {
                    Ok(m) => {
                        p { "Governance log version " (m.version) ", " (m.quorum) " of " (m.governors.len()) " governors to change it." }
                        table {
                            caption { "Members" }
                            thead { tr { th scope="col" { "Node" } th scope="col" { "Device key" } th scope="col" { "Serving" } } }
                            tbody {
                                @for n in &m.members {
                                    tr { td { (n.node) } td.mono { (n.key_fingerprint) } td { (match n.serving { Some(true) => "yes", Some(false) => "no", None => "unknown" }) } }
                                }
                            }
                        }
                        @if !m.revoked_admins.is_empty() {
                            p { "Revoked admin keys: " (m.revoked_admins.len()) }
                        }
                    }
                    Err(e) => { p { "Membership: " (e.message) } }
                }
                @match &audit {
                    Some(Ok(a)) => {
                        p { "Latest audit: " (a.keys) " keys; "
                            @for n in &a.nodes { (n.node) " " (n.ok) "/" (n.checked) " verified; " } }
                    }
                    Some(Err(e)) => { p { "Latest audit: " (e.message) } }
                    None => {}
                }
            }
        });
    }
    page(
        "Cluster health",
        Some(&admin),
        html! { @for s in &sections { (s) } },
    )
}

/// `GET /console/register`: the admin's side of `custos pki passkey`: creates the passkey
/// with the operator's options, then proves possession, and shows the key's fingerprint
/// to read back to the operator.
pub(super) async fn register(State(console): Shared) -> Response {
    page(
        "Register a passkey",
        None,
        html! {
            p { "Your operator runs " code { "custos pki passkey begin --origin " (console.config.origin) } " and hands you its options." }
            form #register {
                label for="create-options" { "Options from the operator (step 1)" }
                textarea #create-options rows="6" required {}
                button type="submit" { "Create passkey" }
            }
            label for="registration" { "Registration, for the operator (step 2)" }
            textarea #registration rows="6" readonly {}
            p { "Key fingerprint (read it to your operator): " output #fingerprint.mono {} }
            form #prove {
                label for="get-options" { "Proof options from the operator (step 3)" }
                textarea #get-options rows="6" required {}
                button type="submit" { "Prove possession" }
            }
            label for="assertion" { "Proof, for the operator (step 4)" }
            textarea #assertion rows="6" readonly {}
        },
    )
}

/// The console's script.
pub(super) async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

/// The console's style sheet.
pub(super) async fn style() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
