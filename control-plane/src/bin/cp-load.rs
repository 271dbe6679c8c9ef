//! cp-load: opens many simulated sidecar streams against one control plane
//! and measures push-to-ACK latency and the control plane's memory.
//!
//! `cp-load --cp-bin target/release/meshgate-cp --streams 1000 --pushes 5`
//! starts its own control plane on free ports with a temporary data dir.

fn main() -> std::process::ExitCode {
    meshgate_control_plane::load::main()
}
