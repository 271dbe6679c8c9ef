//! meshctl: the admin CLI of the meshgate control plane.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Manage meshgate configs through the control plane"
)]
struct Cli {
    /// Admin API of the control plane.
    #[arg(
        long,
        env = "MESHCTL_SERVER",
        default_value = "http://127.0.0.1:18001",
        global = true
    )]
    server: String,
    /// Bearer token of the admin API (visible in `ps`: prefer --token-file
    /// or the environment).
    #[arg(
        long,
        env = "MESHCTL_TOKEN",
        hide_env_values = true,
        global = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// File holding the admin bearer token.
    #[arg(long, env = "MESHCTL_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Print the raw JSON answers instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Push a config file (YAML or JSON) as a new version of a service.
    Push {
        file: PathBuf,
        #[arg(long, short)]
        service: String,
        /// Gray release to this percentage of the service's sidecars (e.g. 10%).
        #[arg(long, conflicts_with = "labels")]
        canary: Option<String>,
        /// Gray release to sidecars with these labels (k=v[,k=v]).
        #[arg(long)]
        labels: Option<String>,
    },
    /// Make the canary version the stable version for all sidecars.
    Promote {
        #[arg(long, short)]
        service: String,
    },
    /// Stop the canary; its sidecars return to the stable version.
    Abort {
        #[arg(long, short)]
        service: String,
    },
    /// Restore an earlier version (as a new version) on all sidecars.
    Rollback {
        #[arg(long, short)]
        service: String,
        #[arg(long)]
        to: String,
    },
    /// List the versions of a service.
    History {
        #[arg(long, short)]
        service: String,
    },
    /// Show one version (secrets redacted).
    Show {
        #[arg(long, short)]
        service: String,
        version: String,
    },
    /// Unified diff of two versions.
    Diff {
        #[arg(long, short)]
        service: String,
        from: String,
        to: String,
    },
    /// Connected sidecars with their versions, ACKs and NACKs.
    Status {
        #[arg(long, short)]
        service: Option<String>,
    },
    /// List services.
    Services,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

