//! The meshgate config model and the xDS protocol.
//!
//! - [`config`]: file/wire types, validation into the config the sidecar applies.
//! - [`pb`]: the xDS v3 ADS messages and service (field-compatible with the
//!   upstream xDS API) and meshgate's own `SidecarConfig` resource.
//! - [`resource`]: `SidecarConfig` <-> [`config::ConfigSpec`] conversion.
//! - [`ack`]: the client side of the ACK/NACK protocol, as a pure state machine.
//! - [`endpoints`]: the `--xds` list of control-plane replicas, checked and resolved.
//! - [`failover`]: which replica to try next and how long to wait (pure).
//! - [`client`]: the sidecar's xDS subscription loop (failover, backoff).
#![forbid(unsafe_code)]

pub mod ack;
pub mod client;
pub mod config;
pub mod endpoints;
pub mod failover;
pub mod pb;
pub mod resource;
