//! End-to-end tests of the RSA and ECDSA P-256 algorithms (signed and
//! verified with `ring` inside the sidecar) against another implementation:
//! Python's `http-message-signatures` on `cryptography` signs requests the
//! real `meshgate` binary verifies, and verifies responses it signs. Keys are
//! generated per run in every format the config accepts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meshgate_test_harness::{
    assert_error, hmac_args, py_sign, py_verify_response, send_request, EchoApp, ResponseKey,
    Sidecar,
};

const ALL: &str = "@method,@authority,@path,@query,content-digest";

/// Writes a fresh key pair with Python's `cryptography`: `kind` is `rsa` or
/// `ec`; `private` is `pkcs8` or `traditional` (PKCS#1 / SEC1); `public` is
/// `spki` or `pkcs1`. Returns (private file, public file).
fn gen_key(
    dir: &Path,
    name: &str,
    kind: &str,
    bits: u32,
    private: &str,
    public: &str,
) -> (PathBuf, PathBuf) {
    const SCRIPT: &str = r#"
import sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric import ec, rsa
kind, bits, private, public, out_private, out_public = sys.argv[1:]
key = rsa.generate_private_key(public_exponent=65537, key_size=int(bits)) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
priv_format = s.PrivateFormat.PKCS8 if private == "pkcs8" else s.PrivateFormat.TraditionalOpenSSL
pub_format = s.PublicFormat.SubjectPublicKeyInfo if public == "spki" else s.PublicFormat.PKCS1
open(out_private, "wb").write(key.private_bytes(s.Encoding.PEM, priv_format, s.NoEncryption()))
open(out_public, "wb").write(key.public_key().public_bytes(s.Encoding.PEM, pub_format))
"#;
    let private_file = dir.join(format!("{name}.key.pem"));
    let public_file = dir.join(format!("{name}.pub.pem"));
    let out = Command::new("python3")
        .args(["-c", SCRIPT, kind, &bits.to_string(), private, public])
        .arg(&private_file)
        .arg(&public_file)
        .output()
        .expect("python3 cryptography");
    assert!(
        out.status.success(),
        "key generation failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (private_file, public_file)
}

fn config(app: &str, keys: &str, extra: &str) -> String {
    format!(
        r#"
inbound: {{ listen: "${{INBOUND}}" }}
app: {{ address: "{app}" }}
admin: {{ listen: "${{ADMIN}}" }}
routes:
  - name: api
    match: {{ path_prefix: / }}
    filters: [verify]
filters:
  verify:
    type: signature
    keys: {keys}
    required_components: ["@method", "@authority", "@path", "@query", "content-digest"]
{extra}
"#
    )
}

#[test]
fn rsa_and_ecdsa_requests_signed_in_python_are_verified_by_the_sidecar() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (rsa_a_private, rsa_a_public) = gen_key(d, "rsa-a", "rsa", 2048, "pkcs8", "spki");
    let (rsa_b_private, rsa_b_public) = gen_key(d, "rsa-b", "rsa", 3072, "traditional", "pkcs1");
    let (ec_private, ec_public) = gen_key(d, "ec", "ec", 256, "pkcs8", "spki");
    let keys = format!(
        r#"[{{ id: rsa-v15, alg: rsa-v1_5-sha256, public_key_file: "{}" }}, {{ id: rsa-pss, alg: rsa-pss-sha512, public_key_file: "{}" }}, {{ id: ec, alg: ecdsa-p256-sha256, public_key_file: "{}" }}, {{ id: rsa-pss-2, alg: rsa-pss-sha512, public_key_file: "{}" }}]"#,
        rsa_a_public.display(),
        rsa_b_public.display(),
        ec_public.display(),
        rsa_a_public.display(),
    );
    let app = EchoApp::start();
    let sidecar = Sidecar::start(&config(&app.addr(), &keys, ""));
    let url = sidecar.url("/pay?order=42");
    let body = r#"{"amount":100}"#;
    for (key_id, alg, private) in [
        ("rsa-v15", "rsa-v1_5-sha256", &rsa_a_private),
        ("rsa-pss", "rsa-pss-sha512", &rsa_b_private),
        ("rsa-pss-2", "rsa-pss-sha512", &rsa_a_private),
        ("ec", "ecdsa-p256-sha256", &ec_private),
    ] {
        let private = private.display().to_string();
        let args = [
            "--key-id",
            key_id,
            "--alg",
            alg,
            "--private-key-file",
            &private,
            "--components",
            ALL,
        ];
        let headers = py_sign("POST", &url, Some(body), &args);
        let rsp = send_request("POST", &url, &headers, body);
        assert_eq!(rsp.status, 200, "{alg}: {}", rsp.text());
        let echo = rsp.json();
        assert_eq!(echo["headers"]["x-meshgate-client-id"], key_id);
        // the same signature on another path does not verify
        let headers = py_sign("POST", &url, Some(body), &args);
        let rsp = send_request("POST", &sidecar.url("/refund?order=42"), &headers, body);
        assert_eq!(
            (rsp.status, rsp.error().as_str()),
            (401, "signature_invalid"),
            "{alg}"
        );
        assert_error(&rsp, 401, "signature_invalid");
    }
    // a PSS signature under the v1.5 key's id: the key fixes the algorithm
    let private = rsa_a_private.display().to_string();
    let headers = py_sign(
        "POST",
        &url,
        Some(body),
        &[
            "--key-id",
            "rsa-v15",
            "--alg",
            "rsa-pss-sha512",
            "--private-key-file",
            &private,
            "--components",
            ALL,
        ],
    );
    let rsp = send_request("POST", &url, &headers, body);
    assert_eq!(rsp.status, 401, "{}", rsp.text());
}

