//! `meshgate pause`: the process of a pod's pause container. It owns the
//! pod's network namespace (and the published ports) so that the app and the
//! sidecar containers, which join it, can each restart without tearing the
//! network down for the other. It does nothing but wait for SIGTERM or
//! SIGINT; as PID 1 of its container it must handle them itself, since the
//! kernel ignores default-action signals sent to a namespace's init.

use std::process::ExitCode;

/// Blocks until SIGTERM or SIGINT, then exits 0.
pub fn run() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("meshgate pause: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(wait_for_stop_signal()) {
        Ok(signal) => {
            eprintln!("meshgate pause: {signal}, exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshgate pause: cannot wait for signals: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_stop_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
