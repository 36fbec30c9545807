//! The REST API (axum) and its OpenAPI 3.1 description, generated from the same handler
//! annotations that register the routes (utoipa-axum), so the two cannot drift.

use std::sync::{Arc, OnceLock};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::{async_trait, Extension, Json, Router};
use serde::de::DeserializeOwned;
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ErrorCode};

mod doc;
mod errors;
mod governance;
mod key_policy;
use crate::service::{Cloud, RequestOutcome};
use custos_cloud_api::*;
use doc::ApiDoc;
pub(crate) use errors::status_of;

/// Largest request body accepted: the largest any body schema of the OpenAPI document
/// allows (sixteen approvals with certificates and passkey assertions at their longest, 64
/// clusters named, each string at its longest in its widest JSON form) fits, checked by a
/// test.
pub const MAX_BODY: usize = 160 * 1024;
/// Largest body of a threshold key import (a dealer bundle of up to
/// [`crate::service::MAX_BUNDLE`] bytes as hex, with approvals).
pub const MAX_IMPORT_BODY: usize = 2 * crate::service::MAX_BUNDLE + MAX_BODY;

/// Largest body of a threshold signing request (a full message of up to
/// [`custos_wire::protocol::MAX_PRESIGN_MESSAGE`] bytes as hex, with approvals).
pub const MAX_THRESHOLD_SIGN_BODY: usize =
    2 * custos_wire::protocol::MAX_PRESIGN_MESSAGE + MAX_BODY;

/// Largest body of an Ethereum signing request: what its schema allows at the most (a
/// transaction of 128 KiB and a message of 64 KiB as hex, typed data of 64 KiB with every
/// character escaped, approvals), though only one payload is accepted.
pub const MAX_ETHEREUM_BODY: usize =
    2 * MAX_ETHEREUM_BYTES + 8 * (MAX_ETHEREUM_BYTES / 2) + MAX_BODY;

/// Largest body of a PSBT signing request (a PSBT of up to [`MAX_PSBT_BYTES`] bytes as
/// base64, with approvals).
pub const MAX_PSBT_BODY: usize = MAX_PSBT_BYTES.div_ceil(3) * 4 + MAX_BODY;

use crate::access::check_inline_approvals;
pub use crate::access::Principal;

/// A JSON body whose rejections are API errors (`malformed_json`, `body_too_large`,
/// `unsupported_media_type`).
pub struct ApiJson<T>(pub T);

#[async_trait]
impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(json_rejection(r)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    match &r {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send Content-Type: application/json",
        ),
        _ if r.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            ErrorCode::BodyTooLarge,
            format!(
                "bodies are limited to {MAX_BODY} bytes ({MAX_THRESHOLD_SIGN_BODY} for threshold \
                 signing, {MAX_IMPORT_BODY} for threshold key imports, {MAX_PSBT_BODY} for PSBT \
                 signing, {MAX_ETHEREUM_BODY} for Ethereum signing)"
            ),
        ),
        // serde's message names the field and position, never echoes values at length.
        _ => ApiError::new(ErrorCode::MalformedJson, r.body_text()),
    }
}

/// A query string whose rejections are `invalid_query` errors.
pub struct ApiQuery<T>(pub T);

#[async_trait]
impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(ApiQuery(q.0)),
            Err(r) => Err(query_rejection(r)),
        }
    }
}

fn query_rejection(r: QueryRejection) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, r.body_text())
}

type Shared = State<Arc<Cloud>>;

fn created(o: RequestOutcome) -> (StatusCode, Json<RequestView>) {
    let status = if o.submitted {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (status, Json(o.view))
}

/// Create a wallet: records a `create_wallet` request naming the wallet's approver group
/// and the one serving node that executes it (the body's `executor`, else the next serving
/// node in turn). The quorum is at most the group's size and the group's fingerprints are
/// distinct whatever their case (`invalid_group` otherwise). 202 while it waits for
/// approvals; 200 if the inline approvals reached quorum and it was executed in this call.
#[utoipa::path(
    post, path = "/v1/wallets", tag = "wallets", security(("bearer" = ["request"])),
    request_body = CreateWalletBody,
    responses(
        (status = 200, description = "Submitted in this call (completed, refused or failed)", body = RequestView),
        (status = 202, description = "Recorded, waiting for approvals", body = RequestView),
        (status = 400, description = "malformed_json, invalid_quorum, invalid_group, invalid_rules, invalid_expiry, invalid_request_id, too_many_approvals", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "request_exists, duplicate_approval", body = ApiErrorBody),
        (status = 422, description = "approval_invalid, approver_not_in_group, unknown_executor", body = ApiErrorBody),
        (status = 502, description = "bridge_refused, relay_rejected, unverified_response (choosing the executing node), executor_key_mismatch", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable (no serving node to execute it; or recorded as failed: retry it)", body = ApiErrorBody),
    )
)]
async fn create_wallet(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<CreateWalletBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    check_inline_approvals(&caller, body.approvals.len())?;
    Ok(created(cloud.create_wallet(&caller, body).await?))
}

