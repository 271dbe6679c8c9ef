//! The meshgate config model and the xDS protocol.
//!
//! - [`config`]: file/wire types, validation into the config the sidecar applies.
#![forbid(unsafe_code)]

pub mod config;
