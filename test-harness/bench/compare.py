#!/usr/bin/env python3
"""Side-by-side benchmark: the same app, bare and behind each proxy, in one run.

Targets: the bare echo app; meshgate pass-through; meshgate with filter chains
(configs in test-harness/bench/chains/*.yaml, each a route named `bench`);
nginx twice (plain proxy_pass, and with the same header work meshgate does:
forwarding headers, a request id both ways, the app's internal headers hidden)
and haproxy, every proxy with one worker. Load: wrk (HTTP/1.1 keep-alive) in
rounds where the targets take turns, and h2load (HTTP/2, h2c). Reports the
median requests/s and p50/p99/p99.9 latency over the rounds, CPU time per
request of the proxy process, RSS idle and with 1,000 open connections, and
ratios to both nginx set-ups and to meshgate pass-through.

Usage: python3 test-harness/bench/compare.py [--duration 10] [--connections 32]
       [--rounds 3] [--write BENCHMARKS.md]

Pinned mode (--pinned; needs 2 CPUs and taskset): every target started at
once, loaded one at a time in rounds where the targets take turns, each
with its own minimal fixed-response upstream (bench/fixed_upstream.c, built
here with gcc, answering a fixed 100-byte body, so the app costs next to
nothing); wrk `-t1 -c32` on CPU 0, the proxy and the upstream on CPU 1, one
worker each. Reports req/s and p99 (median of --repeat rounds and their spread;
p99 also against nginx with the same headers, paired round by round),
proxy CPU per request (user+system time of the proxy process over the requests
served), and RSS idle, with 1,000 open keep-alive connections and idle again
after the load. Also meshgate pass-through with the access log on (stdout to a
file). One command to re-run on a quiet machine:
       python3 test-harness/bench/compare.py --pinned [--write BENCHMARKS.md]
A change's effect, paired round by round against a build of an earlier
commit (built in a worktree with its own CARGO_TARGET_DIR):
       python3 test-harness/bench/compare.py --pinned --baseline OLD/release/meshgate \
           --only 'nginx (same headers),meshgate pass-through,meshgate pass-through (baseline)'
Only loopback addresses are used; every run is bounded by --duration.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BENCH_DIR = os.path.join(ROOT, "test-harness", "bench")
# The sidecar's release build as the images make it (docker/build.sh): the
# package set whose symbol names sidecar/link/symbol-order.txt lists
# (symbol_order.py), optimised with the execution profile (pgo.py).
RELEASE_BUILD = ["bash", os.path.join(ROOT, "docker", "release-build.sh")]
MARK_BEGIN = "<!-- compare.py:begin -->"
MARK_END = "<!-- compare.py:end -->"
PINNED_BEGIN = "<!-- compare.py --pinned:begin -->"
PINNED_END = "<!-- compare.py --pinned:end -->"
# CPUs of the pinned mode: the load generator alone on one, the proxy and its
# upstream together on the other.
LOAD_CPU = "0"
PROXY_CPU = "1"

WRK_LUA = """
done = function(summary, latency, requests)
  io.write(string.format("JSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"errors\\":%d,\\"non2xx\\":%d,\\"p50\\":%d,\\"p99\\":%d,\\"p999\\":%d}\\n",
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def ensure_tools():
    missing = [pkg for tool, pkg in [("wrk", "wrk"), ("h2load", "nghttp2-client"), ("nginx", "nginx-light"),
                                     ("haproxy", "haproxy"), ("gcc", "gcc"), ("taskset", "util-linux")]
               if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}")]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    # The chain benchmarks sign their requests with the same Python libraries the interop tests use.
    # The Alipay chain signs with Alipay's own SDK.
    if subprocess.run([sys.executable, "-c", "import http_message_signatures, jwt, cryptography, alipay"],
                      capture_output=True).returncode != 0:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "http-message-signatures", "PyJWT",
                        "cryptography", "alipay-sdk-python"], check=True)


def proc_stats(pid):
    """(cpu seconds of the process and its children threads, rss kB)"""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return cpu, rss


