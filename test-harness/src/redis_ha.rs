//! Replicated Redis for end-to-end tests: a Redis Cluster (primaries with
//! one replica each) and a Sentinel group (a primary, a replica, three
//! sentinels), all real `redis-server` processes on free loopback ports,
//! killed when dropped.
//!
//! Failure detection is set short (cluster node timeout and sentinel
//! down-after 1 s) so a failover test stays within seconds.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::{free_port, require_tool, wait_until, Proc};

/// Node and sentinel failure detection time.
pub const DOWN_AFTER_MS: u64 = 1000;

/// One `redis-server` process of a group.
struct Node {
    port: u16,
    proc: Option<Proc>,
}

impl Node {
    fn spawn(dir: &std::path::Path, name: &str, port: u16, args: &[&str]) -> Node {
        let node_dir = dir.join(name);
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let mut cmd = Command::new("redis-server");
        cmd.args(args).current_dir(&node_dir);
        let proc = Proc::spawn(name, &mut cmd, node_dir.join("redis.log"));
        let node = Node {
            port,
            proc: Some(proc),
        };
        assert!(
            wait_until(Duration::from_secs(10), || cli(port, &["ping"]).trim()
                == "PONG"),
            "{name} did not start on {port}"
        );
        node
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// Runs `redis-cli -p port args` and returns its standard output.
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

fn data_node_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A Redis Cluster of `primaries` primaries with one replica each.
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start(primaries: usize) -> RedisCluster {
        require_tool("redis-server", &["--version"], "redis-server");
        require_tool("redis-cli", &["--version"], "redis-cli (redis-tools)");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        for i in 0..primaries * 2 {
            let port = free_port();
            let mut args = data_node_args(port);
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &DOWN_AFTER_MS.to_string(),
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            nodes.push(Node::spawn(
                dir.path(),
                &format!("cluster-{i}"),
                port,
                &args,
            ));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// `host:port` of every node, for `redis: { cluster: [...] }`.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.proc.is_some())
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    /// The YAML list of [`RedisCluster::addrs`].
    pub fn yaml_nodes(&self) -> String {
        let quoted: Vec<String> = self.addrs().iter().map(|a| format!("\"{a}\"")).collect();
        format!("[{}]", quoted.join(", "))
    }

    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.proc.is_some())
            .expect("a live node")
            .port
    }

    /// Every live node reports `cluster_state:ok` and every slot's primary
    /// has a replica attached.
    pub fn wait_healthy(&self, timeout: Duration) {
        let ok = wait_until(timeout, || {
            self.nodes
                .iter()
                .filter(|n| n.proc.is_some())
                .all(|n| cli(n.port, &["cluster", "info"]).contains("cluster_state:ok"))
                && self.nodes.iter().filter(|n| n.proc.is_some()).all(|n| {
                    let info = cli(n.port, &["info", "replication"]);
                    // a primary with its replica online, or a replica linked up
                    info.contains("connected_slaves:1") || info.contains("master_link_status:up")
                })
        });
        assert!(
            ok,
            "cluster not healthy:\n{}",
            cli(self.live_port(), &["cluster", "nodes"])
        );
    }

    /// The port of the primary serving `key`.
    pub fn primary_of(&self, key: &str) -> u16 {
        self.serving(key)
            .unwrap_or_else(|| panic!("no primary serves {key}"))
    }

    /// The port of the live primary serving `key`, if any (none while a
    /// failed primary's replica is not promoted yet).
    pub fn serving(&self, key: &str) -> Option<u16> {
        let slot: u16 = cli(self.live_port(), &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("keyslot");
        for line in cli(self.live_port(), &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            for range in &fields[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                    if (lo..=hi).contains(&slot) {
                        return fields[1].split(['@', ':']).nth(1)?.parse().ok();
                    }
                }
            }
        }
        None
    }

    /// Kills the node on `port` (SIGKILL: a crash, no handover).
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("node of that port");
        node.kill();
    }

    /// Waits until some other live node serves `key`'s slot as primary and
    /// the cluster is ok again; returns how long that took.
    pub fn wait_failover(&self, key: &str, old: u16, timeout: Duration) -> Duration {
        let started = Instant::now();
        let done = wait_until(timeout, || {
            self.nodes
                .iter()
                .filter(|n| n.proc.is_some())
                .all(|n| cli(n.port, &["cluster", "info"]).contains("cluster_state:ok"))
                && self.serving(key).is_some_and(|p| p != old)
        });
        assert!(
            done,
            "no failover within {timeout:?}:\n{}",
            cli(self.live_port(), &["cluster", "nodes"])
        );
        started.elapsed()
    }

