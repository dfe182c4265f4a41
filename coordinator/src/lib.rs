//! kreach coordinator library.
