#!/usr/bin/env python3
"""Maps a guest RIP histogram (HVLITE_GUEST_PROFILE=FILE hvlite run ...) to kernel symbols.

usage: guest-profile.py SAMPLES System.map [TOP]
Prints the functions with the most samples and their share of all samples; user-mode
samples (RIP below the kernel) are grouped as [user].
"""
import bisect
import collections
import sys


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    samples_path, map_path = sys.argv[1], sys.argv[2]
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    syms = []
    with open(map_path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tTwW":
                syms.append((int(parts[0], 16), parts[2]))
    syms.sort()
    addrs = [a for a, _ in syms]
    per_fn = collections.Counter()
    total = 0
    with open(samples_path) as f:
        for line in f:
            rip_s, count_s = line.split()
            rip, count = int(rip_s, 16), int(count_s)
            total += count
            if rip < 0xffff800000000000:
                per_fn["[user]"] += count
                continue
            i = bisect.bisect_right(addrs, rip) - 1
            per_fn[syms[i][1] if i >= 0 else "[unknown]"] += count
    print(f"{total} samples")
    for name, count in per_fn.most_common(top):
        print(f"{100.0 * count / total:6.2f}%  {count:7d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
