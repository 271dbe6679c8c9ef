//! A real `redis-server` for tests of the shared stores (global rate limits,
//! the Redis nonce store, Redis sessions).
//!
//! [`Redis::start`] runs one on a free port without persistence and fails
//! the test, naming the package, when `redis-server` is not installed;
//! [`Redis::stop`] and [`Redis::restart`] simulate a crash and a recovery on
//! the same port; [`Redis::cli`] runs `redis-cli` against it. The server is
//! killed when the value is dropped.

use std::process::Command;
use std::time::Duration;

use crate::{free_port, require_tool, wait_until, Proc};

/// A real `redis-server` on a free port, without persistence.
pub struct Redis {
    pub port: u16,
    proc: Option<Proc>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts redis-server; panics with a clear message when it is not installed.
    pub fn start() -> Redis {
        require_tool("redis-server", &["--version"], "redis-server");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut redis = Redis {
            port: free_port(),
            proc: None,
            dir,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (simulates a crash).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(self.dir.path());
        self.proc = Some(Proc::spawn(
            "redis-server",
            &mut cmd,
            self.dir.path().join("redis.log"),
        ));
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || self.cli(&["ping"]).trim()
                == "PONG"),
            "redis-server did not start on {port}"
        );
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        crate::redis_ha::cli(self.port, args)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
