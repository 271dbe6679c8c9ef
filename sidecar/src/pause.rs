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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn pause_is_a_subcommand_without_arguments() {
        let cli = Cli::try_parse_from(["meshgate", "pause"]).expect("parses");
        assert!(matches!(cli.command, Some(Command::Pause)));
        assert!(Cli::try_parse_from(["meshgate", "pause", "extra"]).is_err());
    }

    #[test]
    fn stop_signal_ends_the_wait() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let signal = runtime.block_on(async {
            // The handler is installed before the signal is sent, so the
            // process is not terminated by it.
            let wait = tokio::spawn(super::wait_for_stop_signal());
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let status = std::process::Command::new("kill")
                .args(["-INT", &std::process::id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
            tokio::time::timeout(std::time::Duration::from_secs(5), wait)
                .await
                .expect("woke up")
                .expect("task")
                .expect("signals")
        });
        assert_eq!(signal, "SIGINT");
    }
}