struct Api {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    server: String,
    token: Option<String>,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &str)>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let url = format!("{}{}", self.server.trim_end_matches('/'), path);
        let mut builder = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some((bytes, content_type)) => builder
                .header(header::CONTENT_TYPE, content_type)
                .body(Full::new(bytes)),
            None => builder.body(Full::new(Bytes::new())),
        }
        .context("building request")?;
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            self.client.request(request),
        )
        .await
        .context("control plane did not answer in 30s")?
        .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading answer")?
            .to_bytes();
        Ok((status, body))
    }

    /// Calls and decodes JSON; an error status becomes an error with the server's message.
    async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &str)>,
    ) -> anyhow::Result<Value> {
        let (status, bytes) = self.call(method, path, body).await?;
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if !status.is_success() {
            let mut message = value
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| value.to_string(), str::to_string);
            if let Some(fields) = value.get("fields").and_then(Value::as_array) {
                for f in fields {
                    message.push_str(&format!(
                        "\n  {}: {}",
                        f.get("path").and_then(Value::as_str).unwrap_or("?"),
                        f.get("message").and_then(Value::as_str).unwrap_or("?")
                    ));
                }
            }
            anyhow::bail!("{status}: {message}");
        }
        Ok(value)
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let api = Api {
        client: Client::builder(TokioExecutor::new()).build_http(),
        server: cli.server.clone(),
        token,
    };
    let print_json =
        |v: &Value| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match cli.command {
        Command::Push {
            file,
            service,
            canary,
            labels,
        } => {
            let text =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let is_json = file.extension().is_some_and(|e| e == "json");
            let content_type = if is_json {
                "application/json"
            } else {
                "application/yaml"
            };
            let mut path = format!("/v1/services/{}/config", enc(&service));
            if let Some(c) = canary {
                path += &format!("?canary={}", enc(&c));
            } else if let Some(l) = labels {
                path += &format!("?labels={}", enc(&l));
            }
            let v = api
                .json(Method::PUT, &path, Some((Bytes::from(text), content_type)))
                .await?;
            show_rollout(cli.json, "pushed", &v)
        }
        Command::Promote { service } => {
            let v = api
                .json(
                    Method::POST,
                    &format!("/v1/services/{}/promote", enc(&service)),
                    None,
                )
                .await?;
            show_rollout(cli.json, "promoted", &v)
        }
        Command::Abort { service } => {
            let v = api
                .json(
                    Method::POST,
                    &format!("/v1/services/{}/abort", enc(&service)),
                    None,
                )
                .await?;
            show_rollout(cli.json, "aborted canary", &v)
        }
        Command::Rollback { service, to } => {
            let v = api
                .json(
                    Method::POST,
                    &format!("/v1/services/{}/rollback?to={}", enc(&service), enc(&to)),
                    None,
                )
                .await?;
            if cli.json {
                print_json(&v)
            } else {
                print_rollout(&format!("rolled back to the content of {to}"), &v)
            }
        }
        Command::History { service } => {
            let v = api
                .json(
                    Method::GET,
                    &format!("/v1/services/{}/history", enc(&service)),
                    None,
                )
                .await?;
            if cli.json {
                print_json(&v);
            } else {
                let rows = v["versions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|r| {
                        vec![
                            text(&r["version"]),
                            format_time(&r["created_at"]),
                            text(&r["action"]),
                            text(&r["restored_from"]),
                            text(&r["live"]),
                        ]
                    })
                    .collect();
                print_table(
                    &["VERSION", "CREATED", "ACTION", "RESTORED FROM", "LIVE"],
                    rows,
                );
            }
        }
        Command::Show { service, version } => {
            let v = api
                .json(
                    Method::GET,
                    &format!("/v1/services/{}/versions/{}", enc(&service), enc(&version)),
                    None,
                )
                .await?;
            print_json(&v);
        }
        Command::Diff { service, from, to } => {
            let path = format!(
                "/v1/services/{}/diff?from={}&to={}",
                enc(&service),
                enc(&from),
                enc(&to)
            );
            let (status, body) = api.call(Method::GET, &path, None).await?;
            if !status.is_success() {
                anyhow::bail!("{status}: {}", String::from_utf8_lossy(&body));
            }
            print!("{}", String::from_utf8_lossy(&body));
        }
        Command::Status { service } => {
            let path = match &service {
                Some(s) => format!("/v1/status?service={}", enc(s)),
                None => "/v1/status".to_string(),
            };
            let v = api.json(Method::GET, &path, None).await?;
            if cli.json {
                print_json(&v);
            } else {
                let rows = v
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|s| {
                        let labels = s["labels"]
                            .as_object()
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default();
                        let nack = match &s["last_nack"] {
                            Value::Object(n) => {
                                format!("{}: {}", text(&n["version"]), text(&n["error"]))
                            }
                            _ => "-".into(),
                        };
                        vec![
                            text(&s["node_id"]),
                            text(&s["service"]),
                            labels,
                            text(&s["sidecar_version"]),
                            format_time(&s["connected_since"]),
                            text(&s["desired_version"]),
                            text(&s["track"]),
                            text(&s["last_acked_version"]),
                            nack,
                            format_time(&s["last_seen"]),
                            text(&s["replica"]),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "NODE",
                        "SERVICE",
                        "LABELS",
                        "SIDECAR",
                        "CONNECTED",
                        "DESIRED",
                        "TRACK",
                        "ACKED",
                        "LAST NACK",
                        "LAST SEEN",
                        "REPLICA",
                    ],
                    rows,
                );
            }
        }
        Command::Services => {
            let v = api.json(Method::GET, "/v1/services", None).await?;
            if cli.json {
                print_json(&v);
            } else {
                let rows = v
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|s| {
                        vec![
                            text(&s["service"]),
                            text(&s["versions"]),
                            text(&s["rollout"]["stable"]),
                            text(&s["rollout"]["canary"]["version"]),
                        ]
                    })
                    .collect();
                print_table(&["SERVICE", "VERSIONS", "STABLE", "CANARY"], rows);
            }
        }
    }
    Ok(())
}

/// Prints a rollout answer as JSON or as the one-line summary.
fn show_rollout(json: bool, what: &str, v: &Value) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        print_rollout(what, v)
    }
}

fn print_rollout(what: &str, v: &Value) {
    let service = text(&v["service"]);
    let version = text(&v["version"]);
    println!("{what}: service {service}, version {version}");
    println!("stable: {}", text(&v["rollout"]["stable"]));
    if let Value::Object(c) = &v["rollout"]["canary"] {
        let selector = match &c["selector"] {
            Value::Object(s) if s.contains_key("percent") => format!("{}%", text(&s["percent"])),
            Value::Object(s) => s
                .get("labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
            _ => String::new(),
        };
        println!("canary: {} to {selector}", text(&c["version"]));
        if let Some(nodes) = c.get("nodes").and_then(Value::as_array) {
            let nodes: Vec<String> = nodes.iter().map(text).collect();
            println!("canary nodes: {}", nodes.join(", "));
        }
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn format_time(v: &Value) -> String {
    v.as_u64()
        .map(|secs| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )
            .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}
