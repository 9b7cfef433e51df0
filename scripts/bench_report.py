#!/usr/bin/env python3
"""The one benchmark report (scripts/bench-report.sh, docs/benchmarks.md).

Runs every workload for every system found on the host in one run, alternating the
systems within each iteration (and rotating their order) so host noise hits them alike,
then writes OUT/results.json and renders OUT/index.html with `hvlite-bench-report`.
The workloads run the static `hvlite-bench-probe` (or busybox) from one root directory;
the probe times its own work, so boot and teardown do not count where they should not.
"""
import argparse
import ctypes
import html.parser
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_boot import encode, qemu_cmd  # noqa: E402
from bench_container import runc_bundle  # noqa: E402
from bench_oci import IMAGE, crun_argv, import_image, podman_base, wrapper  # noqa: E402

PROBE = "/bin/hvlite-bench-probe"
GROUPS = ["true", "echo", "idle", "compute", "fileio", "net", "volume", "density"]
HELLO = "hvlite-bench-hello"
TAP, TAP_HOST, TAP_GUEST = "hvb-tap0", "172.30.0.1", "172.30.0.2"
NETNS, VETH, VETH_HOST, VETH_CONT = "hvb-ns", "hvb-veth0", "172.30.1.1", "172.30.1.2"
SINK_PORT, ECHO_PORT = 5201, 5202
SIZES = {
    # Sized for PVM hosts, where guest-kernel work is emulated: a VM there moves tens of KiB/s
    # over TCP and a few MiB/s to its disk (docs/benchmarks.md).
    "quick": dict(iterations=1, cpu=10**7, getpid=300, pipe=200, seq_mib=2, rand_mib=2,
                  rand_n=50, net_kib=128, rr=20, density=[2]),
    "full": dict(iterations=3, cpu=3 * 10**8, getpid=5000, pipe=2000, seq_mib=8,
                 rand_mib=8, rand_n=400, net_kib=1024, rr=200, density=[1, 5, 10, 20]),
}
# (id, title, unit, lower_is_better, group, probe output name or None)
METRICS = [
    ("true", "Start to exit of /bin/true", "s", True, "true", None),
    ("first_output", "Time to first output", "s", True, "echo", None),
    ("memory", "Memory per idle instance (PSS of every process)", "MiB", True, "idle", None),
    ("cpu", "CPU-bound loop (user mode)", "s", True, "compute", "cpu_s"),
    ("getpid", "System call: getpid", "ns per call", True, "compute", "getpid_ns"),
    ("pipe", "System calls: 1-byte write and read on a pipe", "ns per round trip", True,
     "compute", "pipe_ns"),
    ("seq_write", "Root disk: sequential write (fsync at the end)", "MiB/s", False, "fileio",
     "seq_write_mib_s"),
    ("seq_read", "Root disk: sequential read (O_DIRECT)", "MiB/s", False, "fileio",
     "seq_read_mib_s"),
    ("rand_read", "Root disk: random 4 KiB reads (O_DIRECT)", "IOPS", False, "fileio",
     "rand_read_iops"),
    ("rand_write", "Root disk: random 4 KiB writes, each followed by fdatasync", "IOPS", False,
     "fileio", "rand_write_sync_iops"),
    ("volume", "Volume (a host directory): sequential write (fsync at the end)", "MiB/s",
     False, "volume", "seq_write_mib_s"),
    ("volume_read", "Volume (a host directory): sequential read (O_DIRECT)", "MiB/s", False,
     "volume", "seq_read_mib_s"),
    ("tcp_send", "Network: TCP throughput container to host", "MiB/s", False, "net",
     "tcp_send_mib_s"),
    ("tcp_rr", "Network: TCP 1-byte round trip to the host, median", "us", True, "net",
     "tcp_rr_p50_us"),
    ("tcp_rr_p99", "Network: TCP 1-byte round trip to the host, 99th percentile", "us", True,
     "net", "tcp_rr_p99_us"),
]


def say(msg):
    print(f"bench-report: {msg}", file=sys.stderr, flush=True)


