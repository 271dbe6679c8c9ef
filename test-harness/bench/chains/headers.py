#!/usr/bin/env python3
"""Prints, as JSON, one request that the chain CHAIN accepts:
{"method": "GET", "path": "/bench", "headers": {...}, "body": ""}.
Usage: headers.py CHAIN URL   (CHAIN is a chains/*.yaml name without .yaml;
URL the target's http://host:port/bench, whose authority is signed)

The load generator repeats this request, so signatures carry no nonce and stay
valid for the chain's max_age. Keys here are benchmark-only test keys."""
import base64
import json
import os
import subprocess
import sys
import time

import jwt

HERE = os.path.dirname(os.path.abspath(__file__))
SIGNER = os.path.join(HERE, "..", "..", "scripts", "sign_request.py")
ALIPAY_SIGNER = os.path.join(HERE, "..", "..", "scripts", "alipay_sign.py")
ALIPAY_KEY = os.path.join(HERE, "..", "..", "..", "filters", "src", "signature", "testdata", "rsa-2048-private.pem")
HMAC_SECRET = "bWVzaGdhdGUtYmVuY2gtaG1hYy1zZWNyZXQtMzItYnl0ZXMh"
JWT_SECRET = "bWVzaGdhdGUtYmVuY2gtand0LWhzMjU2LXNlY3JldC0zMi1ieXRlcyEh"


def signed(url, key_id, alg, key_args):
    out = subprocess.run([sys.executable, SIGNER, "--method", "GET", "--url", url, "--key-id", key_id, "--alg", alg,
                          *key_args, "--components", "@method,@authority,@path", "--nonce", "none"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["headers"]


def bearer():
    now = int(time.time())
    secret = base64.urlsafe_b64decode(JWT_SECRET + "==")
    token = jwt.encode({"sub": "u-bench", "iss": "https://id.example.com", "aud": "wallet", "iat": now,
                        "exp": now + 3600}, secret, algorithm="HS256", headers={"kid": "bench"})
    return f"Bearer {token}"


def alipay():
    """An alipay.trade.query signed by Alipay's SDK (its timestamp in +08:00, the filter's default)."""
    out = subprocess.run([sys.executable, ALIPAY_SIGNER, "--app-id", "2014072300007148", "--private-key-file",
                          ALIPAY_KEY], check=True, capture_output=True, text=True,
                         env={**os.environ, "TZ": "CST-8"}).stdout
    signed = json.loads(out)
    return {"method": "POST", "path": f"/gateway.do?{signed['query']}",
            "headers": {"content-type": signed["content_type"]}, "body": signed["body"]}


def main():
    chain, url = sys.argv[1], sys.argv[2]
    if chain == "alipay-rsa2":
        print(json.dumps(alipay()))
        return
    headers = {}
    if chain in ("full-chain", "signature-hmac"):
        headers.update(signed(url, "bench-app", "hmac-sha256", ["--secret-b64", HMAC_SECRET]))
    if chain == "signature-ed25519":
        headers.update(signed(url, "bench-ed", "ed25519",
                              ["--private-key-file", os.path.join(HERE, "bench-ed25519.key.pem")]))
    if chain == "full-chain":
        headers["authorization"] = bearer()
    print(json.dumps({"method": "GET", "path": "/bench", "headers": headers, "body": ""}))


if __name__ == "__main__":
    main()
