#!/usr/bin/env python3
"""Boot benchmark: hvlite (KVM) against QEMU microvm (TCG) with the same kernel and initramfs.

For each run it records, from process start:
  - init_s:   time until the guest init's marker appears on the console (boot to init)
  - exit_s:   time until the process has exited
and for hvlite also the time to the first KVM_RUN and its own RSS minus guest memory (both
from hvlite's log). Results go to a JSON file; a summary is printed.
"""
import argparse
import json
import os
import platform
import re
import selectors
import statistics
import subprocess
import shutil
import sys
import tempfile
import time

MARKER = b"hvlite-init: started"
# Console milestones timed on the host, from process start.
MILESTONES = {"kernel_banner_s": b"Linux version", "unpack_start_s": b"Unpacking initramfs",
              "unpack_done_s": b"Freeing initrd memory", "run_init_s": b"Run /init as init process"}
COMMAND = ["/bin/true"]


def encode(args):
    return b"\0".join(a.encode() for a in args).hex()


def timed_run(cmd, env=None, timeout=900):
    """Runs cmd; returns (init_s, exit_s, returncode, stdout, stderr, milestones)."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ, "out")
    sel.register(p.stderr, selectors.EVENT_READ, "err")
    out, err, init_s = b"", b"", None
    seen = {}
    open_streams = 2
    while open_streams:
        if time.monotonic() - start > timeout:
            p.kill()
            break
        for key, _ in sel.select(timeout=1):
            chunk = os.read(key.fileobj.fileno(), 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            if key.data == "out":
                out += chunk
                now = time.monotonic() - start
                if init_s is None and MARKER in out:
                    init_s = now
                for name, text in MILESTONES.items():
                    if name not in seen and text in out:
                        seen[name] = now
            else:
                err += chunk
    rc = p.wait()
    return (init_s, time.monotonic() - start, rc, out.decode(errors="replace"),
            err.decode(errors="replace"), seen)


KVM_STATS = "/sys/kernel/debug/kvm"
STAT_NAMES = ["exits", "insn_emulation", "insn_emulation_fail", "io_exits", "mmio_exits",
              "irq_injections", "irq_exits", "halt_exits", "pf_taken", "pf_guest", "signal_exits"]


def kvm_stats():
    """Host-wide KVM counters from debugfs (None where unavailable)."""
    if not os.path.isdir(KVM_STATS):
        return None
    out = {}
    for name in STAT_NAMES:
        try:
            with open(os.path.join(KVM_STATS, name)) as f:
                out[name] = int(f.read().strip())
        except OSError:
            pass
    return out or None


def stats_delta(before, after):
    if before is None or after is None:
        return None
    return {k: after[k] - before[k] for k in after if k in before}


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def bench_hvlite(args, rootfs=None):
    # The guest writes to its root disk, so each run boots a fresh copy of the image, made
    # in a temporary directory that is removed afterwards (never next to the results).
    with tempfile.TemporaryDirectory(prefix="hvlite-bench-boot-") as tmp:
        return bench_hvlite_runs(args, rootfs, os.path.join(tmp, "root.ext4"))


def bench_hvlite_runs(args, rootfs, disk):
    runs = []
    env = dict(os.environ, HVLITE_LOG="info")
    for i in range(args.runs):
        cmd = [args.hvlite, "run", "--kernel", args.kernel, "--memory", str(args.memory)]
        if rootfs:
            shutil.copyfile(rootfs, disk)
            cmd += ["--disk", disk, "--cmdline", "root=/dev/vda"]
        else:
            cmd += ["--initrd", args.initrd]
        if args.cmdline and not rootfs:
            cmd += ["--cmdline", args.cmdline]
        cmd += ["--"] + COMMAND
        before = kvm_stats()
        init_s, exit_s, rc, out, err, seen = timed_run(cmd, env)
        kvm = stats_delta(before, kvm_stats())
        first = re.search(r"first KVM_RUN ([0-9.]+) ms", err)
        own = re.search(r"VMM own (\d+) KiB", err)
        rss = re.search(r"RSS (\d+) KiB", err)
        run = {"init_s": init_s, "exit_s": exit_s, "status": rc,
               "first_kvm_run_ms": float(first.group(1)) if first else None,
               "rss_kib": int(rss.group(1)) if rss else None,
               "vmm_rss_kib": int(own.group(1)) if own else None,
               "kvm_counters": kvm, "milestones": seen}
        print(f"hvlite{' (disk root)' if rootfs else ''} run {i + 1}: {run}", file=sys.stderr)
        if rc != 0 or init_s is None:
            print(out[-3000:], err[-3000:], file=sys.stderr)
        runs.append(run)
    return runs


def qemu_cmd(qemu, accel, memory_mib, kernel, append, extra=(), machine="microvm"):
    """QEMU's command line for a microvm with the console on stdio that exits on reboot."""
    return [qemu, "-M", machine, "-accel", accel, "-cpu", "max", "-m", str(memory_mib),
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
            "-kernel", kernel, *extra, "-append", append]


