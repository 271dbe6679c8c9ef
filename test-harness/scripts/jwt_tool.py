#!/usr/bin/env python3
"""JWT fixtures for the session filter's integration tests, made with PyJWT
and cryptography (an independent implementation of JWS and JWK).

  jwt_tool.py keys DIR PREFIX           new key per algorithm: DIR/PREFIX-private.json, DIR/PREFIX-jwks.json
  jwt_tool.py suite DIR PREFIX ISS AUD  JSON object: case name -> token
  jwt_tool.py mint DIR PREFIX ALG SUB ISS AUD   one valid token
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ALGS = ["ES256", "RS256", "PS256", "EdDSA", "HS256"]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_key(alg):
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg in ("RS256", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return os.urandom(32)


def public_jwk(alg, key):
    if alg == "HS256":
        jwk = jwt.algorithms.HMACAlgorithm.to_jwk(key, as_dict=True)
    elif alg == "ES256":
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    elif alg == "EdDSA":
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return jwk


def private_text(alg, key):
    if alg == "HS256":
        return base64.b64encode(key).decode()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def load_private(alg, text):
    if alg == "HS256":
        return base64.b64decode(text)
    return serialization.load_pem_private_key(text.encode(), password=None)


def cmd_keys(out_dir, prefix):
    private, keys = {}, []
    for alg in ALGS:
        key = new_key(alg)
        kid = f"{prefix}-{alg.lower()}"
        jwk = public_jwk(alg, key)
        jwk.update({"kid": kid, "alg": alg, "use": "sig"})
        keys.append(jwk)
        entry = {"kid": kid, "key": private_text(alg, key)}
        if alg in ("RS256", "PS256"):
            entry["public_pem"] = key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
        private[alg] = entry
    with open(os.path.join(out_dir, f"{prefix}-private.json"), "w") as f:
        json.dump(private, f)
    with open(os.path.join(out_dir, f"{prefix}-jwks.json"), "w") as f:
        json.dump({"keys": keys}, f)


def load(out_dir, prefix):
    with open(os.path.join(out_dir, f"{prefix}-private.json")) as f:
        return json.load(f)


def mint(private, alg, claims, headers=None):
    entry = private[alg]
    hdr = {"kid": entry["kid"]}
    hdr.update(headers or {})
    return jwt.encode(claims, load_private(alg, entry["key"]), algorithm=alg, headers=hdr)


def claims(sub, iss, aud, **extra):
    now = int(time.time())
    c = {"sub": sub, "iss": iss, "aud": aud, "iat": now, "exp": now + 300, "tenant": "t-1"}
    c.update(extra)
    return c


def hs256_by_hand(header, payload, secret):
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def cmd_suite(out_dir, prefix, iss, aud):
    private = load(out_dir, prefix)
    now = int(time.time())
    tokens = {}
    for alg in ALGS:
        tokens[f"ok_{alg}"] = mint(private, alg, claims(f"u-{alg.lower()}", iss, aud))
    tokens["expired"] = mint(private, "ES256", claims("u", iss, aud, exp=now - 3600))
    tokens["not_yet_valid"] = mint(private, "ES256", claims("u", iss, aud, nbf=now + 3600))
    tokens["wrong_issuer"] = mint(private, "RS256", claims("u", "https://evil.example.com", aud))
    tokens["wrong_audience"] = mint(private, "EdDSA", claims("u", iss, "someone-else"))
    good = mint(private, "PS256", claims("u", iss, aud))
    head, payload, sig = good.split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    tokens["bad_signature"] = ".".join([head, payload, flipped])
    # Algorithm confusion: HS256 keyed with the RSA public key, naming the RSA
    # key. PyJWT refuses to build this, so it is assembled by hand.
    rsa_entry = private["RS256"]
    tokens["alg_confusion"] = hs256_by_hand(
        {"alg": "HS256", "typ": "JWT", "kid": rsa_entry["kid"]},
        claims("admin", iss, aud),
        rsa_entry["public_pem"].encode(),
    )
    tokens["alg_none"] = jwt.encode(claims("admin", iss, aud), None, algorithm="none",
                                    headers={"kid": private["HS256"]["kid"]})
    print(json.dumps(tokens))


def main(argv):
    if argv[1] == "keys":
        cmd_keys(argv[2], argv[3])
    elif argv[1] == "suite":
        cmd_suite(argv[2], argv[3], argv[4], argv[5])
    elif argv[1] == "mint":
        private = load(argv[2], argv[3])
        print(mint(private, argv[4], claims(argv[5], argv[6], argv[7])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
