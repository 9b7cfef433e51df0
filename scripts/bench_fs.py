#!/usr/bin/env python3
"""virtio-fs against the ext4-image path and the host, in one run:

1. file throughput and metadata: one boot with an ext4 image on virtio-blk (/img) and a
   virtio-fs share (/vfs); the guest runs the same busybox commands on both (timed with
   /proc/uptime): a 16 MiB write with fsync, a 16 MiB read after dropping the guest's
   page cache, creating 300 empty files, and untarring a small tree (200 files in 20
   directories). The host runs the same commands on a host directory.
2. container start: `hvlite run --rootfs DIR -- /bin/true` end to end with
   --rootfs-mode image (cached image; and once with a tree never seen, which builds its
   image) and --rootfs-mode virtiofs.
Writes JSON."""
import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

MIB = 16
SMALL_FILES = 300
TREE_DIRS, TREE_FILES = 20, 10


def make_tree_tar(path):
    with tempfile.TemporaryDirectory() as d:
        for i in range(TREE_DIRS):
            sub = os.path.join(d, f"dir{i}")
            os.mkdir(sub)
            for j in range(TREE_FILES):
                with open(os.path.join(sub, f"file{j}.txt"), "w") as f:
                    f.write(f"{i}.{j}\n" * 100)
        with tarfile.open(path, "w") as t:
            t.add(d, arcname="tree")


def host_ops(d, tar):
    def run(cmd, cwd=None):
        subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    t = [time.monotonic()]
    run(["dd", "if=/dev/zero", f"of={d}/big", "bs=1M", f"count={MIB}", "conv=fsync"])
    t.append(time.monotonic())
    # The host's page cache cannot be dropped without privileges over the whole host;
    # read with O_DIRECT instead, which bypasses it.
    run(["dd", f"if={d}/big", "of=/dev/null", "bs=1M", "iflag=direct"])
    t.append(time.monotonic())
    os.mkdir(f"{d}/small")
    subprocess.run(f"seq 1 {SMALL_FILES} | xargs touch && sync", shell=True, check=True,
                   cwd=f"{d}/small")
    t.append(time.monotonic())
    os.mkdir(f"{d}/untar")
    run(["tar", "-xf", tar, "-C", f"{d}/untar"])
    run(["sync"])
    t.append(time.monotonic())
    return summary([b - a for a, b in zip(t, t[1:])])


def summary(secs):
    write_s, read_s, create_s, untar_s = secs
    return {
        "write_mib_s": round(MIB / write_s, 2),
        "read_mib_s": round(MIB / read_s, 2),
        "create_files_per_s": round(SMALL_FILES / create_s, 1),
        "untar_s": round(untar_s, 3),
        "seconds": {"write": round(write_s, 3), "read": round(read_s, 3),
                    "create": round(create_s, 3), "untar": round(untar_s, 3)},
    }


GUEST = (
    "t() { cut -d' ' -f1 /proc/uptime; }; "
    "mkdir -p /img /vfs && mount -t ext4 /dev/vda /img && mount -t virtiofs bench /vfs && "
    "cp /vfs/tree.tar /tree.tar || exit 1; "
    "for d in /img /vfs; do "
    f" a=$(t); dd if=/dev/zero of=$d/big bs=1M count={MIB} conv=fsync 2>/dev/null; b=$(t); "
    " sync; echo 3 > /proc/sys/vm/drop_caches; b=$(t); "
    " dd if=$d/big of=/dev/null bs=1M 2>/dev/null; c=$(t); "
    f" mkdir $d/small && cd $d/small && seq 1 {SMALL_FILES} | xargs touch && sync; d2=$(t); cd /; "
    " mkdir $d/untar && tar -xf /tree.tar -C $d/untar && sync; e=$(t); "
    " echo BENCH $d $a $b $c $d2 $e; "
    "done; exit 0"
)