def bench_qemu(args):
    runs = []
    append = "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 no_timer_check tsc=reliable rootfstype=ramfs"
    if args.cmdline:
        append += " " + args.cmdline
    append += " -- " + encode(COMMAND)
    for i in range(args.runs):
        cmd = qemu_cmd(args.qemu, "tcg", args.memory, args.kernel, append,
                       ["-initrd", args.initrd])
        init_s, exit_s, rc, out, err, seen = timed_run(cmd)
        run = {"init_s": init_s, "exit_s": exit_s, "status": rc, "milestones": seen}
        print(f"qemu-tcg run {i + 1}: {run}", file=sys.stderr)
        if init_s is None:
            print(out[-3000:], err[-3000:], file=sys.stderr)
        runs.append(run)
    return runs


def median_counters(runs):
    runs = [r for r in runs if r]
    if not runs:
        return None
    keys = set().union(*runs)
    return {k: statistics.median(r[k] for r in runs if k in r) for k in sorted(keys)}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hvlite", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--memory", type=int, default=128)
    ap.add_argument("--cmdline", default="")
    ap.add_argument("--rootfs", help="also boot hvlite from this ext4 root image on virtio-blk")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    hv = bench_hvlite(args)
    hv_disk = bench_hvlite(args, args.rootfs) if args.rootfs else []
    qe = bench_qemu(args)
    hv_init, qe_init = median(r["init_s"] for r in hv), median(r["init_s"] for r in qe)
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                 "kvm": "pvm" if os.path.exists("/sys/module/kvm_pvm") else "hardware"},
        "kernel": args.kernel, "initrd": args.initrd, "memory_mib": args.memory,
        "runs": args.runs, "command": COMMAND,
        "hvlite": {"runs": hv, "median_init_s": hv_init,
                   "median_exit_s": median(r["exit_s"] for r in hv),
                   "median_first_kvm_run_ms": median(r["first_kvm_run_ms"] for r in hv),
                   "median_vmm_rss_kib": median(r["vmm_rss_kib"] for r in hv),
                   "median_kvm_counters": median_counters([r["kvm_counters"] for r in hv]),
                   "median_milestones": median_counters([r["milestones"] for r in hv])},
        "qemu_tcg": {"runs": qe, "median_init_s": qe_init,
                     "median_milestones": median_counters([r["milestones"] for r in qe]),
                     "median_exit_s": median(r["exit_s"] for r in qe)},
        "ratio_init_hvlite_over_qemu": (hv_init / qe_init) if hv_init and qe_init else None,
    }
    if hv_disk:
        result["hvlite_disk_root"] = {
            "runs": hv_disk, "median_init_s": median(r["init_s"] for r in hv_disk),
            "median_exit_s": median(r["exit_s"] for r in hv_disk),
            "median_milestones": median_counters([r["milestones"] for r in hv_disk])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    summary = {k: result[k] for k in ("ratio_init_hvlite_over_qemu",)}
    summary["hvlite"] = {k: v for k, v in result["hvlite"].items() if k != "runs"}
    summary["qemu_tcg"] = {k: v for k, v in result["qemu_tcg"].items() if k != "runs"}
    if hv_disk:
        summary["hvlite_disk_root"] = {k: v for k, v in result["hvlite_disk_root"].items()
                                       if k != "runs"}
    print(json.dumps(summary, indent=2))
    ok = all(r["status"] == 0 and r["init_s"] is not None for r in hv + hv_disk) and \
        all(r["init_s"] is not None for r in qe)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
