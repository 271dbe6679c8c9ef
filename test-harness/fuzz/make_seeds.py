#!/usr/bin/env python3
"""Writes the seed corpora in seeds/ (run from anywhere; needs grpcio-tools
and PyYAML). The outputs are committed; rerun after changing the examples."""
import base64, hashlib, hmac, json, pathlib, re, subprocess, sys, tempfile

import yaml

here = pathlib.Path(__file__).resolve().parent
repo = here.parents[1]
root = here / "seeds"

# ---- RFC 9421 requests, Alipay parameters, JWTs
DIGEST = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"
def head(extra, method="POST", target="/foo?param=Value&Pet=dog"):
    lines = [f"{method} {target} HTTP/1.1", "Host: example.com", "Date: Tue, 20 Apr 2021 02:07:55 GMT",
             "Content-Type: application/json", f"Content-Digest: {DIGEST}", "Content-Length: 18"] + extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
vectors = {
 "rfc9421-b21-minimal": ('sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd"', "d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGxbtRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2VjBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q=="),
 "rfc9421-b22-selective": ('sig-b22=("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example"', "LjbtqUbfmvjj5C5kr1Ugj4PmLYvx9wVjZvD9GsTT4F7GrcQEdJzgI9qHxICagShLRiLMlAJjtq6N4CDfKtjvuJyE5qH7KT8UCMkSowOB4+ECxCmT8rtAmj/0PIXxi0A0nxKyB09RNrCQibbUjsLS/2YyFYXEu4TRJQzRw1rLEuEfY17SARYhpTlaqwZVtR8NV7+4UKkjqpcAoFqWFQh62s7Cl+H2fjBSpqfZUJcsIk4N6wiKYd4je2U/lankenQ99PZfB4jY3I5rSV2DSBVkSFsURIjYErOs0tFTQosMTAoxk//0RoKUqiYY8Bh0aaUEb0rQl3/XaVe4bXTugEjHSw=="),
 "rfc9421-b23-full": ('sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss"', "bbN8oArOxYoyylQQUU6QYwrTuaxLwjAC9fbY2F6SVWvh0yBiMIRGOnMYwZ/5MR6fb0Kh1rIRASVxFkeGt683+qRpRRU5p2voTp768ZrCUb38K0fUxN0O0iC59DzYx8DFll5GmydPxSmme9v6ULbMFkl+V5B1TP/yPViV7KsLNmvKiLJH1pFkh/aYA2HXXZzNBXmIkoQoLd7YfW91kE9o/CCoC1xMy7JA1ipwvKvfrs65ldmlu9bpG6A9BmzhuzF8Eim5f8ui9eH8LZH896+QIF61ka39VBrohr9iyMUJpvRX2Zbhl5ZJzSRxpJyoEZAFL2FUo5fTIztsDZKEgM4cUA=="),
 "rfc9421-b25-hmac": ('sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"', "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8="),
 "rfc9421-b26-ed25519": ('sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519"', "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="),
}
for target in ["signature_verify", "signature_base"]:
    d = root / target; d.mkdir(parents=True, exist_ok=True)
    for name, (inp, sig) in vectors.items():
        label = inp.split("=")[0]
        (d / name).write_bytes(head([f"Signature-Input: {inp}", f"Signature: {label}=:{sig}:"]))
    # A request as meshgate's defaults want it: nonce, the default components.
    (d / "defaults-with-nonce").write_bytes(head([
        'Signature-Input: sig1=("@method" "@authority" "@path" "@query" "content-digest");created=1618884473;expires=1618884773;nonce="n-1";keyid="test-shared-secret";alg="hmac-sha256"',
        "Signature: sig1=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:",
        'Signature-Input: other=("@target-uri" "@request-target" "@scheme");created=1618884473;keyid="unknown"',
        "Signature: other=:AAAA:"]))
    (d / "absolute-form-https").write_bytes(head([
        'Signature-Input: sig1=("@target-uri" "@authority" "@query-param";name="a b" "x-list";sf "x-dict";key="k" "x-bin";bs);created=1618884473;keyid="test-key-ed25519"',
        "Signature: sig1=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:",
        "X-List: a, (b c);p=1, ?0", "X-Dict: k=1;q, j, l=(1 2)", "X-Bin: \x01raw"],
        method="GET", target="https://Example.COM:443/a%20b/./c?a%20b=1&a+b=2&x=%zz"))
d = root / "signature_base"
(d / "response-with-req").write_bytes(head([
    'Signature-Input: rsp=("@status" "content-type" "@method";req "@authority";req "signature";req;key="sig1" "content-digest";req);created=1618884473;keyid="k"',
    "Signature: sig1=:AAAA:",
    "X-Component: @method", 'X-Component: "@query-param";name="Pet"', 'X-Component: "signature";req;key="sig1"', "X-Component: Content-Type",
    'X-Component: "x-dict";sf;bs', "X-Component: @status"]))

# Alipay: query line, then the form body.
d = root / "alipay_params"; d.mkdir(parents=True, exist_ok=True)
(d / "openapi-query-and-form").write_bytes(b"method=alipay.trade.pay&app_id=2014072300007148&sign_type=RSA2&charset=utf-8&version=1.0&sign=dGVzdA%3D%3D\nbiz_content=%7B%22out_trade_no%22%3A%2220150320010101001%22%2C%22total_amount%22%3A%2288.88%22%7D&timestamp=2021-04-20+10%3A07%3A53&notify_url=http%3A%2F%2Fapi.test.alipay.net%2Fatinterface%2Freceive_notify.htm")
(d / "notify").write_bytes(b"\nnotify_time=2021-04-20+10%3A07%3A53&notify_type=trade_status_sync&notify_id=ac05099524730693a8b330c5ecf72da9786&app_id=app&charset=utf-8&version=1.0&sign_type=RSA2&sign=QUFBQQ%3D%3D&trade_no=2013112011001004330000121536&out_trade_no=6823789339978248&trade_status=TRADE_SUCCESS&total_amount=20.00")
(d / "tricky").write_bytes("app_id=2014072300007148&sign=AAAA&sign=BBBB&a=b%3Dc%26d&empty=&%E4%B8%AD=%E6%96%87&timestamp=2014-07-24%2003:07:50\n+&=&==&a&&b=+%2B".encode())

