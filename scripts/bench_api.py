#!/usr/bin/env python3
"""Control-plane benchmark.

1. Process start to API socket ready, N runs of `hvlite run --api-sock S` (no kernel):
   - wall_ms: from just before the spawn (Python's monotonic clock) until connect() on
     the socket succeeds (polled every 0.1 ms);
   - self_wall_ms / self_cpu_ms: what hvlite itself logs when its socket listens: the
     time since main() started, and getrusage(RUSAGE_SELF) user+system CPU time of all
     its threads at that moment (microsecond resolution);
   - proc_cpu_ms: utime+stime from /proc/<pid>/stat read right after the connect
     (10 ms clock ticks: a cross-check only).
2. InstanceStart to the guest init's marker, M runs: the VM is configured over the API
   (boot source, 1 vCPU, 128 MiB), InstanceStart is sent, and the time runs until
   `hvlite-init: started` appears on the console (hvlite's stdout). Then SendCtrlAltDel
   and the time until hvlite exits.
3. Optionally (--compare-kernel K), the boot-time cost of the Ctrl-Alt-Del support: the
   same command-line boot to the init marker with kernel K (without i8042/atkbd/VT) and
   with the project kernel, alternating, M runs each (hvlite logs the marker time).
"""
import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

MARKER = b"hvlite-init: started"
READY = re.compile(r"API socket ready ([0-9.]+) ms after process start \(([0-9.]+) ms CPU\)")
INIT_LOG = re.compile(r"guest init started ([0-9]+) ms after process start")


def request(sock_path, method, path, body=None, timeout=120):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock_path)
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
    s.sendall(head.encode() + data)
    raw = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        raw += chunk
    s.close()
    status = int(raw.split(b" ", 2)[1])
    return status, raw.split(b"\r\n\r\n", 1)[1].decode(errors="replace")


