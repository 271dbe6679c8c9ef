#!/usr/bin/env bash
# Userspace instructions per request of the meshgate process under callgrind
# (BENCHMARKS.md): the release binary with one worker, counters zeroed after
# a warm-up of 500 requests, dumped after `h2load --h1 -n 4000 -c 16`.
#
# Usage: callgrind.sh MESHGATE_BINARY ECHO_APP_BINARY [CHAIN]
#   CHAIN: a chains/*.yaml name of a GET chain (e.g. full-chain); none means
#   pass-through.
# CALLGRIND_KEEP=DIR keeps the callgrind output there, for callgrind_annotate.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
meshgate=$1 echo_app=$2 chain=${3:-}
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
headers=()
if [ -n "$chain" ]; then
  while IFS= read -r h; do headers+=(-H "$h"); done < <(python3 "$here/chains/headers.py" "$chain" "$url" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); [print(f"{k}: {v}") for k,v in r["headers"].items()]')
fi
h2load --h1 -n 500 -c 16 "${headers[@]}" "$url" | grep -E "^status codes" >&2
callgrind_control -z "$vg" >/dev/null
h2load --h1 -n 4000 -c 16 "${headers[@]}" "$url" | grep -E "^status codes" >&2
callgrind_control -d "$vg" >/dev/null
sleep 1
ir=$(grep -h "^summary:\|^totals:" "$tmp"/cg.out.* | awk '{print $2}' | sort -n | tail -1)
if [ -n "${CALLGRIND_KEEP:-}" ]; then mkdir -p "$CALLGRIND_KEEP" && cp "$tmp"/cg.out.* "$CALLGRIND_KEEP"/; fi
python3 -c "print(f'{$ir} instructions, {$ir/4000/1000:.1f} k per request')"
