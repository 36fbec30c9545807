//! Schemas of the cluster lists in request bodies, written out because the derive cannot
//! say "distinct names of at most 64 characters" (`uniqueItems`, item lengths).

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{Array, Object};

/// Longest cluster name accepted in a request (a configured cluster's name is shorter).
pub const MAX_CLUSTER_NAME: usize = 64;

/// Most clusters a threshold key spans (the TEE core's limit,
/// `custos_wire::threshold::MAX_THRESHOLD_PARTIES`).
pub const MAX_KEY_CLUSTERS: usize = 64;

fn cluster_name() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_CLUSTER_NAME))
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
        .max_items(Some(MAX_KEY_CLUSTERS))
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
        "The t clusters to make them with, each holding a share of the key \
         (`invalid_clusters` otherwise); default: the healthiest share holders.",
    )
}