/// List the wallets recorded by this server.
#[utoipa::path(
    get, path = "/v1/wallets", tag = "wallets", security(("bearer" = ["read"])),
    responses(
        (status = 200, body = WalletList),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
    )
)]
async fn list_wallets(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
) -> Result<Json<WalletList>, ApiError> {
    Ok(Json(cloud.wallets(&caller.tenant).await?))
}

/// Import a wallet from a BIP-39 mnemonic or a raw seed. The secret is sealed (HPKE) to a
/// healthy node's certified device key before anything is stored; it is never logged.
#[utoipa::path(
    post, path = "/v1/wallets/import", tag = "wallets", security(("bearer" = ["request"])),
    request_body = ImportWalletBody,
    responses(
        (status = 200, description = "Submitted in this call", body = RequestView),
        (status = 202, description = "Recorded, waiting for approvals", body = RequestView),
        (status = 400, description = "malformed_json, invalid_secret, invalid_quorum, invalid_expiry, invalid_request_id, too_many_approvals, invalid_group, invalid_rules", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "wallet_exists, request_exists, duplicate_approval", body = ApiErrorBody),
        (status = 422, description = "approval_invalid", body = ApiErrorBody),
        (status = 502, description = "unverified_response, relay_rejected, bridge_refused", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
async fn import_wallet(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<ImportWalletBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    check_inline_approvals(&caller, body.approvals.len())?;
    Ok(created(cloud.import_wallet(&caller, body).await?))
}

/// One wallet.
#[utoipa::path(
    get, path = "/v1/wallets/{root_id}", tag = "wallets", security(("bearer" = ["read"])),
    params(("root_id" = String, Path, description = "Hex of the 33-byte root public key", pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)),
    responses(
        (status = 200, body = WalletView),
        (status = 400, description = "invalid_root_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_wallet", body = ApiErrorBody),
    )
)]
async fn get_wallet(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(root_id): Path<String>,
) -> Result<Json<WalletView>, ApiError> {
    Ok(Json(cloud.wallet(&caller.tenant, &root_id).await?))
}

/// Public derivation from the wallet's recorded xpub (non-hardened steps only; no TEE
/// involved): xpub, public key and P2WPKH address at `path`, optionally a list of
/// children `start..start+count`.
#[utoipa::path(
    get, path = "/v1/wallets/{root_id}/derive", tag = "wallets", security(("bearer" = ["read"])),
    params(("root_id" = String, Path, description = "Hex of the 33-byte root public key", pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66), DeriveQuery),
    responses(
        (status = 200, body = DeriveView),
        (status = 400, description = "invalid_root_id, invalid_path, hardened_path, invalid_range, invalid_query", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_wallet", body = ApiErrorBody),
    )
)]
async fn derive(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(root_id): Path<String>,
    ApiQuery(q): ApiQuery<DeriveQuery>,
) -> Result<Json<DeriveView>, ApiError> {
    Ok(Json(cloud.derive(&caller.tenant, &root_id, &q).await?))
}