#[test]
fn responses_signed_with_rsa_and_ecdsa_verify_in_python() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let secret = "c2VjcmV0LWZvci10ZXN0cy1vbmx5LTMyLWJ5dGVzISE=";
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("../filters/src/signature/testdata");
    let (pss_private, pss_public) = gen_key(d, "pss", "rsa", 2048, "pkcs8", "spki");
    let (ec_private, ec_public) = gen_key(d, "ec", "ec", 256, "traditional", "spki");
    // the 2048-bit PKCS#1 test key; its public half is derived by Python
    let v15_private = testdata.join("rsa-2048-private.pem");
    let v15_public = d.join("v15.pub.pem");
    let out = Command::new("python3")
        .args(["-c", "import sys; from cryptography.hazmat.primitives import serialization as s; k = s.load_pem_private_key(open(sys.argv[1], 'rb').read(), None); open(sys.argv[2], 'wb').write(k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))"])
        .arg(&v15_private)
        .arg(&v15_public)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let app = EchoApp::start();
    for (alg, private, public) in [
        ("rsa-pss-sha512", &pss_private, &pss_public),
        ("rsa-v1_5-sha256", &v15_private, &v15_public),
        ("ecdsa-p256-sha256", &ec_private, &ec_public),
    ] {
        let extra = format!(
            r#"    sign_response:
      key: {{ id: gw-1, alg: {alg}, private_key_file: "{}" }}
      components: ["@status", "content-digest"]
      bind_request: true
"#,
            private.display()
        );
        let keys = format!(r#"[{{ id: app-1, alg: hmac-sha256, secret_base64: "{secret}" }}]"#);
        let sidecar = Sidecar::start(&config(&app.addr(), &keys, &extra));
        let url = sidecar.url("/pay?order=1");
        let headers = py_sign("POST", &url, Some("x"), &hmac_args("app-1", secret, ALL));
        let rsp = send_request("POST", &url, &headers, "x");
        assert_eq!(rsp.status, 200, "{alg}: {}", rsp.text());
        let public_key_pem = std::fs::read_to_string(public).expect("public key");
        let key = ResponseKey {
            id: "gw-1",
            alg,
            public_key_pem: &public_key_pem,
        };
        if let Err(e) = py_verify_response("POST", &url, &headers, &rsp, &key) {
            panic!("{alg} response signature rejected: {e}");
        }
    }
}

#[test]
fn rsa_keys_under_2048_bits_are_refused_with_their_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, public) = gen_key(dir.path(), "weak", "rsa", 1024, "pkcs8", "spki");
    let app = EchoApp::start();
    let keys = format!(
        r#"[{{ id: weak, alg: rsa-v1_5-sha256, public_key_file: "{}" }}]"#,
        public.display()
    );
    let mut sidecar = Sidecar::spawn(&config(&app.addr(), &keys, ""), &[]);
    let status = sidecar
        .proc
        .wait_exit(Duration::from_secs(20))
        .expect("meshgate refuses the config");
    assert!(!status.success());
    let log = sidecar.proc.output();
    assert!(
        log.contains("filters.verify.keys[0].public_key_file") && log.contains("1024 bits"),
        "{log}"
    );
}
