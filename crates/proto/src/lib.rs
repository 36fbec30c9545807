//! Generated gRPC types and services of the Custos cluster protocol
//! (`proto/custos/cluster/v1/cluster.proto`).
#![allow(missing_docs, clippy::all)]

/// `custos.cluster.v1`.
pub mod cluster {
    tonic::include_proto!("custos.cluster.v1");
}