# JWT: header JSON line, claims JSON; plus compact tokens signed with the fuzz secret.
SECRET = b"meshgate-fuzz-hs256-secret-32byt"
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def token(h, c):
    si = b64(json.dumps(h, separators=(",", ":")).encode()) + "." + b64(json.dumps(c, separators=(",", ":")).encode())
    return si + "." + b64(hmac.new(SECRET, si.encode(), hashlib.sha256).digest())
d = root / "jwt"; d.mkdir(parents=True, exist_ok=True)
claims = {"sub": "alice", "iss": "https://id.example.com", "aud": ["wallet"], "exp": 4102444800, "nbf": 1600000000, "iat": 1600000000, "tenant": "t1"}
(d / "pair-kid").write_text(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "fuzz"}) + "\n" + json.dumps(claims))
(d / "pair-nokid-expired").write_text(json.dumps({"alg": "HS256"}) + "\n" + json.dumps({"sub": 7, "exp": 1, "aud": "wallet", "tenant": None}))
(d / "pair-alg-none").write_text(json.dumps({"alg": "none", "kid": "fuzz", "crit": ["b64"], "b64": False}) + "\n" + json.dumps({"sub": "x", "sub ": "y", "exp": 1e309 if False else 9.5e18}))
(d / "pair-es256-confusion").write_text(json.dumps({"alg": "ES256", "kid": "fuzz", "jwk": {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}}) + "\n" + json.dumps(claims))
(d / "token-valid").write_text(token({"alg": "HS256", "typ": "JWT", "kid": "fuzz"}, claims))
(d / "token-wrong-aud").write_text(token({"alg": "HS256"}, dict(claims, aud="other", iss="evil")))
(d / "token-rs256-header").write_text(token({"alg": "RS256", "kid": "fuzz"}, claims))
(d / "jwks").write_text(json.dumps({"keys": [{"kty": "oct", "kid": "a", "alg": "HS256", "k": b64(SECRET)}, {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}, {"kty": "RSA", "alg": "RS256", "n": "AQAB", "e": "AQAB"}, {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}))

# ---- configs from the examples and docs, as YAML and as JSON
out = repo / "test-harness/fuzz/seeds/config_validate"; out.mkdir(parents=True, exist_ok=True)
docs = {"examples-quickstart": (repo / "examples/quickstart.yaml").read_text(),
        "docker-sidecar": (repo / "docker/config/sidecar.yaml").read_text()}
for md in sorted(list((repo / "docs").glob("*.md")) + [repo / "README.md"]):
    for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", md.read_text(), re.S)):
        docs[f"doc-{md.stem.lower()}-{i}"] = block
for name, text in docs.items():
    (out / f"{name}.yaml").write_text(text)
    try:
        data = yaml.safe_load(text)
    except Exception as e:
        print("not yaml", name, e); continue
    if isinstance(data, dict):
        (out / f"{name}.json").write_text(json.dumps(data, default=str))

# ---- the same configs as xDS messages
pb = tempfile.mkdtemp()
protos = ["meshgate/v1/sidecar_config.proto", "envoy/service/discovery/v3/discovery.proto",
          "envoy/config/core/v3/base.proto", "google/rpc/status.proto"]
subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(repo / "xds/proto"),
                f"--python_out={pb}", *protos], check=True)
sys.path.insert(0, pb)
from meshgate.v1 import sidecar_config_pb2 as sc  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2 as d  # noqa: E402
from google.protobuf import any_pb2  # noqa: E402
seeds = root
out = seeds / "xds_resource"; out.mkdir(parents=True, exist_ok=True)
TYPE = "type.googleapis.com/meshgate.v1.SidecarConfig"
for src in ["examples-quickstart", "docker-sidecar", "doc-signature-0", "doc-session-0", "doc-rate-limit-0"]:
    cfg = (seeds / "config_validate" / f"{src}.json").read_text()
    msg = sc.SidecarConfig(version="v7", service="wallet", config_json=cfg)
    (out / f"sidecar-config-{src}.bin").write_bytes(msg.SerializeToString())
    rsp = d.DiscoveryResponse(version_info="v7", type_url=TYPE, nonce="1",
                              resources=[any_pb2.Any(type_url=TYPE, value=msg.SerializeToString())])
    (out / f"discovery-response-{src}.bin").write_bytes(rsp.SerializeToString())
# An Any on its own, and a response carrying a resource of another type.
msg = sc.SidecarConfig(version="", service="s", config_json='{"inbound":{"listen":"127.0.0.1:1"}}')
(out / "any-minimal.bin").write_bytes(any_pb2.Any(type_url=TYPE, value=msg.SerializeToString()).SerializeToString())
rsp = d.DiscoveryResponse(version_info="v1", type_url=TYPE, resources=[any_pb2.Any(type_url="type.googleapis.com/other.Thing", value=b"\x0a\x01x"), any_pb2.Any(type_url=TYPE, value=msg.SerializeToString())])
(out / "discovery-response-mixed.bin").write_bytes(rsp.SerializeToString())
