#!/usr/bin/env python3
"""Template benchmark: container runs restored from a template against cold boots and runc.

Runs in parts (--part), each short enough for one turn of the shared VM lock, that share a
scratch cache directory (--workdir, so the template is built here) and merge their results
into one JSON file (--out):
- template: `hvlite template build --force` (wall time, the state file's size, the memory
  file's length and allocated bytes: it is sparse); `hvlite run --rootfs DIR -- /bin/true`
  RUNS times from the template (after one warm-up run that builds the root image): wall
  time from the spawn to hvlite's exit, and what hvlite logs of the restore ("snapshot
  restored in X ms", "first KVM_RUN X ms after process start"); `runc run` of the same
  directory (a bundle whose rootfs is a copy of it) RUNS times; the PSS (smaps_rollup) of
  VMS containers restored from the template at once, each idle in `sleep`;
- cold-runs: the same /bin/true COLD_RUNS times with --no-template (a Linux boot each);
- cold-pss: the PSS of COLD_VMS containers cold-booted at once.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time


def summary(values):
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": len(values)}


RESTORED = re.compile(r"snapshot restored in ([0-9.]+) ms")
FIRST_RUN = re.compile(r"first KVM_RUN ([0-9.]+) ms after process start")


def timed(cmd, env, expect=0):
    start = time.monotonic()
    p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    secs = time.monotonic() - start
    if p.returncode != expect:
        sys.exit(f"{cmd} exited {p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
    return secs, p


def logged_ms(pattern, p):
    m = pattern.search(p.stderr.decode(errors="replace"))
    if not m:
        sys.exit(f"hvlite did not log {pattern.pattern!r}: {p.stderr.decode()[-2000:]}")
    return float(m.group(1))


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss for {pid}")


def idle_containers(args, env, count, extra):
    """Starts `count` containers at once, waits until each has printed `up`, measures
    their PSS and stops them; returns the PSS list (KiB) and the seconds until all ran."""
    start = time.monotonic()
    procs = [subprocess.Popen(
        [args.hvlite, "run", "--rootfs", args.rootfs, *extra, "--", "/bin/sh", "-c",
         "echo up; exec sleep 600"], env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for _ in range(count)]
    try:
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != b"up":
                sys.exit(f"a container did not start (exit {p.poll()})")
        ready = time.monotonic() - start
        time.sleep(args.settle)
        return [pss_kib(p.pid) for p in procs], ready
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def runc_bundle(workdir, rootfs):
    bundle = os.path.join(workdir, "bundle")
    os.makedirs(bundle)
    # cp -a keeps device nodes and FIFOs as they are (copytree would open and read them:
    # the root's /dev/console blocks).
    subprocess.run(["cp", "-a", rootfs, os.path.join(bundle, "rootfs")], check=True)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    with open(path, "w") as f:
        json.dump(spec, f)
    return bundle


def part_template(args, env, workdir):
    build_s, p = timed([args.hvlite, "template", "build", "--force"], env)
    tdir = p.stdout.decode().split()[0]
    with open(os.path.join(tdir, "template.json")) as f:
        info = json.load(f)
    mem = os.stat(os.path.join(tdir, "memory"))
    state = os.stat(os.path.join(tdir, "state"))
    print(f"template built in {build_s:.1f} s", file=sys.stderr)

    true = ["run", "--rootfs", args.rootfs, "--", "/bin/true"]
    timed([args.hvlite, *true], env)  # warm-up: builds the root image
    info_env = dict(env, HVLITE_LOG="info")
    runs = [timed([args.hvlite, *true], info_env) for _ in range(args.runs)]
    template_runs = [secs for secs, _ in runs]
    print(f"template runs: {summary(template_runs)}", file=sys.stderr)

    bundle = runc_bundle(workdir, args.rootfs)
    state_root = os.path.join(workdir, "runc-state")
    runc_runs = []
    for i in range(args.runs):
        secs, _ = timed(["runc", "--root", state_root, "run", "--bundle", bundle,
                         f"hvlite-bench-{os.getpid()}-{i}"], env)
        runc_runs.append(secs)
    print(f"runc runs: {summary(runc_runs)}", file=sys.stderr)

    pss, ready = idle_containers(args, env, args.vms, [])
    return {
        "vm": {"vcpus": info["cpus"], "memory_mib": info["memory_mib"],
               "guest": "project kernel + hvlite agent, busybox root directory"},
        "template_s": summary(template_runs),
        "template_restore_logged_ms": summary([logged_ms(RESTORED, p) for _, p in runs]),
        "template_first_kvm_run_ms": summary([logged_ms(FIRST_RUN, p) for _, p in runs]),
        "runc_s": summary(runc_runs),
        "template_build": {
            "wall_s": round(build_s, 2),
            "logged_build_ms": round(info["build_ms"], 1),
            "state_bytes": state.st_size,
            "memory_bytes": mem.st_size,
            "memory_allocated_bytes": mem.st_blocks * 512,
        },
        "pss_restored": {"vms": len(pss), "total_kib": sum(pss),
                         "per_vm_kib": round(sum(pss) / len(pss)),
                         "all_running_s": round(ready, 2)},
    }


def part_cold_runs(args, env):
    cold = ["run", "--no-template", "--rootfs", args.rootfs, "--", "/bin/true"]
    runs = [timed([args.hvlite, *cold], env)[0] for _ in range(args.cold_runs)]
    print(f"cold runs: {summary(runs)}", file=sys.stderr)
    return {"cold_boot_s": summary(runs)}


def part_cold_pss(args, env):
    pss, ready = idle_containers(args, env, args.cold_vms, ["--no-template"])
    return {"pss_cold": {"vms": len(pss), "total_kib": sum(pss),
                         "per_vm_kib": round(sum(pss) / len(pss)),
                         "all_running_s": round(ready, 2)}}


def ratios(result):
    """What the parts measured, set against each other (when all are there)."""
    out = {}
    t, c, r = (result.get(k, {}).get("median") for k in ("template_s", "cold_boot_s", "runc_s"))
    if t and c:
        out["cold_over_template"] = round(c / t, 1)
    if t and r:
        out["template_over_runc"] = round(t / r, 1)
    pr, pc = result.get("pss_restored"), result.get("pss_cold")
    if pr and pc:
        out["restored_per_vm_over_cold"] = round(pr["per_vm_kib"] / pc["per_vm_kib"], 3)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hvlite", required=True)
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--part", choices=["template", "cold-runs", "cold-pss"], required=True)
    ap.add_argument("--workdir", required=True, help="scratch directory shared by the parts")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--cold-runs", type=int, default=10)
    ap.add_argument("--vms", type=int, default=10)
    ap.add_argument("--cold-vms", type=int, default=10)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    env = dict(os.environ, HVLITE_CACHE=os.path.join(args.workdir, "cache"), HVLITE_LOG="warn")
    if args.part == "template":
        part = part_template(args, env, args.workdir)
    elif args.part == "cold-runs":
        part = part_cold_runs(args, env)
    else:
        part = part_cold_pss(args, env)

    result = {}
    if os.path.exists(args.out) and args.part != "template":
        with open(args.out) as f:
            result = json.load(f)
    result.update(part)
    result.update({
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                 "kvm": "pvm" if os.path.exists("/sys/module/kvm_pvm") else "hardware"},
        "command": "hvlite run --rootfs <busybox dir> -- /bin/true (release build)",
    })
    result["ratios"] = ratios(result)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(part, indent=2))


if __name__ == "__main__":
    main()