def pids_of(proc, name_hint=None):
    """The process and, for nginx, its worker children."""
    pids = [proc.pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        pids += [int(p) for p in out]
    except OSError:
        pass
    return pids


def total_stats(pids):
    cpu = rss = 0
    for pid in pids:
        try:
            c, r = proc_stats(pid)
            cpu += c
            rss += r
        except OSError:
            pass
    return cpu, rss


PASS_THROUGH_REQUEST = {"method": "GET", "path": "/bench", "headers": {}, "body": ""}


def request_lua(req):
    """wrk settings that make every request of the run `req` (method, path, headers, body)."""
    lines = [f"wrk.method = {json.dumps(req['method'])}", f"wrk.path = {json.dumps(req['path'])}"]
    if req["body"]:
        lines.append(f"wrk.body = {json.dumps(req['body'])}")
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in req["headers"].items()]
    return "\n".join(lines) + "\n"


def chain_request(chain, port):
    """The request the chain accepts, signed for the authority the load tool sends (host:port of the target)."""
    if chain is None:
        return PASS_THROUGH_REQUEST
    chain_name = os.path.basename(chain)[:-len(".yaml")]
    return json.loads(subprocess.run(
        [sys.executable, os.path.join(BENCH_DIR, "chains", "headers.py"), chain_name,
         f"http://127.0.0.1:{port}/bench"], check=True, capture_output=True, text=True).stdout)


def run_wrk(port, duration, connections, script, cpu=None):
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    out = subprocess.run([*pin, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script,
                          f"http://127.0.0.1:{port}/bench"], capture_output=True, text=True, timeout=duration + 30).stdout
    m = re.search(r"^JSON (.*)$", out, re.M)
    if not m:
        raise RuntimeError("wrk printed no result:\n" + out)
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def run_h2load(port, duration, connections, headers):
    extra = [arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")]
    out = subprocess.run(["h2load", f"-c{connections}", "-m10", "-t1", f"-D{duration}", *extra,
                          f"http://127.0.0.1:{port}/bench"], capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"finished in .*?, ([\d.]+) req/s", out).group(1))
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    # h2load reports mean/sd/max per request, not percentiles.
    lat = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)

    def us(v, unit):
        return float(v) * {"us": 1, "ms": 1000, "s": 1e6}[unit]
    return {"rps": rps, "requests": int(done.group(2)), "errors": int(done.group(4)) + int(done.group(5)),
            "mean_us": us(lat.group(5), lat.group(6)) if lat else None, "max_us": us(lat.group(3), lat.group(4)) if lat else None}


def hold_connections(port, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n")
        socks.append(s)
    for s in socks:
        s.settimeout(5)
        try:
            s.recv(4096)
        except OSError:
            pass
    return socks


def meshgate_config(inbound, admin, app_port, chain_file):
    base = f"""inbound: {{ listen: "127.0.0.1:{inbound}" }}
app: {{ address: "127.0.0.1:{app_port}" }}
admin: {{ listen: "127.0.0.1:{admin}" }}
"""
    if chain_file is None:
        return base + "routes:\n  - name: bench\n    match: { path_prefix: / }\n"
    with open(chain_file) as f:
        return base + f.read()


NGINX_PLAIN = "proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off;"
# The header contract meshgate applies on every request (docs/architecture.md):
# the client's Host kept, X-Forwarded-For/-Proto added, a request id generated
# and sent both ways, and the app's hop-by-hop and x-meshgate-* answers hidden.
NGINX_SAME_HEADERS = NGINX_PLAIN + """
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Request-Id $request_id;
      add_header X-Request-Id $request_id always;
      proxy_hide_header x-app-secret-hop;
      proxy_hide_header x-meshgate-session-set;"""


def start_target(kind, chain, port, app_port, tmp, release, cpu=None, binary=None):
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    if kind in ("meshgate", "meshgate-access-log"):
        binary = binary or os.path.join(release, "meshgate")
        admin = free_port()
        cfg = os.path.join(tmp, f"meshgate-{port}.yaml")
        with open(cfg, "w") as f:
            f.write(meshgate_config(port, admin, app_port, chain))
        # The access log is target `access` at info; at warn it is off. With it
        # on, stdout (where it goes) is a file, as a container runtime would collect it.
        if kind == "meshgate-access-log":
            level, out = "info", open(os.path.join(tmp, f"meshgate-{port}.log"), "wb")
        else:
            level, out = "warn", subprocess.DEVNULL
        return subprocess.Popen([*pin, binary, "--config", cfg, "--concurrency", "1",
                                 "--log-level", level], stdout=out, stderr=subprocess.DEVNULL)
    if kind in ("nginx", "nginx-headers"):
        conf = os.path.join(tmp, f"nginx-{port}.conf")
        location = NGINX_PLAIN if kind == "nginx" else NGINX_SAME_HEADERS
        with open(conf, "w") as f:
            f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx-{port}.pid; error_log {tmp}/nginx-{port}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ {location} }}
  }}
}}
""")
        return subprocess.Popen([*pin, "nginx", "-c", conf, "-e", f"{tmp}/nginx-{port}.err"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kind == "haproxy":
        conf = os.path.join(tmp, f"haproxy-{port}.cfg")
        with open(conf, "w") as f:
            f.write(f"""global
  nbthread 1
  maxconn 8192
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  default_backend app
backend app
  server app 127.0.0.1:{app_port}