/// The extended public key at a path with hardened steps (e.g. a BIP-84 account,
/// `m/84'/0'/0'`), derived by a TEE of the wallet's cluster, whose answer is signed by its
/// certified device key: what a watch-only wallet's descriptors need.
#[utoipa::path(
    get, path = "/v1/wallets/{root_id}/xpub", tag = "wallets", security(("bearer" = ["read"])),
    params(("root_id" = String, Path, description = "Hex of the 33-byte root public key", pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66), XpubQuery),
    responses(
        (status = 200, body = XpubView),
        (status = 400, description = "invalid_root_id, invalid_path, invalid_query", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_wallet, unknown_cluster", body = ApiErrorBody),
        (status = 502, description = "unverified_response, relay_rejected, bridge_refused", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
async fn wallet_xpub(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(root_id): Path<String>,
    ApiQuery(q): ApiQuery<XpubQuery>,
) -> Result<Json<XpubView>, ApiError> {
    Ok(Json(cloud.xpub(&caller.tenant, &root_id, &q).await?))
}

/// Ask for a signature: records a `sign` request. With quorum in the inline approvals it
/// is signed in this same call (200, the request completed or refused).
#[utoipa::path(
    post, path = "/v1/sign-requests", tag = "requests", security(("bearer" = ["request"])),
    request_body = SignRequestBody,
    responses(
        (status = 200, description = "Submitted in this call", body = RequestView),
        (status = 202, description = "Recorded, waiting for approvals", body = RequestView),
        (status = 400, description = "malformed_json, invalid_root_id, invalid_path, invalid_digest, invalid_expiry, invalid_request_id, too_many_approvals", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_wallet, unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "request_exists, duplicate_approval", body = ApiErrorBody),
        (status = 422, description = "approval_invalid", body = ApiErrorBody),
        (status = 502, description = "unverified_response, relay_rejected", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable (recorded as failed; retry it)", body = ApiErrorBody),
    )
)]
async fn create_sign_request(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<SignRequestBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    check_inline_approvals(&caller, body.approvals.len())?;
    Ok(created(cloud.sign(&caller, body).await?))
}

/// Ask for a Bitcoin transaction to be signed: a TEE of the wallet's cluster first checks
/// the PSBT (every input the wallet's own, its value proven, `SIGHASH_ALL`) and computes its
/// intent — inputs, recipients with their addresses and amounts, change recognised by the
/// wallet's derivation, fee — which the request shows (`transaction`) and approvers sign by
/// its hash. Once approved, the TEE signs only this transaction, and only if the wallet's
/// policy (limits, allowlist, approval tiers) allows it: a refusal names the rule
/// (`tee_policy_refused`, `tee_intent_mismatch`, ...). The signed PSBT is the request's
/// `result`. A threshold key with HD derivation signs its PSBTs (P2WPKH and P2SH-P2WPKH
/// inputs) by t of its clusters, one session per input, each TEE checking the PSBT and the
/// policy sealed with its share; the request is then in scope `*threshold*`.
#[utoipa::path(
    post, path = "/v1/psbt-requests", tag = "requests", security(("bearer" = ["request"])),
    request_body = SignPsbtBody,
    responses(
        (status = 200, description = "Submitted in this call", body = RequestView),
        (status = 202, description = "Recorded, waiting for approvals of the intent", body = RequestView),
        (status = 400, description = "malformed_json, invalid_root_id, invalid_network, invalid_psbt, invalid_clusters, invalid_expiry, invalid_request_id, too_many_approvals", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_wallet, unknown_cluster, unknown_executor", body = ApiErrorBody),
        (status = 409, description = "request_exists, duplicate_approval", body = ApiErrorBody),
        (status = 422, description = "transaction_rejected (the TEE's check named), approval_invalid", body = ApiErrorBody),
        (status = 502, description = "unverified_response, relay_rejected, bridge_refused", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
async fn create_psbt_request(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<SignPsbtBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    check_inline_approvals(&caller, body.approvals.len())?;
    Ok(created(cloud.sign_psbt(&caller, body).await?))
}

/// Ask for an Ethereum signature with the wallet's key at `path`: of an unsigned
/// transaction (legacy with EIP-155, or EIP-1559), a personal message (EIP-191) or typed data
/// (EIP-712), exactly one. A TEE of the wallet's cluster first parses it and computes its
/// intent — chain, sender, recipient, value, nonce, gas and fees, an ERC-20 `transfer` or
/// `approve` decoded; the message; the typed data with its domain — which the request shows
/// (`transaction`) and approvers sign by its hash. Once approved, the TEE signs only this,
/// and only if the wallet's policy allows it (ether and tokens against their limits and
/// allowlist; messages and typed data only with a limit on `ethereum:message`); a refusal
/// names the rule. The signature (and the signed transaction) is the request's `result`.
#[utoipa::path(
    post, path = "/v1/eth-requests", tag = "requests", security(("bearer" = ["request"])),
    request_body = SignEthereumBody,
    responses(
        (status = 200, description = "Submitted in this call", body = RequestView),
        (status = 202, description = "Recorded, waiting for approvals of the intent", body = RequestView),
        (status = 400, description = "malformed_json, invalid_root_id, invalid_path, invalid_ethereum, invalid_expiry, invalid_request_id, too_many_approvals", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_wallet, unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "request_exists, duplicate_approval", body = ApiErrorBody),
        (status = 422, description = "transaction_rejected (the TEE's check named), approval_invalid", body = ApiErrorBody),
        (status = 502, description = "unverified_response, relay_rejected, bridge_refused", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
async fn create_eth_request(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<SignEthereumBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    check_inline_approvals(&caller, body.approvals.len())?;
    Ok(created(cloud.sign_ethereum(&caller, body).await?))
}

/// Import one cluster's share of a dealt threshold key: records an `import_threshold_key`
/// request for the node whose device certificate the dealer sealed the bundle to (found by
/// the bundle's recipient fingerprint). Admins approve the import of share `share_index`
/// of the key (approval message made with the share's cluster). Bodies up to 672 KiB.
#[utoipa::path(
    post, path = "/v1/threshold/keys/import", tag = "threshold", security(("bearer" = ["request"])),
    request_body = ImportThresholdKeyBody,
    responses(
        (status = 200, description = "Submitted in this call", body = RequestView),
        (status = 202, description = "Recorded, waiting for approvals", body = RequestView),
        (status = 400, description = "malformed_json, invalid_bundle, invalid_expiry, invalid_request_id, too_many_approvals", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster (the share's cluster is not configured)", body = ApiErrorBody),
        (status = 409, description = "threshold_key_mismatch, request_exists, duplicate_approval", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 422, description = "approval_invalid, bundle_recipient_unknown", body = ApiErrorBody),
        (status = 502, description = "unverified_response, relay_rejected, bridge_refused", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
async fn import_threshold_key(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<ImportThresholdKeyBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    check_inline_approvals(&caller, body.approvals.len())?;
    Ok(created(cloud.import_threshold_key(&caller, body).await?))
}

/// Create a threshold key by distributed key generation: records a `create_threshold_key`
/// request (cluster `*threshold*`) for a t-of-n key over the named clusters, cluster i
/// holding share i. Admins approve exactly these terms (t, the clusters in order, HD, the
/// quorum, which is also the key's quorum for use). At quorum the server runs the key
/// generation between one healthy node's TEE of every cluster — keygen, then aux-info
/// (each TEE's Paillier key) — relaying every message (signed by its sender's device key,
/// point-to-point content sealed to the receiving node), and records the key once every TEE
/// reported the same one; the result carries the key id and xpub. No dealer and no single
/// TEE ever holds the key. Aux-info generation takes tens of seconds (the call returns when
/// it is done); a failed attempt (`threshold_aborted`, `cluster_unavailable`, or a `tee_*`
/// code such as `tee_primes_not_ready`) is retried with `POST /v1/requests/{id}/retry`.
/// With `group` (the key's approver group, fixed at creation: only its admins approve the
/// creation and every use; `invalid_group` otherwise), the server names one executing node
/// per cluster now (`executors`, `target_node`), the approvals bind their device keys, and
/// every attempt runs on those nodes only, so no retry can make a second key; an approval
/// by an admin outside the group is refused (`approver_not_in_group`).
#[utoipa::path(
    post, path = "/v1/threshold/keys", tag = "threshold", security(("bearer" = ["request"])),
    request_body = CreateThresholdKeyBody,
    responses(
        (status = 200, description = "Submitted in this call (completed, refused or failed)", body = RequestView),
        (status = 202, description = "Recorded, waiting for approvals", body = RequestView),
        (status = 400, description = "malformed_json, invalid_clusters (fewer than 2, more than 64, or one named twice), invalid_threshold, invalid_quorum, invalid_group, invalid_rules, invalid_expiry, invalid_request_id, too_many_approvals", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "request_exists, duplicate_approval", body = ApiErrorBody),
        (status = 422, description = "approval_invalid, approver_not_in_group", body = ApiErrorBody),
        (status = 502, description = "unverified_response, relay_rejected", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable: a cluster cannot take part (recorded as failed; retry it)", body = ApiErrorBody),
    )
)]
async fn create_threshold_key(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<CreateThresholdKeyBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    check_inline_approvals(&caller, body.approvals.len())?;
    Ok(created(cloud.create_threshold_key(&caller, body).await?))
}

/// Threshold keys recorded by this server, with their xpub and where each share was
/// imported (or made).
#[utoipa::path(
    get, path = "/v1/threshold/keys", tag = "threshold", security(("bearer" = ["read"])),
    responses(
        (status = 200, body = ThresholdKeyList),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
    )
)]
async fn list_threshold_keys(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
) -> Result<Json<ThresholdKeyList>, ApiError> {
    Ok(Json(cloud.threshold_keys(&caller.tenant).await?))
}

/// One threshold key.
#[utoipa::path(
    get, path = "/v1/threshold/keys/{key_id}", tag = "threshold", security(("bearer" = ["read"])),
    params(("key_id" = String, Path, description = "Hex of the 33-byte joint public key", pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)),
    responses(
        (status = 200, body = ThresholdKeyView),
        (status = 400, description = "invalid_key_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_threshold_key", body = ApiErrorBody),
    )
)]
async fn get_threshold_key(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(key_id): Path<String>,
) -> Result<Json<ThresholdKeyView>, ApiError> {
    Ok(Json(cloud.threshold_key(&caller.tenant, &key_id).await?))
}

/// Audit a threshold key now (patent \[0086\]): runs signing sessions so that every
/// cluster holding a share takes part at least once (consecutive groups of t clusters,
/// wrapping around), each over a fresh random 8-byte message, and verifies every signature
/// against the key's root public key over `audit_digest(message)`. A cluster is `ok` when
/// a session it took part in verified; failed sessions name the clusters blamed. Needs no
/// admin approvals: the TEEs sign only the domain-separated audit digest with the root key
/// in these sessions, never a transaction digest. No request is recorded.
#[utoipa::path(
    post, path = "/v1/threshold/keys/{key_id}/audit", tag = "threshold", security(("bearer" = ["operate"])),
    params(("key_id" = String, Path, description = "Hex of the 33-byte joint public key", pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)),
    responses(
        (status = 200, body = ThresholdAuditReport),
        (status = 400, description = "invalid_key_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_threshold_key", body = ApiErrorBody),
    )
)]
async fn run_threshold_audit(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(key_id): Path<String>,
) -> Result<Json<ThresholdAuditReport>, ApiError> {
    Ok(Json(cloud.threshold_audit(&caller.tenant, &key_id).await?))
}

/// The latest audit report of a threshold key (kept in memory: none after a restart until
/// the next audit).
#[utoipa::path(
    get, path = "/v1/threshold/keys/{key_id}/audit", tag = "threshold", security(("bearer" = ["read"])),
    params(("key_id" = String, Path, description = "Hex of the 33-byte joint public key", pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)),
    responses(
        (status = 200, body = ThresholdAuditReport),
        (status = 400, description = "invalid_key_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_threshold_key, no_threshold_audit", body = ApiErrorBody),
    )
)]
async fn latest_threshold_audit(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(key_id): Path<String>,
) -> Result<Json<ThresholdAuditReport>, ApiError> {
    Ok(Json(
        cloud
            .latest_threshold_audit(&caller.tenant, &key_id)
            .await?,
    ))
}

/// Make presignatures of a threshold key without chain code ahead of time: runs `count`
/// presignature sessions, each between t clusters (the named ones or the healthiest share
/// holders), whose TEEs each seal their part; each is recorded as ready once every TEE
/// stored it. Needs no approvals: a presignature signs nothing until an approved
/// `threshold_sign` request with the full `message` uses it (once).
#[utoipa::path(
    post, path = "/v1/threshold/keys/{key_id}/presignatures", tag = "threshold", security(("bearer" = ["operate"])),
    params(("key_id" = String, Path, description = "Hex of the 33-byte joint public key", pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)),
    request_body = MakePresignaturesBody,
    responses(
        (status = 200, body = PresignaturePool),
        (status = 400, description = "malformed_json, invalid_key_id, invalid_count, invalid_clusters", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_threshold_key", body = ApiErrorBody),
        (status = 409, description = "hd_threshold_key", body = ApiErrorBody),
    )
)]
async fn make_presignatures(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(key_id): Path<String>,
    ApiJson(body): ApiJson<MakePresignaturesBody>,
) -> Result<Json<PresignaturePool>, ApiError> {
    Ok(Json(
        cloud
            .make_presignatures(&caller.tenant, &key_id, body)
            .await?,
    ))
}

/// The ready presignatures of a threshold key, next used first.
#[utoipa::path(
    get, path = "/v1/threshold/keys/{key_id}/presignatures", tag = "threshold", security(("bearer" = ["read"])),
    params(("key_id" = String, Path, description = "Hex of the 33-byte joint public key", pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)),
    responses(
        (status = 200, body = PresignaturePool),
        (status = 400, description = "invalid_key_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_threshold_key", body = ApiErrorBody),
    )
)]
async fn list_presignatures(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(key_id): Path<String>,
) -> Result<Json<PresignaturePool>, ApiError> {
    Ok(Json(cloud.presignatures(&caller.tenant, &key_id).await?))
}

