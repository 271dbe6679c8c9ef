//! `scripts/session_app.py`, the app of the session tests: it logs users in
//! and out through the session filter's instruction headers.

use std::process::Command;
use std::time::Duration;

use crate::{free_port, port_open, scripts_dir, wait_until, Proc};

/// The session app on a free port; stopped when dropped.
pub struct SessionApp {
    _proc: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl SessionApp {
    pub fn start() -> SessionApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut cmd = Command::new("python3");
        cmd.arg(scripts_dir().join("session_app.py"))
            .arg(port.to_string());
        let proc = Proc::spawn("session-app", &mut cmd, dir.path().join("app.log"));
        assert!(
            wait_until(Duration::from_secs(10), || port_open(port)),
            "session app did not start"
        );
        SessionApp {
            _proc: proc,
            port,
            _dir: dir,
        }
    }
}
