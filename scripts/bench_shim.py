#!/usr/bin/env python3
"""`ctr run --rm IMAGE /bin/true` through hvlite's shim and runc's (see bench-shim.sh).

End to end is ctr's wall time. For hvlite the task events the shim publishes (their
timestamps, from `ctr events`) split it: /tasks/create comes once the VM's agent is up
(the boot), /tasks/start once the process was let go, /tasks/exit when it ended."""

import argparse
import datetime
import hashlib
import io
import json
import os
import statistics
import subprocess
import tarfile
import tempfile
import time

IMAGE = "docker.io/library/hvlite-bench-busybox:latest"
NS = "hvlite-bench"


def median(xs):
    return round(statistics.median(xs), 4) if xs else None


def oci_archive(work, rootfs, name=IMAGE, cmd=("sh",)):
    """An OCI image archive of `rootfs` as one uncompressed layer, named `name`, running
    `cmd` by default."""
    layer_path = f"{work}/layer.tar"
    subprocess.run(["tar", "-C", rootfs, "--numeric-owner", "-cf", layer_path, "."], check=True)
    blobs = {}

    def blob(data):
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return {"digest": f"sha256:{d}", "size": len(data)}

    with open(layer_path, "rb") as f:
        layer = blob(f.read())
    os.remove(layer_path)
    config = blob(json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": list(cmd)},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode())
    manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}]}).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"io.containerd.image.name": name}}]}
    path = f"{work}/image-{hashlib.sha256(name.encode()).hexdigest()[:8]}.tar"
    with tarfile.open(path, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index).encode())
        for d, data in blobs.items():
            add(f"blobs/sha256/{d}", data)
    return path


