#!/usr/bin/env bash
# Userspace instructions per request of the meshgate process under callgrind
# (BENCHMARKS.md): the release binary with one worker, counters zeroed after
# a warm-up of 500 requests, dumped after `h2load --h1 -n 4000 -c 16`.
#
# Usage: callgrind.sh MESHGATE_BINARY APP_BINARY [CHAIN [REQUEST]]
#   CHAIN: a chains/*.yaml name (e.g. full-chain, alipay-rsa2); none or "-"
#   means pass-through. REQUEST: the chain whose request (headers.py: method,
#   target, headers, body) is sent; CHAIN's own by default, so
#   `- alipay-rsa2` is pass-through of the Alipay chain's POST.
#   APP_BINARY is started with 127.0.0.1:PORT (the echo app, or a wrapper).
# CALLGRIND_KEEP=DIR keeps the callgrind output there, for callgrind_annotate.
# The totals are right for any build; for a profile by function, build with
# thin LTO (CARGO_PROFILE_RELEASE_LTO=thin CARGO_PROFILE_RELEASE_CODEGEN_UNITS=4
# cargo build --release -p meshgate --target-dir target/thin): callgrind_annotate
# puts nearly all of a fat-LTO binary's cost on one frame.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
meshgate=$1 echo_app=$2 chain=${3:-}
[ "$chain" = "-" ] && chain=
request=${4:-$chain}
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
app_port=$(port) inbound=$(port) admin=$(port)
"$echo_app" "127.0.0.1:$app_port" >/dev/null 2>&1 & pids+=($!)
{
  echo "inbound: { listen: \"127.0.0.1:$inbound\" }"
  echo "app: { address: \"127.0.0.1:$app_port\" }"
  echo "admin: { listen: \"127.0.0.1:$admin\" }"
  if [ -n "$chain" ]; then cat "$here/chains/$chain.yaml"; else
    printf 'routes:\n  - name: bench\n    match: { path_prefix: / }\n'; fi
} > "$here/chains/.callgrind-$$.yaml"
cfg="$here/chains/.callgrind-$$.yaml"
trap 'cleanup; rm -f "$cfg"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.out.%p" \
  "$meshgate" --config "$cfg" --concurrency 1 --log-level warn >/dev/null 2>"$tmp/vg.err" & vg=$!
pids+=($vg)
for _ in $(seq 1 600); do
  curl -s -o /dev/null "http://127.0.0.1:$admin/ready" && break; sleep 0.1; done
url="http://127.0.0.1:$inbound/bench"
args=()
if [ -n "$request" ]; then
  python3 "$here/chains/headers.py" "$request" "$url" > "$tmp/request.json"
  # h2load sends a body (and so a POST) from a file given with -d.
  python3 - "$tmp/request.json" "$tmp/body" > "$tmp/args" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for k, v in r["headers"].items():
    print("-H"); print(f"{k}: {v}")
if r.get("body"):
    open(sys.argv[2], "w").write(r["body"])
    print("-d"); print(sys.argv[2])
print(r["path"])
PY
  mapfile -t args < "$tmp/args"
  url="http://127.0.0.1:$inbound${args[-1]}"
  unset 'args[-1]'
fi
# Counts of failed requests measure the wrong path: every answer must be 2xx.
load() {
  local n=$1 codes
  codes=$(h2load --h1 -n "$n" -c 16 "${args[@]}" "$url" | grep -E "^status codes")
  echo "$codes" >&2
  [[ "$codes" == "status codes: $n 2xx, 0 3xx, 0 4xx, 0 5xx" ]] \
    || { echo "callgrind.sh: not every request was answered 2xx" >&2; exit 1; }
}
load 500
callgrind_control -z "$vg" >/dev/null
load 4000
callgrind_control -d "$vg" >/dev/null
sleep 1
ir=$(grep -h "^summary:\|^totals:" "$tmp"/cg.out.* | awk '{print $2}' | sort -n | tail -1)
if [ -n "${CALLGRIND_KEEP:-}" ]; then mkdir -p "$CALLGRIND_KEEP" && cp "$tmp"/cg.out.* "$CALLGRIND_KEEP"/; fi
python3 -c "print(f'{$ir} instructions, {$ir/4000/1000:.1f} k per request')"
