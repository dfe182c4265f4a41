//! The `kreach.v1` gRPC API between agents, the coordinator and `kreachctl`.
//!
//! Owns the wire schema (`proto/kreach/v1/kreach.proto`) and its generated code, checked in under
//! `src/generated/` so that no build needs `protoc` (a test regenerates it and fails when stale).
//! Conversion to and from the domain ([`kreach_domain`]) is [`convert`], at the edge, in one place.

#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
mod generated {
    include!("generated/kreach.v1.rs");
}

pub use generated::*;

pub mod convert;
pub mod leader;

/// The API's package name, as it appears on the wire.
pub const API_PACKAGE: &str = "kreach.v1";

/// The largest message either side accepts (a NodeSpec for a big cluster is a few KiB).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
