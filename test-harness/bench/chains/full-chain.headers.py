#!/usr/bin/env python3
"""Prints the headers of one request valid for full-chain.yaml as JSON.
Usage: full-chain.headers.py URL"""
import base64
import json
import os
import subprocess
import sys
import time

import jwt

url = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
signer = os.path.join(here, "..", "..", "scripts", "sign_request.py")
out = subprocess.run([sys.executable, signer, "--method", "GET", "--url", url, "--key-id", "bench-app",
                      "--alg", "hmac-sha256", "--secret-b64", "bWVzaGdhdGUtYmVuY2gtaG1hYy1zZWNyZXQtMzItYnl0ZXMh",
                      "--components", "@method,@authority,@path", "--nonce", "none"],
                     check=True, capture_output=True, text=True).stdout
headers = json.loads(out)["headers"]
secret = base64.urlsafe_b64decode("bWVzaGdhdGUtYmVuY2gtand0LWhzMjU2LXNlY3JldC0zMi1ieXRlcyEh==")
now = int(time.time())
token = jwt.encode({"sub": "u-bench", "iss": "https://id.example.com", "aud": "wallet", "iat": now, "exp": now + 3600},
                   secret, algorithm="HS256", headers={"kid": "bench"})
headers["authorization"] = f"Bearer {token}"
print(json.dumps(headers))
