"""An xDS client generated from the upstream xDS v3 message layout.

Generates Python stubs with grpcio-tools from ../proto-envoy, opens an ADS
stream to meshgate-cp as an Envoy-style node, decodes the SidecarConfig
resource, ACKs it, then checks through the admin API that the control plane
recorded the ACK. Exits non-zero on any mismatch.
"""

import argparse
import json
import os
import queue
import sys
import time
import urllib.request

TYPE_URL = "type.googleapis.com/meshgate.v1.SidecarConfig"


def generate(proto_dir, out_dir):
    import grpc_tools
    from grpc_tools import protoc

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = [
        "envoy/config/core/v3/base.proto",
        "google/rpc/status.proto",
        "envoy/service/discovery/v3/discovery.proto",
        "envoy/service/discovery/v3/ads.proto",
        "meshgate/v1/sidecar_config.proto",
    ]
    rc = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
        + files
    )
    if rc != 0:
        sys.exit(f"protoc failed: {rc}")
    sys.path.insert(0, out_dir)


def admin_status(admin, token):
    req = urllib.request.Request(f"{admin}/v1/status", headers={"authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as rsp:
        return json.load(rsp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--xds", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--version", required=True)
    ap.add_argument("--xds-token", required=True, help="bearer token the control plane maps to the service")
    args = ap.parse_args()
    generate(args.proto_dir, args.out_dir)

    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
    from meshgate.v1 import sidecar_config_pb2

    node = base_pb2.Node(id="envoy-layout-client", cluster="orders", user_agent_name="interop", user_agent_version="1.0")
    node.metadata.update({"labels": {"lang": "python"}})
    # Fields meshgate ignores must not disturb it.
    node.client_features.append("envoy.lb.does_not_support_overprovisioning")
    node.locality.zone = "z1"

    requests = queue.Queue()
    requests.put(discovery_pb2.DiscoveryRequest(node=node, type_url=TYPE_URL, resource_names=["orders"]))

    def request_iter():
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    channel = grpc.insecure_channel(args.xds)
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    responses = stub.StreamAggregatedResources(
        request_iter(), timeout=30, metadata=[("authorization", f"Bearer {args.xds_token}")]
    )
    response = next(responses)
    assert response.type_url == TYPE_URL, response.type_url
    assert response.version_info == args.version, (response.version_info, args.version)
    assert response.nonce, "response has a nonce"
    assert len(response.resources) == 1
    any_ = response.resources[0]
    assert any_.type_url == TYPE_URL, any_.type_url
    config = sidecar_config_pb2.SidecarConfig()
    any_.Unpack(config)
    assert config.version == args.version and config.service == "orders", config
    spec = json.loads(config.config_json)
    assert spec["version"] == args.version, spec
    assert spec["routes"][0]["name"] == "which", spec

    # ACK: the new version and the response's nonce.
    requests.put(
        discovery_pb2.DiscoveryRequest(
            version_info=response.version_info, type_url=TYPE_URL, resource_names=["orders"], response_nonce=response.nonce
        )
    )
    deadline = time.time() + 10
    while True:
        nodes = [s for s in admin_status(args.admin, args.token) if s["node_id"] == "envoy-layout-client"]
        if nodes and nodes[0]["last_acked_version"] == args.version:
            node_status = nodes[0]
            break
        if time.time() > deadline:
            sys.exit(f"control plane did not record the ACK: {nodes}")
        time.sleep(0.05)
    assert node_status["labels"] == {"lang": "python"}, node_status
    assert node_status["sidecar_version"] == "interop/1.0", node_status
    requests.put(None)
    channel.close()
    print("envoy-layout client: subscribed, decoded and ACKed", args.version)


if __name__ == "__main__":
    main()
