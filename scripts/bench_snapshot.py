#!/usr/bin/env python3
"""Snapshot benchmark.

One Linux guest (the project kernel and initramfs, 1 vCPU, --memory MiB) is booted with an
API socket until its command runs (an idle shell loop), then paused, and:
1. snapshot create: PUT /snapshot/create, N times, the request's wall time;
2. file sizes: the state file, the memory file's length and its allocated bytes (sparse);
3. `hvlite run --restore DIR`, N runs: what hvlite logs ("snapshot restored in X ms" and
   "first KVM_RUN X ms after process start"), and the wall time from the spawn until the
   guest prints its next tick (the guest is running again);
4. PUT /snapshot/load into a fresh `hvlite run --api-sock`, N runs: the request's wall time;
5. memory: PSS (smaps_rollup) of K VMs restored from the one snapshot at once against
   COLD cold-booted VMs (each idle in the same loop).
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_api import read_until, request, summary, wait_socket  # noqa: E402

GUEST_CMD = "echo BENCH-READY; while :; do echo tick; sleep 1; done"
RESTORED = re.compile(r"snapshot restored in ([0-9.]+) ms")
FIRST_RUN = re.compile(r"first KVM_RUN ([0-9.]+) ms after process start")


def boot(args, workdir, name):
    sock = os.path.join(workdir, f"{name}.sock")
    proc = subprocess.Popen(
        [args.hvlite, "run", "--kernel", args.kernel, "--initrd", args.initrd,
         "--memory", str(args.memory), "--api-sock", sock, "--", "/bin/sh", "-c", GUEST_CMD],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return proc, sock


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss for {pid}")


def stop(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def restore_cli(args, snap):
    """One `hvlite run --restore`: (hvlite's restore ms, its first-KVM_RUN ms, wall ms
    from the spawn to the guest's next tick)."""
    t0 = time.monotonic()
    proc = subprocess.Popen([args.hvlite, "run", "--restore", snap],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    seen, _ = read_until(proc, b"tick", 30)
    proc.kill()
    _, err = proc.communicate()
    err = err.decode(errors="replace")
    restored, first = RESTORED.search(err), FIRST_RUN.search(err)
    if not (restored and first):
        sys.exit(f"hvlite did not log its restore:\n{err}")
    return float(restored.group(1)), float(first.group(1)), (seen - t0) * 1e3


def load_api(args, workdir, snap, i):
    sock = os.path.join(workdir, f"load{i}.sock")
    proc = subprocess.Popen([args.hvlite, "run", "--api-sock", sock],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_socket(sock, proc)
    body = {"snapshot_path": os.path.join(snap, "state"),
            "mem_backend": {"backend_type": "File",
                            "backend_path": os.path.join(snap, "memory")},
            "resume_vm": True}
    t0 = time.monotonic()
    status, text = request(sock, "PUT", "/snapshot/load", body)
    ms = (time.monotonic() - t0) * 1e3
    stop([proc])
    if status != 204:
        sys.exit(f"snapshot load answered {status}: {text}")
    return ms


def settle_pss(procs, seconds):
    time.sleep(seconds)
    return [pss_kib(p.pid) for p in procs]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hvlite", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--memory", type=int, default=128)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--restored-vms", type=int, default=10)
    ap.add_argument("--cold-vms", type=int, default=3)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="hvlite-bench-snapshot-")
    snap = os.path.join(workdir, "snap")
    os.makedirs(snap)
    try:
        proc, sock = boot(args, workdir, "first")
        wait_socket(sock, proc)
        t0 = time.monotonic()
        read_until(proc, b"BENCH-READY", 600)
        boot_s = time.monotonic() - t0
        print(f"booted to the guest command in {boot_s:.1f} s", file=sys.stderr)
        cold_first = settle_pss([proc], args.settle)[0]
        status, text = request(sock, "PATCH", "/vm", {"state": "Paused"})
        assert status == 204, text
        create = []
        body = {"snapshot_path": os.path.join(snap, "state"),
                "mem_file_path": os.path.join(snap, "memory"), "snapshot_type": "Full"}
        for _ in range(args.runs):
            t = time.monotonic()
            status, text = request(sock, "PUT", "/snapshot/create", body)
            create.append((time.monotonic() - t) * 1e3)
            assert status == 204, text
        stop([proc])
        st_state = os.stat(os.path.join(snap, "state"))
        st_mem = os.stat(os.path.join(snap, "memory"))

        cli = [restore_cli(args, snap) for _ in range(args.runs)]
        api = [load_api(args, workdir, snap, i) for i in range(args.runs)]

        # Drop the memory file's pages from the page cache? No: restored VMs are meant to
        # share them, and the first restore above brought them in already.
        restored = [subprocess.Popen([args.hvlite, "run", "--restore", snap],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                    for _ in range(args.restored_vms)]
        restored_pss = settle_pss(restored, args.settle)
        alive = sum(p.poll() is None for p in restored)
        stop(restored)
        if alive != len(restored):
            sys.exit(f"only {alive} of {len(restored)} restored VMs were still running")

        cold = []
        if args.cold_vms > 1:
            more = [boot(args, workdir, f"cold{i}") for i in range(args.cold_vms - 1)]
            for p, _ in more:
                read_until(p, b"BENCH-READY", 900)
            cold = settle_pss([p for p, _ in more], args.settle)
            stop([p for p, _ in more])
        cold_all = [cold_first] + cold
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    cold_per_vm = sum(cold_all) / len(cold_all)
    restored_per_vm = sum(restored_pss) / len(restored_pss)
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                 "kvm": "pvm" if os.path.exists("/sys/module/kvm_pvm") else "hardware"},
        "vm": {"memory_mib": args.memory, "vcpus": 1,
               "guest": "project kernel + initramfs, idle shell loop"},
        "boot_to_guest_command_s": round(boot_s, 1),
        "runs": args.runs,
        "snapshot_create_ms": summary(create),
        "restore_cli_logged_ms": summary([c[0] for c in cli]),
        "process_start_to_first_kvm_run_ms": summary([c[1] for c in cli]),
        "spawn_to_next_guest_output_ms": summary([c[2] for c in cli]),
        "api_snapshot_load_ms": summary(api),
        "files": {"state_bytes": st_state.st_size, "memory_bytes": st_mem.st_size,
                  "memory_allocated_bytes": st_mem.st_blocks * 512},
        "pss": {
            "restored_vms": len(restored_pss),
            "restored_total_kib": sum(restored_pss),
            "restored_per_vm_kib": round(restored_per_vm),
            "cold_vms": len(cold_all),
            "cold_per_vm_kib": round(cold_per_vm),
            "restored_over_cold": round(restored_per_vm / cold_per_vm, 3),
        },
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
