//! The meshgate control plane: the xDS (ADS) server, the versioned config store and the admin API.
#![forbid(unsafe_code)]
