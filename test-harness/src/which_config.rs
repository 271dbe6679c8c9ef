//! The configs of the control-plane failover and HA tests: a `/which` route
//! answering a label, so a test sees which version a sidecar serves, and an
//! app route behind it.

/// The sidecar's bootstrap file: `/which` answers `bootstrap`.
pub fn bootstrap(app: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
admin: {{ listen: "${{ADMIN}}" }}
app: {{ address: "{app}" }}
routes:
  - name: which
    match: {{ path: /which }}
    respond: {{ status: 200, body: bootstrap }}
  - name: app
    match: {{ path_prefix: / }}
"#
    )
}

/// A pushed version: `/which` answers `label`.
pub fn pushed(label: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "0.0.0.0:15006" }}
routes:
  - name: which
    match: {{ path: /which }}
    respond: {{ status: 200, body: {label} }}
  - name: app
    match: {{ path_prefix: / }}
"#
    )
}
