//! Schemas of the cluster lists in request bodies, written out because the derive cannot
//! say "distinct names of at most 64 characters" (`uniqueItems`, item lengths).

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{Array, Object};

use custos_wire::policy::MAX_GROUP;
use custos_wire::threshold::MAX_THRESHOLD_PARTIES;

/// A cluster's name as the PKI allows it (`custos_pki::check_name`).
pub(crate) const CLUSTER_NAME_PATTERN: &str = "^[a-z0-9_-][a-z0-9._-]{0,47}$";

fn cluster_name() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(CLUSTER_NAME_PATTERN))
        .max_length(Some(48))
        .build()
}

fn clusters(min: usize, nullable: bool, description: &str) -> Array {
    let kind = if nullable {
        SchemaType::from_iter([Type::Array, Type::Null])
    } else {
        SchemaType::Type(Type::Array)
    };
    ArrayBuilder::new()
        .schema_type(kind)
        .items(cluster_name())
        .min_items(Some(min))
        .max_items(Some(MAX_THRESHOLD_PARTIES))
        .unique_items(true)
        .description(Some(description))
        .build()
}

/// `CreateThresholdKeyBody::clusters`.
pub(crate) fn key_clusters() -> Array {
    clusters(
        2,
        false,
        "The n clusters, in share order: cluster i holds share i (2 to 64, distinct, \
         configured).",
    )
}

/// `ThresholdSignBody::clusters`.
pub(crate) fn sign_clusters() -> Array {
    clusters(
        1,
        true,
        "Clusters to sign with, in order of preference: at least t of the key's clusters \
         (`invalid_clusters` otherwise); the first t reachable ones take part. Default: the \
         clusters holding an imported share, healthy ones first. Shown in the request view's \
         `target_node`, comma-separated.",
    )
}

/// `MakePresignaturesBody::clusters`.
pub(crate) fn presign_clusters() -> Array {
    clusters(
        1,
        true,
        "The clusters to make them with, in order of preference: at least t of the key's \
         clusters, each holding a share (`invalid_clusters` otherwise); the first t reachable \
         ones take part. Default: the healthiest share holders.",
    )
}

/// A set of admin key fingerprints (hex), at most `max`, as `description` says.
fn fingerprint_set(max: usize, description: &str) -> ArrayBuilder {
    ArrayBuilder::new()
        .schema_type(SchemaType::Type(Type::Array))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9a-fA-F]{64}$"))
                .max_length(Some(64))
                .build(),
        )
        .max_items(Some(max))
        .unique_items(true)
        .description(Some(description))
}

/// `CreateWalletBody::group` and `CreateThresholdKeyBody::group`: distinct admin key
/// fingerprints, hex.
pub(crate) fn approver_group() -> Array {
    fingerprint_set(
        MAX_GROUP,
        "The new key's approver group (a wallet's or a threshold key's): key fingerprints \
         (hex SHA-256 of the certified SubjectPublicKeyInfo) of 1 to 32 distinct admins. Only \
         they approve the creation and every use; `quorum` of them are needed.",
    )
    .min_items(Some(1))
    .build()
}

/// A tier's own group: as [`approver_group`], absent or empty for the key's group.
pub(crate) fn tier_group() -> Array {
    fingerprint_set(
        crate::rules::MAX_TIER_GROUP,
        "Another group than the key's (at most 4 admins, key fingerprints in hex), none of \
         its admins in the key's group: above the amount, `quorum` of them approve besides \
         the key's own quorum. Absent: the key's group.",
    )
    .build()
}
