#!/usr/bin/env python3
"""Which crates' code of a running meshgate is resident, page by page.

Reads the present bit of every page of the binary's executable mapping from
/proc/PID/pagemap (no root needed for that bit) and names each resident 4 KiB
page after the function its first byte belongs to (`nm -n --demangle` of the
binary), grouped by the leading path segment (the crate). A page names one
function only, so small crates are approximate; what it shows well is code
resident that the process never ran: the kernel maps up to 64 KiB around each
faulting page when those pages are in the page cache (fault-around), so code
that sits next to code that runs is resident too.

Usage: python3 test-harness/bench/resident_code.py PID [--top 30]
       (memory.py starts a pass-through meshgate and loads it; run this
       against any meshgate process, e.g. `pgrep -n meshgate`)
"""
import argparse
import bisect
import collections
import os
import re
import struct
import subprocess

PAGE = 4096


def crate_of(symbol):
    name = re.sub(r"^<+", "", symbol)
    name = re.sub(r"^(impl |dyn )", "", name)
    m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", name)
    return m.group(0) if m else "?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pid", type=int)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    binary = os.readlink(f"/proc/{args.pid}/exe")
    base, text = None, []
    with open(f"/proc/{args.pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 6 or parts[5] != binary:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if int(parts[2], 16) == 0 and base is None:
                base = lo
            if "x" in parts[1]:
                text.append((lo, hi))
    nm = subprocess.run(["nm", "-n", "--demangle", "--defined-only", binary],
                        capture_output=True, text=True, check=True).stdout
    symbols = []
    for line in nm.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            symbols.append((int(parts[0], 16), parts[2]))
    addresses = [a for a, _ in symbols]
    by_crate, resident, mapped = collections.Counter(), 0, 0
    with open(f"/proc/{args.pid}/pagemap", "rb") as pagemap:
        for lo, hi in text:
            for page in range(lo, hi, PAGE):
                mapped += 1
                pagemap.seek(page // PAGE * 8)
                (entry,) = struct.unpack("Q", pagemap.read(8))
                if not entry >> 63 & 1:
                    continue
                resident += 1
                i = bisect.bisect_right(addresses, page - base) - 1
                by_crate[crate_of(symbols[i][1]) if i >= 0 else "?"] += 1
    print(f"{binary}: {resident * PAGE / 2**20:.1f} of {mapped * PAGE / 2**20:.1f} MiB of code resident")
    for crate, pages in by_crate.most_common(args.top):
        print(f"{pages * PAGE // 1024:7d} KiB  {crate}")


if __name__ == "__main__":
    main()