def first_line(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (p.stdout or p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


def last_error(text):
    """The line that best says what went wrong: the probe's own error, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    probe = [ln for ln in lines if ln.startswith("hvlite-bench-probe:")]
    return (probe or lines or ["no output"])[-1][:300]


class Instance:
    """One started instance: its output is read by threads and markers are timed on arrival."""

    def __init__(self, cmd, env=None, markers=()):
        self.markers = {m.encode(): None for m in markers}
        self.out, self.err = bytearray(), bytearray()
        self.closed = 0
        self.cond = threading.Condition()
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, start_new_session=True)
        self.readers = [threading.Thread(target=self._read, args=(s, b, o), daemon=True)
                        for s, b, o in ((self.p.stdout, self.out, True),
                                        (self.p.stderr, self.err, False))]
        for t in self.readers:
            t.start()
        self.wall = None

    def _read(self, stream, buf, is_out):
        while True:
            chunk = os.read(stream.fileno(), 65536)
            now = time.monotonic() - self.t0
            with self.cond:
                if not chunk:
                    self.closed += 1
                    self.cond.notify_all()
                    return
                buf += chunk
                if is_out:
                    for m, t in self.markers.items():
                        if t is None and m in buf:
                            self.markers[m] = now
                self.cond.notify_all()

    def wait_marker(self, marker, deadline):
        m = marker.encode()
        with self.cond:
            self.cond.wait_for(lambda: self.markers[m] is not None or self.closed == 2,
                               max(0.0, deadline - time.monotonic()))
            return self.markers[m]

    def finish(self, timeout):
        try:
            rc = self.p.wait(timeout=timeout)
            self.wall = time.monotonic() - self.t0
        except subprocess.TimeoutExpired:
            self.kill()
            rc = None
        for t in self.readers:
            t.join(timeout=10)
        return rc

    def stop(self):
        try:
            self.p.send_signal(signal.SIGTERM)
            return self.p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    def kill(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.p.wait()

    def text(self):
        return self.out.decode(errors="replace"), self.err.decode(errors="replace")


# --- memory: PSS of every process under this one (a child subreaper keeps daemons here) ---

def set_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def proc_table():
    table = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
                fields = stat[stat.rindex(")") + 2:].split()
                table[int(pid)] = (int(fields[1]), fields[0])
            except (OSError, ValueError):
                pass
    return table


def descendants(root=None):
    root = root or os.getpid()
    table = proc_table()
    out, todo = [], [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _) in table.items():
            if ppid == parent:
                out.append(pid)
                todo.append(pid)
    return out


def reap_orphans(active):
    """Reaps zombies that were reparented to this process (not the Popen children)."""
    for pid, (ppid, state) in proc_table().items():
        if ppid == os.getpid() and state == "Z" and pid not in active:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def pss_mib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total / 1024


# --- the systems ---

class System:
    id = label = ""
    version = None
    skipped = None
    note = None
    env = None
    # workload group -> why it is not run for this system
    not_run = {}

    def command(self, argv, group, name):
        raise NotImplementedError

    def check(self, rc, out, err):
        """The error of a finished run, or None."""
        return None if rc == 0 else f"exit {rc}: {last_error(err or out)}"

    def after(self, name):
        """Cleanup after an instance named `name` has ended."""

    def json(self):
        return {"id": self.id, "label": self.label, "version": self.version,
                "skipped": self.skipped, "note": self.note}


class Hvlite(System):
    def __init__(self, ctx, template):
        self.ctx = ctx
        self.template = template
        self.id = "hvlite-template" if template else "hvlite"
        self.label = "hvlite (template)" if template else "hvlite (cold boot)"
        self.version = first_line([ctx.hvlite, "--version"])
        self.env = dict(os.environ, HVLITE_AGENT=ctx.agent)
        self.not_run = {}
        if not ctx.net_ok:
            self.not_run["net"] = ctx.net_ok_reason
        if not ctx.has_volume:
            self.not_run["volume"] = "this hvlite has no --volume (`hvlite run --help`)"
        self.note = ("hvlite run --rootfs DIR (a read-only image under a tmpfs overlay); the "
                     "file I/O runs use --rootfs IMAGE, an ext4 image attached read-write; "
                     "volumes are -v DIR:/vol (virtio-fs, virtiofsd)")
        if template:
            self.note += ("; restored from the cached templates (docs/snapshots.md), built "
                          "before the measurements")
            # With --net hvlite boots instead (no template for network interfaces).
            self.not_run.setdefault("net", "hvlite restores no template for a VM with --net "
                                    "(it boots: the cold-boot column)")
            self.not_run.setdefault("volume", "hvlite restores no template for a VM with a "
                                    "virtio-fs volume (it boots: the cold-boot column)")
            self.build_templates()

    def build_templates(self):
        """Builds (or checks) the two templates the runs restore, outside the timings: the
        root-directory one and the read-write image one (file I/O)."""
        for extra in ([], ["--image-root"]):
            p = subprocess.run([self.ctx.hvlite, "template", "build", "--kernel",
                                self.ctx.kernel, *extra], env=self.env,
                               capture_output=True, text=True)
            if p.returncode != 0:
                self.skipped = ("hvlite template build failed: "
                                + (p.stderr.strip().splitlines() or ["?"])[-1])
                return

    def command(self, argv, group, name):
        cmd = [self.ctx.hvlite, "run", "--kernel", self.ctx.kernel]
        if self.ctx.has_template and not self.template:
            cmd.append("--no-template")
        cmd += ["--rootfs", self.ctx.image if group == "fileio" else self.ctx.root]
        if group == "net":
            cmd += ["--net", f"tap={TAP}",
                    "--cmdline", f"ip={TAP_GUEST}::{TAP_HOST}:255.255.255.0::eth0:off"]
        if group == "volume":
            cmd += ["-v", f"{volume_dir(self.ctx, self.id)}:/vol"]
        return cmd + ["--"] + argv


class OciRuntime(System):
    """runc or crun on a bundle of the root directory (written to: file I/O goes to the
    host file system the directory is on)."""

    def __init__(self, ctx, name):
        self.ctx = ctx
        self.id = self.label = name
        self.binary = shutil.which(name)
        self.not_run = {}
        if not self.binary:
            self.skipped = f"{name} is not installed"
            return
        self.version = first_line([self.binary, "--version"])
        if not ctx.net_ok:
            self.not_run["net"] = ctx.net_ok_reason
        self.note = "network: its own network namespace with a veth pair to the host"
        self.argv = crun_argv(self.binary) if name == "crun" else [self.binary]
        if self.argv[0] != self.binary:
            self.note += ("; crun runs in a mount namespace without the host's cgroup2 mount "
                          "(it refuses this host's hybrid cgroups)")
        self.bundles = {}

    def command(self, argv, group, name):
        key = (tuple(argv), group == "net")
        if key not in self.bundles:
            self.bundles[key] = runc_bundle(
                self.ctx.root, self.ctx.work, argv, readonly=False,
                netns=f"/run/netns/{NETNS}" if group == "net" else None,
                name=f"bundle-{self.id}-{len(self.bundles)}")
            if group == "volume":
                add_bind_mount(self.bundles[key], volume_dir(self.ctx, self.id), "/vol")
        return self.argv + ["run", "--bundle", self.bundles[key], name]

    def after(self, name):
        subprocess.run(self.argv + ["delete", "-f", name], capture_output=True)


class Qemu(System):
    def __init__(self, ctx):
        self.ctx = ctx
        self.id = "qemu"
        self.label = "QEMU microvm"
        self.binary = shutil.which("qemu-system-x86_64")
        self.not_run = {}
        self.accel = "tcg"
        if not self.binary:
            self.skipped = "qemu-system-x86_64 is not installed"
            return
        self.version = first_line([self.binary, "--version"])
        if not ctx.net_ok:
            self.not_run["net"] = ctx.net_ok_reason
        self.not_run["volume"] = ("not set up for QEMU here (virtio-fs in QEMU needs its own "
                                  "virtiofsd, vhost-user-fs and shared memory)")
        kvm_error = self.try_kvm()
        if kvm_error is None:
            self.accel = "kvm"
            self.label = "QEMU microvm (KVM)"
            self.note = "same kernel and root image as hvlite, 2 vCPUs, 128 MiB"
        else:
            self.id = "qemu-tcg"
            self.label = "QEMU microvm (TCG)"
            self.note = ("software emulation (TCG): KVM did not run this kernel here: "
                         f"{kvm_error}. Same kernel and root image as hvlite, 2 vCPUs, 128 MiB")

    def try_kvm(self):
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "no /dev/kvm"
        self.accel = "kvm"
        inst = Instance(self.command(["/bin/true"], "true", "kvm-probe"))
        self.accel = "tcg"
        deadline = time.monotonic() + 60
        # QEMU stops (without exiting) at a KVM emulation failure: watch its stderr.
        while inst.p.poll() is None and time.monotonic() < deadline:
            if b"KVM internal error" in inst.err or b"emulation failure" in inst.err:
                break
            time.sleep(0.2)
        rc = inst.finish(timeout=0.1)
        out, err = inst.text()
        if rc is None:
            return last_error(err) if err.strip() else "no exit within 60 s"
        return self.check(rc, out, err)

    def command(self, argv, group, name):
        # QEMU's automatic virtio_mmio.device= options would land after "--" (in init's
        # arguments), so they are given here; microvm places the devices from the top down.
        # reboot=t: microvm has no keyboard controller to reset through.
        append = ("console=ttyS0 reboot=t panic=-1 8250.nr_uarts=1 no_timer_check tsc=reliable "
                  "quiet virtio_mmio.device=512@0xfeb00e00:12 root=/dev/vda rw init=/hvlite-init")
        extra = ["-smp", "2", "-drive",
                 f"file={self.ctx.image},format=raw,if=none,id=root"
                 + ("" if group == "fileio" else ",snapshot=on"),
                 "-device", "virtio-blk-device,drive=root"]
        if group == "net":
            append += (f" virtio_mmio.device=512@0xfeb00c00:11"
                       f" ip={TAP_GUEST}::{TAP_HOST}:255.255.255.0::eth0:off")
            extra += ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                      "-device", "virtio-net-device,netdev=n0"]
        append += " -- " + encode(argv)
        return qemu_cmd(self.binary, self.accel, 128, self.ctx.kernel, append, extra,
                        machine="microvm,acpi=off,auto-kernel-cmdline=off")

    def check(self, rc, out, err):
        if rc != 0:
            return f"exit {rc}: {last_error(err or out)}"
        if "hvlite-init: exit status 0" not in out:
            return f"no exit status 0 on the console: {last_error(out + err)}"
        return None


class Podman(System):
    def __init__(self, ctx):
        self.ctx = ctx
        self.id = "podman-hvlite"
        self.label = "podman + hvlite-runtime"
        self.not_run = {
            "net": "podman runs with --network none here: no CNI/netavark network was set "
                   "up for hvlite-runtime",
            "fileio": "hvlite-runtime's root is a read-only image under a tmpfs overlay: "
                      "writes would measure guest memory, not a disk",
            "density": "not measured: every instance is a cold hvlite boot plus podman and "
                       "conmon; hvlite's own points show the VM side and would double the run",
        }
        if not shutil.which("podman"):
            self.skipped = "podman is not installed"
            return
        if not ctx.runtime:
            self.skipped = "hvlite-runtime was not built"
            return
        self.version = first_line(["podman", "--version"])
        self.podman = podman_base(os.path.join(ctx.work, "podman"))
        self.wrap = os.path.join(ctx.work, "hvlite-runtime-wrap.sh")
        wrapper(self.wrap, ctx.runtime, os.path.join(ctx.work, "runtime.log"),
                f"--kernel {ctx.kernel} --agent {ctx.agent}")
        try:
            import_image(self.podman, ctx.root, ctx.work)
        except subprocess.CalledProcessError as e:
            self.skipped = f"podman import failed: {last_error(e.stderr.decode(errors='replace'))}"
        self.note = "podman run --rm --network none through hvlite-runtime (a cold hvlite boot)"

    def command(self, argv, group, name):
        vol = ["-v", f"{volume_dir(self.ctx, self.id)}:/vol"] if group == "volume" else []
        return self.podman + ["--runtime", self.wrap, "run", "--rm", "--network", "none",
                              "--name", name] + vol + [IMAGE] + argv

    def after(self, name):
        subprocess.run(self.podman + ["rm", "-f", name], capture_output=True)


class Skipped(System):
    def __init__(self, sid, label, why):
        self.id, self.label, self.skipped = sid, label, why


# --- host side of the network workloads ---

def serve(port, handler):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(16)

    def loop():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=handler, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()


def sink(conn):
    with conn:
        while conn.recv(1 << 20):
            pass
        conn.sendall(b"k")


def echo(conn):
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(4096):
            conn.sendall(data)


def setup_network():
    """A TAP for the VMs and a network namespace with a veth pair for the containers."""
    if os.geteuid() != 0:
        return "needs root (TAP and network namespace)"
    teardown_network()
    cmds = [["ip", "tuntap", "add", TAP, "mode", "tap"],
            ["ip", "addr", "add", f"{TAP_HOST}/24", "dev", TAP], ["ip", "link", "set", TAP, "up"],
            ["ip", "netns", "add", NETNS],
            ["ip", "link", "add", VETH, "type", "veth", "peer", "name", "hvb-veth1"],
            ["ip", "link", "set", "hvb-veth1", "netns", NETNS],
            ["ip", "addr", "add", f"{VETH_HOST}/24", "dev", VETH], ["ip", "link", "set", VETH, "up"],
            ["ip", "-n", NETNS, "addr", "add", f"{VETH_CONT}/24", "dev", "hvb-veth1"],
            ["ip", "-n", NETNS, "link", "set", "hvb-veth1", "up"],
            ["ip", "-n", NETNS, "link", "set", "lo", "up"]]
    for cmd in cmds:
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            return f"{' '.join(cmd)}: {last_error(p.stderr)}"
    serve(SINK_PORT, sink)
    serve(ECHO_PORT, echo)
    return None


def teardown_network():
    for cmd in (["ip", "link", "del", TAP], ["ip", "link", "del", VETH],
                ["ip", "netns", "del", NETNS]):
        subprocess.run(cmd, capture_output=True)


# --- the run ---

class Context:
    pass


def group_argv(group, size, system):
    host = VETH_HOST if isinstance(system, OciRuntime) else TAP_HOST
    return {
        "true": ["/bin/true"],
        "echo": ["/bin/echo", HELLO],
        "idle": [PROBE, "idle"],
        "compute": [PROBE, "cpu", str(size["cpu"]), "getpid", str(size["getpid"]),
                    "pipe", str(size["pipe"])],
        "fileio": [PROBE, "seq", "/bench-file", str(size["seq_mib"]), "rand", "/bench-file",
                   str(size["rand_mib"]), str(size["rand_n"])],
        "net": [PROBE, "tcp-send", f"{host}:{SINK_PORT}", str(size["net_kib"]),
                "tcp-rr", f"{host}:{ECHO_PORT}", str(size["rr"])],
        "volume": [PROBE, "seq", "/vol/bench-file", str(size["seq_mib"])],
    }[group]


def volume_dir(ctx, system_id):
    """The host directory a system's volume workload writes to (any user may write)."""
    d = os.path.join(ctx.work, "volumes", system_id)
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o777)
    return d


def add_bind_mount(bundle, source, destination):
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.setdefault("mounts", []).append({"destination": destination, "type": "bind",
                                         "source": source, "options": ["rbind", "rw"]})
    with open(path, "w") as f:
        json.dump(cfg, f)


def parse_probe(out):
    found = {}
    for line in out.splitlines():
        parts = line.strip().split()
        if len(parts) == 4 and parts[0] == "BENCH":
            try:
                found[parts[1]] = float(parts[2])
            except ValueError:
                pass
    return found


def run_to_exit(system, group, size, n):
    """One instance of a group that runs to its end: {metric: value} or an error string."""
    name = f"hvb-{os.getpid()}-{system.id}-{group}-{n}"
    inst = Instance(system.command(group_argv(group, size, system), group, name), system.env,
                    markers=[HELLO])
    rc = inst.finish(timeout=600)
    system.after(name)
    out, err = inst.text()
    if rc is None:
        return "timed out after 600 s"
    error = system.check(rc, out, err)
    if error and "hvlite-bench-probe:" in out + err and "hvlite-bench-probe:" not in error:
        error += f" ({last_error(err + chr(10) + out)})"
    if error:
        return error
    if group == "true":
        return {"true": inst.wall}
    if group == "echo":
        t = inst.markers[HELLO.encode()]
        return {"first_output": t} if t is not None else f"no {HELLO!r} in the output"
    values = parse_probe(out)
    wanted = [(m[0], m[5]) for m in METRICS if m[4] == group]
    missing = [probe for _, probe in wanted if probe not in values]
    if missing:
        return f"the probe printed no {', '.join(missing)}: {last_error(err or out)}"
    return {mid: values[probe] for mid, probe in wanted}


def run_idle(system, count, size, tag):
    """`count` idle instances at once: (ready times, total PSS MiB) or an error string."""
    names = [f"hvb-{os.getpid()}-{system.id}-{tag}-{i}" for i in range(count)]
    insts = [Instance(system.command(group_argv("idle", size, system), "idle", name),
                      system.env, markers=["ready"]) for name in names]
    deadline = time.monotonic() + 900
    try:
        ready = [inst.wait_marker("ready", deadline) for inst in insts]
        if any(t is None for t in ready):
            bad = next(i for i, t in enumerate(ready) if t is None)
            insts[bad].stop()
            out, err = insts[bad].text()
            return f"instance {bad + 1} of {count} never became ready: {last_error(err or out)}"
        mib = pss_mib(descendants())
        return ready, mib
    finally:
        for inst in insts:
            inst.stop()
        for inst, name in zip(insts, names):
            for t in inst.readers:
                t.join(timeout=10)
            system.after(name)
        reap_orphans({inst.p.pid for inst in insts})


def record(results, metric, system, value=None, error=None):
    cell = results.setdefault(metric, {}).setdefault(system.id, {"samples": [], "error": None})
    if error:
        cell["error"] = error
    else:
        cell["samples"].append(round(value, 6))


def fmt(values):
    if isinstance(values, str):
        return "failed"
    return ", ".join(f"{k} {v:.4g}" for k, v in values.items())


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    for a in ("--hvlite", "--kernel", "--agent", "--rootfs", "--probe", "--renderer", "--out"):
        ap.add_argument(a, required=True)
    ap.add_argument("--runtime", default=None, help="hvlite-runtime, for podman")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--only", default="", help="comma-separated system ids (default: all)")
    ap.add_argument("--groups", default=",".join(GROUPS),
                    help="comma-separated workload groups, for a run in chunks (see --merge)")
    args = ap.parse_args()
    selected = args.groups.split(",")
    unknown = [g for g in selected if g not in GROUPS]
    if unknown:
        ap.error(f"unknown groups {unknown}; known: {', '.join(GROUPS)}")
    mode = "quick" if args.quick else "full"
    size = dict(SIZES[mode])
    if args.iterations:
        size["iterations"] = args.iterations
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    t_start = time.monotonic()
    set_subreaper()
    os.makedirs(args.out, exist_ok=True)

    ctx = Context()
    ctx.hvlite, ctx.kernel, ctx.agent = args.hvlite, args.kernel, args.agent
    ctx.runtime = args.runtime
    ctx.work = tempfile.mkdtemp(prefix="hvlite-bench-report-")
    help_text = subprocess.run([args.hvlite, "run", "--help"], capture_output=True,
                               text=True).stdout
    ctx.has_template = "--no-template" in help_text
    ctx.has_volume = "--volume" in help_text
    try:
        # One root for every system: the busybox root, the probe, and hvlite-init (QEMU's init).
        ctx.root = os.path.join(ctx.work, "root")
        # cp -a keeps device nodes and FIFOs as they are (copytree would read them).
        subprocess.run(["cp", "-a", args.rootfs, ctx.root], check=True)
        shutil.copy2(args.probe, ctx.root + PROBE)
        shutil.copy2(args.agent, ctx.root + "/hvlite-init")
        ctx.image = os.path.join(ctx.work, "root.ext4")
        image_mib = 64 + 3 * max(size["seq_mib"], size["rand_mib"])
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", ctx.root, ctx.image, f"{image_mib}M"],
                       check=True, capture_output=True)
        ctx.net_ok_reason = setup_network()
        ctx.net_ok = ctx.net_ok_reason is None
        say(f"{mode} mode, {size['iterations']} iteration(s); network: "
            f"{'TAP and veth ready' if ctx.net_ok else ctx.net_ok_reason}")

        systems = [Hvlite(ctx, template=False)]
        systems.append(Hvlite(ctx, template=True) if ctx.has_template else Skipped(
            "hvlite-template", "hvlite (template)",
            "this hvlite has no template restore (`hvlite run --help` shows no --no-template)"))
        systems += [OciRuntime(ctx, "runc"), OciRuntime(ctx, "crun"), Qemu(ctx), Podman(ctx)]
        shim = shutil.which("containerd-shim-hvlite-v2")
        systems.append(Skipped(
            "containerd-hvlite", "containerd + hvlite shim",
            "no hvlite containerd shim (containerd-shim-hvlite-v2) on PATH" if not shim else
            f"{shim} found, but this report does not drive containerd yet"))
        if args.only:
            keep = set(args.only.split(","))
            for s in systems:
                if s.id not in keep and not s.skipped:
                    s.skipped = "left out with --only"
        for s in systems:
            say(f"system {s.label}: {'skipped: ' + s.skipped if s.skipped else 'ready'}")
        running = [s for s in systems if not s.skipped]

        results = {}
        for s in running:
            for group, why in s.not_run.items():
                for m in METRICS:
                    if m[4] == group:
                        results.setdefault(m[0], {})[s.id] = {"samples": [], "error": None,
                                                              "skipped": why}
        groups = [g for g in GROUPS if g != "density" and g in selected]
        for it in range(size["iterations"]):
            order = running[it % len(running):] + running[:it % len(running)]
            for gi, group in enumerate(groups):
                parts = []
                for n, s in enumerate(order):
                    if group in s.not_run:
                        parts.append(f"{s.id} skipped")
                        continue
                    t0 = time.monotonic()
                    if group == "idle":
                        got = run_idle(s, 1, size, f"mem{it}")
                        got = got if isinstance(got, str) else {"memory": got[1]}
                    else:
                        got = run_to_exit(s, group, size, f"{it}{n}")
                    metrics = [m[0] for m in METRICS if m[4] == group]
                    for mid in metrics:
                        if isinstance(got, str):
                            record(results, mid, s, error=got)
                        else:
                            record(results, mid, s, got[mid])
                    parts.append(f"{s.id} {time.monotonic() - t0:.1f} s ({fmt(got)})")
                say(f"[iteration {it + 1}/{size['iterations']}, workload {gi + 1}/"
                    f"{len(groups) + 1} {group}] " + "; ".join(parts)
                    + f" [{(time.monotonic() - t_start) / 60:.1f} min]")

        # Density: N idle instances at once, per system, alternating systems per point.
        density_mem, density_start = {}, {}
        for count in size["density"] if "density" in selected else []:
            parts = []
            for s in running:
                if "density" in s.not_run:
                    density_mem[s.id] = density_start[s.id] = {"skipped": s.not_run["density"]}
                    parts.append(f"{s.id} skipped")
                    continue
                got = run_idle(s, count, size, f"d{count}")
                for table in (density_mem, density_start):
                    table.setdefault(s.id, {"points": [], "error": None})
                if isinstance(got, str):
                    density_mem[s.id]["error"] = density_start[s.id]["error"] = \
                        f"{count} instances: {got}"
                    parts.append(f"{s.id} failed")
                    continue
                ready, mib = got
                density_mem[s.id]["points"].append({"x": count, "samples": [round(mib, 3)]})
                density_start[s.id]["points"].append(
                    {"x": count, "samples": [round(t, 4) for t in ready]})
                parts.append(f"{s.id} {mib:.0f} MiB, last ready {max(ready):.2f} s")
            say(f"[workload {len(groups) + 1}/{len(groups) + 1} density {count}] "
                + "; ".join(parts) + f" [{(time.monotonic() - t_start) / 60:.1f} min]")
    finally:
        teardown_network()
        shutil.rmtree(ctx.work, ignore_errors=True)

    workloads = []
    for mid, title, unit, lower, group, _ in METRICS:
        if group not in selected:
            continue
        cmd = " ".join(group_argv(group, size, Context()))
        if group == "idle":
            cmd = f"{PROBE} idle (until ready, then PSS)"
        workloads.append({"id": mid, "title": title, "unit": unit, "lower_is_better": lower,
                          "command": cmd, "kind": "bars", "run": started,
                          "results": results.get(mid, {})})
    points = ", ".join(str(c) for c in size["density"])
    note = (f"Points: {points} concurrent instances, one sample each"
            + (" (quick mode: fewer and cheaper points)" if args.quick else "") + ".")
    density = [] if "density" not in selected else workloads
    density.append({"id": "density_memory", "title": "Density: total memory of N idle instances",
                      "unit": "MiB", "lower_is_better": True, "command": f"{PROBE} idle",
                      "kind": "lines", "x_label": "concurrent instances", "note": note,
                      "run": started, "results": density_mem})
    density.append({"id": "density_start", "title": "Density: start to ready of N instances",
                      "unit": "s", "lower_is_better": True, "command": f"{PROBE} idle",
                      "kind": "lines", "x_label": "concurrent instances",
                      "note": note + " Whiskers: the first and last instance ready.",
                      "run": started, "results": density_start})
    report = {
        "schema": 1, "mode": mode, "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": host_info(args.kernel), "baseline": "runc",
        "systems": [s.json() for s in systems], "workloads": workloads,
        "sizes": size,
    }
    status = write_report(report, args.out, args.renderer)
    say(f"done in {(time.monotonic() - t_start) / 60:.1f} min")
    return status


