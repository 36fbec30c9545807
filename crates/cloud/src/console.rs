//! The approvers' console: the admins of patent FIG. 1 at a browser, approving with a
//! WebAuthn passkey the Admin CA certified (`custos pki passkey`).
//!
//! Served under `/console` by this server's TLS listener when `[console]` is configured:
//! server-rendered pages (no external resource, no build step) and one small script for
//! WebAuthn. An admin signs in with an assertion over a single-use challenge of the server
//! (a session cookie, `__Host-`, `Secure`, `HttpOnly`, `SameSite=Strict`); sees the pending
//! requests of their approver groups, each as its intent (what a TEE decoded from the
//! transaction); approves with an assertion whose challenge is the SHA-256 of the
//! request's approval message, or rejects it (an assertion over its rejection message:
//! the request is refused, nothing reaches a cluster); and sees the history, cluster
//! health, membership and audits.
//!
//! The console decides nothing: an approval it forwards is checked by the API's own path
//! and again by the TEE (certificate, passkey origin and RP id, user verification, counter,
//! group, revocation, quorum, policy). What it guards is the session: POSTs need the
//! console's `Origin` and a JSON body, so another site can neither sign an admin in nor
//! approve in their name (which would need the passkey anyway).
//!
//! * `admins`: the folder of admins who may sign in (their chain and credential id);
//! * `session`: sign-in, sessions, sign-out;
//! * `pages`: the HTML; `intent`: a transaction's intent as a table;
//! * `api`: the JSON calls of the script (sign-in, approve, reject).

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::config::ConsoleConfig;
use crate::service::Cloud;

mod admins;
mod api;
mod error;
mod intent;
mod pages;
mod session;

pub use error::ConsoleError;

/// The console's state: the server and its `[console]` configuration.
pub(crate) struct Console {
    cloud: Arc<Cloud>,
    config: ConsoleConfig,
    /// The WebAuthn relying party id: the origin's host.
    rp_id: String,
    /// Sign-in calls per peer address, with the last one's time.
    limits: std::sync::Mutex<
        std::collections::HashMap<std::net::IpAddr, (crate::access::Bucket, std::time::Instant)>,
    >,
}

/// The console's routes, when `[console]` is configured.
pub(crate) fn routes(cloud: Arc<Cloud>) -> Option<Router> {
    let config = cloud.console_config()?.clone();
    let binding = custos_pki::webauthn::PasskeyBinding::from_uri(&config.origin).ok()?;
    let console = Arc::new(Console {
        cloud,
        config,
        rp_id: binding.rp_id,
        limits: Default::default(),
    });
    let router = Router::new()
        .route("/console", get(pages::home))
        .route("/console/requests/:id", get(pages::request))
        .route("/console/history", get(pages::history))
        .route("/console/health", get(pages::health))
        .route("/console/register", get(pages::register))
        .route("/console/assets/console.js", get(pages::script))
        .route("/console/assets/console.css", get(pages::style))
        .route("/console/api/sign-in/begin", post(api::sign_in_begin))
        .route("/console/api/sign-in/finish", post(api::sign_in_finish))
        .route("/console/api/sign-out", post(api::sign_out))
        .route("/console/api/requests/:id/reject", post(api::reject))
        .route(
            "/console/api/requests/:id/approve",
            post(api::approve).route_layer(middleware::from_fn(crate::http::run_to_completion)),
        )
        .layer(axum::extract::DefaultBodyLimit::max(api::MAX_CONSOLE_BODY))
        .layer(middleware::map_response(hardened))
        .with_state(console);
    Some(router)
}

/// Headers of every console answer: only this server's script and style run, nothing
/// frames the console, nothing is cached or sent as referrer.
async fn hardened(mut response: Response) -> Response {
    let h = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}
