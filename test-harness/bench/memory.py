#!/usr/bin/env python3
"""Where the sidecar's memory is at the pinned mode's moments, without the CPU runs.

Starts the release meshgate (pass-through, one worker) in front of
bench/fixed_upstream.c and reads /proc/PID/smaps_rollup (RSS, anonymous,
file-backed), the app connections open (ss) and, when the admin /metrics
exports them, jemalloc's statistics, at these moments:

  idle          before any load
  after wrk     after --load seconds of wrk -t1 -c32 (HTTP/1.1 keep-alive)
  1k held       1,000 keep-alive connections, each after one GET, 0.5 s later
                (compare.py's hold_connections)
  +1 s, +5 s    after the 1,000 closed (+5 s is compare.py's "after load")
  +N s          further readings with --later N[,N...]

Memory figures do not depend on CPU noise, so this runs on a busy machine.

Usage: python3 test-harness/bench/memory.py [--load 3] [--app 'max_idle_connections: 32']
       [--later 20,95] [--binary target/release/meshgate] [--repeat 1] [--mock] [--maps]
Build first, as the images do: docker/release-build.sh
(symbol_order.py: another package set links the code in another layout)
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
import symbol_order  # noqa: E402

JEMALLOC = ["allocated", "active", "resident", "metadata", "retained"]


def smaps(pid):
    """(rss, anonymous, file-backed) in KiB from /proc/PID/smaps_rollup."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
    rss, anon = fields.get("Rss", 0), fields.get("Anonymous", 0)
    return rss, anon, rss - anon


def file_maps(pid):
    """Resident KiB per mapped file (file-backed RSS by file), largest first."""
    per_file, current = {}, None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                current = parts[5] if len(parts) >= 6 and parts[5].startswith("/") else None
            elif current and parts[0] == "Rss:":
                per_file[current] = per_file.get(current, 0) + int(parts[1])
    return sorted(per_file.items(), key=lambda kv: -kv[1])


def app_connections(pid, app_port):
    """Established TCP connections of the process to the app's port."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( dport = :{app_port} )"],
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line)


def jemalloc(admin):
    """jemalloc's statistics from the admin /metrics (KiB), empty when not exported."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    stats = {}
    for line in text.splitlines():
        for name in JEMALLOC:
            prefix = f"meshgate_memory_{name}_bytes "
            if line.startswith(prefix):
                stats[name] = float(line[len(prefix):]) / 1024
    return stats


def reading(label, pid, app_port, admin, maps=False):
    rss, anon, file_backed = smaps(pid)
    if maps:
        for path, kib in file_maps(pid):
            if kib:
                print(f"{'':>12}    {kib / 1024:5.1f} MiB  {path}", flush=True)
    row = {"moment": label, "rss": rss, "anon": anon, "file": file_backed,
           "app": app_connections(pid, app_port), **jemalloc(admin)}
    print(f"{label:>12}  RSS {rss / 1024:6.1f}  anon {anon / 1024:6.1f}  file {file_backed / 1024:5.1f} MiB  "
          f"app conns {row['app']:4d}" + "".join(f"  {k} {row[k] / 1024:.1f}" for k in JEMALLOC if k in row),
          flush=True)
    return row


def run_once(args, upstream_bin, tmp):
    upstream_port, port, admin = compare.free_port(), compare.free_port(), compare.free_port()
    upstream = subprocess.Popen([upstream_bin, str(upstream_port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    proc = None
    rows = []
    try:
        compare.wait_port(upstream_port)
        cfg = os.path.join(tmp, f"meshgate-{port}.yaml")
        app = f"address: \"127.0.0.1:{upstream_port}\"" + (f", {args.app}" if args.app else "")
        with open(cfg, "w") as f:
            f.write(f"inbound: {{ listen: \"127.0.0.1:{port}\" }}\napp: {{ {app} }}\n"
                    f"admin: {{ listen: \"127.0.0.1:{admin}\" }}\n"
                    "routes:\n  - name: bench\n    match: { path_prefix: / }\n"
                    + ("    respond: { status: 200, body: hello }\n" if args.mock else ""))
        proc = subprocess.Popen([args.binary, "--config", cfg, "--concurrency", "1", "--log-level", "warn"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        compare.wait_port(port)
        time.sleep(0.5)
        pid = proc.pid
        rows.append(reading("idle", pid, upstream_port, admin, args.maps))
        if args.load > 0:
            script = os.path.join(tmp, f"wrk-{port}.lua")
            with open(script, "w") as f:
                f.write(compare.request_lua(compare.PASS_THROUGH_REQUEST) + compare.WRK_LUA)
            r = compare.run_wrk(port, args.load, 32, script)
            print(f"{'':>12}  wrk {r['rps']:.0f} req/s, errors {r['errors'] + r['non2xx']}", flush=True)
            rows.append(reading("after wrk", pid, upstream_port, admin, args.maps))
        socks = compare.hold_connections(port, 1000)
        time.sleep(0.5)
        rows.append(reading("1k held", pid, upstream_port, admin, args.maps))
        for s in socks:
            s.close()
        closed = time.monotonic()
        for at in [1, 5] + [int(x) for x in args.later.split(",") if x]:
            time.sleep(max(0.0, closed + at - time.monotonic()))
            rows.append(reading(f"+{at} s", pid, upstream_port, admin, args.maps))
    finally:
        compare.stop(proc)
        compare.stop(upstream)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(compare.TARGET, "release", "meshgate"))
    ap.add_argument("--load", type=int, default=3, help="seconds of wrk -c32 before the 1,000 connections")
    ap.add_argument("--app", default="", help="extra app: settings, e.g. 'max_idle_connections: 32'")
    ap.add_argument("--later", default="", help="further readings, seconds after the close, e.g. 20,95")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--maps", action="store_true", help="file-backed RSS per mapped file at each reading")
    ap.add_argument("--mock", action="store_true",
                    help="the route answers itself: inbound connections only, no app connections")
    args = ap.parse_args()
    # The code's layout decides most of the file-backed figure (symbol_order.py).
    print("symbol order: " + symbol_order.describe(args.binary), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        upstream_bin = compare.build_upstream(tmp)
        for i in range(args.repeat):
            if args.repeat > 1:
                print(f"run {i + 1}", flush=True)
            run_once(args, upstream_bin, tmp)


if __name__ == "__main__":
    main()