def guest_ops(args, work, tar):
    img = os.path.join(work, "img.ext4")
    with open(img, "wb") as f:
        f.truncate(128 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", img], check=True)
    share = os.path.join(work, "share")
    os.mkdir(share)
    shutil.copy(tar, os.path.join(share, "tree.tar"))
    cmd = [args.hvlite, "run", "--kernel", args.kernel, "--initrd", args.initrd,
           "--memory", "256", "--disk", img, "--fs", f"tag=bench,path={share}",
           "--", "/bin/sh", "-c", GUEST]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=1800)
    rows = re.findall(r"BENCH (\S+) ([0-9.]+) ([0-9.]+) ([0-9.]+) ([0-9.]+) ([0-9.]+)",
                      p.stdout)
    if p.returncode != 0 or len(rows) != 2:
        print(p.stdout[-3000:], p.stderr[-3000:], file=sys.stderr)
        raise SystemExit("the guest benchmark failed")
    out = {}
    for d, *ts in rows:
        a, b, c, d2, e = map(float, ts)
        # b was taken after the cache drop; the write ends before it (sync is small).
        out[d] = summary([b - a, c - b, d2 - c, e - d2])
    return out["/img"], out["/vfs"]


def container_start(args, rootfs, mode, env=None):
    start = time.monotonic()
    p = subprocess.run([args.hvlite, "run", "--rootfs", rootfs, "--rootfs-mode", mode,
                        "--", "/bin/true"], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=900, env=env)
    took = time.monotonic() - start
    if p.returncode != 0:
        print(p.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"container run ({mode}) failed")
    return took


def io_part(args, work):
    tar = os.path.join(work, "tree.tar")
    make_tree_tar(tar)
    host_dir = os.path.join(work, "host")
    os.mkdir(host_dir)
    host = host_ops(host_dir, tar)
    image, virtiofs = guest_ops(args, work, tar)
    print(json.dumps({"host": host, "image": image, "virtiofs": virtiofs}), file=sys.stderr)
    return {"host": host, "guest_ext4_image": image, "guest_virtiofs": virtiofs}


def start_part(args, work):
    # Container start: the cached image path, a tree never seen (its image is built
    # first, then cached), and virtio-fs (nothing to build).
    starts = {"image_cached_s": [], "virtiofs_s": []}
    container_start(args, args.rootfs_dir, "image")  # make sure the image is cached
    for _ in range(args.runs):
        starts["image_cached_s"].append(container_start(args, args.rootfs_dir, "image"))
        starts["virtiofs_s"].append(container_start(args, args.rootfs_dir, "virtiofs"))
        print(json.dumps(starts), file=sys.stderr)
    fresh = os.path.join(work, "fresh-root")
    # cp -a: the root has device nodes (/dev/console), which must not be opened.
    subprocess.run(["cp", "-a", args.rootfs_dir, fresh], check=True)
    with open(os.path.join(fresh, "bench-marker"), "w") as f:
        f.write(str(time.time()))
    cache = os.path.join(work, "cache")
    env = dict(os.environ, HVLITE_CACHE=cache)
    image_first = container_start(args, fresh, "image", env)
    return {"container_start": {
        "runs": args.runs,
        "image_cached_median_s": round(statistics.median(starts["image_cached_s"]), 2),
        "virtiofs_median_s": round(statistics.median(starts["virtiofs_s"]), 2),
        "image_first_run_s": round(image_first, 2),
        "all_s": {k: [round(x, 2) for x in v] for k, v in starts.items()},
    }}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    for path in ("--hvlite", "--kernel", "--initrd", "--rootfs-dir", "--out"):
        ap.add_argument(path, required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--part", choices=("all", "io", "start"), default="all",
                    help="run one part and merge it into --out (each part is one "
                         "short VM-heavy job)")
    args = ap.parse_args()

    out = pathlib.Path(args.out)
    result = {}
    if args.part != "all" and out.exists():
        result = json.loads(out.read_text())
    with tempfile.TemporaryDirectory(prefix="hvlite-bench-fs-") as work:
        if args.part in ("all", "io"):
            result.update(io_part(args, work))
        if args.part in ("all", "start"):
            result.update(start_part(args, work))
    result.update({
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kvm": "pvm" if os.path.exists("/sys/module/kvm_pvm") else "hardware",
        "sizes": {"mib": MIB, "small_files": SMALL_FILES,
                  "untar_files": TREE_DIRS * TREE_FILES, "untar_dirs": TREE_DIRS},
    })
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
