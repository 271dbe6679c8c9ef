#!/usr/bin/env python3
"""Signs one Alipay open-API request with Alipay's own Python SDK
(`alipay-sdk-python`, RSA2) and prints it as JSON instead of sending it:
{"query": "...", "body": "...", "content_type": "..."}.

The SDK's public `DefaultAlipayClient.execute` builds and signs the request;
its HTTP call (`do_post`) is replaced by one that captures the query string
(the common parameters and `sign`) and the form body (the API parameters),
exactly as the SDK would have sent them.

Arguments:
  --app-id 2014072300007148 --private-key-file key.pem (PKCS#1, as the SDK wants)
  [--out-trade-no 20150320010101001] [--param name=value]...
The SDK stamps `timestamp` with the local time: run it with TZ set to the
offset the sidecar expects (TZ=CST-8 for the default +08:00).
"""
import argparse
import importlib
import json
import sys

from alipay.aop.api.AlipayClientConfig import AlipayClientConfig
from alipay.aop.api.DefaultAlipayClient import DefaultAlipayClient
from alipay.aop.api.domain.AlipayTradeQueryModel import AlipayTradeQueryModel
from alipay.aop.api.request.AlipayTradeQueryRequest import AlipayTradeQueryRequest
from alipay.aop.api.util.WebUtils import url_encode

client_module = importlib.import_module("alipay.aop.api.DefaultAlipayClient")


class Captured(Exception):
    def __init__(self, query, headers, params, charset):
        super().__init__("captured")
        self.query = query
        self.headers = headers
        self.params = params
        self.charset = charset


def capture(url, query_string=None, headers=None, params=None, charset="utf-8", timeout=15):
    raise Captured(query_string, headers or {}, params or {}, charset)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--app-id", required=True)
    p.add_argument("--private-key-file", required=True)
    p.add_argument("--out-trade-no", default="20150320010101001")
    p.add_argument("--param", action="append", default=[])
    a = p.parse_args()

    with open(a.private_key_file) as f:
        private_key = f.read().strip()

    config = AlipayClientConfig()
    config.server_url = "http://127.0.0.1/gateway.do"  # never contacted
    config.app_id = a.app_id
    config.app_private_key = private_key
    config.alipay_public_key = ""  # response checking is never reached
    config.sign_type = "RSA2"
    client = DefaultAlipayClient(alipay_client_config=config)

    model = AlipayTradeQueryModel()
    model.out_trade_no = a.out_trade_no
    request = AlipayTradeQueryRequest(biz_model=model)
    for extra in a.param:
        name, value = extra.split("=", 1)
        request.add_other_text_param(name, value)

    client_module.do_post = capture
    try:
        client.execute(request)
    except Captured as c:
        content_type = next(
            (v for k, v in c.headers.items() if k.lower() == "content-type"), ""
        )
        json.dump(
            {
                "query": c.query,
                "body": url_encode(c.params, c.charset),
                "content_type": content_type,
            },
            sys.stdout,
        )
        return 0
    print("the SDK sent nothing", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
