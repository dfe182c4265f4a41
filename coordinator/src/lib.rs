//! The kreach coordinator: durable desired state, the rollout engine, and the gRPC services.

pub mod certs;
pub mod cli;
pub mod clusters;
pub mod config;
pub mod core;
pub mod ctl;
pub mod dry_run;
pub mod etcd_store;
pub mod follower;
pub mod groups;
pub mod grpc;
pub mod leader;
pub mod metrics;
pub mod migrate;
pub mod registry;
pub mod store;
pub mod tls_accept;
pub mod users;
pub mod views;
pub mod writer;

pub mod rollout;
