#!/usr/bin/env python3
"""virtio-blk through a real guest: sequential read/write throughput and 4 KiB request
rate of /dev/vdb in the guest (busybox dd, timed with /proc/uptime inside the guest)
against the same dd commands on the host file. Writes JSON."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

# Small sizes: every byte the guest kernel copies is emulated on PVM hosts. O_DIRECT keeps
# the guest page cache (an emulated memcpy per byte) out of the measurement.
SEQ_MIB = 16
RAND_COUNT = 1000


def host_dd(args):
    start = time.monotonic()
    subprocess.run(["dd"] + args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hvlite", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--workdir", default="/tmp/hvlite-bench-blk")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    os.makedirs(args.workdir, exist_ok=True)
    root = os.path.join(args.workdir, "root.ext4")
    data = os.path.join(args.workdir, "data.img")
    shutil.copyfile(args.rootfs, root)
    with open(data, "wb") as f:
        f.truncate(SEQ_MIB * 2 << 20)

    # Host side, same file, same dd. Warm the page cache first (the guest's reads are
    # served from the host page cache too).
    host_dd([f"if={data}", "of=/dev/null", "bs=1M"])
    raw = {
        "seq_read_s": host_dd([f"if={data}", "of=/dev/null", "bs=1M", f"count={SEQ_MIB}",
                               "iflag=direct"]),
        "seq_write_s": host_dd(["if=/dev/zero", f"of={data}", "bs=1M", f"count={SEQ_MIB}",
                                "oflag=direct", "conv=fsync,notrunc"]),
        "rand_4k_s": host_dd([f"if={data}", "of=/dev/null", "bs=4k", f"count={RAND_COUNT}",
                              "iflag=direct"]),
    }

    script = (
        "t() { cut -d' ' -f1 /proc/uptime; }; "
        f"a=$(t); dd if=/dev/vdb of=/dev/null bs=1M count={SEQ_MIB} iflag=direct 2>/dev/null; b=$(t); "
        f"dd if=/dev/zero of=/dev/vdb bs=1M count={SEQ_MIB} oflag=direct conv=fsync 2>/dev/null; c=$(t); "
        f"dd if=/dev/vdb of=/dev/null bs=4k count={RAND_COUNT} iflag=direct 2>/dev/null; d=$(t); "
        "echo BENCH $a $b $c $d"
    )
    cmd = [args.hvlite, "run", "--kernel", args.kernel, "--disk", root, "--disk", data,
           "--cmdline", "root=/dev/vda", "--", "/bin/sh", "-c", script]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800)
    m = re.search(r"BENCH ([0-9.]+) ([0-9.]+) ([0-9.]+) ([0-9.]+)", p.stdout)
    if p.returncode != 0 or not m:
        print(p.stdout[-3000:], p.stderr[-3000:], file=sys.stderr)
        return 1
    a, b, c, d = map(float, m.groups())
    guest = {"seq_read_s": b - a, "seq_write_s": c - b, "rand_4k_s": d - c}

    def mib_s(seconds):
        return SEQ_MIB / seconds if seconds > 0 else None

    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kvm": "pvm" if os.path.exists("/sys/module/kvm_pvm") else "hardware",
        "seq_mib": SEQ_MIB, "rand_4k_count": RAND_COUNT,
        "guest": {"seq_read_mib_s": mib_s(guest["seq_read_s"]),
                  "seq_write_mib_s": mib_s(guest["seq_write_s"]),
                  "rand_4k_iops": RAND_COUNT / guest["rand_4k_s"] if guest["rand_4k_s"] > 0 else None,
                  "seconds": guest},
        "host_raw": {"seq_read_mib_s": mib_s(raw["seq_read_s"]),
                     "seq_write_mib_s": mib_s(raw["seq_write_s"]),
                     "rand_4k_iops": RAND_COUNT / raw["rand_4k_s"],
                     "seconds": raw},
        "note": "O_DIRECT on both sides; guest timings have /proc/uptime's 10 ms resolution",
    }
    for k in ("seq_read_mib_s", "seq_write_mib_s", "rand_4k_iops"):
        g, r = result["guest"][k], result["host_raw"][k]
        result.setdefault("ratio_guest_over_raw", {})[k] = (g / r) if g and r else None
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