def write_report(report, out, renderer):
    """Writes OUT/results.json, renders OUT/index.html and checks the page."""
    os.makedirs(out, exist_ok=True)
    results_path = os.path.join(out, "results.json")
    with open(results_path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    page = os.path.join(out, "index.html")
    subprocess.run([renderer, results_path, page], check=True)
    problems = check_page(page, [w["id"] for w in report["workloads"]])
    if problems:
        say("the report does not render correctly: " + "; ".join(problems))
        return 1
    say(f"wrote {page} and {results_path}: every plot present, tags balanced")
    return 0


def merge(argv):
    """`--merge OUT RENDERER CHUNK...`: one report from runs of disjoint workload groups (each
    plot's numbers still come from one run, where the systems were alternated)."""
    if len(argv) < 3:
        sys.exit("usage: bench_report.py --merge OUT RENDERER CHUNK_DIR...")
    out, renderer, chunks = argv[0], argv[1], argv[2:]
    parts = []
    for chunk in chunks:
        with open(os.path.join(chunk, "results.json")) as f:
            parts.append(json.load(f))
    report = dict(parts[0])
    seen, workloads = set(), []
    for part in parts:
        if [s["id"] for s in part["systems"]] != [s["id"] for s in report["systems"]]:
            sys.exit(f"merge: the chunks saw different systems: {part['started']}")
        for w in part["workloads"]:
            if w["id"] in seen:
                sys.exit(f"merge: workload {w['id']} is in two chunks")
            seen.add(w["id"])
            workloads.append(w)
    order = [m[0] for m in METRICS] + ["density_memory", "density_start"]
    workloads.sort(key=lambda w: order.index(w["id"]) if w["id"] in order else len(order))
    report["workloads"] = workloads
    report["started"] = min(p["started"] for p in parts)
    report["finished"] = max(p["finished"] for p in parts)
    return write_report(report, out, renderer)


def add_system(argv):
    """`--add-system OUT RENDERER BASE_DIR CHUNK_DIR...`: BASE_DIR's report with the systems
    that CHUNK_DIR's runs measured (`--only`) added to it: their results replace the base's
    cells of the same workloads and their entries the base's (the note says when they ran:
    those numbers come from another run than the other systems' of the same plot)."""
    if len(argv) < 4:
        sys.exit("usage: bench_report.py --add-system OUT RENDERER BASE_DIR CHUNK_DIR...")
    out, renderer, base_dir, chunks = argv[0], argv[1], argv[2], argv[3:]
    with open(os.path.join(base_dir, "results.json")) as f:
        report = json.load(f)
    by_id = {w["id"]: w for w in report["workloads"]}
    for chunk in chunks:
        with open(os.path.join(chunk, "results.json")) as f:
            part = json.load(f)
        added = [s for s in part["systems"] if not s["skipped"]]
        for system in added:
            system = dict(system)
            system["note"] = (f"{system['note']}; " if system.get("note") else "") + (
                f"measured in a separate run ({part['started']} to {part['finished']}, "
                f"commit {part['host'].get('commit')}) and added to this report")
            report["systems"] = [system if s["id"] == system["id"] else s
                                 for s in report["systems"]]
            for w in part["workloads"]:
                cell = w["results"].get(system["id"])
                if cell is not None and w["id"] in by_id:
                    by_id[w["id"]]["results"][system["id"]] = cell
            why = "not measured in the run that added this system"
            for w in report["workloads"]:
                w["results"].setdefault(system["id"], {"skipped": why} if w["kind"] == "lines"
                                        else {"samples": [], "error": None, "skipped": why})
        report["finished"] = max(report["finished"], part["finished"])
    return write_report(report, out, renderer)


def host_info(guest_kernel):
    if os.path.exists("/sys/module/kvm_pvm"):
        kind = "pvm"
    elif os.path.exists("/sys/module/kvm_intel") or os.path.exists("/sys/module/kvm_amd"):
        kind = "hardware"
    else:
        kind = "none"
    model, mem = "unknown", 0
    with open("/proc/cpuinfo") as f:
        model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                     model)
    with open("/proc/meminfo") as f:
        mem = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1]) // 1024
    with open(guest_kernel, "rb") as f:
        image = f.read()
    at = image.find(b"Linux version ")
    banner = image[at:image.find(b"\0", at)].decode(errors="replace").strip() if at >= 0 else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    return {"kind": kind, "kernel": platform.release(), "cpus": os.cpu_count(),
            "memory_mib": mem, "cpu_model": model, "guest_kernel": banner, "commit": commit}


class PageCheck(html.parser.HTMLParser):
    VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack, self.problems, self.figures, self.current = [], [], {}, None

    def handle_starttag(self, tag, attrs):
        if tag == "figure":
            self.current = dict(attrs).get("id")
            self.figures[self.current] = 0
        if tag == "svg" and self.current:
            self.figures[self.current] += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else '-'}>")
            return
        self.stack.pop()
        if tag == "figure":
            self.current = None


def check_page(path, workload_ids):
    """Checks that the page parses with balanced tags and has a plot per workload."""
    with open(path) as f:
        text = f.read()
    checker = PageCheck()
    checker.feed(text)
    checker.close()
    problems = checker.problems[:5]
    if checker.stack:
        problems.append(f"unclosed tags: {checker.stack[:5]}")
    for wid in workload_ids:
        if checker.figures.get(f"plot-{wid}", 0) != 1:
            problems.append(f"no plot for {wid}")
    return problems


if __name__ == "__main__":
    if sys.argv[1:2] == ["--merge"]:
        sys.exit(merge(sys.argv[2:]))
    if sys.argv[1:2] == ["--add-system"]:
        sys.exit(add_system(sys.argv[2:]))
    sys.exit(main())
