#!/usr/bin/env python3
"""Verifies a signed HTTP response with the `http-message-signatures` package
(RFC 9421), including components bound to the request (`;req`).

Reads JSON on stdin:
  {"request": {"method", "url", "headers": {...}},
   "response": {"status", "headers": {...}, "body"},
   "key_id", "alg": "ed25519", "public_key_pem"}
Prints {"covered": [...]} and exits 0 when the signature verifies, else
prints the error and exits 1.
"""
import json
import sys

import requests
from http_message_signatures import HTTPMessageVerifier, MappingKeyResolver, algorithms
from requests.structures import CaseInsensitiveDict

ALGORITHMS = {
    "ed25519": algorithms.ED25519,
    "ecdsa-p256-sha256": algorithms.ECDSA_P256_SHA256,
    "rsa-pss-sha512": algorithms.RSA_PSS_SHA512,
    "rsa-v1_5-sha256": algorithms.RSA_V1_5_SHA256,
}


def main() -> int:
    spec = json.load(sys.stdin)
    r = spec["request"]
    req = requests.Request(r["method"], r["url"], headers=r["headers"]).prepare()
    rsp = requests.Response()
    rsp.status_code = spec["response"]["status"]
    rsp.headers = CaseInsensitiveDict(spec["response"]["headers"])
    rsp.request = req
    verifier = HTTPMessageVerifier(
        signature_algorithm=ALGORITHMS[spec["alg"]],
        key_resolver=MappingKeyResolver(
            public_keys={spec["key_id"]: spec["public_key_pem"].encode()}, private_keys={}
        ),
    )
    try:
        results = verifier.verify(rsp, body=spec["response"]["body"].encode())
    except Exception as e:  # report any verification failure to the test
        print(f"{type(e).__name__}: {e}")
        return 1
    covered = [str(c) for res in results for c in res.covered_components]
    json.dump({"covered": covered}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