def proc_cpu_ms(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks * 1000.0 / os.sysconf("SC_CLK_TCK")


def wait_socket(path, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            s.close()
            return time.monotonic()
        except OSError:
            s.close()
            if proc.poll() is not None:
                sys.exit(f"hvlite exited ({proc.returncode}) before its socket was up")
            time.sleep(0.0001)
    sys.exit("the API socket did not come up")


def socket_run(hvlite, workdir):
    sock = os.path.join(workdir, "api.sock")
    log = os.path.join(workdir, "hvlite.log")
    for p in (sock, log):
        if os.path.exists(p):
            os.unlink(p)
    env = dict(os.environ, HVLITE_LOG="info")
    t0 = time.monotonic()
    proc = subprocess.Popen([hvlite, "run", "--api-sock", sock, "--log", log, "--log-format", "text"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    t1 = wait_socket(sock, proc)
    cpu = proc_cpu_ms(proc.pid)
    # hvlite logs its own figures right after the socket listens: wait for the line.
    m = None
    deadline = time.monotonic() + 2
    while m is None and time.monotonic() < deadline:
        with open(log) as f:
            m = READY.search(f.read())
        if m is None:
            time.sleep(0.001)
    proc.terminate()
    proc.wait(timeout=10)
    rec = {"wall_ms": round((t1 - t0) * 1e3, 3), "proc_cpu_ms": cpu}
    if m:
        rec["self_wall_ms"] = float(m.group(1))
        rec["self_cpu_ms"] = float(m.group(2))
    return rec


def read_until(proc, needle, timeout):
    """Reads hvlite's stdout until `needle`; returns the time it was seen."""
    buf = b""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk:
            buf += chunk
            if needle in buf:
                return time.monotonic(), buf
        elif chunk == b"":
            break
        else:
            time.sleep(0.002)
    sys.exit(f"{needle!r} not seen; console tail:\n{buf[-2000:].decode(errors='replace')}")


def start_run(args, workdir):
    sock = os.path.join(workdir, "api.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    proc = subprocess.Popen([args.hvlite, "run", "--api-sock", sock],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    wait_socket(sock, proc)
    for path, body in [("/boot-source", {"kernel_image_path": args.kernel, "initrd_path": args.initrd}),
                       ("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})]:
        status, text = request(sock, "PUT", path, body)
        if status != 204:
            sys.exit(f"PUT {path}: {status} {text}")
    t0 = time.monotonic()
    status, text = request(sock, "PUT", "/actions", {"action_type": "InstanceStart"})
    t1 = time.monotonic()
    if status != 204:
        sys.exit(f"InstanceStart: {status} {text}")
    t2, _ = read_until(proc, MARKER, 600)
    # Let the shell start before pressing the keys.
    time.sleep(1)
    t3 = time.monotonic()
    status, text = request(sock, "PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    if status != 204:
        sys.exit(f"SendCtrlAltDel: {status} {text}")
    rc = proc.wait(timeout=120)
    t4 = time.monotonic()
    return {"instance_start_reply_ms": round((t1 - t0) * 1e3, 1),
            "instance_start_to_init_s": round(t2 - t0, 3),
            "ctrl_alt_del_to_exit_s": round(t4 - t3, 3), "exit_status": rc}


def cli_boot(args, kernel):
    p = subprocess.run([args.hvlite, "run", "--kernel", kernel, "--initrd", args.initrd, "--", "true"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=900,
                       env=dict(os.environ, HVLITE_LOG="info"))
    m = INIT_LOG.search(p.stderr.decode(errors="replace"))
    if p.returncode != 0 or not m:
        sys.exit(f"boot with {kernel} failed ({p.returncode}):\n{p.stderr.decode(errors='replace')}")
    return int(m.group(1)) / 1e3


def summary(values):
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hvlite", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--socket-runs", type=int, default=20)
    ap.add_argument("--boot-runs", type=int, default=3)
    ap.add_argument("--compare-kernel")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                    "kvm": "pvm" if os.path.exists("/sys/module/kvm_pvm") else "hardware"},
           "kernel": args.kernel, "initrd": args.initrd}
    with tempfile.TemporaryDirectory() as d:
        socket_runs = [socket_run(args.hvlite, d) for _ in range(args.socket_runs)]
        out["socket_ready"] = {
            "runs": socket_runs,
            "wall_ms": summary([r["wall_ms"] for r in socket_runs]),
            "self_wall_ms": summary([r["self_wall_ms"] for r in socket_runs if "self_wall_ms" in r]),
            "self_cpu_ms": summary([r["self_cpu_ms"] for r in socket_runs if "self_cpu_ms" in r]),
            "firecracker_published_cpu_ms": 8,
        }
        print(f"socket ready: wall {out['socket_ready']['wall_ms']} ms, "
              f"CPU {out['socket_ready']['self_cpu_ms']} ms", file=sys.stderr)
        if args.boot_runs == 0 and os.path.exists(args.out):
            # Socket figures only: keep the boot figures of the previous run.
            with open(args.out) as f:
                previous = json.load(f)
            previous.update({"date": out["date"], "socket_ready": out["socket_ready"]})
            out = previous
        boots = []
        for i in range(args.boot_runs):
            boots.append(start_run(args, d))
            print(f"api boot {i + 1}: {boots[-1]}", file=sys.stderr)
        if boots:
            out["instance_start"] = {
                "runs": boots,
                "to_init_s": summary([b["instance_start_to_init_s"] for b in boots]),
                "ctrl_alt_del_to_exit_s": summary([b["ctrl_alt_del_to_exit_s"] for b in boots]),
            }
    if args.compare_kernel and args.boot_runs > 0:
        without, with_ = [], []
        for i in range(args.boot_runs):
            without.append(cli_boot(args, args.compare_kernel))
            with_.append(cli_boot(args, args.kernel))
            print(f"boot {i + 1}: without i8042/VT {without[-1]} s, with {with_[-1]} s", file=sys.stderr)
        out["ctrl_alt_del_boot_cost"] = {
            "kernel_without": args.compare_kernel,
            "init_s_without": without, "init_s_with": with_,
            "median_cost_s": round(statistics.median(with_) - statistics.median(without), 3),
        }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("host",)}, indent=1)[:3000])


if __name__ == "__main__":
    main()
