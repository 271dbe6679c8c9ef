#!/usr/bin/env python3
"""A login app behind the sidecar: it issues and ends sessions only through
the sidecar's response instructions and never touches the session store.

  GET /login?user=U&tenant=T[&ttl=2h]  -> x-meshgate-session-set
  GET /logout                          -> x-meshgate-session-clear: 1
  anything else                        -> JSON of the request headers it got
  POST (any path)                      -> the body is read, then as GET

Usage: session_app.py PORT
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.do_GET()

    def do_GET(self):
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        extra = {}
        if url.path == "/login":
            instruction = {"sub": query.get("user", "u-1"), "claims": {"tenant": query.get("tenant", "t-1")}}
            if "ttl" in query:
                instruction["ttl"] = query["ttl"]
            extra["x-meshgate-session-set"] = json.dumps(instruction)
        elif url.path == "/logout":
            extra["x-meshgate-session-clear"] = "1"
        body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
