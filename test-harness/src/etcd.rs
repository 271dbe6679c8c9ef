//! A real etcd cluster (Debian's `etcd-server`, v3 API) of N members on free
//! loopback ports, each with its own data dir; members can be killed and
//! started again on the same ports and data.

use std::process::Command;
use std::time::Duration;

use crate::{free_port, require_tool, wait_until, Proc};

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    proc: Option<Proc>,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
    initial_cluster: String,
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster answers a write.
    pub fn start(size: usize) -> EtcdCluster {
        require_tool("etcd", &["--version"], "etcd (Debian's etcd-server)");
        require_tool("etcdctl", &["version"], "etcdctl (Debian's etcd-client)");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                proc: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            dir: tempfile::tempdir().expect("etcd dir"),
            initial_cluster,
        };
        for i in 0..size {
            cluster.start_member(i);
        }
        cluster.wait_writable();
        cluster
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,...`, for `--store etcd://...`.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.endpoints())
    }

    /// Starts member `i` (again): same ports, same data dir.
    pub fn start_member(&mut self, i: usize) {
        let token = format!("meshgate-test-{}", self.members[0].peer_port);
        let member = &mut self.members[i];
        let data = self.dir.path().join(&member.name);
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &token])
            .args(["--initial-cluster-state", "new"])
            // Short timings: elections within a second on loopback.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"]);
        let log = self.dir.path().join(format!("{}.log", member.name));
        member.proc = Some(Proc::spawn("etcd", &mut cmd, log));
    }

    /// Kills member `i` (a crash).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill();
        }
    }

    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }

    pub fn start_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].proc.is_none() {
                self.start_member(i);
            }
        }
        self.wait_writable();
    }

    /// Runs etcdctl against the members that are up.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        let endpoints = self
            .members
            .iter()
            .filter(|m| m.proc.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",");
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &endpoints, "--command-timeout", "2s"])
            .args(args)
            .output()
            .expect("run etcdctl")
    }

    /// Waits until a write through etcdctl succeeds (a leader is elected).
    pub fn wait_writable(&self) {
        let ok = wait_until(Duration::from_secs(30), || {
            self.ctl(&["put", "meshgate-test/ready", "1"])
                .status
                .success()
        });
        assert!(ok, "etcd did not become writable:\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .filter_map(|m| m.proc.as_ref())
            .map(|p| {
                let out = p.output();
                let tail: Vec<&str> = out.lines().rev().take(20).collect();
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}
