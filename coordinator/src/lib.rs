//! kreach coordinator library.

pub mod rollout;
