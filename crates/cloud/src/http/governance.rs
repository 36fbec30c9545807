//! Cluster governance routes (issue 12): each POST records a `governance` request that the
//! cluster's governors approve through `POST /v1/requests/{id}/approvals`; the GETs show the
//! members and the log, read from a member's TEE and verified from the genesis.

use super::*;

/// Propose the first entry of a cluster's governance log: its governors (admin key
/// fingerprints), their quorum, and its first members, named by node (their device chains
/// come from the cluster's bridge, verified; admitted now). Records a `governance` request
/// (version 0) that the named governors approve. Refused with `already_governed` once the
/// cluster has a log.
#[utoipa::path(
    post, path = "/v1/clusters/{name}/genesis", tag = "governance", security(("bearer" = ["administer"])),
    params(("name" = String, Path, description = "Cluster name", pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48)),
    request_body = GenesisBody,
    responses(
        (status = 202, description = "Recorded, waiting for the governors' approvals", body = RequestView),
        (status = 400, description = "malformed_json, invalid_fingerprint, invalid_quorum, invalid_governance, invalid_chain, invalid_expiry, invalid_request_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "already_governed, request_exists", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
pub(super) async fn propose_genesis(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<GenesisBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    Ok(created(cloud.propose_genesis(&caller, &name, body).await?))
}

/// Propose admitting a node: its device chain (PEM; needed unless the bridge knows the node)
/// must verify as a device of this cluster named `node`. Records a `governance` request for
/// the next log version that the current governors approve.
#[utoipa::path(
    post, path = "/v1/clusters/{name}/members", tag = "governance", security(("bearer" = ["administer"])),
    params(("name" = String, Path, description = "Cluster name", pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48)),
    request_body = AdmitBody,
    responses(
        (status = 202, description = "Recorded, waiting for the governors' approvals", body = RequestView),
        (status = 400, description = "malformed_json, invalid_chain, invalid_governance, invalid_expiry, invalid_request_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "not_governed, request_exists", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
pub(super) async fn admit_member(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<AdmitBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    Ok(created(cloud.admit_member(&caller, &name, body).await?))
}

/// Have a member's TEE sign an admission ticket for a node that asks to join: the node's
/// chain (PEM) must verify as a device of this cluster named `node`; with the node's TPM
/// identity the ticket's nonce is sealed to that TPM. The node's own TEE answers the ticket
/// (`custos tee admission-evidence`) and the answer is the evidence of the admission
/// (`POST /v1/clusters/{name}/members`, `evidence_format` 1). Nothing is recorded.
#[utoipa::path(
    post, path = "/v1/clusters/{name}/members/tickets", tag = "governance", security(("bearer" = ["administer"])),
    params(("name" = String, Path, description = "Cluster name", pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48)),
    request_body = TicketBody,
    responses(
        (status = 200, description = "The signed ticket", body = AdmissionTicketView),
        (status = 400, description = "malformed_json, invalid_chain, invalid_governance (also a member TEE's refusal, e.g. tee_admission_refused: no measurement policy, a platform it does not admit, an endorsement certificate that does not chain to a pinned root)", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "not_governed", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
pub(super) async fn admission_ticket(
    State(cloud): Shared,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<TicketBody>,
) -> Result<Json<AdmissionTicketView>, ApiError> {
    Ok(Json(cloud.admission_ticket(&name, body).await?))
}

/// Propose removing a member. Records a `governance` request for the next log version that
/// the current governors approve.
#[utoipa::path(
    post, path = "/v1/clusters/{name}/members/{node}/remove", tag = "governance", security(("bearer" = ["administer"])),
    params(
        ("name" = String, Path, description = "Cluster name", pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48),
        ("node" = String, Path, description = "Member's node name", pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48),
    ),
    request_body = RemoveMemberBody,
    responses(
        (status = 202, description = "Recorded, waiting for the governors' approvals", body = RequestView),
        (status = 400, description = "malformed_json, invalid_governance, invalid_expiry, invalid_request_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster, unknown_member", body = ApiErrorBody),
        (status = 409, description = "not_governed, request_exists", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
pub(super) async fn remove_member(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path((name, node)): Path<(String, String)>,
    ApiJson(body): ApiJson<RemoveMemberBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    Ok(created(
        cloud.remove_member(&caller, &name, &node, body).await?,
    ))
}

/// Propose revoking admin keys and device keys (at least one). A revoked admin's approvals
/// are refused from then on (`admin_revoked`), a revoked member leaves the cluster. Records a
/// `governance` request for the next log version that the current governors approve.
#[utoipa::path(
    post, path = "/v1/clusters/{name}/revocations", tag = "governance", security(("bearer" = ["administer"])),
    params(("name" = String, Path, description = "Cluster name", pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48)),
    request_body = RevokeBody,
    responses(
        (status = 202, description = "Recorded, waiting for the governors' approvals", body = RequestView),
        (status = 400, description = "malformed_json, invalid_fingerprint, invalid_governance, invalid_expiry, invalid_request_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "not_governed, request_exists", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
pub(super) async fn revoke(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<RevokeBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    Ok(created(cloud.revoke(&caller, &name, body).await?))
}

/// Propose new governors and their quorum. Records a `governance` request for the next log
/// version that the current governors approve.
#[utoipa::path(
    post, path = "/v1/clusters/{name}/governors", tag = "governance", security(("bearer" = ["administer"])),
    params(("name" = String, Path, description = "Cluster name", pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48)),
    request_body = GovernorsBody,
    responses(
        (status = 202, description = "Recorded, waiting for the governors' approvals", body = RequestView),
        (status = 400, description = "malformed_json, invalid_fingerprint, invalid_quorum, invalid_governance, invalid_expiry, invalid_request_id", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "not_governed, request_exists", body = ApiErrorBody),
        (status = 413, description = "body_too_large", body = ApiErrorBody),
        (status = 415, description = "unsupported_media_type", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
pub(super) async fn set_governors(
    State(cloud): Shared,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<GovernorsBody>,
) -> Result<(StatusCode, Json<RequestView>), ApiError> {
    Ok(created(cloud.set_governors(&caller, &name, body).await?))
}

/// The cluster's governors, members (with whether the bridge serves them and when their
/// device certificates expire, where it knows) and revoked keys, from its log as a member's
/// TEE signed it, verified from the genesis by this server.
#[utoipa::path(
    get, path = "/v1/clusters/{name}/members", tag = "governance", security(("bearer" = ["read"])),
    params(("name" = String, Path, description = "Cluster name", pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48)),
    responses(
        (status = 200, body = MembersView),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "not_governed", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
pub(super) async fn list_members(
    State(cloud): Shared,
    Path(name): Path<String>,
) -> Result<Json<MembersView>, ApiError> {
    Ok(Json(cloud.members(&name).await?))
}

/// A page of the cluster's governance log from version `since` on (at most 256 entries),
/// verified from the genesis by this server.
#[utoipa::path(
    get, path = "/v1/clusters/{name}/governance", tag = "governance", security(("bearer" = ["read"])),
    params(
        ("name" = String, Path, description = "Cluster name", pattern = "^[a-z0-9_-][a-z0-9._-]{0,47}$", max_length = 48),
        GovernanceQuery,
    ),
    responses(
        (status = 200, body = GovernanceLogView),
        (status = 400, description = "invalid_query", body = ApiErrorBody),
        (status = 401, description = "unauthorized", body = ApiErrorBody),
        (status = 404, description = "unknown_cluster", body = ApiErrorBody),
        (status = 409, description = "not_governed", body = ApiErrorBody),
        (status = 502, description = "relay_rejected, bridge_refused, unverified_response", body = ApiErrorBody),
        (status = 503, description = "replica_unavailable (nothing done: call another address), cluster_unavailable", body = ApiErrorBody),
    )
)]
pub(super) async fn governance_log(
    State(cloud): Shared,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<GovernanceQuery>,
) -> Result<Json<GovernanceLogView>, ApiError> {
    Ok(Json(cloud.governance_log(&name, &q).await?))
}

/// The governance routes with their documentation.
pub(super) fn routes() -> OpenApiRouter<Arc<Cloud>> {
    OpenApiRouter::new()
        .routes(routes!(propose_genesis))
        .routes(routes!(admit_member, list_members))
        .routes(routes!(admission_ticket))
        .routes(routes!(remove_member))
        .routes(routes!(revoke))
        .routes(routes!(set_governors))
        .routes(routes!(governance_log))
}
