//! The `kreach.v1` gRPC API between agents, the coordinator and `kreachctl`.
//!
//! The schema lives in `proto/kreach/v1/kreach.proto`. Generated code and the services arrive with the
//! control plane; until then this crate only carries the schema so that the wire contract is reviewed
//! alongside the domain it mirrors.

/// The API's package name, as it appears on the wire.
pub const API_PACKAGE: &str = "kreach.v1";
