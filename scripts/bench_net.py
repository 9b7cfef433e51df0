#!/usr/bin/env python3
"""virtio-net through a real guest, in a private network namespace: TCP throughput
guest->host and host->guest (busybox nc in the guest, Python on the host), and ping
round-trip times both ways. Writes JSON."""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

NS = f"hvl-bench-{os.getpid()}"
TAP, HOST_IP, GUEST_IP = "hvbtap0", "172.16.0.1", "172.16.0.2"
PAYLOAD = 256 * 1024


def sh(*cmd):
    subprocess.run(cmd, check=True)


def in_ns(*cmd):
    return ["ip", "netns", "exec", NS, *cmd]


SINK = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
c, _ = s.accept(); t = time.monotonic(); n = 0
while True:
    d = c.recv(65536)
    if not d: break
    n += len(d)
print(n, time.monotonic() - t, flush=True)
"""

SOURCE = r"""
import socket, sys, time
deadline = time.monotonic() + 300
while True:
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.2)
data = bytes(int(sys.argv[3])); t = time.monotonic()
c.sendall(data); c.shutdown(socket.SHUT_WR)
while c.recv(65536): pass
print(len(data), time.monotonic() - t, flush=True)
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hvlite", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    sh("ip", "netns", "add", NS)
    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        sh("ip", "-n", NS, "tuntap", "add", "dev", TAP, "mode", "tap")
        sh("ip", "-n", NS, "addr", "add", f"{HOST_IP}/24", "dev", TAP)
        sh("ip", "-n", NS, "link", "set", TAP, "up")
        sink = subprocess.Popen(in_ns("python3", "-c", SINK, HOST_IP, "5002"),
                                stdout=subprocess.PIPE, text=True)
        script = (
            "t() { cut -d' ' -f1 /proc/uptime; }; "
            f"ping -c 5 {HOST_IP} | tail -1; "
            f"dd if=/dev/zero of=/tmp/z bs=1024 count={PAYLOAD // 1024} 2>/dev/null; "
            f"a=$(t); nc {HOST_IP} 5002 < /tmp/z; b=$(t); echo G2H $a $b; "
            "echo LISTENING; nc -l -p 5003 > /dev/null; echo DONE"
        )
        vm = subprocess.Popen(
            in_ns(args.hvlite, "run", "--kernel", args.kernel, "--initrd", args.initrd,
                  "--net", f"tap={TAP}", "--cmdline",
                  f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off",
                  "--", "/bin/sh", "-c", script),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        out = []
        host_ping = h2g = None
        for line in vm.stdout:
            out.append(line)
            if "LISTENING" in line:
                p = subprocess.run(in_ns("busybox", "ping", "-c", "5", GUEST_IP),
                                   capture_output=True, text=True)
                host_ping = p.stdout.strip().splitlines()[-1] if p.stdout else None
                src = subprocess.run(in_ns("python3", "-c", SOURCE, GUEST_IP, "5003", str(PAYLOAD)),
                                     capture_output=True, text=True, timeout=900)
                h2g = src.stdout.split()
        vm.wait(timeout=900)
        sink_out = sink.communicate(timeout=60)[0].split()
    finally:
        subprocess.run(["ip", "netns", "del", NS])
    text = "".join(out)
    g2h = re.search(r"G2H ([0-9.]+) ([0-9.]+)", text)
    guest_ping = re.search(r"round-trip min/avg/max = ([0-9.]+)/([0-9.]+)/([0-9.]+)", text)
    host_ping_m = re.search(r"min/avg/max = ([0-9.]+)/([0-9.]+)/([0-9.]+)", host_ping or "")
    if not (g2h and h2g and guest_ping):
        print(text[-3000:], file=sys.stderr)
        return 1
    g2h_s = float(g2h.group(2)) - float(g2h.group(1))
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kvm": "pvm" if os.path.exists("/sys/module/kvm_pvm") else "hardware",
        "payload_bytes": PAYLOAD,
        "guest_to_host_kib_s": PAYLOAD / 1024 / g2h_s if g2h_s > 0 else None,
        "guest_to_host_sink": {"bytes": int(sink_out[0]), "seconds": float(sink_out[1])} if sink_out else None,
        "host_to_guest_kib_s": int(h2g[0]) / 1024 / float(h2g[1]),
        "ping_guest_to_host_ms": {"min": float(guest_ping.group(1)), "avg": float(guest_ping.group(2)),
                                  "max": float(guest_ping.group(3))},
        "ping_host_to_guest_ms": {"min": float(host_ping_m.group(1)), "avg": float(host_ping_m.group(2)),
                                  "max": float(host_ping_m.group(3))} if host_ping_m else None,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
