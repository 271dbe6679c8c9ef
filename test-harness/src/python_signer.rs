//! Requests signed by another implementation: the Python
//! `http-message-signatures` package, through `scripts/sign_request.py`
//! (installed by `scripts/install-test-deps.sh`).
//!
//! [`py_sign`] runs the script and returns the headers to add
//! (`signature`, `signature-input`, `content-digest` when covered);
//! [`hmac_args`] are the arguments for an HMAC-SHA256 key;
//! [`py_verify_response`] checks a signed response, with the request it
//! answers, through `scripts/verify_response.py`. Other keys,
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

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{scripts_dir, HttpResult};

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

/// The key a response is signed with, as [`py_verify_response`] needs it.
pub struct ResponseKey<'a> {
    pub id: &'a str,
    /// `ed25519`, `ecdsa-p256-sha256`, `rsa-pss-sha512` or `rsa-v1_5-sha256`.
    pub alg: &'a str,
    pub public_key_pem: &'a str,
}

/// Verifies the signature on `response`, the answer to `method url` sent
/// with `request_headers` (components bound with `;req` are checked against
/// them). `Err` holds what the verifier said when it refused.
pub fn py_verify_response(
    method: &str,
    url: &str,
    request_headers: &[(String, String)],
    response: &HttpResult,
    key: &ResponseKey,
) -> Result<(), String> {
    let response_headers: serde_json::Map<String, serde_json::Value> = response
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().into()))
        .collect();
    let spec = serde_json::json!({
        "request": {
            "method": method,
            "url": url,
            "headers": request_headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect::<serde_json::Map<_, _>>(),
        },
        "response": {
            "status": response.status,
            "headers": response_headers,
            "body": response.text(),
        },
        "key_id": key.id,
        "alg": key.alg,
        "public_key_pem": key.public_key_pem,
    });
    let mut child = Command::new("python3")
        .arg(scripts_dir().join("verify_response.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 verifier");
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(spec.to_string().as_bytes())
            .expect("write spec");
    }
    let out = child.wait_with_output().expect("verifier");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).to_string())
    }
}
