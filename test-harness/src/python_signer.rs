//! Requests signed by another implementation: the Python
//! `http-message-signatures` package, through `scripts/sign_request.py`
//! (installed by `scripts/install-test-deps.sh`).
//!
//! [`py_sign`] runs the script and returns the headers to add
//! (`signature`, `signature-input`, `content-digest` when covered);
//! [`hmac_args`] are the arguments for an HMAC-SHA256 key. Other keys,
//! `--nonce`, `--created`, `--header name:value` and `--label` are passed as
//! further arguments (see the script's docstring):
//!
//! ```no_run
//! use meshgate_test_harness::{hmac_args, py_sign, send_request};
//! let url = "http://127.0.0.1:15006/pay";
//! let mut args = hmac_args("app-1", "c2VjcmV0", "@method,@authority,@path").to_vec();
//! args.extend(["--nonce", "n-1"]);
//! let headers = py_sign("POST", url, Some("x"), &args);
//! let rsp = send_request("POST", url, &headers, "x");
//! ```

use std::process::Command;

use crate::scripts_dir;

/// Signs `method url` (with `body` when given) by running
/// `sign_request.py` with `args`; returns the headers it adds, as (name,
/// value) pairs. Fails the test when the script fails.
pub fn py_sign(
    method: &str,
    url: &str,
    body: Option<&str>,
    args: &[&str],
) -> Vec<(String, String)> {
    let mut cmd = Command::new("python3");
    cmd.arg(scripts_dir().join("sign_request.py"))
        .args(["--method", method, "--url", url]);
    if let Some(body) = body {
        cmd.args(["--body", body]);
    }
    let out = cmd.args(args).output().expect("python3 signer");
    assert!(
        out.status.success(),
        "signer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("signer json");
    v["headers"]
        .as_object()
        .expect("headers")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// `sign_request.py` arguments for the HMAC-SHA256 key `key_id` with the
/// base64 secret `secret_b64`, covering `components` (comma separated).
pub fn hmac_args<'a>(key_id: &'a str, secret_b64: &'a str, components: &'a str) -> [&'a str; 8] {
    [
        "--key-id",
        key_id,
        "--alg",
        "hmac-sha256",
        "--secret-b64",
        secret_b64,
        "--components",
        components,
    ]
}
