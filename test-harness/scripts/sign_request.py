#!/usr/bin/env python3
"""Signs one HTTP request with the `http-message-signatures` package (RFC 9421)
and prints the headers to add as JSON: {"headers": {...}}.

Used by the integration tests to check that a client signing with another
implementation is accepted by the sidecar.

Arguments (all --name value):
  --method POST --url http://127.0.0.1:1234/pay?x=1 [--body TEXT]
  --key-id app-1 --alg hmac-sha256|ed25519|ecdsa-p256-sha256|rsa-pss-sha512|rsa-v1_5-sha256
  --secret-b64 B64 | --private-key-file PEM
  [--components @method,@authority,@path,@query] [--header name:value]...
  [--created UNIX] [--nonce TEXT|none] [--label sig1]
"""
import argparse
import base64
import datetime
import json
import secrets
import sys

import requests
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms

ALGORITHMS = {
    "hmac-sha256": algorithms.HMAC_SHA256,
    "ed25519": algorithms.ED25519,
    "ecdsa-p256-sha256": algorithms.ECDSA_P256_SHA256,
    "rsa-pss-sha512": algorithms.RSA_PSS_SHA512,
    "rsa-v1_5-sha256": algorithms.RSA_V1_5_SHA256,
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--method", default="GET")
    p.add_argument("--url", required=True)
    p.add_argument("--body")
    p.add_argument("--key-id", required=True)
    p.add_argument("--alg", required=True, choices=sorted(ALGORITHMS))
    p.add_argument("--secret-b64")
    p.add_argument("--private-key-file")
    p.add_argument("--components", default="@method,@authority,@path,@query")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--created", type=int)
    p.add_argument("--nonce")
    p.add_argument("--label", default="sig1")
    a = p.parse_args()

    if a.secret_b64:
        key = base64.b64decode(a.secret_b64)
    elif a.private_key_file:
        with open(a.private_key_file, "rb") as f:
            key = f.read()
    else:
        print("--secret-b64 or --private-key-file is required", file=sys.stderr)
        return 2

    headers = dict(h.split(":", 1) for h in a.header)
    body = a.body.encode() if a.body is not None else None
    req = requests.Request(a.method, a.url, headers=headers, data=body).prepare()
    signer = HTTPMessageSigner(
        signature_algorithm=ALGORITHMS[a.alg],
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={a.key_id: key}),
    )
    created = (
        datetime.datetime.fromtimestamp(a.created, tz=datetime.timezone.utc)
        if a.created is not None
        else None
    )
    nonce = None if a.nonce == "none" else (a.nonce or secrets.token_urlsafe(16))
    signer.sign(
        req,
        key_id=a.key_id,
        created=created,
        nonce=nonce,
        label=a.label,
        covered_component_ids=[c for c in a.components.split(",") if c],
        body=body,
    )
    out = {
        k: v
        for k, v in req.headers.items()
        if k.lower() in ("signature", "signature-input", "content-digest")
    }
    json.dump({"headers": out}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