/// Ask for a threshold signature: records a `threshold_sign` request (cluster
/// `*threshold*`). At quorum the server picks t clusters (the named ones, or healthy
/// holders of a share), runs the signing session between their TEEs (phases getAB,
/// getAB_and_R, getR, getSig), relaying every message, and verifies the signature against
/// the key's child at `path`. With the full `message` (key without chain code, path `m`) a
/// ready presignature is used when there is one: only getSig runs, each TEE hashing the
/// message itself (the result names the `presignature`). A failed session (`threshold_aborted` or a `tee_*` code
/// naming the cluster and phase) is retried with `POST /v1/requests/{id}/retry`.
#[utoipa::path(
    post, path = "/v1/threshold/sign", tag = "threshold", security(("bearer" = ["request"])),
    request_body = ThresholdSignBody,
    responses(
        (status = 200, description = "Submitted in this call (completed, refused or failed)", body = RequestView),
        (status = 202, description = "Recorded, waiting for approvals", body = RequestView),
        (status = 400, description = "malformed_json, invalid_key_id, invalid_path, hardened_path, invalid_digest, invalid_message, invalid_clusters, invalid_expiry, invalid_request_id, too_many_approvals", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_threshold_key, unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "request_exists, duplicate_approval", body = ApiErrorBody),
        (status = 422, description = "approval_invalid", body = ApiErrorBody),
        (status = 502, description = "unverified_response, relay_rejected", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable: fewer than t clusters can take part (recorded as failed; retry it)", body = ApiErrorBody),
    )
)]
async fn create_threshold_sign(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    ApiJson(body): ApiJson<ThresholdSignBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    check_inline_approvals(&caller, body.approvals.len())?;
    Ok(created(cloud.threshold_sign(&caller, body).await?))
}