""")
        return subprocess.Popen([*pin, "haproxy", "-f", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    raise ValueError(kind)


def release_env():
    """The environment of the release build: its RUSTFLAGS (the profile), so that
    another release build in the same target directory does not undo it."""
    flags = subprocess.run(RELEASE_BUILD + ["--rustflags"], capture_output=True, text=True,
                           check=True).stdout.strip()
    env = dict(os.environ)
    env["RUSTFLAGS"] = " ".join(f for f in (env.get("RUSTFLAGS", ""), flags) if f)
    return env

def only_targets(only, names):
    """The targets --only names: a comma-separated list, where a name may hold a
    comma itself ('meshgate pass-through, access log on')."""
    items = [w.strip() for w in only.split(",")]
    wanted, i = set(), 0
    while i < len(items):
        for j in range(len(items), i, -1):
            if ", ".join(items[i:j]) in names:
                wanted.add(", ".join(items[i:j]))
                i = j
                break
        else:
            sys.exit(f"unknown target: {items[i]}")
    return wanted


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3,
                    help="HTTP/1.1 rounds; targets take turns in a rotating order and the median is reported")
    ap.add_argument("--only", default=None,
                    help="comma-separated target names to run (default: all), e.g. 'meshgate pass-through,nginx'")
    ap.add_argument("--write", default=None, help="update this markdown file between the compare.py markers")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--pinned", action="store_true",
                    help="targets in turns, wrk on CPU 0, proxy and a fixed-response upstream on CPU 1")
    ap.add_argument("--repeat", type=int, default=5, help="pinned mode: rounds, one measured run of each target per round (medians reported)")
    ap.add_argument("--baseline", default=None, metavar="BINARY",
                    help="pinned mode: also run this meshgate binary (e.g. a build of an earlier commit) as "
                         "'meshgate pass-through (baseline)'; its 'CPU vs pass-through' is baseline minus this build")
    args = ap.parse_args()
    if args.baseline and not args.pinned:
        sys.exit("--baseline needs --pinned")
    if args.pinned and "--duration" not in sys.argv:
        args.duration = 5

    ensure_tools()
    if not args.no_build:
        # The sidecar as the images build it; the rounds mode's echo app in a
        # second build, which leaves it alone.
        subprocess.run(RELEASE_BUILD, cwd=ROOT, check=True)
        if not args.pinned:
            subprocess.run(["cargo", "build", "--release", "-p", "meshgate-test-harness", "--bins"], cwd=ROOT,
                           check=True, env=release_env())
    release = os.path.join(TARGET, "release")
    tmp = tempfile.mkdtemp(prefix="meshgate-bench-")
    if args.pinned:
        return pinned(args, release, tmp)

    app_port = free_port()
    app = subprocess.Popen([os.path.join(release, "meshgate-echo-app"), f"127.0.0.1:{app_port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "TOKIO_WORKER_THREADS": "1"})
    wait_port(app_port)

    specs = [("bare app", None), ("meshgate pass-through", ("meshgate", None))]
    for chain in sorted(f for f in os.listdir(os.path.join(BENCH_DIR, "chains")) if f.endswith(".yaml")):
        specs.append((f"meshgate {chain[:-5]}", ("meshgate", os.path.join(BENCH_DIR, "chains", chain))))
    specs.append(("nginx", ("nginx", None)))
    specs.append(("nginx (same headers)", ("nginx-headers", None)))
    specs.append(("haproxy", ("haproxy", None)))
    if args.only:
        wanted = only_targets(args.only, [name for name, _ in specs])
        specs = [(name, spec) for name, spec in specs if name in wanted]

    # Every target runs for the whole benchmark, so that rounds can take turns.
    targets = []
    try:
        for name, spec in specs:
            t = {"name": name, "spec": spec, "proc": None, "port": app_port, "headers": {}, "rounds": []}
            if spec is not None:
                kind, chain = spec
                t["port"] = free_port()
                t["proc"] = start_target(kind, chain, t["port"], app_port, tmp, release)
                wait_port(t["port"])
                t["request"] = chain_request(chain, t["port"])
            else:
                t["request"] = PASS_THROUGH_REQUEST
            t["headers"] = t["request"]["headers"]
            t["script"] = os.path.join(tmp, f"wrk-{t['port']}.lua")
            with open(t["script"], "w") as f:
                f.write(request_lua(t["request"]) + WRK_LUA)
            targets.append(t)
        time.sleep(0.5)
        for t in targets:
            # After the pause: nginx forks its worker only after it listens.
            t["pids"] = pids_of(t["proc"] if t["proc"] is not None else app)
            _, t["rss_idle_kb"] = total_stats(t["pids"])

        for r in range(args.rounds):
            shift = r % len(targets)
            for t in targets[shift:] + targets[:shift]:
                run_wrk(t["port"], 2 if r == 0 else 1, args.connections, t["script"])  # warm-up
                cpu0, _ = total_stats(t["pids"])
                h1 = run_wrk(t["port"], args.duration, args.connections, t["script"])
                cpu1, _ = total_stats(t["pids"])
                h1["cpu_us"] = (cpu1 - cpu0) * 1e6 / max(h1["requests"], 1)
                t["rounds"].append(h1)
                print(f"round {r + 1} {t['name']:32s} h1 {h1['rps']:>9.0f} req/s p50 {h1['p50']/1000:.2f}ms "
                      f"p99 {h1['p99']/1000:.2f}ms p99.9 {h1['p999']/1000:.2f}ms errors {h1['errors']} "
                      f"non2xx {h1['non2xx']} cpu {h1['cpu_us']:.1f}us/req", flush=True)

        results = []
        for t in targets:
            h2 = None
            # nginx proxies h2 only with TLS here; h2load repeats GETs only.
            if not (t["spec"] and t["spec"][0].startswith("nginx")) and t["request"]["method"] == "GET":
                try:
                    h2 = run_h2load(t["port"], args.duration, args.connections, t["headers"])
                except Exception as e:  # noqa: BLE001
                    print(f"{t['name']}: h2load failed: {e}", file=sys.stderr)
            socks = hold_connections(t["port"], 1000)
            time.sleep(0.5)
            _, rss_1000 = total_stats(t["pids"])
            for s in socks:
                s.close()
            rounds = t["rounds"]
            h1 = {k: median([x[k] for x in rounds]) for k in ("rps", "p50", "p99", "p999", "cpu_us")}
            h1["errors"] = sum(x["errors"] + x["non2xx"] for x in rounds)
            h1["min_rps"] = min(x["rps"] for x in rounds)
            h1["max_rps"] = max(x["rps"] for x in rounds)
            results.append({"name": t["name"], "h1": h1, "h2": h2, "rounds": rounds,
                            "rss_idle_kb": t["rss_idle_kb"], "rss_1000_kb": rss_1000})
            time.sleep(0.5)
    finally:
        for t in targets:
            if t["proc"] is not None:
                t["proc"].terminate()
                try:
                    t["proc"].wait(10)
                except subprocess.TimeoutExpired:
                    t["proc"].kill()
        app.terminate()

    report = render(results, args)
    print(report)
    if args.write:
        write_block(args.write, MARK_BEGIN, MARK_END, report)


# Chains whose request is not the pass-through GET (the Alipay chain POSTs a
# signed form): their cost is read against pass-through of the same request,
# so that forwarding a body is not counted as the chain's.
OWN_REQUEST_CHAINS = ("alipay-rsa2",)


def pinned_specs(baseline=None):
    """(name, kind, chain file, chain file whose request is sent, binary) of every pinned-mode target."""
    chains_dir = os.path.join(BENCH_DIR, "chains")
    specs = [("fixed upstream alone", None, None, None), ("nginx", "nginx", None, None),
             ("nginx (same headers)", "nginx-headers", None, None), ("haproxy", "haproxy", None, None),
             ("meshgate pass-through", "meshgate", None, None),
             ("meshgate pass-through, access log on", "meshgate-access-log", None, None)]
    for chain in OWN_REQUEST_CHAINS:
        specs.append((f"meshgate pass-through ({chain} request)", "meshgate", None,
                      os.path.join(chains_dir, f"{chain}.yaml")))
    for chain in sorted(f for f in os.listdir(chains_dir) if f.endswith(".yaml")):
        path = os.path.join(chains_dir, chain)
        specs.append((f"meshgate {chain[:-5]}", "meshgate", path, path))
    specs = [(*spec, None) for spec in specs]
    if baseline:
        specs.append(("meshgate pass-through (baseline)", "meshgate", None, None, os.path.abspath(baseline)))
    return specs


def request_name(chain):
    """The chain whose request a target sends, if it is not the pass-through GET."""
    name = os.path.basename(chain)[:-len(".yaml")] if chain else None
    return name if name in OWN_REQUEST_CHAINS else None


def build_upstream(tmp):
    binary = os.path.join(tmp, "fixed-upstream")
    subprocess.run(["gcc", "-O2", "-o", binary, os.path.join(BENCH_DIR, "fixed_upstream.c")], check=True)
    return binary


def stop(proc):
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def pinned(args, release, tmp):
    if (os.cpu_count() or 1) < 2:
        sys.exit("--pinned needs 2 CPUs")
    upstream_bin = build_upstream(tmp)
    specs = pinned_specs(args.baseline)
    if args.only:
        wanted = only_targets(args.only, [spec[0] for spec in specs])
        specs = [s for s in specs if s[0] in wanted]
    load = os.getloadavg()
    # Every target runs at once, idle but for its turn: in each round the
    # targets take turns (in a rotating order), so a machine whose speed
    # drifts slows all of them alike, and the ratios and CPU differences
    # are taken between runs of the same round.
    targets = []
    try:
        for name, kind, chain, request_chain, binary in specs:
            upstream_port = free_port()
            t = {"name": name, "request": request_name(request_chain), "proc": None, "runs": []}
            t["upstream"] = subprocess.Popen(["taskset", "-c", PROXY_CPU, upstream_bin, str(upstream_port)],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            targets.append(t)
            wait_port(upstream_port)
            t["port"] = upstream_port
            if kind is not None:
                t["port"] = free_port()
                t["proc"] = start_target(kind, chain, t["port"], upstream_port, tmp, release, cpu=PROXY_CPU,
                                         binary=binary)
                wait_port(t["port"])
            t["script"] = os.path.join(tmp, f"wrk-{t['port']}.lua")
            with open(t["script"], "w") as f:
                f.write(request_lua(chain_request(request_chain, t["port"])) + WRK_LUA)
        time.sleep(0.5)  # nginx forks its worker after it listens
        for t in targets:
            t["pids"] = pids_of(t["proc"] if t["proc"] is not None else t["upstream"])
            _, t["rss_idle_kb"] = total_stats(t["pids"])
            run_wrk(t["port"], 2, args.connections, t["script"], cpu=LOAD_CPU)  # warm-up
        for round_no in range(args.repeat):
            shift = round_no % len(targets)
            for t in targets[shift:] + targets[:shift]:
                cpu0, _ = total_stats(t["pids"])
                r = run_wrk(t["port"], args.duration, args.connections, t["script"], cpu=LOAD_CPU)
                cpu1, _ = total_stats(t["pids"])
                r["cpu_us"] = (cpu1 - cpu0) * 1e6 / max(r["requests"], 1)
                t["runs"].append(r)
                print(f"round {round_no + 1} {t['name']:40s} {r['rps']:>9.0f} req/s p99 {r['p99']/1000:.2f}ms "
                      f"cpu {r['cpu_us']:.2f}us/req errors {r['errors']} non2xx {r['non2xx']}", flush=True)
        for t in targets:
            socks = hold_connections(t["port"], 1000)
            time.sleep(0.5)
            _, t["rss_1000_kb"] = total_stats(t["pids"])
            for sock in socks:
                sock.close()
            # Idle again: the connections closed, 5 s for the allocator to give memory back.
            time.sleep(5)
            _, t["rss_after_kb"] = total_stats(t["pids"])
    finally:
        for t in targets:
            stop(t["proc"])
            stop(t["upstream"])
    results = []
    for t in targets:
        runs = t["runs"]
        rps = [r["rps"] for r in runs]
        results.append({
            "name": t["name"], "request": t["request"], "runs": runs,
            "rps": median(rps), "spread": (max(rps) - min(rps)) / median(rps),
            "p50": median([r["p50"] for r in runs]), "p99": median([r["p99"] for r in runs]),
            "cpu_us": median([r["cpu_us"] for r in runs]),
            "errors": sum(r["errors"] + r["non2xx"] for r in runs),
            "rss_idle_kb": t["rss_idle_kb"], "rss_1000_kb": t["rss_1000_kb"], "rss_after_kb": t["rss_after_kb"]})
    report = render_pinned(results, args, load)
    print(report)
    if args.write:
        write_block(args.write, PINNED_BEGIN, PINNED_END, report)


def render_pinned(results, args, load):
    by = {r["name"]: r for r in results}
    nginx, nginx_same = by.get("nginx"), by.get("nginx (same headers)")
    plain = by.get("meshgate pass-through")

    def passthrough_for(r):
        """Pass-through of the same request (the plain GET unless the target sends its chain's own)."""
        if r["request"] is None:
            return plain
        return by.get(f"meshgate pass-through ({r['request']} request)", plain)

    def paired(r, base, of):
        """Median over the rounds of `of(run, base's run of the same round)`."""
        return median([of(a, b) for a, b in zip(r["runs"], base["runs"])])

    def ratio(r, base, only_meshgate=False):
        if base is None or r is base or (only_meshgate and not r["name"].startswith("meshgate")):
            return "-"
        return f"{paired(r, base, lambda a, b: a['rps'] / b['rps']):.2f}"

    def cpu_delta(r):
        base = passthrough_for(r)
        if base is None or r is base or not r["name"].startswith("meshgate"):
            return "-"
        return f"{paired(r, base, lambda a, b: a['cpu_us'] - b['cpu_us']):+.1f}"

    def p99_ratio(r):
        if nginx_same is None or r is nginx_same:
            return "-"
        return f"{paired(r, nginx_same, lambda a, b: a['p99'] / b['p99']):.2f}"

    def cpu_ratio(r):
        if nginx_same is None or r is nginx_same:
            return "-"
        return f"{paired(r, nginx_same, lambda a, b: a['cpu_us'] / b['cpu_us']):.2f}"

    only = f" --only '{args.only}'" if args.only else ""
    if args.baseline:
        only += f" --baseline {args.baseline}"
    lines = [f"Command: `python3 test-harness/bench/compare.py --pinned --duration {args.duration} --repeat "
             f"{args.repeat}{only}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average before the "
             f"run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs). wrk `-t1 -c{args.connections}` "
             f"on CPU {LOAD_CPU}; the proxy (one worker) and the fixed 100-byte upstream on CPU {PROXY_CPU}. "
             f"{args.repeat} rounds of {args.duration} s runs; in each round every target runs once, in a rotating "
             f"order, all of them started before the first. req/s, latency and CPU are medians over the rounds; "
             f"spread is (max − min) / median of req/s; ratios and CPU differences are medians of the per-round "
             f"pairs. "
             f"CPU is the proxy's user+system time per request. RSS: idle before the load, with 1,000 open "
             f"keep-alive connections, and 5 s after they closed. The alipay-rsa2 chain POSTs a signed form; its "
             f"\"vs pass-through\" columns compare it with pass-through of that same request.", "",
             "| target | req/s | spread | p50 ms | p99 ms | p99 vs nginx (same headers) | errors | vs nginx "
             "| vs nginx (same headers) "
             "| vs pass-through | proxy CPU µs/req | CPU vs nginx (same headers) | CPU vs pass-through µs | RSS idle MB "
             "| RSS 1k conns MB | RSS after load MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    for r in results:
        lines.append(f"| {r['name']} | {r['rps']:.0f} | {r['spread'] * 100:.1f}% | {r['p50']/1000:.2f} | "
                     f"{r['p99']/1000:.2f} | {p99_ratio(r)} | {r['errors']} | {ratio(r, nginx)} | {ratio(r, nginx_same)} | "
                     f"{ratio(r, passthrough_for(r), True)} | {r['cpu_us']:.2f} | {cpu_ratio(r)} | {cpu_delta(r)} | "
                     f"{r['rss_idle_kb']/1024:.1f} | {r['rss_1000_kb']/1024:.1f} | {r['rss_after_kb']/1024:.1f} |")
    return "\n".join(lines)


def write_block(path, begin, end, report):
    path = os.path.join(ROOT, path) if not os.path.isabs(path) else path
    text = open(path).read() if os.path.exists(path) else ""
    block = f"{begin}\n{report}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += "\n" + block + "\n"
    open(path, "w").write(text)


def render(results, args):
    by = {r["name"]: r for r in results}
    nginx = by.get("nginx")
    nginx_same = by.get("nginx (same headers)")
    passthrough = by.get("meshgate pass-through")

    def ratio(r, base, only_meshgate=False):
        if base is None or r is base or (only_meshgate and not r["name"].startswith("meshgate")):
            return "-"
        return f"{r['h1']['rps'] / base['h1']['rps']:.2f}"

    only = f" --only '{args.only}'" if args.only else ""
    lines = [f"Command: `python3 test-harness/bench/compare.py --duration {args.duration} --connections {args.connections}"
             f" --rounds {args.rounds}{only}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load generator on the "
             f"same machine, every proxy limited to one worker thread/process). HTTP/1.1 figures are the median of "
             f"{args.rounds} rounds in which the targets take turns; the range is the lowest and highest round.", "",
             "| target | HTTP/1.1 req/s | range | p50 ms | p99 ms | p99.9 ms | errors | vs nginx | vs nginx (same headers) "
             "| vs pass-through | h2c req/s | CPU µs/req | RSS idle MB | RSS 1k conns MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        h1 = r["h1"]
        h2 = f"{r['h2']['rps']:.0f}" if r["h2"] else "-"
        lines.append(f"| {r['name']} | {h1['rps']:.0f} | {h1['min_rps']:.0f}–{h1['max_rps']:.0f} | "
                     f"{h1['p50']/1000:.2f} | {h1['p99']/1000:.2f} | {h1['p999']/1000:.2f} | {h1['errors']} | "
                     f"{ratio(r, nginx)} | {ratio(r, nginx_same)} | {ratio(r, passthrough, True)} | {h2} | "
                     f"{h1['cpu_us']:.1f} | {r['rss_idle_kb']/1024:.1f} | {r['rss_1000_kb']/1024:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
