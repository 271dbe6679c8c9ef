#!/usr/bin/env python3
"""Regenerates sidecar/link/meshgate.profdata: the execution profile the release build is optimised with.

docker/release-build.sh (the images' build, and the benchmarks') passes it to
rustc (`-Cprofile-use`), and LLVM inlines and lays out code by how often each
branch and call ran. This script writes it from a release meshgate built
with instrumentation (`-Cprofile-generate`, in target/pgo-generate; same
package set as the images, so the same functions) serving the scenarios of
symbol_order.py natively: start-up, the admin API, pass-through over HTTP/1.1
(the bulk, as in production most requests pass the data path) and h2c, the
access log on, every benchmark chain with its request, and the drain at
SIGTERM. The profiles are merged sparse (functions that never ran are left
out) by the toolchain's llvm-profdata (rustup's llvm-tools component,
installed when missing), and meshgate.profdata.txt records the LLVM version
that wrote it: release-build.sh skips the profile under an older LLVM.

Regenerate after a toolchain update or a change to the data path, then
rebuild and regenerate the symbol order (PGO changes what is inlined):
    python3 test-harness/bench/pgo.py
    docker/release-build.sh
    python3 test-harness/bench/symbol_order.py && docker/release-build.sh
(needs h2load, gcc, rustup; about 8 minutes on 2 cores, most of it the build).
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
import symbol_order  # noqa: E402

PROFILE = os.path.join(compare.ROOT, "sidecar", "link", "meshgate.profdata")
# Requests per scenario and protocol; pass-through over HTTP/1.1 weighs most.
PASS_THROUGH_REQUESTS = 50000
OTHER_REQUESTS = 5000


def llvm_profdata():
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True,
                             check=True).stdout.strip()
    host = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    host = next(line.split(": ", 1)[1] for line in host.splitlines() if line.startswith("host: "))
    tool = os.path.join(sysroot, "lib", "rustlib", host, "bin", "llvm-profdata")
    if not os.path.exists(tool):
        subprocess.run(["rustup", "component", "add", "llvm-tools"], check=True)
    return tool


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=PROFILE)
    ap.add_argument("--no-build", action="store_true", help="use the instrumented build already in target/pgo-generate")
    args = ap.parse_args()
    compare.ensure_tools()
    profdata = llvm_profdata()
    target = os.path.join(compare.TARGET, "pgo-generate")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, CARGO_TARGET_DIR=target, MESHGATE_NO_PGO="1",
                   # Build scripts run instrumented too; their profiles go here, unused.
                   RUSTFLAGS=f"-Cprofile-generate={os.path.join(tmp, 'build-scripts')}")
        if not args.no_build:
            subprocess.run(compare.RELEASE_BUILD + ["--bin", "meshgate"], check=True, env=env)
        binary = os.path.join(target, "release", "meshgate")
        raw = os.path.join(tmp, "raw")
        run_env = dict(os.environ, LLVM_PROFILE_FILE=os.path.join(raw, "meshgate-%p.profraw"))
        upstream_port = compare.free_port()
        upstream = subprocess.Popen([compare.build_upstream(tmp), str(upstream_port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            compare.wait_port(upstream_port)
            for chain, level, protocols in symbol_order.SCENARIOS:
                requests = PASS_THROUGH_REQUESTS if chain is None and level == "warn" else OTHER_REQUESTS
                symbol_order.drive([binary], upstream_port, chain, level, protocols, tmp, requests, run_env)
                print(f"{chain or 'pass-through'} ({level}, {'+'.join(protocols)}): {requests} requests each",
                      file=sys.stderr)
        finally:
            compare.stop(upstream)
        profiles = sorted(glob.glob(os.path.join(raw, "*.profraw")))
        if len(profiles) != len(symbol_order.SCENARIOS):
            sys.exit(f"expected a profile from each of the {len(symbol_order.SCENARIOS)} scenarios, got {len(profiles)}")
        subprocess.run([profdata, "merge", "--sparse", "-o", args.out, *profiles], check=True)
    version = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    llvm = next(line.split(": ", 1)[1] for line in version.splitlines() if line.startswith("LLVM version: "))
    rustc = version.splitlines()[0]
    with open(args.out + ".txt", "w") as f:
        f.write(f"llvm {llvm}\n{rustc}\nWritten by test-harness/bench/pgo.py (see there); read by docker/release-build.sh.\n")
    print(f"{args.out}: {os.path.getsize(args.out)} bytes from {len(profiles)} scenarios ({rustc}, LLVM {llvm})")


if __name__ == "__main__":
    main()