    /// Runs a command in the cluster (`redis-cli -c`, following redirects).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        cli(self.live_port(), &all)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.iter_mut().for_each(Node::kill);
    }
}

/// The master name the sentinels monitor.
pub const SENTINEL_MASTER: &str = "meshgate";

/// A primary, one replica and three sentinels (quorum 2).
pub struct RedisSentinel {
    data: Vec<Node>,
    sentinels: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        require_tool("redis-server", &["--version"], "redis-server");
        require_tool("redis-cli", &["--version"], "redis-cli (redis-tools)");
        let dir = tempfile::tempdir().expect("tempdir");
        let primary_port = free_port();
        let primary = {
            let args = data_node_args(primary_port);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Node::spawn(dir.path(), "primary", primary_port, &args)
        };
        let replica_port = free_port();
        let replica = {
            let mut args = data_node_args(replica_port);
            args.extend(
                ["--replicaof", "127.0.0.1", &primary_port.to_string()]
                    .iter()
                    .map(|s| s.to_string()),
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Node::spawn(dir.path(), "replica", replica_port, &args)
        };
        assert!(
            wait_until(Duration::from_secs(15), || cli(
                replica_port,
                &["info", "replication"]
            )
            .contains("master_link_status:up")),
            "replica did not sync"
        );
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let name = format!("sentinel-{i}");
            let sdir = dir.path().join(&name);
            std::fs::create_dir_all(&sdir).expect("sentinel dir");
            let conf = sdir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
                ),
            )
            .expect("sentinel.conf");
            let conf = conf.to_string_lossy().to_string();
            sentinels.push(Node::spawn(dir.path(), &name, port, &[&conf, "--sentinel"]));
        }
        let group = RedisSentinel {
            data: vec![primary, replica],
            sentinels,
            _dir: dir,
        };
        // Every sentinel knows the replica and the two other sentinels.
        let ready = wait_until(Duration::from_secs(20), || {
            group.sentinels.iter().all(|s| {
                let master = cli(s.port, &["sentinel", "master", SENTINEL_MASTER]);
                let lines: Vec<&str> = master.lines().collect();
                let field = |name: &str| {
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .copied()
                        .unwrap_or("")
                        .to_string()
                };
                field("num-slaves") == "1" && field("num-other-sentinels") == "2"
            })
        });
        assert!(
            ready,
            "sentinels did not discover each other and the replica"
        );
        group
    }

    /// `host:port` of the sentinels, for `redis: { sentinel: { nodes } }`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect()
    }

    pub fn yaml_nodes(&self) -> String {
        let quoted: Vec<String> = self
            .sentinel_addrs()
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        format!("[{}]", quoted.join(", "))
    }

    /// The primary's port as the sentinels report it.
    pub fn primary_port(&self) -> u16 {
        for s in &self.sentinels {
            let out = cli(
                s.port,
                &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER],
            );
            if let Some(port) = out.lines().nth(1).and_then(|p| p.trim().parse().ok()) {
                return port;
            }
        }
        panic!("no sentinel names a primary");
    }

    /// Runs a command on the current primary.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.primary_port(), args)
    }

    /// Kills the current primary (SIGKILL); returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port();
        self.data
            .iter_mut()
            .find(|n| n.port == port)
            .expect("primary node")
            .kill();
        port
    }

    /// Waits until every sentinel names another primary and that primary
    /// accepts writes; returns how long that took.
    pub fn wait_failover(&self, old: u16, timeout: Duration) -> Duration {
        let started = Instant::now();
        let done = wait_until(timeout, || {
            self.sentinels.iter().all(|s| {
                let out = cli(
                    s.port,
                    &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER],
                );
                out.lines()
                    .nth(1)
                    .and_then(|p| p.trim().parse::<u16>().ok())
                    .is_some_and(|p| p != old)
            }) && cli(self.primary_port(), &["info", "replication"]).contains("role:master")
        });
        assert!(done, "no failover within {timeout:?}");
        started.elapsed()
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        self.sentinels.iter_mut().for_each(Node::kill);
        self.data.iter_mut().for_each(Node::kill);
    }
}
