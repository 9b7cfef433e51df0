#!/usr/bin/env python3
"""Template benchmark: container runs restored from a template against cold boots and runc.

In one run, with a scratch cache directory (so the template is built here):
1. `hvlite template build --force`: wall time, the state file's size, the memory file's
   length and allocated bytes (it is sparse);
2. `hvlite run --rootfs DIR -- /bin/true`, RUNS times from the template (after one warm-up
   run that builds the root image) and COLD_RUNS times with --no-template: wall time from
   the spawn to hvlite's exit;
3. `runc run` of the same directory (a bundle whose rootfs is a copy of it), RUNS times;
4. memory: PSS (smaps_rollup) of VMS containers restored from the template at once against
   COLD_VMS cold-booted ones, each idle in `sleep` after printing a line.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def summary(values):
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "runs": len(values)}


def timed(cmd, env, expect=0):
    start = time.monotonic()
    p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    secs = time.monotonic() - start
    if p.returncode != expect:
        sys.exit(f"{cmd} exited {p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
    return secs, p


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
    shutil.copytree(rootfs, os.path.join(bundle, "rootfs"), symlinks=True)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    with open(path, "w") as f:
        json.dump(spec, f)
    return bundle


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hvlite", required=True)
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--vms", type=int, default=10)
    ap.add_argument("--cold-vms", type=int, default=2)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="hvlite-bench-template-")
    env = dict(os.environ, HVLITE_CACHE=os.path.join(workdir, "cache"), HVLITE_LOG="warn")
    try:
        build_s, p = timed([args.hvlite, "template", "build", "--force"], env)
        tdir = p.stdout.decode().split()[0]
        with open(os.path.join(tdir, "template.json")) as f:
            info = json.load(f)
        mem = os.stat(os.path.join(tdir, "memory"))
        state = os.stat(os.path.join(tdir, "state"))
        print(f"template built in {build_s:.1f} s", file=sys.stderr)

        true = ["run", "--rootfs", args.rootfs, "--", "/bin/true"]
        timed([args.hvlite, *true], env)  # warm-up: builds the root image
        template_runs = [timed([args.hvlite, *true], env)[0] for _ in range(args.runs)]
        print(f"template runs: {summary(template_runs)}", file=sys.stderr)
        cold = ["run", "--no-template", "--rootfs", args.rootfs, "--", "/bin/true"]
        cold_runs = [timed([args.hvlite, *cold], env)[0] for _ in range(args.cold_runs)]
        print(f"cold runs: {summary(cold_runs)}", file=sys.stderr)

        bundle = runc_bundle(workdir, args.rootfs)
        state_root = os.path.join(workdir, "runc-state")
        runc_runs = []
        for i in range(args.runs):
            secs, _ = timed(["runc", "--root", state_root, "run", "--bundle", bundle,
                             f"hvlite-bench-{os.getpid()}-{i}"], env)
            runc_runs.append(secs)

        restored_pss, restored_ready = idle_containers(args, env, args.vms, [])
        cold_pss, cold_ready = idle_containers(args, env, args.cold_vms, ["--no-template"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    restored_per_vm = sum(restored_pss) / len(restored_pss)
    cold_per_vm = sum(cold_pss) / len(cold_pss)
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                 "kvm": "pvm" if os.path.exists("/sys/module/kvm_pvm") else "hardware"},
        "vm": {"vcpus": info["cpus"], "memory_mib": info["memory_mib"],
               "guest": "project kernel + hvlite agent, busybox root directory"},
        "command": "hvlite run --rootfs <busybox dir> -- /bin/true (release build)",
        "template_s": summary(template_runs),
        "cold_boot_s": summary(cold_runs),
        "runc_s": summary(runc_runs),
        "template_build": {
            "wall_s": round(build_s, 2),
            "logged_build_ms": round(info["build_ms"], 1),
            "state_bytes": state.st_size,
            "memory_bytes": mem.st_size,
            "memory_allocated_bytes": mem.st_blocks * 512,
        },
        "pss": {
            "restored_vms": len(restored_pss),
            "restored_total_kib": sum(restored_pss),
            "restored_per_vm_kib": round(restored_per_vm),
            "restored_all_running_s": round(restored_ready, 2),
            "cold_vms": len(cold_pss),
            "cold_total_kib": sum(cold_pss),
            "cold_per_vm_kib": round(cold_per_vm),
            "cold_all_running_s": round(cold_ready, 2),
            "restored_per_vm_over_cold": round(restored_per_vm / cold_per_vm, 3),
        },
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