/// List requests, newest first.
#[utoipa::path(
    get, path = "/v1/requests", tag = "requests", security(("bearer" = ["read"])),
    params(RequestQuery),
    responses(
        (status = 200, body = RequestList),
        (status = 400, description = "invalid_query", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
    )
)]
async fn list_requests(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    ApiQuery(q): ApiQuery<RequestQuery>,
) -> Result<Json<RequestList>, ApiError> {
    Ok(Json(cloud.requests(&caller.tenant, &q).await?))
}

/// One request with its approval message, result or error, and lifecycle events.
#[utoipa::path(
    get, path = "/v1/requests/{id}", tag = "requests", security(("bearer" = ["read"])),
    params(("id" = String, Path, description = "Request id, 32 hex characters", pattern = "^[0-9a-fA-F]{32}$", max_length = 32)),
    responses(
        (status = 200, body = RequestView),
        (status = 400, description = "invalid_request_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_request", body = ApiErrorBody),
    )
)]
async fn get_request(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    Ok(Json(cloud.request(&caller.tenant, &id).await?))
}

/// Add an admin approval. The certificate must chain to the trust root through the Admin
/// CA and the signature cover the request's approval message; distinct admins count. At
/// quorum the request is submitted and the answer awaited.
#[utoipa::path(
    post, path = "/v1/requests/{id}/approvals", tag = "requests", security(("bearer" = ["approve"])),
    params(("id" = String, Path, description = "Request id, 32 hex characters", pattern = "^[0-9a-fA-F]{32}$", max_length = 32)),
    request_body = ApprovalBody,
    responses(
        (status = 200, description = "Approval recorded (and the request submitted if it reached quorum)", body = RequestView),
        (status = 400, description = "malformed_json, invalid_request_id", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_request", body = ApiErrorBody),
        (status = 409, description = "duplicate_approval, not_pending, request_expired, conflict, not_governed, approval_format_changed", body = ApiErrorBody),
        (status = 422, description = "approval_invalid, approver_not_in_group, approver_not_a_governor, admin_revoked (governance requests: the approver must be a current, unrevoked governor)", body = ApiErrorBody),
        (status = 502, description = "unverified_response, executor_key_mismatch, relay_rejected, bridge_refused", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable (recorded as failed; retry it)", body = ApiErrorBody),
    )
)]
async fn add_approval(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ApprovalBody>,
) -> Result<Json<RequestView>, ApiError> {
    Ok(Json(cloud.approve(&caller.tenant, &id, body).await?.view))
}

