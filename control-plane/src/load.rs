//! The `cp-load` benchmark: simulated sidecar streams against a real control plane.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use meshgate_xds::ack::Subscription;
use meshgate_xds::pb::{AggregatedDiscoveryServiceClient, DiscoveryRequest, Node};
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(
    name = "cp-load",
    about = "push-to-ACK latency and memory of meshgate-cp under many streams"
)]
struct Args {
    /// The control plane binary; default: meshgate-cp next to this binary.
    #[arg(long)]
    cp_bin: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    #[arg(long, default_value_t = 5)]
    pushes: usize,
    #[arg(long, default_value = "load")]
    service: String,
    /// Run the control planes on this etcd (etcd://HOST:PORT,...) instead of
    /// a temporary data dir; its `meshgate/` keys are deleted first.
    #[arg(long)]
    store: Option<String>,
    /// Control-plane replicas (needs --store); streams are spread over them
    /// round-robin and pushes go through the first.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

type Acks = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

/// The xDS token of the simulated sidecars.
const XDS_TOKEN: &str = "cp-load-xds-token-0123456789";

struct Cp(Child);
impl Cp {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}
impl Drop for Cp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn http(method: &str, url: &str, body: &str) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", "Bearer load")
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))?;
    let response = client.request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let cp_bin = match args.cp_bin {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("meshgate-cp"),
    };
    let data_dir = std::env::temp_dir().join(format!("cp-load-{}", std::process::id()));
    let (grpc, admin) = (free_port()?, free_port()?);
    // The simulated sidecars authenticate like real ones: one token for the service.
    std::fs::create_dir_all(&data_dir)?;
    let tokens_file = data_dir.join("xds-tokens.json");
    std::fs::write(
        &tokens_file,
        serde_json::json!({ "tokens": [{ "token": XDS_TOKEN, "services": [args.service] }] })
            .to_string(),
    )?;
    anyhow::ensure!(args.replicas >= 1, "--replicas must be at least 1");
    anyhow::ensure!(
        args.replicas == 1 || args.store.is_some(),
        "several replicas need a shared --store etcd://..."
    );
    if let Some(url) = &args.store {
        clear_etcd(url).await?;
    }
    let mut cps = Vec::new();
    let mut grpc_urls = Vec::new();
    let mut admin_urls = Vec::new();
    for i in 0..args.replicas {
        let (grpc, admin) = if i == 0 {
            (grpc, admin)
        } else {
            (free_port()?, free_port()?)
        };
        let mut command = Command::new(&cp_bin);
        command.arg("serve");
        match &args.store {
            Some(url) => command.args(["--store", url]),
            None => command.arg("--data-dir").arg(&data_dir),
        };
        let child = command
            .arg("--xds-tokens")
            .arg(&tokens_file)
            .args([
                "--grpc",
                &format!("127.0.0.1:{grpc}"),
                "--admin",
                &format!("127.0.0.1:{admin}"),
                "--token",
                "load",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", cp_bin.display()))?;
        cps.push(Cp(child));
        grpc_urls.push(format!("http://127.0.0.1:{grpc}"));
        admin_urls.push(format!("http://127.0.0.1:{admin}"));
    }
    let admin_url = admin_urls[0].clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    for url in &admin_urls {
        while http("GET", &format!("{url}/healthz"), "").await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "control plane did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let rss = |cps: &[Cp]| -> Vec<u64> { cps.iter().map(|cp| rss_kib(cp.pid()).0).collect() };
    let rss_idle = rss(&cps);

    let acks: Acks = Arc::default();
    // Streams end with errors when the control plane is stopped at the end; not worth reporting then.
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let connect_started = Instant::now();
    for i in 0..args.streams {
        let acks = acks.clone();
        let url = grpc_urls[i % grpc_urls.len()].clone();
        let service = args.service.clone();
        let finished = finished.clone();
        tokio::spawn(async move {
            if let Err(e) = simulated_sidecar(url, format!("load-{i}"), service, acks).await {
                if !finished.load(std::sync::atomic::Ordering::Relaxed) {
                    eprintln!("stream {i}: {e:#}");
                }
            }
        });
    }
    // Wait until every stream is registered.
    let status_url = format!("{admin_url}/v1/status?service={}", args.service);
    loop {
        let (_, body) = http("GET", &status_url, "").await?;
        let n = serde_json::from_str::<serde_json::Value>(&body)?
            .as_array()
            .map_or(0, Vec::len);
        if n >= args.streams {
            break;
        }
        anyhow::ensure!(
            connect_started.elapsed() < Duration::from_secs(120),
            "only {n} streams connected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{} streams connected in {:?}",
        args.streams,
        connect_started.elapsed()
    );
    let rss_connected = rss(&cps);

    let mut latencies: Vec<Duration> = Vec::new();
    for push in 0..args.pushes {
        let body = format!(r#"{{"error_codes": {{"rate_limited": {}}}}}"#, 1000 + push);
        let started = Instant::now();
        let (status, answer) = http(
            "PUT",
            &format!("{admin_url}/v1/services/{}/config", args.service),
            &body,
        )
        .await?;
        anyhow::ensure!(status == 200, "push failed: {status} {answer}");
        let version = serde_json::from_str::<serde_json::Value>(&answer)?["version"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        loop {
            let done = acks
                .lock()
                .map(|m| m.get(&version).map_or(0, Vec::len))
                .unwrap_or(0);
            if done >= args.streams {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "push {version}: only {done} ACKs"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let times = acks
            .lock()
            .map(|m| m.get(&version).cloned().unwrap_or_default())
            .unwrap_or_default();
        let all = times
            .iter()
            .map(|t| t.saturating_duration_since(started))
            .max()
            .unwrap_or_default();
        println!("push {version}: all {} ACKed in {all:?}", args.streams);
        latencies.extend(times.iter().map(|t| t.saturating_duration_since(started)));
    }
    latencies.sort();
    let pct = |p: f64| {
        let idx = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(idx).copied().unwrap_or_default()
    };
    let rss_end = rss(&cps);
    let peaks: Vec<u64> = cps.iter().map(|cp| rss_kib(cp.pid()).1).collect();
    println!(
        "streams={} pushes={} replicas={} store={} push-to-ACK p50={:?} p99={:?} max={:?}",
        args.streams,
        args.pushes,
        args.replicas,
        args.store.as_deref().unwrap_or("file"),
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    for i in 0..cps.len() {
        println!(
            "replica {i} RSS: idle={} KiB, connected={} KiB, after pushes={} KiB, peak={} KiB",
            rss_idle[i], rss_connected[i], rss_end[i], peaks[i]
        );
    }
    finished.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(cps);
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

/// Deletes the benchmark's previous state from etcd, so versions start at v1.
async fn clear_etcd(url: &str) -> anyhow::Result<()> {
    let store = crate::store::etcd::EtcdStore::new(url)?;
    store.delete_all().await?;
    Ok(())
}

async fn simulated_sidecar(
    url: String,
    node_id: String,
    service: String,
    acks: Acks,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect()
        .await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let node = Node {
        id: node_id,
        cluster: service.clone(),
        ..Default::default()
    };
    let mut subscription = Subscription::new(node, service, None);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
    tx.send(subscription.initial_request()).await?;
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut request = tonic::Request::new(outbound);
    request.metadata_mut().insert(
        "authorization",
        tonic::metadata::AsciiMetadataValue::try_from(format!("Bearer {XDS_TOKEN}"))?,
    );
    let mut inbound = client
        .stream_aggregated_resources(request)
        .await?
        .into_inner();
    while let Some(response) = inbound.message().await? {
        let (request, _) =
            subscription.on_response(&response, |spec| Ok(spec.version.unwrap_or_default()));
        tx.send(request).await?;
        if let Ok(mut m) = acks.lock() {
            m.entry(response.version_info.clone())
                .or_default()
                .push(Instant::now());
        }
    }
    Ok(())
}
