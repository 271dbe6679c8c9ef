//! The compatibility net of the config format.
//!
//! Every config users already have must keep validating, to the same
//! meaning: the examples in `docs/` and `examples/`, the configs the
//! end-to-end tests write (collected into `tests/compat/configs/`), and the
//! JSON the previous binary stored (control-plane history, the sidecar's
//! state dir, upgrade handovers). `tests/compat/expected/` holds what the
//! code before the typed specs made of each: the debug form of the validated
//! config and the JSON form of the spec. `UPDATE_COMPAT_FIXTURES=1` rewrites
//! them; only do that for a deliberate change of meaning.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use meshgate_filters::{FilterConfig, ValidateCx};
use meshgate_xds::config::{parse_json, parse_yaml, validate, Config, ConfigSpec};

fn dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/compat")
        .join(sub)
}

fn updating() -> bool {
    std::env::var_os("UPDATE_COMPAT_FIXTURES").is_some()
}

/// `(name, text)` of every `*.yaml` in `sub`, sorted by name.
fn yaml_files(sub: &str) -> Vec<(String, String)> {
    let mut files: Vec<_> = fs::read_dir(dir(sub))
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p.file_stem().expect("stem").to_string_lossy().into_owned();
            (name, fs::read_to_string(&p).expect("read fixture"))
        })
        .collect();
    files.sort();
    files
}

/// What a config means: everything validation produced except the spec it
/// was made from. Hash maps are shown sorted, so the text is stable.
fn meaning(c: &Config) -> String {
    let filters: Vec<String> = c
        .filters
        .iter()
        .map(|(name, filter)| match filter.clone() {
            FilterConfig::Signature(mut sig) => {
                let keys: BTreeMap<_, _> =
                    std::mem::take(&mut sig.policy.keys).into_iter().collect();
                format!("{name}: {sig:#?}\nkeys: {keys:#?}")
            }
            FilterConfig::RateLimit(mut limit) => {
                let overrides: Vec<BTreeMap<_, _>> = limit
                    .rules
                    .iter_mut()
                    .map(|r| std::mem::take(&mut r.overrides).into_iter().collect())
                    .collect();
                format!("{name}: {limit:#?}\noverrides: {overrides:#?}")
            }
            other => format!("{name}: {other:#?}"),
        })
        .collect();
    format!(
        "{:#?}\n{}\n",
        (
            &c.version,
            &c.inbound,
            &c.app,
            &c.admin_listen,
            &c.health_listen,
            c.redis.as_ref().map(redis_meaning),
            &c.routes,
            &c.error_codes,
            &c.egress
        ),
        filters.join("\n")
    )
}

/// The single-server form as the code before Cluster and Sentinel showed it
/// (`RedisConfig { url, timeout }`), when it means just that: no separate
/// credentials, no replica wait. Anything else is shown in full, so a
/// fixture written before could never match it.
fn redis_meaning(r: &meshgate_filters::store::RedisOptions) -> Box<dyn std::fmt::Debug + '_> {
    use meshgate_filters::store::RedisTarget;
    #[derive(Debug)]
    #[allow(dead_code)] // read through Debug only
    struct RedisConfig<'a> {
        url: &'a str,
        timeout: std::time::Duration,
    }
    match &r.target {
        RedisTarget::Single { url }
            if r.username.is_none() && r.password.is_none() && r.nonce_wait.replicas == 0 =>
        {
            Box::new(RedisConfig {
                url,
                timeout: r.timeout,
            })
        }
        _ => Box::new(r),
    }
}

/// The docs write key material as `...`; real keys of the same kinds.
fn without_placeholders(yaml: &str) -> String {
    yaml.replace(
        "secret_base64: \"...\"",
        "secret_base64: \"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0\"",
    )
    .replace(
        "public_key_pem: \"-----BEGIN PUBLIC KEY-----...\"",
        "public_key_pem: \"-----BEGIN PUBLIC KEY-----\\nMCowBQYDK2VwAyEAl4djQfwGtoNjyjDusT+/nKDuCQCprKM3xfbm42Hlok8=\\n-----END PUBLIC KEY-----\\n\"",
    )
}