/// Reject a pending request: an admin's signature (or passkey assertion) over the request's
/// rejection message, `CUSTOS-REJECTION-V1\0` followed by its approval message. Only an
/// admin this server knows approves the request may reject it (its group or a tier group,
/// as the key's policy in force names them; for governance, a current governor), and not
/// a revoked one; the request is then `refused` with `rejected_by_admin` and nothing
/// reaches a cluster. A request whose approvers only its TEE knows cannot be rejected (it
/// expires unapproved).
#[utoipa::path(
    post, path = "/v1/requests/{id}/rejections", tag = "requests", security(("bearer" = ["approve"])),
    params(("id" = String, Path, description = "Request id, 32 hex characters", pattern = "^[0-9a-fA-F]{32}$", max_length = 32)),
    request_body = ApprovalBody,
    responses(
        (status = 200, description = "Rejected: the request is refused", body = RequestView),
        (status = 400, description = "malformed_json, invalid_request_id", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_request, unknown_wallet, unknown_threshold_key", body = ApiErrorBody),
        (status = 409, description = "not_pending, conflict, not_governed", body = ApiErrorBody),
        (status = 422, description = "approval_invalid, approver_not_in_group, approver_not_a_governor, admin_revoked", body = ApiErrorBody),
        (status = 502, description = "unverified_response, relay_rejected, bridge_refused", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable, cluster_unavailable (nothing recorded: retry)", body = ApiErrorBody),
    )
)]
async fn reject_request(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ApprovalBody>,
) -> Result<Json<RequestView>, ApiError> {
    Ok(Json(cloud.reject(&caller.tenant, &id, body).await?))
}

