//! The HTTP API.

pub mod validate;
