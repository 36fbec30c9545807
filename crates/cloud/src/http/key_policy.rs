//! A wallet's or threshold key's approver group (issue 12, item 3): read the policy in force
//! from a node's TEE, and propose a new group that a quorum of the group in force approves
//! through `POST /v1/requests/{id}/approvals`.

use super::*;

/// The wallet's approver group in force, its quorum, version and hash, as a node's TEE
/// signed it (checked by this server). Version 0 with an empty group is a wallet sealed
/// before approver groups.
#[utoipa::path(
    get, path = "/v1/wallets/{root_id}/policy", tag = "wallets", security(("bearer" = ["read"])),
    params(("root_id" = String, Path, description = "Hex of the 33-byte root public key", pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)),
    responses(
        (status = 200, body = KeyPolicyView),
        (status = 400, description = "invalid_root_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_wallet", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
pub(super) async fn get_wallet_policy(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(root_id): Path<String>,
) -> Result<Json<KeyPolicyView>, ApiError> {
    Ok(Json(cloud.wallet_policy(&caller.tenant, &root_id).await?))
}

/// Propose a new approver group and quorum for the wallet: records a `set_key_policy`
/// request naming the policy in force (read from a node's TEE now) and the new one, one
/// version later. A quorum of the group **in force** approves it (an admin outside that
/// group is refused with `approver_not_in_group`); submission changes it on every node. If
/// the policy changed meanwhile the request ends refused (`tee_policy_conflict`).
#[utoipa::path(
    put, path = "/v1/wallets/{root_id}/policy", tag = "wallets", security(("bearer" = ["request"])),
    params(("root_id" = String, Path, description = "Hex of the 33-byte root public key", pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)),
    request_body = KeyPolicyBody,
    responses(
        (status = 202, description = "Recorded, waiting for the approvals of the group in force", body = RequestView),
        (status = 400, description = "malformed_json, invalid_root_id, invalid_quorum, invalid_group, invalid_rules, invalid_expiry, invalid_request_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_wallet, unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "request_exists", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
pub(super) async fn set_wallet_policy(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(root_id): Path<String>,
    ApiJson(body): ApiJson<KeyPolicyBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    Ok(created(
        cloud.propose_key_policy(&caller, &root_id, body).await?,
    ))
}

/// The threshold key's approver group in force, its quorum (the key's), version, hash and
/// cluster anchors, as a node's TEE of the key's first cluster signed it (checked by this
/// server). Every cluster holds the same policy with its share: a change applies to all of
/// them. Version 0 with an empty group is a key made before approver groups (dealt, or by a
/// legacy key generation).
#[utoipa::path(
    get, path = "/v1/threshold/keys/{key_id}/policy", tag = "threshold", security(("bearer" = ["read"])),
    params(("key_id" = String, Path, description = "Hex of the 33-byte joint public key", pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)),
    responses(
        (status = 200, body = KeyPolicyView),
        (status = 400, description = "invalid_key_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_threshold_key, unknown_cluster", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
pub(super) async fn get_threshold_key_policy(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(key_id): Path<String>,
) -> Result<Json<KeyPolicyView>, ApiError> {
    Ok(Json(
        cloud.threshold_key_policy(&caller.tenant, &key_id).await?,
    ))
}

/// Propose a new approver group for the threshold key: records a `set_key_policy` request in
/// scope `*threshold*` naming the policy in force (read from a TEE of the key's first cluster
/// now) and the new one, one version later, with the policy's cluster anchors carried over
/// unchanged. `quorum` must be the key's (`invalid_quorum` otherwise: it is part of the key,
/// only the group changes). A quorum of the group **in force** approves it once for every
/// cluster (an admin outside that group is refused with `approver_not_in_group`); submission
/// changes it on every node of every cluster of the key, and the request completes when all
/// of them hold it. A cluster that refuses or cannot be reached is named; the request stays
/// `failed` (a retry sends it to every cluster again) unless no cluster applied it and a TEE
/// refused, which ends it `refused` (`tee_policy_conflict` when the policy changed meanwhile).
#[utoipa::path(
    put, path = "/v1/threshold/keys/{key_id}/policy", tag = "threshold", security(("bearer" = ["request"])),
    params(("key_id" = String, Path, description = "Hex of the 33-byte joint public key", pattern = "^0[23][0-9a-fA-F]{64}$", max_length = 66)),
    request_body = KeyPolicyBody,
    responses(
        (status = 202, description = "Recorded, waiting for the approvals of the group in force", body = RequestView),
        (status = 400, description = "malformed_json, invalid_key_id, invalid_quorum, invalid_group, invalid_rules, invalid_expiry, invalid_request_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_threshold_key, unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "request_exists", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
pub(super) async fn set_threshold_key_policy(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(key_id): Path<String>,
    ApiJson(body): ApiJson<KeyPolicyBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    Ok(created(
        cloud
            .propose_threshold_key_policy(&caller, &key_id, body)
            .await?,
    ))
}

/// The approver group routes with their documentation.
pub(super) fn routes() -> OpenApiRouter<Arc<Cloud>> {
    OpenApiRouter::new()
        .routes(routes!(get_wallet_policy, set_wallet_policy))
        .routes(routes!(get_threshold_key_policy, set_threshold_key_policy))
}