def start_containerd(work, args, config):
    """A containerd with its root, state and socket in `work`, `config` added to its
    config, and hvlite's shim (`args.shim`, with `args.kernel`, `args.agent`) on its PATH.
    Returns the daemon and the `ctr` command line for it."""
    sock = f"{work}/containerd.sock"
    os.makedirs(f"{work}/bin")
    os.symlink(os.path.abspath(args.shim), f"{work}/bin/containerd-shim-hvlite-v2")
    with open(f"{work}/config.toml", "w") as f:
        f.write(f'version = 2\nroot = "{work}/root"\nstate = "{work}/state"\n{config}'
                f'[grpc]\n  address = "{sock}"\n')
    env = dict(os.environ, PATH=f"{work}/bin:" + os.environ.get("PATH", ""),
               HVLITE_KERNEL=args.kernel, HVLITE_AGENT=args.agent)
    log = open(f"{work}/containerd.log", "w")
    daemon = subprocess.Popen(["containerd", "--config", f"{work}/config.toml"], env=env,
                              stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    ctr = ["ctr", "--address", sock]
    deadline = time.monotonic() + 60
    while subprocess.run(ctr + ["version"], capture_output=True).returncode != 0:
        if time.monotonic() > deadline or daemon.poll() is not None:
            stop_containerd(daemon, work)
            raise SystemExit("containerd did not come up")
        time.sleep(0.1)
    return daemon, ctr


def stop_containerd(daemon, work):
    """Stops `daemon`, unmounts what is left under `work`, removes `work`."""
    daemon.terminate()
    daemon.wait()
    subprocess.run(["sh", "-c", f"grep -o ' {work}[^ ]*' /proc/self/mountinfo | "
                    "sort -r | xargs -r -n1 umount -l"], capture_output=True)
    subprocess.run(["rm", "-rf", work])


def event_times(path):
    """(container id, topic) -> seconds since the epoch, from `ctr events` output."""
    times = {}
    for line in open(path):
        parts = line.split()
        # "2026-12-07 21:10:00.123456789 +0000 UTC ns /tasks/create {json}"
        if len(parts) < 7 or not parts[5].startswith("/tasks/"):
            continue
        try:
            body = json.loads(" ".join(parts[6:]))
        except ValueError:
            continue
        day, clock = parts[0], parts[1]
        secs, _, frac = clock.partition(".")
        stamp = datetime.datetime.strptime(f"{day} {secs}", "%Y-%m-%d %H:%M:%S")
        t = stamp.replace(tzinfo=datetime.timezone.utc).timestamp() + float("0." + (frac or "0"))
        times[(body.get("container_id"), parts[5])] = t
    return times


def main():
    ap = argparse.ArgumentParser()
    for a in ("--shim", "--kernel", "--agent", "--rootfs", "--out", "--profile"):
        ap.add_argument(a, required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hvlite-runs", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hvlite-bench-shim-")
    daemon, ctr = start_containerd(work, args, 'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
    ctr += ["--namespace", NS]
    events = None
    try:
        subprocess.run(ctr + ["image", "import", oci_archive(work, args.rootfs)],
                       check=True, capture_output=True)
        events_path = f"{work}/events.txt"
        events = subprocess.Popen(ctr + ["events"], stdout=open(events_path, "w"),
                                  stderr=subprocess.DEVNULL)
        shims = {"hvlite": ("io.containerd.hvlite.v2", args.hvlite_runs),
                 "runc": ("io.containerd.runc.v2", args.runs)}
        walls = {name: [] for name in shims}
        errors = {name: None for name in shims}
        ids = {name: [] for name in shims}
        # Side by side: the runs alternate between the shims.
        for i in range(max(n for _, n in shims.values())):
            for name, (runtime, runs) in shims.items():
                if i >= runs or errors[name]:
                    continue
                cid = f"{name}-{i}"
                t0 = time.monotonic()
                p = subprocess.run(ctr + ["run", "--rm", "--runtime", runtime, IMAGE, cid,
                                          "/bin/true"], capture_output=True, text=True,
                                   stdin=subprocess.DEVNULL)
                wall = time.monotonic() - t0
                if p.returncode != 0:
                    errors[name] = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
                    print(f"{name} run {i + 1}: failed: {errors[name]}", flush=True)
                    continue
                walls[name].append(wall)
                ids[name].append(cid)
                print(f"{name} run {i + 1}: {wall:.3f} s", flush=True)
        time.sleep(0.5)  # let `ctr events` write the last lines
        events.terminate()
        times = event_times(events_path)
        results = {}
        for name in shims:
            phase = {"create_to_start_s": [], "start_to_exit_s": [], "exit_to_delete_s": []}
            for cid in ids[name]:
                t = {topic: times.get((cid, f"/tasks/{topic}"))
                     for topic in ("create", "start", "exit", "delete")}
                if None in t.values():
                    continue
                phase["create_to_start_s"].append(t["start"] - t["create"])
                phase["start_to_exit_s"].append(t["exit"] - t["start"])
                phase["exit_to_delete_s"].append(t["delete"] - t["exit"])
            results[name] = {
                "runtime": shims[name][0],
                "runs": len(walls[name]),
                "end_to_end_s": {"median": median(walls[name]),
                                 "min": round(min(walls[name]), 3) if walls[name] else None,
                                 "all": [round(w, 3) for w in walls[name]]},
                "events_s": {k: median(v) for k, v in phase.items()},
                "error": errors[name],
            }
        out = {
            "benchmark": "ctr run --rm --runtime RUNTIME IMAGE ID /bin/true",
            "containerd": subprocess.run(["containerd", "--version"], capture_output=True,
                                         text=True).stdout.strip(),
            "hvlite_profile": args.profile,
            "note": "hvlite's end to end includes starting the VM before /tasks/create (a template restore; a cold boot for tasks with a network, disks or shares)",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "results": results,
        }
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print(json.dumps(out, indent=2))
    finally:
        if events and events.poll() is None:
            events.kill()
        stop_containerd(daemon, work)


if __name__ == "__main__":
    main()
