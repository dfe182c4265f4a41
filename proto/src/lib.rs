//! The `kreach.v1` gRPC API between agents, the coordinator and `kreachctl`.
//!
//! Empty for now: the agent runs stand-alone (`kreach-agent apply-local`, `kreach-agent run`). The
//! schema, its generated code and the services arrive with the control plane. The wire name is
//! fixed here so that the domain types in `kreach-common` are shaped for it.

/// The API's package name, as it appears on the wire.
pub const API_PACKAGE: &str = "kreach.v1";
