#!/usr/bin/env python3
"""A plain WSGI app on Python's reference server (wsgiref), the way a CGI-style
app reads a request: PATH_INFO percent-decoded, every header as HTTP_NAME with
'-' turned into '_' (so `x_meshgate_user` and `x-meshgate-user` are the same
variable). Answers every request with that environment as JSON:

  {"path_info": ..., "query_string": ..., "remote_addr": ..., "http": {"HTTP_HOST": ...}}

Usage: wsgi_app.py PORT
"""
import json
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server


def app(environ, start_response):
    body = json.dumps(
        {
            "path_info": environ.get("PATH_INFO", ""),
            "query_string": environ.get("QUERY_STRING", ""),
            "remote_addr": environ.get("REMOTE_ADDR", ""),
            "http": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
        }
    ).encode()
    start_response(
        "200 OK",
        [("content-type", "application/json"), ("content-length", str(len(body)))],
    )
    return [body]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def main() -> int:
    port = int(sys.argv[1])
    with make_server("127.0.0.1", port, app, handler_class=QuietHandler) as server:
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