/// Resubmit a failed request with the same id (the link executes an id at most once and
/// returns the first answer).
#[utoipa::path(
    post, path = "/v1/requests/{id}/retry", tag = "requests", security(("bearer" = ["request"])),
    params(("id" = String, Path, description = "Request id, 32 hex characters", pattern = "^[0-9a-fA-F]{32}$", max_length = 32)),
    responses(
        (status = 200, body = RequestView),
        (status = 400, description = "invalid_request_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_request", body = ApiErrorBody),
        (status = 409, description = "not_pending", body = ApiErrorBody),
        (status = 502, description = "unverified_response, executor_key_mismatch, relay_rejected", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
async fn retry_request(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    Ok(Json(cloud.retry(&caller.tenant, &id).await?.view))
}

/// Configured clusters and whether their relays answer.
#[utoipa::path(
    get, path = "/v1/clusters", tag = "clusters", security(("bearer" = ["read"])),
    responses(
        (status = 200, body = ClusterList),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
    )
)]
async fn list_clusters(State(cloud): Shared) -> Json<ClusterList> {
    Json(cloud.cluster_list().await)
}

/// The bridge's status of a cluster: nodes, health, keys held, requests served.
#[utoipa::path(
    get, path = "/v1/clusters/{name}", tag = "clusters", security(("bearer" = ["read"])),
    params(("name" = String, Path, description = "Cluster name", pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48)),
    responses(
        (status = 200, body = ClusterStatusView),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
async fn get_cluster(
    State(cloud): Shared,
    Path(name): Path<String>,
) -> Result<Json<ClusterStatusView>, ApiError> {
    Ok(Json(cloud.cluster_status(&name).await?))
}

/// Run a key audit of the cluster now (patent \[0086\]) and return its report. The
/// cluster audits every tenant's keys; the report names only the key ids of the token's
/// tenant and counts the other findings per node (`hidden`).
#[utoipa::path(
    post, path = "/v1/clusters/{name}/audits", tag = "clusters", security(("bearer" = ["operate"])),
    params(("name" = String, Path, description = "Cluster name", pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48)),
    responses(
        (status = 200, body = AuditReportView),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
async fn run_audit(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<AuditReportView>, ApiError> {
    Ok(Json(cloud.audit(&caller.tenant, &name, false).await?))
}

/// The cluster's most recent audit report, naming only the key ids of the token's tenant
/// (the other findings counted per node in `hidden`).
#[utoipa::path(
    get, path = "/v1/clusters/{name}/audits/latest", tag = "clusters", security(("bearer" = ["read"])),
    params(("name" = String, Path, description = "Cluster name", pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48)),
    responses(
        (status = 200, body = AuditReportView),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
async fn latest_audit(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<AuditReportView>, ApiError> {
    Ok(Json(cloud.audit(&caller.tenant, &name, true).await?))
}

/// This OpenAPI document (no authentication).
#[utoipa::path(
    get, path = "/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"))
)]
async fn openapi_json() -> Response {
    openapi_response()
}

/// This OpenAPI document at its well-known location (no authentication).
#[utoipa::path(
    get, path = "/.well-known/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json"))
)]
async fn openapi_well_known() -> Response {
    openapi_response()
}

