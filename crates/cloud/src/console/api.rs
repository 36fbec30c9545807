//! The console script's JSON calls: sign-in (begin, finish), sign-out, approve. Each POST
//! must come from the console's pages (`Origin`) with a JSON body of at most
//! [`MAX_CONSOLE_BODY`] bytes.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;

use custos_cloud_api::RequestView;

use super::session::Answer;
use super::{Console, ConsoleError};

/// Largest body of a console call (an assertion's parts as hex, and a name).
pub(super) const MAX_CONSOLE_BODY: usize = 4 * 1024;

type Shared = State<Arc<Console>>;

fn body<T>(json: Result<Json<T>, JsonRejection>) -> Result<T, ConsoleError> {
    json.map(|Json(t)| t)
        .map_err(|r| ConsoleError::Malformed(r.body_text()))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Begin {
    name: String,
}

/// The guard of the sign-in calls (open to anyone): the console's origin, the address's
/// limit.
fn sign_in_guard(
    console: &Console,
    headers: &HeaderMap,
    peer: Option<ConnectInfo<SocketAddr>>,
) -> Result<(), ConsoleError> {
    console.check_origin(headers)?;
    console.limit(peer.map(|p| p.0.ip()))
}

/// `POST /console/api/sign-in/begin {name}`: a challenge for the admin's passkey.
pub(super) async fn sign_in_begin(
    State(console): Shared,
    peer: Option<ConnectInfo<SocketAddr>>,
    headers: HeaderMap,
    json: Result<Json<Begin>, JsonRejection>,
) -> Result<Response, ConsoleError> {
    sign_in_guard(&console, &headers, peer)?;
    let begin = body(json)?;
    let (challenge, cookie) = console.begin(&begin.name, &headers).await?;
    let mut response = Json(challenge).into_response();
    if let Some(c) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(response)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Finish {
    name: String,
    nonce: String,
    answer: Answer,
}

/// `POST /console/api/sign-in/finish {name, nonce, answer}`: the passkey's answer; sets
/// the session cookie.
pub(super) async fn sign_in_finish(
    State(console): Shared,
    peer: Option<ConnectInfo<SocketAddr>>,
    headers: HeaderMap,
    json: Result<Json<Finish>, JsonRejection>,
) -> Result<Response, ConsoleError> {
    sign_in_guard(&console, &headers, peer)?;
    let f = body(json)?;
    let cookie = console
        .finish(&f.name, &f.nonce, f.answer, &headers)
        .await?;
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(serde_json::json!({ "admin": f.name })),
    )
        .into_response())
}

/// `POST /console/api/sign-out`: ends the session.
pub(super) async fn sign_out(
    State(console): Shared,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    console.check_origin(&headers)?;
    let cookie = console.sign_out(&headers).await?;
    Ok(([(header::SET_COOKIE, cookie)], Json(serde_json::json!({}))).into_response())
}

/// What the signed-in admin decides with a passkey assertion.
#[derive(Clone, Copy)]
enum Decision {
    /// Over the request's approval message: recorded as their approval (and, at quorum,
    /// executed).
    Approve,
    /// Over its rejection message ([`crate::service::rejection_message`]): the request is
    /// refused (`rejected_by_admin`).
    Reject,
}

async fn decide(
    console: &Console,
    id: &str,
    headers: &HeaderMap,
    json: Result<Json<Answer>, JsonRejection>,
    decision: Decision,
) -> Result<Json<RequestView>, ConsoleError> {
    console.check_origin(headers)?;
    let admin = console.signed_in(headers).await?;
    let approval = body(json)?.approval(&admin);
    let tenant = &console.config.tenant;
    let view = match decision {
        Decision::Approve => console.cloud.approve(tenant, id, approval).await?.view,
        Decision::Reject => console.cloud.reject(tenant, id, approval).await?,
    };
    tracing::info!(
        admin = admin.name,
        request = id,
        status = view.status.as_str(),
        rejected = matches!(decision, Decision::Reject),
        "console decision"
    );
    Ok(Json(view))
}

/// `POST /console/api/requests/{id}/approve`: see [`Decision::Approve`].
pub(super) async fn approve(
    State(console): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    json: Result<Json<Answer>, JsonRejection>,
) -> Result<Json<RequestView>, ConsoleError> {
    decide(&console, &id, &headers, json, Decision::Approve).await
}

/// `POST /console/api/requests/{id}/reject`: see [`Decision::Reject`].
pub(super) async fn reject(
    State(console): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    json: Result<Json<Answer>, JsonRejection>,
) -> Result<Json<RequestView>, ConsoleError> {
    decide(&console, &id, &headers, json, Decision::Reject).await
}
