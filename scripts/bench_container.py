#!/usr/bin/env python3
"""Container benchmark: hvlite (a microVM per container) against runc (a plain container).

Both run /bin/true in the same busybox root directory. For each hvlite run it also reads
hvlite's log for where the time went: root filesystem preparation, process start to the
first KVM_RUN, to the guest agent's connection (kernel boot + agent setup), to the
process's exit. One extra hvlite run uses an empty cache, to time the cold path (building
the root and agent disk images). Then one run measures virtio-vsock throughput guest ->
host: the guest's `hvlite-vsock send` streams N MiB to a host Unix socket.
"""
import argparse
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

LOG_PATTERNS = {
    "rootfs_ms": re.compile(r"rootfs: .*\(([^,]+), ([0-9.]+) ms\)"),
    "first_kvm_run_ms": re.compile(r"first KVM_RUN ([0-9.]+) ms"),
    "agent_connected_ms": re.compile(r"guest agent connected ([0-9.]+) ms"),
    "process_ended_ms": re.compile(r"container process ended .* ([0-9.]+) ms"),
    "vcpus": re.compile(r"container VM: ([0-9]+) vCPU"),
}


def parse_log(stderr):
    found = {}
    for name, rx in LOG_PATTERNS.items():
        m = rx.search(stderr)
        if m:
            found[name] = float(m.group(m.lastindex))
            if name == "rootfs_ms":
                found["rootfs_kind"] = m.group(1)
    return found


def run_hvlite(args, env):
    cmd = [args.hvlite, "run", "--kernel", args.kernel, "--rootfs", args.rootfs, "--", "/bin/true"]
    start = time.monotonic()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=900)
    wall = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"hvlite failed ({p.returncode}):\n{p.stderr.decode(errors='replace')}")
    rec = {"wall_s": round(wall, 3)}
    rec.update(parse_log(p.stderr.decode(errors="replace")))
    return rec


def runc_bundle(rootfs, workdir, args=("/bin/true",), readonly=True, netns=None, name="bundle"):
    """An OCI bundle (runc's default spec) running `args` in `rootfs`; with `netns`, the
    container joins that network namespace (a path such as /run/netns/NAME)."""
    bundle = os.path.join(workdir, name)
    os.makedirs(bundle)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    with open(os.path.join(bundle, "config.json")) as f:
        cfg = json.load(f)
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = list(args)
    cfg["root"] = {"path": os.path.abspath(rootfs), "readonly": readonly}
    if netns:
        for ns in cfg["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = netns
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(cfg, f)
    return bundle


def run_runc(bundle, i):
    cid = f"hvlite-bench-{os.getpid()}-{i}"
    start = time.monotonic()
    p = subprocess.run(["runc", "run", "--bundle", bundle, cid], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=120)
    wall = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"runc failed ({p.returncode}):\n{p.stderr.decode(errors='replace')}")
    return {"wall_s": round(wall, 4)}


def vsock_throughput(args, env, workdir):
    size = args.vsock_mib << 20
    uds = os.path.join(workdir, "v.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(uds + "_6000")
    listener.listen(1)
    result = {}

    def accept():
        conn, _ = listener.accept()
        got, first = 0, None
        while True:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            if first is None:
                first = time.monotonic()
            got += len(chunk)
        result["bytes"] = got
        result["host_s"] = time.monotonic() - (first or time.monotonic())

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    cmd = [args.hvlite, "run", "--kernel", args.kernel, "--rootfs", args.rootfs,
           "--vsock", f"cid=3,uds={uds}", "--", "hvlite-vsock", "send", "2", "6000", str(size)]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=1800)
    t.join(timeout=30)
    err = p.stderr.decode(errors="replace")
    if p.returncode != 0 or result.get("bytes") != size:
        sys.exit(f"vsock run failed ({p.returncode}, {result}):\n{err}")
    mib_s = size / (1 << 20) / result["host_s"] if result["host_s"] > 0 else None
    guest_line = next((l for l in err.splitlines() if "MiB/s" in l), "")
    return {"mib": args.vsock_mib, "host_seconds": round(result["host_s"], 3),
            "mib_per_s": round(mib_s, 3) if mib_s else None, "guest_report": guest_line.strip()}


def median(rows, key):
    vals = [r[key] for r in rows if key in r]
    return round(statistics.median(vals), 3) if vals else None


def main():
    ap = argparse.ArgumentParser()
    for a in ("--hvlite", "--kernel", "--agent", "--rootfs", "--out"):
        ap.add_argument(a, required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vsock-mib", type=int, default=16)
    args = ap.parse_args()
    env = dict(os.environ, HVLITE_AGENT=args.agent, HVLITE_LOG="info")

    workdir = tempfile.mkdtemp(prefix="hvlite-bench-container-")
    try:
        cold_env = dict(env, HVLITE_CACHE=os.path.join(workdir, "cache"))
        cold = run_hvlite(args, cold_env)
        print(f"hvlite cold cache: {cold}", file=sys.stderr)
        hv = []
        for i in range(args.runs):
            hv.append(run_hvlite(args, env))
            print(f"hvlite run {i + 1}: {hv[-1]}", file=sys.stderr)
        bundle = runc_bundle(args.rootfs, workdir)
        rc = [run_runc(bundle, i) for i in range(args.runs)]
        print(f"runc runs: {[r['wall_s'] for r in rc]}", file=sys.stderr)
        vs = vsock_throughput(args, env, workdir)
        print(f"vsock: {vs}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    summary = {
        "hvlite_vcpus": median(hv, "vcpus"),
        "hvlite_wall_s": median(hv, "wall_s"),
        "runc_wall_s": median(rc, "wall_s"),
        "hvlite_first_kvm_run_ms": median(hv, "first_kvm_run_ms"),
        "hvlite_agent_connected_ms": median(hv, "agent_connected_ms"),
        "hvlite_process_ended_ms": median(hv, "process_ended_ms"),
        "hvlite_rootfs_warm_ms": median(hv, "rootfs_ms"),
        "hvlite_rootfs_cold_ms": cold.get("rootfs_ms"),
        "hvlite_cold_wall_s": cold.get("wall_s"),
    }
    if summary["hvlite_wall_s"] and summary["runc_wall_s"]:
        summary["ratio"] = round(summary["hvlite_wall_s"] / summary["runc_wall_s"], 1)
    report = {"host": platform.node(), "kernel": platform.release(), "runs": args.runs,
              "command": "/bin/true", "summary": summary, "vsock_guest_to_host": vs,
              "hvlite": hv, "hvlite_cold": cold, "runc": rc}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({"summary": summary, "vsock_guest_to_host": vs}, indent=2))


if __name__ == "__main__":
    main()