fn validated(spec: &ConfigSpec, what: &str) -> Config {
    validate(spec, &ValidateCx::control_plane())
        .unwrap_or_else(|e| panic!("{what} no longer validates: {e}"))
}

fn expected(name: &str, ext: &str, now: &str) -> String {
    let path = dir("expected").join(format!("{name}.{ext}"));
    if updating() {
        fs::create_dir_all(dir("expected")).expect("mkdir");
        fs::write(&path, now).expect("write fixture");
    }
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_known_config_keeps_its_meaning() {
    let cases = yaml_files("configs");
    assert!(cases.len() >= 25, "fixtures missing: {}", cases.len());
    for (name, yaml) in cases {
        if updating() {
            if let Err(e) = parse_yaml(&yaml)
                .and_then(|spec| validate(&spec, &ValidateCx::control_plane()).map(|_| ()))
            {
                println!("SKIP {name}: {e}");
                continue;
            }
        }
        let spec = parse_yaml(&yaml).unwrap_or_else(|e| panic!("{name} no longer parses: {e}"));
        let config = validated(&spec, &name);
        let now = meaning(&config);
        assert_eq!(
            now,
            expected(&name, "meaning", &now),
            "{name}: meaning changed"
        );

        // The JSON the previous binary stored and pushed reads the same...
        let wire = serde_json::to_string_pretty(&spec).expect("json");
        let stored = expected(&name, "json", &wire);
        let from_stored = parse_json(&stored)
            .unwrap_or_else(|e| panic!("{name}: stored JSON no longer parses: {e}"));
        assert_eq!(
            meaning(&validated(&from_stored, &name)),
            now,
            "{name}: stored JSON means something else"
        );
        // ...and what this binary pushes is what the previous one reads.
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&wire).expect("json"),
            serde_json::from_str::<serde_json::Value>(&stored).expect("json"),
            "{name}: the JSON form changed"
        );
    }
}

/// Records that wrap a spec, in the shapes the previous binary wrote them:
/// `services/<svc>/history.jsonl` lines, the state dir's
/// `xds-last-applied.json` and the upgrade handover's `offer` message.
#[test]
fn stored_records_of_the_previous_binary_still_parse() {
    let samples = [
        "handwritten-filters",
        "docs-session-9ab931d3",
        "docs-signature-ecc46f45",
    ];
    let spec_of = |name: &str| {
        let yaml = fs::read_to_string(dir("configs").join(format!("{name}.yaml"))).expect("yaml");
        parse_yaml(&yaml).expect("spec")
    };
    if updating() {
        // The field sets of control-plane `VersionRecord`, the sidecar's
        // `SavedConfig` and the handover `Message::Offer`, serialized the way
        // they are (a struct, not a `serde_json::Value`, which sorts keys).
        #[derive(serde::Serialize)]
        struct Record {
            version: String,
            number: usize,
            created_at: usize,
            action: &'static str,
            spec: ConfigSpec,
        }
        #[derive(serde::Serialize)]
        struct Saved {
            url: &'static str,
            service: &'static str,
            version: &'static str,
            spec: ConfigSpec,
        }
        #[derive(serde::Serialize)]
        struct Offer {
            r#type: &'static str,
            protocol: u32,
            pid: u32,
            listeners: serde_json::Value,
            config: ConfigSpec,
        }
        let mut history = String::new();
        for (i, name) in samples.iter().enumerate() {
            let record = Record {
                version: format!("v{}", i + 1),
                number: i + 1,
                created_at: 1_764_633_600 + i,
                action: "push",
                spec: spec_of(name),
            };
            history.push_str(&serde_json::to_string(&record).expect("json"));
            history.push('\n');
        }
        fs::write(dir("expected").join("history.jsonl"), history).expect("write");
        let saved = Saved {
            url: "https://cp.example:15010",
            service: "orders",
            version: "v3",
            spec: spec_of(samples[0]),
        };
        fs::write(
            dir("expected").join("xds-last-applied.json"),
            serde_json::to_vec(&saved).expect("json"),
        )
        .expect("write");
        let offer = Offer {
            r#type: "offer",
            protocol: 1,
            pid: 4242,
            listeners: serde_json::json!([{ "name": "inbound", "addr": "127.0.0.1:15006" }]),
            config: spec_of(samples[0]),
        };
        fs::write(
            dir("expected").join("handover-offer.json"),
            serde_json::to_vec(&offer).expect("json"),
        )
        .expect("write");
    }
    // Read as the other crates read them: straight into typed records (a
    // detour through `serde_json::Value` would reorder maps).
    #[derive(serde::Deserialize)]
    struct WithSpec {
        #[serde(alias = "config")]
        spec: ConfigSpec,
    }
    let check = |text: &str, name: &str| {
        let record: WithSpec = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let now = meaning(&validated(&record.spec, name));
        let recorded =
            fs::read_to_string(dir("expected").join(format!("{name}.meaning"))).expect("meaning");
        assert_eq!(now, recorded, "{name}: stored record means something else");
    };
    let history = fs::read_to_string(dir("expected").join("history.jsonl")).expect("history");
    let lines: Vec<_> = history.lines().collect();
    assert_eq!(lines.len(), samples.len());
    for (line, name) in lines.iter().zip(samples) {
        check(line, name);
    }
    let saved = fs::read_to_string(dir("expected").join("xds-last-applied.json")).expect("state");
    check(&saved, samples[0]);
    let offer = fs::read_to_string(dir("expected").join("handover-offer.json")).expect("offer");
    check(&offer, samples[0]);
}

