#!/usr/bin/env python3
"""Regenerates sidecar/link/symbol-order.txt: the functions a sidecar runs, for the linker to put together.

A sidecar's resident memory is mostly the binary's code pages, and which
pages are resident depends on where the code that runs sits: the kernel
maps up to 64 KiB around each faulting code page (fault-around), so one
function that runs among cold ones makes its neighbours resident too.
sidecar/build.rs hands this file to the linker (lld's
`--symbol-ordering-file`) for release builds, which then lays the listed
functions out first, hottest first, and everything else after them.

The list is what callgrind sees a release meshgate execute, one process per
scenario under valgrind: start-up and config validation, then HTTP/1.1 and
h2c load on pass-through, each benchmark chain (test-harness/bench/chains)
with the request it accepts, the access log on, the admin API, and the
graceful drain at SIGTERM. Names are mangled symbols: they change with the
compiler version and the crate graph, so regenerate after a toolchain or
dependency update (names that no longer exist are ignored by the linker,
and the layout falls back to the compiler's order for them).

Usage: python3 test-harness/bench/symbol_order.py [--binary target/release/meshgate]
       [--out sidecar/link/symbol-order.txt]
       python3 test-harness/bench/symbol_order.py --check [--binary ...]
         (how many of the listed functions the binary has, and how many sit in
         the listed order: few found means the list is stale, few in order
         that the binary was linked without it; memory.py prints it too)
Build first, exactly as the images do (docker/build.sh, docker/Dockerfile):
    docker/release-build.sh   (cargo build --release -p meshgate -p meshgate-control-plane, with the profile)
(needs valgrind, h2load, gcc). Symbol names carry a hash of each crate's
build settings, features included, and cargo unifies features across the
packages of one build: `-p meshgate` alone, or the whole workspace, links
differently named functions (about 1,250 of 2,200 match). A list written
from a binary linked without it converges after one more round of build
and regenerate.
"""
import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

# (chain, log level, what to send): every chain with its own request over
# HTTP/1.1, and pass-through over h2c too.
SCENARIOS = [
    (None, "warn", ["h1", "h2c"]),
    (None, "info", ["h1"]),
    ("full-chain", "warn", ["h1"]),
    ("alipay-rsa2", "warn", ["h1"]),
    ("signature-hmac", "warn", ["h1"]),
    ("signature-ed25519", "warn", ["h1"]),
    ("token-bucket", "warn", ["h1"]),
]


def load(port, chain, protocol, requests=400):
    req = compare.chain_request(os.path.join(compare.BENCH_DIR, "chains", f"{chain}.yaml") if chain else None,
                                port)
    args = [arg for k, v in req["headers"].items() for arg in ("-H", f"{k}: {v}")]
    body = None
    if req.get("body"):
        body = tempfile.NamedTemporaryFile("w", delete=False)
        body.write(req["body"])
        body.close()
        args += ["-d", body.name]
    n = str(requests)
    mode = ["--h1", "-n", n, "-c", "8"] if protocol == "h1" else ["-n", n, "-c", "4", "-m", "4"]
    out = subprocess.run(["h2load", *mode, *args, f"http://127.0.0.1:{port}{req['path']}"],
                         capture_output=True, text=True, timeout=300).stdout
    if body:
        os.unlink(body.name)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if not codes or codes.group(1) != n:
        raise RuntimeError(f"{chain or 'pass-through'} over {protocol}: not every request was answered 2xx:\n{out}")


def run_scenario(binary, upstream_port, chain, level, protocols, tmp):
    """One scenario under callgrind; returns its output file."""
    with tempfile.NamedTemporaryFile(dir=tmp, prefix="cg-", suffix=".out", delete=False) as out:
        out_file = out.name
    drive(["valgrind", "--tool=callgrind", "--demangle=no", "--compress-strings=no", "--compress-pos=no",
           f"--callgrind-out-file={out_file}", binary], upstream_port, chain, level, protocols, tmp)
    return out_file


