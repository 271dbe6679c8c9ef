//! Helpers for end-to-end tests that spawn real processes on free ports.
#![forbid(unsafe_code)]

pub mod apps;