/// A bad config stays a NACK naming a field the previous binary named.
#[test]
fn invalid_configs_are_refused_at_their_fields() {
    let cases = yaml_files("invalid");
    assert!(cases.len() >= 25);
    for (name, yaml) in cases {
        let errors = match parse_yaml(&yaml) {
            Ok(spec) => match validate(&spec, &ValidateCx::control_plane()) {
                Ok(_) => panic!("{name} validates"),
                Err(e) => e,
            },
            Err(e) => e,
        };
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        let now = paths.join("\n") + "\n";
        let before = expected(&format!("invalid-{name}"), "paths", &now);
        let before: Vec<&str> = before.lines().collect();
        // The same fields, or fields below them (an error the previous
        // binary could only place at the filter).
        let named_before = |p: &str| {
            before.iter().any(|b| {
                p == *b
                    || p.strip_prefix(b)
                        .is_some_and(|rest| rest.starts_with(['.', '[']))
            })
        };
        assert!(
            !paths.is_empty() && paths.iter().all(|p| named_before(p)),
            "{name}: refused at {paths:?}, before at {before:?} ({errors})"
        );
    }
}

/// The YAML blocks of the docs that are configs, as the docs are now.
#[test]
fn docs_and_examples_validate() {
    const TOP: &[&str] = &[
        "version",
        "inbound",
        "app",
        "admin",
        "redis",
        "routes",
        "filters",
        "error_codes",
        "egress",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut configs = Vec::new();
    for entry in fs::read_dir(root.join("docs")).expect("docs") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = fs::read_to_string(&path).expect("doc");
        for (i, block) in text.split("```yaml\n").skip(1).enumerate() {
            let block = block.split("```").next().unwrap_or_default();
            configs.push((format!("{} block {i}", path.display()), block.to_string()));
        }
    }
    for entry in fs::read_dir(root.join("examples")).expect("examples") {
        let path = entry.expect("entry").path();
        configs.push((
            path.display().to_string(),
            fs::read_to_string(&path).expect("example"),
        ));
    }
    let mut checked = 0;
    for (name, yaml) in configs {
        let value: serde_yaml::Value =
            serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{name}: {e}"));
        let is_config = value.as_mapping().is_some_and(|m| {
            m.keys()
                .all(|k| k.as_str().is_some_and(|k| TOP.contains(&k)))
        });
        if !is_config {
            continue;
        }
        // Examples that use `scope: global` or `store: redis` stand alone
        // only with a `redis:` section.
        let yaml = if value.get("redis").is_none() {
            format!("redis: {{ url: \"redis://127.0.0.1:6379/\" }}\n{yaml}")
        } else {
            yaml
        };
        let spec =
            parse_yaml(&without_placeholders(&yaml)).unwrap_or_else(|e| panic!("{name}: {e}"));
        validated(&spec, &name);
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} configs in the docs");
}