fn openapi_response() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi_text(),
    )
        .into_response()
}

/// Routes with their documentation; `protected` routes need a token.
fn documented() -> (OpenApiRouter<Arc<Cloud>>, OpenApiRouter<Arc<Cloud>>) {
    let protected = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_wallet, list_wallets))
        .routes(routes!(import_wallet))
        .routes(routes!(get_wallet))
        .routes(routes!(derive))
        .routes(routes!(wallet_xpub))
        .routes(routes!(create_sign_request))
        .routes(routes!(list_requests))
        .routes(routes!(get_request))
        .routes(routes!(add_approval))
        .routes(routes!(reject_request))
        .routes(routes!(retry_request))
        .routes(routes!(list_clusters))
        .routes(routes!(get_cluster))
        .routes(routes!(run_audit))
        .routes(routes!(latest_audit))
        .routes(routes!(create_threshold_key, list_threshold_keys))
        .routes(routes!(get_threshold_key))
        .routes(routes!(run_threshold_audit, latest_threshold_audit))
        .routes(routes!(make_presignatures, list_presignatures))
        .merge(governance::routes())
        .merge(key_policy::routes())
        .merge(
            OpenApiRouter::new()
                .routes(routes!(create_threshold_sign))
                .layer(DefaultBodyLimit::max(MAX_THRESHOLD_SIGN_BODY)),
        )
        .merge(
            OpenApiRouter::new()
                .routes(routes!(create_psbt_request))
                .layer(DefaultBodyLimit::max(MAX_PSBT_BODY)),
        )
        .merge(
            OpenApiRouter::new()
                .routes(routes!(create_eth_request))
                .layer(DefaultBodyLimit::max(MAX_ETHEREUM_BODY)),
        )
        .merge(
            // Dealer bundles are larger than other bodies; the route's own limit is applied
            // after (and overrides) the router-wide one.
            OpenApiRouter::new()
                .routes(routes!(import_threshold_key))
                .layer(DefaultBodyLimit::max(MAX_IMPORT_BODY)),
        );
    let public = OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(openapi_well_known));
    (protected, public)
}

/// The OpenAPI 3.1 description of every route.
pub fn openapi() -> OpenApiDoc {
    let (protected, public) = documented();
    let mut doc = protected.merge(public).into_openapi();
    crate::access::document(&mut doc);
    doc
}

/// [`openapi`] as JSON, built once.
pub fn openapi_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        openapi()
            .to_pretty_json()
            .expect("OpenAPI document serializes")
    })
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take this method",
    )
}

/// Runs an API call to its end even when its client goes away. hyper drops a handler's
/// future when the connection closes; a request whose submission had started would then
/// stay `submitting`, owned by a live replica, so that no recovery takes it up. Detached on
/// a task of its own, the call records its outcome whoever still listens.
pub(crate) async fn run_to_completion(request: Request, next: middleware::Next) -> Response {
    match tokio::spawn(next.run(request)).await {
        Ok(response) => response,
        Err(e) => {
            tracing::error!(error = %e, "an API call panicked");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The whole HTTP application: authenticated `/v1` routes (each run to its end, see
/// `run_to_completion`), the public OpenAPI document, JSON 404/405 answers and the body limit.
pub fn router(cloud: Arc<Cloud>) -> Router {
    let (protected, public) = documented();
    let protected = protected
        .route_layer(middleware::from_fn_with_state(
            cloud.clone(),
            crate::access::authenticate,
        ))
        .route_layer(middleware::from_fn(run_to_completion));
    let (router, _doc) = protected.merge(public).split_for_parts();
    let console = crate::console::routes(cloud.clone());
    let router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(cloud);
    match console {
        Some(console) => router.merge(console),
        None => router,
    }
}
