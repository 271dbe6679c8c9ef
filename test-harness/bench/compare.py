#!/usr/bin/env python3
"""Side-by-side benchmark: the same app, bare and behind each proxy, in one run.

Targets: the bare echo app; meshgate pass-through; meshgate with filter chains
(configs in test-harness/bench/chains/*.yaml, each a route named `bench`);
nginx and haproxy as reverse proxies (one worker each). Load: wrk (HTTP/1.1
keep-alive) and h2load (HTTP/2, h2c). Reports requests/s, p50/p99/p99.9
latency, CPU time per request of the proxy process, RSS idle and with 1,000
open connections, and ratios to nginx and to meshgate pass-through.

Usage: python3 test-harness/bench/compare.py [--duration 10] [--connections 32]
       [--write BENCHMARKS.md]
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
MARK_BEGIN = "<!-- compare.py:begin -->"
MARK_END = "<!-- compare.py:end -->"

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
                                     ("haproxy", "haproxy")] if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}")]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


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


def headers_lua(headers):
    return "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in headers.items())


def run_wrk(port, duration, connections, script):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script,
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--write", default=None, help="update this markdown file between the compare.py markers")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()

    ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "meshgate", "-p", "meshgate-test-harness", "--bins"],
                       cwd=ROOT, check=True)
    release = os.path.join(TARGET, "release")
    tmp = tempfile.mkdtemp(prefix="meshgate-bench-")

    app_port = free_port()
    app = subprocess.Popen([os.path.join(release, "meshgate-echo-app"), f"127.0.0.1:{app_port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "TOKIO_WORKER_THREADS": "1"})
    wait_port(app_port)

    targets = [("bare app", None)]
    targets.append(("meshgate pass-through", ("meshgate", None)))
    for chain in sorted(f for f in os.listdir(os.path.join(BENCH_DIR, "chains")) if f.endswith(".yaml")):
        targets.append((f"meshgate {chain[:-5]}", ("meshgate", os.path.join(BENCH_DIR, "chains", chain))))
    targets.append(("nginx", ("nginx", None)))
    targets.append(("haproxy", ("haproxy", None)))

    results = []
    for name, spec in targets:
        proc = None
        port = app_port
        if spec is not None:
            kind, chain = spec
            port = free_port()
            if kind == "meshgate":
                admin = free_port()
                cfg = os.path.join(tmp, f"meshgate-{port}.yaml")
                with open(cfg, "w") as f:
                    f.write(meshgate_config(port, admin, app_port, chain))
                # Filter keys/JWKS referenced by chain configs resolve against the config's directory.
                proc = subprocess.Popen([os.path.join(release, "meshgate"), "--config", cfg, "--concurrency", "1",
                                         "--log-level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            elif kind == "nginx":
                conf = os.path.join(tmp, f"nginx-{port}.conf")
                with open(conf, "w") as f:
                    f.write(f"""worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream app {{ server 127.0.0.1:{app_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }}
  }}
}}
""")
                proc = subprocess.Popen(["nginx", "-c", conf, "-e", f"{tmp}/nginx.err"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            elif kind == "haproxy":
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
                proc = subprocess.Popen(["haproxy", "-f", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port)
            time.sleep(0.5)
        headers = {}
        if spec is not None and spec[1] is not None:
            chain_name = os.path.basename(spec[1])[:-len(".yaml")]
            # Sign for the authority the load tool sends (host:port of the target).
            headers = json.loads(subprocess.run([sys.executable, os.path.join(BENCH_DIR, "chains", "headers.py"),
                                                 chain_name, f"http://127.0.0.1:{port}/bench"],
                                                check=True, capture_output=True, text=True).stdout)
        target_script = os.path.join(tmp, f"wrk-{port}.lua")
        with open(target_script, "w") as f:
            f.write(headers_lua(headers) + WRK_LUA)
        measured = proc if proc is not None else app
        pids = pids_of(measured)
        _, rss_idle = total_stats(pids)
        run_wrk(port, 2, args.connections, target_script)  # warm-up
        cpu0, _ = total_stats(pids)
        h1 = run_wrk(port, args.duration, args.connections, target_script)
        cpu1, _ = total_stats(pids)
        h2 = None
        if not (spec and spec[0] == "nginx"):  # nginx proxies h2 only with TLS here; skip h2c
            try:
                h2 = run_h2load(port, args.duration, args.connections, headers)
            except Exception as e:  # noqa: BLE001
                print(f"{name}: h2load failed: {e}", file=sys.stderr)
        socks = hold_connections(port, 1000)
        time.sleep(0.5)
        _, rss_1000 = total_stats(pids)
        for s in socks:
            s.close()
        cpu_us_per_req = (cpu1 - cpu0) * 1e6 / max(h1["requests"], 1)
        results.append({"name": name, "h1": h1, "h2": h2, "cpu_us": cpu_us_per_req, "rss_idle_kb": rss_idle,
                        "rss_1000_kb": rss_1000})
        print(f"{name:32s} h1 {h1['rps']:>9.0f} req/s p50 {h1['p50']/1000:.2f}ms p99 {h1['p99']/1000:.2f}ms "
              f"p99.9 {h1['p999']/1000:.2f}ms errors {h1['errors']} non2xx {h1['non2xx']} cpu {cpu_us_per_req:.1f}us/req "
              f"rss {rss_idle/1024:.1f}/{rss_1000/1024:.1f}MB" + (f" | h2 {h2['rps']:.0f} req/s" if h2 else ""), flush=True)
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    app.terminate()

    report = render(results, args)
    print(report)
    if args.write:
        path = os.path.join(ROOT, args.write) if not os.path.isabs(args.write) else args.write
        text = open(path).read() if os.path.exists(path) else ""
        block = f"{MARK_BEGIN}\n{report}\n{MARK_END}"
        if MARK_BEGIN in text:
            text = re.sub(re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END), lambda _: block, text, flags=re.S)
        else:
            text += "\n" + block + "\n"
        open(path, "w").write(text)


def render(results, args):
    by = {r["name"]: r for r in results}
    nginx = by.get("nginx")
    passthrough = by.get("meshgate pass-through")
    lines = [f"Command: `python3 test-harness/bench/compare.py --duration {args.duration} --connections {args.connections}`"
             f" ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load generator on the same machine, "
             f"every proxy limited to one worker thread/process)", "",
             "| target | HTTP/1.1 req/s | p50 ms | p99 ms | p99.9 ms | errors | vs nginx | vs pass-through | h2c req/s | CPU µs/req | RSS idle MB | RSS 1k conns MB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        h1 = r["h1"]
        vs_nginx = f"{h1['rps'] / nginx['h1']['rps']:.2f}" if nginx else "-"
        vs_pt = f"{h1['rps'] / passthrough['h1']['rps']:.2f}" if passthrough and r["name"].startswith("meshgate") else "-"
        h2 = f"{r['h2']['rps']:.0f}" if r["h2"] else "-"
        lines.append(f"| {r['name']} | {h1['rps']:.0f} | {h1['p50']/1000:.2f} | {h1['p99']/1000:.2f} | {h1['p999']/1000:.2f} | "
                     f"{h1['errors'] + h1['non2xx']} | {vs_nginx} | {vs_pt} | {h2} | {r['cpu_us']:.1f} | "
                     f"{r['rss_idle_kb']/1024:.1f} | {r['rss_1000_kb']/1024:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