def drive(command, upstream_port, chain, level, protocols, tmp, requests=400, env=None):
    """Runs `command` (meshgate, or a tool wrapping it) with the scenario's config: start-up,
    the admin API, `requests` requests over each protocol, then the drain at SIGTERM."""
    inbound, admin = compare.free_port(), compare.free_port()
    cfg = os.path.join(tmp, f"order-{inbound}.yaml")
    chain_file = os.path.join(compare.BENCH_DIR, "chains", f"{chain}.yaml") if chain else None
    with open(cfg, "w") as f:
        f.write(compare.meshgate_config(inbound, admin, upstream_port, chain_file))
    proc = subprocess.Popen([*command, "--config", cfg, "--concurrency", "1", "--log-level", level],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        compare.wait_port(admin, timeout=120)
        for path in ("/ready", "/live", "/metrics", "/config"):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=30).read()
            except OSError:
                pass  # some admin paths need credentials; the code that answers so is what counts
        for protocol in protocols:
            load(inbound, chain, protocol, requests)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def self_costs(path, binary):
    """Instructions executed in each function of `binary` (self cost), from a callgrind file."""
    costs = collections.Counter()
    real = os.path.realpath(binary)
    ob = fn = None
    skip_next_cost = False
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("ob="):
                ob = os.path.realpath(line[3:].strip())
            elif line.startswith("fn="):
                # valgrind marks a second function of the same name with 'N.
                fn = re.sub(r"'\d+$", "", line[3:].strip())
            elif line.startswith("calls="):
                skip_next_cost = True  # the next cost line is the call's inclusive cost
            elif line[:1].isdigit() or line[:1] in "+-*":
                if skip_next_cost:
                    skip_next_cost = False
                    continue
                if ob == real and fn:
                    parts = line.split()
                    if len(parts) >= 2:
                        costs[fn] += int(parts[1])
    return costs


ORDER_FILE = os.path.join(compare.ROOT, "sidecar", "link", "symbol-order.txt")


def coverage(binary, order_file=ORDER_FILE):
    """(listed, found, in_order): the functions the order file lists, how many of them `binary`
    defines, and how many consecutive pairs of those sit in the listed order (all but a few when
    the binary was linked with this list; about half when it was not)."""
    with open(order_file) as f:
        listed = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    out = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True).stdout
    address = {}
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:
            address.setdefault(parts[2], int(parts[0], 16))
    found = [address[name] for name in listed if name in address]
    in_order = sum(1 for a, b in zip(found, found[1:]) if a < b)
    return len(listed), len(found), in_order


def describe(binary, order_file=ORDER_FILE):
    listed, found, in_order = coverage(binary, order_file)
    return (f"{found} of the {listed} functions in {order_file} are in {binary}, "
            f"{in_order} of {max(found - 1, 0)} consecutive pairs in the listed order")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(compare.TARGET, "release", "meshgate"))
    ap.add_argument("--out", default=ORDER_FILE)
    ap.add_argument("--check", action="store_true", help="only report how much of the list the binary has")
    args = ap.parse_args()
    if args.check:
        print(describe(args.binary, args.out))
        return
    compare.ensure_tools()
    totals = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        upstream_port = compare.free_port()
        upstream = subprocess.Popen([compare.build_upstream(tmp), str(upstream_port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            compare.wait_port(upstream_port)
            for chain, level, protocols in SCENARIOS:
                started = time.time()
                costs = self_costs(run_scenario(args.binary, upstream_port, chain, level, protocols, tmp),
                                   args.binary)
                print(f"{chain or 'pass-through'} ({level}, {'+'.join(protocols)}): {len(costs)} functions, "
                      f"{time.time() - started:.0f} s", file=sys.stderr)
                totals.update(costs)
        finally:
            compare.stop(upstream)
    rustc = subprocess.run(["rustc", "-V"], capture_output=True, text=True).stdout.strip()
    names = [name for name, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("# Functions a release meshgate runs, hottest first (callgrind self cost summed over the\n"
                "# scenarios of test-harness/bench/symbol_order.py, which wrote this file; see there).\n"
                f"# {rustc}; {len(names)} symbols.\n")
        f.write("\n".join(names) + "\n")
    print(json.dumps({"out": args.out, "symbols": len(names)}))


if __name__ == "__main__":
    main()
